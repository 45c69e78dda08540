"""The published book, checked in a real browser as a reader would see it.

The built site (``_build/html``, or the folder named by ``BNREF_BOOK_HTML``) is served on 127.0.0.1 and every HTML
page is opened in headless Chromium, driven by Playwright for Python. For every page:

* it loads (its ``load`` event fires, and a redirecting page reaches its target);
* no console error, no uncaught exception, no local request that fails or answers >= 400;
* no request leaves localhost: the site is self-contained (MathJax, fonts and scripts are served by the book);
* MathJax has typeset every equation: each ``.math`` element holds an ``mjx-container``, no MathJax error (nor an
  undefined macro drawn in red), and no raw TeX (``$$``, ``\\frac``, ``\\begin{`` ...) is left in the page's text
  outside code blocks;
* every ``<img>`` has loaded (``naturalWidth > 0``);
* every internal link answers HTTP 200, and its ``#anchor``, if any, names an element id of the target page.

For every reader (issue 24):

* on a phone (a 390x844 viewport, the page resized to it after the checks above) no page is wider than the screen
  (``document.scrollWidth``; the elements that stick out are named);
* every ``<img>`` has alt text that is not a file name, a figure drawn by a notebook says in Chinese what it shows in
  the Chinese edition, and links to its file (opens at full size);
* the search index, Sphinx's search scripts and Font Awesome's JavaScript are not loaded by any page but the search
  page (the index), and by none (Font Awesome: the theme's web fonts draw the icons);
* the Chinese edition's interface has no English label of the theme or the extensions left (``UI_ENGLISH``), and its
  notebook pages say that Binder, Colab and the notebook download open the English notebooks;
* the back-to-top button's text contrasts with its background at 4.5:1 at least; search snippets hold no raw TeX;
  the language switch on the search page keeps the query.

Every chapter in ``_toc.yml`` must be published with text. Screenshots of the landing page, the backward-pass
chapter and the glossary go to ``_build/screenshots/`` (next to the ``html`` folder checked).

Two editions (``tools/build_book.py``): every page's language switch (``a.bnref-lang``) leads to the same page in the
other edition, and clicking it keeps the reader's section; in the Chinese edition every page is marked ``zh-CN``,
each page's first paragraph of Chinese is drawn by fonts that cover Chinese (Chromium's own report of the fonts it
used, ``CSS.getPlatformFontsForNode``, against ``fc-list :lang=zh``: no tofu), and the landing page, the errata and the
glossary are in Chinese, the landing page linking to the other two; each edition's search finds a word of its
language; the site's ``index.html`` sends a browser preferring Chinese to the Chinese edition and any other to the
English one, and shows links to both without JavaScript.

Editions: a folder holding ``searchindex.js`` is one Sphinx build. The site is either one edition (today:
``_build/html`` itself) or one edition per sub-folder (``_build/html/en``, ``_build/html/zh_CN``); the checks run
once per edition present, on one server rooted at ``_build/html`` so links between editions resolve, and the
screenshots of an edition go to ``_build/screenshots/<edition>/``.

Each check is a function from the crawl to the problems it finds, and ``test_check_catches_planted_fault`` runs it
on a copy of the site into which one fault per check has been planted, so every check is shown to fail when it
should (and to pass on an unmodified copy of a page).

Chromium is Debian's ``chromium`` (``apt-get install chromium``; ``BNREF_CHROMIUM`` overrides the path): Playwright
starts it with ``executable_path`` and never downloads a browser of its own (``playwright install`` is not needed).
Without Chromium or Playwright the tests skip, unless ``BNREF_REQUIRE_BROWSER=1`` (set by ``.ci/run``), in which case
they fail. A missing ``_build/html`` is a failure: build the book first (``make book``).
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import os
import re
import shutil
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

try:
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Request, Response, sync_playwright
    from playwright.sync_api import Error as PlaywrightError
except ImportError:  # reported by the `browser` fixture: a skip, or a failure under BNREF_REQUIRE_BROWSER=1
    sync_playwright = None

pytestmark = pytest.mark.browser

REPO_ROOT = Path(__file__).resolve().parents[1]
HTML_DIR = Path(os.environ.get("BNREF_BOOK_HTML", REPO_ROOT / "_build" / "html")).resolve()
SCREENSHOT_DIR = HTML_DIR.parent / "screenshots"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
VIEWPORT = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}

# The flags headless Chromium needs on this project's machines (Playwright adds --headless and a fresh temporary
# --user-data-dir itself), and a few more that keep the browser quiet and offline.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    # Any host name other than 127.0.0.1 fails to resolve at once: an outside request cannot hang a page,
    # and it is still seen (and failed) by the network check below.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]

PAGE_TIMEOUT_S = 30.0
SETTLE_S = 0.3  # time after the checks to collect late console messages and requests

# Pages that get a screenshot, relative to an edition: (page, file name, scroll to the first display equation).
SCREENSHOTS = [
    ("book/intro.html", "landing.png", False),
    ("book/backward.html", "backward.png", False),
    ("book/backward.html", "backward-equation.png", True),
    ("book/glossary.html", "glossary.png", False),
]


# --------------------------------------------------------------------------------------------------------------
# The site: its editions and pages, and a local server.
# --------------------------------------------------------------------------------------------------------------


def editions(root: Path) -> list[str]:
    """The site's editions: ``[""]`` when ``root`` is one Sphinx build, else its sub-folders that are one each."""
    if (root / "searchindex.js").is_file() or not root.is_dir():
        return [""]
    found = sorted(p.parent.name for p in root.glob("*/searchindex.js"))
    return found or [""]


def site_pages(root: Path, edition: str) -> list[str]:
    """HTML pages of one edition, relative to ``root``; pages outside every edition go with the first one."""
    skip = ("_static/", "_sources/", "_images/", "_downloads/", "jupyter_execute/")
    folder = root / edition
    pages = [p.relative_to(folder).as_posix() for p in folder.rglob("*.html")]
    pages = [(edition + "/" if edition else "") + p for p in pages if not p.startswith(skip)]
    all_editions = editions(root)
    if edition and edition == all_editions[0]:
        pages += [p.name for p in root.glob("*.html")]
    return sorted(pages)


def toc_documents() -> list[str]:
    """Documents named in the repository's _toc.yml (``root:`` and every ``file:``)."""
    text = (REPO_ROOT / "_toc.yml").read_text(encoding="utf-8")
    return re.findall(r"^\s*-?\s*(?:root|file):\s*([^\s#]+)", text, flags=re.MULTILINE)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's signature)
        pass


