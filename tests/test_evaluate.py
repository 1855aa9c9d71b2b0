"""Run metrics: hand-checked scores, temperature scaling, ECE, bootstrap CIs, abstention, evaluate(), figures, cost."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from allstudy.evaluation import metrics as ev  # noqa: E402

pytestmark = pytest.mark.slow  # trains or builds Keras models: the full tier (make test), not make test-fast

CLASSES = ["Benign", "Early", "Pre", "Pro"]


def _onehot_proba(pred: list[int], k: int = 4, confidence: float = 0.7) -> np.ndarray:
    """Probability rows whose argmax is ``pred``."""
    proba = np.full((len(pred), k), (1 - confidence) / (k - 1))
    proba[np.arange(len(pred)), pred] = confidence
    return proba


def _sample(proba: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label per row drawn from that row's distribution."""
    return (rng.random((len(proba), 1)) > np.cumsum(proba, axis=1)).sum(axis=1).clip(max=proba.shape[1] - 1)


def _overconfident(n: int, temperature: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z) and a model that says softmax(temperature * z)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, 4))
    return _sample(softmax(logits, axis=1), rng), softmax(temperature * logits, axis=1)


def _predictions_frame(n_val: int, n_test: int, seed: int) -> pd.DataFrame:
    """A frame laid out like a run's predictions.csv (split, path, class, label, p_<class>)."""
    rows = []
    for split, n, offset in (("val", n_val, 0), ("test", n_test, 1)):
        y, proba = _overconfident(n, 2.0, seed + offset)
        frame = pd.DataFrame(
            {
                "split": split,
                "path": [f"{CLASSES[c]}/{split}-{i}.jpg" for i, c in enumerate(y)],
                "class": [CLASSES[c] for c in y],
                "label": [CLASSES[c] for c in proba.argmax(1)],
            }
        )
        for i, label in enumerate(CLASSES):
            frame[f"p_{label}"] = proba[:, i]
        rows.append(frame)
    return pd.concat(rows, ignore_index=True)


def test_probabilities_follow_the_class_order_not_the_column_order():
    frame = pd.DataFrame({"p_b": [0.8, 0.3], "p_a": [0.2, 0.7], "class": ["b", "a"]})
    np.testing.assert_allclose(ev.probabilities(frame, ["a", "b"]), [[0.2, 0.8], [0.7, 0.3]])
    np.testing.assert_array_equal(ev.labels_of(frame, ["a", "b"]), [1, 0])
    with pytest.raises(KeyError, match="p_c"):
        ev.probabilities(frame, ["a", "b", "c"])
    with pytest.raises(ValueError, match="not among"):
        ev.labels_of(frame, ["a"])


def test_perfect_predictions_score_one_with_a_degenerate_interval():
    y = np.repeat(np.arange(4), 10)
    proba = _onehot_proba(list(y), confidence=0.97)
    metrics = ev.classification_metrics(y, proba, CLASSES)
    for name in (
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "roc_auc_macro",
        "average_precision_macro",
        "malignant_sensitivity",
        "malignant_specificity",
    ):
        assert metrics[name] == 1.0, name
    assert metrics["confusion"] == (np.eye(4, dtype=int) * 10).tolist()
    accuracy = lambda yy, pp: float((pp.argmax(1) == yy).mean())  # noqa: E731
    assert ev.bootstrap_ci(y, proba, accuracy, n_resamples=200) == (1.0, 1.0)


