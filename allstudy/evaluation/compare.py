"""All runs side by side: their evaluations, the choice of model, summary.json and comparison.csv.

The chosen model is the run with the best *validation* macro-F1 (ties: validation accuracy, then
fewer parameters); the test split never takes part in the choice. Each run's evaluation is cached in
``runs/<run>/evaluation.json`` and recomputed only when its predictions change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from allstudy.core.atomic import read_json, write_json
from allstudy.core.hashing import sha256_file
from allstudy.data.datasets import dataset_facts
from allstudy.data.split import SPLIT_KINDS
from allstudy.evaluation.metrics import CI_METRICS, Evaluation, evaluate, inference_cost
from allstudy.models.layers import load_model
from allstudy.training.pipeline import load_images
from allstudy.training.run_folder import RunFolder, RunParams, finished_runs

#: The source studies' published test accuracies: the figures to reproduce and to beat.
PUBLISHED: list[dict[str, Any]] = [
    {
        "dataset": "Taleqani 4-class",
        "arch": "lenet",
        "accuracy": 0.9575,
        "source": "Pak Heart J 2023",
        "split": "image-level split, leaks overlapping fields",
    },
    {
        "dataset": "Taleqani 4-class",
        "arch": "sequential",
        "accuracy": 0.93,
        "source": "Pak Heart J 2023",
        "split": "image-level split, leaks overlapping fields",
    },
    {
        "dataset": "Taleqani 4-class",
        "arch": "vgg16",
        "accuracy": 0.344,
        "source": "Pak Heart J 2023",
        "split": "image-level split, leaks overlapping fields",
    },
    {
        "dataset": "C-NMC 2019 binary",
        "arch": "mobilenet",
        "accuracy": 0.914,
        "source": "transfer-learning study",
        "split": "image-level, 70 test cells (subjects mixed)",
    },
    {
        "dataset": "C-NMC 2019 binary",
        "arch": "vgg16",
        "accuracy": 0.928,
        "source": "transfer-learning study",
        "split": "image-level, 70 test cells (subjects mixed)",
    },
    {
        "dataset": "C-NMC 2019 binary",
        "arch": "resnet50",
        "accuracy": 0.514,
        "source": "transfer-learning study",
        "split": "image-level, 70 test cells (subjects mixed)",
    },
]


#: Changes whenever evaluation.json gains or changes content, so that cached evaluations are redone.
EVALUATION_FORMAT = 5


def decision_summary(evaluation: Evaluation) -> dict:
    """The decision policy's test figures as summary.json records them (counts, rates and 95 % intervals)."""
    policy, test = evaluation["decision"]["policy"], evaluation["decision"]["test"]
    missed, referred, answered = test["malignant_called_benign"], test["referred"], test["answered_accuracy"]
    return {
        "alpha": policy["alpha"],
        "alpha_benign": policy["alpha_benign"],
        "rule_out": policy["rule_out"],
        "benign_limit": policy["benign_limit"],
        "n_calibration": policy["calibration"]["n"],
        "malignant_called_benign": missed["count"],
        "malignant_called_benign_rate": missed["rate"],
        "malignant_called_benign_ci": missed["ci"],
        "n_malignant": missed["n"],
        "benign_called_malignant": test["benign_called_malignant"]["count"],
        "referred": referred["count"],
        "referral_rate": referred["rate"],
        "referral_rate_ci": referred["ci"],
        "referral_rate_per_class": {c: r["rate"] for c, r in test["referred_per_class"].items()},
        "answered_accuracy": answered["rate"],
        "answered_accuracy_ci": answered["ci"],
        "answered_macro_f1": test["answered_macro_f1"],
        "answered_macro_f1_ci": test["answered_macro_f1_ci"],
    }


def evaluate_run(run_dir: str | os.PathLike, n_resamples: int = 1000, seed: int = 0) -> Evaluation:
    """The evaluation of one finished run (:func:`allstudy.evaluation.metrics.evaluate`), cached in its folder."""
    run = RunFolder(Path(run_dir))
    if not run.predictions_file.exists():
        raise FileNotFoundError(f"{run.predictions_file} is missing; train the run first (allstudy train --arch ...)")
    key = {
        "predictions_sha256": sha256_file(run.predictions_file),
        "n_resamples": n_resamples,
        "seed": seed,
        "format": EVALUATION_FORMAT,
    }
    if run.evaluation_file.exists():
        previous = read_json(run.evaluation_file)
        if previous.get("key") == key:
            return previous
    report: Evaluation = {
        "key": key,
        **evaluate(run.predictions(), run.params().classes, n_resamples=n_resamples, seed=seed),
    }
    write_json(run.evaluation_file, report)
    return report


