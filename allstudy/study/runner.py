"""The runner: the whole study as one command, notebooks executed by papermill in order.

``run(data, profile, out)`` prepares the data (cached), then executes each notebook of
``notebooks/`` with the profile's parameters into ``out/notebooks/`` and renders it to HTML
(code hidden, figures inline). A step whose notebook, parameters and data are unchanged since its
last successful execution is skipped. Every file is written atomically, so a killed run resumes.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from allstudy.core.atomic import atomic_path, read_json, write_csv, write_json, write_text
from allstudy.core.parallel import run_chains
from allstudy.core.provenance import code_version, package_versions
from allstudy.data.prepare import PreparedData, prepare, with_image_level_split
from allstudy.data.preprocess import model_inputs
from allstudy.data.synthetic import generate_dataset
from allstudy.evaluation.compare import (
    choose,
    comparison_table,
    data_provenance,
    evaluate_run,
    finished_runs,
    run_summary,
    summary,
)
from allstudy.evaluation.controls import BASELINES, CONTROL_RUNS, IMAGE_SPLIT_RUN, control_table, run_baseline
from allstudy.models.profiles import get_profile, train_config
from allstudy.serving.modelcard import write_model_dir
from allstudy.serving.ood import FORMAT as GUARD_FORMAT
from allstudy.serving.ood import OODGuard, fit_guard
from allstudy.serving.runtime import write_serving
from allstudy.training.fit import feature_rows, features_dir, train
from allstudy.training.pipeline import load_images

#: The notebooks folder of the package's source tree (the notebooks are not installed as data).
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
#: The study's notebooks, in order; 03_train runs once per architecture of the profile.
STEPS = ("01_explore", "02_preprocess", "03_train", "04_evaluate", "05_compare")


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
                     output_name: str | None = None, progress: bool = True) -> StepResult:
    """Execute ``notebooks/<name>.ipynb`` with papermill into ``out/notebooks/`` and render HTML; skip if fresh.

    ``progress``: papermill's progress bar per cell; without it (steps running side by side) one line
    when the step starts and one when it ends.
    """
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
    failed = target.with_name(f"{name}.failed.ipynb")
    with atomic_path(target) as tmp:
        try:
            # The kernel starts in notebooks/ (nbclient's resources path), as in Jupyter. Not papermill's
            # ``cwd``: that changes the whole process's directory, which steps running side by side in
            # threads then restore in the wrong order, leaving the caller in notebooks/.
            papermill.execute_notebook(str(source), str(tmp), parameters=parameters, progress_bar=progress,
                                       kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}})
        except papermill.PapermillExecutionError as err:
            with contextlib.suppress(OSError):
                os.replace(tmp, failed)  # keep the executed copy with its traceback for the user
            raise step_error(name, err, failed) from None
    failed.unlink(missing_ok=True)
    write_text(html, render_html(target))
    seconds = time.perf_counter() - start
    write_json(stamp_path, {"stamp": stamp, "seconds": round(seconds, 1), "parameters": parameters})
    if not progress:
        print(f"{name}: done in {seconds:.0f} s")
    return StepResult(name, target, html, False, seconds)


class StudyError(RuntimeError):
    """A step of the study that cannot go on, in one line: what failed, where to look, what to do."""


#: An OSError as a notebook's error value shows it: ``[Errno 28] No space left on device: '/x/y'``.
_ERRNO_VALUE = re.compile(r"^\[Errno (\d+)\] (.+?)(?:: '(.*?)')?(?: -> '.*')?$")
#: Errors of the disk or the folder, not of the step: the user's to fix, told as the CLI tells any OSError.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


def step_error(name: str, err, failed: Path) -> Exception:
    """The error to raise for a notebook that failed: its OSError when the disk is full or a folder cannot be
    written (so the user is told what to do), else a :class:`StudyError` naming the step and its executed copy."""
    match = _ERRNO_VALUE.match(str(err.evalue or "").strip())
    if match and int(match[1]) in DISK_ERRNOS:
        return OSError(int(match[1]), match[2], match[3])
    return StudyError(f"step {name} failed with {err.ename}: {err.evalue}; its traceback is in {failed}")


def _without_stderr(cell):
    """A code cell without its stderr streams (progress bars, TensorFlow's start-up logs): the report shows
    results; the executed notebook keeps everything."""
    if cell.cell_type == "code":
        cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.get("name") == "stderr")]
    return cell


def render_html(notebook: str | os.PathLike) -> str:
    """An executed notebook as a self-contained HTML page: code hidden, figures inline."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    node = nbformat.read(str(notebook), as_version=4)
    node.cells = [_without_stderr(cell) for cell in node.cells]
    body, _ = exporter.from_notebook_node(node)
    return body


def render_report(notebooks: list[Path], title: str = "allstudy report") -> str:
    """The executed notebooks as one self-contained HTML page, in order: code hidden, figures inline.

    The parameters cells (the defaults and papermill's injected values) are left out; each notebook's
    own first heading opens its section.
    """
    import nbformat
    from nbconvert import HTMLExporter

    merged = nbformat.v4.new_notebook()
    merged.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                       "language_info": {"name": "python"}}
    merged.cells.append(nbformat.v4.new_markdown_cell(f"# {title}\n\n" + "\n".join(
        f"- {Path(n).stem}" for n in notebooks)))
    for number, notebook in enumerate(notebooks):
        for index, cell in enumerate(nbformat.read(str(notebook), as_version=4).cells):
            tags = set(cell.get("metadata", {}).get("tags", []))
            if tags & {"parameters", "injected-parameters"}:
                continue
            cell["id"] = f"n{number}-c{index}"  # unique across the merged notebooks
            merged.cells.append(_without_stderr(cell))
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(merged, resources={"metadata": {"name": title}})
    return body


