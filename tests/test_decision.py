"""The decision policy: conformal thresholds, its guarantee, verdicts and sets, messages, model.json, metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from allstudy.evaluation import metrics as ev
from allstudy.evaluation.decision import (
    ASSUMPTION,
    DecisionPolicy,
    conformal_threshold,
    fields_needed,
)

CLASSES = ["Benign", "Early", "Pre", "Pro"]


def _fields(n: int, seed: int, signal: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities of a noisy classifier: malignant 3/4 of the fields."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    logits = rng.normal(0.0, 1.0, (n, 4))
    logits[np.arange(n), y] += signal
    proba = np.exp(logits)
    return y, proba / proba.sum(axis=1, keepdims=True)


def test_conformal_threshold_is_the_kth_smallest_score():
    scores = np.arange(1, 100) / 100.0  # 99 scores 0.01 .. 0.99
    assert conformal_threshold(scores, 0.1) == pytest.approx(0.10)  # k = floor(0.1 * 100) = 10
    assert conformal_threshold(scores, 0.01) == pytest.approx(0.01)  # k = 1
    assert conformal_threshold(scores[:98], 0.01) == 0.0  # k = 0: too few, nothing excluded
    assert fields_needed(0.005) == 199 and fields_needed(0.01) == 99 and fields_needed(0.05) == 19
    assert conformal_threshold(np.full(199, 0.3), 0.005) == 0.3 and conformal_threshold(np.full(198, 0.3), 0.005) == 0
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        conformal_threshold(scores, 0.0)


def test_at_most_alpha_of_malignant_fields_are_called_benign():
    """The guarantee, checked by simulation: over many calibration draws, the miss rate averages <= alpha."""
    alpha, rates, referred = 0.02, [], []
    for trial in range(200):
        y_cal, p_cal = _fields(400, seed=trial, signal=1.5)
        y_new, p_new = _fields(400, seed=10_000 + trial, signal=1.5)
        policy = DecisionPolicy.fit(y_cal, p_cal, CLASSES, alpha=alpha)
        decisions = policy.decide(p_new)
        malignant = y_new > 0
        rates.append(np.mean(decisions.verdict[malignant] == "benign"))
        referred.append(decisions.referred.mean())
    assert np.mean(rates) <= alpha + 0.002  # Monte Carlo error of 200 x ~300 fields is ~0.0005
    assert np.mean(rates) >= alpha / 3  # and not vacuous: it does call fields benign
    # the guarantee needs no luck: the same noisy classifier at its argmax misses far more
    y_new, p_new = _fields(4000, seed=1, signal=1.5)
    assert np.mean(p_new[y_new > 0].argmax(axis=1) == 0) > 4 * alpha


def test_the_same_sets_as_crepes_class_conditional_conformal_classifier():
    """The benign/malignant level equals crepes' Mondrian (class-conditional) sets from non-smoothed p-values."""
    crepes = pytest.importorskip("crepes")
    y_cal, p_cal = _fields(300, seed=3, signal=1.0)
    y_new, p_new = _fields(500, seed=4, signal=1.0)
    alpha = 0.05
    policy = DecisionPolicy.fit(y_cal, p_cal, CLASSES, alpha=alpha, alpha_benign=alpha)

    def groups(proba):  # columns: benign, malignant
        return np.stack([proba[:, 0], proba[:, 1:].sum(axis=1)], axis=1)

    group_cal = (y_cal > 0).astype(int)
    classifier = crepes.ConformalClassifier().fit(1.0 - groups(p_cal)[np.arange(len(y_cal)), group_cal], bins=group_cal)
    theirs = np.stack(
        [
            classifier.predict_set(
                1.0 - groups(p_new), bins=np.full(len(p_new), g), confidence=1 - alpha, smoothing=False
            )[:, g]
            for g in (0, 1)
        ],
        axis=1,
    ).astype(bool)
    decisions = policy.decide(p_new)
    ours = np.stack([decisions.sets[:, 0], decisions.p_malignant >= policy.rule_out], axis=1)
    np.testing.assert_array_equal(ours, theirs)


