"""Build the book's two editions, English and Chinese (中文), and keep the Chinese catalogs in step with the English.

    python tools/build_book.py book               # both editions -> _build/html/en, _build/html/zh_CN + index.html
    python tools/build_book.py zh --out /tmp/zh   # the Chinese edition alone, privately -> /tmp/zh/html
    python tools/build_book.py catalogs           # after an English edit: gettext, then sphinx-intl update

English: ``jupyter-book build`` exactly as before, into ``build/book/en`` (Jupyter Book 1 reads ``_config.yml`` and
``_toc.yml``). Chinese: Sphinx's internationalisation workflow on the same sources. Jupyter Book has no language
switch of its own (a top-level ``language:`` is ignored, and ``sphinx: config: language:`` would make the English
build Chinese too), so the Chinese edition is a second build, by ``sphinx-build`` on a generated configuration:

1. ``build/book/zh_CN/conf/_config.yml``: a copy of ``_config.yml`` with the Chinese title, footer and search text
   of ``book/locales/zh_CN/edition.json``, and the Sphinx settings of a translation: ``language = "zh_CN"``, the
   catalogs (``locale_dirs``, one catalog per page: ``gettext_compact = False``), Chinese search
   (``html_search_language = "zh"``, which segments words with jieba; ``book/_ext/bnref_search_zh.py`` removes a
   quadratic slowdown of Sphinx 7.4's Chinese indexer), and the extension that translates glued words
   (``book/_ext/bnref_glued_words.py``, table ``book/locales/zh_CN/glued_words.json``);
2. ``build/book/zh_CN/conf/_toc.yml``: ``_toc.yml`` with its part captions translated (edition.json again; a
   caption missing there stays English, and ``tests/test_translation.py`` fails on it);
3. ``jupyter-book config sphinx`` turns the two into ``conf.py`` in that folder (never in the repository root),
   whose paths, relative to the repository in ``_config.yml``, are made absolute so that ``sphinx-build -c``
   can read it from another folder.

Both editions link to the repository in force (``tools/repository.py``: ``$BNREF_REPOSITORY``, else ``repository:
url:`` of ``_config.yml``): ``book_config`` writes it into the configuration of each (the English one is passed to
``jupyter-book build --config``), so the repository, issues, Binder and Colab buttons follow one setting.

The catalogs (``book/locales/zh_CN/LC_MESSAGES/book/<page>.po``) are copied into the build folder and compiled there
by Sphinx (``.mo`` files, only when a ``.po`` changed), so private builds running at the same time never write into
the repository. Both builds use ``-W -n --keep-going``: a warning, such as a translated message that drops a
reference, fails the build. They run at the same time (each is mostly one process), then each edition is copied
into ``_build/html`` (myst-nb writes ``jupyter_execute/`` next to an output folder, so neither builds there
directly) and ``_build/html/index.html`` sends a reader to their edition by the browser's language, with plain
links to both for readers without JavaScript.
"""

from __future__ import annotations

import argparse
import filecmp
import html
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from repository import repository_url

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOCALES = REPO / "book" / "locales"
EXTENSIONS = REPO / "book" / "_ext"
SITE = REPO / "_build" / "html"
TOC = REPO / "_toc.yml"  # the table of contents both editions are built from
WORK = REPO / "build" / "book"
# `make catalogs` keeps the folder the catalogs were first generated from: the `#:` source comments in the .po
# files are paths relative to the .pot files (../../../book/why.ipynb), so the same depth keeps them unchanged.
GETTEXT = REPO / "build" / "i18n"
# Sphinx flags shared by both editions: warnings are errors, nitpicky references, and every warning reported.
STRICT = ["-W", "-n", "--keep-going"]
# Keys of the generated conf.py that hold paths relative to the repository (Sphinx resolves them against the folder
# of conf.py, which is no longer the repository root).
PATH_KEYS = (
    "bibtex_bibfiles",
    "external_toc_path",
    "html_static_path",
    "html_favicon",
    "html_logo",
    "templates_path",
    "html_extra_path",
)


