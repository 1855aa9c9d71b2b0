"""The runner on the embedded synthetic default: notebooks executed by papermill, HTML rendered, steps reused."""
from __future__ import annotations

import json

import nbformat
import pandas as pd
import pytest

from allstudy.study import NOTEBOOKS, STEPS, run

pytestmark = pytest.mark.notebook
#: One model from scratch and one with a backbone: every notebook runs, in a minute or two.
ARCHS = ["lenet", "mobilenet"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return out, run(None, profile="quick", out=out, architectures=ARCHS)


def test_notebooks_are_committed_clean():
    for name in STEPS:
        notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs"
        assert "parameters" in code[0].metadata.get("tags", []), f"{name}: first code cell must be tagged parameters"


def test_every_step_executes_without_error_and_renders(study):
    out, results = study
    assert [r.name for r in results] == ["01_explore"] + [f"03_train-{a}" for a in ARCHS]
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
    for text in ("synthetic", "Classes", "Duplicates and overlapping fields", "no group crosses splits",
                 "Colour statistics alone"):
        assert text in html, text
    split = pd.read_csv(out / "data" / "splits.csv", keep_default_na=False)
    assert split.groupby("group")["split"].nunique().max() == 1
    info = json.loads((out / "data" / "data.json").read_text())
    assert info["synthetic"] is True and len(info["data_hash"]) == 64
    marker = json.loads((out / "synthetic-data" / "SYNTHETIC.json").read_text())
    groups = dict(zip(split["path"], split["group"]))
    for a, b in marker["recapture_groups"]:  # every synthetic re-capture was found and kept together
        assert groups[a] == groups[b], (a, b)


def test_a_second_run_reuses_every_step(study):
    out, _ = study
    again = run(None, profile="quick", out=out, architectures=ARCHS)
    assert all(step.skipped for step in again)


def test_unknown_profile_and_missing_data_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown profile"):
        run(None, profile="fast", out=tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        run(tmp_path / "nowhere", profile="quick", out=tmp_path)
