"""The security properties docs/security.md lists that are checked statically (fast, no model):
exact dependency pins, safe-mode model loading everywhere, the app's loopback default. The app's runtime
properties (upload size and count limits, no path outside the uploads) are in test_app.py."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXACT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[0-9][0-9A-Za-z.+!-]*(\s*;.+)?$")


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_dependency_is_an_exact_pin():
    project = _pyproject()
    requirements = [
        *project["build-system"]["requires"],
        *project["project"]["dependencies"],
        *(r for extra in project["project"]["optional-dependencies"].values() for r in extra),
    ]
    loose = [r for r in requirements if not EXACT.match(r.strip())]
    assert not loose, f"not pinned with ==: {loose}"


def test_the_gpu_build_is_the_same_tensorflow_and_environment_yml_installs_it():
    extras = _pyproject()["project"]["optional-dependencies"]
    version = {
        r.split("==")[1].split(";")[0].strip()
        for r in extras["cpu"]
        if r.startswith(("tensorflow-cpu==", "tensorflow=="))
    }
    assert extras["gpu"] == [f"tensorflow[and-cuda]=={version.pop()}"] and not version
    environment = (ROOT / "environment.yml").read_text(encoding="utf-8")
    assert re.search(r"^\s*- -e \.\[gpu(,dev)?\]\s*$", environment, re.MULTILINE), "environment.yml must install .[gpu]"
    python = re.search(r"^\s*- python=(3\.\d+)\s*$", environment, re.MULTILINE).group(1)
    assert 10 <= int(python.split(".")[1]) <= 13  # within requires-python


def _keras_load_calls(source: str, where: str) -> list[tuple[str, bool]]:
    """Calls of Keras' own loader (``keras.saving.load_model``, ``keras.models.load_model``, ``tf.keras...``):
    where they are, and whether ``safe_mode=True`` is written out."""
    calls = []
    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load_model":
            owner = ast.unparse(node.func.value)
            if owner.endswith(("saving", "models")):
                safe = any(
                    k.arg == "safe_mode" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                )
                calls.append((f"{where}:{node.lineno}", safe))
    return calls


def _sources() -> list[tuple[str, str]]:
    """(where, source) of the package, the app, the benchmarks and every notebook's code cells."""
    sources = [
        (str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"))
        for path in [*(ROOT / "allstudy").rglob("*.py"), ROOT / "app.py", *(ROOT / "benchmarks").glob("*.py")]
    ]
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type == "code":
                sources.append((f"{path.name} cell {i}", cell.source))
    return sources


def test_every_model_load_uses_safe_mode():
    """Keras' loader is called in one place, models.layers.load_model, with safe_mode=True written out; the
    package, the app, the benchmarks and every notebook load through it (a .keras file with a Lambda layer
    cannot run code when loaded)."""
    calls = [call for where, source in _sources() for call in _keras_load_calls(source, where)]
    assert [where.split(":")[0] for where, _ in calls] == ["allstudy/models/layers.py"], calls
    assert all(safe for _, safe in calls), calls


def test_every_other_load_goes_through_the_one_loader():
    """Every other load goes through models.layers.load_model (the name is imported from there)."""
    users = [where for where, source in _sources() if "load_model(" in source and "def load_model" not in source]
    assert len(users) >= 5, users  # evaluation, training, the registry, the model folder, 04_evaluate
    for where, source in _sources():
        tree = ast.parse(source, where)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and any(a.name == "load_model" for a in node.names):
                assert node.module in ("allstudy.models.layers", "allstudy"), f"{where}: load_model from {node.module}"


def test_no_pickle_loading_in_the_package():
    for path in (ROOT / "allstudy").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"allow_pickle\s*=\s*True|\bpickle\.loads?\(|\bjoblib\.load\(", text), path.name


def test_the_app_serves_loopback_without_a_public_link_unless_asked():
    from allstudy.cli import build_parser
    from allstudy.serving import app

    defaults = inspect.signature(app.launch).parameters
    assert app.HOST == "127.0.0.1" and defaults["host"].default == app.HOST and defaults["share"].default is False
    assert build_parser().parse_args(["serve"]).share is False
    assert app.MAX_FILE_SIZE == "20mb" and app.MAX_BATCH_FILES == 100
