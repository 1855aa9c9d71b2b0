"""Colab (allstudy.study.colab): the settings chosen in Colab and nowhere else, the notebooks' set-up cells and
README badges generated from one repository address, and papermill's injected parameters winning over
Colab's choices (checked by executing the real set-up and parameters cells in a kernel made to look like
Colab)."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

from allstudy.study import colab
from allstudy.study.colab import ColabSettings, setup
from allstudy.study.notebooks import NOTEBOOKS
from allstudy.study.runner import STEPS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def in_colab(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))


def test_outside_colab_setup_changes_nothing_and_imports_no_tensorflow():
    code = (
        "import sys; from allstudy.study.colab import setup, ColabSettings; s = setup(); "
        "assert s == ColabSettings() and not s.active and s.profile is None, s; "
        "assert 'tensorflow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    assert not colab.in_colab() and setup(verbose=False) == ColabSettings()


def test_in_colab_with_a_gpu_the_paper_profile_and_imagenet(in_colab, tmp_path, capsys):
    settings = setup(gpus=["Tesla T4"], tpu=False, out_dir=tmp_path / "outputs")
    assert settings.active and (settings.profile, settings.weights) == ("paper", "imagenet")
    assert (settings.accelerator, settings.strategy, settings.gpus) == ("gpu", None, ("Tesla T4",))
    assert settings.out_dir == str(tmp_path / "outputs")
    assert "Tesla T4" in capsys.readouterr().out


def test_in_colab_several_gpus_mirror_a_tpu_uses_tpustrategy_none_says_so(in_colab, monkeypatch, tmp_path):
    assert setup(gpus=["A100", "A100"], tpu=False, verbose=False).strategy == "mirrored"
    assert setup(gpus=[], tpu=True, verbose=False).strategy == "tpu"
    bare = setup(gpus=[], tpu=False, verbose=False)
    assert (bare.accelerator, bare.strategy, bare.profile) == ("none", None, "paper")
    assert "NO accelerator" in bare.message and "Change runtime type" in bare.message
    monkeypatch.chdir(tmp_path)
    assert setup(gpus=[], tpu=False, verbose=False).out_dir == str(tmp_path / "outputs")


def test_the_paper_profile_gives_imagenet_weights_to_every_transfer_model_and_only_to_them():
    """Colab's "ImageNet weights" are the paper profile's: transfer models start from ImageNet, the papers'
    scratch models (sequential, LeNet, VGG16) do not (03's ``weights = None`` means the profile's)."""
    from allstudy.models.profiles import ARCHITECTURES, train_config
    from allstudy.models.registry import get_architecture

    imagenet = {a for a in ARCHITECTURES if train_config("paper", a).weights == "imagenet"}
    assert imagenet == {"resnet50", "mobilenet", "mobilenetv2", "efficientnet"}
    assert all(get_architecture(a).transfer for a in imagenet)


def test_colab_addresses():
    assert colab.colab_url("01_explore", "https://github.com/me/allstudy") == (
        "https://colab.research.google.com/github/me/allstudy/blob/main/notebooks/01_explore.ipynb"
    )
    assert (
        colab.pip_requirement("https://github.com/me/allstudy") == "allstudy @ git+https://github.com/me/allstudy@main"
    )


def test_every_notebook_opens_with_the_setup_cell_then_its_parameters():
    for name in STEPS:
        path = NOTEBOOKS / f"{name}.ipynb"
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert code[0].id == colab.SETUP_TAG and code[0].metadata["tags"] == [colab.SETUP_TAG], name
        assert code[0].source == colab.setup_cell_source(), f"{name}: run python -m allstudy.study.colab"
        assert "parameters" in code[1].metadata.get("tags", []), name
        assert code[1].source.endswith(colab.parameters_block(colab._parameter_names(code[1].source))), name
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs"
        # generated from allstudy.study.colab.REPOSITORY: writing them again changes nothing (ids included)
        again = nbformat.writes(colab.with_setup_cell(nbformat.read(path, as_version=4))) + "\n"
        assert again == path.read_text(encoding="utf-8"), f"{name}: run python -m allstudy.study.colab"


def test_the_readme_has_a_colab_badge_per_notebook():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in STEPS:
        assert colab.badge(name) in readme, name


def test_the_setup_cell_is_inserted_once_and_keeps_other_cells(tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell("# t", id="title"),
        nbformat.v4.new_code_cell('out_dir = "x"\nrun = "lenet"', id="p", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print(out_dir)", id="body"),
    ]
    (tmp_path / "n.ipynb").write_text(nbformat.writes(notebook) + "\n", encoding="utf-8")
    assert colab.write_setup_cells(tmp_path) == [tmp_path / "n.ipynb"]
    assert colab.write_setup_cells(tmp_path) == []
    cells = nbformat.read(tmp_path / "n.ipynb", as_version=4).cells
    assert [c.id for c in cells] == ["title", colab.SETUP_TAG, "p", "body"]
    assert cells[2].source.endswith("if colab.active: out_dir = colab.out_dir")


# --------------------------------------------------------------------------------------- executed by papermill

FAKE_COLAB = """\
import sys, types
sys.modules["google.colab"] = types.ModuleType("google.colab")
import allstudy.study.colab
allstudy.study.colab._gpu_names = lambda: ["Fake GPU 0", "Fake GPU 1"]
"""


def _probe(tmp_path: Path, fake_colab: bool, parameters: dict, monkeypatch) -> dict:
    """Execute 03_train's own set-up and parameters cells with papermill, then report the values."""
    import papermill

    source = nbformat.read(NOTEBOOKS / "03_train.ipynb", as_version=4)
    keep = [c for c in source.cells if c.cell_type == "code"][:2]
    tmp_path.mkdir(parents=True)
    out = tmp_path / "values.json"
    probe = nbformat.v4.new_code_cell(
        f"import json\njson.dump({{'profile': profile, 'out_dir': out_dir, 'strategy': strategy, "
        f"'colab': colab.active}}, open({str(out)!r}, 'w'))",
        id="probe",
    )
    notebook = nbformat.v4.new_notebook(cells=[*keep, probe], metadata=source.metadata)
    nbformat.write(notebook, tmp_path / "probe.ipynb")
    ipython = tmp_path / "ipython"
    startup = ipython / "profile_default" / "startup"
    startup.mkdir(parents=True)
    if fake_colab:
        (startup / "00-fake-colab.py").write_text(FAKE_COLAB)
    monkeypatch.setenv("IPYTHONDIR", str(ipython))
    papermill.execute_notebook(
        str(tmp_path / "probe.ipynb"),
        str(tmp_path / "done.ipynb"),
        parameters=parameters,
        cwd=str(tmp_path),
        kernel_name="python3",
        progress_bar=False,
    )
    return json.loads(out.read_text())


