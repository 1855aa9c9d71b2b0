"""Metrics of one trained run: accuracy, per-class scores, ROC/PR, calibration, the decision policy, CIs, cost.

Every metric reads a run's ``predictions.csv`` (see :func:`allstudy.training.fit._predict`): labels ``y`` are
class indices into the sorted class list and ``proba`` is the (n, k) matrix of ``p_<class>`` columns;
the predicted class is the argmax. Point estimates come from scikit-learn; confidence intervals are
percentile bootstrap intervals from :func:`scipy.stats.bootstrap` (resampling images, labels and
probabilities together). Temperature scaling (one T fitted on the validation split) recalibrates the
probabilities without changing any prediction.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict, cast

import numpy as np
import pandas as pd
from scipy import optimize, special, stats
from sklearn import metrics as skm

from allstudy.data.classes import is_malignant
from allstudy.evaluation.decision import ALPHA_GRID, VERDICTS, DecisionPolicy

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

#: Metrics reported with a bootstrap confidence interval (``<metric>_ci``).
CI_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "weighted_f1",
    "malignant_sensitivity",
    "malignant_specificity",
    "roc_auc_macro",
    "ece",
    "brier",
)

_EPS = 1e-12
_TEMPERATURE_BOUNDS = (0.05, 20.0)


# ----------------------------------------------------------------------------- probabilities


def probabilities(frame: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """The (n, k) matrix of the ``p_<class>`` columns, in the order of ``classes``."""
    missing = [f"p_{c}" for c in classes if f"p_{c}" not in frame]
    if missing:
        raise KeyError(f"predictions have no column {', '.join(missing)}")
    return frame[[f"p_{c}" for c in classes]].to_numpy(dtype=np.float64)


def labels_of(frame: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """The true class of each row as an index into ``classes``."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(frame["class"]) - set(index))
    if unknown:
        raise ValueError(f"classes {unknown} are not among {classes}")
    return frame["class"].map(index).to_numpy(dtype=np.intp)


def _log_proba(proba: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(proba, dtype=np.float64), _EPS, 1.0))


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T): T > 1 softens over-confident probabilities; rows sum to 1."""
    return special.softmax(_log_proba(proba) / temperature, axis=1)


def _nll(log_proba: np.ndarray, y: np.ndarray, temperature: float) -> float:
    log_q = special.log_softmax(log_proba / temperature, axis=1)
    return float(-log_q[np.arange(len(y)), y].mean())


def fit_temperature(proba: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``y`` (fit it on the validation split)."""
    log_proba, y = _log_proba(proba), np.asarray(y, dtype=np.intp)
    low, high = np.log(_TEMPERATURE_BOUNDS)
    result = optimize.minimize_scalar(
        lambda log_t: _nll(log_proba, y, float(np.exp(log_t))),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(result.x))


# ----------------------------------------------------------------------------- calibration


