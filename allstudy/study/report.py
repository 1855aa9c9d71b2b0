"""The study's report: one self-contained HTML page that opens on its findings.

Order: the summary written from summary.json (:mod:`allstudy.study.findings`), the contents, the data (01, 02),
the comparison with the controls, the error gallery and the chosen model (05), one collapsed section per
architecture (its 03 training and 04 evaluation together), and the reporting checklist
(:mod:`allstudy.study.checklist`). The notebooks are rendered by nbconvert with code hidden, progress logs left
out and figures inline at screen resolution (:func:`compact_images`).
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter
from PIL import Image

from allstudy.study.checklist import checklist_html
from allstudy.study.findings import summary_html

#: Figures wider than this (pixels) are scaled down: a report is read on a screen or printed on A4.
MAX_FIGURE_WIDTH = 1100
#: A figure is stored as JPEG (quality below) when that is at most this fraction of its PNG: photographs and
#: Grad-CAM overlays; plots and tables of few colours stay PNG, which keeps their lines sharp.
JPEG_IF_BELOW = 0.5
JPEG_QUALITY = 85

_CSS = """
<style type="text/css">
main { max-width: 1200px; margin: 0 auto; }
.allstudy-summary table.headline { font-size: 12px; border-collapse: collapse; margin: 0.6em 0; }
.allstudy-summary table.headline th, .allstudy-summary table.headline td,
table.checklist th, table.checklist td { border: 1px solid #ccd; padding: 2px 6px; text-align: left; }
table.checklist { font-size: 12px; border-collapse: collapse; }
nav#contents ul { columns: 2; list-style: none; padding-left: 0; }
details.allstudy-arch { border: 1px solid #ccd; border-radius: 4px; margin: 0.5em 0; padding: 0 0.8em; }
details.allstudy-arch > summary { cursor: pointer; padding: 0.5em 0; font-weight: 600; }
section > h1.allstudy-part { border-bottom: 2px solid #4a6fa5; margin-top: 1.6em; }
p.provenance { font-size: 11px; color: #555; }
@media print {
  section > h1.allstudy-part { break-before: page; }
  details.allstudy-arch { break-inside: auto; }
  h1, h2, h3, h4 { break-after: avoid; }
}
</style>
"""

# Collapsed sections open for printing (the PDF prints report.html#print) and when a link points inside them.
_SCRIPT = """
<script>
function openAll() { document.querySelectorAll("details").forEach(function (d) { d.open = true; }); }
function openTarget() {
  var target = location.hash && document.getElementById(decodeURIComponent(location.hash.slice(1)));
  for (var node = target; node; node = node.parentElement) { if (node.tagName === "DETAILS") { node.open = true; } }
  if (target) { target.scrollIntoView(); }
}
if (location.hash === "#print") { openAll(); } else { openTarget(); }
window.addEventListener("hashchange", openTarget);
window.addEventListener("beforeprint", openAll);
</script>
"""


def _without_stderr(cell):
    """A code cell without its stderr streams (progress bars, TensorFlow's start-up logs): the report shows
    results; the executed notebook keeps everything."""
    if cell.cell_type == "code":
        cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.get("name") == "stderr")]
    return cell


def _compact(png: bytes) -> tuple[str, bytes]:
    """One figure at screen resolution: (mime type, bytes), JPEG when that is much smaller."""
    with Image.open(io.BytesIO(png)) as opened:
        image: Image.Image = opened.copy()
    if image.width > MAX_FIGURE_WIDTH:
        height = round(image.height * MAX_FIGURE_WIDTH / image.width)
        image = image.resize((MAX_FIGURE_WIDTH, height), Image.Resampling.LANCZOS)
        resized = io.BytesIO()
        image.save(resized, format="PNG")
        png = resized.getvalue()
    rgba = image.convert("RGBA")
    flat = Image.new("RGB", rgba.size, "white")  # JPEG has no transparency: figures sit on white
    flat.paste(rgba, mask=rgba.getchannel("A"))
    jpeg = io.BytesIO()
    flat.save(jpeg, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    if jpeg.tell() <= JPEG_IF_BELOW * len(png):
        return "image/jpeg", jpeg.getvalue()
    return "image/png", png


def compact_images(node: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook with every PNG output at screen resolution (at most :data:`MAX_FIGURE_WIDTH` wide), as
    JPEG where that is at most half the PNG; in place, returned for chaining."""
    for cell in node.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" not in data:
                continue
            mime, content = _compact(base64.b64decode(data["image/png"]))
            del data["image/png"]
            data[mime] = base64.b64encode(content).decode("ascii")
            output.get("metadata", {}).pop("image/png", None)  # its width/height no longer hold
    return node


def render_html(notebook: str | os.PathLike) -> str:
    """An executed notebook as a self-contained HTML page: code, parameters and progress logs hidden, figures
    inline at screen resolution."""
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    node = nbformat.read(str(notebook), as_version=4)
    node.cells = [
        _without_stderr(cell)
        for cell in node.cells
        if not set(cell.get("metadata", {}).get("tags", [])) & {"parameters", "injected-parameters"}
    ]
    body, _ = exporter.from_notebook_node(compact_images(node))
    return body


def _head_and_cells(page: str) -> tuple[str, str]:
    """An nbconvert lab page split into its head (styles, no remote scripts) and the cells inside ``<main>``."""
    head = page[: page.index("<body")]
    head = re.sub(r"<script\b.*?</script>", "", head, flags=re.DOTALL)  # MathJax, require.js: remote, unused
    return head, page[page.index("<main>") + len("<main>") : page.rindex("</main>")]


def _prefixed(fragment: str, prefix: str) -> str:
    """Ids and in-page links of one notebook's cells made unique (the same headings recur in every run)."""
    fragment = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}-{m.group(1)}"', fragment)
    return re.sub(r'\bhref="#([^"]+)"', lambda m: f'href="#{prefix}-{m.group(1)}"', fragment)


def _arch_line(name: str, run: dict) -> str:
    test, decision = run["test"], run["decision"]
    ci = test["accuracy_ci"]
    return (
        f"{name}: test accuracy {test['accuracy']:.1%} ({ci[0]:.1%}–{ci[1]:.1%}), macro-F1 {test['macro_f1']:.3f}, "
        f"{decision['malignant_called_benign']} of {decision['n_malignant']} malignant called benign, "
        f"{decision['referral_rate']:.0%} referred"
    )


def build_report(pages: dict[str, Path], summary: dict, title: str = "allstudy report") -> str:
    """The report page from the executed notebooks' pages (:func:`render_html`, written beside each executed
    notebook; by step name: ``01_explore``, ``02_preprocess``, ``03_train-<arch>``, ``04_evaluate-<arch>``,
    ``05_compare``) and summary.json. The pages are taken apart, not rendered again."""
    if not pages:
        raise ValueError("no executed notebook to report")
    texts = {name: Path(path).read_text(encoding="utf-8") for name, path in pages.items()}
    head, _ = _head_and_cells(next(iter(texts.values())))
    head = re.sub(r"<title>.*?</title>", f"<title>{html.escape(title)}</title>", head, flags=re.DOTALL)
    cells = {name: _head_and_cells(text)[1] for name, text in texts.items()}

    parts: list[tuple[str, str, str]] = []  # (anchor, heading, body)
    data = "".join(cells[n] for n in ("01_explore", "02_preprocess") if n in cells)
    if data:
        parts.append(("data", "1 · The data", data))
    if "05_compare" in cells:
        parts.append(
            ("comparison", "2 · Every run, the controls, the errors and the chosen model", cells["05_compare"])
        )
    arch_sections = []
    for name, run in summary.get("runs", {}).items():
        body = "".join(
            _prefixed(cells[step], f"{name}-{step[:2]}")
            for step in (f"03_train-{name}", f"04_evaluate-{name}")
            if step in cells
        )
        if body:
            arch_sections.append(
                f'<details class="allstudy-arch" id="arch-{html.escape(name)}"><summary>'
                f"{html.escape(_arch_line(name, run))}</summary>{body}</details>"
            )
    if arch_sections:
        parts.append(
            (
                "architectures",
                "3 · Each architecture: training and evaluation",
                "<p>One section per architecture, closed: open one to see its training curves, its metrics with "
                "confidence intervals, confusion matrices, calibration, decision policy, Grad-CAM and cost.</p>"
                + "".join(arch_sections),
            )
        )
    contents = "".join(f'<li><a href="#{anchor}">{html.escape(heading)}</a></li>' for anchor, heading, _ in parts)
    contents += '<li><a href="#checklist">Reporting checklist (CLAIM, TRIPOD+AI)</a></li>'
    body = (
        f"<header><h1>{html.escape(title)}</h1></header>"
        + summary_html(summary)
        + f'<nav id="contents"><h2>Contents</h2><ul>{contents}</ul></nav>'
        + "".join(
            f'<section id="{anchor}"><h1 class="allstudy-part">{html.escape(heading)}</h1>{content}</section>'
            for anchor, heading, content in parts
        )
        + checklist_html()
    )
    return (
        head.replace("</head>", _CSS + "</head>")
        + '<body class="jp-Notebook" data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">\n'
        + f"<main>{body}</main>{_SCRIPT}</body>\n</html>\n"
    )


def anchors_of(page: str) -> set[str]:
    """Every id in an HTML page (what an in-page link can point at)."""
    return set(re.findall(r'\bid="([^"]+)"', page))


def links_of(page: str) -> set[str]:
    """Every in-page link target (``href="#..."``) of an HTML page."""
    return set(re.findall(r'\bhref="#([^"]+)"', page))
