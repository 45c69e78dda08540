"""Sphinx extension: a link to the same page in the book's other edition (English <-> 中文), on every page.

The published site holds one Sphinx build per language side by side: ``_build/html/en`` and ``_build/html/zh_CN``
(``tools/build_book.py`` builds and copies them there). Both are built from the same sources, so a page has the
same name in each, and the other edition's copy of page ``book/why`` is ``../../zh_CN/book/why.html`` seen from
``en/book/why.html``: one ``../`` per folder of the page name, one for the edition folder. The link is a plain
``<a href>`` written into the page at build time (it works without JavaScript and over ``file://`` or http); a
one-line ``onclick`` carries the reader's current ``#anchor`` along, since both editions keep the English anchors, and
the search page's query (``?q=...``), so switching edition on the search page searches the other edition.

The link sits in the article header next to the theme's buttons: the template ``bnref-lang-switch.html`` (in the
``templates`` folder beside this file, added to ``templates_path`` here) is listed in sphinx-book-theme's
``article_header_end`` option in ``_config.yml``. The edition of a build is its Sphinx ``language`` (``en`` when
unset).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.config import Config

# Edition folder (= Sphinx language) -> (label shown in the switch, BCP 47 tag for hreflang and lang).
EDITIONS: dict[str, tuple[str, str]] = {"en": ("English", "en"), "zh_CN": ("中文", "zh-CN")}
TITLES = {"en": "Read this page in English", "zh_CN": "阅读本页的中文版"}
TEMPLATES = Path(__file__).resolve().parent / "templates"


def edition_of(config: Config) -> str:
    """The edition folder of this build: its language, normalised to a key of ``EDITIONS``."""
    language = (config.language or "en").replace("-", "_")
    return language if language in EDITIONS else language.split("_")[0]


def other_edition_links(pagename: str, edition: str) -> list[dict[str, str]]:
    """The links from page ``pagename`` of ``edition`` to the same page in every other edition."""
    up = "../" * (pagename.count("/") + 1)
    return [
        {"href": f"{up}{code}/{pagename}.html", "label": label, "lang": tag, "title": TITLES[code]}
        for code, (label, tag) in EDITIONS.items()
        if code != edition
    ]


def add_templates(app: Sphinx, config: Config) -> None:
    """The book's templates first, before the themes' component folders (which they add to ``templates_path``), so
    that they can replace a component (``bnref_site.py``: the sidebar toggles with translatable titles)."""
    if str(TEMPLATES) in config.templates_path:
        config.templates_path.remove(str(TEMPLATES))
    config.templates_path.insert(0, str(TEMPLATES))


def add_links(app: Sphinx, pagename: str, templatename: str, context: dict[str, Any], doctree: Any) -> None:
    context["bnref_language_links"] = other_edition_links(pagename, edition_of(app.config))


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("config-inited", add_templates)
    app.connect("html-page-context", add_links)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
