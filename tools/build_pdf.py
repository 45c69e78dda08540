"""The PDF editions: each edition of the book printed into one PDF by headless Chromium (what ``make pdf`` runs).

    python tools/build_pdf.py            # both editions -> _build/pdf/bnref-en.pdf, _build/pdf/bnref-zh_CN.pdf

Built from the same sources as the site, after it (``make book``):

1. each edition is built again with Sphinx's ``singlehtml`` builder, the whole book in one page, into the site's
   build folders (``build/book/en/_build/singlehtml``, ``build/book/zh_CN/singlehtml``; ``tools/build_book.py``). The
   builds share the site's doctrees, so nothing is read again unless a source changed since ``make book``;
2. that page is served on 127.0.0.1 and opened in Debian's headless Chromium through Playwright, as the browser check
   does (``tests/test_book_site.py``); MathJax typesets every equation (``MathJax.startup.promise``), every figure
   loads, the fonts are ready, and Chromium prints the page with the book's print styles (``book/_static/bnref.css``)
   and ``PDF_CSS`` below: A4, each chapter on a new page, page numbers in the footer, Chromium's tagged PDF and its
   outline of the headings. The Chinese edition is drawn, and embedded, with the font fontconfig picks for Chinese
   (``fonts-wqy-microhei``);
3. ``pypdf`` finds the page of each chapter (Chromium's outline, else the chapter's title in the page's text), puts
   a title page with the table of contents (chapter, page) in front, printed by Chromium too, and writes the PDF's
   outline (bookmarks: the contents, every chapter, and each chapter's sections), its title, author and language.

The published site gets both files: they are copied to ``_build/html/pdf/``, the landing page links to them, and so
does the header of every page of each edition (next to the language switch). ``make book`` alone publishes a site
without PDFs and without those links. Tests: ``tests/test_pdf.py``.
"""

from __future__ import annotations

import html
import io
import re
import shutil
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import build_book  # noqa: E402 (tools/ is not a package)

REPO = build_book.REPO
PDF_DIR = REPO / "_build" / "pdf"
SITE_PDF = build_book.SITE / "pdf"
# Edition -> (its singlehtml folder, the language tag of its pages).
EDITIONS = {
    "en": (build_book.WORK / "en" / "_build" / "singlehtml", "en"),
    "zh_CN": (build_book.WORK / "zh_CN" / "singlehtml", "zh-CN"),
}
TEXTS = {
    "en": {
        "contents": "Contents",
        "edition": "English edition",
        "authors": "The bnref authors",
        "pdf": "PDF",
        "pdf_title": "The whole book as one PDF file",
    },
    "zh_CN": {
        "contents": "目录",
        "edition": "中文版",
        "authors": "bnref 作者",
        "pdf": "PDF",
        "pdf_title": "全书的 PDF 文件",
    },
}
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
PRINT_PAGE = "bnref-print.html"
MARGIN = {"top": "16mm", "bottom": "18mm", "left": "16mm", "right": "16mm"}
FOOTER = (
    '<div style="width:100%;font-size:8px;color:#555;text-align:center;font-family:sans-serif">'
    '<span class="pageNumber"></span></div>'
)
# The one page of a singlehtml build, printed as a book: no page-level table of contents of the theme (the PDF has its
# own), every chapter (a document of the table of contents) on a new page, the chapter's title as large as a title.
PDF_CSS = """
#jb-print-toc, .bd-header-article, .bd-sidebar-primary, .bd-sidebar-secondary, .bd-footer-article,
.prev-next-area, #pst-back-to-top, .bd-header { display: none !important; }
.bd-main .bd-content .bd-article-container { max-width: 100% !important; }
span[id^="document-"] + section { break-before: page; }
span[id^="document-"] + section > h2, span[id^="document-"] + section > h1 { font-size: 2rem; margin-top: 0; }
body { font-size: 10.5pt; }
"""
# Runs in the page: waits until it is ready to print, then lists the chapters (the documents of the table of
# contents, in order) with their titles and their sections' titles.
READY_JS = r"""
async () => {
  // Links inside the book become links inside the PDF; links to other files of the local server are dropped (a PDF
  // must not link to 127.0.0.1). Sphinx's singlehtml writes the first as links to the page itself.
  const here = location.origin;
  for (const a of document.querySelectorAll('a[href]')) {
    const url = new URL(a.getAttribute('href'), location.href);
    if (url.origin !== here) continue;
    if (url.hash && url.pathname.endsWith('/' + ROOT_PAGE)) a.setAttribute('href', url.hash);
    else if (!(url.pathname === location.pathname && url.hash)) a.removeAttribute('href');
  }
  document.querySelectorAll('img').forEach(img => { img.loading = 'eager'; });
  await Promise.all([...document.images].map(img => img.complete ? null : new Promise(done => {
    img.addEventListener('load', done, {once: true});
    img.addEventListener('error', done, {once: true});
    setTimeout(done, 15000);
  })));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  await document.fonts.ready;
  const title = section => {
    const heading = section.querySelector(':scope > h1, :scope > h2, :scope > h3');
    if (!heading) return '';
    const copy = heading.cloneNode(true);
    copy.querySelectorAll('.headerlink').forEach(e => e.remove());
    return copy.textContent.replace(/\s+/g, ' ').trim();
  };
  const chapters = [];
  const intro = document.querySelector('article section');
  if (intro) chapters.push({title: title(intro), sections: []});
  for (const marker of document.querySelectorAll('span[id^="document-"]')) {
    const section = marker.nextElementSibling;
    if (!section || section.tagName !== 'SECTION') continue;
    const sections = [...section.querySelectorAll(':scope > section')].map(title).filter(Boolean);
    chapters.push({title: title(section), sections});
  }
  const math = [...document.querySelectorAll('span.math, div.math')];
  return {chapters, images: document.images.length,
          broken: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
          untypeset: math.filter(e => !e.querySelector('mjx-container')).length};
}
"""