@functools.lru_cache(maxsize=1)
def chromium_path() -> str | None:
    explicit = os.environ.get("BNREF_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A browser that closes a connection early (a page closed mid-load) is not an error of the site."""


def serve(directory: Path, handler: type[QuietHandler] = QuietHandler) -> tuple[QuietServer, str]:
    server = QuietServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


# --------------------------------------------------------------------------------------------------------------
# One page in the browser.
# --------------------------------------------------------------------------------------------------------------

# Runs in the page after its load event. Waits for MathJax's first typeset and for every image, then reports.
PAGE_REPORT_JS = r"""
async () => {
  const report = {url: location.href, title: document.title};
  const math = [...document.querySelectorAll('span.math, div.math')];
  report.mathElements = math.length;
  report.mathjax = !!(window.MathJax && MathJax.startup && MathJax.startup.promise);
  if (report.mathjax) {
    const timeout = new Promise(done => setTimeout(() => done('timeout'), 20000));
    report.mathjaxTimedOut = (await Promise.race([MathJax.startup.promise, timeout])) === 'timeout';
  }
  report.mjxContainers = document.querySelectorAll('mjx-container').length;
  report.untypeset = math.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.trim().slice(0, 120));
  report.mathErrors = [...document.querySelectorAll('mjx-merror')].map(
      e => e.getAttribute('data-mjx-error') || e.textContent);
  // MathJax's noundefined extension typesets an unknown macro as red text instead of an error box;
  // find those (and any merror) in the internal MathML of every typeset expression.
  if (report.mathjax && MathJax.startup.document && MathJax.startup.toMML) {
    for (const item of MathJax.startup.document.math) {
      const mml = MathJax.startup.toMML(item.root);
      if (/<merror|mathcolor="red"/.test(mml)) {
        report.mathErrors.push(`${item.math.trim()}  (MathML: ${mml.replace(/\s+/g, ' ').slice(0, 200)})`);
      }
    }
  }

  // Text a reader sees as prose: every text node outside code, scripts and typeset math.
  const skip = 'script, style, noscript, template, textarea, pre, code, kbd, .highlight, mjx-container';
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const prose = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (!node.parentElement.closest(skip)) prose.push(node.nodeValue);
  }
  report.prose = prose.join(' ').replace(/\s+/g, ' ');

  const images = [...document.images];
  images.forEach(img => { img.loading = 'eager'; });
  await Promise.all(images.map(img => img.complete ? null : new Promise(done => {
    img.addEventListener('load', done, {once: true});
    img.addEventListener('error', done, {once: true});
    setTimeout(done, 10000);
  })));
  report.images = images.length;
  report.brokenImages = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.currentSrc || i.src);
  // Alt text: none, or a file name, is a problem; a notebook's figure should also link to its file.
  report.badAlt = images.filter(i => !i.hasAttribute('alt') || /\.(png|jpe?g|svg|gif|webp)$/i.test(i.alt.trim()))
      .map(i => `${i.getAttribute('src')} alt=${JSON.stringify(i.getAttribute('alt'))}`);
  const figures = images.filter(i => i.closest('.cell_output'));
  report.figureAlts = figures.map(i => i.alt);
  report.unlinkedFigures = figures.filter(i => !i.closest('a[href]')).map(i => i.getAttribute('src'));
  // The interface outside the article (and the prompts of hidden cells inside it): text, titles, labels, alt text.
  const ui = [];
  for (const e of document.querySelectorAll('body *')) {
    if (e.closest('script, style, noscript, template')) continue;
    const inArticle = e.closest('article') && !e.closest('details.hide > summary');
    if (!inArticle) {
      for (const n of e.childNodes) {
        if (n.nodeType === Node.TEXT_NODE && n.nodeValue.trim()) ui.push(n.nodeValue.trim());
      }
    }
    for (const a of ['title', 'aria-label', 'data-bs-title', 'placeholder']) {
      if (e.hasAttribute(a) && (!inArticle || a !== 'title')) ui.push(e.getAttribute(a));
    }
    if (e.tagName === 'IMG' && !inArticle && e.alt) ui.push(e.alt);
  }
  if (typeof toggleHintShow !== 'undefined') ui.push(toggleHintShow, toggleHintHide);
  report.interfaceText = ui;
  report.launchTexts = [...document.querySelectorAll('.dropdown-launch-buttons a, .dropdown-download-buttons a')]
      .map(a => [a.textContent, a.getAttribute('title'), a.getAttribute('data-bs-title')].filter(Boolean).join(' '));
  const back = document.getElementById('pst-back-to-top');
  if (back) {
    const style = getComputedStyle(back);
    report.backToTop = {color: style.color, background: style.backgroundColor};
  }

  report.links = [...new Set([...document.querySelectorAll('a[href]')].map(a => a.href))];
  report.lang = document.documentElement.lang;
  report.langLinks = [...document.querySelectorAll('a.bnref-lang')].map(
      a => ({href: a.href, hreflang: a.hreflang, text: a.textContent.trim()}));
  // Chinese in the article's prose, and the first paragraph with at least 10 Chinese characters, marked so that
  // the fonts Chromium draws it with can be asked for (Tab.visit).
  const han = /[\u3400-\u9fff]/g;
  const article = document.querySelector('article') || document.body;
  const articleProse = [];
  const articleWalker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  for (let node = articleWalker.nextNode(); node; node = articleWalker.nextNode()) {
    if (!node.parentElement.closest(skip)) articleProse.push(node.nodeValue);
  }
  const articleText = articleProse.join(' ');
  report.hanChars = (articleText.match(han) || []).length;
  report.latinWords = (articleText.match(/[A-Za-z]{2,}/g) || []).length;
  // CSS.getPlatformFontsForNode reports the fonts of an element's own text nodes, so the probe is the parent of the
  // first text node with at least 10 Chinese characters, and only its own text nodes are counted.
  let probe = null;
  const probeWalker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  for (let node = probeWalker.nextNode(); node && !probe; node = probeWalker.nextNode()) {
    if (!node.parentElement.closest(skip) && (node.nodeValue.match(han) || []).length >= 10) probe = node.parentElement;
  }
  const ownText = e => [...e.childNodes].filter(n => n.nodeType === Node.TEXT_NODE).map(n => n.nodeValue).join('');
  report.cjkProbe = probe ? (ownText(probe).match(han) || []).length : 0;
  if (probe) probe.setAttribute('data-bnref-cjk-probe', '');
  report.ids = [...document.querySelectorAll('[id]')].map(e => e.id)
      .concat([...document.querySelectorAll('a[name]')].map(a => a.name));
  report.bodyText = document.body.innerText.length;
  report.articleText = (document.querySelector('article') || document.body).innerText.length;
  return report;
}
"""

# The page's width on a phone, and the elements that stick out past the screen's right edge (the innermost ones).
PHONE_WIDTH_JS = r"""
() => {
  const width = window.innerWidth;
  const wide = [...document.querySelectorAll('body *')].filter(e => {
    const box = e.getBoundingClientRect();
    if (box.right <= width + 1 || box.width === 0) return false;
    for (let p = e.parentElement; p && p !== document.body; p = p.parentElement) {
      const overflow = getComputedStyle(p).overflowX;
      if (overflow === 'auto' || overflow === 'scroll' || overflow === 'hidden') return false;  // scrolls in a box
    }
    return ![...e.children].some(c => c.getBoundingClientRect().right > width + 1);
  });
  const describe = e => `<${e.tagName.toLowerCase()}${e.className && typeof e.className === 'string' ? '.' +
      e.className.trim().split(/\s+/).join('.') : ''}> ${Math.round(e.getBoundingClientRect().right)} px: ` +
      (e.textContent || '').trim().slice(0, 60);
  return {viewport: width, scrollWidth: document.documentElement.scrollWidth, wide: wide.slice(0, 5).map(describe)};
}
"""

SCROLL_TO_MATH_JS = "() => document.querySelector('div.math')?.scrollIntoView({block: 'center'})"

# Raw TeX that MathJax should have replaced: $$, \( \) \[ \], and any control word such as \frac or \begin.
RAW_TEX = re.compile(r"\$\$|\\[()\[\]]|\\[A-Za-z]{2,}")

META_REFRESH = re.compile(r"""<meta[^>]+http-equiv=["']?refresh["']?[^>]*url=([^"'>\s]+)""", re.IGNORECASE)
# The site's landing page (tools/build_book.py) sends a reader to an edition by script, by the browser's language,
# and lists the editions as <link rel="alternate" hreflang=...>: the crawl's browser speaks LOCALE.
ALTERNATE = re.compile(r'<link rel="alternate" hreflang="([^"]+)" href="([^"]+)">')
LOCALE = "en-US"


@dataclass
class PageResult:
    path: str
    report: dict[str, Any] = field(default_factory=dict)
    load_error: str = ""
    console: list[str] = field(default_factory=list)
    outside_requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    phone: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def is_local(url: str) -> bool:
    """True for 127.0.0.1/localhost and for URLs without a host (data:, blob:, about:)."""
    host = urllib.parse.urlsplit(url).hostname
    return host is None or host in LOCAL_HOSTS


def landing_target(text: str, locale: str) -> str:
    """Where a landing page that redirects by language sends a browser speaking ``locale`` ("" for other pages)."""
    if "location.replace" not in text:
        return ""
    alternates = ALTERNATE.findall(text)
    language = locale.split("-")[0].lower()
    matching = [href for tag, href in alternates if tag.split("-")[0].lower() == language]
    english = [href for tag, href in alternates if tag.split("-")[0].lower() == "en"]
    return (matching or english or [""])[0]


def final_url(url: str, base: str, root: Path) -> str:
    """Where the browser ends up from ``url``: the end of its chain of meta-refresh redirects and of the landing
    page's redirect by language (``root`` served at ``base``); ``url`` itself for a page that does not redirect."""
    for _ in range(10):
        if not url.startswith(base):
            return url
        file = root / urllib.parse.unquote(urllib.parse.urlsplit(url[len(base) :]).path)
        if file.is_dir():
            file = file / "index.html"
        if not file.is_file():
            return url
        text = file.read_text(encoding="utf-8", errors="replace")
        redirect = META_REFRESH.search(text)
        if redirect:
            url = urllib.parse.urljoin(url, redirect.group(1))
            continue
        by_language = landing_target(text, LOCALE)
        if not by_language:
            return url
        url = urllib.parse.urljoin(url, by_language)
    return url


class Tab:
    """One browser tab that visits page after page (one renderer, warm caches); its events go to ``result``."""

    def __init__(self, context: BrowserContext, timeout_s: float) -> None:
        self.result = PageResult("")
        self.page = context.new_page()
        self.page.set_default_timeout(timeout_s * 1000)
        self.page.on("console", self.on_console)
        self.page.on("pageerror", lambda error: self.result.console.append(f"uncaught exception: {error}"))
        self.page.on("request", self.on_request)
        self.page.on("requestfailed", self.on_request_failed)
        self.page.on("response", self.on_response)
        self.cdp = context.new_cdp_session(self.page)  # for the fonts Chromium draws the Chinese text with

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "assert"):
            where = message.location.get("url", "")
            self.result.console.append(f"console.{message.type}: {message.text} {where}".strip())

    def on_request(self, request: Request) -> None:
        self.result.requests.append(request.url)
        if not is_local(request.url):
            self.result.outside_requests.append(request.url)

    def on_request_failed(self, request: Request) -> None:
        # net::ERR_ABORTED is a load cancelled by the page itself (a redirect that leaves before it finishes).
        if is_local(request.url) and request.failure != "net::ERR_ABORTED":
            self.result.failed_requests.append(f"{request.failure}: {request.url}")

    def on_response(self, response: Response) -> None:
        if response.status >= 400:
            self.result.failed_requests.append(f"HTTP {response.status}: {response.url}")

    def probe_fonts(self) -> list[dict[str, Any]]:
        """The platform fonts (family, glyph count) that draw the paragraph PAGE_REPORT_JS marked as Chinese."""
        self.cdp.send("DOM.enable")
        self.cdp.send("CSS.enable")
        root = self.cdp.send("DOM.getDocument")["root"]["nodeId"]
        node = self.cdp.send("DOM.querySelector", {"nodeId": root, "selector": "[data-bnref-cjk-probe]"})["nodeId"]
        fonts = self.cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"] if node else []
        return [{"family": f["familyName"], "glyphs": f["glyphCount"]} for f in fonts]

    def visit(self, path: str, url: str, expected_url: str, shots: list[tuple[Path, bool]]) -> PageResult:
        """Open ``url``, wait until ``expected_url`` (after any redirect) has loaded, check it, take ``shots``."""
        self.result = result = PageResult(path)
        started = time.monotonic()
        try:
            if expected_url == url:
                self.page.goto(url, wait_until="load")
            else:  # a redirect may leave before the first page's load event: wait for the last page instead
                self.page.goto(url, wait_until="commit")
                self.page.wait_for_url(expected_url, wait_until="load")
            result.report = self.page.evaluate(PAGE_REPORT_JS)
            if result.report.get("cjkProbe"):
                result.report["cjkFonts"] = self.probe_fonts()
            self.page.wait_for_timeout(SETTLE_S * 1000)
            self.page.set_viewport_size(PHONE)
            self.page.wait_for_timeout(100)
            result.phone = self.page.evaluate(PHONE_WIDTH_JS)
            self.page.set_viewport_size(VIEWPORT)
            for target, scroll_to_math in shots:
                if scroll_to_math:
                    self.page.evaluate(SCROLL_TO_MATH_JS)
                    self.page.wait_for_timeout(200)
                target.parent.mkdir(parents=True, exist_ok=True)
                self.page.screenshot(path=str(target))
        except PlaywrightError as error:  # recorded, so one broken page does not hide the others
            result.load_error = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        result.seconds = time.monotonic() - started
        return result


