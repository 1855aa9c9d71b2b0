"""Validity controls: how much of a model's score a shortcut could explain.

The Taleqani classes come from different patients and acquisition sessions, so the slide's colour
or the burned-in scale bar can give the class away. Two shortcut baselines see only those (global
colour statistics; the scale-bar corner) and go through the same split and the same metrics as the
real runs: each writes a run folder like :func:`allstudy.training.fit.train` does (``predictions.csv``,
``params.json``), so :mod:`allstudy.evaluation.compare` evaluates it with confidence intervals. The
controls that need a network (background only, segmented input, the mitigation) are training runs
of the chosen architecture with another ``input_mode`` (see :data:`CONTROL_RUNS`), and one on the published
studies' image-level split (:data:`IMAGE_SPLIT_RUN`), which measures what that protocol's leak is worth.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd

from allstudy.core.provenance import code_version, package_versions
from allstudy.data.prepare import PreparedData
from allstudy.data.segment import scale_bar_corner
from allstudy.training.pipeline import load_images
from allstudy.training.run_folder import RunFolder

#: Network controls: run-name suffix -> (input mode, what the model sees).
CONTROL_RUNS = {
    "original": ("original", "the fields as they are (the reference for the controls: one view, no TTA)"),
    "background": ("background", "the fields with the stained leukocytes masked out: slide and session only"),
    "segmented": ("segmented", "the segmented leukocytes only (region-based colour segmentation)"),
    "mitigated": ("mitigated", "stain-normalised fields with the scale-bar corner masked (the mitigation)"),
}

#: Run-name suffix of the chosen architecture trained and tested on the published image-level split (its views).
IMAGE_SPLIT_RUN = "image-split"

#: Input size of the shortcut baselines (their features do not need more).
BASELINE_SIZE = 64


def colour_features(images: np.ndarray) -> np.ndarray:
    """Global colour statistics per image: mean, spread and 5/50/95th percentiles of R, G, B, H, S, V."""
    from skimage.color import rgb2hsv

    rows = []
    for image in images:
        pixels = np.concatenate([image.reshape(-1, 3) / 255.0, rgb2hsv(image).reshape(-1, 3)], axis=1)
        rows.append(np.concatenate([pixels.mean(0), pixels.std(0), *np.percentile(pixels, [5, 50, 95], axis=0)]))
    return np.asarray(rows, np.float32)


def corner_features(images: np.ndarray) -> np.ndarray:
    """The scale-bar corner alone: its pixels (everything else is masked by the ``corner`` input mode)."""
    return np.asarray([scale_bar_corner(image).astype(np.float32).ravel() / 255.0 for image in images])


BASELINES = {
    "colour-statistics": (colour_features, "global colour statistics of the field (mean, spread, percentiles)"),
    "scale-bar-corner": (corner_features, "the burned-in scale-bar corner (bottom right) alone"),
}


def run_baseline(
    name: str, data: PreparedData, out: str | os.PathLike, cache_dir: str | os.PathLike | None = None, seed: int = 0
) -> RunFolder:
    """Fit one shortcut baseline (logistic regression, class-balanced) on train; write its run folder."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    featurise, description = BASELINES[name]
    start = time.perf_counter()
    run = RunFolder.of(out, f"control-{name}")
    classes = sorted(data.split["class"].unique())
    parts = {s: data.split[data.split["split"] == s].reset_index(drop=True) for s in ("train", "val", "test")}
    features = {
        s: featurise(load_images(data.root, p["path"].tolist(), BASELINE_SIZE, cache_dir)) for s, p in parts.items()
    }
    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced", random_state=seed)
    )
    model.fit(features["train"], parts["train"]["class"])
    frames = []
    for split in ("val", "test"):
        proba = model.predict_proba(features[split])
        order = [list(model.classes_).index(c) for c in classes]
        frame = parts[split][["path", "class"]].copy()
        frame.insert(0, "split", split)
        frame["label"] = [classes[i] for i in proba[:, order].argmax(1)]
        for i, c in enumerate(classes):
            frame[f"p_{c}"] = proba[:, order[i]]
        frames.append(frame)
    predictions = pd.concat(frames, ignore_index=True)
    accuracy = {s: float((f["label"] == f["class"]).mean()) for s, f in predictions.groupby("split")}
    run.write_results(predictions, {"accuracy": accuracy})
    run.write_params(
        {
            "arch": "logistic-regression",
            "control": name,
            "description": description,
            "classes": classes,
            "input_size": BASELINE_SIZE,
            "preprocessing": "standardised features",
            "data_hash": data.info["data_hash"],
            "config": {
                "arch": "logistic-regression",
                "weights": None,
                "input_mode": name,
                "tta_views": 1,
                "seed": seed,
            },
            "params": int(model[-1].coef_.size + model[-1].intercept_.size),
            "train_seconds": round(time.perf_counter() - start, 1),
            "code_version": code_version(),
            "packages": package_versions(),
            "complete": True,
        }
    )
    return run


