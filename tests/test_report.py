"""The report's parts on hand-made inputs: figures at screen resolution, the summary written from summary.json,
the checklist, and the page's order, collapsed sections and links (allstudy.study.report, findings, checklist).
The whole report of a real study: tests/test_study.py."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from allstudy.study import checklist  # noqa: E402
from allstudy.study.findings import SECTION_LINKS, headline_table, key_findings, summary_html  # noqa: E402
from allstudy.study.report import (  # noqa: E402
    MAX_FIGURE_WIDTH,
    anchors_of,
    build_report,
    compact_images,
    links_of,
    render_html,
)


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=200)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _run(accuracy: float, missed: int) -> dict:
    return {
        "arch": "lenet",
        "weights": "none",
        "test": {
            "accuracy": accuracy,
            "accuracy_ci": [accuracy - 0.05, accuracy + 0.03],
            "macro_f1": accuracy - 0.01,
            "macro_f1_ci": [accuracy - 0.06, accuracy + 0.02],
            "malignant_sensitivity": 0.97,
            "malignant_specificity": 0.9,
            "ece": 0.031,
            "brier": 0.072,
        },
        "decision": {"malignant_called_benign": missed, "n_malignant": 90, "referral_rate": 0.25},
    }


SUMMARY = {
    "data": {
        "root": "/d/all-taleqani",
        "synthetic": False,
        "classes": {"Benign": 40, "Early": 60, "Pre": 60, "Pro": 40},
        "split_kind": "grouped",
        "split_counts": {p: {"total": n} for p, n in (("train", 140), ("val", 30), ("test", 30))},
    },
    "chosen": "lenet",
    "runs": {"lenet": _run(0.93, 1), "vgg16": {**_run(0.5, 7), "arch": "vgg16", "weights": "imagenet"}},
    "controls": {
        "rows": [
            {"control": "chosen model", "accuracy": 0.93, "leaked_test_fields": 0},
            {"control": "control-colour-statistics", "accuracy": 0.86},
            {"control": "control-lenet-background", "accuracy": 0.6},
            {"control": "control-lenet-image-split", "accuracy": 0.97, "leaked_test_fields": 12},
        ]
    },
    "provenance": {"data_hash": "ab" * 32, "code_version": {"version": "0.1.0", "source_sha256": "cd" * 8}},
}


def test_photographs_become_jpeg_at_screen_width_and_plots_stay_png():
    rng = np.random.default_rng(0)
    photo, axes = plt.subplots(figsize=(12, 4))
    axes.imshow(rng.integers(0, 255, (200, 600, 3), dtype=np.uint8))
    plot, axes = plt.subplots(figsize=(4, 3))
    axes.plot([0, 1, 2], [1, 0, 2])
    node = nbformat.v4.new_notebook()
    node.cells = [
        nbformat.v4.new_code_cell(outputs=[nbformat.v4.new_output("display_data", data={"image/png": _png(f)})])
        for f in (photo, plot)
    ]
    compact_images(node)
    photo_data, plot_data = (c.outputs[0]["data"] for c in node.cells)
    assert set(photo_data) == {"image/jpeg"} and set(plot_data) == {"image/png"}
    with Image.open(io.BytesIO(base64.b64decode(photo_data["image/jpeg"]))) as image:
        assert image.width == MAX_FIGURE_WIDTH  # 2400 px at 200 dpi, scaled to the screen
    with Image.open(io.BytesIO(base64.b64decode(plot_data["image/png"]))) as image:
        assert image.width == 800  # already narrower: kept


def test_the_headline_table_holds_summary_jsons_figures():
    table = headline_table(SUMMARY).set_index("architecture")
    assert list(table.index) == ["lenet (chosen)", "vgg16"]
    row = table.loc["lenet (chosen)"]
    assert row["accuracy (95 % CI)"] == "93.0% (88.0%–96.0%)" and row["malignant called benign"] == "1 of 90"
    assert row["ECE"] == "0.031" and row["Brier"] == "0.072" and row["referred"] == "25.0%"
    assert row["published"].startswith("95.8%") and table.loc["vgg16", "published"].startswith("34.4%")


def test_the_findings_say_what_the_controls_and_the_leak_show():
    shortcut, leak, scope = key_findings(SUMMARY)
    assert "86.0%" in shortcut and "60.0%" in shortcut
    assert "97.0% against 93.0%" in leak and "+4.0 points" in leak and "12 of" in leak
    assert "upper bound for new patients" in scope and "synthetic" not in scope
    bare = {**SUMMARY, "controls": {}, "data": {**SUMMARY["data"], "synthetic": True}}
    shortcut, leak, scope = key_findings(bare)
    assert "not run" in shortcut and "not measured" in leak and "synthetic" in scope


def test_the_summary_links_only_to_what_the_report_makes():
    page = summary_html(SUMMARY)
    assert set(SECTION_LINKS) == links_of(page)
    assert {"summary", "findings", "provenance"} <= anchors_of(page)


def test_every_checklist_item_is_answered_or_says_why_not():
    for item in checklist.ITEMS:
        assert (item.anchor is None) != (item.reason is None), item
        assert item.guideline in ("CLAIM", "TRIPOD+AI")
    page = checklist.checklist_html()
    assert links_of(page) == checklist.anchors() and page.count("<tr>") == len(checklist.ITEMS) + 1


def _page(path: Path, heading: str) -> Path:
    """An executed-looking notebook written to ``path`` and its rendered page (returned), as a step leaves them."""
    node = nbformat.v4.new_notebook()
    node.cells = [
        nbformat.v4.new_markdown_cell(f"# {heading}\n\n## Accuracy and loss per epoch"),
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            outputs=[nbformat.v4.new_output("stream", name="stderr", text="progress 100%")], source="print()"
        ),
    ]
    nbformat.write(node, path)
    page = path.with_suffix(".html")
    page.write_text(render_html(path), encoding="utf-8")
    return page


def test_the_page_opens_on_the_summary_with_one_closed_section_per_architecture(tmp_path):
    names = ["01_explore", "02_preprocess", "03_train-lenet", "04_evaluate-lenet", "03_train-vgg16", "05_compare"]
    pages = {n: _page(tmp_path / f"{n}.ipynb", n) for n in names}
    page = build_report(pages, SUMMARY)
    body = page[page.index("<main>") :]
    order = [body.index(f'id="{anchor}"') for anchor in ("summary", "contents", "data", "comparison", "architectures")]
    assert order == sorted(order) and body.index('id="checklist"') > order[-1]
    assert body.count('<details class="allstudy-arch"') == 2 and " open" not in body.split("<details")[1][:60]
    assert 'id="lenet-03-Accuracy-and-loss-per-epoch"' in body and 'id="vgg16-03-Accuracy-and-loss-per-epoch"' in body
    assert "progress 100%" not in body and "x = 1" not in body  # logs and parameters left out
    assert "cdnjs" not in page and "<title>allstudy report</title>" in page  # nothing fetched from the network
    notebooks_own = {"flow", "split", "preprocessing", "controls", "decision", "errors", "chosen"}  # 01, 02, 05
    assert links_of(page) <= anchors_of(page) | notebooks_own
    with pytest.raises(ValueError):
        build_report({}, SUMMARY)


def test_the_summary_is_valid_json_round_trip():
    """summary_html reads plain JSON: the summary survives a JSON round trip unchanged."""
    assert summary_html(json.loads(json.dumps(SUMMARY))) == summary_html(SUMMARY)
