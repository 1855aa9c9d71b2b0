"""A real browser for checks of the report and the app: Debian's Chromium driven headless by Playwright.

Playwright's own browser download needs the internet; the system Chromium (``apt-get install
chromium``, done by ``make browser``) does not. Both are optional: :func:`unavailable` says why a
check cannot run.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

#: Where Debian puts Chromium; ``$ALLSTUDY_CHROMIUM`` overrides it.
CHROMIUM = os.environ.get("ALLSTUDY_CHROMIUM", "/usr/bin/chromium")


def unavailable() -> str | None:
    """Why the browser checks cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"Chromium not found at {CHROMIUM} (run `make browser`, or set ALLSTUDY_CHROMIUM)"
    return None


def inspect_page(url: str, screenshot: str | os.PathLike, wait_for: str | None = None, timeout_ms: int = 60_000,
                 width: int = 1280, full_page: bool = True) -> dict:
    """Open ``url`` headless, wait for the page (and ``wait_for``, a CSS selector), screenshot it.

    Returns what a reader would see: the number of images and of those that failed to render
    (``naturalWidth`` 0), the number of tables, the page title and its visible text.
    """
    from playwright.sync_api import sync_playwright

    Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
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