def test_verdicts_follow_from_the_prediction_set():
    policy = DecisionPolicy(
        tuple(CLASSES),
        (False, True, True, True),
        0.005,
        0.05,
        0.05,
        rule_out=0.05,
        benign_limit=0.6,
        subtype_thresholds={"Early": 0.3, "Pre": 0.3, "Pro": 0.3},
        calibration={"n_malignant": 300},
    )
    proba = np.array(
        [
            [0.98, 0.01, 0.005, 0.005],  # leukemia ruled out: {Benign} -> benign
            [0.80, 0.15, 0.03, 0.02],  # looks benign, not ruled out: both -> uncertain
            [0.05, 0.50, 0.44, 0.01],  # benign ruled out, two subtypes it cannot tell apart
            [0.01, 0.01, 0.01, 0.97],  # malignant, one subtype
            [0.30, 0.10, 0.30, 0.30],
        ]
    )  # p_malignant 0.70 > 0.6: benign ruled out
    decisions = policy.decide(proba)
    assert list(decisions.verdict) == ["benign", "uncertain", "malignant", "malignant", "malignant"]
    assert [policy.names(s) for s in decisions.sets] == [
        ["Benign"],
        ["Benign", "Early"],
        ["Early", "Pre"],
        ["Pro"],
        ["Pre", "Pro"],
    ]
    assert [CLASSES[i] for i in decisions.label] == ["Benign", "Benign", "Early", "Pro", "Pre"]
    messages = [
        policy.message(v, s, p)
        for v, s, p in zip(decisions.verdict, decisions.sets, decisions.p_malignant, strict=True)
    ]
    assert messages[0] == "Benign (hematogones): leukemia ruled out at the 99.5 % level"
    assert messages[1].startswith("Benign is likely, but leukemia is not ruled out at the 99.5 % level")
    assert messages[2] == "Malignant: Early Pre-B ALL or Pre-B ALL" and messages[3] == "Malignant: Pro-B ALL"
    # Both categories excluded (the rule-out lies above the benign limit): the subtypes stay, never benign.
    odd = DecisionPolicy(
        tuple(CLASSES),
        (False, True, True, True),
        0.2,
        0.05,
        0.05,
        rule_out=0.7,
        benign_limit=0.3,
        subtype_thresholds={"Early": 0.5, "Pre": 0.5, "Pro": 0.5},
    )
    decisions = odd.decide(np.array([[0.5, 0.4, 0.05, 0.05], [0.8, 0.1, 0.05, 0.05]]))
    assert list(decisions.verdict) == ["malignant", "benign"]
    assert [odd.names(s) for s in decisions.sets] == [["Early"], ["Benign"]]


def test_too_few_malignant_fields_rule_nothing_out_and_say_so():
    y, proba = _fields(120, seed=5, signal=5.0)  # about 90 malignant: alpha 0.005 needs 199
    policy = DecisionPolicy.fit(y, proba, CLASSES)
    assert policy.rule_out == 0.0 and policy.calibration["fields_needed"]["alpha"] == 199
    decisions = policy.decide(proba)
    assert not (decisions.verdict == "benign").any()
    assert (decisions.verdict[y == 0] == "uncertain").all() and (decisions.verdict[y > 0] == "malignant").mean() > 0.9
    message = policy.message("uncertain", decisions.sets[y == 0][0], 0.01)
    assert "fewer than the 199 that level needs" in message


def test_the_policy_round_trips_through_model_json():
    y, proba = _fields(800, seed=6)
    policy = DecisionPolicy.fit(y, proba, CLASSES, alpha=0.01)
    record = json.loads(json.dumps(policy.to_json()))
    assert DecisionPolicy.from_json(record) == policy
    assert record["assumption"] == ASSUMPTION and record["calibration"]["n"] == 800
    assert record["calibration"]["n_per_class"] == {c: int((y == i).sum()) for i, c in enumerate(CLASSES)}
    with pytest.raises(ValueError, match="not a decision policy"):
        DecisionPolicy.from_json({"threshold": 0.5})
    with pytest.raises(ValueError, match="lacks or garbles"):
        DecisionPolicy.from_json({k: v for k, v in record.items() if k != "rule_out"})


