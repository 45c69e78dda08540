"""The Chinese edition's catalogs, checked without a build (a few seconds).

``book/locales/zh_CN/LC_MESSAGES/book/<page>.po`` holds one message per paragraph, heading, caption or glossary
definition of a page: the English ``msgid`` and its Chinese ``msgstr``. An empty or fuzzy ``msgstr`` falls back to
the English text in the built edition.

* Coverage: the share of the English words of each page, and of the whole book, that stand in messages translated
  and not fuzzy. Words are counted outside math (``$...$``), roles (``{ref}`...```), inline code and link targets.
  The table is printed (``pytest -s``), written to ``_build/translation-coverage.txt``, and shown in full when the
  total is below ``MIN_SHARE``.
* Consistency of every translated message with its English (what a build cannot always see): the same math spans,
  byte for byte; the same role targets (a shown title may be translated: ``{term}`批量归一化 <batch normalization>```);
  the same inline code and link targets; every glued value in the fully qualified form ``page.ipynb::key:fmt`` (the
  short form vanishes from a translated page without a warning), naming the keys and formats of the English, and a
  notebook that glues that key.
* The rest of what the edition translates: every part caption of ``_toc.yml`` has its Chinese in
  ``book/locales/zh_CN/edition.json``; every glued text value of the notebooks that contains English words has its
  Chinese in ``book/locales/zh_CN/glued_words.json`` (``book/_ext/bnref_glued_words.py`` pastes it); every page of
  the book has a catalog (else ``make catalogs``).

``test_checks_catch_planted_faults`` shows that each consistency check fails on a message made to break it.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from functools import cache
from pathlib import Path

import pytest
import yaml
from babel.messages.pofile import read_po
from markdown_it import MarkdownIt
from myst_nb.core.variables import format_plain_text

REPO = Path(__file__).resolve().parents[1]
LANGUAGE = "zh_CN"
LOCALE = REPO / "book" / "locales" / LANGUAGE
CATALOGS = LOCALE / "LC_MESSAGES"
REPORT = REPO / "_build" / "translation-coverage.txt"

# The edition is published as complete when at least this share of the book's English words is translated (and not
# fuzzy). The bar; the total below it fails the test, with the table of every page.
MIN_SHARE = 0.95

sys.path.insert(0, str(REPO / "book" / "_ext"))
import bnref_glued_words  # noqa: E402 (the extension the Chinese build loads, from book/_ext)

ROLE = re.compile(r"\{([A-Za-z][\w:-]*)\}`([^`]*)`")
CODE = re.compile(r"``(.+?)``|(?<![}`])`([^`]+)`")
MATH = re.compile(r"\$\$.+?\$\$|\$[^$]+\$", re.DOTALL)
LINK = re.compile(r"\]\(([^)\s]+)\)")
URL = re.compile(r"https?://\S+")
WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
MARKDOWN = MarkdownIt("commonmark")
GLUE_FULL = re.compile(r"(?P<path>[^:`]+\.ipynb)::(?P<key>[^:`]+):(?P<fmt>[^:`]*)")


# ---------------------------------------------------------------------------------------------------------------
# Catalogs and what they say.
# ---------------------------------------------------------------------------------------------------------------


def catalog_files() -> list[Path]:
    return sorted(CATALOGS.rglob("*.po"))


def page_of(po: Path) -> str:
    """The document a catalog translates: ``.../LC_MESSAGES/book/why.po`` -> ``book/why``."""
    return po.relative_to(CATALOGS).with_suffix("").as_posix()


@cache
def messages(po: Path) -> list[tuple[str, str, bool]]:
    """(English, translation, fuzzy) for every message of ``po`` (the header left out)."""
    with po.open("rb") as f:
        catalog = read_po(f, abort_invalid=True)
    return [(m.id, m.string, m.fuzzy) for m in catalog if m.id and isinstance(m.id, str)]


def prose(text: str) -> str:
    """``text`` without math, roles, inline code, link targets and URLs: the words a translator translates."""
    text = ROLE.sub(" ", text)
    text = CODE.sub(" ", text)
    text = MATH.sub(" ", text)
    text = LINK.sub("]", text)
    return URL.sub(" ", text)


def english_words(text: str) -> int:
    return len(WORD.findall(prose(text)))


def is_translated(translation: str, fuzzy: bool) -> bool:
    return bool(translation) and not fuzzy


def coverage(po: Path) -> tuple[int, int]:
    """(words in translated, non-fuzzy messages, all words) of one catalog."""
    done = total = 0
    for english, translation, fuzzy in messages(po):
        words = english_words(english)
        total += words
        done += words if is_translated(translation, fuzzy) else 0
    return done, total


# ---------------------------------------------------------------------------------------------------------------
# Consistency of one translated message with its English.
# ---------------------------------------------------------------------------------------------------------------


def role_target(body: str) -> str:
    """The target of a role: the part in ``< >`` when a title is shown, else the whole body."""
    titled = re.fullmatch(r"(.*?)<([^<>]+)>\s*", body, re.DOTALL)
    return (titled.group(2) if titled else body).strip()


def glue_parts(body: str) -> tuple[str, str]:
    """(key, format) of an English glue role body: ``key``, ``key:fmt``, ``page.ipynb::key`` or ``...::key:fmt``.

    myst-nb splits the format off at the last colon (a short form without a format means ``s``)."""
    if "::" in body:
        _, rest = body.split("::", 1)
        key, _, fmt = rest.partition(":")
        return key, fmt or "s"
    key, _, fmt = body.partition(":")
    return key, fmt or "s"


@cache
def glued_keys(notebook: Path) -> dict[str, str]:
    """Every key the notebook glues -> its text/plain value (as myst-nb pastes it with format ``s``)."""
    found: dict[str, str] = {}
    if not notebook.is_file():
        return found
    for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            if name is None:
                continue
            prefix = output["metadata"]["scrapbook"].get("mime_prefix", "")
            text = output.get("data", {}).get(prefix + "text/plain")
            if isinstance(text, list):
                text = "".join(text)
            found[name] = format_plain_text(text, "s") if text is not None else ""
    return found


def literal_asterisks(text: str) -> int:
    """Asterisks a reader would see: those left in the text after Markdown has parsed the emphasis (code and math
    aside). ``为**粗体**，`` keeps its ``**``: CommonMark opens emphasis only when the marker is not squeezed
    between a letter and punctuation, and a role or a full-width comma counts as punctuation."""
    rendered = MARKDOWN.renderInline(MATH.sub("x", text))
    return re.sub(r"<code>.*?</code>", "", rendered, flags=re.DOTALL).count("*")


def block_kinds(text: str) -> list[str]:
    """The kinds of the top-level Markdown blocks ``text`` parses into (paragraph, ordered list, heading, ...).
    Sphinx keeps a translation only when it parses into one paragraph, and drops it silently otherwise: a
    translated table cell "1. 加速训练" reads as an ordered list."""
    tokens = MARKDOWN.parse(MATH.sub("x", text))
    return [t.type.removesuffix("_open") for t in tokens if t.level == 0 and t.nesting >= 0]


def consistency_problems(english: str, translation: str, page: str) -> list[str]:
    """What the translation changed that must stay as in the English (``page``: the document, for glue paths)."""
    problems: list[str] = []
    english_roles, translated_roles = ROLE.findall(english), ROLE.findall(translation)

    english_glue = sorted(glue_parts(body) for name, body in english_roles if name.startswith("glue"))
    translated_glue = []
    for name, body in translated_roles:
        if not name.startswith("glue"):
            continue
        full = GLUE_FULL.fullmatch(body.strip())
        if not full or not full["fmt"]:
            problems.append(f"glue role not fully qualified (write {{{name}}}`page.ipynb::key:fmt`): {body!r}")
            continue
        notebook = (REPO / page).parent / full["path"]
        if full["key"] not in glued_keys(notebook):
            problems.append(f"{full['path']} (from {page}) glues no key {full['key']!r}")
        translated_glue.append((full["key"], full["fmt"]))
    if english_glue != sorted(translated_glue):
        problems.append(f"glued keys and formats differ: English {english_glue}, translation {sorted(translated_glue)}")

    english_other = Counter((name, role_target(body)) for name, body in english_roles if not name.startswith("glue"))
    translated_other = Counter(
        (name, role_target(body)) for name, body in translated_roles if not name.startswith("glue")
    )
    if english_other != translated_other:
        problems.append(
            f"roles differ: missing {sorted((english_other - translated_other).elements())}, "
            f"extra {sorted((translated_other - english_other).elements())}"
        )

    def without_roles(text: str) -> str:
        return ROLE.sub(" ", text)

    def code(text: str) -> Counter[str]:
        return Counter(a or b for a, b in CODE.findall(without_roles(text)))

    def math(text: str) -> Counter[str]:
        return Counter(MATH.findall(CODE.sub(" ", without_roles(text))))

    if math(english) != math(translation):
        problems.append(
            f"math differs: missing {sorted((math(english) - math(translation)).elements())}, "
            f"extra {sorted((math(translation) - math(english)).elements())}"
        )
    if code(english) != code(translation):
        problems.append(
            f"inline code differs: missing {sorted((code(english) - code(translation)).elements())}, "
            f"extra {sorted((code(translation) - code(english)).elements())}"
        )
    if literal_asterisks(translation) > literal_asterisks(english):
        problems.append("emphasis shown as literal * (put a space between ** and a Chinese character next to it)")
    # Every message is the inline text of one node (a paragraph, title, caption, table cell, term), and a translation
    # is parsed on its own: it must come out as one paragraph. (Display math and code blocks are messages too, but
    # are not parsed: their translation is the English, unchanged.)
    if translation != english and block_kinds(translation) not in ([], ["paragraph"]):
        problems.append(
            f"the translation parses as {block_kinds(translation)}, not as one paragraph (Sphinx then drops it "
            "silently; escape a leading '1.' as '1\\.', '-' as '\\-', '#' as '\\#')"
        )
    if Counter(LINK.findall(english)) != Counter(LINK.findall(translation)):
        problems.append(f"link targets differ: {LINK.findall(english)} vs {LINK.findall(translation)}")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------------------------------------------


def toc() -> dict:
    return yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8"))


def toc_documents() -> list[str]:
    """Every document of _toc.yml (root, chapters and their sections, at any depth), without its suffix."""
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key in ("root", "file"):
                if isinstance(node.get(key), str):
                    found.append(re.sub(r"\.(md|ipynb)$", "", node[key]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(toc())
    return found


def coverage_table() -> tuple[str, float]:
    rows, done_all, total_all = [], 0, 0
    for po in catalog_files():
        done, total = coverage(po)
        done_all, total_all = done_all + done, total_all + total
        rows.append(f"  {page_of(po):<24} {done:>6} / {total:<6} {100 * done / max(total, 1):5.1f} %")
    rows += [f"  {doc:<24} no catalog yet (`make catalogs`): not counted" for doc in missing_catalogs()]
    share = done_all / max(total_all, 1)
    header = f"Chinese edition: English words translated (not fuzzy), per page (threshold {100 * MIN_SHARE:.0f} %)"
    total_row = f"  {'total':<24} {done_all:>6} / {total_all:<6} {100 * share:5.1f} %"
    return "\n".join([header, *rows, total_row]), share


#: Pages that stay English in both editions: the API reference, generated from the docstrings (tools/api_reference.py).
ENGLISH_ONLY = {"book/api"}


def missing_catalogs() -> list[str]:
    return [doc for doc in toc_documents() if doc not in ENGLISH_ONLY and not (CATALOGS / f"{doc}.po").is_file()]


def test_catalogs_exist() -> None:
    assert catalog_files(), f"no catalogs in {CATALOGS}"
    missing = missing_catalogs()
    assert not missing, f"pages of _toc.yml without a catalog: {missing} (run `make catalogs`)"


def test_share_translated() -> None:
    table, share = coverage_table()
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(table + "\n", encoding="utf-8")
    print("\n" + table)
    assert share >= MIN_SHARE, f"only {100 * share:.1f} % of the book's words are translated:\n{table}"


@pytest.mark.parametrize("po", catalog_files(), ids=page_of)
def test_translations_keep_math_roles_code_and_glue(po: Path) -> None:
    page = page_of(po)
    problems = []
    for english, translation, fuzzy in messages(po):
        if is_translated(translation, fuzzy):
            problems += [
                f"{problem}\n      in: {english[:100]!r}"
                for problem in consistency_problems(english, translation, page)
            ]
    assert not problems, f"{len(problems)} translated messages of {po.name} break the rules:\n  " + "\n  ".join(
        problems
    )


def test_toc_captions_translated() -> None:
    captions = json.loads((LOCALE / "edition.json").read_text(encoding="utf-8"))["toc_captions"]
    missing = [part["caption"] for part in toc().get("parts", []) if part.get("caption") not in captions]
    assert not missing, f"part captions of _toc.yml without Chinese in {LOCALE / 'edition.json'}: {missing}"


def test_glued_words_have_chinese() -> None:
    table = bnref_glued_words.load_table(str(LOCALE / "glued_words.json"))
    problems, checked = [], 0
    for notebook in sorted((REPO / "book").glob("*.ipynb")):
        for key, value in glued_keys(notebook).items():
            checked += 1
            _, problem = bnref_glued_words.translated_or_problem(value, table)
            if problem:
                problems.append(f"{notebook.name}::{key}: {problem}")
    assert checked, "no glued value found in the notebooks"
    assert not problems, "add these to glued_words.json (values, patterns or keep):\n  " + "\n  ".join(problems)


# Each planted translation breaks one rule; the check must flag it, and pass the correct translation beside it.
PLANTED = {
    "math changed": ("The mean $\\mu$ of $x$.", "均值 $\\mu$ 属于 $y$。"),
    "math dropped": ("Here $$a = b$$ holds.", "这里成立。"),
    "role target changed": ("See {ref}`sec-bw`.", "见 {ref}`sec-fw`。"),
    "role dropped": ("Cited {cite:p}`ioffe2015`.", "引用。"),
    "glue short form": ("Drift {glue:text}`why_drift_article_bn`.", "漂移 {glue:text}`why_drift_article_bn`。"),
    "glue without format": (
        "Drift {glue:text}`why_drift_article_bn`.",
        "漂移 {glue:text}`why.ipynb::why_drift_article_bn`。",
    ),
    "glue other key": (
        "Drift {glue:text}`why_drift_article_bn`.",
        "漂移 {glue:text}`why.ipynb::why_drift_deep_bn:s`。",
    ),
    "glue format changed": (
        "Loss {glue:text}`why_drift_article_bn:s`.",
        "损失 {glue:text}`why.ipynb::why_drift_article_bn:.2f`。",
    ),
    "glue unknown key": ("Drift {glue:text}`no_such_key`.", "漂移 {glue:text}`why.ipynb::no_such_key:s`。"),
    "glue wrong notebook": (
        "Drift {glue:text}`why_drift_article_bn`.",
        "漂移 {glue:text}`claims.ipynb::why_drift_article_bn:s`。",
    ),
    "code changed": ("Call `bnref.batch_norm_forward`.", "调用 `bnref.batch_norm_backward`。"),
    "link target changed": ("Read [the errata](errata.md).", "阅读[勘误](glossary.md)。"),
    "emphasis not parsed": (
        "BN's drift is **{glue:text}`why_drift_article_word`** here.",
        "漂移为**{glue:text}`why.ipynb::why_drift_article_word:s`**。",
    ),
    "paragraph read as a list": ("1. speeds up training", "1. 加速训练"),
}
CORRECT = {
    "paragraph read as a list": "1\\. 加速训练",
    "math changed": "$x$ 的均值 $\\mu$。",
    "role target changed": "见 {ref}`反向传播 <sec-bw>`。",
    "glue short form": "漂移 {glue:text}`why.ipynb::why_drift_article_bn:s`。",
    "glue format changed": "损失 {glue:text}`why.ipynb::why_drift_article_bn:s`。",
    "code changed": "调用 `bnref.batch_norm_forward`。",
    "link target changed": "阅读[勘误](errata.md)。",
    "emphasis not parsed": "漂移为 **{glue:text}`why.ipynb::why_drift_article_word:s`**。",
}


@pytest.mark.parametrize("fault", PLANTED)
def test_checks_catch_planted_faults(fault: str) -> None:
    if "glue" in fault:
        assert "why_drift_article_bn" in glued_keys(REPO / "book" / "why.ipynb"), "planted glue key is gone"
    english, broken = PLANTED[fault]
    assert consistency_problems(english, broken, "book/why"), f"the checks pass a translation with {fault}"
    if fault in CORRECT:
        assert not consistency_problems(english, CORRECT[fault], "book/why"), f"the checks flag a correct {fault}"


def test_glued_words_check_catches_missing_entry() -> None:
    table = bnref_glued_words.load_table(str(LOCALE / "glued_words.json"))
    assert bnref_glued_words.translated_or_problem("smaller by a planted margin", table)[1]
    assert bnref_glued_words.translated_or_problem("4 to 8", table) == ("4 至 8", "")
    assert bnref_glued_words.translated_or_problem("3.90 ± 0.28", table) == ("3.90 ± 0.28", "")


# ---------------------------------------------------------------------------------------------------------------
# The term base: one Chinese term per English term (book/locales/zh_CN/termbase.json).
# ---------------------------------------------------------------------------------------------------------------

TERMBASE = LOCALE / "termbase.json"
CHINESE_WORD = re.compile(r"[\u4e00-\u9fff]")


@cache
def termbase() -> dict:
    return json.loads(TERMBASE.read_text(encoding="utf-8"))


def termbase_text(text: str) -> str:
    """``text`` as the term base reads it: inline code, math, role targets (a shown title stays: readers see it),
    link targets and URLs masked as ``⟨code⟩``, ``⟨math⟩``, ``⟨target⟩``. The targets of ``{doc}`` and of
    ``{ref}`ch-...``` stay (file names and labels, no Chinese): the chapter-reference patterns need them."""

    roles: list[str] = []  # kept out of the way of the code pattern while it runs, then put back

    def role(match: re.Match) -> str:
        name, body = match.group(1), match.group(2)
        if name == "doc" or role_target(body).startswith("ch-"):
            roles.append(match.group(0))
        else:
            titled = re.fullmatch(r"(.*?)<([^<>]+)>\s*", body, re.DOTALL)
            roles.append(f"{{{name}}}`{titled.group(1)}<⟨target⟩>`" if titled else f"{{{name}}}`⟨target⟩`")
        return f"\0{len(roles) - 1}\0"

    text = ROLE.sub(role, text)
    text = CODE.sub("⟨code⟩", text)
    text = MATH.sub("⟨math⟩", text)
    text = LINK.sub("](⟨target⟩)", text)
    text = URL.sub("⟨target⟩", text)
    return re.sub(r"\0(\d+)\0", lambda m: roles[int(m.group(1))], text)


def termbase_problems(english: str, translation: str, base: dict | None = None) -> list[str]:
    """Variants of the term base that ``translation`` uses. A variant the English itself contains is a quotation
    (a glossary line listing alternatives, an English sentence naming a Chinese term) and passes."""
    base = termbase() if base is None else base
    text = termbase_text(translation)
    problems = []
    for term in base["terms"]:
        for variant in term["forbidden"]:
            if variant in text and variant not in english:
                problems.append(f"{variant!r} for {term['en']!r}: write {term['zh']!r}")
    has_words = bool(CHINESE_WORD.search(ROLE.sub(" ", text)))
    for pattern in base.get("patterns", []):
        if pattern.get("prose_only") and not has_words:
            continue  # a table cell or a list of files: "{doc}`forward`；tests/test_article.py"
        for found in re.finditer(pattern["forbidden"], text):
            problems.append(f"{found.group(0)!r} ({pattern['en']}): write {pattern['zh']!r}")
    return problems


@pytest.mark.parametrize("po", catalog_files(), ids=page_of)
def test_catalogs_follow_the_term_base(po: Path) -> None:
    problems = [
        f"{problem}\n      in: {translation[:100]!r}"
        for english, translation, fuzzy in messages(po)
        if translation
        for problem in termbase_problems(english, translation)
    ]
    assert not problems, f"{len(problems)} messages of {po.name} use variants ({TERMBASE.name}):\n  " + "\n  ".join(
        problems
    )


def glossary_disagreements(base: dict) -> list[str]:
    """Terms of ``base`` that name a glossary headword whose entry in the Chinese glossary (its term lines and its
    translated definition) does not state the term, and variants that are another term's chosen word."""
    glossary = messages(CATALOGS / "book" / "glossary.po")
    ids = [english for english, _, _ in glossary]
    problems = []
    for term in base["terms"]:
        headword = term.get("glossary")
        if headword is None:
            continue
        if headword not in ids:
            problems.append(f"{term['en']!r}: no glossary headword {headword!r}")
            continue
        entry = []  # the headword's messages: its term lines, then its definition (the first long message)
        for english, translation, _ in glossary[ids.index(headword) :]:
            entry.append(translation)
            if len(english.split()) > 8:
                break
        if not any(term["zh"] in text for text in entry):
            problems.append(f"{term['en']!r}: the glossary entry {headword!r} does not state {term['zh']!r}")
    chosen = {term["zh"] for term in base["terms"]}
    problems += [f"{v!r} is a variant and a chosen term" for t in base["terms"] for v in t["forbidden"] if v in chosen]
    return problems