def control_table(controls: dict[str, dict], chosen: dict) -> list[dict]:
    """One row per control (and the chosen model first): what it sees and its test figures with CIs.

    ``controls`` and ``chosen`` are :func:`allstudy.evaluation.compare.run_summary` entries.
    """

    def row(name: str, sees: str, entry: dict) -> dict:
        test = entry["test"]
        return {
            "control": name,
            "sees": sees,
            "arch": entry["arch"],
            "input_mode": entry["input_mode"],
            "tta_views": entry["tta_views"],
            "accuracy": test["accuracy"],
            "accuracy_ci": test["accuracy_ci"],
            "macro_f1": test["macro_f1"],
            "macro_f1_ci": test["macro_f1_ci"],
            "malignant_called_benign": entry["decision"]["malignant_called_benign"],
            "referral_rate": entry["decision"]["referral_rate"],
            "referral_rate_ci": entry["decision"]["referral_rate_ci"],
            "answered_accuracy": entry["decision"]["answered_accuracy"],
            "split_protocol": entry.get("split_protocol", "grouped"),
            "leaked_test_fields": entry.get("leaked_fields", {}).get("test", 0),
        }

    rows = [row("chosen model", f"the fields ({chosen['tta_views']} view(s))", chosen)]
    for name, entry in controls.items():
        mode = entry["input_mode"]
        sees = (
            BASELINES[mode][1] if mode in BASELINES else next((d for m, d in CONTROL_RUNS.values() if m == mode), mode)
        )
        if entry.get("split_protocol", "grouped") != "grouped":
            sees = (
                f"the fields ({entry['tta_views']} view(s)), trained and tested on the published image-level "
                f"split ({entry['leaked_fields']['test']} of its test fields overlap a training field)"
            )
        rows.append(row(name, sees, entry))
    return rows


def control_findings(summary: dict) -> list[str]:
    """What the controls of a study's summary.json say, one Markdown bullet per finding."""
    rows = summary.get("controls", {}).get("rows", [])

    def accuracy(suffix: str) -> float | None:
        return next((r["accuracy"] for r in rows if r["control"].endswith(suffix)), None)

    colour, corner = accuracy("colour-statistics"), accuracy("scale-bar-corner")
    chosen, leaky = accuracy("chosen model"), accuracy(f"-{IMAGE_SPLIT_RUN}")
    original, background = accuracy("-original"), accuracy("-background")
    mitigated, segmented = accuracy("-mitigated"), accuracy("-segmented")
    lines = []
    if colour is not None and corner is not None:
        counts = summary["data"]["classes"]
        lines.append(
            f"- Without looking at a single cell, colour statistics reach **{colour:.1%}** and the scale-bar "
            f"corner **{corner:.1%}** (the majority class alone: {max(counts.values()) / sum(counts.values()):.1%})."
        )
    if original is not None and background is not None:
        lines.append(
            f"- The chosen architecture scores **{background:.1%}** on the background alone, against "
            f"{original:.1%} on the whole field: that much of the task is solvable without the leukocytes."
        )
    if original is not None and mitigated is not None:
        lines.append(
            f"- The mitigation (stain normalisation, corner masked) gives **{mitigated:.1%}**, "
            f"{(mitigated - original) * 100:+.1f} points against the unmitigated single-view run."
        )
    if chosen is not None and leaky is not None:
        leaked = next(r for r in rows if r["control"].endswith(f"-{IMAGE_SPLIT_RUN}"))
        lines.append(
            f"- Trained and tested on the published studies' image-level split instead, the chosen architecture "
            f"scores **{leaky:.1%}** against {chosen:.1%} here ({(leaky - chosen) * 100:+.1f} points; another "
            f"test set, in which {leaked['leaked_test_fields']} fields overlap a training field): what the published "
            "protocol's leak adds, as far as one split shows it."
        )
    if original is not None and segmented is not None:
        lines.append(
            f"- On the segmented leukocytes alone it scores **{segmented:.1%}** "
            f"({(segmented - original) * 100:+.1f} points): original vs segmented input."
        )
    return lines