def test_binary_classes_ruled_out_and_named():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 600)  # all = 0 (malignant), hem = 1 (normal)
    p_all = np.clip(np.where(y == 0, rng.beta(8, 2, 600), rng.beta(2, 8, 600)), 1e-6, 1 - 1e-6)
    proba = np.stack([p_all, 1 - p_all], axis=1)
    policy = DecisionPolicy.fit(y, proba, ["all", "hem"], alpha=0.01)
    decisions = policy.decide(proba)
    assert set(decisions.verdict) <= {"benign", "malignant", "uncertain"}
    assert np.mean(decisions.verdict[y == 0] == "benign") <= 0.01
    malignant_sets = decisions.sets[decisions.verdict == "malignant"]
    assert (malignant_sets == [True, False]).all()


def test_decision_metrics_count_with_exact_intervals():
    y = np.array([1, 1, 1, 2, 0, 0])
    proba = np.array(
        [
            [0.99, 0.01, 0, 0],  # malignant called benign
            [0.5, 0.5, 0, 0],  # referred
            [0, 1.0, 0, 0],
            [0, 0, 1.0, 0],
            [1.0, 0, 0, 0],
            [0.5, 0.5, 0, 0],
        ]
    )
    policy = DecisionPolicy(
        tuple(CLASSES),
        (False, True, True, True),
        0.005,
        0.05,
        0.05,
        rule_out=0.1,
        benign_limit=0.6,
        subtype_thresholds={"Early": 0.5, "Pre": 0.5, "Pro": 0.5},
    )
    metrics = ev.decision_metrics(y, proba, policy, n_resamples=50)
    json.dumps(metrics, allow_nan=False)
    missed = metrics["malignant_called_benign"]
    assert (missed["count"], missed["n"]) == (1, 4) and missed["rate"] == 0.25
    assert missed["ci"] == pytest.approx([0.00631, 0.80589], abs=1e-4)  # Clopper-Pearson, 1 of 4
    assert metrics["verdicts"] == {"benign": 2, "malignant": 2, "uncertain": 2}
    assert (metrics["referred"]["count"], metrics["referred"]["n"]) == (2, 6)
    assert metrics["referred_per_class"]["Benign"]["count"] == 1 and metrics["referred_per_class"]["Pro"]["n"] == 0
    assert metrics["answered_accuracy"]["count"] == 3 and metrics["answered_accuracy"]["n"] == 4
    assert metrics["benign_called_malignant"]["count"] == 0
    nothing = ev.proportion(np.zeros(0, bool))
    assert nothing == {"count": 0, "n": 0, "rate": None, "ci": None}
    assert ev.proportion(np.zeros(340, bool))["ci"][1] == pytest.approx(0.01079, abs=1e-4)  # 0 of 340: not [0, 0]


def test_tradeoff_rules_out_more_as_alpha_grows():
    y_val, p_val = _fields(1500, seed=8, signal=2.0)
    y_test, p_test = _fields(1500, seed=9, signal=2.0)
    rows = ev.tradeoff(y_val, p_val, y_test, p_test, CLASSES)
    assert [r["alpha"] for r in rows] == sorted(r["alpha"] for r in rows)
    rule_out = [r["rule_out"] for r in rows]
    assert rule_out == sorted(rule_out) and rule_out[0] < rule_out[-1]
    missed = [r["test_missed"] for r in rows]
    assert missed[0] <= missed[-1] and rows[-1]["test_referred"] < rows[0]["test_referred"]
    referred = [r["test_referred"] for r in rows]
    assert referred == sorted(referred, reverse=True)  # ruling out more never refers more
    figure = ev.plot_tradeoff(rows, 0.005)
    assert figure.axes[0].get_xlabel().startswith("fields referred")
