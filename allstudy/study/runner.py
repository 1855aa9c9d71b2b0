"""The runner: the whole study as one command, notebooks executed by papermill in order.

``run(data, profile, out)`` prepares the data (cached), then executes each notebook of
``notebooks/`` with the profile's parameters into ``out/notebooks/`` and renders it to HTML
(code hidden, figures inline). A step whose notebook, parameters and data are unchanged since its
last successful execution is skipped. Every file is written atomically, so a killed run resumes.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np

from allstudy.core.atomic import read_json, write_csv, write_json, write_text
from allstudy.core.hashing import sha256_file
from allstudy.core.parallel import run_chains
from allstudy.core.provenance import code_version, package_versions
from allstudy.data.prepare import PreparedData, with_image_level_split
from allstudy.data.preprocess import model_inputs
from allstudy.data.split import SPLIT_PROTOCOLS
from allstudy.evaluation.compare import (
    comparison_table,
    data_provenance,
    evaluate_and_choose,
    evaluate_run,
    run_summary,
    summary,
)
from allstudy.evaluation.controls import BASELINES, CONTROL_RUNS, IMAGE_SPLIT_RUN, control_table, run_baseline
from allstudy.models.profiles import get_profile, train_config
from allstudy.serving.model_folder import ModelFolder
from allstudy.serving.modelcard import write_model_dir
from allstudy.serving.ood import FORMAT as GUARD_FORMAT
from allstudy.serving.ood import OODGuard, fit_guard
from allstudy.serving.runtime import write_serving
from allstudy.study.console import StudyConsole
from allstudy.study.notebooks import StepResult, execute_notebook
from allstudy.study.pdf import chromium, first_screen, print_pdf
from allstudy.study.report import build_report
from allstudy.study.study_data import prepare_study_data, reference_segmentation
from allstudy.training.fit import deterministic_ops, feature_rows, features_dir, train
from allstudy.training.pipeline import load_images
from allstudy.training.run_folder import RunFolder, RunParams, finished_runs

#: The study's notebooks, in order; 03_train runs once per architecture of the profile.
STEPS = ("01_explore", "02_preprocess", "03_train", "04_evaluate", "05_compare")


def train_architecture(
    data: str | os.PathLike | None,
    out: str | os.PathLike,
    profile: str,
    arch: str,
    dataset: str = "taleqani",
    weights_dir: str | os.PathLike | None = None,
    progress: bool = True,
    run_name: str | None = None,
    split: str = "grouped",
    **overrides,
):
    """Train one architecture of the profile on the study's data into ``out/runs/<run_name or arch>/``.

    With no ``data``, the synthetic default of ``dataset`` (:data:`allstudy.study.study_data.SYNTHETIC_DATASETS`).
    A finished run with the same parameters and data is reused as it is. ``split="image"`` trains on the
    published studies' image-level split instead (:func:`allstudy.data.prepare.with_image_level_split`; default
    run name ``<arch>-image-split``), to measure what their protocol's leak is worth.
    """
    if split not in SPLIT_PROTOCOLS:
        raise ValueError(f"split must be 'grouped' (the study's) or 'image' (the published protocol), not {split!r}")
    deterministic_ops()
    prepared = prepare_study_data(data, out, profile, progress=False, dataset=dataset)
    config = train_config(profile, arch, **overrides)
    if split == "image":
        settings = get_profile(profile)
        prepared = with_image_level_split(prepared, settings["seed"], tuple(settings["fractions"]))
        run_name = run_name or f"{arch}-image-split"
    return train(
        config,
        prepared,
        Path(out) / "runs" / (run_name or arch),
        cache_dir=Path(out) / "cache",
        progress=progress,
        weights_dir=weights_dir,
    )


def summarise(
    out: str | os.PathLike,
    prepared: PreparedData,
    runs: list[str],
    controls: list[str],
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Evaluate every run, choose the model (validation macro-F1), write summary.json, comparison.csv and
    ``models/chosen/`` (its guard and serving file: :func:`finish_chosen`); return the summary."""
    out = Path(out)
    candidates = evaluate_and_choose(out, runs, n_resamples, seed)
    found, evaluations, params, chosen = (candidates.runs, candidates.evaluations, candidates.params, candidates.chosen)
    control_dirs = finished_runs(out, controls)
    control_rows = control_table(
        {
            name: run_summary(evaluate_run(run, n_resamples, seed), run.raw_params())
            for name, run in control_dirs.items()
        },
        run_summary(evaluations[chosen], params[chosen]),
    )
    info = data_provenance(prepared.info)
    result = summary(info, evaluations, params, chosen, {"rows": control_rows})
    result["provenance"] = {
        "data_hash": info.get("data_hash"),
        "code_version": code_version(),
        "packages": package_versions(),
    }
    write_json(out / "summary.json", result)
    write_csv(comparison_table(result), out / "comparison.csv")
    write_model_dir(
        found[chosen],
        out / "models" / "chosen",
        chosen,
        params[chosen],
        evaluations[chosen],
        info,
        {"rows": control_rows},
    )
    return result


