"""The package's shape: subpackages by stage of the flow, imports only from stages above, no circles.

Read with ``ast`` (nothing is imported), so the test also sees imports inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import allstudy

PACKAGE = Path(__file__).resolve().parents[1] / "allstudy"
#: The stages of ../shared/DESIGN.md in flow order; a module imports only from its own stage or those before.
STAGES = ("core", "data", "models", "training", "evaluation", "serving", "study")
#: Outside the flow: the command line (imports any stage) and the code only tests and benchmarks use.
TOP = ("cli", "__main__")
TESTING = "testing"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported allstudy module, at module level?) for every import the file executes."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {
        id(node)
        for top in tree.body
        if isinstance(top, ast.If) and ast.unparse(top.test) == "TYPE_CHECKING"
        for node in ast.walk(top)
    }
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "allstudy":
            found += [
                (
                    f"{node.module}.{a.name}"
                    if (PACKAGE.parent / f"{node.module}.{a.name}".replace(".", "/")).with_suffix(".py").exists()
                    else node.module,
                    id(node) in top_level,
                )
                for a in node.names
            ]
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in top_level) for a in node.names if a.name.split(".")[0] == "allstudy"]
    return found


MODULES = {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: sorted({m for m, _ in _imports(path)} - {name}) for name, path in MODULES.items()}
# The package's public API loads its modules on first use (allstudy.__getattr__): edges all the same, so that a
# module importing ``allstudy`` itself closes a circle.
GRAPH["allstudy"] = sorted({*GRAPH["allstudy"], *(module for module, _ in allstudy._API.values())})


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_package_has_one_subpackage_per_stage():
    assert {_stage(m) for m in MODULES} == {"", *STAGES, *TOP, TESTING}
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py", "cli.py"]


def test_no_import_circle_function_level_imports_included():
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in GRAPH.get(module, []):
            if state.get(target) == 1:
                circles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in GRAPH:
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_each_stage_imports_only_from_itself_the_stages_above_and_core():
    upward = []
    for module, targets in GRAPH.items():
        stage = _stage(module)
        for target in targets:
            other = _stage(target)
            if stage in STAGES and other not in ("", *STAGES[: STAGES.index(stage) + 1]):
                upward.append(f"{module} -> {target}")
            if stage != TESTING and other == TESTING:
                upward.append(f"{module} -> {target} (testing code in the runtime package)")
    assert not upward, "imports against the flow: " + ", ".join(upward)


def test_imports_of_the_package_are_at_module_top_except_in_the_command_line():
    inside = [
        f"{name} imports {target} inside a function"
        for name, path in MODULES.items()
        if _stage(name) not in TOP
        for target, top in _imports(path)
        if not top
    ]
    assert not inside, "\n".join(inside)


def test_the_graph_sees_function_level_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from allstudy.data import images\n")
    assert _imports(probe) == [("allstudy.data.images", False)]


@pytest.mark.parametrize(
    "name", ["Predictor", "run", "train", "prepare_data", "scan", "load_model", "DecisionPolicy", "export_model"]
)
def test_the_public_api_is_importable_from_the_package(name):
    import allstudy

    assert name in allstudy.__all__ and callable(getattr(allstudy, name))


def test_the_data_notebooks_modules_start_no_tensorflow():
    """01_explore and 02_preprocess import these; TensorFlow's start-up would cost each kernel seconds."""
    import subprocess
    import sys

    modules = [
        "allstudy.study.study_data",
        "allstudy.data.explore",
        "allstudy.data.preprocess",
        "allstudy.data.segment",
        "allstudy.data.split",
        "allstudy.evaluation.segmentation",
    ]
    code = f"import sys, {', '.join(modules)}; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)