@dataclass
class Crawl:
    root: Path  # the folder served
    base: str  # its URL
    edition: str  # "" for a one-edition site
    pages: dict[str, PageResult]
    screenshots: dict[str, Path]  # file name -> where it was saved
    seconds: float


def crawl_site(
    browser: Browser,
    root: Path,
    base: str,
    edition: str,
    pages: list[str],
    screenshot_dir: Path,
    screenshots: list[tuple[str, str, bool]] = SCREENSHOTS,
    timeout_s: float = PAGE_TIMEOUT_S,
) -> Crawl:
    """Visit ``pages`` (paths relative to ``root``) in one tab of a fresh browser context."""
    prefix = edition + "/" if edition else ""
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1, locale=LOCALE)
    started = time.monotonic()
    results: dict[str, PageResult] = {}
    saved: dict[str, Path] = {}
    try:
        tab = Tab(context, timeout_s)
        for page in pages:
            shots = [(screenshot_dir / name, to_math) for p, name, to_math in screenshots if prefix + p == page]
            url = base + page
            results[page] = tab.visit(page, url, final_url(url, base, root), shots)
            if not results[page].load_error:
                saved.update({target.name: target for target, _ in shots})
    finally:
        context.close()
    return Crawl(root, base, edition, results, saved, time.monotonic() - started)