def test_term_base_agrees_with_the_glossary() -> None:
    problems = glossary_disagreements(termbase())
    assert not problems, "\n".join(problems)


def test_glossary_check_catches_a_planted_disagreement() -> None:
    base = json.loads(json.dumps(termbase()))
    base["terms"].append(
        {"en": "gradient check", "zh": "梯度检查", "forbidden": ["梯度检验"], "glossary": "gradient check"}
    )
    problems = glossary_disagreements(base)
    assert any("does not state '梯度检查'" in p for p in problems), problems
    assert any("'梯度检验' is a variant" in p for p in problems), problems


PLANTED_TERMS = {
    # name: (English, broken translation, correct translation)
    "calque 运行统计量": ("BN uses its running statistics.", "BN 使用其运行统计量。", "BN 使用其滑动统计量。"),
    "移动平均": ("an exponential moving average", "一个指数移动平均", "一个指数滑动平均"),
    "练习": ("See exercise {ref}`ex-fw-centre`.", "见练习 {ref}`ex-fw-centre`。", "见习题 {ref}`ex-fw-centre`。"),
    "一遍法": ("The one-pass variance fails.", "一遍法方差失效。", "单遍方差失效。"),
    "accuracy as 精度": ("test accuracy", "测试精度", "测试准确率"),
    "小 … 倍": (
        "smaller than PyTorch's by exactly $(m-1)/m$",
        "比 PyTorch 的小 $(m-1)/m$ 倍",
        "是 PyTorch 的 $(m-1)/m$ 倍",
    ),
    "小了 glue 倍": (
        "{glue:text}`ics_factor` times less",
        "小了 {glue:text}`claims.ipynb::ics_factor:s` 倍",
        "仅为其 1/{glue:text}`claims.ipynb::ics_factor:s`",
    ),
    "bare chapter as subject": (
        "{doc}`backward` derives all the gradients.",
        "{doc}`backward`推导了全部梯度。",
        "“{doc}`backward`”一章推导了全部梯度。",
    ),
    "chapter without quotes": (
        "as in chapter {ref}`ch-claims`",
        "见 {ref}`检验论断 <ch-claims>` 一章",
        "见“{ref}`检验论断 <ch-claims>`”一章",
    ),
    "appendix without quotes": (
        "the appendix {doc}`bounds` derives it",
        "附录 {doc}`bounds` 推导了它",
        "附录“{doc}`bounds`”推导了它",
    ),
    "heading of the errata": (
        "**Where the book proves it.** See below.",
        "**本书在哪里证明。** 见下文。",
        "**本书中的证明。** 见下文。",
    ),
}
# Variants where the reader does not see them, or where the English quotes them, pass.
NOT_VARIANTS = {
    "inside code": ("Call `f`.", "调用 `运行统计量`。"),
    "inside math": ("The rule $a$.", "规则 $\\text{练习}$。"),
    "role target": ("See {term}`x`.", "见 {term}`移动平均`。"),
    "quoted by the English": ("Chinese texts say 移动平均.", "中文文献说移动平均。"),
    "a factor above 1": ("ten times smaller", "小了一个数量级，是原来的 1/10，差 10 倍"),
    "a table cell naming a chapter": (
        "{doc}`mnist`; tests/test_article.py",
        "{doc}`mnist`；tests/test_article.py（原样）",
    ),
    "not a chapter": ("listed in the {doc}`glossary`", "列在{doc}`glossary`中"),
}


@pytest.mark.parametrize("fault", PLANTED_TERMS)
def test_term_base_catches_planted_variants(fault: str) -> None:
    english, broken, correct = PLANTED_TERMS[fault]
    assert termbase_problems(english, broken), f"the term base passes a translation with {fault}"
    assert not termbase_problems(english, correct), f"the term base flags the correct form of {fault}"


@pytest.mark.parametrize("case", NOT_VARIANTS)
def test_term_base_passes_what_a_reader_does_not_see(case: str) -> None:
    english, translation = NOT_VARIANTS[case]
    assert not termbase_problems(english, translation), f"the term base flags a variant {case}"


def test_term_base_catches_a_variant_planted_in_a_real_catalog() -> None:
    """The catalog test itself fails: a real message of inference.po with its 滑动统计量 turned back into 运行统计量."""
    po = CATALOGS / "book" / "inference.po"
    planted = [
        (english, translation.replace("滑动统计量", "运行统计量"), fuzzy)
        for english, translation, fuzzy in messages(po)
        if "滑动统计量" in translation
    ]
    assert planted, "inference.po no longer says 滑动统计量: plant another term"
    assert all(termbase_problems(english, translation) for english, translation, _ in planted)
