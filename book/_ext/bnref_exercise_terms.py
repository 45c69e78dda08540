"""Sphinx extension for a translated edition: sphinx-exercise's labels in the edition's own words.

sphinx-exercise numbers each exercise with a label it translates from its own message catalog (domain
``exercise``), where the Chinese for "Exercise" is 练习. The Chinese edition's term base
(``book/locales/zh_CN/termbase.json``) fixes 习题 as the one word for an exercise and forbids 练习, which
``tests/test_translation.py`` enforces on every catalog of the book; the label would be the one place left that
says otherwise. This extension, loaded only by the translated build (``tools/build_book.py``), puts the term base's
word in front of sphinx-exercise's catalog when it is set up, before the ``config-inited`` event at which
sphinx-exercise writes its label into ``numfig_format`` (so it must be listed after ``sphinx_exercise``): a lookup of
"Exercise" answers the term base's translation of "exercise", and every other message falls through to
sphinx-exercise's own translation.
"""

from __future__ import annotations

import gettext
import json
from pathlib import Path
from typing import Any

from sphinx import locale
from sphinx.application import Sphinx

#: sphinx-exercise's message catalog, and its labels that the term base decides: label -> English term.
CATALOG = "exercise"
LABELS = {"Exercise": "exercise"}


class TermBaseLabels(gettext.NullTranslations):
    """``table`` first, then ``fallback`` (sphinx-exercise's own translation of the label)."""

    def __init__(self, table: dict[str, str], fallback: gettext.NullTranslations | None) -> None:
        super().__init__()
        self.table = table
        if fallback is not None:
            self.add_fallback(fallback)

    def gettext(self, message: str) -> str:
        return self.table[message] if message in self.table else super().gettext(message)


def term_table(termbase: Path) -> dict[str, str]:
    """Label -> translation, from the term base's entries for :data:`LABELS`' terms (ValueError if one is missing)."""
    terms = {t["en"]: t["zh"] for t in json.loads(termbase.read_text(encoding="utf-8"))["terms"]}
    missing = sorted(set(LABELS.values()) - set(terms))
    if missing:
        raise ValueError(f"{termbase}: no term base entry for {missing}")
    return {label: terms[term] for label, term in LABELS.items()}


def use_term_base(app: Sphinx) -> None:
    language = (app.config.language or "en").replace("-", "_")
    termbase = Path(app.srcdir) / "book" / "locales" / language / "termbase.json"
    if language == "en" or not termbase.exists():
        return
    key = ("general", CATALOG)  # sphinx.locale keys its translators by (namespace, catalog)
    locale.translators[key] = TermBaseLabels(term_table(termbase), locale.translators.get(key))


def setup(app: Sphinx) -> dict[str, Any]:
    use_term_base(app)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