def edition_settings(language: str) -> dict[str, Any]:
    """The edition's own texts (title, footer, search text, part captions): ``book/locales/<language>/edition.json``."""
    return json.loads((LOCALES / language / "edition.json").read_text(encoding="utf-8"))


def glossary_terms() -> list[str]:
    """The Chinese terms of the glossary (``book/glossary.md``): the term lines of its glossary directive that
    contain a Chinese character."""
    text = (REPO / "book" / "glossary.md").read_text(encoding="utf-8")
    block = re.search(r"^```\{glossary\}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    lines = block.group(1).splitlines() if block else []
    terms = [line.strip() for line in lines if line and not line[0].isspace() and not line.startswith(":")]
    return sorted({term for term in terms if re.search(r"[\u4e00-\u9fff]", term) and " " not in term})


def translated_toc(toc: dict[str, Any], captions: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """``toc`` with every part caption found in ``captions`` translated, and the captions that were not found."""
    missing: list[str] = []
    parts = []
    for part in toc.get("parts", []):
        part = dict(part)
        if "caption" in part:
            if part["caption"] in captions:
                part["caption"] = captions[part["caption"]]
            else:
                missing.append(part["caption"])
        parts.append(part)
    return {**toc, "parts": parts} if "parts" in toc else dict(toc), missing


def absolute(value: Any) -> Any:
    """A path (or list of paths) relative to the repository, made absolute; empty values and URLs left alone."""
    if isinstance(value, list):
        return [absolute(v) for v in value]
    if isinstance(value, str) and value and "://" not in value and not Path(value).is_absolute():
        return str(REPO / value)
    return value


def run(command: list[str], log: Path | None = None, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``command`` in the repository root, its output to ``log`` (or to this process's output)."""
    print("+", " ".join(str(c) for c in command), flush=True)
    out = log.open("wb") if log else None
    return subprocess.Popen([str(c) for c in command], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, **kwargs)


def check(process: subprocess.Popen[bytes], what: str) -> None:
    if process.wait() != 0:
        sys.exit(f"{what} failed (exit status {process.returncode})")


def book_config() -> dict[str, Any]:
    """``_config.yml`` with the repository in force (``tools/repository.py``: ``$BNREF_REPOSITORY`` or the default),
    and the local extensions' folders made absolute (Jupyter Book resolves them against the configuration's folder)."""
    config = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))
    config.setdefault("repository", {})["url"] = repository_url()
    sphinx = config.setdefault("sphinx", {})
    sphinx["local_extensions"] = {name: str(EXTENSIONS) for name in sphinx.get("local_extensions") or {}}
    return config


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def generate_conf(folder: Path, language: str | None, locales: Path | None = None) -> Path:
    """Write ``folder/conf.py`` for the edition in ``language`` (None: the English book as ``_config.yml`` says),
    reading the compiled catalogs from ``locales``. ``folder`` must lie inside the repository (Jupyter Book accepts
    only a table of contents inside the book's folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = book_config()
    toc = yaml.safe_load(TOC.read_text(encoding="utf-8"))
    sphinx = config.setdefault("sphinx", {})
    sphinx_config = sphinx.setdefault("config", {})
    if language:
        settings = edition_settings(language)
        config["title"] = settings["title"]
        config.setdefault("html", {})["extra_footer"] = settings["extra_footer"]
        theme_options = sphinx_config.setdefault("html_theme_options", {})
        theme_options["search_bar_text"] = settings["search_bar_text"]
        sphinx_config.update(
            language=language,
            locale_dirs=[str(locales or folder.parent / "locales")],
            gettext_compact=False,
            html_search_language=language.split("_")[0],
            bnref_glued_words=f"book/locales/{language}/glued_words.json",
        )
        sphinx_config["extensions"] = [
            *sphinx_config.get("extensions", []),
            "bnref_glued_words",
            "bnref_search_zh",
            "bnref_exercise_terms",
        ]
        if language.startswith("zh"):
            # jieba segments the text for the search index; the JavaScript search does not segment a query, so a
            # term jieba does not know as one word (滑动平均) would never be found. The glossary's Chinese terms
            # become jieba's user dictionary.
            terms = folder / "jieba_terms.txt"
            terms.write_text("".join(f"{term}\n" for term in glossary_terms()), encoding="utf-8")
            sphinx_config["html_search_options"] = {"dict": str(terms)}
        toc, _ = translated_toc(toc, settings["toc_captions"])
    write_yaml(folder / "_config.yml", config)
    write_yaml(folder / "_toc.yml", toc)
    conf = folder / "conf.py"
    conf.unlink(missing_ok=True)
    jupyter_book = [BIN / "jupyter-book", "config", "sphinx", ".", "--config", folder / "_config.yml"]
    check(run([*jupyter_book, "--toc", folder / "_toc.yml"], log=folder / "config.log"), "jupyter-book config sphinx")
    if not conf.is_file() or (REPO / "conf.py").exists():
        sys.exit(f"jupyter-book config sphinx did not write {conf} (or wrote a conf.py into the repository root)")
    values: dict[str, Any] = {}
    exec(conf.read_text(encoding="utf-8"), values)  # the generated file is `key = repr(value)` lines
    lines = [
        "# Generated by tools/build_book.py from _config.yml and _toc.yml (`jupyter-book config sphinx`, then the",
        "# paths made absolute). Do not edit: it is rewritten by every build.",
        "import sys",
        f"sys.path.insert(0, {str(EXTENSIONS)!r})",
    ]
    for key in sorted(k for k in values if not k.startswith("__")):
        value = absolute(values[key]) if key in PATH_KEYS else values[key]
        lines.append(f"{key} = {value!r}")
    conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return conf


def copy_catalogs(language: str, target: Path) -> None:
    """Copy the edition's .po files to ``target`` (mtimes kept, unchanged files left alone, so Sphinx recompiles
    and re-reads only the pages whose catalogs changed)."""
    source = LOCALES / language / "LC_MESSAGES"
    for po in source.rglob("*.po"):
        copy = target / language / "LC_MESSAGES" / po.relative_to(source)
        copy.parent.mkdir(parents=True, exist_ok=True)
        if not copy.exists() or not filecmp.cmp(po, copy, shallow=False):
            shutil.copy2(po, copy)
    for copy in (target / language / "LC_MESSAGES").rglob("*.po"):
        if not (source / copy.relative_to(target / language / "LC_MESSAGES")).exists():
            copy.unlink()
            copy.with_suffix(".mo").unlink(missing_ok=True)


def start_translated(language: str, out: Path, builder: str = "html") -> subprocess.Popen[bytes]:
    """Start the build of the edition in ``language`` into ``out/<builder>`` with Sphinx's ``builder`` (``html``, or
    ``singlehtml`` for the PDF; its log: ``out/build.log``, or ``build-<builder>.log``). Builders share
    ``out/doctrees``."""
    # The generated configuration lives in the repository's build folder (Jupyter Book wants the generated _toc.yml
    # inside the book), one folder per output folder, so that private builds running at the same time do not meet.
    inside = out.is_relative_to(REPO)
    conf_folder = out / "conf" if inside else WORK / "private" / re.sub(r"[^A-Za-z0-9]+", "_", str(out)).strip("_")
    conf = generate_conf(conf_folder, language, out / "locales")
    copy_catalogs(language, out / "locales")
    command = [
        BIN / "sphinx-build",
        "-b",
        builder,
        "-c",
        conf.parent,
        "-d",
        out / "doctrees",
        *STRICT,
        ".",
        out / builder,
    ]
    return run(command, log=out / log_name(builder))


def log_name(builder: str) -> str:
    """The build log's name in the output folder: ``build.log`` for the site, ``build-<builder>.log`` for others."""
    return "build.log" if builder == "html" else f"build-{builder}.log"


