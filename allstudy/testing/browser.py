"""A real browser for checks of the report and the app: Debian's Chromium driven headless by Playwright.

Playwright's own browser download needs the internet; the system Chromium (``apt-get install
chromium``, done by ``make browser``) does not. Both are optional: :func:`unavailable` says why a
check cannot run.

:func:`inspect_page` opens any page (the report); :func:`screenshot_prediction` uploads a field to the
app's *One image* tab and screenshots the labelled answer with its Grad-CAM (:func:`open_page` and
:func:`show_prediction` are its parts, for checks that go on with the same page).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from allstudy.core.atomic import atomic_path
from allstudy.study.pdf import CHROMIUM
from allstudy.testing.servers import free_port, local_server

#: How the checks launch it (headless; no sandbox, which needs user namespaces containers often lack).
LAUNCH_ARGS = ["--no-sandbox"]
WIDTH, HEIGHT = 1280, 900  # the viewport


def unavailable() -> str | None:
    """Why the browser checks cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"Chromium not found at {CHROMIUM} (run `make browser`, or set ALLSTUDY_CHROMIUM)"
    return None


def inspect_page(
    url: str,
    screenshot: str | os.PathLike,
    wait_for: str | None = None,
    timeout_ms: int = 60_000,
    width: int = WIDTH,
    full_page: bool = True,
) -> dict:
    """Open ``url`` headless, wait for the page (and ``wait_for``, a CSS selector), screenshot it.

    Returns what a reader would see: the number of images and of those that failed to render
    (``naturalWidth`` 0), the number of tables, the page title and its visible text.
    """
    from playwright.sync_api import sync_playwright

    Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": HEIGHT})
            page.goto(url, wait_until="load", timeout=timeout_ms)
            if wait_for:
                page.wait_for_selector(wait_for, timeout=timeout_ms)
            figures = page.evaluate("""() => {
                const images = Array.from(document.images);
                return {images: images.length, broken: images.filter(i => !i.complete || i.naturalWidth === 0).length,
                        tables: document.querySelectorAll('table').length};
            }""")
            page.screenshot(path=str(screenshot), full_page=full_page)
            return {**figures, "title": page.title(), "text": page.inner_text("body"), "screenshot": str(screenshot)}
        finally:
            browser.close()


# ----------------------------------------------------------------------------- the app's One-image tab

#: True once the element a CSS selector names is an image that has loaded (and has pixels).
_SHOWN = "(s) => { const i = document.querySelector(s); return !!i && i.complete && i.naturalWidth > 0; }"
#: The One-image tab has answered: a verdict line and either a readable file's probabilities and Grad-CAM,
#: or the line saying why the file cannot be read (then there is neither).
_ANSWERED = """() => {
    const text = s => (document.querySelector(s) || {innerText: ''}).innerText.trim();
    const image = document.querySelector('#gradcam img');
    if (text('#verdict').includes('Cannot read this file')) return true;
    return text('#verdict') !== '' && text('#probabilities .output-class') !== ''
        && !!image && image.complete && image.naturalWidth > 0;
}"""
#: The label's rows as shown, top first: {class: "97%"}.
_ROWS = """() => Object.fromEntries(Array.from(document.querySelectorAll('#probabilities dl')).map(
    row => [row.querySelector('dt').innerText.trim(), row.querySelector('dd').innerText.trim()]))"""
_EMPTY = "() => (document.querySelector('#verdict') || {innerText: ''}).innerText.trim() === ''"
_ALL_IMAGES_LOADED = "() => Array.from(document.images).every(i => i.complete)"