def finish_chosen(out: str | os.PathLike, prepared: PreparedData, chosen: str) -> None:
    """The out-of-distribution guard and serving file of ``models/chosen/``, the run ``chosen``'s model (each
    reused while unchanged)."""
    folder = ModelFolder(Path(out) / "models" / "chosen")
    params = RunFolder(Path(out) / "runs" / chosen).raw_params()
    fit_chosen_guard(folder, prepared, params, Path(out) / "cache")
    write_chosen_serving(folder, prepared, params, Path(out) / "cache")


#: Validation fields the serving file is checked on when the study writes it (allstudy export checks the test split).
SERVING_CHECK_FIELDS = 64


def write_chosen_serving(folder: ModelFolder, prepared: PreparedData, params: dict, cache_dir: Path) -> dict:
    """Write the model folder's serving file (allstudy.serving.runtime), checked on validation fields; reused while
    model.keras is unchanged."""
    view = RunParams(params)
    paths = prepared.split.loc[prepared.split["split"] == "val", "path"].tolist()[:SERVING_CHECK_FIELDS]
    fields = load_images(prepared.root, paths, view.input_size, cache_dir)
    return write_serving(folder, model_inputs(fields, view.input_mode))


def cached_train_embedding(params: dict, prepared: PreparedData, cache_dir: Path):
    """A transfer run's cached backbone features of the upright training fields: the embedding its guard reads
    (the head's input), as training computed them; None for a model trained on images, a fine-tuned backbone
    (the features no longer describe it) or a missing cache."""
    view = RunParams(params)
    if not view.feature_runtime or view.fine_tuned:
        return None
    folder = features_dir(cache_dir, params["config"], view.weights_key, view.input_size, params["data_hash"])
    path = folder / "features-view0.npy" if folder else None
    if not (path and path.exists()):
        return None
    features = np.load(path)
    return features[feature_rows(prepared.split)["train"]] if len(features) == len(prepared.split) else None


def fit_chosen_guard(folder: ModelFolder, prepared: PreparedData, params: dict, cache_dir: Path) -> Path:
    """Fit the out-of-distribution guard of a model folder on its training fields (validation sets the
    thresholds) and write ``ood.json``; reused while the model file and the guard's format are unchanged."""
    target, stamp_path = folder.guard_file, folder.guard_stamp_file
    stamp = {"model_sha256": sha256_file(folder.model_file), "guard_format": GUARD_FORMAT}
    if target.exists() and stamp_path.exists() and read_json(stamp_path) == stamp:
        return target
    print("fitting the out-of-distribution guard of the chosen model")
    model = folder.load_model()
    view = RunParams(params)
    images = {
        s: load_images(
            prepared.root, prepared.split.loc[prepared.split["split"] == s, "path"].tolist(), view.input_size, cache_dir
        )
        for s in ("train", "val")
    }
    guard: OODGuard = fit_guard(
        model,
        images["train"],
        images["val"],
        view.input_mode,
        train_embedding=cached_train_embedding(params, prepared, cache_dir),
    )
    guard.save(target)
    write_json(stamp_path, stamp)
    return target


