"""Launch buttons that work: every notebook page of the built site, in both editions, links to the configured
repository, and every notebook runs where those buttons open it.

* The repository in force is ``tools/repository.py``'s (``$BNREF_REPOSITORY``, else ``repository: url:`` of
  ``_config.yml``), the same setting ``tools/build_book.py`` builds the site with.
* On every page built from a notebook: the Binder link opens that notebook in the repository's Binder
  (``mybinder.org/v2/gh/OWNER/NAME/BRANCH?urlpath=tree/book/x.ipynb``), the Colab link the same file on GitHub
  (``colab.research.google.com/github/OWNER/NAME/blob/BRANCH/book/x.ipynb``), the repository button the repository,
  the issues button its ``/issues/new``; no header button leads to another repository; the notebook exists.
* Binder finds its environment in the repository (``binder/requirements.txt`` installs ``bnref`` from the checkout).
* Every notebook's first code cell is ``install_cell()`` for the repository in force, tagged ``remove-cell`` (so the
  book hides it): in Colab, Binder or a downloaded notebook it installs ``bnref`` when ``import bnref`` fails; where
  ``bnref`` is importable it does nothing (checked by running it with ``pip`` replaced by a failure).

The site checks need a built site (``make book``): a missing ``_build/html`` is a failure.
"""

from __future__ import annotations

import html.parser
import importlib.util
import json
import os
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
HTML_DIR = Path(os.environ.get("BNREF_BOOK_HTML", REPO_ROOT / "_build" / "html")).resolve()
EDITIONS = ["en", "zh_CN"]