@dataclass
class Chapter:
    title: str
    sections: list[str] = field(default_factory=list)
    page: int = -1  # 0-based page of the printed book (without the contents pages)
    section_pages: list[int] = field(default_factory=list)


def normalise(text: str) -> str:
    """Text compared between the page and the PDF: no spaces (pypdf's extraction of Chinese and of spacing varies),
    no ligatures (NFKC), typographic quotes as plain ones."""
    text = (
        unicodedata.normalize("NFKC", text)
        .replace("\u2019", "'")
        .replace("\u2018", "'")
        .replace("\u201c", '"')
        .replace("\u201d", '"')
    )
    return re.sub(r"\s+", "", text)


def page_texts(reader: Any) -> list[str]:
    return [normalise(page.extract_text() or "") for page in reader.pages]


def outline_pages(reader: Any) -> list[tuple[str, int]]:
    """Chromium's outline, flattened in document order: (title, 0-based page)."""
    found: list[tuple[str, int]] = []

    def walk(items: list[Any]) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item)
            else:
                try:
                    found.append((str(item.title), reader.get_destination_page_number(item)))
                except Exception:  # an entry without a page
                    continue

    walk(reader.outline)
    return found


def locate(chapters: list[Chapter], reader: Any) -> None:
    """The page of every chapter and section: Chromium's outline entry with its title (in order), else the first page
    from the previous chapter on whose text holds the title."""
    entries = [(normalise(title), page) for title, page in outline_pages(reader)]
    texts = page_texts(reader)
    position, last_page = 0, 0

    def find(title: str) -> int:
        nonlocal position, last_page
        key = normalise(title)
        for index in range(position, len(entries)):
            if key and key in entries[index][0]:  # Chromium's titles may repeat the section number and title
                position = index + 1
                last_page = entries[index][1]
                return last_page
        for page in range(last_page, len(texts)):
            if key and key in texts[page]:
                last_page = page
                return page
        return -1

    for chapter in chapters:
        chapter.page = find(chapter.title)
        chapter.section_pages = [find(section) for section in chapter.sections]


