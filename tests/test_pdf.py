"""The PDF editions (``make pdf``, ``tools/build_pdf.py``): ``_build/pdf/bnref-en.pdf``, ``_build/pdf/bnref-zh_CN.pdf``.

For each edition: the file opens with pypdf; every chapter of the table of contents (its title as the built site
shows it, number included) is in the PDF's text, in its outline (bookmarks) and in its table of contents with the
page it starts on; no page's text holds untypeset TeX (``$$``, ``\\frac``, ``\\begin{``); the figures are in it, and
the bibliography. The Chinese PDF embeds a font that covers Chinese (fontconfig's ``fc-list :lang=zh`` names, or a
known CJK family) and its text extracts as Chinese. The published site carries both files and links to them.

``make pdf`` is not part of ``make test`` (it takes about three minutes on two cores): without the PDFs these tests
skip, unless ``BNREF_REQUIRE_PDF=1`` (the GitHub workflow, which runs ``make pdf`` and then these tests), in which
case they fail. The chapter titles come from the built site (``_build/html``, ``make book``).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import build_pdf as BUILD_PDF  # noqa: E402 (tools/ is not a package)

REPO_ROOT = Path(__file__).resolve().parents[1]
PDF_DIR = REPO_ROOT / "_build" / "pdf"
SITE = REPO_ROOT / "_build" / "html"
TOC = REPO_ROOT / "_toc.yml"
EDITIONS = ["en", "zh_CN"]
RAW_TEX = re.compile(r"\$\$|\\frac|\\begin\{")
CJK_FAMILIES = re.compile(
    r"WenQuanYi|WQY|Noto\w*CJK|SourceHan|Source\s*Han|DroidSansFallback|AR\s*PL|SimSun|SimHei|"
    r"Microsoft\s*YaHei|PingFang|Hiragino|UKai|UMing",
    re.IGNORECASE,
)
HAN = re.compile(r"[\u3400-\u9fff]")


def pdf_path(edition: str) -> Path:
    return PDF_DIR / f"bnref-{edition}.pdf"


@pytest.fixture(scope="module", params=EDITIONS)
def edition(request: pytest.FixtureRequest) -> str:
    path = pdf_path(request.param)
    if not path.is_file():
        reason = f"{path.relative_to(REPO_ROOT)} is not built: run `make book` then `make pdf`"
        if os.environ.get("BNREF_REQUIRE_PDF") == "1":
            pytest.fail(reason + " (BNREF_REQUIRE_PDF=1 requires the PDF editions)")
        pytest.skip(reason)
    return request.param


@functools.cache
def reader(edition: str) -> Any:
    from pypdf import PdfReader

    return PdfReader(pdf_path(edition))


@functools.cache
def texts(edition: str) -> tuple[str, ...]:
    return tuple(page.extract_text() or "" for page in reader(edition).pages)


def squash(text: str) -> str:
    """Text without spaces, ligatures and typographic quotes: the same normalisation make pdf uses to find chapters."""
    return BUILD_PDF.normalise(text)


def outline(edition: str) -> list[tuple[int, str, int]]:
    """(depth, title, 0-based page) of every outline entry, in order."""
    pdf = reader(edition)
    found: list[tuple[int, str, int]] = []

    def walk(items: list[Any], depth: int) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item, depth + 1)
            else:
                found.append((depth, str(item.title), pdf.get_destination_page_number(item)))

    walk(pdf.outline, 0)
    return found


def toc_documents() -> list[str]:
    """The documents of _toc.yml, in order (``book/why``)."""
    found = re.findall(r"^\s*-?\s*(?:root|file):\s*([^\s#]+)", TOC.read_text(encoding="utf-8"), re.MULTILINE)
    return [document.removesuffix(".md").removesuffix(".ipynb") for document in found]


def chapter_titles(edition: str) -> list[str]:
    """The title of every chapter of _toc.yml as the site's page shows it (its <h1>)."""
    titles = []
    for document in toc_documents():
        page = SITE / edition / f"{document}.html"
        if not page.is_file():
            pytest.skip(
                f"{page.relative_to(REPO_ROOT)} is not built (make book): the chapter titles come from the site"
            )
        heading = re.search(r"<h1[^>]*>(.*?)</h1>", page.read_text(encoding="utf-8"), re.DOTALL)
        assert heading, f"no <h1> in {page}"
        text = re.sub(r'<a class="headerlink".*?</a>', "", heading.group(1), flags=re.DOTALL)
        titles.append(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", text)).strip().replace("&#8217;", "\u2019"))
    return titles


def test_pdf_opens(edition: str) -> None:
    pdf = reader(edition)
    assert len(pdf.pages) > 50, f"{pdf_path(edition)} has only {len(pdf.pages)} pages"
    assert pdf.metadata and pdf.metadata.title, "the PDF has no title in its metadata"


def test_every_chapter_is_in_the_text(edition: str) -> None:
    pages = [squash(text) for text in texts(edition)]
    whole = "".join(pages)
    missing = [title for title in chapter_titles(edition) if squash(title) not in whole]
    assert not missing, f"chapters missing from the text of {pdf_path(edition).name}: {missing}"


def bookmarks(edition: str) -> list[tuple[str, int]]:
    """The top-level bookmarks: (title squashed, 0-based page)."""
    return [(squash(title), page) for depth, title, page in outline(edition) if depth == 0]


def bookmark_of(title: str, entries: list[tuple[str, int]]) -> tuple[str, int] | None:
    """The bookmark of a chapter: its title, or its title after the chapter's number ("1." "5.11.")."""
    key = squash(title)
    for entry, page in entries:
        if entry == key or re.fullmatch(r"(\d+\.)+" + re.escape(key), entry):
            return entry, page
    return None


def test_every_chapter_is_in_the_outline_at_its_page(edition: str) -> None:
    """Each chapter has a top-level bookmark, in the order of the book, on the page whose text begins it; the
    chapters of the numbered parts carry their numbers."""
    entries = bookmarks(edition)
    pages = [squash(text) for text in texts(edition)]
    last, numbered = -1, 0
    for title in chapter_titles(edition):
        found = bookmark_of(title, entries)
        assert found, f"no bookmark for chapter {title!r} in {pdf_path(edition).name}: {[e for e, _ in entries]}"
        entry, page = found
        assert page > last, f"bookmark of {title!r} out of order"
        assert entry in pages[page], f"the bookmark of {title!r} leads to page {page + 1}, which does not begin it"
        numbered += entry != squash(title)
        last = page
    assert numbered >= 5, f"only {numbered} chapters are numbered in {pdf_path(edition).name}"


def test_table_of_contents_lists_every_chapter_with_its_page(edition: str) -> None:
    """The contents in front of the book name each chapter and the number printed on its first page."""
    entries = bookmarks(edition)
    contents = squash("".join(texts(edition)[:3]))
    chapters = [bookmark_of(title, entries) for title in chapter_titles(edition)]
    assert all(chapters), "a chapter has no bookmark (test_every_chapter_is_in_the_outline_at_its_page)"
    first_page = chapters[0][1]  # the book's first page, printed as 1, follows the contents
    for entry, page in chapters[1:]:
        assert f"{entry}{page - first_page + 1}" in contents, f"{entry!r} with page {page - first_page + 1} not listed"


def test_no_untypeset_tex(edition: str) -> None:
    problems = []
    for number, text in enumerate(texts(edition), start=1):
        for match in RAW_TEX.finditer(text):
            problems.append(f"page {number}: ...{text[max(match.start() - 60, 0) : match.end() + 30]!r}...")
    assert not problems, "raw TeX in the PDF's text:\n" + "\n".join(problems[:20])


def test_figures_and_bibliography(edition: str) -> None:
    images = 0
    for page in reader(edition).pages:
        resources = page.get("/Resources") or {}
        xobjects = resources.get("/XObject") or {}
        images += sum(1 for x in xobjects.values() if x.get_object().get("/Subtype") == "/Image")
    site_figures = len(list((SITE / edition / "_images").glob("*.png"))) if (SITE / edition).is_dir() else 1
    assert images >= min(site_figures, 10), f"only {images} images in {pdf_path(edition).name}"
    bibliography = bookmark_of(chapter_titles(edition)[toc_documents().index("book/bibliography")], bookmarks(edition))
    assert bibliography, "no bookmark for the bibliography"
    pages = texts(edition)[bibliography[1] : bibliography[1] + 10]
    assert "IoffeandChristianSzegedy" in squash("".join(pages)), "the bibliography lists no Ioffe and Szegedy (2015)"


@functools.lru_cache(maxsize=1)
def installed_cjk_families() -> frozenset[str]:
    fc_list = shutil.which("fc-list")
    if not fc_list:
        return frozenset()
    listed = subprocess.run([fc_list, ":lang=zh", "family"], capture_output=True, text=True, check=False).stdout
    return frozenset(re.sub(r"\s+", "", name) for line in listed.splitlines() for name in line.split(",") if name)


def embedded_fonts(edition: str) -> dict[str, bool]:
    """Every font the PDF's pages use: base name (subset prefix removed) -> whether its program is embedded."""
    fonts: dict[str, bool] = {}
    for page in reader(edition).pages:
        resources = page.get("/Resources") or {}
        for font in (resources.get("/Font") or {}).values():
            font = font.get_object()
            name = str(font.get("/BaseFont", "")).lstrip("/").split("+")[-1]
            descendants = [d.get_object() for d in font.get("/DescendantFonts") or []] or [font]
            embedded = any(
                any(key in (d.get("/FontDescriptor") or {}) for key in ("/FontFile", "/FontFile2", "/FontFile3"))
                for d in descendants
            )
            fonts[name] = fonts.get(name, False) or embedded
    return fonts


def test_chinese_pdf_embeds_a_font_covering_chinese(edition: str) -> None:
    if edition != "zh_CN":
        pytest.skip("the Chinese edition only")
    fonts = embedded_fonts(edition)
    families = installed_cjk_families()
    cjk = [
        name
        for name, embedded in fonts.items()
        if embedded and (CJK_FAMILIES.search(name) or any(f and f in re.sub(r"\s+", "", name) for f in families))
    ]
    assert cjk, f"no embedded font covering Chinese in {pdf_path(edition).name}: {sorted(fonts)}"
    han = sum(len(HAN.findall(text)) for text in texts(edition))
    assert han > 10_000, f"only {han} Chinese characters extract from {pdf_path(edition).name}"


def test_site_publishes_and_links_the_pdfs(edition: str) -> None:
    """The published site holds the PDF, its landing page links to it, and so does every page of the edition."""
    if not (SITE / "index.html").is_file():
        pytest.skip("no built site (make book)")
    published = SITE / "pdf" / pdf_path(edition).name
    assert published.is_file(), f"{published} missing: `make pdf` copies the PDFs into the site"
    assert published.stat().st_size == pdf_path(edition).stat().st_size, f"{published} is not the latest PDF"
    assert f'href="pdf/{published.name}"' in (SITE / "index.html").read_text(encoding="utf-8")
    unlinked = []
    for page in (SITE / edition).rglob("*.html"):
        relative = page.relative_to(SITE / edition).as_posix()
        if relative.startswith(("_static/", "_sources/", "_images/", "_downloads/")):
            continue
        text = page.read_text(encoding="utf-8")
        if 'class="bnref-lang-switch"' in text and f"pdf/{published.name}" not in text:
            unlinked.append(relative)
    assert not unlinked, f"pages of the {edition} edition without a link to its PDF: {unlinked}"
