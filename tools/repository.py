"""The repository the book is published from: one setting, for the site, the workflow, the notebooks and a fork.

    python tools/repository.py                 # the repository URL in force
    python tools/repository.py install-cell    # the notebooks' first cell, for that URL
    python tools/repository.py set URL         # a fork: make URL the default everywhere it is written down

Where it comes from, first found wins:

1. the environment variable ``BNREF_REPOSITORY``: ``https://github.com/OWNER/NAME`` or just ``OWNER/NAME``. The
   GitHub workflow (``.github/workflows/book.yml``) sets it to the repository it runs in, so a fork's published
   site links to the fork without any edit;
2. ``repository: url:`` in ``_config.yml``, the one committed default.

``tools/build_book.py`` writes it into both editions' Sphinx configuration: the repository and issues buttons, the
Binder and Colab launch buttons (and ``repository: branch:``, ``main``, for those). ``tests/test_launch.py`` checks
every notebook page's links against it, and every notebook's first cell against ``install_cell()``: in Colab, in
Binder or in a downloaded notebook, that cell installs ``bnref`` from the repository when ``import bnref`` fails,
and does nothing where ``bnref`` is importable (a checkout, CI).

Text that cannot read the setting at run time names the URL literally: the README, CONTRIBUTING.md, the package's
URLs in pyproject.toml and the notebooks' install cells (Colab opens a notebook straight from GitHub). ``set URL``
rewrites the default in ``_config.yml`` and every literal copy of the old URL, and of the old GitHub Pages address
(``pages_url``), in those files, which is what a fork runs once.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "_config.yml"
ENVIRONMENT = "BNREF_REPOSITORY"
GITHUB = re.compile(r"^https://github\.com/[A-Za-z0-9][A-Za-z0-9-]*/[A-Za-z0-9._-]+$")
# Files that name the URL literally (besides _config.yml): rewritten by `set`.
LITERAL = ["README.md", "CONTRIBUTING.md", "pyproject.toml", "book/*.ipynb", "book/*.md"]
# The marker of the notebooks' install cell (its first line), by which tests and `set` find it.
INSTALL_MARKER = "# Installs bnref from the book's repository"


def normalise(value: str) -> str:
    """``OWNER/NAME`` or a GitHub URL (trailing ``/`` or ``.git`` dropped) as ``https://github.com/OWNER/NAME``."""
    value = value.strip().removesuffix("/").removesuffix(".git")
    if "://" not in value:
        value = "https://github.com/" + value
    if not GITHUB.match(value):
        raise ValueError(
            f"{value!r} is not a GitHub repository URL (https://github.com/OWNER/NAME): the Binder and Colab launch "
            "buttons need a repository on GitHub"
        )
    return value


def default_url() -> str:
    """The committed default: ``repository: url:`` of ``_config.yml``."""
    return normalise(yaml.safe_load(CONFIG.read_text(encoding="utf-8"))["repository"]["url"])


def repository_url() -> str:
    """The repository in force: ``$BNREF_REPOSITORY`` when set (and not empty), else the committed default."""
    explicit = os.environ.get(ENVIRONMENT, "").strip()
    return normalise(explicit) if explicit else default_url()


def branch() -> str:
    """The branch the launch buttons open (``repository: branch:`` of ``_config.yml``)."""
    return yaml.safe_load(CONFIG.read_text(encoding="utf-8"))["repository"].get("branch", "main")


def install_cell(url: str | None = None) -> str:
    """The source of every notebook's first code cell: installs ``bnref`` from ``url`` (default: the repository in
    force) when it cannot be imported; quiet, and a no-op where ``bnref`` is importable. Tag it ``remove-cell``."""
    url = url or repository_url()
    return (
        f"{INSTALL_MARKER} where it is missing (Colab, a downloaded notebook); elsewhere does nothing.\n"
        "import importlib.util, subprocess, sys\n"
        'if importlib.util.find_spec("bnref") is None:\n'
        f'    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "bnref @ git+{url}"])'
    )


def pages_url(url: str | None = None) -> str:
    """Where GitHub Pages publishes the site of repository ``url``: ``https://OWNER.github.io/NAME/``."""
    owner, name = normalise(url or repository_url()).removeprefix("https://github.com/").split("/")
    return f"https://{owner.lower()}.github.io/{name}/"


def set_default(url: str) -> list[Path]:
    """Make ``url`` the committed default: ``_config.yml``, and every literal copy of the old URL (and of the old
    GitHub Pages address) in ``LITERAL``."""
    new, old = normalise(url), default_url()
    replacements = [(old, new), (pages_url(old), pages_url(new))]
    changed = []
    text = CONFIG.read_text(encoding="utf-8")
    CONFIG.write_text(re.sub(r"(?m)^(  url: ).*$", rf"\g<1>{new}", text, count=1), encoding="utf-8")
    changed.append(CONFIG)
    for pattern in LITERAL:
        for path in sorted(REPO.glob(pattern)):
            text = original = path.read_text(encoding="utf-8")
            for before, after in replacements:
                text = text.replace(before, after)
            if text != original:
                path.write_text(text, encoding="utf-8")
                changed.append(path)
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("url", help="print the repository URL in force (the default command)")
    commands.add_parser("install-cell", help="print the notebooks' install cell for that URL")
    setter = commands.add_parser("set", help="make URL the committed default (_config.yml, README, notebooks)")
    setter.add_argument("url", help="https://github.com/OWNER/NAME or OWNER/NAME")
    args = parser.parse_args()
    if args.command == "set":
        for path in set_default(args.url):
            print("updated", path.relative_to(REPO))
    elif args.command == "install-cell":
        print(install_cell())
    else:
        print(repository_url())


if __name__ == "__main__":
    main()