@pytest.mark.notebook
def test_papermill_parameters_win_over_colabs_choices(tmp_path, monkeypatch):
    # In "Colab", nothing injected: Colab's choices are the defaults (the GPUs found: two, so mirrored).
    chosen = _probe(tmp_path / "a", True, {}, monkeypatch)
    assert chosen == {
        "profile": "paper",
        "out_dir": str(tmp_path / "a" / "outputs"),
        "strategy": "mirrored",
        "colab": True,
    }
    # In "Colab", injected by papermill: every injected value wins, even one equal to the literal default.
    injected = {"profile": "quick", "out_dir": "elsewhere", "strategy": "default"}
    assert _probe(tmp_path / "b", True, injected, monkeypatch) == {**injected, "colab": True}
    # Only what was injected: the rest keeps Colab's choice.
    assert _probe(tmp_path / "c", True, {"profile": "cpu"}, monkeypatch)["strategy"] == "mirrored"
    # Outside Colab: the parameters cell's own defaults, untouched.
    assert _probe(tmp_path / "d", False, {}, monkeypatch) == {
        "profile": "quick",
        "out_dir": "../outputs",
        "strategy": None,
        "colab": False,
    }


def test_the_whole_study_takes_a_strategy():
    import inspect

    from allstudy.cli import build_parser
    from allstudy.study.runner import run

    assert build_parser().parse_args(["run", "--strategy", "mirrored"]).strategy == "mirrored"
    assert build_parser().parse_args(["run"]).strategy is None
    assert inspect.signature(run).parameters["strategy"].default is None