# --------------------------------------------------------------------------------------------------------------
# The checks: each maps a crawl to {page or item: [problems]}; an empty list means no problem.
# --------------------------------------------------------------------------------------------------------------

Problems = dict[str, list[str]]


def loaded(crawl: Crawl) -> list[tuple[str, PageResult]]:
    """The pages that loaded (the others are reported by ``load_problems``)."""
    return [(p, r) for p, r in crawl.pages.items() if not r.load_error]


def load_problems(crawl: Crawl) -> Problems:
    return {p: [r.load_error] if r.load_error else [] for p, r in crawl.pages.items()}


def console_problems(crawl: Crawl) -> Problems:
    return {p: r.console for p, r in loaded(crawl)}


def network_problems(crawl: Crawl) -> Problems:
    return {
        p: [f"outside request: {url}" for url in r.outside_requests] + [f"failed: {f}" for f in r.failed_requests]
        for p, r in loaded(crawl)
    }


def math_problems(crawl: Crawl) -> Problems:
    problems: Problems = {}
    for page, result in loaded(crawl):
        report, items = result.report, []
        if report.get("mathjaxTimedOut"):
            items.append("MathJax did not finish typesetting within 20 s")
        if report["mathElements"] and not report["mathjax"]:
            items.append(f"{report['mathElements']} math elements but MathJax did not load")
        if report["mathElements"] and report["mjxContainers"] == 0:
            items.append("no mjx-container: nothing was typeset")
        items += [f"not typeset: {tex}" for tex in report["untypeset"]]
        items += [f"MathJax error: {message}" for message in report["mathErrors"]]
        for match in RAW_TEX.finditer(report["prose"]):
            context = report["prose"][max(match.start() - 40, 0) : match.end() + 40]
            items.append(f"raw TeX {match.group()!r} in the text: ...{context}...")
        problems[page] = items
    return problems


def image_problems(crawl: Crawl) -> Problems:
    return {p: [f"broken image: {src}" for src in r.report["brokenImages"]] for p, r in loaded(crawl)}