def choose(evaluations: dict[str, Evaluation], params: dict[str, dict]) -> str:
    """The run with the best validation macro-F1; ties broken by validation accuracy, then fewer parameters."""
    if not evaluations:
        raise ValueError("no finished runs to choose from; train at least one architecture")
    return max(
        evaluations,
        key=lambda n: (
            evaluations[n]["val"]["macro_f1"],
            evaluations[n]["val"]["accuracy"],
            -RunParams(params[n]).n_params,
        ),
    )


@dataclass(frozen=True)
class Candidates:
    """The finished runs among some names, their evaluations and params, and the one chosen (on validation)."""

    runs: dict[str, RunFolder]
    evaluations: dict[str, Evaluation]
    params: dict[str, dict]
    chosen: str


def evaluate_and_choose(out: str | os.PathLike, names: list[str], n_resamples: int = 1000, seed: int = 0) -> Candidates:
    """Evaluate the finished runs among ``names`` under ``out/runs`` and choose one (:func:`choose`)."""
    runs = finished_runs(out, names)
    evaluations = {name: evaluate_run(run, n_resamples, seed) for name, run in runs.items()}
    params = {name: run.raw_params() for name, run in runs.items()}
    return Candidates(runs, evaluations, params, choose(evaluations, params))


def run_summary(evaluation: Evaluation, params: dict) -> dict:
    """One run's entry of summary.json (the keys ../shared/DESIGN.md fixes, plus calibration detail)."""
    test, calibrated = evaluation["test"], evaluation["test_calibrated"]
    view = RunParams(params)
    return {
        "arch": view.arch,
        "weights": view.weights,
        "input_size": view.input_size,
        "input_mode": view.input_mode,
        "tta_views": view.tta_views,
        "split_protocol": view.split_protocol,
        "leaked_fields": view.leaked_fields,
        "test": {
            "accuracy": test["accuracy"],
            "accuracy_ci": test["accuracy_ci"],
            "macro_f1": test["macro_f1"],
            "macro_f1_ci": test["macro_f1_ci"],
            "weighted_f1": test["weighted_f1"],
            "weighted_f1_ci": test["weighted_f1_ci"],
            "balanced_accuracy": test["balanced_accuracy"],
            "malignant_sensitivity": test["malignant_sensitivity"],
            "malignant_sensitivity_ci": test["malignant_sensitivity_ci"],
            "malignant_specificity": test["malignant_specificity"],
            "malignant_specificity_ci": test["malignant_specificity_ci"],
            "ece": calibrated["ece"],
            "ece_ci": calibrated["ece_ci"],
            "ece_uncalibrated": test["ece"],
            "brier": calibrated["brier"],
            "brier_ci": calibrated["brier_ci"],
        },
        "val": {"accuracy": evaluation["val"]["accuracy"], "macro_f1": evaluation["val"]["macro_f1"]},
        "temperature": evaluation["temperature"],
        "decision": decision_summary(evaluation),
        "tradeoff": evaluation["decision"]["tradeoff"],
        # the run's own wall time (features included); epochs summed across resumes when it was interrupted
        "train_seconds": view.train_seconds,
        "params": params["params"],
    }


def summary(
    data_info: dict,
    evaluations: dict[str, Evaluation],
    params: dict[str, dict],
    chosen: str,
    controls: dict | None = None,
) -> dict:
    """summary.json: data provenance, the chosen run, and every run's test figures with CIs."""
    result = {
        "data": data_info,
        "chosen": chosen,
        "runs": {name: run_summary(evaluations[name], params[name]) for name in evaluations},
    }
    if controls is not None:
        result["controls"] = controls
    return result


def comparison_table(summary_: dict, dataset: str | None = None) -> pd.DataFrame:
    """Our runs (test accuracy with its 95 % CI) beside the published figures of the same dataset (by default
    the one the summary's classes are from)."""
    dataset = dataset or dataset_facts(summary_.get("data", {}).get("classes") or []).name
    split = SPLIT_KINDS[summary_.get("data", {}).get("split_kind") or "grouped"]
    rows = []
    for name, run in summary_["runs"].items():
        test = run["test"]
        published = {
            p["source"] + f" ({p['dataset']})": p["accuracy"]
            for p in PUBLISHED
            if p["arch"] == run["arch"] and p["dataset"] == dataset
        }
        rows.append(
            {
                "run": name,
                "arch": run["arch"],
                "weights": run["weights"],
                "input_size": run["input_size"],
                "accuracy": test["accuracy"],
                "accuracy_ci_low": test["accuracy_ci"][0],
                "accuracy_ci_high": test["accuracy_ci"][1],
                "macro_f1": test["macro_f1"],
                "weighted_f1": test.get("weighted_f1"),
                "malignant_sensitivity": test["malignant_sensitivity"],
                "malignant_specificity": test["malignant_specificity"],
                "ece": test["ece"],
                "brier": test.get("brier"),
                "malignant_called_benign": run["decision"]["malignant_called_benign"],
                "referral_rate": run["decision"]["referral_rate"],
                "answered_accuracy": run["decision"]["answered_accuracy"],
                "train_seconds": run["train_seconds"],
                "params": run["params"],
                "chosen": name == summary_["chosen"],
                "published_accuracy": "; ".join(f"{v:.1%} {k}" for k, v in published.items()) or "",
                "dataset": dataset,
                "split": split,
            }
        )
    return pd.DataFrame(rows)


