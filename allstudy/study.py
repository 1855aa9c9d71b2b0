"""The runner: the whole study as one command, notebooks executed by papermill in order.

``run(data, profile, out)`` prepares the data (cached), then executes each notebook of
``notebooks/`` with the profile's parameters into ``out/notebooks/`` and renders it to HTML
(code hidden, figures inline). A step whose notebook, parameters and data are unchanged since its
last successful execution is skipped. Every file is written atomically, so a killed run resumes.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from allstudy.atomic import atomic_path, read_json, write_json, write_text
from allstudy.data import PreparedData, prepare
from allstudy.profiles import get_profile, train_config
from allstudy.provenance import code_version
from allstudy.synthetic import generate_dataset

#: The notebooks folder of the package's source tree (the notebooks are not installed as data).
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
#: The study's notebooks, in order; 03_train runs once per architecture of the profile.
STEPS = ("01_explore", "03_train")


@dataclass(frozen=True)
class StepResult:
    """One executed (or reused) notebook."""

    name: str
    notebook: Path
    html: Path
    skipped: bool
    seconds: float


def resolve_data(data: str | os.PathLike | None, out: str | os.PathLike, profile: str) -> Path:
    """The dataset folder to study: ``data`` itself, or the synthetic default generated under ``out``."""
    if data is not None:
        path = Path(data)
        if not path.is_dir():
            raise FileNotFoundError(f"--data {path} is not a folder; pass a dataset folder with one folder per class "
                                    "(see data/README.md), or leave --data out to use the synthetic default")
        return path.resolve()
    settings = get_profile(profile)
    return generate_dataset(Path(out) / "synthetic-data", n_per_class=settings["synthetic_per_class"],
                            seed=settings["seed"], progress=True).resolve()


def prepare_study_data(data: str | os.PathLike | None, out: str | os.PathLike, profile: str = "quick",
                       progress: bool = True) -> PreparedData:
    """Resolve the dataset and run the cached data step into ``out/data``."""
    settings = get_profile(profile)
    root = resolve_data(data, out, profile)
    return prepare(root, Path(out) / "data", seed=settings["seed"], fractions=tuple(settings["fractions"]),
                   progress=progress)


def _stamp(notebook: Path, parameters: dict, data_hash: str) -> str:
    digest = hashlib.sha256(notebook.read_bytes())
    digest.update(json.dumps(parameters, sort_keys=True).encode())
    digest.update(f"{data_hash}|{code_version()['source_sha256']}".encode())
    return digest.hexdigest()


def execute_notebook(name: str, parameters: dict, out: Path, data_hash: str, force: bool = False,
                     output_name: str | None = None) -> StepResult:
    """Execute ``notebooks/<name>.ipynb`` with papermill into ``out/notebooks/`` and render HTML; skip if fresh."""
    import papermill

    source = NOTEBOOKS / f"{name}.ipynb"
    if not source.exists():
        raise FileNotFoundError(f"{source} is missing; the notebooks ship with the source tree (run from a clone)")
    name = output_name or name
    target = out / "notebooks" / f"{name}.ipynb"
    html = out / "notebooks" / f"{name}.html"
    stamp_path = out / "notebooks" / f".{name}.stamp.json"
    stamp = _stamp(source, parameters, data_hash)
    if not force and target.exists() and html.exists() and stamp_path.exists() and read_json(stamp_path).get("stamp") == stamp:
        print(f"{name}: unchanged since its last run, reused {target}")
        return StepResult(name, target, html, True, 0.0)
    start = time.perf_counter()
    print(f"{name}: executing with {parameters}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        papermill.execute_notebook(str(source), str(tmp), parameters=parameters, cwd=str(NOTEBOOKS),
                                   progress_bar=True, kernel_name="python3")
    write_text(html, render_html(target))
    seconds = time.perf_counter() - start
    write_json(stamp_path, {"stamp": stamp, "seconds": round(seconds, 1), "parameters": parameters})
    return StepResult(name, target, html, False, seconds)


def render_html(notebook: str | os.PathLike) -> str:
    """An executed notebook as a self-contained HTML page: code hidden, figures inline."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(str(notebook), as_version=4))
    return body


def train_architecture(data: str | os.PathLike | None, out: str | os.PathLike, profile: str, arch: str,
                       weights_dir: str | os.PathLike | None = None, progress: bool = True, **overrides):
    """Train one architecture of the profile on the study's data into ``out/runs/<arch>/`` (reused when unchanged)."""
    from allstudy.train import train

    prepared = prepare_study_data(data, out, profile, progress=False)
    config = train_config(profile, arch, **overrides)
    return train(config, prepared, Path(out) / "runs" / arch, cache_dir=Path(out) / "cache", progress=progress,
                 weights_dir=weights_dir)


def run(data: str | os.PathLike | None = None, profile: str = "quick", out: str | os.PathLike = "outputs",
        force: bool = False, weights_dir: str | os.PathLike | None = None,
        architectures: list[str] | None = None) -> list[StepResult]:
    """Run the whole study; return the executed steps. With no ``data``, the synthetic default."""
    out = Path(out).resolve()
    prepared = prepare_study_data(data, out, profile)
    settings = get_profile(profile)
    base = {"data_dir": str(prepared.root), "out_dir": str(out), "profile": profile}
    results = [execute_notebook("01_explore", {**base, "samples_per_class": settings["explore_samples_per_class"],
                                               "duplicate_groups_shown": settings["explore_duplicate_groups"]},
                                out, prepared.info["data_hash"], force=force)]
    for arch in architectures or settings["architectures"]:
        parameters = {**base, "arch": arch, "weights_dir": str(Path(weights_dir).resolve()) if weights_dir else None}
        results.append(execute_notebook("03_train", parameters, out, prepared.info["data_hash"], force=force,
                                        output_name=f"03_train-{arch}"))
    return results