class IdCollector(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (name == "id" or (tag == "a" and name == "name")):
                self.ids.add(value)


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, b""


def link_problems(crawl: Crawl) -> Problems:
    """Every local link answers 200 and its anchor names an id of the target (pages outside the crawl fetched)."""
    status: dict[str, int] = {}
    ids: dict[str, set[str]] = {p: set(r.report["ids"]) for p, r in loaded(crawl)}

    def ids_of(path: str, url: str) -> set[str]:
        if path not in ids:
            collector = IdCollector()
            collector.feed(fetch(url)[1].decode("utf-8", errors="replace"))
            ids[path] = collector.ids
        return ids[path]

    problems: Problems = {}
    for page, result in loaded(crawl):
        items = []
        for link in result.report["links"]:
            parts = urllib.parse.urlsplit(link)
            if parts.scheme not in ("http", "https") or parts.hostname not in LOCAL_HOSTS:
                continue
            target = urllib.parse.urlunsplit(parts._replace(fragment=""))
            if target not in status:
                status[target] = fetch(target)[0]
            if status[target] != 200:
                items.append(f"HTTP {status[target]}: {link}")
                continue
            path = urllib.parse.unquote(parts.path).lstrip("/") or "index.html"
            anchor = urllib.parse.unquote(parts.fragment)
            if anchor and path.endswith(".html") and anchor not in ids_of(path, target):
                items.append(f"no id {anchor!r} in {path}: {link}")
        problems[page] = items
    if not status:
        problems["(site)"] = ["no internal link found at all"]
    return problems


def published_problems(crawl: Crawl, documents: list[str]) -> Problems:
    """Every document of the table of contents has a page in the crawl, and the page has text."""
    prefix = crawl.edition + "/" if crawl.edition else ""
    expected = [prefix + doc.removesuffix(".md").removesuffix(".ipynb") + ".html" for doc in documents]
    problems: Problems = {"(site)": [] if expected else ["no documents in the table of contents"]}
    for page in expected:
        result = crawl.pages.get(page)
        if result is None:
            problems[page] = ["in _toc.yml but not published"]
        elif not result.load_error and result.report.get("articleText", 0) < 100:
            problems[page] = ["(almost) no text"]
    return problems


def png_size(path: Path) -> dict[str, int]:
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return {}
    width, height = struct.unpack("!II", data[16:24])
    return {"width": width, "height": height}


def screenshot_problems(crawl: Crawl, screenshots: list[tuple[str, str, bool]] = SCREENSHOTS) -> Problems:
    problems: Problems = {}
    for _, name, _ in screenshots:
        if name not in crawl.screenshots:
            problems[name] = ["no page to take it from (is the page in the book, and did it load?)"]
        elif png_size(crawl.screenshots[name]) != VIEWPORT:
            problems[name] = [f"not a PNG of the viewport's size {VIEWPORT}"]
    return problems


# Edition folder -> (label of the link that leads to it, language of its pages).
EDITION_LANGUAGES = {"en": ("English", "en"), "zh_CN": ("中文", "zh-CN")}


def in_edition(crawl: Crawl, page: str) -> bool:
    return bool(crawl.edition) and page.startswith(crawl.edition + "/")


def lang_switch_problems(crawl: Crawl) -> Problems:
    """Every page of an edition links, through its language switch, to the same page in each other edition."""
    others = [e for e in editions(crawl.root) if e and e != crawl.edition]
    problems: Problems = {}
    for page, result in loaded(crawl):
        if not in_edition(crawl, page) or not others:
            continue
        url = result.report.get("url", crawl.base + page).split("#")[0]  # where a redirecting page ended
        rest = url[len(crawl.base + crawl.edition) :]
        expected = sorted((crawl.base + other + rest, EDITION_LANGUAGES.get(other, (other,))[0]) for other in others)
        found = sorted((link["href"].split("#")[0], link["text"]) for link in result.report.get("langLinks", []))
        problems[page] = [] if found == expected else [f"language switch {found}, expected {expected}"]
    return problems


@functools.lru_cache(maxsize=1)
def cjk_families() -> frozenset[str]:
    """Font families installed here that cover Chinese (fontconfig's ``fc-list :lang=zh``; every name it gives)."""
    fc_list = shutil.which("fc-list")
    if not fc_list:
        return frozenset()
    import subprocess

    listed = subprocess.run([fc_list, ":lang=zh", "family"], capture_output=True, text=True, check=False).stdout
    return frozenset(name.strip() for line in listed.splitlines() for name in line.split(",") if name.strip())


# Chinese pages a reader of the article must find in Chinese from the landing page (the landing page itself first).
CHINESE_PAGES = ["book/intro.html", "book/errata.html", "book/glossary.html"]
MIN_CHINESE_SHARE = 0.5  # Chinese characters / (Chinese characters + English words) in the article's prose


def chinese_problems(crawl: Crawl, families: frozenset[str] | None = None) -> Problems:
    """A Chinese edition: pages marked zh-CN; every Chinese paragraph probed is drawn by a font that covers Chinese
    (one glyph per character at least from such fonts, not tofu); the landing page, the errata and the glossary are
    Chinese, and the landing page links to the other two."""
    if not crawl.edition.startswith("zh"):
        return {}
    families = cjk_families() if families is None else families
    tag = EDITION_LANGUAGES.get(crawl.edition, ("", crawl.edition))[1]
    problems: Problems = {"(edition)": [] if families else ["no font covering Chinese is installed (fc-list :lang=zh)"]}
    probed = 0
    for page, result in loaded(crawl):
        if not in_edition(crawl, page):
            continue
        report, items = result.report, []
        if report.get("lang") != tag:
            items.append(f"<html lang={report.get('lang')!r}>, expected {tag!r}")
        if report.get("cjkProbe"):
            probed += 1
            fonts = report.get("cjkFonts", [])
            drawn = sum(f["glyphs"] for f in fonts if f["family"] in families)
            if drawn < report["cjkProbe"]:
                items.append(
                    f"{report['cjkProbe']} Chinese characters, but fonts covering Chinese drew {drawn} glyphs: {fonts}"
                )
        problems[page] = items
    if not probed:
        problems["(edition)"].append("no page has a paragraph of Chinese")
    prefix = crawl.edition + "/"
    for page in CHINESE_PAGES:
        result = crawl.pages.get(prefix + page)
        if result is None or result.load_error:
            problems.setdefault(prefix + page, []).append("not published")
            continue
        han, words = result.report.get("hanChars", 0), result.report.get("latinWords", 0)
        if han < MIN_CHINESE_SHARE * (han + words):
            problems.setdefault(prefix + page, []).append(
                f"mostly English: {han} Chinese characters, {words} English words"
            )
    landing = crawl.pages.get(prefix + CHINESE_PAGES[0])
    if landing and not landing.load_error:
        for page in CHINESE_PAGES[1:]:
            if crawl.base + prefix + page not in {link.split("#")[0] for link in landing.report["links"]}:
                problems.setdefault(prefix + CHINESE_PAGES[0], []).append(f"no link to {page}")
    return problems


def phone_problems(crawl: Crawl) -> Problems:
    """No page wider than a phone's screen (390 px): ``document.scrollWidth`` against the viewport."""
    problems: Problems = {}
    for page, result in loaded(crawl):
        phone = result.phone
        if not phone:
            problems[page] = ["not measured on a phone viewport"]
        elif phone["scrollWidth"] > phone["viewport"]:
            problems[page] = [f"{phone['scrollWidth']} px wide in a {phone['viewport']} px viewport: {phone['wide']}"]
        else:
            problems[page] = []
    return problems


HAN = re.compile(r"[\u3400-\u9fff]")


def figure_problems(crawl: Crawl) -> Problems:
    """Alt text on every image, not a file name; in a translated edition a notebook figure's alt text is in its
    language; every notebook figure links to its file."""
    translated = crawl.edition.startswith("zh")
    problems: Problems = {}
    for page, result in loaded(crawl):
        report = result.report
        items = [f"alt text missing or a file name: {bad}" for bad in report.get("badAlt", [])]
        if translated:
            items += [
                f"figure alt text not in Chinese: {alt!r}"
                for alt in report.get("figureAlts", [])
                if not HAN.search(alt)
            ]
        items += [f"figure not linked to its file: {src}" for src in report.get("unlinkedFigures", [])]
        problems[page] = items
    return problems


# Scripts no page may load, and scripts only the search page may load (tools/page_weight.py measures the pages).
NEVER_LOADED = ("fontawesome.js",)
SEARCH_PAGE_ONLY = ("searchindex.js", "searchtools.js", "language_data.js")


def asset_problems(crawl: Crawl) -> Problems:
    problems: Problems = {}
    for page, result in loaded(crawl):
        names = [urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1] for url in result.requests]
        items = [f"loads {name}" for name in names if name in NEVER_LOADED]
        if not page.endswith("search.html"):
            items += [f"loads {name} (only the search page should)" for name in names if name in SEARCH_PAGE_ONLY]
        problems[page] = sorted(set(items))
    return problems


# English labels of the theme and the extensions that must not reach the Chinese edition's interface.
UI_ENGLISH = [
    "Show code cell source",
    "Hide code cell source",
    "Show code cell outputs",
    "Hide code cell outputs",
    "Show code cell content",
    "Hide code cell content",
    "Click to show",
    "Click to hide",
    "Repository",
    "Open issue",
    "Launch on Binder",
    "Launch on Colab",
    "Launch interactive content",
    "Download this page",
    "Download source file",
    "Download notebook file",
    "Print to PDF",
    "Fullscreen mode",
    "Color mode",
    "Toggle primary sidebar",
    "Toggle secondary sidebar",
    "Toggle hidden content",
    "Link to this heading",
    "Link to this equation",
    "Skip to main content",
    "Back to top",
    "Source repositories",
    "Copyright",
    "Light",
    "Dark",
    "System Settings",
    "列印成 PDF",
]


def chinese_interface_problems(crawl: Crawl) -> Problems:
    """The Chinese edition's interface is Chinese, and its launch and download buttons say the notebooks are English."""
    if not crawl.edition.startswith("zh"):
        return {}
    problems: Problems = {}
    for page, result in loaded(crawl):
        if not in_edition(crawl, page):
            continue
        texts = result.report.get("interfaceText", [])
        items = [f"English label {label!r}" for label in UI_ENGLISH if any(label in text for text in texts)]
        for text in result.report.get("launchTexts", []):
            if re.search(r"Binder|Colab|\.ipynb", text) and "英文" not in text:
                items.append(f"launch or download button does not say it opens the English notebook: {text!r}")
        problems[page] = items
    return problems