def published_table() -> pd.DataFrame:
    """The published figures alone, as the papers report them."""
    return pd.DataFrame(PUBLISHED)


def metrics_table(evaluation: dict, split: str = "test") -> pd.DataFrame:
    """The headline metrics of one split with their 95 % CIs, one row per metric."""
    part = evaluation[split]
    rows = []
    for metric in CI_METRICS:
        ci = part.get(f"{metric}_ci") or [None, None]
        rows.append({"metric": metric, "value": part.get(metric), "ci_low": ci[0], "ci_high": ci[1]})
    calibrated = evaluation["test_calibrated"]
    rows.append(
        {
            "metric": "ece (temperature-scaled)",
            "value": calibrated["ece"],
            "ci_low": (calibrated.get("ece_ci") or [None])[0],
            "ci_high": (calibrated.get("ece_ci") or [None, None])[1],
        }
    )
    return pd.DataFrame(rows).set_index("metric")


def decision_table(evaluation: dict, split: str = "test") -> pd.DataFrame:
    """What the decision policy did on one split: each count with its rate and 95 % interval."""
    part = evaluation["decision"][split]
    many = dataset_facts(part["referred_per_class"]).images
    entries = [
        (f"malignant {many} called benign", part["malignant_called_benign"]),
        (f"benign {many} called malignant", part["benign_called_malignant"]),
        (f"{many} referred", part["referred"]),
        *((f"  referred, true {c}", r) for c, r in part["referred_per_class"].items()),
        (f"answered {many} correct", part["answered_accuracy"]),
    ]
    rows = [
        {
            "": name,
            "count": e["count"],
            "of": e["n"],
            "rate": e["rate"],
            "ci_low": (e["ci"] or [None])[0],
            "ci_high": (e["ci"] or [None, None])[1],
        }
        for name, e in entries
    ]
    ci = part["answered_macro_f1_ci"] or [None, None]
    rows.append(
        {
            "": f"macro-F1 of the answered {many}",
            "count": None,
            "of": None,
            "rate": part["answered_macro_f1"],
            "ci_low": ci[0],
            "ci_high": ci[1],
        }
    )
    return pd.DataFrame(rows).set_index("")


def _interval(ci) -> str:
    return f"{ci[0]:.1%}–{ci[1]:.1%}" if ci else ""


def decision_rows(summary_: dict) -> pd.DataFrame:
    """Every run's decision policy on test, one row each, from summary.json."""
    rows = []
    for name, run in summary_["runs"].items():
        d = run["decision"]
        rows.append(
            {
                "run": name,
                "α": d["alpha"],
                "rule-out below": round(d["rule_out"], 4),
                "malignant called benign": f"{d['malignant_called_benign']} of {d['n_malignant']}",
                "95 % CI (rate)": _interval(d["malignant_called_benign_ci"]),
                "referred": f"{d['referred']} ({d['referral_rate']:.1%})",
                "95 % CI": _interval(d["referral_rate_ci"]),
                **{
                    f"referred {c}": f"{r:.1%}" if r is not None else ""
                    for c, r in d["referral_rate_per_class"].items()
                },
                "answered accuracy": f"{d['answered_accuracy']:.1%}" if d["answered_accuracy"] is not None else "",
                "95 % CI ": _interval(d["answered_accuracy_ci"]),
                "answered macro-F1": round(d["answered_macro_f1"], 3) if d["answered_macro_f1"] is not None else None,
                "chosen": name == summary_["chosen"],
            }
        )
    return pd.DataFrame(rows)


def per_class_table(evaluation: dict, split: str = "test") -> pd.DataFrame:
    """Precision, recall, F1 and support per class, with one-vs-rest ROC AUC and average precision."""
    part = evaluation[split]
    frame = pd.DataFrame(part["per_class"]).T
    frame["roc_auc"] = pd.Series(part["roc_auc"])
    frame["average_precision"] = pd.Series(part["average_precision"])
    return frame


