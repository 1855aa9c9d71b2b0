"""Every test error of a run, shown: the image, its true and predicted class, the calibrated probabilities,
the decision policy's verdict and the Grad-CAM of the predicted class (CLAIM's failure analysis)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from allstudy.data.classes import is_malignant
from allstudy.evaluation.compare import evaluate_run, split_images
from allstudy.evaluation.decision import DecisionPolicy
from allstudy.evaluation.gradcam import gradcam_for, overlay
from allstudy.evaluation.metrics import apply_temperature, labels_of, probabilities
from allstudy.models.layers import load_model, single_view

#: Images per row of the gallery (each with its Grad-CAM beside it).
COLUMNS = 3


def test_errors(out: str | os.PathLike, run: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The misclassified test images of ``run`` (argmax of the calibrated probabilities against the truth):
    a table (``path, true, predicted, p_<class>..., verdict``, worst error first: a malignant image called
    benign, then by the probability given to the wrong class) and their model inputs, in the same order."""
    out = Path(out)
    evaluation = evaluate_run(out / "runs" / run)  # cached by the evaluation step
    frame, images, params = split_images(out, run, "test")
    classes = list(params["classes"])
    proba = apply_temperature(probabilities(frame, classes), evaluation["temperature"])
    truth, predicted = labels_of(frame, classes), proba.argmax(axis=1)
    verdicts = DecisionPolicy.from_json(evaluation["decision"]["policy"]).decide(proba).verdict
    wrong = np.flatnonzero(predicted != truth)
    table = pd.DataFrame(
        {
            "path": frame["path"].to_numpy()[wrong],
            "true": [classes[i] for i in truth[wrong]],
            "predicted": [classes[i] for i in predicted[wrong]],
            **{f"p_{c}": proba[wrong, k] for k, c in enumerate(classes)},
            "verdict": verdicts[wrong].astype(str),
        }
    )
    missed = np.array([is_malignant(t) and v == "benign" for t, v in zip(table["true"], table["verdict"], strict=True)])
    order = np.lexsort((-proba[wrong, predicted[wrong]], ~missed)) if len(wrong) else wrong
    return table.iloc[order].reset_index(drop=True), images[wrong][order]


def error_gallery(
    out: str | os.PathLike,
    run: str,
    found: tuple[pd.DataFrame, np.ndarray] | None = None,
    model=None,
    max_errors: int = 150,
    columns: int = COLUMNS,
) -> plt.Figure | None:
    """Every test error of ``run`` (up to ``max_errors``, worst first) as a figure: each image, its Grad-CAM
    overlay of the predicted class, and a caption with the truth, the prediction, the calibrated probabilities
    and the verdict. None when the run made no error. ``found``: what :func:`test_errors` returned, when the
    caller has it already; ``model``: the run's Keras model (loaded when None)."""
    table, images = found if found is not None else test_errors(out, run)
    if table.empty:
        return None
    table, images = table.head(max_errors), images[:max_errors]
    classes = [c.removeprefix("p_") for c in table.columns if c.startswith("p_")]
    model = model if model is not None else load_model(Path(out) / "runs" / run / "model.keras")
    predicted = np.array([classes.index(c) for c in table["predicted"]])
    heatmaps, _ = gradcam_for(single_view(model)).explain(images, predicted)
    rows = -(-len(table) // columns)
    fig, axes = plt.subplots(rows, 2 * columns, figsize=(2.1 * 2 * columns, 2.75 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for i, row in enumerate(table.itertuples(index=False)):
        ax_image, ax_map = axes[i // columns][2 * (i % columns)], axes[i // columns][2 * (i % columns) + 1]
        image = np.clip(images[i], 0, 255).astype(np.uint8)
        ax_image.imshow(image)
        ax_map.imshow(overlay(image, heatmaps[i]))
        p = " ".join(f"{c} {getattr(row, f'p_{c}'):.2f}" for c in classes)
        missed = is_malignant(str(row.true)) and row.verdict == "benign"
        ax_image.set_title(
            f"{Path(str(row.path)).name}\ntrue {row.true} → {row.predicted}\n{p}\nverdict: {row.verdict}",
            fontsize=6.5,
            loc="left",
            color="#b00020" if missed else "black",
        )
    fig.tight_layout()
    plt.close(fig)
    return fig
