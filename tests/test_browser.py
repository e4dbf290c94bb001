"""The built book in a real browser: every chapter page loads in headless Chromium with no
JavaScript error, every local image loads, and the Colab launch button is there.

Needs Debian's `chromium` (CI installs it; elsewhere the test is skipped when it is missing).
A screenshot of Chapter 5's heatmap section is saved to `_build/artifacts/`.
"""

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p.stem for p in (ROOT / "chapters").glob("*.ipynb"))
ARTIFACTS = ROOT / "_build" / "artifacts"
# Known errors of the Jupyter Book 1 theme stack itself, not of the chapters: sphinx-thebe
# (pulled in by jupyter-book 1.0.4) writes its configuration script twice into every page, so
# the second copy re-declares a `const`. Thebe (live code) is not used by this book.
UPSTREAM_JS_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared",)
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (signature of the base class)
        pass


@pytest.fixture(scope="module")
def server(built_book):
    handler = functools.partial(_QuietHandler, directory=str(built_book))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing in CI: `apt-get install chromium` (see .ci/run).")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield instance
        instance.close()


def _open(browser, url):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = {"js": [], "failed": []}
    page.on(
        "pageerror",
        lambda error: (
            problems["js"].append(str(error)) if str(error) not in UPSTREAM_JS_ERRORS else None
        ),
    )
    page.on("requestfailed", lambda request: problems["failed"].append(request.url))
    page.on(
        "console",
        lambda message: (
            problems["js"].append(message.text)
            if message.type == "error" and "Failed to load resource" not in message.text
            else None
        ),
    )
    page.goto(url, wait_until="load")
    return page, problems


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_page_loads_in_chromium(server, browser, chapter):
    page, problems = _open(browser, f"{server}/chapters/{chapter}.html")
    assert page.locator("h1").first.inner_text().strip()
    images = page.evaluate(
        "Array.from(document.images).map(i => [i.currentSrc || i.src, "
        "i.complete && i.naturalWidth > 0])"
    )
    local = [(source, ok) for source, ok in images if source.startswith(server)]
    assert len(local) >= 2, "expected the chapter's figures"
    assert all(ok for _, ok in local), [source for source, ok in local if not ok]
    local_failures = [url for url in problems["failed"] if url.startswith(server)]
    assert not local_failures, local_failures
    assert not problems["js"], problems["js"]
    launch = page.locator('a[href*="colab.research.google.com/github/"]')
    assert launch.count() >= 1, "no Colab launch button"
    page.close()


def test_screenshot_of_the_heatmap_section(server, browser):
    page, problems = _open(browser, f"{server}/chapters/05_training_heatmap.html")
    section = page.locator("section#the-heatmap-step-by-step")
    assert section.count() == 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTIFACTS / "chapter5_heatmap_section.png"
    section.screenshot(path=str(target))
    assert target.stat().st_size > 10_000
    assert not problems["js"]
    page.close()
