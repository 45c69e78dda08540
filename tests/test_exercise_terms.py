"""The Chinese edition's exercise labels use the term base's word (习题), not sphinx-exercise's own (练习).

The site check needs a built site (``make book``): a missing ``_build/html/zh_CN`` is a failure, as in
``tests/test_launch.py``.
"""

from __future__ import annotations

import gettext
import json
import os
import re
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "book" / "_ext"))
import bnref_exercise_terms as terms  # noqa: E402

HTML_DIR = Path(os.environ.get("BNREF_BOOK_HTML", REPO_ROOT / "_build" / "html")).resolve()
TERMBASE = REPO_ROOT / "book" / "locales" / "zh_CN" / "termbase.json"


class Theirs(gettext.NullTranslations):
    def gettext(self, message: str) -> str:
        return {"Exercise": "练习", "Solution to": "解答"}.get(message, message)


def test_term_base_word_first_then_the_extensions_own():
    table = terms.term_table(TERMBASE)
    word = {t["en"]: t["zh"] for t in json.loads(TERMBASE.read_text(encoding="utf-8"))["terms"]}["exercise"]
    assert table == {"Exercise": word} and word == "习题"
    labels = terms.TermBaseLabels(table, Theirs())
    assert labels.gettext("Exercise") == "习题"
    assert labels.gettext("Solution to") == "解答"  # not decided by the term base: sphinx-exercise's translation
    assert terms.TermBaseLabels(table, None).gettext("Solution to") == "Solution to"


def test_missing_term_is_a_value_error(tmp_path):
    base = tmp_path / "termbase.json"
    base.write_text(json.dumps({"terms": [{"en": "running mean", "zh": "滑动均值"}]}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"no term base entry for \['exercise'\]"):
        terms.term_table(base)


def test_built_chinese_pages_label_exercises_with_the_term_base_word():
    pages = sorted((HTML_DIR / "zh_CN" / "book").glob("*.html"))
    assert pages, f"no Chinese edition under {HTML_DIR / 'zh_CN'}: run make book"
    labelled = 0
    for page in pages:
        html = page.read_text(encoding="utf-8")
        # sphinx-exercise's title: <p class="admonition-title">...<span class="caption-number">LABEL N </span>
        found = re.findall(r'caption-number">\s*([^\s<]+)\s+[\d.]+', html)
        assert "练习" not in found, f"{page.name}: an exercise labelled 练习"
        labelled += found.count("习题")
    assert labelled >= 10  # the book has dozens of exercises
