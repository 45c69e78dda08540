"""Update the Chinese catalogs of some pages only (what `make catalogs` does for every page).

    .venv/bin/python tools/catalog_pages.py book/forward book/precision

Extracts the English messages of the whole book into a private folder (gettext builder, one .pot per page), then
merges only the named pages' .pot into ``book/locales/zh_CN/LC_MESSAGES/<page>.po`` with ``sphinx-intl update``: new
messages come in untranslated, changed ones fuzzy (with the old English as ``#| msgid``), removed ones obsolete.
Several people editing different pages can each run it without touching the others' catalogs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_book  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="+", help="pages as in _toc.yml, e.g. book/forward")
    args = parser.parse_args(argv)
    pages = [p.removesuffix(".ipynb").removesuffix(".md") for p in args.pages]
    private = Path(tempfile.mkdtemp(prefix="i18n-", dir=build_book.REPO / "build"))
    try:
        conf = build_book.generate_conf(private / "conf", None)
        pot = private / "gettext"
        gettext = [build_book.BIN / "sphinx-build", "-b", "gettext", "-c", conf.parent, "-d", private / "doctrees"]
        build_book.check(build_book.run([*gettext, "-D", "gettext_compact=0", "-q", ".", pot]), "sphinx-build")
        chosen = private / "chosen"
        for page in pages:
            source = pot / f"{page}.pot"
            if not source.is_file():
                sys.exit(f"no messages extracted for {page} (is it in _toc.yml?)")
            (chosen / source.relative_to(pot)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, chosen / source.relative_to(pot))
        intl = [build_book.BIN / "sphinx-intl", "update", "-p", chosen, "-l", "zh_CN", "-d", build_book.LOCALES]
        build_book.check(build_book.run([*intl, "--line-width", "0"]), "sphinx-intl update")
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
