"""The whole study on the embedded synthetic default: every notebook executed by papermill, the report,
summary.json against the runs' own predictions, the chosen model, and every step reused on a second run."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from allstudy.models.profiles import ARCHITECTURES
from allstudy.study.notebooks import NOTEBOOKS
from allstudy.study.runner import STEPS, run

pytestmark = pytest.mark.notebook
#: Every architecture of the registry, at the quick profile's settings.
ARCHS = ARCHITECTURES


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return out, run(None, profile="quick", out=out, jobs=2)  # two notebooks at once, as `make study` runs them


def test_notebooks_are_committed_clean():
    for name in STEPS:
        notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs"
        # the Colab set-up cell (a no-op outside Colab, see tests/test_colab.py), then the parameters
        assert "colab-setup" in code[0].metadata.get("tags", []), f"{name}: first code cell must be the set-up cell"
        assert "parameters" in code[1].metadata.get("tags", []), f"{name}: second code cell must be tagged parameters"


def test_every_step_executes_without_error_and_renders(study):
    out, results = study
    chosen = json.loads((out / "summary.json").read_text())["chosen"]
    controls = [
        f"03_train-control-{chosen}-{c}" for c in ("original", "background", "segmented", "mitigated", "image-split")
    ]
    assert [r.name for r in results] == (
        ["01_explore", "02_preprocess"]
        + [f"03_train-{a}" for a in ARCHS]
        + [f"04_evaluate-{a}" for a in ARCHS]
        + controls
        + ["05_compare"]
    )
    for result in results:
        notebook = nbformat.read(result.notebook, as_version=4)
        errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors, errors
        html = result.html.read_text(encoding="utf-8")
        assert "data:image/png;base64" in html  # figures inline
        assert "import " not in html or "prepare_study_data" not in html  # code hidden


def test_training_notebooks_report_their_runs(study):
    out, _ = study
    for arch in ARCHS:
        html = (out / "notebooks" / f"03_train-{arch}.html").read_text(encoding="utf-8")
        assert arch in html and "Accuracy and loss per epoch" in html
        params = json.loads((out / "runs" / arch / "params.json").read_text())
        assert params["complete"] and params["arch"] == arch


def test_exploration_reports_the_synthetic_default(study):
    out, _ = study
    html = (out / "notebooks" / "01_explore.html").read_text(encoding="utf-8")
    for text in (
        "synthetic",
        "Classes",
        "Duplicates and overlapping fields",
        "no group crosses splits",
        "Colour statistics alone",
    ):
        assert text in html, text
    split = pd.read_csv(out / "data" / "splits.csv", keep_default_na=False)
    assert split.groupby("group")["split"].nunique().max() == 1
    info = json.loads((out / "data" / "data.json").read_text())
    assert info["synthetic"] is True and len(info["data_hash"]) == 64
    marker = json.loads((out / "synthetic-data" / "SYNTHETIC.json").read_text())
    groups = dict(zip(split["path"], split["group"], strict=True))
    for a, b in marker["recapture_groups"]:  # every synthetic re-capture was found and kept together
        assert groups[a] == groups[b], (a, b)


def test_the_report_shows_every_architecture_and_section(study):
    out, _ = study
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64") + html.count("data:image/jpeg;base64") > 20  # figures inline
    for arch in ARCHS:
        assert f'<details class="allstudy-arch" id="arch-{arch}">' in html, arch  # one closed section each
    for text in (
        "Explore the dataset",
        "region-based segmentation",
        "Evaluate one run",
        "Grad-CAM",
        "Validity controls",
        "Our runs beside the published figures",
        "95.8%",
        "Model card",
        "Reporting checklist",
    ):
        assert text in html, text
    assert "prepare_study_data(" not in html  # code hidden


def test_the_report_opens_on_its_findings_and_every_link_resolves(study):
    from allstudy.study.checklist import anchors
    from allstudy.study.report import anchors_of, links_of

    out, _ = study
    html = (out / "report.html").read_text(encoding="utf-8")
    summary = json.loads((out / "summary.json").read_text())
    body = html[html.index("<main>") :]
    sections = ("summary", "contents", "data", "comparison", "architectures", "checklist")
    order = [body.index(f'id="{a}"') for a in sections]
    assert order == sorted(order)
    first = body[: body.index('id="contents"')]  # the summary: every figure as summary.json holds it
    for name, entry in summary["runs"].items():
        test, decision = entry["test"], entry["decision"]
        ci = test["accuracy_ci"]
        assert f"{test['accuracy']:.1%} ({ci[0]:.1%}–{ci[1]:.1%})" in first, name
        assert f"{decision['malignant_called_benign']} of {decision['n_malignant']}" in first, name
        assert f"{test['ece']:.3f}" in first and f"{test['brier']:.3f}" in first, name
    assert links_of(html) <= anchors_of(html) and anchors() <= anchors_of(html)


def test_the_error_gallery_holds_every_test_error_of_the_chosen_model(study):
    out, _ = study
    chosen = json.loads((out / "summary.json").read_text())["chosen"]
    predictions = pd.read_csv(out / "runs" / chosen / "predictions.csv", keep_default_na=False)
    test = predictions[predictions["split"] == "test"]
    wrong = int((test["label"] != test["class"]).sum())  # temperature scaling keeps the most probable class
    html = (out / "report.html").read_text(encoding="utf-8")
    assert f"{wrong} test error(s) among {len(test)}" in html


@pytest.mark.browser
def test_the_report_prints_to_a_pdf_that_opens_on_the_summary(study):
    from pypdf import PdfReader

    from allstudy.testing.browser import unavailable

    reason = unavailable()
    if reason:
        pytest.skip(reason)
    out, _ = study
    reader = PdfReader(out / "report.pdf")
    first = reader.pages[0].extract_text()
    assert "Summary" in first and "Question" in first and "Chosen model" in first
    assert len(reader.pages) > 5 and reader.outline  # every section printed, with a document outline
    assert (out / "report-first-screen.png").stat().st_size > 20_000


@pytest.mark.browser
def test_the_report_renders_in_a_real_browser(study):
    from allstudy.testing.browser import inspect_page, unavailable

    reason = unavailable()
    if reason:
        pytest.skip(reason)
    out, _ = study
    screenshot = Path(__file__).resolve().parents[1] / "outputs" / "screenshots" / "report-quick.png"
    page = inspect_page((out / "report.html").as_uri(), screenshot)
    assert page["images"] > 20 and page["broken"] == 0  # every figure rendered
    assert page["tables"] >= 10 and page["title"] == "allstudy report"
    assert "Chosen model" in page["text"] and screenshot.stat().st_size > 50_000


def test_an_executed_notebook_opens_in_jupyterlab_with_its_results(study):
    from allstudy.testing.browser import open_in_jupyterlab, unavailable

    reason = unavailable()
    if reason:
        pytest.skip(reason)
    out, _ = study
    screenshot = Path(__file__).resolve().parents[1] / "outputs" / "screenshots" / "jupyterlab-quick.png"
    seen = open_in_jupyterlab(out / "notebooks" / "04_evaluate-lenet.ipynb", screenshot)
    assert seen["outputs"] > 0 and seen["images"] > 0 and seen["broken"] == 0 and seen["errors"] == 0
    assert screenshot.stat().st_size > 20_000


def test_summary_agrees_with_the_runs_predictions(study):
    from sklearn.metrics import f1_score

    out, _ = study
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == set(ARCHS) and summary["data"]["data_hash"]
    val_f1 = {}
    for name, entry in summary["runs"].items():
        predictions = pd.read_csv(out / "runs" / name / "predictions.csv", keep_default_na=False)
        test, val = predictions[predictions["split"] == "test"], predictions[predictions["split"] == "val"]
        assert entry["test"]["accuracy"] == pytest.approx((test["label"] == test["class"]).mean())
        assert entry["test"]["macro_f1"] == pytest.approx(
            f1_score(test["class"], test["label"], average="macro", labels=sorted(test["class"].unique()))
        )
        low, high = entry["test"]["accuracy_ci"]
        assert low <= entry["test"]["accuracy"] <= high
        for key in ("macro_f1_ci", "malignant_sensitivity", "malignant_specificity", "ece"):
            assert key in entry["test"], key
        assert entry["train_seconds"] > 0 and entry["params"] > 0
        val_f1[name] = f1_score(val["class"], val["label"], average="macro", labels=sorted(val["class"].unique()))
    assert val_f1[summary["chosen"]] == pytest.approx(max(val_f1.values()))  # chosen on validation, not test
    comparison = pd.read_csv(out / "comparison.csv")
    assert set(comparison["run"]) == set(ARCHS) and comparison["chosen"].sum() == 1
    assert [r["control"] for r in summary["controls"]["rows"]][:3] == [
        "chosen model",
        "control-colour-statistics",
        "control-scale-bar-corner",
    ]
    # the published protocol's control: the chosen architecture on the image-level split, whose leak it counts
    leaky = summary["controls"]["rows"][-1]
    assert leaky["control"] == f"control-{summary['chosen']}-image-split" and leaky["split_protocol"] == "image-level"
    split = pd.read_csv(out / "data" / "splits.csv", keep_default_na=False)
    predictions = pd.read_csv(out / "runs" / leaky["control"] / "predictions.csv", keep_default_na=False)
    group = split.set_index("path")["group"]
    trained = set(group[split.set_index("path").index.difference(predictions["path"])])
    test = predictions.loc[predictions["split"] == "test", "path"]
    assert leaky["leaked_test_fields"] == int(test.map(group).isin(trained).sum()) > 0
    assert f"{leaky['leaked_test_fields']} of its test fields overlap a training field" in leaky["sees"]


def test_the_chosen_model_folder_loads_and_reproduces_its_predictions(study):
    import keras

    from allstudy.training.pipeline import load_images

    out, _ = study
    summary = json.loads((out / "summary.json").read_text())
    folder = out / "models" / "chosen"
    meta = json.loads((folder / "model.json").read_text())
    assert meta["run"] == summary["chosen"] and 0 < meta["temperature"] and 0 <= meta["decision"]["rule_out"] <= 1
    assert "Intended use" in (folder / "MODEL_CARD.md").read_text()
    model = keras.saving.load_model(folder / "model.keras", safe_mode=True)
    predictions = pd.read_csv(out / "runs" / meta["run"] / "predictions.csv", keep_default_na=False)
    test = predictions[predictions["split"] == "test"].head(4)
    root = json.loads((out / "data" / "data.json").read_text())["root"]
    images = load_images(root, test["path"].tolist(), meta["input_size"]).astype("float32")
    expected = test[[f"p_{c}" for c in meta["classes"]]].to_numpy()
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-4)
    serving = json.loads((folder / "serving.json").read_text())  # the LiteRT file the Predictor serves with
    assert serving["accepted"] and serving["argmax_agreement"] == 1.0 and serving["n_images"] > 0
    from allstudy.serving.predictor import Predictor

    predictor = Predictor(folder)
    assert predictor.runtime == "tflite"
    np.testing.assert_allclose(predictor.forward(images)[0], expected, atol=1e-4)


def test_a_second_run_reuses_every_step(study):
    out, _ = study
    again = run(None, profile="quick", out=out, architectures=ARCHS)
    assert all(step.skipped for step in again)


def test_unknown_profile_and_missing_data_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown profile"):
        run(None, profile="fast", out=tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        run(tmp_path / "nowhere", profile="quick", out=tmp_path)


def test_an_unknown_split_protocol_is_a_clear_error(tmp_path):
    from allstudy.study.runner import train_architecture

    with pytest.raises(ValueError, match="'grouped'.*'image'"):
        train_architecture(None, tmp_path, "quick", "lenet", split="patient")
    assert not any(tmp_path.iterdir())  # refused before any work