def train_architecture(data: str | os.PathLike | None, out: str | os.PathLike, profile: str, arch: str,
                       weights_dir: str | os.PathLike | None = None, progress: bool = True, run_name: str | None = None,
                       split: str = "grouped", **overrides):
    """Train one architecture of the profile on the study's data into ``out/runs/<run_name or arch>/``.

    A finished run with the same parameters and data is reused as it is. ``split="image"`` trains on the
    published studies' image-level split instead (:func:`allstudy.data.prepare.with_image_level_split`; default
    run name ``<arch>-image-split``), to measure what their protocol's leak is worth.
    """
    if split not in ("grouped", "image"):
        raise ValueError(f"split must be 'grouped' (the study's) or 'image' (the published protocol), not {split!r}")
    deterministic_ops()
    prepared = prepare_study_data(data, out, profile, progress=False)
    config = train_config(profile, arch, **overrides)
    if split == "image":
        settings = get_profile(profile)
        prepared = with_image_level_split(prepared, settings["seed"], tuple(settings["fractions"]))
        run_name = run_name or f"{arch}-image-split"
    return train(config, prepared, Path(out) / "runs" / (run_name or arch), cache_dir=Path(out) / "cache",
                 progress=progress, weights_dir=weights_dir)


def reference_segmentation(root: Path) -> Path | None:
    """The dataset's own segmented version beside it (``<root>-segmented``), when there is one."""
    candidate = root.parent / f"{root.name}-segmented"
    return candidate if candidate.is_dir() else None


def summarise(out: str | os.PathLike, prepared: PreparedData, runs: list[str], controls: list[str],
              n_resamples: int = 1000, seed: int = 0) -> dict:
    """Evaluate every run, choose the model (validation macro-F1), write summary.json, comparison.csv and
    ``models/chosen/``; return the summary."""
    out = Path(out)
    found = finished_runs(out, runs)
    params = {name: read_json(path / "params.json") for name, path in found.items()}
    evaluations = {name: evaluate_run(path, n_resamples, seed) for name, path in found.items()}
    chosen = choose(evaluations, params)
    control_dirs = finished_runs(out, controls)
    control_rows = control_table({name: run_summary(evaluate_run(path, n_resamples, seed), read_json(path / "params.json"))
                                  for name, path in control_dirs.items()}, run_summary(evaluations[chosen], params[chosen]))
    info = data_provenance(prepared.info)
    result = summary(info, evaluations, params, chosen, {"rows": control_rows})
    result["provenance"] = {"data_hash": info.get("data_hash"), "code_version": code_version(),
                            "packages": package_versions()}
    write_json(out / "summary.json", result)
    write_csv(comparison_table(result), out / "comparison.csv")
    write_model_dir(found[chosen], out / "models" / "chosen", chosen, params[chosen], evaluations[chosen], info,
                    {"rows": control_rows})
    fit_chosen_guard(out / "models" / "chosen", prepared, params[chosen], out / "cache")
    write_chosen_serving(out / "models" / "chosen", prepared, params[chosen], out / "cache")
    return result