def run(
    data: str | os.PathLike | None = None,
    profile: str = "quick",
    out: str | os.PathLike = "outputs",
    dataset: str = "taleqani",
    force: bool = False,
    weights_dir: str | os.PathLike | None = None,
    architectures: list[str] | None = None,
    strategy: str | None = None,
    jobs: int = 1,
    console: StudyConsole | None = None,
) -> list[StepResult]:
    """Run the whole study (01 to 05, controls, report); return the executed steps.

    With no ``data``, the synthetic default of ``dataset`` (``taleqani`` or ``cnmc``). Writes
    ``out/report.html``, ``out/summary.json``, ``out/comparison.csv`` and ``out/models/chosen/``. ``strategy``
    (mirrored, multiworker, tpu) is the training notebooks' ``tf.distribute`` strategy; None: TensorFlow's default
    (one device).
    ``jobs`` notebooks execute at once (each architecture trains then evaluates in one chain; the
    controls run side by side); every result is the same whatever ``jobs`` is. ``console``: what the
    terminal shows (the command line's: one line per step, the rest in a log file).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    started = time.perf_counter()
    out = Path(out).resolve()
    console = console or StudyConsole()  # by default, nothing redirected: every step's own output
    settings = get_profile(profile)
    architectures = architectures or settings["architectures"]
    n_variants = len(CONTROL_RUNS) + 1  # the chosen architecture on other inputs, and on the image-level split
    # data, 01, 02, 03 and 04 per architecture, baselines, control runs, summary, 05, guard and serving, report
    # and report.pdf with the report's first screen, where Chromium can print them
    console.total = 3 + 2 * len(architectures) + len(BASELINES) + n_variants + 4 + (chromium() is not None)
    with console.step("data: scan, duplicates and overlaps, split"):
        prepared = prepare_study_data(data, out, profile, progress=not console.enabled, dataset=dataset)
    data_hash = prepared.info["data_hash"]
    weights_dir = str(Path(weights_dir).resolve()) if weights_dir else None
    base = {"data_dir": str(prepared.root), "out_dir": str(out), "profile": profile}
    training = {"strategy": strategy} if strategy else {}  # only when given: unchanged steps stay reused
    reference = reference_segmentation(prepared.root)

    def step(
        name: str, parameters: dict, output_name: str | None = None, then: Callable[[], object] | None = None
    ) -> Callable[[], StepResult]:
        """The notebook ``name`` as a step of the console (``then``: more work of the same step, after it)."""
        execute = functools.partial(
            execute_notebook,
            name,
            parameters,
            out,
            data_hash,
            force=force,
            output_name=output_name,
            progress=jobs == 1 and not console.enabled,
        )

        def notebook() -> StepResult:
            result = execute()
            if then is not None:
                then()
            return result

        return functools.partial(console.run, output_name or name, notebook)

    evaluation = {"out_dir": str(out), "n_resamples": settings["bootstrap_resamples"], "seed": settings["seed"]}
    explore, preprocess, *trained = run_chains(
        [
            [
                step(
                    "01_explore",
                    {
                        **base,
                        "samples_per_class": settings["explore_samples_per_class"],
                        "duplicate_groups_shown": settings["explore_duplicate_groups"],
                    },
                )
            ],
            [
                step(
                    "02_preprocess",
                    {
                        **base,
                        "reference_dir": str(reference) if reference else None,
                        "max_compared": settings["preprocess_max_compared"],
                    },
                )
            ],
        ]
        + [
            [
                step("03_train", {**base, "arch": arch, "weights_dir": weights_dir, **training}, f"03_train-{arch}"),
                step("04_evaluate", {**evaluation, "run": arch}, f"04_evaluate-{arch}"),
            ]
            for arch in architectures
        ],
        jobs,
    )
    results = explore + preprocess + [chain[0] for chain in trained] + [chain[1] for chain in trained]

    # Validity controls: shortcut baselines, the chosen architecture on other inputs (one view each), and on the
    # published image-level split (the chosen architecture as it is, with its views).

    chosen = evaluate_and_choose(out, architectures, settings["bootstrap_resamples"], settings["seed"]).chosen
    controls = []
    for name in BASELINES:
        print(f"control: {name} baseline")
        with console.step(f"control: {name} baseline"):
            controls.append(run_baseline(name, prepared, out, out / "cache", settings["seed"]).name)
    variants = {
        f"control-{chosen}-{suffix}": {"input_mode": mode, "tta_views": 1} for suffix, (mode, _) in CONTROL_RUNS.items()
    }
    variants[f"control-{chosen}-{IMAGE_SPLIT_RUN}"] = {"split": "image"}
    n_resamples, seed = settings["bootstrap_resamples"], settings["seed"]
    for chain in run_chains(
        [
            [
                step(
                    "03_train",
                    {**base, "arch": chosen, "weights_dir": weights_dir, "run_name": name, **variant, **training},
                    f"03_train-{name}",
                    # evaluated (and cached) here, beside the next control, rather than one by one in the summary
                    then=functools.partial(evaluate_run, out / "runs" / name, n_resamples, seed),
                )
            ]
            for name, variant in variants.items()
        ],
        jobs,
    ):
        results += chain
    controls += list(variants)

    with console.step("summary and chosen model"):
        summarise(out, prepared, architectures, controls, n_resamples, seed)
    summary_hash = sha256_file(out / "summary.json")
    compare = functools.partial(
        execute_notebook, "05_compare", {"out_dir": str(out)}, out, f"{data_hash}|{summary_hash}", force=force
    )

    def guard_and_serving() -> None:
        with console.step("chosen model: its guard and serving file"):
            finish_chosen(out, prepared, chosen)

    # 05_compare reads summary.json only: the chosen model's guard and serving file are made beside it.
    last: list[list[Callable[[], object]]] = [
        [functools.partial(console.run, "05_compare", compare)],
        [guard_and_serving],
    ]
    (compared,), _ = run_chains(last, jobs)
    results.append(cast(StepResult, compared))
    with console.step("report"):
        pages = {r.name: r.html for r in results if not r.name.startswith("03_train-control")}
        write_text(out / "report.html", build_report(pages, read_json(out / "summary.json")))
    if chromium() is None:
        print("report.pdf not made: no headless Chromium (`make browser`, or set ALLSTUDY_CHROMIUM)")
    else:
        with console.step("report.pdf and its first screen"):
            print_pdf(out / "report.html", out / "report.pdf")
            first_screen(out / "report.html", out / "report-first-screen.png")
    print(f"study complete in {time.perf_counter() - started:.0f} s: {out / 'report.html'}")
    return results