@contextlib.contextmanager
def open_page(url: str, timeout_ms: int = 60_000) -> Iterator:
    """A Playwright page of headless Chromium at ``url`` (loaded), closed with the browser on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            page.goto(url, wait_until="load", timeout=timeout_ms)
            yield page
        finally:
            browser.close()


def show_prediction(
    page, image: str | os.PathLike, screenshot: str | os.PathLike | None = None, timeout_ms: int = 60_000
) -> dict:
    """Upload ``image`` on the app's *One image* tab of ``page`` and wait for the answer.

    The tab must be empty: a page just opened, or one whose upload was cleared (its Clear button); the
    upload waits until the previous answer is gone, so that it is never taken for this one.

    Waits until the verdict line (``#verdict``), the calibrated probabilities (``#probabilities``) and the
    Grad-CAM overlay (``#gradcam img``, loaded) are shown, and the page's other images have loaded; then
    saves a full-page ``screenshot`` (written beside it, then renamed into place) if one is asked for.
    Raises RuntimeError when the app says the file cannot be read (the verdict line's text is in it).

    Returns what the page shows: ``verdict`` (the verdict line's text), ``label`` (the top class),
    ``probabilities`` (each class shown and its percentage as text, top first), ``gradcam`` (True) and
    ``screenshot`` (its path, or None).
    """
    page.wait_for_function(_EMPTY, timeout=timeout_ms)
    page.locator("#upload input[type=file]").set_input_files(str(image))
    page.wait_for_function(_ANSWERED, timeout=timeout_ms)
    verdict = page.inner_text("#verdict").strip()
    if "Cannot read this file" in verdict:
        raise RuntimeError(f"the app cannot read {image}: {verdict}")
    page.wait_for_function(_ALL_IMAGES_LOADED, timeout=timeout_ms)
    top = page.locator("#probabilities .output-class")
    shown = {
        "verdict": verdict,
        "label": top.first.inner_text().strip() if top.count() else "",
        "probabilities": page.evaluate(_ROWS),
        "gradcam": page.evaluate(_SHOWN, "#gradcam img"),
        "screenshot": None,
    }
    if screenshot is not None:
        with atomic_path(screenshot) as tmp:
            tmp.write_bytes(page.screenshot(full_page=True, type="png"))
        shown["screenshot"] = str(screenshot)
    return shown


def screenshot_prediction(
    url: str, image: str | os.PathLike, screenshot: str | os.PathLike, timeout_s: float = 120
) -> dict:
    """Open the app at ``url`` in headless Chromium, upload ``image``, screenshot the answer.

    The page is the app's (:mod:`allstudy.serving.app`) with a model; see :func:`show_prediction` for what is
    waited for and returned. ``timeout_s`` bounds each wait (page load, the answer, the images).
    """
    timeout_ms = int(timeout_s * 1000)
    with open_page(url, timeout_ms) as page:
        return show_prediction(page, image, screenshot, timeout_ms)


# ------------------------------------------------------------------------ an executed notebook in JupyterLab

#: The notebook's outputs have rendered: at least one output area, and every image in them has loaded.
_NOTEBOOK_SHOWN = """() => {
    const images = Array.from(document.querySelectorAll('.jp-OutputArea-output img'));
    return document.querySelectorAll('.jp-OutputArea-output').length > 0 && images.length > 0
        && images.every(i => i.complete && i.naturalWidth > 0);
}"""


@contextlib.contextmanager
def jupyterlab(root: str | os.PathLike, timeout_s: float = 120):
    """A JupyterLab server on 127.0.0.1 serving ``root`` (no token: loopback only, for the check); yields its URL."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--ServerApp.root_dir={Path(root).resolve()}",
        "--IdentityProvider.token=",
        "--allow-root",
    ]
    with tempfile.TemporaryDirectory(prefix="allstudy-jupyter-") as home:
        env = {**os.environ, "JUPYTER_CONFIG_DIR": home, "JUPYTER_RUNTIME_DIR": home}
        url = f"http://127.0.0.1:{port}"
        with local_server(command, f"{url}/api/status", timeout_s, "JupyterLab", env=env):
            yield url


def open_in_jupyterlab(notebook: str | os.PathLike, screenshot: str | os.PathLike, timeout_s: float = 180) -> dict:
    """Open an executed notebook in JupyterLab (headless Chromium) and screenshot it once its outputs render.

    Returns what a reader sees: the number of output areas, of images in them and of those that failed
    to render, the number of tables, and whether an error output is shown.
    """
    from playwright.sync_api import sync_playwright

    notebook = Path(notebook).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(f"no notebook at {notebook}; run the study first (allstudy run)")
    Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
    with jupyterlab(notebook.parent, timeout_s) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            page.goto(
                f"{url}/lab/tree/{urllib.parse.quote(notebook.name)}", wait_until="load", timeout=timeout_s * 1000
            )
            page.wait_for_function(_NOTEBOOK_SHOWN, timeout=timeout_s * 1000)
            seen = page.evaluate("""() => {
                const images = Array.from(document.querySelectorAll('.jp-OutputArea-output img'));
                return {outputs: document.querySelectorAll('.jp-OutputArea-output').length, images: images.length,
                        broken: images.filter(i => !i.complete || i.naturalWidth === 0).length,
                        tables: document.querySelectorAll('.jp-OutputArea-output table').length,
                        errors: document.querySelectorAll('.jp-OutputArea-output[data-mime-type*="error"]').length};
            }""")
            page.screenshot(path=str(screenshot))
            return {**seen, "screenshot": str(screenshot)}
        finally:
            browser.close()