def load_repository_module():
    spec = importlib.util.spec_from_file_location("bnref_repository_setting", REPO_ROOT / "tools" / "repository.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


repository = load_repository_module()


def notebooks() -> list[str]:
    """The notebooks of the book: documents of _toc.yml whose source is an .ipynb (``book/why``)."""
    text = (REPO_ROOT / "_toc.yml").read_text(encoding="utf-8")
    documents = re.findall(r"^\s*-?\s*(?:root|file):\s*([^\s#]+)", text, flags=re.MULTILINE)
    names = [d.removesuffix(".ipynb").removesuffix(".md") for d in documents]
    return [name for name in names if (REPO_ROOT / f"{name}.ipynb").is_file()]


class HeaderLinks(html.parser.HTMLParser):
    """The ``href`` of every button link (``class`` holding ``btn``) of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a" and "btn" in (values.get("class") or "").split() and values.get("href"):
            self.links.append(html.unescape(values["href"] or ""))


def header_links(page: Path) -> list[str]:
    parser = HeaderLinks()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.links


def launch_problems(links: list[str], url: str, branch: str, notebook: str) -> list[str]:
    """What is wrong with one page's button links, for the notebook ``book/x.ipynb`` of repository ``url``."""
    owner_name = urllib.parse.urlsplit(url).path.strip("/")
    expected = {
        "binder": f"https://mybinder.org/v2/gh/{owner_name}/{branch}?urlpath=tree/{notebook}",
        "colab": f"https://colab.research.google.com/github/{owner_name}/blob/{branch}/{notebook}",
        "repository": url,
    }
    found: dict[str, list[str]] = {"binder": [], "colab": [], "repository": [], "issues": []}
    problems = []
    for link in links:
        host = urllib.parse.urlsplit(link).hostname or ""
        if host.endswith("mybinder.org"):
            found["binder"].append(link)
        elif host == "colab.research.google.com":
            found["colab"].append(link)
        elif host == "github.com":
            if link == url:
                found["repository"].append(link)
            elif link.startswith(url + "/issues/new"):
                found["issues"].append(link)
            else:
                problems.append(f"a button leads to another GitHub page: {link}")
    for kind, links_of_kind in found.items():
        if not links_of_kind:
            problems.append(f"no {kind} link")
        for link in links_of_kind:
            if kind in expected and link != expected[kind]:
                problems.append(f"{kind} link {link}, expected {expected[kind]}")
    return problems


@pytest.fixture(scope="module")
def site() -> Path:
    if not (HTML_DIR / "index.html").is_file():
        pytest.fail(f"no built book at {HTML_DIR}: run `make book` first")
    return HTML_DIR


@pytest.mark.parametrize("edition", EDITIONS)
def test_launch_links_point_at_the_configured_repository(site: Path, edition: str) -> None:
    url, branch = repository.repository_url(), repository.branch()
    names = notebooks()
    assert names, "no notebook in _toc.yml"
    problems = {}
    for name in names:
        page = site / edition / f"{name}.html"
        if not page.is_file():
            problems[name] = [f"{page} not built"]
            continue
        problems[name] = launch_problems(header_links(page), url, branch, f"{name}.ipynb")
    problems = {name: items for name, items in problems.items() if items}
    assert not problems, f"launch links not pointing at {url} ({edition} edition):\n" + "\n".join(
        f"{name}: {items}" for name, items in problems.items()
    )


def test_launch_check_catches_a_wrong_repository() -> None:
    """The check itself: links built for another repository, or missing, are reported."""
    url, branch, notebook = "https://github.com/owner/book", "main", "book/why.ipynb"
    good = [
        "https://mybinder.org/v2/gh/owner/book/main?urlpath=tree/book/why.ipynb",
        "https://colab.research.google.com/github/owner/book/blob/main/book/why.ipynb",
        "https://github.com/owner/book",
        "https://github.com/owner/book/issues/new?title=x",
    ]
    assert launch_problems(good, url, branch, notebook) == []
    fork = [link.replace("owner/book", "other/book") for link in good]
    assert len(launch_problems(fork, url, branch, notebook)) >= 4
    assert launch_problems(good[1:], url, branch, notebook) == ["no binder link"]


def test_repository_setting_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(repository.ENVIRONMENT, "someone/fork")
    assert repository.repository_url() == "https://github.com/someone/fork"
    monkeypatch.setenv(repository.ENVIRONMENT, "https://github.com/someone/fork.git/")
    assert repository.repository_url() == "https://github.com/someone/fork"
    monkeypatch.delenv(repository.ENVIRONMENT)
    assert repository.repository_url() == repository.default_url()
    with pytest.raises(ValueError):
        repository.normalise("https://gitlab.com/someone/fork")


def test_binder_finds_its_environment() -> None:
    requirements = (REPO_ROOT / "binder" / "requirements.txt").read_text(encoding="utf-8").splitlines()
    lines = [line.split("#")[0].strip() for line in requirements if line.split("#")[0].strip()]
    assert "." in lines or "-e ." in lines, "binder/requirements.txt does not install bnref from the repository"
    for package in ("numpy", "torch", "matplotlib"):
        assert any(line.startswith(package) for line in lines), f"binder/requirements.txt lacks {package}"


def first_code_cell(notebook: Path) -> dict:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    return code[0] if code else {}


def test_every_notebook_starts_with_the_install_cell() -> None:
    """The first code cell of every notebook is the install cell for the repository in force, hidden in the book."""
    expected = repository.install_cell()
    problems = []
    for name in notebooks():
        cell = first_code_cell(REPO_ROOT / f"{name}.ipynb")
        source = "".join(cell.get("source", []))
        if source.strip() != expected.strip():
            problems.append(f"{name}.ipynb: first code cell is not the install cell")
        elif "remove-cell" not in cell.get("metadata", {}).get("tags", []):
            problems.append(f"{name}.ipynb: the install cell is not tagged remove-cell")
    assert not problems, (
        "\n".join(problems) + f"\n\nthe install cell (python tools/repository.py install-cell):\n{expected}"
    )


def test_install_cell_does_nothing_where_bnref_is_importable(tmp_path: Path) -> None:
    """Run the cell with ``subprocess.check_call`` replaced by a failure: where ``bnref`` imports, it never calls pip;
    where it does not (``importlib.util.find_spec`` made to find no ``bnref``), it calls pip with the repository in
    force."""
    cell = repository.install_cell()
    script = tmp_path / "cell.py"
    script.write_text(
        "import subprocess, sys\n"
        "calls = []\n"
        "subprocess.check_call = lambda command, **kwargs: calls.append(command)\n"
        "if sys.argv[1] == 'hide':\n"
        "    import importlib.util\n"
        "    find_spec = importlib.util.find_spec\n"
        "    importlib.util.find_spec = lambda name, *a: None if name == 'bnref' else find_spec(name, *a)\n"
        f"exec({cell!r})\n"
        "print(calls)\n",
        encoding="utf-8",
    )
    present = subprocess.run([sys.executable, str(script), "keep"], capture_output=True, text=True, check=True)
    assert present.stdout.strip() == "[]", f"the install cell ran pip where bnref is importable: {present.stdout}"
    hidden = subprocess.run([sys.executable, str(script), "hide"], capture_output=True, text=True, check=True)
    assert f"bnref @ git+{repository.repository_url()}" in hidden.stdout, hidden.stdout
