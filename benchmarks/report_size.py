"""The report's size and build time, from a finished study's output folder.

Builds the report again from the study's rendered notebook pages and summary.json (as the runner does,
without writing over it), and reports its bytes by part (the page's styles, PNG and JPEG figures, the rest), the
build time, and for comparison the bytes of the executed notebooks' figures before they are brought to screen
resolution; then its in-page link targets and the anchors they miss, the checklist's answered and unanswerable
items, and the written report.pdf's pages and outline entries. Exits 1 when the page is larger than ``--max-mb``.

    .venv/bin/python benchmarks/report_size.py outputs --max-mb 7 --out outputs/benchmarks/report_size.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import nbformat
from pypdf import PdfReader

from allstudy.core.atomic import read_json, write_json
from allstudy.study import checklist
from allstudy.study.report import anchors_of, build_report, links_of

FIGURE = re.compile(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)")


def notebooks_of(out: Path, summary: dict) -> dict[str, Path]:
    """The executed notebooks the report is made of, by step name (the control runs' training left out)."""
    names = ["01_explore", "02_preprocess"]
    for arch in summary["runs"]:
        names += [f"03_train-{arch}", f"04_evaluate-{arch}"]
    names.append("05_compare")
    return {n: out / "notebooks" / f"{n}.ipynb" for n in names if (out / "notebooks" / f"{n}.ipynb").exists()}


def figure_bytes(notebooks: dict[str, Path]) -> int:
    """Base64 bytes of every figure in the executed notebooks, as the kernels made them."""
    total = 0
    for path in notebooks.values():
        for cell in nbformat.read(path, as_version=4).cells:
            for output in cell.get("outputs", []):
                total += sum(len(v) for k, v in output.get("data", {}).items() if k.startswith("image/"))
    return total


def outline_entries(outline: list) -> int:
    """Entries of a PDF's document outline, nested ones included (pypdf nests children as lists)."""
    return sum(outline_entries(entry) if isinstance(entry, list) else 1 for entry in outline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="a finished study's output folder (holds summary.json and notebooks/)")
    parser.add_argument("--max-mb", type=float, default=7.0, help="the largest page allowed, in MB (1e6 bytes)")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    out = Path(args.study)
    summary = read_json(out / "summary.json")
    notebooks = notebooks_of(out, summary)
    started = time.perf_counter()
    page = build_report({n: path.with_suffix(".html") for n, path in notebooks.items()}, summary).encode("utf-8")
    seconds = time.perf_counter() - started
    text = page.decode("utf-8")
    figures = {"png": 0, "jpeg": 0}
    for kind, data in FIGURE.findall(text):
        figures[kind] += len(data)
    styles = text.index("<body")
    result = {
        "study": str(out),
        "notebooks": len(notebooks),
        "bytes": len(page),
        "styles_bytes": styles,
        "png_bytes": figures["png"],
        "jpeg_bytes": figures["jpeg"],
        "other_bytes": len(page) - styles - figures["png"] - figures["jpeg"],
        "figures_as_made_bytes": figure_bytes(notebooks),
        "build_seconds": round(seconds, 1),
        "written_report_bytes": (out / "report.html").stat().st_size if (out / "report.html").exists() else None,
        "link_targets": len(links_of(text)),
        "unresolved_links": sorted(links_of(text) - anchors_of(text)),
        "checklist_answered": sum(1 for item in checklist.ITEMS if item.anchor),
        "checklist_not_answerable": sum(1 for item in checklist.ITEMS if not item.anchor),
    }
    if (out / "report.pdf").exists():
        pdf = PdfReader(out / "report.pdf")
        result |= {"pdf_bytes": (out / "report.pdf").stat().st_size, "pdf_pages": len(pdf.pages)}
        result["pdf_outline_entries"] = outline_entries(pdf.outline)
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)
    if len(page) > args.max_mb * 1e6:
        print(f"report of {len(page) / 1e6:.1f} MB is over {args.max_mb} MB", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