def contents_html(title: str, chapters: list[Chapter], language: str, tag: str) -> str:
    """The title page and table of contents: each chapter with the number printed on its first page."""
    rows = "\n".join(
        f'<li><span class="t">{html.escape(c.title)}</span><span class="p">{c.page + 1}</span></li>'
        for c in chapters[1:]
    )
    return f"""<!DOCTYPE html>
<html lang="{tag}"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
  @page {{ size: A4; margin: 22mm 20mm; }}
  body {{ font-family: sans-serif; color: #222; }}
  h1 {{ font-size: 26pt; margin: 40mm 0 6mm; }}
  p.sub {{ font-size: 12pt; color: #555; margin-bottom: 20mm; }}
  h2 {{ font-size: 16pt; break-before: page; }}
  ol {{ list-style: none; padding: 0; font-size: 11.5pt; }}
  li {{ display: flex; gap: 0.5em; margin: 0.45em 0; }}
  li .t {{ flex: 1; border-bottom: 1px dotted #999; }}
  li .p {{ min-width: 2.5em; text-align: right; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="sub">{TEXTS[language]["edition"]} · {TEXTS[language]["authors"]}</p>
<h2>{TEXTS[language]["contents"]}</h2>
<ol>
{rows}
</ol>
</body></html>
"""


def print_edition(browser: Any, edition: str, out: Path) -> dict[str, Any]:
    """Print one edition's singlehtml page into ``out``, with the contents in front and the outline."""
    from pypdf import PdfReader, PdfWriter

    folder, tag = EDITIONS[edition]
    root = build_book.root_document()
    server, base = serve(folder)
    started = time.monotonic()
    try:
        context = browser.new_context(viewport={"width": 1100, "height": 1400}, locale=tag)
        page = context.new_page()
        page.set_default_timeout(180_000)
        # Sphinx's singlehtml writes the book into <root>.html (book/intro.html) with every link relative to the
        # folder's root: a copy at the root is the page whose links resolve.
        shutil.copy2(folder / f"{root}.html", folder / PRINT_PAGE)
        page.goto(f"{base}{PRINT_PAGE}", wait_until="load")
        page.add_style_tag(content=PDF_CSS)
        page.emulate_media(media="print")
        report = page.evaluate(READY_JS.replace("ROOT_PAGE", repr(f"{root}.html".rsplit("/", 1)[-1])))
        if report["broken"] or report["untypeset"]:
            sys.exit(
                f"{edition}: {len(report['broken'])} images did not load, {report['untypeset']} equations untypeset"
            )
        book_pdf = page.pdf(
            format="A4",
            margin=MARGIN,
            print_background=True,
            display_header_footer=True,
            header_template="<span></span>",
            footer_template=FOOTER,
            outline=True,
            tagged=True,
        )
        title = page.evaluate("() => document.title.split(/ [—–-] /).pop().trim()") or "Batch Normalization, verified"
        chapters = [Chapter(c["title"], c["sections"]) for c in report["chapters"] if c["title"]]
        book = PdfReader(io.BytesIO(book_pdf))
        locate(chapters, book)
        missing = [c.title for c in chapters if c.page < 0]
        if missing:
            out.parent.mkdir(parents=True, exist_ok=True)
            (out.parent / f"{out.stem}-unlocated.pdf").write_bytes(book_pdf)
            sys.exit(f"{edition}: chapters not found in the printed PDF: {missing}")
        contents_page = context.new_page()
        contents_page.set_content(contents_html(title, chapters, edition, tag), wait_until="load")
        contents_pdf = contents_page.pdf(format="A4", print_background=True)
        context.close()
    finally:
        server.shutdown()
        server.server_close()
    contents = PdfReader(io.BytesIO(contents_pdf))
    offset = len(contents.pages)
    writer = PdfWriter()
    writer.append(contents, import_outline=False)
    writer.append(book, import_outline=False)
    writer.add_outline_item(title=TEXTS[edition]["contents"], page_number=offset - 1 if offset > 1 else 0)
    for chapter in chapters:
        parent = writer.add_outline_item(title=chapter.title, page_number=offset + chapter.page, is_open=False)
        for section, section_page in zip(chapter.sections, chapter.section_pages, strict=True):
            if section_page >= 0:
                writer.add_outline_item(title=section, page_number=offset + section_page, parent=parent)
    writer.add_metadata({"/Title": title, "/Author": "The bnref authors", "/Subject": "Batch Normalization, verified"})
    writer.page_mode = "/UseOutlines"
    from pypdf.generic import NameObject, TextStringObject

    writer._root_object[NameObject("/Lang")] = TextStringObject(tag)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as handle:
        writer.write(handle)
    return {"pages": len(writer.pages), "chapters": len(chapters), "seconds": time.monotonic() - started}


