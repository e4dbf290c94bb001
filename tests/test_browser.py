"""The built book, and JupyterLab, in a real browser.

Every chapter page loads in headless Chromium at a 1280 px window with no JavaScript error,
every local image loads, the Colab launch button is there, no code block or output scrolls
sideways, and the exercise solutions are collapsed. One chapter is also opened in a real
JupyterLab server (started from this environment), where the solutions must be collapsed too.

Needs Debian's `chromium` (CI installs it; elsewhere the tests are skipped when it is missing).
Screenshots are saved to `_build/artifacts/`: Chapter 5's heatmap section, Chapter 1's
exercises in the book and in JupyterLab, Chapter 4's focal-loss formula offline.

The formulas are checked where readers meet them: in the built book opened from disk with
every network request refused (they are MathML made at build time, so they need none), and in
JupyterLab (its own MathJax).
"""

import functools
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
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


def _open(browser, url, wait_until="load"):
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
    page.goto(url, wait_until=wait_until)
    return page, problems


# Elements whose content is wider than their box, i.e. that scroll sideways: code blocks and
# text outputs (the highlighted library source wraps, so it never does).
_SCROLLING_BLOCKS = """
Array.from(document.querySelectorAll("pre"))
  .filter(pre => pre.offsetParent !== null && pre.scrollWidth > pre.clientWidth + 1)
  .map(pre => pre.innerText.split("\\n").sort((a, b) => b.length - a.length)[0].slice(0, 90))
"""


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
    scrolling = page.evaluate(_SCROLLING_BLOCKS)
    assert not scrolling, f"blocks that scroll sideways at 1280 px: {scrolling}"
    details = page.locator("details")
    assert details.count() >= 1, "no collapsed solutions"
    assert not any(details.nth(i).get_attribute("open") is not None for i in range(details.count()))
    page.close()


#: Every chapter typesets its formulas; together at least this many.
MIN_FORMULAS = 20
_RENDERED_MATH = """
Array.from(document.querySelectorAll("article math")).map(m => {
  const box = m.getBoundingClientRect();
  return [box.width, box.height, m.getAttribute("display") || "inline"];
})
"""
# Text outside code that still holds TeX: a `$` or a backslash command (raw, unrendered math).
_RAW_TEX = r"""
Array.from(document.querySelectorAll("article p, article li, article td"))
  .filter(e => !e.closest("pre, .cell_output, .highlight"))
  .map(e => {
    const copy = e.cloneNode(true);
    copy.querySelectorAll("code, math, .math").forEach(x => x.remove());
    return copy.textContent;
  })
  .filter(t => /\$|\\(frac|alpha|gamma|log|sqrt|max|text|mathrm)/.test(t))
"""


def _only_files(route, refused):
    """Playwright route handler: files load, anything from a network is refused."""
    if route.request.url.startswith("file:"):
        route.continue_()
    else:
        refused.append(route.request.url)
        route.abort()


def test_formulas_render_offline_in_the_book(built_book, browser):
    """Each chapter page opened from disk, every http(s) request refused: the formulas are
    drawn (MathML with a real size), and no raw TeX is left in the prose."""
    total = 0
    for chapter in CHAPTERS:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        refused = []
        page.route("**/*", functools.partial(_only_files, refused=refused))
        page.goto((built_book / "chapters" / f"{chapter}.html").as_uri(), wait_until="load")
        formulas = page.evaluate(_RENDERED_MATH)
        assert formulas, f"{chapter}: no typeset formula"
        assert all(w > 0 and h > 0 for w, h, _ in formulas), f"{chapter}: an empty formula"
        assert not page.evaluate(_RAW_TEX), f"{chapter}: raw TeX in the prose"
        assert not any("mathjax" in url.lower() for url in refused), "the page asked for MathJax"
        total += len(formulas)
        if chapter.startswith("04"):
            block = page.locator("article math[display=block]").first
            block.scroll_into_view_if_needed()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            block.screenshot(path=str(ARTIFACTS / "chapter4_formula_offline.png"))
        page.close()
    assert total >= MIN_FORMULAS, f"{total} formulas in the chapters"