def test_a_known_confusion_matrix_from_hand_made_probabilities():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    pred = [0, 0, 1, 1, 2, 2, 2, 3, 3, 0]
    metrics = ev.classification_metrics(y, _onehot_proba(pred), CLASSES)
    assert metrics["confusion"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 2, 1], [1, 0, 0, 1]]
    np.testing.assert_allclose(metrics["confusion_normalised"][0], [2 / 3, 1 / 3, 0, 0])
    assert metrics["accuracy"] == pytest.approx(0.6) and metrics["n"] == 10
    assert metrics["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3 + 1 / 2) / 4)
    assert metrics["per_class"]["Benign"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    assert metrics["per_class"]["Early"]["precision"] == pytest.approx(0.5)
    assert metrics["macro_f1"] == pytest.approx(np.mean([2 / 3, 0.5, 2 / 3, 0.5]))


def test_malignant_view_counts_benign_called_malignant_as_a_false_positive():
    # Benign->Early (FP), Benign->Benign (TN), Early->Pre (TP: wrong subtype, still malignant),
    # Pro->Benign (FN), Pre->Pre (TP), Pro->Pro (TP)
    y = np.array([0, 0, 1, 3, 2, 3])
    metrics = ev.classification_metrics(y, _onehot_proba([1, 0, 2, 0, 2, 3]), CLASSES)
    assert metrics["malignant_sensitivity"] == pytest.approx(3 / 4)
    assert metrics["malignant_specificity"] == pytest.approx(1 / 2)
    only_malignant = ev.classification_metrics(np.array([1, 2]), _onehot_proba([1, 0]), CLASSES)
    assert only_malignant["malignant_specificity"] is None and only_malignant["malignant_sensitivity"] == 0.5
    assert only_malignant["roc_auc"]["Benign"] is None and only_malignant["average_precision"]["Pro"] is None
    binary = ev.classification_metrics(np.array([0, 0, 1, 1]), _onehot_proba([0, 1, 1, 1], k=2), ["all", "hem"])
    assert binary["malignant_sensitivity"] == 0.5 and binary["malignant_specificity"] == 1.0  # "all" is malignant


def test_temperature_is_recovered_and_calibration_improves():
    y, proba = _overconfident(6000, 2.5, seed=1)
    temperature = ev.fit_temperature(proba, y)
    assert temperature == pytest.approx(2.5, rel=0.1)
    calibrated = ev.apply_temperature(proba, temperature)
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0)
    np.testing.assert_array_equal(calibrated.argmax(1), proba.argmax(1))  # scaling never changes a prediction
    np.testing.assert_allclose(ev.apply_temperature(proba, 1.0), proba, atol=1e-9)
    before, after = ev.expected_calibration_error(y, proba), ev.expected_calibration_error(y, calibrated)
    assert after < before / 2 and after < 0.03
    # already calibrated probabilities: T close to 1; an exactly one-hot model needs no clipping errors
    y_cal, proba_cal = _overconfident(6000, 1.0, seed=2)
    assert ev.fit_temperature(proba_cal, y_cal) == pytest.approx(1.0, rel=0.1)
    assert 0.05 <= ev.fit_temperature(np.eye(4)[[0, 1, 2, 3, 0]], np.array([0, 1, 2, 3, 1])) <= 20


def test_ece_by_hand_and_on_a_calibrated_set():
    proba = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    y = np.array([0, 1, 1, 1])  # bin 0.9: accuracy 0.5 (gap 0.4); bin 0.6: accuracy 1 (gap 0.4)
    assert ev.expected_calibration_error(y, proba) == pytest.approx(0.4)
    rng = np.random.default_rng(3)
    calibrated = rng.dirichlet(np.full(4, 0.5), 20000)
    assert ev.expected_calibration_error(_sample(calibrated, rng), calibrated) < 0.02


def test_bootstrap_interval_contains_the_estimate_narrows_with_data_and_is_reproducible():
    accuracy = lambda yy, pp: float((pp.argmax(1) == yy).mean())  # noqa: E731
    rng = np.random.default_rng(4)
    widths = []
    for n in (100, 1600):
        y = rng.integers(0, 4, n)
        pred = np.where(rng.random(n) < 0.8, y, (y + 1) % 4)
        proba = _onehot_proba(list(pred))
        low, high = ev.bootstrap_ci(y, proba, accuracy, n_resamples=500, seed=0)
        assert low < accuracy(y, proba) < high
        widths.append(high - low)
        assert ev.bootstrap_ci(y, proba, accuracy, n_resamples=500, seed=0) == (low, high)
    assert widths[1] < widths[0] / 2.5  # ~ 1 / sqrt(16) = 1/4


def test_fast_bootstrap_statistics_agree_with_scikit_learn():
    rng = np.random.default_rng(5)
    for y, proba in [
        (rng.integers(0, 4, 300), rng.dirichlet(np.ones(4), 300).round(1)),  # ties in scores
        (rng.integers(1, 4, 50), rng.dirichlet(np.ones(4), 50)),
    ]:  # no Benign at all
        fast = ev._ci_statistics(CLASSES)(y, proba)
        metrics = ev.classification_metrics(y, proba, CLASSES)
        expected = [np.nan if metrics[name] is None else metrics[name] for name in ev.CI_METRICS]
        np.testing.assert_allclose(fast, expected, rtol=1e-12, atol=1e-12)


def test_evaluate_a_predictions_frame():
    frame = _predictions_frame(300, 200, seed=7)
    report = ev.evaluate(frame, CLASSES, n_resamples=200, seed=0)
    json.dumps(report, allow_nan=False)
    assert set(report) == {
        "classes",
        "temperature",
        "ece_before",
        "ece_after",
        "val",
        "test",
        "test_calibrated",
        "decision",
        "bootstrap",
    }
    assert report["temperature"] == pytest.approx(2.0, rel=0.3)
    assert report["ece_before"] == report["test"]["ece"] and report["ece_after"] == report["test_calibrated"]["ece"]
    assert report["ece_after"] < report["ece_before"]
    for part in ("val", "test", "test_calibrated"):
        metrics = report[part]
        for name in ev.CI_METRICS:
            low, high = metrics[f"{name}_ci"]
            assert 0 <= low <= high <= 1, (part, name)
        for key in (
            "accuracy",
            "balanced_accuracy",
            "macro_f1",
            "per_class",
            "confusion",
            "confusion_normalised",
            "roc_auc",
            "roc_auc_macro",
            "average_precision",
            "average_precision_macro",
            "malignant_sensitivity",
            "malignant_specificity",
            "ece",
            "n",
        ):
            assert key in metrics, (part, key)
    assert report["test"]["n"] == 200 and report["val"]["n"] == 300
    assert report["test"]["accuracy"] == report["test_calibrated"]["accuracy"]
    decision = report["decision"]
    assert set(decision) == {"policy", "val", "test", "tradeoff"}
    assert decision["policy"]["calibration"] | {"split": "val", "n": 300} == decision["policy"]["calibration"]
    assert decision["test"]["n"] == 200 and len(decision["tradeoff"]) == len(ev.ALPHA_GRID)
    assert decision["val"]["malignant_called_benign"]["n"] == int(
        (frame[frame["split"] == "val"]["class"] != "Benign").sum()
    )
    with pytest.raises(ValueError, match="no 'val' rows"):
        ev.evaluate(frame[frame["split"] == "test"], CLASSES, n_resamples=10)


def test_figures_are_figures():
    from matplotlib.figure import Figure

    y, proba = _overconfident(200, 2.0, seed=8)
    metrics = ev.classification_metrics(y, proba, CLASSES)
    figures = [
        ev.plot_confusion(metrics, CLASSES),
        ev.plot_confusion(metrics, CLASSES, normalised=False),
        ev.plot_roc(y, proba, CLASSES),
        ev.plot_precision_recall(y, proba, CLASSES),
        ev.plot_reliability(y, proba, ev.apply_temperature(proba, 2.0)),
        ev.plot_reliability(y, proba),
    ]
    assert all(isinstance(fig, Figure) for fig in figures)
    assert len(figures[2].axes[0].get_legend().get_texts()) == 4
    assert "ECE" in figures[4].axes[0].get_legend().get_texts()[1].get_text()


def test_inference_cost_of_a_tiny_model(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten(), keras.layers.Dense(4)])
    model.save(tmp_path / "tiny.keras")
    cost = ev.inference_cost(model, 16, n_images=32, batch_size=16, model_path=str(tmp_path / "tiny.keras"))
    assert cost["ms_per_image"] > 0
    assert cost["params"] == 16 * 16 * 3 * 4 + 4
    assert cost["file_bytes"] == (tmp_path / "tiny.keras").stat().st_size > 0
    assert ev.inference_cost(model, 16, n_images=8, batch_size=8)["file_bytes"] is None