def serve(folder: Path) -> tuple[Any, str]:
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's signature)
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def build_singlehtml() -> None:
    """Both editions with the ``singlehtml`` builder, at the same time (the site's doctrees are reused)."""
    started = time.monotonic()
    english = build_book.start_english(build_book.WORK / "en", builder="singlehtml")
    chinese = build_book.start_translated("zh_CN", build_book.WORK / "zh_CN", builder="singlehtml")
    logs = [build_book.WORK / "en" / "build-singlehtml.log", build_book.WORK / "zh_CN" / "build-singlehtml.log"]
    ok_en = english.wait() == 0
    ok_zh = chinese.wait() == 0
    if not (ok_en and ok_zh):
        for log in logs:
            sys.stdout.write(log.read_text(encoding="utf-8", errors="replace")[-5000:])
        sys.exit("the singlehtml build of the book failed (logs above)")
    print(f"singlehtml: both editions in {time.monotonic() - started:.0f} s", flush=True)


def pdf_name(edition: str) -> str:
    return f"bnref-{edition}.pdf"


def link_from_site() -> None:
    """Copy the PDFs into the published site and link them: the landing page, and every page of each edition (a
    button next to the language switch)."""
    if not build_book.SITE.is_dir():
        print(f"no site in {build_book.SITE}: the PDFs are not linked from it (run `make book` first)")
        return
    SITE_PDF.mkdir(parents=True, exist_ok=True)
    for edition in EDITIONS:
        shutil.copy2(PDF_DIR / pdf_name(edition), SITE_PDF / pdf_name(edition))
        folder = build_book.SITE / edition
        texts = TEXTS[edition]
        for page in folder.rglob("*.html"):
            relative = page.relative_to(folder).as_posix()
            if relative.startswith(("_static/", "_sources/", "_images/", "_downloads/", "jupyter_execute/")):
                continue
            up = "../" * (relative.count("/") + 1)
            link = (
                f'<a class="btn btn-sm bnref-pdf" href="{up}pdf/{pdf_name(edition)}" '
                f'title="{texts["pdf_title"]}">{texts["pdf"]}</a>'
            )
            text = page.read_text(encoding="utf-8")
            if 'class="btn btn-sm bnref-pdf"' in text or '<div class="bnref-lang-switch">' not in text:
                continue
            page.write_text(
                text.replace('<div class="bnref-lang-switch">', f'<div class="bnref-lang-switch">\n  {link}', 1),
                encoding="utf-8",
            )
    build_book.write_landing_page(build_book.SITE, pdfs={edition: f"pdf/{pdf_name(edition)}" for edition in EDITIONS})


def print_one(edition: str) -> None:
    """Print one edition (its singlehtml build must exist) into ``_build/pdf``."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("Debian's chromium is needed: apt-get install chromium fonts-wqy-microhei")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS, headless=True)
        try:
            result = print_edition(browser, edition, PDF_DIR / pdf_name(edition))
        finally:
            browser.close()
    print(
        f"{PDF_DIR / pdf_name(edition)}: {result['pages']} pages, {result['chapters']} chapters, "
        f"printed in {result['seconds']:.0f} s",
        flush=True,
    )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "print" and sys.argv[2] in EDITIONS:
        print_one(sys.argv[2])
        return
    if len(sys.argv) > 1:
        sys.exit(f"usage: {sys.argv[0]} [print {{{','.join(EDITIONS)}}}]")
    started = time.monotonic()
    build_singlehtml()
    # Both editions printed at the same time, one browser each (each page is mostly one renderer process).
    printers = {edition: build_book.run([sys.executable, __file__, "print", edition]) for edition in EDITIONS}
    failed = [edition for edition, process in printers.items() if process.wait() != 0]
    if failed:
        sys.exit(f"printing failed: {failed}")
    link_from_site()
    print(f"\nboth PDF editions in {PDF_DIR} in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