def test_solutions_are_collapsed_in_the_book(server, browser):
    page, _ = _open(browser, f"{server}/chapters/01_anchors.html")
    details = page.locator("details").last
    details.scroll_into_view_if_needed()
    assert details.locator("summary").is_visible()
    assert not details.locator("ol").is_visible()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    section = page.locator("section#exercises")
    section.screenshot(path=str(ARTIFACTS / "book_chapter1_exercises_1280px.png"))
    details.locator("summary").click()
    assert details.locator("ol").is_visible()
    page.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """A JupyterLab server of this environment, without token or network, on a copy of the
    chapters (JupyterLab may autosave what it opens; the committed notebooks stay untouched)."""
    port = _free_port()
    runtime = tmp_path_factory.mktemp("jupyter-runtime")
    root = tmp_path_factory.mktemp("lab-root")
    shutil.copytree(ROOT / "chapters", root / "chapters", ignore=shutil.ignore_patterns("data"))
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--port={port}",
        "--ServerApp.ip=127.0.0.1",
        "--IdentityProvider.token=",
        "--ServerApp.password=",
        f"--ServerApp.root_dir={root}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        "--allow-root",
    ]
    environment = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime)}
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/lab", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("JupyterLab did not start within 60 s")
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_jupyterlab_opens_a_chapter_with_its_solutions_collapsed(jupyterlab, browser):
    page, problems = _open(
        browser, f"{jupyterlab}/lab/tree/chapters/01_anchors.ipynb", "domcontentloaded"
    )
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.wait_for_selector(".jp-RenderedMarkdown h1", timeout=60_000)
    assert "Anchor boxes" in page.locator(".jp-RenderedMarkdown h1").first.inner_text()
    # Windowed notebooks render cells near the viewport: scroll to the end, noting whether a
    # formula was typeset on the way (JupyterLab's MathJax makes `mjx-container` elements).
    typeset = False
    for _ in range(40):
        typeset = typeset or page.locator(".jp-RenderedMarkdown mjx-container").count() > 0
        if page.locator(".jp-RenderedMarkdown details").count():
            break
        page.mouse.move(640, 500)
        page.mouse.wheel(0, 4000)
        page.wait_for_timeout(250)
    assert typeset, "no formula typeset by JupyterLab's MathJax"
    details = page.locator(".jp-RenderedMarkdown details").last
    details.scroll_into_view_if_needed()
    assert details.get_attribute("open") is None
    assert details.locator("summary").is_visible()
    assert not details.locator("ol").is_visible(), "solutions are visible in JupyterLab"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "jupyterlab_chapter1_exercises.png"))
    details.locator("summary").click()
    assert details.locator("ol").is_visible()
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


#: Figures a reviewer flagged, by page and section: each is screenshotted for a person to look
#: at (`_build/artifacts/figure_*.png`) and must load and be drawn at least this wide (px).
FLAGGED_FIGURES = {
    "ignored_anchors": ("chapters/01_anchors", "matching-positive-ignored-background", 350),
    "architecture": ("chapters/02_model", "one-stage-or-two", 600),
    "focal_loss_curves": ("chapters/04_focal_loss", "from-cross-entropy-to-the-focal-loss", 350),
    "schedules": ("chapters/05_training_heatmap", "transfer-learning-and-why-the-blog-froze", 600),
    "ablation": ("book/results", "the-ablation", 600),
}


@pytest.mark.parametrize("name", sorted(FLAGGED_FIGURES))
def test_flagged_figures_render_at_a_readable_size(server, browser, name):
    page_name, section, min_width = FLAGGED_FIGURES[name]
    page, problems = _open(browser, f"{server}/{page_name}.html")
    image = page.locator(f"section[id^='{section}'] img").first
    image.scroll_into_view_if_needed()
    assert image.evaluate("i => i.complete && i.naturalWidth > 0")
    assert image.bounding_box()["width"] >= min_width
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    image.screenshot(path=str(ARTIFACTS / f"figure_{name}.png"))
    assert not problems["js"]
    page.close()