#: Validation fields the serving file is checked on when the study writes it (allstudy export checks the test split).
SERVING_CHECK_FIELDS = 64


def write_chosen_serving(model_dir: Path, prepared: PreparedData, params: dict, cache_dir: Path) -> dict:
    """Write the model folder's serving file (allstudy.serving.runtime), checked on validation fields; reused while
    model.keras is unchanged."""
    paths = prepared.split.loc[prepared.split["split"] == "val", "path"].tolist()[:SERVING_CHECK_FIELDS]
    fields = load_images(prepared.root, paths, params["input_size"], cache_dir)
    return write_serving(model_dir, model_inputs(fields, params["config"].get("input_mode", "original")))


def cached_train_embedding(params: dict, prepared: PreparedData, cache_dir: Path):
    """A transfer run's cached backbone features of the upright training fields: the embedding its guard reads
    (the head's input), as training computed them; None for a model trained on images, a fine-tuned backbone
    (the features no longer describe it) or a missing cache."""
    if not params.get("feature_runtime") or params["config"].get("epochs", 0) > 0:
        return None
    folder = features_dir(cache_dir, params["config"], params.get("weights_sha256") or params.get("weights_file"),
                          params["input_size"], params["data_hash"])
    path = folder / "features-view0.npy" if folder else None
    if not (path and path.exists()):
        return None
    features = np.load(path)
    return features[feature_rows(prepared.split)["train"]] if len(features) == len(prepared.split) else None


def fit_chosen_guard(model_dir: Path, prepared: PreparedData, params: dict, cache_dir: Path) -> Path:
    """Fit the out-of-distribution guard of a model folder on its training fields (validation sets the
    thresholds) and write ``ood.json``; reused while the model file and the guard's format are unchanged."""
    import keras

    target, stamp_path = model_dir / "ood.json", model_dir / ".ood.stamp.json"
    stamp = {"model_sha256": hashlib.sha256((model_dir / "model.keras").read_bytes()).hexdigest(),
             "guard_format": GUARD_FORMAT}
    if target.exists() and stamp_path.exists() and read_json(stamp_path) == stamp:
        return target
    print("fitting the out-of-distribution guard of the chosen model")
    model = keras.saving.load_model(model_dir / "model.keras", safe_mode=True)
    images = {s: load_images(prepared.root, prepared.split.loc[prepared.split["split"] == s, "path"].tolist(),
                             params["input_size"], cache_dir) for s in ("train", "val")}
    guard: OODGuard = fit_guard(model, images["train"], images["val"], params["config"].get("input_mode", "original"),
                                train_embedding=cached_train_embedding(params, prepared, cache_dir))
    guard.save(target)
    write_json(stamp_path, stamp)
    return target