def start_english(out: Path, builder: str = "html") -> subprocess.Popen[bytes]:
    """Start ``jupyter-book build`` of the English book into ``out/_build/<builder>`` (its log: ``out/build.log``,
    or ``build-<builder>.log``), with ``_config.yml`` as ``book_config`` completes it (``out/conf/_config.yml``: the
    repository in force). Builders share ``out/_build/.doctrees``: a ``singlehtml`` build after the site's ``html``
    build reads no page again."""
    out.mkdir(parents=True, exist_ok=True)
    config = write_yaml(out / "conf" / "_config.yml", book_config())
    command = [BIN / "jupyter-book", "build", ".", "--builder", builder, "--path-output", out, "--config", config]
    command += ["--toc", TOC]
    return run([*command, *STRICT], log=out / log_name(builder))


def finish(process: subprocess.Popen[bytes], log: Path, what: str, started: float) -> bool:
    """Wait for a build, print its log, and say whether it succeeded."""
    status = process.wait()
    print(f"\n===== {what}: exit status {status} after {time.monotonic() - started:.0f} s (log {log})", flush=True)
    sys.stdout.write(log.read_text(encoding="utf-8", errors="replace"))
    return status == 0


def landing_page(editions: dict[str, tuple[str, str, str]], root_page: str, pdfs: dict[str, str] | None = None) -> str:
    """``index.html`` of the site: the browser's language picks the edition; links to both without JavaScript, and
    to each edition's PDF when ``pdfs`` (folder -> path of its PDF in the site) names it.

    ``editions``: folder -> (language tag, name of the book in that language, link label)."""
    pdfs = pdfs or {}
    links = "\n".join(
        f'    <li lang="{tag}"><a href="{folder}/{root_page}.html" hreflang="{tag}">{html.escape(label)}</a>'
        f" · {html.escape(title)}"
        + (f' · <a href="{pdfs[folder]}" hreflang="{tag}" type="application/pdf">PDF</a>' if folder in pdfs else "")
        + "</li>"
        for folder, (tag, title, label) in editions.items()
    )
    alternates = "\n".join(
        f'<link rel="alternate" hreflang="{tag}" href="{folder}/{root_page}.html">'
        for folder, (tag, _, _) in editions.items()
    )
    chinese = next(folder for folder in editions if folder.startswith("zh"))
    english = next(folder for folder in editions if folder == "en")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(" · ".join(title for _, title, _ in editions.values()))}</title>
{alternates}
<link rel="icon" href="{english}/_static/favicon.svg" type="image/svg+xml">
<script>
  // Readers whose browser prefers Chinese get the Chinese edition, everyone else the English one.
  (function () {{
    var languages = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language];
    var chinese = /^zh\\b/i.test(languages[0] || "");
    location.replace((chinese ? "{chinese}" : "{english}") + "/{root_page}.html" + location.hash);
  }})();
