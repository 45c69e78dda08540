"""What each page of the built site loads, and how wide it is on a phone.

    python tools/page_weight.py                    # every page of _build/html, 390x844 viewport
    python tools/page_weight.py --site DIR --json weights.json

Serves the site on 127.0.0.1, opens every HTML page in Debian's headless Chromium (Playwright, as the browser check
``tests/test_book_site.py`` does), waits for MathJax, and reports for each page the bytes it loaded (the bodies of
every response, by resource type: script, stylesheet, font, image, document, other) and ``document.scrollWidth``.
The summary gives the lightest, median and heaviest page and the scripts that every page loads. A measurement
tool, not a test: the numbers are for the report of a change (before/after), the limits are checked by the tests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import urllib.parse
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_pdf import CHROMIUM_FLAGS as FLAGS  # noqa: E402 (tools/ is not a package; one list of browser flags)
from build_pdf import serve  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SKIP = ("_static/", "_sources/", "_images/", "_downloads/", "jupyter_execute/", "pdf/")
WAIT_JS = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  return document.documentElement.scrollWidth;
}"""


def pages_of(root: Path) -> list[str]:
    pages = [p.relative_to(root).as_posix() for p in root.rglob("*.html")]
    return sorted(p for p in pages if not any(f"/{s}" in f"/{p}" for s in SKIP))


def measure(root: Path, width: int, height: int) -> dict[str, dict[str, Any]]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("Debian's chromium is needed (apt-get install chromium)")
    server, base = serve(root)
    results: dict[str, dict[str, Any]] = {}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=FLAGS, headless=True)
            for page_path in pages_of(root):
                # A fresh context per page: nothing cached, every page weighed as a first visit.
                context = browser.new_context(viewport={"width": width, "height": height})
                page = context.new_page()
                loaded: dict[str, tuple[str, int]] = {}

                def on_response(response: Any, loaded: dict[str, tuple[str, int]] = loaded) -> None:
                    try:
                        size = len(response.body())
                    except Exception:  # a redirect or an aborted load has no body
                        size = 0
                    loaded[response.url] = (response.request.resource_type, size)

                page.on("response", on_response)
                page.goto(base + page_path, wait_until="load")
                try:
                    scroll_width = page.evaluate(WAIT_JS)
                except Exception:  # a page that redirects (the landing page): measure where it lands
                    page.wait_for_load_state("load")
                    scroll_width = page.evaluate(WAIT_JS)
                page.wait_for_timeout(300)
                by_type: dict[str, int] = defaultdict(int)
                for kind, size in loaded.values():
                    by_type[kind] += size
                scripts = sorted(
                    urllib.parse.urlsplit(u).path.rsplit("/", 1)[-1] for u, (k, _) in loaded.items() if k == "script"
                )
                results[page_path] = {
                    "bytes": sum(by_type.values()),
                    "by_type": dict(by_type),
                    "scroll_width": scroll_width,
                    "scripts": scripts,
                }
                context.close()
            browser.close()
    finally:
        server.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, default=REPO / "_build" / "html")
    parser.add_argument("--width", type=int, default=390)
    parser.add_argument("--height", type=int, default=844)
    parser.add_argument("--json", type=Path, help="write every page's numbers to this file")
    args = parser.parse_args()
    results = measure(args.site.resolve(), args.width, args.height)
    mb = 1e6
    for path, r in results.items():
        kinds = ", ".join(f"{k} {v / mb:.2f}" for k, v in sorted(r["by_type"].items(), key=lambda kv: -kv[1]))
        wide = "" if r["scroll_width"] <= args.width else f"  WIDER THAN THE VIEWPORT: {r['scroll_width']} px"
        print(f"{path:40s} {r['bytes'] / mb:5.2f} MB ({kinds}){wide}")
    weights = sorted(r["bytes"] for r in results.values())
    print(
        f"\n{len(results)} pages: lightest {weights[0] / mb:.2f} MB, median {statistics.median(weights) / mb:.2f} MB, "
        f"heaviest {weights[-1] / mb:.2f} MB"
    )
    everywhere = set.intersection(*(set(r["scripts"]) for r in results.values()))
    print("scripts loaded by every page:", ", ".join(sorted(everywhere)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