def data_provenance(info: dict) -> dict:
    """The data step's provenance, without its long lists (summary.json's ``data``)."""
    report = info.get("report", {})
    return {
        "root": info.get("root"),
        "layout": info.get("layout"),
        "synthetic": info.get("synthetic"),
        "data_hash": info.get("data_hash"),
        "fingerprint": info.get("fingerprint"),
        "images": report.get("images"),
        "classes": report.get("classes"),
        "problems": len(report.get("problems", [])),
        "exact_duplicate_groups": len(report.get("exact_duplicate_groups", [])),
        "near_duplicate_groups": len(report.get("near_duplicate_groups", [])),
        "seed": info.get("split", {}).get("seed"),
        "fractions": info.get("split", {}).get("fractions"),
        "split_counts": info.get("split_counts"),
        "split_kind": info.get("split_kind"),
        "unlabelled": len(report.get("unlabelled", [])),
        "code_version": info.get("code_version"),
    }


def split_images(out: str | os.PathLike, run: str, split: str = "test"):
    """A run's predictions on one split, the matching model inputs (as the run saw them) and its params."""
    out = Path(out)
    folder = RunFolder.of(out, run)
    params = folder.params()
    frame = folder.predictions()
    frame = frame[frame["split"] == split].reset_index(drop=True)
    root = read_json(out / "data" / "data.json")["root"]
    images = load_images(root, frame["path"].tolist(), params.input_size, out / "cache", mode=params.input_mode)
    return frame, images, params.raw


def inference_cost_of(run_dir: str | os.PathLike, model=None) -> dict:
    """Inference ms/image, parameters and file size of a run's saved model, measured once and cached."""
    run = RunFolder(Path(run_dir))
    path, cached = run.model_file, run.cost_file
    key = sha256_file(path)
    if cached.exists() and read_json(cached).get("model_sha256") == key:
        return read_json(cached)
    if model is None:
        model = load_model(path)
    cost = {"model_sha256": key, **inference_cost(model, model.input_shape[1], model_path=path)}
    write_json(cached, cost)
    return cost


def plot_accuracy(summary_: dict, controls: bool = True):
    """Test accuracy with 95 % CIs per run (and control), the papers' figures as crosses where they exist."""
    import matplotlib.pyplot as plt

    entries = [
        (name, run["test"]["accuracy"], run["test"]["accuracy_ci"], run["arch"])
        for name, run in summary_["runs"].items()
    ]
    if controls:
        entries += [
            (row["control"], row["accuracy"], row["accuracy_ci"], None)
            for row in summary_.get("controls", {}).get("rows", [])[1:]
        ]
    dataset = dataset_facts(summary_.get("data", {}).get("classes") or []).name
    published = [p for p in PUBLISHED if p["dataset"] == dataset]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(entries) + 1.2))
    for i, (name, value, ci, arch) in enumerate(entries):
        colour = "tab:green" if name == summary_["chosen"] else ("tab:blue" if arch else "tab:grey")
        ax.errorbar(value, i, xerr=[[value - ci[0]], [ci[1] - value]], fmt="o", color=colour, capsize=3)
        for paper in published:
            if arch and paper["arch"] == arch:
                ax.plot(paper["accuracy"], i, "x", color="tab:red")
    ax.set_yticks(range(len(entries)), [e[0] for e in entries])
    ax.invert_yaxis()
    ax.set(xlabel=f"test accuracy (95 % CI); red x: published ({published[0]['split']})", xlim=(0, 1.01))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_confusions(out: str | os.PathLike, runs: list[str]):
    """Row-normalised test confusion matrices of several runs side by side."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    runs = [r for r in runs if RunFolder.of(out, r).evaluation_file.exists()]
    cols = min(4, max(1, len(runs)))
    rows = -(-len(runs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.1 * rows), squeeze=False)
    for ax in axes.ravel()[len(runs) :]:
        ax.axis("off")
    for ax, run in zip(axes.ravel(), runs, strict=False):
        evaluation = read_json(RunFolder.of(out, run).evaluation_file)
        classes = evaluation["classes"]
        sns.heatmap(
            evaluation["test"]["confusion_normalised"],
            annot=True,
            fmt=".2f",
            cmap="Blues",
            vmin=0,
            vmax=1,
            xticklabels=classes,
            yticklabels=classes,
            cbar=False,
            ax=ax,
        )
        ax.set(title=f"{run} ({evaluation['test']['accuracy']:.1%})", xlabel="predicted", ylabel="true")
    fig.tight_layout()
    plt.close(fig)
    return fig


def costs_table(out: str | os.PathLike, summary_: dict) -> pd.DataFrame:
    """Train seconds, parameters, model size and inference ms/image per run."""
    rows = []
    for name, run in summary_["runs"].items():
        cost_path = RunFolder.of(out, name).cost_file
        cost = read_json(cost_path) if cost_path.exists() else {}
        rows.append(
            {
                "run": name,
                "train_seconds": run["train_seconds"],
                "params": run["params"],
                "model_mb": (cost.get("file_bytes") or 0) / 1e6 or None,
                "ms_per_image": cost.get("ms_per_image"),
                "tta_views": run["tta_views"],
            }
        )
    return pd.DataFrame(rows).set_index("run")