</script>
<style>
  body {{ font-family: system-ui, sans-serif; max-width: 36rem; margin: 4rem auto; padding: 0 1rem; }}
  li {{ margin: 0.5rem 0; font-size: 1.2rem; }}
</style>
</head>
<body>
  <p>Choose an edition · 选择版本:</p>
  <ul>
{links}
  </ul>
</body>
</html>
"""


def publish(builds: dict[str, Path], root_page: str) -> None:
    """Copy each edition's HTML into ``_build/html/<edition>`` and write the landing page (replacing the old site)."""
    staging = SITE.with_name("html.new")
    shutil.rmtree(staging, ignore_errors=True)
    for edition, html_dir in builds.items():
        shutil.copytree(html_dir, staging / edition)
        name_the_icon(staging / edition / "index.html")
    write_landing_page(staging)
    (staging / ".nojekyll").write_text("", encoding="utf-8")
    shutil.rmtree(SITE, ignore_errors=True)
    staging.rename(SITE)


def name_the_icon(redirect: Path) -> None:
    """Give an edition's ``index.html`` (sphinx-external-toc writes it as a bare ``<meta http-equiv="Refresh">``) the
    book's icon: a page that names none makes the browser ask for ``/favicon.ico``, which the site does not have."""
    if not redirect.is_file():
        return
    text = redirect.read_text(encoding="utf-8")
    if 'rel="icon"' not in text:
        icon = '<link rel="icon" href="_static/favicon.svg" type="image/svg+xml">\n'
        redirect.write_text(icon + text, encoding="utf-8")