def fail_on(problems: Problems, what: str) -> None:
    problems = {page: items for page, items in problems.items() if items}
    if problems:
        lines = [f"{page}:\n    " + "\n    ".join(items) for page, items in sorted(problems.items())]
        pytest.fail(f"{what}:\n" + "\n".join(lines), pytrace=False)


# --------------------------------------------------------------------------------------------------------------
# Fixtures: the browser, and one crawl per edition.
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium_path()
    if sync_playwright is None or path is None:
        reason = (
            "Playwright is not installed (pip install -r requirements.txt)"
            if sync_playwright is None
            else "headless Chromium not found (install Debian's `chromium`, or set BNREF_CHROMIUM)"
        )
        if os.environ.get("BNREF_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + "; BNREF_REQUIRE_BROWSER=1 requires the browser check to run")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The URL of ``HTML_DIR`` served on 127.0.0.1."""
    if not (HTML_DIR / "index.html").is_file():
        pytest.fail(f"no built book at {HTML_DIR}: run `make book` first (or point BNREF_BOOK_HTML at _build/html)")
    server, base = serve(HTML_DIR)
    try:
        yield base
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module", params=editions(HTML_DIR), ids=lambda edition: edition or "site")
def crawl(request: pytest.FixtureRequest, browser: Browser, site: str) -> Crawl:
    edition = request.param
    pages = site_pages(HTML_DIR, edition)
    return crawl_site(browser, HTML_DIR, site, edition, pages, SCREENSHOT_DIR / edition)


# --------------------------------------------------------------------------------------------------------------
# The tests of the book.
# --------------------------------------------------------------------------------------------------------------


def test_every_chapter_is_published(crawl: Crawl) -> None:
    fail_on(published_problems(crawl, toc_documents()), f"chapters of _toc.yml missing or empty in {HTML_DIR}")


def test_every_page_loads(crawl: Crawl) -> None:
    fail_on(load_problems(crawl), "pages that did not load")


def test_no_console_errors(crawl: Crawl) -> None:
    fail_on(console_problems(crawl), "console errors or uncaught exceptions")


def test_site_is_self_contained(crawl: Crawl) -> None:
    fail_on(network_problems(crawl), "requests that left localhost, or local resources that failed to load")


def test_mathjax_typeset_every_equation(crawl: Crawl) -> None:
    fail_on(math_problems(crawl), "equations MathJax did not typeset")
    with_math = [p for p, r in loaded(crawl) if r.report["mathElements"]]
    assert with_math, "no page of the book has any equation: is the book built from the chapters?"


def test_every_image_loads(crawl: Crawl) -> None:
    fail_on(image_problems(crawl), "images that did not load")


def test_internal_links_resolve(crawl: Crawl) -> None:
    fail_on(link_problems(crawl), "internal links that do not resolve")


def test_screenshots_saved(crawl: Crawl) -> None:
    fail_on(screenshot_problems(crawl), "screenshots")
    timing = ", ".join(f"{p} {r.seconds:.1f}s" for p, r in sorted(crawl.pages.items()))
    print(f"\nbrowser check ({crawl.edition or 'site'}): {len(crawl.pages)} pages in {crawl.seconds:.1f} s ({timing})")
    print(f"screenshots in {SCREENSHOT_DIR / crawl.edition}")


def test_language_switch_leads_to_same_page(crawl: Crawl) -> None:
    fail_on(
        lang_switch_problems(crawl), "pages whose language switch does not lead to the same page in the other edition"
    )


def test_chinese_rendered_with_cjk_font(crawl: Crawl) -> None:
    fail_on(chinese_problems(crawl), "Chinese edition: language, fonts, or pages still in English")


def test_no_page_wider_than_a_phone(crawl: Crawl) -> None:
    fail_on(phone_problems(crawl), f"pages wider than a {PHONE['width']}x{PHONE['height']} viewport")


def test_figures_have_alt_text_and_open_at_full_size(crawl: Crawl) -> None:
    fail_on(figure_problems(crawl), "images without alt text, or figures that do not open at full size")


def test_search_index_and_icon_script_not_on_every_page(crawl: Crawl) -> None:
    fail_on(asset_problems(crawl), "pages loading what they do not use")


def test_chinese_interface_is_chinese(crawl: Crawl) -> None:
    fail_on(chinese_interface_problems(crawl), "Chinese edition: interface labels left in English")


def contrast(foreground: str, background: str) -> float:
    """WCAG contrast ratio of two CSS ``rgb()``/``rgba()`` colours (opaque)."""

    def luminance(color: str) -> float:
        channels = [float(c) / 255 for c in re.findall(r"[\d.]+", color)[:3]]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    lighter, darker = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def test_back_to_top_button_contrast(crawl: Crawl) -> None:
    """The back-to-top button's text against its background: at least 4.5:1 (WCAG AA)."""
    problems: Problems = {}
    for page, result in loaded(crawl):
        colors = result.report.get("backToTop")
        if colors:
            ratio = contrast(colors["color"], colors["background"])
            problems[page] = [] if ratio >= 4.5 else [f"contrast {ratio:.2f}:1 ({colors})"]
    assert problems, "no page has the back-to-top button"
    fail_on(problems, "back-to-top button below 4.5:1")


def test_contrast_formula() -> None:
    assert round(contrast("rgb(0, 0, 0)", "rgb(255, 255, 255)"), 1) == 21.0
    assert contrast("rgb(255, 255, 255)", "rgb(238, 144, 64)") < 4.5  # the theme's white on orange


def test_search_snippets_without_tex_and_switch_keeps_query(browser: Browser, site: str) -> None:
    """English search for a word of the equation-heavy chapters: the snippets hold no raw TeX; then the language
    switch leads to the Chinese search page with the same query."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.goto(f"{site}en/search.html?q=variance", wait_until="load")
        snippets = page.locator("#search-results ul.search li p.context")
        snippets.first.wait_for(timeout=PAGE_TIMEOUT_S * 1000)
        page.wait_for_timeout(1000)  # the snippets of the first results are filled in one after the other
        texts = snippets.all_inner_texts()
        raw = [t for t in texts if RAW_TEX.search(t)]
        assert not raw, f"search snippets with raw TeX: {raw[:3]}"
        page.click("a.bnref-lang")
        page.wait_for_url(f"{site}zh_CN/search.html?q=variance", wait_until="load")
    finally:
        context.close()


def site_editions() -> list[str]:
    return [e for e in editions(HTML_DIR) if e]


@pytest.mark.parametrize(("locale", "edition"), [("zh-CN", "zh_CN"), ("en-US", "en"), ("de-DE", "en")])
def test_landing_page_sends_reader_to_their_edition(browser: Browser, site: str, locale: str, edition: str) -> None:
    """The site's index.html: a browser preferring Chinese lands in the Chinese edition, any other in the English."""
    if set(site_editions()) != set(EDITION_LANGUAGES):
        pytest.fail(f"{HTML_DIR} does not hold both editions {sorted(EDITION_LANGUAGES)}: run `make book`")
    root = toc_documents()[0].removesuffix(".md").removesuffix(".ipynb")
    context = browser.new_context(viewport=VIEWPORT, locale=locale)
    try:
        tab = Tab(context, PAGE_TIMEOUT_S)
        expected = f"{site}{edition}/{root}.html"
        result = tab.visit("index.html", site + "index.html", expected, [])
        assert not result.load_error, result.load_error
        assert tab.page.url == expected
        assert not result.console and not result.outside_requests and not result.failed_requests, result
    finally:
        context.close()


def test_landing_page_links_without_javascript(browser: Browser, site: str) -> None:
    """Without JavaScript the landing page stays, and shows a link to each edition's first page."""
    root = toc_documents()[0].removesuffix(".md").removesuffix(".ipynb")
    context = browser.new_context(viewport=VIEWPORT, java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(site + "index.html", wait_until="load")
        assert page.url == site + "index.html"
        visible = {a.get_attribute("href"): a.inner_text() for a in page.locator("a[href]").all() if a.is_visible()}
        expected = {f"{edition}/{root}.html": EDITION_LANGUAGES[edition][0] for edition in EDITION_LANGUAGES}
        # After `make pdf` (tools/build_pdf.py) the landing page links each edition's PDF too.
        expected.update({pdf: "PDF" for e in EDITION_LANGUAGES if (HTML_DIR / (pdf := f"pdf/bnref-{e}.pdf")).is_file()})
        assert visible == expected
        for href in visible:
            assert fetch(site + href)[0] == 200, href
    finally:
        context.close()


@pytest.mark.parametrize(("edition", "query"), [("zh_CN", "方差"), ("zh_CN", "滑动平均"), ("en", "variance")])
def test_search_finds_words_of_the_edition(browser: Browser, site: str, edition: str, query: str) -> None:
    """The edition's search page finds pages for a word of its language (Chinese words are indexed only when jieba
    segments the text at build time)."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.goto(f"{site}{edition}/search.html?q={urllib.parse.quote(query)}", wait_until="load")
        results = page.locator("#search-results ul.search li")
        results.first.wait_for(timeout=PAGE_TIMEOUT_S * 1000)
        assert results.count() > 0, f"no search result for {query!r} in the {edition} edition"
    finally:
        context.close()


def test_language_switch_keeps_the_reader_in_place(browser: Browser, site: str) -> None:
    """Clicking 中文 on an English section, then English, returns to the same section (the anchor travels along)."""
    page_path, anchor = "book/backward.html", ""
    context = browser.new_context(viewport=VIEWPORT)
    # This test is about the switch, not the equations (the crawl checks those): without MathJax each of its four
    # loads of a long chapter takes a fraction of the time.
    context.route("**/mathjax/**", lambda route: route.abort())
    try:
        page = context.new_page()
        page.goto(f"{site}en/{page_path}", wait_until="load")
        anchor = page.evaluate("() => document.querySelector('article section section[id]')?.id || ''")
        assert anchor, "no section with an id in the English backward chapter"
        page.goto(f"{site}en/{page_path}#{anchor}", wait_until="load")
        page.click("a.bnref-lang")
        page.wait_for_url(f"{site}zh_CN/{page_path}#{anchor}", wait_until="load")
        assert page.evaluate(f"() => !!document.getElementById({anchor!r})"), "the anchor is missing in Chinese"
        page.click("a.bnref-lang")
        page.wait_for_url(f"{site}en/{page_path}#{anchor}", wait_until="load")
    finally:
        context.close()


# --------------------------------------------------------------------------------------------------------------
# Each check fails on a copy of the site with a fault planted for it.
# --------------------------------------------------------------------------------------------------------------

HANGUP_PAGE = "planted-hangup.html"


class HangupHandler(QuietHandler):
    """Serves files, but closes the connection without an answer when asked for ``HANGUP_PAGE``."""

    def do_GET(self) -> None:
        if self.path.endswith("/" + HANGUP_PAGE):
            self.close_connection = True
            return
        super().do_GET()


# Planted page -> HTML inserted at the top of the article of a copy of book/intro.html (a page with equations).
# "book/planted-control.html" is an unmodified copy, which no check may flag.
INSERTIONS = {
    "planted-console-error.html": "<script>console.error('planted console error')</script>",
    "planted-exception.html": "<script>throw new Error('planted uncaught exception')</script>",
    "planted-outside-request.html": '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>',
    "planted-missing-stylesheet.html": '<link rel="stylesheet" href="planted-missing.css">',
    "planted-raw-tex.html": r"<p>The ratio \frac{a}{b} left as TeX source.</p>",
    "planted-undefined-macro.html": r'<p><span class="math notranslate nohighlight">\(\plantedmacro{x}\)</span></p>',
    "planted-broken-image.html": '<img src="planted-missing.png" alt="planted">',
    "planted-dead-link.html": '<p><a href="planted-no-such-page.html">a page that does not exist</a></p>',
    "planted-dead-anchor.html": '<p><a href="intro.html#planted-no-such-anchor">an anchor that does not exist</a></p>',
    "planted-wide.html": '<p style="white-space: nowrap">' + "a_long_identifier_that_never_wraps_" * 8 + "</p>",
    "planted-file-alt.html": '<img src="../_static/favicon.svg" alt="../_images/planted.png">',
    "planted-search-index.html": '<script src="../searchindex.js"></script>',
}
# Pages whose source is changed instead: MathJax's script removed; the article emptied.
NO_MATHJAX = "planted-no-mathjax.html"
EMPTY = "planted-empty.html"
PLANTED_PAGES = ["planted-control.html", *INSERTIONS, NO_MATHJAX, EMPTY, HANGUP_PAGE]

# The table of contents and screenshots of the planted site name a page that was never built.
PLANTED_TOC = ["book/planted-control.md", f"book/{EMPTY.removesuffix('.html')}.ipynb", "book/planted-unpublished.md"]
PLANTED_SCREENSHOTS = [
    ("book/planted-control.html", "control.png", False),
    ("book/planted-unpublished.html", "unpublished.png", False),
]

# Pages whose language switch is broken: removed, or left pointing at the page they were copied from.
NO_SWITCH = "planted-no-switch.html"
WRONG_SWITCH = "planted-wrong-switch.html"
PLANTED_PAGES[-1:-1] = [NO_SWITCH, WRONG_SWITCH]  # before the hang-up page, which stays last
SWITCH = re.compile(r'<div class="bnref-lang-switch">.*?</div>', re.DOTALL)

# The edition the faults are planted in (the site's first: "en", or "" for a site of one edition) and its prefix.
PLANTED_EDITION = editions(HTML_DIR)[0]
P = PLANTED_EDITION + "/" if PLANTED_EDITION else ""

# Check -> the planted pages (or items) it must flag.
CHECKS: dict[str, tuple[Callable[[Crawl], Problems], set[str]]] = {
    "load": (load_problems, {f"{P}book/{HANGUP_PAGE}"}),
    "console": (console_problems, {f"{P}book/planted-console-error.html", f"{P}book/planted-exception.html"}),
    "network": (
        network_problems,
        {f"{P}book/planted-outside-request.html", f"{P}book/planted-missing-stylesheet.html"},
    ),
    "math": (
        math_problems,
        {f"{P}book/planted-raw-tex.html", f"{P}book/planted-undefined-macro.html", f"{P}book/{NO_MATHJAX}"},
    ),
    "images": (image_problems, {f"{P}book/planted-broken-image.html"}),
    "phone": (phone_problems, {f"{P}book/planted-wide.html"}),
    "alt text": (figure_problems, {f"{P}book/planted-file-alt.html"}),
    "assets": (asset_problems, {f"{P}book/planted-search-index.html"}),
    "links": (link_problems, {f"{P}book/planted-dead-link.html", f"{P}book/planted-dead-anchor.html"}),
    "published": (
        lambda crawl: published_problems(crawl, PLANTED_TOC),
        {f"{P}book/planted-unpublished.html", f"{P}book/{EMPTY}"},
    ),
    "screenshots": (lambda crawl: screenshot_problems(crawl, PLANTED_SCREENSHOTS), {"unpublished.png"}),
}
if PLANTED_EDITION:  # a site of two editions: the language switch is checked too
    CHECKS["language switch"] = (lang_switch_problems, {f"{P}book/{NO_SWITCH}", f"{P}book/{WRONG_SWITCH}"})


def plant_faults(source: Path, target: Path, edition: str) -> None:
    """Copy the site from ``source`` to ``target`` and add the planted pages to ``edition``'s ``book`` folder.

    In every other edition each planted page gets a counterpart (a copy of its ``book/intro.html``), and the planted
    page's language switch leads to it, as the book's own pages do; except in ``WRONG_SWITCH``, whose switch still
    leads to ``intro.html``, and ``NO_SWITCH``, which has none."""
    shutil.copytree(source, target)
    folder = target / edition / "book"
    intro = (folder / "intro.html").read_text(encoding="utf-8")
    article = re.search(r"<article[^>]*>", intro)
    mathjax = re.search(r"<script[^>]*mathjax[^>]*>\s*</script>", intro)
    assert article and mathjax, "book/intro.html has no <article> or no MathJax script: update plant_faults"
    pages = {"planted-control.html": intro, HANGUP_PAGE: intro, WRONG_SWITCH: intro}
    for name, insertion in INSERTIONS.items():
        pages[name] = intro[: article.end()] + insertion + intro[article.end() :]
    pages[NO_MATHJAX] = intro[: mathjax.start()] + intro[mathjax.end() :]
    pages[EMPTY] = re.sub(r"(<article[^>]*>).*?(</article>)", r"\1\2", intro, flags=re.DOTALL)
    pages[NO_SWITCH] = SWITCH.sub("", intro)
    others = [e for e in editions(target) if e and e != edition]
    for name, text in pages.items():
        for other in others:
            shutil.copy(target / other / "book" / "intro.html", target / other / "book" / name)
            if name != WRONG_SWITCH:
                text = text.replace(f"{other}/book/intro.html", f"{other}/book/{name}")
        (folder / name).write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def planted(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crawl]:
    if not (HTML_DIR / P / "book" / "intro.html").is_file():
        pytest.fail(f"no built book at {HTML_DIR / P}: run `make book` first")
    root = tmp_path_factory.mktemp("planted") / "html"
    plant_faults(HTML_DIR, root, PLANTED_EDITION)
    server, base = serve(root, HangupHandler)
    try:
        pages = [f"{P}book/{name}" for name in PLANTED_PAGES]
        screenshots = root.parent / "screenshots"
        yield crawl_site(browser, root, base, PLANTED_EDITION, pages, screenshots, PLANTED_SCREENSHOTS)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("check", CHECKS)
def test_check_catches_planted_fault(planted: Crawl, check: str) -> None:
    function, expected = CHECKS[check]
    flagged = {page for page, items in function(planted).items() if items}
    assert expected <= flagged, f"the {check} check missed its planted faults {sorted(expected - flagged)}"
    assert f"{P}book/planted-control.html" not in flagged, f"the {check} check flags the unmodified control page"


def test_chinese_check_catches_planted_faults(crawl: Crawl) -> None:
    """The Chinese check, on this crawl's own results with a fault planted in each: no font covering Chinese; a page
    marked English; the glossary left in English; the landing page without its link to the errata."""
    if not crawl.edition.startswith("zh"):
        pytest.skip("the Chinese check applies to the Chinese edition")
    prefix = crawl.edition + "/"
    assert not any(chinese_problems(crawl).values()), "fix the real problems first (test_chinese_rendered_...)"
    probed = [p for p, r in loaded(crawl) if r.report.get("cjkProbe")]
    # No installed family covers Chinese (a paragraph mixing Chinese and English can draw as many glyphs with a Latin
    # font as it has Chinese characters, so a Latin family is no planted fault).
    no_font = chinese_problems(crawl, families=frozenset({"planted: no font covers Chinese"}))
    assert set(probed) <= {p for p, items in no_font.items() if items}, "a Chinese page drawn without a CJK font passed"

    def planted_copy(page: str, **report: Any) -> Crawl:
        pages = dict(crawl.pages)
        original = pages[prefix + page]
        pages[prefix + page] = PageResult(original.path, {**original.report, **report})
        return Crawl(crawl.root, crawl.base, crawl.edition, pages, crawl.screenshots, crawl.seconds)

    cases = {
        "search.html": planted_copy("search.html", lang="en"),
        "book/glossary.html": planted_copy("book/glossary.html", hanChars=0),
        "book/intro.html": planted_copy("book/intro.html", links=[]),
    }
    for page, planted_crawl in cases.items():
        assert chinese_problems(planted_crawl).get(prefix + page), f"the Chinese check missed the fault in {page}"


def test_every_page_names_the_icon() -> None:
    """A page that names no icon makes the browser ask for /favicon.ico, which the site lacks: a 404 in the console
    whenever the request finishes before the page is left (it did, at random, for the editions' redirect pages)."""
    # _static/ and the like hold the themes' template fragments, not pages
    skip = {"_static", "_sources", "_images", "_downloads", "jupyter_execute"}
    pages = sorted(p for p in HTML_DIR.rglob("*.html") if not skip & set(p.relative_to(HTML_DIR).parts))
    if not pages:
        if os.environ.get("BNREF_REQUIRE_BROWSER"):
            pytest.fail(f"no built site in {HTML_DIR}: run `make book`")
        pytest.skip(f"no built site in {HTML_DIR}: run `make book`")
    missing = [str(p.relative_to(HTML_DIR)) for p in pages if 'rel="icon"' not in p.read_text(encoding="utf-8")]
    assert not missing, f"pages without an icon link: {missing[:10]} ({len(missing)} in all)"