def _reliability_bins(y: np.ndarray, proba: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width top-label confidence bin ``(lo, hi]``: count, summed confidence, summed correctness."""
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.digitize(confidence, edges[1:-1], right=True)
    return (
        np.bincount(bins, minlength=n_bins),
        np.bincount(bins, confidence, minlength=n_bins),
        np.bincount(bins, correct, minlength=n_bins),
    )


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: the count-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    y, proba = np.asarray(y), np.asarray(proba, dtype=np.float64)
    _, confidence, correct = _reliability_bins(y, proba, n_bins)
    return float(np.abs(correct - confidence).sum() / len(y))


# ----------------------------------------------------------------------------- metrics


def _number(value) -> float | None:
    """A plain float, or None for a metric that is undefined (NaN)."""
    value = float(value)
    return None if np.isnan(value) else value


def _malignant_mask(classes: list[str]) -> np.ndarray:
    return np.array([is_malignant(c) for c in classes], dtype=bool)


def _one_vs_rest(
    y: np.ndarray, proba: np.ndarray, classes: list[str], score, needs_negatives: bool
) -> dict[str, float | None]:
    """``score(is_class, p_class)`` per class; None for a class absent from ``y`` (or, if needed, the only one)."""
    out = {}
    for i, label in enumerate(classes):
        positive = y == i
        defined = positive.any() and not (needs_negatives and positive.all())
        out[label] = float(score(positive, proba[:, i])) if defined else None
    return out


def _macro(values: dict[str, float | None]) -> float | None:
    defined = [v for v in values.values() if v is not None]
    return float(np.mean(defined)) if defined else None


def classification_metrics(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict:
    """Every metric of one split, as plain JSON-serialisable numbers (None where undefined).

    Keys: accuracy, balanced_accuracy, macro_f1 (over all classes), weighted_f1 (each class's F1 weighted by its
    support: the C-NMC 2019 challenge's ranking metric), per_class {class: precision,
    recall, f1, support}, confusion and confusion_normalised (rows = true class), roc_auc and
    average_precision {class: one-vs-rest} with their macro means over the classes present,
    malignant_sensitivity and malignant_specificity (malignant = any B-ALL class, predicted
    malignant = the argmax class is malignant), ece (top-label, 15 bins), brier (the multi-class Brier score:
    the mean over images of the squared distance between the probabilities and the one-hot truth, 0 to 2) and n.
    """
    y, proba = np.asarray(y, dtype=np.intp), np.asarray(proba, dtype=np.float64)
    labels = np.arange(len(classes))
    pred = proba.argmax(axis=1)
    with warnings.catch_warnings():  # classes predicted but absent from y: sklearn warns, the metric is still right
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = skm.balanced_accuracy_score(y, pred)
    with warnings.catch_warnings():  # rows of saved float32 probabilities sum to 1 only within rounding
        warnings.filterwarnings("ignore", message="The y_prob values do not sum to one")
        brier = float(skm.brier_score_loss(y, proba, labels=labels, scale_by_half=False))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    malignant = _malignant_mask(classes)
    true_m, pred_m = malignant[y], malignant[pred]
    roc_auc = _one_vs_rest(y, proba, classes, skm.roc_auc_score, True)
    average_precision = _one_vs_rest(y, proba, classes, skm.average_precision_score, False)
    return {
        "n": int(len(y)),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(skm.f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(skm.f1_score(y, pred, labels=labels, average="weighted", zero_division=0)),
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion": skm.confusion_matrix(y, pred, labels=labels).tolist(),
        "confusion_normalised": skm.confusion_matrix(y, pred, labels=labels, normalize="true").tolist(),
        "roc_auc": roc_auc,
        "roc_auc_macro": _macro(roc_auc),
        "average_precision": average_precision,
        "average_precision_macro": _macro(average_precision),
        "malignant_sensitivity": _number(
            skm.recall_score(true_m, pred_m, labels=[False, True], pos_label=True, zero_division=np.nan)
        ),
        "malignant_specificity": _number(
            skm.recall_score(true_m, pred_m, labels=[False, True], pos_label=False, zero_division=np.nan)
        ),
        "ece": expected_calibration_error(y, proba),
        "brier": brier,
    }


def _ci_statistics(classes: list[str], n_bins: int = 15) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """All :data:`CI_METRICS` of one resample at once, NaN where undefined (fast: run 1000s of times).

    scikit-learn's input checks cost milliseconds a call, too slow for a bootstrap; these are the same
    definitions computed from one confusion matrix and one ranking (the tests compare them with
    :func:`classification_metrics`).
    """
    k = len(classes)
    malignant = _malignant_mask(classes)

    def statistic(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
        n = len(y)
        pred = proba.argmax(axis=1)
        confusion = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
        tp, support, predicted = np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)
        present = support > 0
        denominator = support + predicted
        f1 = np.divide(2 * tp, denominator, out=np.zeros(k), where=denominator > 0)
        true_m = confusion[malignant].sum()
        true_b = confusion[~malignant].sum()
        # one-vs-rest AUC = Mann-Whitney U / (P * N), ties counted as half (as roc_auc_score)
        ranks = stats.rankdata(proba, axis=0)
        positive = y[:, None] == np.arange(k)
        negatives = n - support
        auc_defined = present & (negatives > 0)
        u = (ranks * positive).sum(axis=0) - support * (support + 1) / 2
        auc = np.divide(u, support * negatives, out=np.full(k, np.nan), where=auc_defined)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.array(
                [
                    tp.sum() / n,
                    (tp[present] / support[present]).mean() if present.any() else np.nan,
                    f1.mean(),
                    (f1 * support).sum() / n,
                    confusion[malignant][:, malignant].sum() / true_m if true_m else np.nan,
                    confusion[~malignant][:, ~malignant].sum() / true_b if true_b else np.nan,
                    auc[auc_defined].mean() if auc_defined.any() else np.nan,
                    expected_calibration_error(y, proba, n_bins),
                    ((proba - (y[:, None] == np.arange(k))) ** 2).sum(axis=1).mean(),
                ]
            )

    return statistic


# ----------------------------------------------------------------------------- bootstrap


def _bootstrap(
    y: np.ndarray,
    proba: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], object],
    n_resamples: int,
    seed: int,
    confidence: float,
) -> np.ndarray:
    """Percentile bootstrap intervals, shape (m, 2), of a statistic returning m values (NaN: undefined).

    Resamples row indices (scipy.stats.bootstrap over ``arange(n)``) so that labels and probability rows
    stay paired. Resamples where a statistic is undefined are left out of its interval; an interval is
    exactly ``(x, x)`` when every resample gives ``x``.
    """
    y, proba = np.asarray(y), np.asarray(proba, dtype=np.float64)

    def on_indices(indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.intp)
        return np.atleast_1d(np.asarray(statistic(y[indices], proba[indices]), dtype=np.float64))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            (np.arange(len(y)),),
            on_indices,
            n_resamples=n_resamples,
            vectorized=False,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    distribution = np.atleast_2d(result.bootstrap_distribution)
    alpha = (1 - confidence) / 2
    intervals = np.full((len(distribution), 2), np.nan)
    for row, values in enumerate(distribution):
        values = values[~np.isnan(values)]
        if len(values) == 0:
            continue
        if np.all(values == values[0]):
            intervals[row] = values[0]
        else:
            intervals[row] = np.quantile(values, [alpha, 1 - alpha])
    return intervals


def bootstrap_ci(
    y: np.ndarray,
    proba: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(y, proba)``, resampling (label, probability row) pairs.

    Each resample costs one call of ``statistic``; NaN results (undefined on that resample) are left
    out. Returns (NaN, NaN) when the statistic is undefined on every resample.
    """
    low, high = _bootstrap(y, proba, statistic, n_resamples, seed, confidence)[0]
    return float(low), float(high)


# ----------------------------------------------------------------------------- the decision policy


def proportion(hits: np.ndarray, confidence: float = 0.95) -> dict:
    """A count of ``hits`` among its fields: count, n, rate and its exact (Clopper-Pearson) interval.

    Exact rather than bootstrap: a bootstrap interval of 0 misses in 340 fields would be [0, 0].
    """
    hits = np.asarray(hits, dtype=bool)
    count, n = int(hits.sum()), int(hits.size)
    if n == 0:
        return {"count": 0, "n": 0, "rate": None, "ci": None}
    interval = stats.binomtest(count, n).proportion_ci(confidence_level=confidence, method="exact")
    return {"count": count, "n": n, "rate": count / n, "ci": [float(interval.low), float(interval.high)]}


def _answered_macro_f1(policy: DecisionPolicy) -> Callable[[np.ndarray, np.ndarray], float]:
    labels = np.arange(len(policy.classes))

    def statistic(y: np.ndarray, proba: np.ndarray) -> float:
        decisions = policy.decide(proba)
        answered = ~decisions.referred
        if not answered.any():
            return np.nan
        return float(
            skm.f1_score(y[answered], decisions.label[answered], labels=labels, average="macro", zero_division=0)
        )

    return statistic


def decision_metrics(
    y: np.ndarray,
    proba: np.ndarray,
    policy: DecisionPolicy,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """What the policy does on one split's calibrated probabilities, each count with its 95 % interval.

    Keys: n, verdicts {verdict: count}, malignant_called_benign and benign_called_malignant (among the
    true malignant / benign fields), referred and referred_per_class {class: ...} (each a
    :func:`proportion`), answered_accuracy (:func:`proportion` of the answered fields: benign for
    benign, the most probable named subtype for malignant), answered_macro_f1 with its bootstrap
    ``answered_macro_f1_ci``, set_coverage (true class inside the prediction set) and mean_set_size.
    """
    y, proba = np.asarray(y, dtype=np.intp), np.asarray(proba, dtype=np.float64)
    decisions = policy.decide(proba)
    malignant = np.array(policy.malignant)[y]
    verdict, referred = decisions.verdict, decisions.referred
    answered = ~referred
    correct = decisions.label == y
    macro_f1 = _answered_macro_f1(policy)
    f1 = macro_f1(y, proba)
    low, high = _bootstrap(y, proba, macro_f1, n_resamples, seed, confidence)[0]
    return {
        "n": int(len(y)),
        "verdicts": {v: int((verdict == v).sum()) for v in VERDICTS},
        "malignant_called_benign": proportion((verdict == "benign")[malignant], confidence),
        "benign_called_malignant": proportion((verdict == "malignant")[~malignant], confidence),
        "referred": proportion(referred, confidence),
        "referred_per_class": {c: proportion(referred[y == i], confidence) for i, c in enumerate(policy.classes)},
        "answered_accuracy": proportion(correct[answered], confidence),
        "answered_macro_f1": None if np.isnan(f1) else f1,
        "answered_macro_f1_ci": None if np.isnan(f1) or np.isnan(low) else [float(low), float(high)],
        "set_coverage": float(decisions.sets[np.arange(len(y)), y].mean()) if len(y) else None,
        "mean_set_size": float(decisions.sets.sum(axis=1).mean()) if len(y) else None,
    }


def tradeoff(
    y_val: np.ndarray,
    proba_val: np.ndarray,
    y_test: np.ndarray,
    proba_test: np.ndarray,
    classes: list[str],
    alphas: tuple[float, ...] = ALPHA_GRID,
) -> list[dict]:
    """Referral against missed malignant fields for each level ``alpha`` (fitted on val, applied to both).

    One row per alpha: the rule-out threshold and, for val and test, the fields referred and the
    malignant fields called benign (counts and rates).
    """
    rows = []
    for alpha in alphas:
        policy = DecisionPolicy.fit(y_val, proba_val, classes, alpha=alpha)
        row = {"alpha": alpha, "rule_out": policy.rule_out}
        for split, y, proba in (("val", y_val, proba_val), ("test", y_test, proba_test)):
            decisions = policy.decide(proba)
            missed = (decisions.verdict == "benign") & np.array(policy.malignant)[np.asarray(y)]
            row.update(
                {
                    f"{split}_referred": int(decisions.referred.sum()),
                    f"{split}_referred_rate": float(decisions.referred.mean()),
                    f"{split}_missed": int(missed.sum()),
                    f"{split}_missed_rate": float(missed.sum() / max(1, np.array(policy.malignant)[y].sum())),
                }
            )
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- one run


def _split_report(
    y: np.ndarray, proba: np.ndarray, classes: list[str], n_resamples: int, seed: int, confidence: float
) -> dict:
    """classification_metrics plus ``<metric>_ci`` [lo, hi] (None where undefined) for :data:`CI_METRICS`."""
    report = classification_metrics(y, proba, classes)
    intervals = _bootstrap(y, proba, _ci_statistics(classes), n_resamples, seed, confidence)
    for name, (low, high) in zip(CI_METRICS, intervals, strict=True):
        defined = report[name] is not None and not np.isnan(low)
        report[f"{name}_ci"] = [float(low), float(high)] if defined else None
    return report


class Evaluation(TypedDict, total=False):
    """A run's ``evaluation.json``: the report of :func:`evaluate`, and ``key``, the cache key that
    :func:`allstudy.evaluation.compare.evaluate_run` stores with it."""

    key: dict[str, Any]
    classes: list[str]
    temperature: float
    ece_before: float
    ece_after: float
    val: dict[str, Any]
    test: dict[str, Any]
    test_calibrated: dict[str, Any]
    decision: dict[str, Any]
    bootstrap: dict[str, Any]


def evaluate(frame: pd.DataFrame, classes: list[str], n_resamples: int = 1000, seed: int = 0) -> Evaluation:
    """The whole evaluation of a run's ``predictions.csv`` frame, JSON-serialisable.

    The temperature is fitted on the ``val`` rows only. Output::

        {"classes": [...], "temperature": T, "ece_before": test ECE, "ece_after": calibrated test ECE,
         "val": M, "test": M, "test_calibrated": M,
         "decision": {"policy": DecisionPolicy.to_json(), "val": D, "test": D, "tradeoff": [...]},
         "bootstrap": {"n_resamples", "seed", "confidence", "method"}}

    where M is :func:`classification_metrics` plus ``<metric>_ci`` for :data:`CI_METRICS`, and D is
    :func:`decision_metrics` of the decision policy fitted on the calibrated val probabilities
    (:mod:`allstudy.evaluation.decision`), with its :func:`tradeoff` over a grid of levels.
    """
    confidence = 0.95
    parts = {split: frame[frame["split"] == split] for split in ("val", "test")}
    for split, part in parts.items():
        if part.empty:
            raise ValueError(f"predictions have no {split!r} rows")
    y = {s: labels_of(p, classes) for s, p in parts.items()}
    proba = {s: probabilities(p, classes) for s, p in parts.items()}
    temperature = fit_temperature(proba["val"], y["val"])
    calibrated = {s: apply_temperature(p, temperature) for s, p in proba.items()}
    report: Evaluation = {"classes": list(classes), "temperature": temperature}
    report["val"] = _split_report(y["val"], proba["val"], classes, n_resamples, seed, confidence)
    report["test"] = _split_report(y["test"], proba["test"], classes, n_resamples, seed, confidence)
    report["test_calibrated"] = _split_report(y["test"], calibrated["test"], classes, n_resamples, seed, confidence)
    report["ece_before"] = report["test"]["ece"]
    report["ece_after"] = report["test_calibrated"]["ece"]
    policy = DecisionPolicy.fit(y["val"], calibrated["val"], classes)
    report["decision"] = {
        "policy": policy.to_json(),
        **{s: decision_metrics(y[s], calibrated[s], policy, n_resamples, seed, confidence) for s in ("val", "test")},
        "tradeoff": tradeoff(y["val"], calibrated["val"], y["test"], calibrated["test"], classes),
    }
    report["bootstrap"] = {"n_resamples": n_resamples, "seed": seed, "confidence": confidence, "method": "percentile"}
    return report


# ----------------------------------------------------------------------------- figures


def plot_confusion(metrics: dict, classes: list[str], normalised: bool = True) -> Figure:
    """The confusion matrix as a heatmap (rows = true class), coloured by row fraction or count, counts annotated."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    counts = np.asarray(metrics["confusion"])
    values = np.asarray(metrics["confusion_normalised"]) if normalised else counts
    if normalised:
        annotations = np.array(
            [[f"{c}\n{v:.0%}" for c, v in zip(cr, vr, strict=True)] for cr, vr in zip(counts, values, strict=True)]
        )
    else:
        annotations = counts.astype(str)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.1 * len(classes) + 1.2))
    sns.heatmap(
        values,
        annot=annotations,
        fmt="",
        cmap="Blues",
        vmin=0,
        vmax=1 if normalised else None,
        xticklabels=classes,
        yticklabels=classes,
        cbar_kws={"label": "fraction of true class" if normalised else "images"},
        ax=ax,
    )
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix" + (" (row-normalised)" if normalised else ""))
    fig.tight_layout()
    plt.close(fig)
    return fig


def _one_vs_rest_curves(
    y: np.ndarray, proba: np.ndarray, classes: list[str], display, title: str, xlabel: str, ylabel: str
) -> Figure:
    import matplotlib.pyplot as plt

    y = np.asarray(y)
    fig, ax = plt.subplots(figsize=(5, 4.2))
    for i, label in enumerate(classes):
        if (y == i).any() and not (y == i).all():
            display.from_predictions(y == i, np.asarray(proba)[:, i], name=label, ax=ax)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.legend(loc="lower left" if display is skm.PrecisionRecallDisplay else "lower right", fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_roc(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> Figure:
    """One-vs-rest ROC curves, one per class present, AUC in the legend."""
    return _one_vs_rest_curves(
        y, proba, classes, skm.RocCurveDisplay, "ROC (one vs rest)", "false positive rate", "true positive rate"
    )


def plot_precision_recall(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> Figure:
    """One-vs-rest precision-recall curves, one per class present, average precision in the legend."""
    return _one_vs_rest_curves(
        y, proba, classes, skm.PrecisionRecallDisplay, "Precision-recall (one vs rest)", "recall", "precision"
    )


def plot_reliability(
    y: np.ndarray, proba: np.ndarray, proba_calibrated: np.ndarray | None = None, n_bins: int = 15
) -> Figure:
    """Reliability diagram: accuracy against mean top-label confidence per bin, before and after calibration."""
    import matplotlib.pyplot as plt

    y = np.asarray(y)
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    curves = [("uncalibrated", proba, "o-")]
    if proba_calibrated is not None:
        curves.append(("temperature-scaled", proba_calibrated, "s-"))
    for name, probs, style in curves:
        probs = np.asarray(probs, dtype=np.float64)
        count, confidence, correct = _reliability_bins(y, probs, n_bins)
        used = count > 0
        ece = expected_calibration_error(y, probs, n_bins)
        ax.plot(
            confidence[used] / count[used],
            correct[used] / count[used],
            style,
            markersize=4,
            label=f"{name} (ECE {ece:.3f})",
        )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="confidence (top probability)",
        ylabel="accuracy",
        title="Reliability diagram",
        aspect="equal",
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_tradeoff(rows: list[dict], alpha: float | None = None, split: str = "test") -> Figure:
    """Fields referred against malignant fields called benign, one point per level of :func:`tradeoff`."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    referred = [100 * r[f"{split}_referred_rate"] for r in rows]
    missed = [r[f"{split}_missed"] for r in rows]
    ax.plot(referred, missed, "o-", color="tab:blue")
    points: dict[tuple[float, int], list[float]] = {}
    for r, x, m in zip(rows, referred, missed, strict=True):  # levels that give the same point share one label
        points.setdefault((round(x, 6), m), []).append(r["alpha"])
    for i, ((x, m), alphas) in enumerate(points.items()):
        chosen = alpha is not None and any(np.isclose(a, alpha) for a in alphas)
        label = "α=" + ", ".join(f"{a:g}" for a in alphas) if len(alphas) < 4 else f"α={alphas[0]:g}…{alphas[-1]:g}"
        ax.annotate(
            label,
            (x, m),
            textcoords="offset points",
            xytext=(4, 6 if i % 2 else -12),
            fontsize=7,
            fontweight="bold" if chosen else "normal",
        )
        if chosen:
            ax.plot([x], [m], "o", color="tab:red", markersize=10, fillstyle="none", label=f"the policy (α={alpha:g})")
    cast("MaxNLocator", ax.yaxis.get_major_locator()).set_params(integer=True)  # the default AutoLocator is one
    ax.set(
        xlabel=f"fields referred for expert review, {split} (%)",
        ylabel=f"malignant fields called benign, {split}",
        title="Referral against missed leukemia\n(each level α fitted on validation)",
    )
    ax.set_ylim(bottom=-0.3)
    if alpha is not None:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    plt.close(fig)
    return fig


# ----------------------------------------------------------------------------- cost


def inference_cost(
    model,
    input_size: int,
    n_images: int = 16,
    batch_size: int = 16,
    model_path: str | os.PathLike | None = None,
    repeats: int = 3,
) -> dict:
    """Inference cost on this machine: median ms per image of a compiled forward pass, parameters, file size.

    Random input in the 0-255 range (the models rescale internally); one warm-up call builds and
    compiles the predict function, then ``n_images`` images in batches of ``batch_size`` are timed
    ``repeats`` times.
    """
    channels = (getattr(model, "input_shape", None) or (None, None, None, 3))[-1] or 3
    rng = np.random.default_rng(0)
    batch = rng.uniform(0, 255, (batch_size, input_size, input_size, channels)).astype(np.float32)
    n_batches = max(1, -(-n_images // batch_size))
    model.predict_on_batch(batch)  # warm-up: traces and compiles
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n_batches):
            model.predict_on_batch(batch)
        timings.append((time.perf_counter() - start) / (n_batches * batch_size))
    return {
        "ms_per_image": float(np.median(timings) * 1000),
        "params": int(model.count_params()),
        "file_bytes": os.path.getsize(model_path) if model_path else None,
        "batch_size": batch_size,
        "n_images": n_batches * batch_size,
        "repeats": repeats,
    }