def write_landing_page(site: Path = SITE, pdfs: dict[str, str] | None = None) -> None:
    """``site/index.html``: the landing page of both editions (and their PDFs: ``tools/build_pdf.py``)."""
    zh = edition_settings("zh_CN")
    english_title = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))["title"]
    editions = {"en": ("en", english_title, "English"), "zh_CN": ("zh-CN", zh["title"], "中文")}
    (site / "index.html").write_text(landing_page(editions, root_document(), pdfs), encoding="utf-8")


def root_document() -> str:
    return yaml.safe_load(TOC.read_text(encoding="utf-8"))["root"]


def build_book() -> None:
    """Both editions, at the same time, then published into ``_build/html``."""
    started = time.monotonic()
    english_out, chinese_out = WORK / "en", WORK / "zh_CN"
    english = start_english(english_out)
    chinese = start_translated("zh_CN", chinese_out)
    ok_en = finish(english, english_out / "build.log", "English edition (jupyter-book build)", started)
    ok_zh = finish(chinese, chinese_out / "build.log", "Chinese edition (sphinx-build, language zh_CN)", started)
    if not (ok_en and ok_zh):
        sys.exit("the book did not build: " + ", ".join(n for n, ok in (("en", ok_en), ("zh_CN", ok_zh)) if not ok))
    publish({"en": english_out / "_build" / "html", "zh_CN": chinese_out / "html"}, root_document())
    print(f"\nboth editions built and published in {SITE} in {time.monotonic() - started:.0f} s")


def build_private(language: str, out: Path) -> None:
    """One translated edition into ``out/html``, for a translator checking their pages (nothing in the repository
    is written)."""
    started = time.monotonic()
    ok = finish(start_translated(language, out), out / "build.log", f"{language} edition", started)
    if not ok:
        sys.exit(f"the {language} edition did not build (warnings are errors): see {out / 'build.log'}")
    print(f"\n{language} edition in {out / 'html'}: open {out / 'html' / root_document()}.html")


def update_catalogs(language: str, locales: Path = LOCALES) -> None:
    """Extract the English messages (gettext builder, one .pot per page) and merge them into the .po files under
    ``locales``: new messages appear untranslated, changed ones are marked fuzzy with the old English kept
    (``#| msgid``), removed ones become obsolete (``#~``)."""
    conf = generate_conf(GETTEXT, None)
    pot = GETTEXT / "gettext"
    gettext = [BIN / "sphinx-build", "-b", "gettext", "-c", conf.parent, "-d", GETTEXT / "doctrees"]
    check(run([*gettext, "-D", "gettext_compact=0", "-q", ".", pot]), "sphinx-build -b gettext")
    intl = [BIN / "sphinx-intl", "update", "-p", pot, "-l", language, "-d", locales, "--line-width", "0"]
    check(run(intl), "sphinx-intl update")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("book", help="both editions into _build/html (what `make book` runs)")
    private = commands.add_parser("zh", help="the Chinese edition alone, into a folder of your choice")
    private.add_argument("--out", type=Path, required=True, help="output folder (the pages go to OUT/html)")
    catalogs = commands.add_parser("catalogs", help="update book/locales/zh_CN from the English (sphinx-intl update)")
    catalogs.add_argument("--locales", type=Path, default=LOCALES, help="catalog folder (default book/locales)")
    commands.add_parser("conf", help="only write the Chinese edition's conf.py (build/book/zh_CN/conf)")
    args = parser.parse_args()
    if args.command == "book":
        build_book()
    elif args.command == "zh":
        build_private("zh_CN", args.out.resolve())
    elif args.command == "catalogs":
        update_catalogs("zh_CN", args.locales.resolve())
    else:
        print(generate_conf(WORK / "zh_CN" / "conf", "zh_CN"))


if __name__ == "__main__":
    main()
