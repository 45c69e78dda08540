"""The published book, checked in a real browser as a reader would see it.

The built site (``_build/html``, or the folder named by ``BNREF_BOOK_HTML``) is served on 127.0.0.1 and every
HTML page is opened in headless Chromium, driven over the Chrome DevTools Protocol (CDP) with a small
standard-library websocket client. For every page:

* no console error, no uncaught exception, no failed local request;
* no request leaves localhost: the site is self-contained (MathJax, fonts and scripts are served by the book);
* MathJax has typeset every equation: each ``.math`` element holds an ``mjx-container``, no MathJax error box,
  and no raw TeX (``$$``, ``\\frac``, ``\\begin{`` ...) is left in the page's text outside code blocks;
* every ``<img>`` has loaded (``naturalWidth > 0``);
* every internal link answers HTTP 200, and its ``#anchor``, if any, names an element id of the target page.

Screenshots of the landing page and of the backward-pass chapter go to ``_build/screenshots/`` (next to the
``html`` folder checked).

Chromium is Debian's ``chromium`` (``apt-get install chromium``; ``BNREF_CHROMIUM`` overrides the path). Without it
the tests skip, unless ``BNREF_REQUIRE_BROWSER=1`` (set by ``.ci/run``), in which case they fail. A missing
``_build/html`` is a failure: build the book first (``make book``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html.parser
import http.server
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

pytestmark = pytest.mark.browser

REPO_ROOT = Path(__file__).resolve().parents[1]
HTML_DIR = Path(os.environ.get("BNREF_BOOK_HTML", REPO_ROOT / "_build" / "html")).resolve()
SCREENSHOT_DIR = HTML_DIR.parent / "screenshots"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
VIEWPORT = (1280, 900)

CHROMIUM_FLAGS = [
    "--headless",
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


# --------------------------------------------------------------------------------------------------------------
# A minimal websocket client (RFC 6455, client side: text frames out, masked; any frames in, unmasked).
# --------------------------------------------------------------------------------------------------------------

WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WebSocket:
    """Blocking websocket connection, enough for the DevTools protocol (JSON text messages)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "ws" or parts.hostname is None or parts.port is None:
            raise ValueError(f"expected a ws://host:port/path URL, got {url!r}")
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        self.buffer = bytearray()
        self._handshake(parts.hostname, parts.port, parts.path)

    def _handshake(self, host: str, port: int, path: str) -> None:
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode("ascii"))
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise ConnectionError(f"websocket upgrade refused: {lines[0]!r}")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        expected = base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            raise ConnectionError("websocket handshake: bad Sec-WebSocket-Accept")

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("websocket closed by the browser")
        self.buffer += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        header = bytearray([0x80 | opcode])
        if n < 126:
            header.append(0x80 | n)
        elif n < 1 << 16:
            header.append(0x80 | 126)
            header += struct.pack("!H", n)
        else:
            header.append(0x80 | 127)
            header += struct.pack("!Q", n)
        mask = os.urandom(4)
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        masked = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big") if n else b""
        self.sock.sendall(bytes(header) + mask + masked)

    def send_text(self, text: str) -> None:
        self._send_frame(0x1, text.encode("utf-8"))

    def recv_text(self, timeout: float) -> str:
        """Next complete text message; raises ``TimeoutError`` (``socket.timeout``) after ``timeout`` seconds."""
        self.sock.settimeout(max(timeout, 0.001))
        message = bytearray()
        while True:
            b0, b1 = self._take(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._take(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._take(8))
            mask = self._take(4) if b1 & 0x80 else None
            payload = self._take(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the browser")
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            message += payload
            if b0 & 0x80:
                return message.decode("utf-8")

    def close(self) -> None:
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()


# --------------------------------------------------------------------------------------------------------------
# DevTools protocol session on one page target.
# --------------------------------------------------------------------------------------------------------------


class CDPError(RuntimeError):
    pass


class DevTools:
    """Commands with ``call``; events are appended to ``events`` as they arrive."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.last_id = 0
        self.events: list[dict[str, Any]] = []

    def _receive(self, deadline: float) -> dict[str, Any] | None:
        try:
            message = json.loads(self.ws.recv_text(deadline - time.monotonic()))
        except (socket.timeout, TimeoutError):
            return None
        if "method" in message:
            self.events.append(message)
        return message

    def call(self, method: str, timeout: float = PAGE_TIMEOUT_S, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        call_id = self.last_id
        self.ws.send_text(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self._receive(deadline)
            if message is not None and message.get("id") == call_id:
                if "error" in message:
                    raise CDPError(f"{method}: {message['error']}")
                return message.get("result", {})
        raise TimeoutError(f"no answer to {method} within {timeout} s")

    def wait_for(self, method: str, timeout: float = PAGE_TIMEOUT_S, start: int = 0) -> dict[str, Any]:
        """The first event named ``method`` at index >= ``start`` in ``events``, waiting for it if needed."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[start:]:
                if event["method"] == method:
                    return event
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no {method} within {timeout} s")
            self._receive(deadline)

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._receive(deadline)

    def evaluate(self, expression: str, timeout: float = PAGE_TIMEOUT_S) -> Any:
        result = self.call(
            "Runtime.evaluate", timeout=timeout, expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise CDPError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


# --------------------------------------------------------------------------------------------------------------
# The site server and the browser.
# --------------------------------------------------------------------------------------------------------------


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
        pass


@functools.lru_cache(maxsize=1)
def chromium_path() -> str | None:
    explicit = os.environ.get("BNREF_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def start_chromium(profile: Path) -> tuple[subprocess.Popen, DevTools]:
    log = open(profile.parent / "chromium.log", "wb")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(
        [chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = (profile.parent / "chromium.log").read_text(errors="replace")[-2000:]
            pytest.fail(f"Chromium did not start its DevTools endpoint:\n{tail}")
        time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
        targets = json.load(answer)
    page = next(t for t in targets if t.get("type") == "page")
    devtools = DevTools(WebSocket(page["webSocketDebuggerUrl"]))
    for domain in ("Page", "Runtime", "Log", "Network"):
        devtools.call(f"{domain}.enable")
    width, height = VIEWPORT
    devtools.call(
        "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
    )
    return proc, devtools


def stop_chromium(proc: subprocess.Popen, devtools: DevTools) -> None:
    try:
        devtools.call("Browser.close", timeout=5)
    except (CDPError, TimeoutError, OSError):
        pass
    devtools.ws.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# --------------------------------------------------------------------------------------------------------------
# What is checked on each page.
# --------------------------------------------------------------------------------------------------------------

# Runs in the page after its load event. Waits for MathJax's first typeset and for every image, then reports.
PAGE_REPORT_JS = r"""
(async () => {
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

  report.links = [...new Set([...document.querySelectorAll('a[href]')].map(a => a.href))];
  report.ids = [...document.querySelectorAll('[id]')].map(e => e.id)
      .concat([...document.querySelectorAll('a[name]')].map(a => a.name));
  report.bodyText = document.body.innerText.length;
  return report;
})()
"""

# Raw TeX that MathJax should have replaced: $$, \( \) \[ \], and any control word such as \frac or \begin.
RAW_TEX = re.compile(r"\$\$|\\[()\[\]]|\\[A-Za-z]{2,}")


@dataclass
class PageResult:
    path: str
    report: dict[str, Any] = field(default_factory=dict)
    load_error: str = ""
    console: list[str] = field(default_factory=list)
    outside_requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    seconds: float = 0.0


def console_problems(events: list[dict[str, Any]]) -> list[str]:
    problems = []
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            problems.append(f"uncaught exception: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            problems.append(f"console.{params['type']}: {args}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            problems.append(f"log error ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
    return problems


def network_problems(events: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(requests that left localhost, local requests that failed or answered >= 400)."""
    urls: dict[str, str] = {}
    outside, failed = [], []
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            urls[params["requestId"]] = url
            host = urllib.parse.urlsplit(url).hostname
            if host is not None and host not in LOCAL_HOSTS:
                outside.append(url)
        elif method == "Network.responseReceived" and params["response"].get("status", 200) >= 400:
            failed.append(f"HTTP {params['response']['status']}: {params['response']['url']}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            url = urls.get(params["requestId"], "?")
            if urllib.parse.urlsplit(url).hostname in LOCAL_HOSTS:
                failed.append(f"{params.get('errorText')}: {url}")
    return outside, failed


META_REFRESH = re.compile(r"""<meta[^>]+http-equiv=["']?refresh["']?[^>]*url=([^"'>\s]+)""", re.IGNORECASE)


def final_url(url: str, file: Path) -> str:
    """Where the browser ends up: ``url`` itself, or the target of the page's meta-refresh redirect."""
    redirect = META_REFRESH.search(file.read_text(encoding="utf-8", errors="replace"))
    return urllib.parse.urljoin(url, redirect.group(1)) if redirect else url


def visit(devtools: DevTools, url: str, expected_url: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Open ``url``, wait until ``expected_url`` (after any redirect) has loaded, return (page report, events)."""
    start = len(devtools.events)
    devtools.call("Page.navigate", url=url)
    devtools.wait_for("Page.loadEventFired", start=start)
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    state = None
    while time.monotonic() < deadline:
        try:
            state = devtools.evaluate("[location.href, document.readyState, !!document.body]")
        except CDPError:  # the page is between two documents (a redirect in flight)
            state = None
        if state == [expected_url, "complete", True]:
            break
        devtools.drain(0.1)
    else:
        raise TimeoutError(f"{url} did not finish loading {expected_url} (last state: {state})")
    report = devtools.evaluate(PAGE_REPORT_JS, timeout=PAGE_TIMEOUT_S)
    devtools.drain(SETTLE_S)
    return report, devtools.events[start:]


def screenshot(devtools: DevTools, target: Path, scroll_to_math: bool = False) -> None:
    if scroll_to_math:
        devtools.evaluate("(() => { const m = document.querySelector('div.math');"
                          " if (m) m.scrollIntoView({block: 'center'}); return !!m; })()")
        devtools.drain(0.2)
    shot = devtools.call("Page.captureScreenshot", format="png")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(base64.b64decode(shot["data"]))


# Pages that get a screenshot: (page, file name, scroll to the first display equation first).
SCREENSHOTS = [
    ("book/intro.html", "landing.png", False),
    ("book/backward.html", "backward.png", False),
    ("book/backward.html", "backward-equation.png", True),
]


def site_pages(root: Path) -> list[str]:
    skip = ("_static/", "_sources/", "_images/", "_downloads/")
    pages = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.html"))
    return [p for p in pages if not p.startswith(skip)]


@dataclass
class Crawl:
    base: str
    pages: dict[str, PageResult]
    screenshots: dict[str, Path]
    seconds: float


@pytest.fixture(scope="module")
def crawl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crawl]:
    if chromium_path() is None:
        reason = "headless Chromium not found (install Debian's `chromium`, or set BNREF_CHROMIUM)"
        if os.environ.get("BNREF_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + "; BNREF_REQUIRE_BROWSER=1 requires the browser check to run")
        pytest.skip(reason)
    if not (HTML_DIR / "index.html").is_file():
        pytest.fail(f"no built book at {HTML_DIR}: run `make book` first (or point BNREF_BOOK_HTML at _build/html)")

    server, base = serve(HTML_DIR)
    workdir = tmp_path_factory.mktemp("chromium")
    proc, devtools = start_chromium(workdir / "profile")
    started = time.monotonic()
    results: dict[str, PageResult] = {}
    shots: dict[str, Path] = {}
    try:
        for page in site_pages(HTML_DIR):
            t0 = time.monotonic()
            try:
                report, events = visit(devtools, base + page, final_url(base + page, HTML_DIR / page))
            except (TimeoutError, CDPError) as error:  # recorded, so one broken page does not hide the others
                results[page] = PageResult(page, load_error=f"{type(error).__name__}: {error}")
                continue
            outside, failed = network_problems(events)
            results[page] = PageResult(page, report, console_problems(events), outside, failed)
            for shot_page, name, to_math in SCREENSHOTS:
                if shot_page == page:
                    shots[name] = SCREENSHOT_DIR / name
                    screenshot(devtools, shots[name], scroll_to_math=to_math)
            results[page].seconds = time.monotonic() - t0
        yield Crawl(base, results, shots, time.monotonic() - started)
    finally:
        stop_chromium(proc, devtools)
        server.shutdown()
        server.server_close()


def fail_on(problems: dict[str, list[str]], what: str) -> None:
    problems = {page: items for page, items in problems.items() if items}
    if problems:
        lines = [f"{page}:\n    " + "\n    ".join(items) for page, items in sorted(problems.items())]
        pytest.fail(f"{what}:\n" + "\n".join(lines), pytrace=False)


# --------------------------------------------------------------------------------------------------------------
# The tests.
# --------------------------------------------------------------------------------------------------------------


def toc_documents() -> list[str]:
    """Documents named in the repository's _toc.yml (``root:`` and every ``file:``)."""
    text = (REPO_ROOT / "_toc.yml").read_text(encoding="utf-8")
    return re.findall(r"^\s*-?\s*(?:root|file):\s*([^\s#]+)", text, flags=re.MULTILINE)


def test_every_chapter_is_published(crawl: Crawl) -> None:
    expected = {doc.removesuffix(".md").removesuffix(".ipynb") + ".html" for doc in toc_documents()}
    assert expected, "no documents found in _toc.yml"
    missing = sorted(expected - set(crawl.pages))
    assert not missing, f"chapters in _toc.yml without a page in {HTML_DIR}: {missing}"
    empty = sorted(p for p in expected if crawl.pages[p].report.get("bodyText", 0) < 100)
    assert not empty, f"pages with (almost) no text: {empty}"


def loaded(crawl: Crawl) -> list[tuple[str, PageResult]]:
    """The pages that loaded (the others fail test_every_page_loads)."""
    return [(p, r) for p, r in crawl.pages.items() if not r.load_error]


def test_every_page_loads(crawl: Crawl) -> None:
    fail_on({p: [r.load_error] if r.load_error else [] for p, r in crawl.pages.items()}, "pages that did not load")


def test_no_console_errors(crawl: Crawl) -> None:
    fail_on({p: r.console for p, r in loaded(crawl)}, "console errors or uncaught exceptions")


def test_site_is_self_contained(crawl: Crawl) -> None:
    fail_on(
        {
            p: [f"outside request: {url}" for url in r.outside_requests] + [f"failed: {f}" for f in r.failed_requests]
            for p, r in loaded(crawl)
        },
        "requests that left localhost, or local resources that failed to load",
    )


def test_mathjax_typeset_every_equation(crawl: Crawl) -> None:
    problems: dict[str, list[str]] = {}
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
    fail_on(problems, "equations MathJax did not typeset")
    with_math = [p for p, r in loaded(crawl) if r.report["mathElements"]]
    assert with_math, "no page of the book has any equation: is the book built from the chapters?"


def test_every_image_loads(crawl: Crawl) -> None:
    fail_on(
        {p: [f"broken image: {src}" for src in r.report["brokenImages"]] for p, r in loaded(crawl)},
        "images that did not load",
    )


class IdCollector(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (name == "id" or (tag == "a" and name == "name")):
                self.ids.add(value)


def test_internal_links_resolve(crawl: Crawl) -> None:
    status: dict[str, int] = {}
    ids: dict[str, set[str]] = {p: set(r.report["ids"]) for p, r in loaded(crawl)}

    def fetch(url: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, b""

    def ids_of(path: str, url: str) -> set[str]:
        if path not in ids:
            collector = IdCollector()
            collector.feed(fetch(url)[1].decode("utf-8", errors="replace"))
            ids[path] = collector.ids
        return ids[path]

    problems: dict[str, list[str]] = {}
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
    fail_on(problems, "internal links that do not resolve")
    assert status, "no internal link found at all"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack("!II", data[16:24])


def test_screenshots_saved(crawl: Crawl) -> None:
    for _, name, _ in SCREENSHOTS:
        assert name in crawl.screenshots, f"no page to take {name} from (is it in the book?)"
        assert png_size(crawl.screenshots[name]) == VIEWPORT, f"{name} does not have the viewport's size"
    timing = ", ".join(f"{p} {r.seconds:.1f}s" for p, r in sorted(loaded(crawl)))
    print(f"\nbrowser check: {len(crawl.pages)} pages in {crawl.seconds:.1f} s ({timing})")
    print(f"screenshots in {SCREENSHOT_DIR}")
