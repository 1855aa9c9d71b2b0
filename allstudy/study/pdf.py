"""The report as a PDF and a picture of its first screen, both rendered from report.html by headless Chromium,
so that they cannot differ from it.

Chromium is optional: Debian's package (``make browser``) or ``$ALLSTUDY_CHROMIUM``. Without it the study says
so and writes the HTML alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from allstudy.core.atomic import atomic_path

#: Where Debian puts Chromium; ``$ALLSTUDY_CHROMIUM`` overrides it.
CHROMIUM = os.environ.get("ALLSTUDY_CHROMIUM", "/usr/bin/chromium")
#: The first screen: a laptop's window.
SCREEN = (1280, 900)
_TIMEOUT = 600  # seconds: a 7 MB page prints in well under a minute


def chromium() -> str | None:
    """The Chromium executable, or None when there is none."""
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    return shutil.which(CHROMIUM) or shutil.which("chromium") or shutil.which("chromium-browser")


def _run(arguments: list[str]) -> None:
    executable = chromium()
    if executable is None:
        raise FileNotFoundError(f"no Chromium at {CHROMIUM} (run `make browser`, or set ALLSTUDY_CHROMIUM)")
    subprocess.run(
        [executable, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *arguments],
        check=True,
        capture_output=True,
        timeout=_TIMEOUT,
    )


def print_pdf(report: str | os.PathLike, pdf: str | os.PathLike) -> Path:
    """``report`` printed to ``pdf`` (A4, every collapsed section open, links and a document outline kept)."""
    url = Path(report).resolve().as_uri() + "#print"  # the page opens its <details> for #print
    with atomic_path(pdf) as tmp:
        _run(
            [
                "--no-pdf-header-footer",
                "--generate-pdf-document-outline",
                "--virtual-time-budget=20000",
                f"--print-to-pdf={tmp}",
                url,
            ]
        )
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise RuntimeError(f"Chromium wrote no PDF for {report}")
    return Path(pdf)


def first_screen(report: str | os.PathLike, png: str | os.PathLike, size: tuple[int, int] = SCREEN) -> Path:
    """A screenshot of what a reader sees on opening ``report`` in a ``size`` window."""
    with atomic_path(png) as tmp:
        _run([f"--window-size={size[0]},{size[1]}", f"--screenshot={tmp}", Path(report).resolve().as_uri()])
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise RuntimeError(f"Chromium wrote no screenshot of {report}")
    return Path(png)
