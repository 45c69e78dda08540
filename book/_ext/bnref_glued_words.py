"""Sphinx extension for a translated edition: glued values that are English words, pasted in the edition's language.

The notebooks glue verdicts computed from the records (``smaller``, ``holds only in a sense``, ``BN higher``) and
myst-nb pastes them into the prose through ``{glue:text}`` as they are. In the Chinese edition they would stay
English inside Chinese sentences. This extension, loaded only by the translated build (``tools/build_book.py``),
replaces each pasted text (a ``pasted-text`` inline node, whether pasted from the same notebook or from another
page through ``page.ipynb::key``) by its translation from a per-language table,
``book/locales/<language>/glued_words.json``:

``values``
    whole value -> translation (``"smaller": "更小"``);
``patterns``
    values built from parts (``"4 to 8"``, ``"+1.19 (from +0.61 to +1.97)"``): a regular expression that must match
    the whole value, and a translation in which ``{1}`` inserts group 1 as it is and ``{t1}`` inserts group 1
    translated by these same rules (for a verdict word inside a longer value);
``separators``
    lists (``"a, b, c"``): each ``[separator, translated separator]`` splits a value that no value or pattern
    matched, and every part is translated on its own;
``keep``
    words that stay as they are in the translation (proper names such as PyTorch, units). A word without a
    lower-case letter (BN, CPU, AMD) is a name or an abbreviation and is kept anyway.

A pasted value that still contains an English word after translation is reported as a Sphinx warning, so the
``-W`` build fails and names the value to add to the table; ``tests/test_translation.py`` checks the same for every
glued text value of the notebooks without a build. Numbers are never touched: a value is replaced only as a whole
or through a pattern whose groups carry the numbers over unchanged.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging

LOGGER = logging.getLogger(__name__)
WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]|[A-Za-z]")
GROUP = re.compile(r"\{(t?)(\d+)\}")


@lru_cache(maxsize=4)
def load_table(path: str) -> dict[str, Any]:
    """The table of ``path``, checked for shape (a table with a bad key or pattern fails at once, named)."""
    table = json.loads(Path(path).read_text(encoding="utf-8"))
    unknown = set(table) - {"description", "values", "patterns", "separators", "keep"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    for pattern in table.get("patterns", []):
        if set(pattern) != {"match", "zh"}:
            raise ValueError(f"{path}: a pattern needs exactly 'match' and 'zh', got {pattern}")
        re.compile(pattern["match"])
    return table


def english_words(text: str, table: dict[str, Any]) -> list[str]:
    """Words of ``text`` that read as English: a lower-case letter in them, and not on the table's keep list."""
    keep = set(table.get("keep", []))
    words = [w.removesuffix("'s") for w in WORD.findall(text)]
    return [w for w in words if any(c.islower() for c in w) and w not in keep and len(w) > 1]


def translate(value: str, table: dict[str, Any]) -> str | None:
    """``value`` in the table's language, or None when no value, pattern or list rule of the table covers it."""
    values: dict[str, str] = table.get("values", {})
    if value in values:
        return values[value]
    for pattern in table.get("patterns", []):
        match = re.fullmatch(pattern["match"], value)
        if match:

            def group(found: re.Match[str], match: re.Match[str] = match) -> str:
                part = match.group(int(found.group(2)))
                return (translate(part, table) or part) if found.group(1) else part

            return GROUP.sub(group, pattern["zh"])
    for separator, translated in table.get("separators", []):
        if separator in value:
            parts = [translate(part, table) or part for part in value.split(separator)]
            if not any(english_words(part, table) for part in parts):
                return translated.join(parts)
    return None


def translated_or_problem(value: str, table: dict[str, Any]) -> tuple[str, str]:
    """(text to paste, problem): the translation, or the value itself when it has no English word; else a problem."""
    if not english_words(value, table):
        return value, ""
    done = translate(value, table)
    left = english_words(done, table) if done is not None else english_words(value, table)
    if done is None:
        return value, f"glued value {value!r} has no translation in the glued-words table"
    if left:
        return done, f"glued value {value!r} translates to {done!r}, which keeps the English words {left}"
    return done, ""


class TranslateGluedWords(SphinxPostTransform):
    """Replace pasted glue text by its translation (after myst-nb has resolved cross-page pastes, priority 5)."""

    default_priority = 50
    formats = ("html",)

    def apply(self, **kwargs: Any) -> None:
        path = self.config.bnref_glued_words
        if not path:
            return
        table = load_table(str(Path(self.app.srcdir, path)))
        for node in list(self.document.findall(nodes.inline)):
            if "pasted-text" not in node.get("classes", []):
                continue
            value = node.astext()
            text, problem = translated_or_problem(value, table)
            if problem:
                LOGGER.warning(f"{problem} ({path})", location=node, type="bnref", subtype="glued_words")
            if text != value:
                node.children = []
                node += nodes.Text(text)


def setup(app: Sphinx) -> dict[str, Any]:
    # The table, relative to the source folder; empty turns the extension off.
    app.add_config_value("bnref_glued_words", "", "env", types=[str])
    app.add_post_transform(TranslateGluedWords)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