def run(data: str | os.PathLike | None = None, profile: str = "quick", out: str | os.PathLike = "outputs",
        force: bool = False, weights_dir: str | os.PathLike | None = None,
        architectures: list[str] | None = None, strategy: str | None = None, jobs: int = 1) -> list[StepResult]:
    """Run the whole study (01 to 05, controls, report); return the executed steps.

    With no ``data``, the embedded synthetic default. Writes ``out/report.html``, ``out/summary.json``,
    ``out/comparison.csv`` and ``out/models/chosen/``. ``strategy`` (mirrored, multiworker, tpu) is
    the training notebooks' ``tf.distribute`` strategy; None: TensorFlow's default (one device).
    ``jobs`` notebooks execute at once (each architecture trains then evaluates in one chain; the
    controls run side by side); every result is the same whatever ``jobs`` is.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    started = time.perf_counter()
    out = Path(out).resolve()
    prepared = prepare_study_data(data, out, profile)
    settings = get_profile(profile)
    data_hash = prepared.info["data_hash"]
    weights_dir = str(Path(weights_dir).resolve()) if weights_dir else None
    base = {"data_dir": str(prepared.root), "out_dir": str(out), "profile": profile}
    training = {"strategy": strategy} if strategy else {}  # only when given: unchanged steps stay reused
    reference = reference_segmentation(prepared.root)

    def step(name: str, parameters: dict, output_name: str | None = None):
        return functools.partial(execute_notebook, name, parameters, out, data_hash, force=force,
                                 output_name=output_name, progress=jobs == 1)

    architectures = architectures or settings["architectures"]
    evaluation = {"out_dir": str(out), "n_resamples": settings["bootstrap_resamples"], "seed": settings["seed"]}
    explore, preprocess, *trained = run_chains(
        [[step("01_explore", {**base, "samples_per_class": settings["explore_samples_per_class"],
                              "duplicate_groups_shown": settings["explore_duplicate_groups"]})],
         [step("02_preprocess", {**base, "reference_dir": str(reference) if reference else None,
                                 "max_compared": settings["preprocess_max_compared"]})]]
        + [[step("03_train", {**base, "arch": arch, "weights_dir": weights_dir, **training}, f"03_train-{arch}"),
            step("04_evaluate", {**evaluation, "run": arch}, f"04_evaluate-{arch}")] for arch in architectures],
        jobs)
    results = explore + preprocess + [chain[0] for chain in trained] + [chain[1] for chain in trained]

    # Validity controls: shortcut baselines, the chosen architecture on other inputs (one view each), and on the
    # published image-level split (the chosen architecture as it is, with its views).

    found = finished_runs(out, architectures)
    evaluations = {n: evaluate_run(p, settings["bootstrap_resamples"], settings["seed"]) for n, p in found.items()}
    chosen = choose(evaluations, {n: read_json(p / "params.json") for n, p in found.items()})
    controls = []
    for name in BASELINES:
        print(f"control: {name} baseline")
        controls.append(run_baseline(name, prepared, out, out / "cache", settings["seed"]).name)
    variants = {f"control-{chosen}-{suffix}": {"input_mode": mode, "tta_views": 1}
                for suffix, (mode, _) in CONTROL_RUNS.items()}
    variants[f"control-{chosen}-{IMAGE_SPLIT_RUN}"] = {"split": "image"}
    for chain in run_chains([[step("03_train", {**base, "arch": chosen, "weights_dir": weights_dir, "run_name": name,
                                                 **variant, **training}, f"03_train-{name}")]
                             for name, variant in variants.items()], jobs):
        results += chain
    controls += list(variants)

    summarise(out, prepared, architectures, controls, settings["bootstrap_resamples"], settings["seed"])
    summary_hash = hashlib.sha256((out / "summary.json").read_bytes()).hexdigest()
    results.append(execute_notebook("05_compare", {"out_dir": str(out)}, out, f"{data_hash}|{summary_hash}", force=force))
    write_text(out / "report.html", render_report([r.notebook for r in results if not r.name.startswith("03_train-control")],
                                                  title="allstudy report"))
    print(f"study complete in {time.perf_counter() - started:.0f} s: {out / 'report.html'}")
    return results


def deterministic_ops() -> bool:
    """Make TensorFlow's ops deterministic when no GPU is visible, so that a seeded run repeats to the bit.

    Without it the augmentation's random ops, run in parallel by tf.data, draw in a different order each
    time and two runs of the same seed differ by several points on the quick profile. On a CPU it costs
    little; on a GPU deterministic kernels are slower or missing, so GPU runs are left as they are.
    """
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return False
    tf.config.experimental.enable_op_determinism()
    return True


#: The name :func:`allstudy.core.atomic.atomic_path` gives its temporary file: ``.<stem>.<8 random chars>.tmp<suffix>``.
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9_]+)?$")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that writers killed mid-write left under ``folder``; return them.

    Only for a folder that no other process is writing to (see :func:`output_lock`).
    """
    removed = []
    for path in sorted(Path(folder).rglob(".*.tmp*")):
        if _TEMPORARY.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, shared: bool = False):
    """Hold an output folder for one command: ``run`` alone (exclusive), ``train`` beside other ``train``
    commands (``shared``). Another command holding it is a :class:`StudyError`; the lock ends with the
    process, however it ends. Where the file system has no locks (Windows, some network mounts) it is a no-op.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".allstudy.lock", "a", encoding="utf-8") as handle:
        try:
            import fcntl

            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StudyError(f"another allstudy command is writing to {out}; wait until it ends, "
                             "or pass another --out folder") from None
        except (ImportError, OSError):
            pass  # no advisory locks here: one command per folder is then the user's care
        yield out
