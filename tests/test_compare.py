"""Comparing runs: evaluation cache, the choice on validation, summary.json's keys, the chosen-model folder,
and the shortcut baselines on data where the shortcut is planted."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from allstudy.core.atomic import write_csv, write_json
from allstudy.data.datasets import dataset_facts, split_statement
from allstudy.data.prepare import prepare
from allstudy.evaluation.compare import choose, comparison_table, evaluate_run, run_summary, summary
from allstudy.evaluation.controls import colour_features, control_findings, control_table, corner_features, run_baseline
from allstudy.serving.modelcard import model_card, model_json
from allstudy.training.run_folder import finished_runs

pytestmark = pytest.mark.slow  # trains or builds Keras models: the full tier (make test), not make test-fast

CLASSES = ["Benign", "Early", "Pre", "Pro"]


def _fake_run(folder, accuracy_val: float, accuracy_test: float, seed: int, n: int = 80):
    """A run folder whose predictions hit the given accuracies."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, accuracy in (("val", accuracy_val), ("test", accuracy_test)):
        truth = rng.integers(0, 4, n)
        correct = np.arange(n) < round(accuracy * n)
        label = np.where(correct, truth, (truth + 1) % 4)
        proba = np.full((n, 4), 0.1)
        proba[np.arange(n), label] = 0.7
        for i in range(n):
            rows.append(
                {
                    "split": split,
                    "path": f"{CLASSES[truth[i]]}/{split}{i}.jpg",
                    "class": CLASSES[truth[i]],
                    "label": CLASSES[label[i]],
                    **{f"p_{c}": proba[i, j] for j, c in enumerate(CLASSES)},
                }
            )
    write_csv(pd.DataFrame(rows), folder / "predictions.csv")
    params = {
        "arch": folder.name,
        "classes": CLASSES,
        "input_size": 64,
        "preprocessing": "unit",
        "data_hash": "d" * 64,
        "config": {"arch": folder.name, "weights": None, "tta_views": 1, "input_mode": "original"},
        "params": 1000 + seed,
        "train_seconds": 1.0,
        "epoch_seconds_total": 1.0,
        "complete": True,
        "code_version": {"version": "0.1.0", "source_sha256": "s" * 16, "git_commit": None},
        "packages": {"keras": "3", "tensorflow": "2"},
    }
    write_json(folder / "params.json", params)
    return params


@pytest.fixture()
def runs(tmp_path):
    params = {}
    for seed, (name, val, test) in enumerate([("lenet", 0.70, 0.95), ("vgg16", 0.90, 0.80), ("sequential", 0.5, 0.5)]):
        params[name] = _fake_run(tmp_path / "runs" / name, val, test, seed)
    (tmp_path / "runs" / "unfinished").mkdir()
    return tmp_path, params


def test_the_choice_is_made_on_validation_never_on_test(runs):
    out, params = runs
    found = finished_runs(out)
    assert set(found) == {"lenet", "vgg16", "sequential"}  # the folder without params.json is not a run
    evaluations = {n: evaluate_run(p, n_resamples=50) for n, p in found.items()}
    assert choose(evaluations, params) == "vgg16"  # best on validation although lenet is best on test
    with pytest.raises(ValueError, match="no finished runs"):
        choose({}, {})


def test_evaluation_is_cached_until_the_predictions_change(runs):
    out, params = runs
    run_dir = out / "runs" / "lenet"
    first = evaluate_run(run_dir, n_resamples=50)
    stamp = (run_dir / "evaluation.json").stat().st_mtime_ns
    assert evaluate_run(run_dir, n_resamples=50) == first and (run_dir / "evaluation.json").stat().st_mtime_ns == stamp
    _fake_run(run_dir, 0.5, 0.5, seed=9)
    assert evaluate_run(run_dir, n_resamples=50)["test"]["accuracy"] == pytest.approx(0.5)
    with pytest.raises(FileNotFoundError, match="train the run first"):
        evaluate_run(out / "runs" / "unfinished")


def test_summary_has_the_keys_others_rely_on(runs):
    out, params = runs
    evaluations = {n: evaluate_run(p, n_resamples=50) for n, p in finished_runs(out).items()}
    result = json.loads(json.dumps(summary({"data_hash": "d"}, evaluations, params, "vgg16")))
    assert set(result) >= {"data", "chosen", "runs"} and result["chosen"] == "vgg16"
    entry = result["runs"]["lenet"]
    assert {"arch", "weights", "test", "train_seconds", "params"} <= set(entry)
    assert {
        "accuracy",
        "accuracy_ci",
        "macro_f1",
        "macro_f1_ci",
        "malignant_sensitivity",
        "malignant_specificity",
        "ece",
    } <= set(entry["test"])
    assert entry["test"]["accuracy"] == pytest.approx(0.95)
    table = comparison_table(result)
    assert table.set_index("run").loc["lenet", "published_accuracy"].startswith("95.8%")
    assert table["chosen"].sum() == 1
    assert table.set_index("run").loc["vgg16", "published_accuracy"] == "34.4% Pak Heart J 2023 (Taleqani 4-class)"


def test_the_comparison_shows_the_published_figures_of_the_studys_own_dataset():
    assert dataset_facts({"all": 10, "hem": 12}).name == "C-NMC 2019 binary"
    assert dataset_facts(["Benign", "Early", "Pre", "Pro"]).name == "Taleqani 4-class" == dataset_facts([]).name
    run = {
        "arch": "vgg16",
        "weights": "imagenet",
        "input_size": 224,
        "test": {
            "accuracy": 0.9,
            "accuracy_ci": [0.8, 0.95],
            "macro_f1": 0.9,
            "malignant_sensitivity": 0.9,
            "malignant_specificity": 0.9,
            "ece": 0.05,
        },
        "decision": {"malignant_called_benign": 0, "referral_rate": 0.1, "answered_accuracy": 0.95},
        "train_seconds": 1.0,
        "params": 10,
    }
    data = {"classes": {"all": 10, "hem": 12}, "split_kind": "official"}
    row = comparison_table({"data": data, "runs": {"vgg16": run}, "chosen": "vgg16"}).iloc[0]
    assert row["published_accuracy"] == "92.8% transfer-learning study (C-NMC 2019 binary)"
    assert row["dataset"] == "C-NMC 2019 binary" and row["split"].startswith("official")


def test_the_report_says_which_split_and_why():
    official = split_statement(["all", "hem"], "official")
    assert "preliminary-test subjects" in official and "weighted F1" in official
    assert "by subject" in split_statement(["all", "hem"], "grouped")  # a bare fold_* folder
    assert "not by patient" in split_statement(["Benign", "Early", "Pre", "Pro"], "grouped")


def test_model_json_and_card_carry_the_figures_and_caveats(runs):
    out, params = runs
    evaluation = evaluate_run(out / "runs" / "lenet", n_resamples=50)
    meta = model_json("lenet", params["lenet"], evaluation, {"root": "/data/all", "images": 160})
    assert meta["classes"] == CLASSES and meta["malignant"] == {
        "Benign": False,
        "Early": True,
        "Pre": True,
        "Pro": True,
    }
    assert meta["temperature"] == evaluation["temperature"] and meta["decision"] == evaluation["decision"]["policy"]
    card = model_card(
        meta,
        params["lenet"],
        {"root": "/data/all", "images": 160},
        {"rows": [{"control": "colour", "accuracy": 0.8, "accuracy_ci": [0.7, 0.9]}]},
    )
    for section in (
        "## Model details",
        "## Intended use",
        "## Factors",
        "## Metrics",
        "## Evaluation data",
        "## Training data",
        "## Ethical considerations",
        "## Caveats and recommendations",
        "Not a diagnostic device",
        "image-level",
        "colour: 80.0%",
    ):
        assert section in card, section


def _planted(root, n_per_class=16, size=48):
    """Fields whose only class signal is the colour of the background and a mark in the scale-bar corner."""
    rng = np.random.default_rng(0)
    tints = {"Benign": (230, 200, 220), "Early": (200, 220, 230), "Pre": (220, 230, 200), "Pro": (235, 235, 235)}
    for k, (name, tint) in enumerate(tints.items()):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            image = np.clip(np.asarray(tint) + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)
            image[-6:, -6 - 2 * k : -1] = 0  # a corner mark whose width gives the class away
            Image.fromarray(image).save(root / name / f"f{i:03d}.png")
    return root


def test_shortcut_baselines_find_a_planted_shortcut(tmp_path):
    data = prepare(_planted(tmp_path / "fields"), tmp_path / "data", seed=0, fractions=(0.5, 0.25, 0.25))
    for name in ("colour-statistics", "scale-bar-corner"):
        run_dir = run_baseline(name, data, tmp_path, tmp_path / "cache")
        evaluation = evaluate_run(run_dir, n_resamples=50)
        assert evaluation["test"]["accuracy"] >= 0.9, name
        assert run_dir.params().complete and json.loads(run_dir.params_file.read_text())["complete"]
    images = np.zeros((2, 64, 64, 3), np.uint8)
    assert colour_features(images).shape == (2, 30) and corner_features(images).shape[0] == 2


def test_control_table_puts_the_chosen_model_first(runs):
    out, params = runs
    evaluations = {n: evaluate_run(p, n_resamples=50) for n, p in finished_runs(out).items()}
    entries = {n: run_summary(evaluations[n], params[n]) for n in evaluations}
    entries["sequential"]["input_mode"] = "background"
    rows = control_table({"control-x-background": entries["sequential"]}, entries["vgg16"])
    assert [r["control"] for r in rows] == ["chosen model", "control-x-background"]
    assert "masked out" in rows[1]["sees"]
    leaky = {**entries["vgg16"], "split_protocol": "image-level", "leaked_fields": {"val": 5, "test": 7}}
    row = control_table({"control-x-image-split": leaky}, entries["vgg16"])[1]
    assert row["split_protocol"] == "image-level" and row["leaked_test_fields"] == 7
    assert "image-level split (7 of its test fields overlap a training field)" in row["sees"]


def test_control_findings_read_the_summary():
    rows = [
        {"control": "chosen model", "accuracy": 0.99},
        {"control": "control-colour-statistics", "accuracy": 0.95},
        {"control": "control-scale-bar-corner", "accuracy": 0.75},
        {"control": "control-x-original", "accuracy": 0.97},
        {"control": "control-x-background", "accuracy": 0.96},
        {"control": "control-x-mitigated", "accuracy": 0.98},
    ]
    lines = control_findings({"data": {"classes": {"a": 30, "b": 70}}, "controls": {"rows": rows}})
    assert len(lines) == 3 and "**95.0%**" in lines[0] and "70.0%" in lines[0]
    assert "**96.0%**" in lines[1] and "+1.0 points" in lines[2]
    rows.append({"control": "control-x-image-split", "accuracy": 0.995, "leaked_test_fields": 31})
    leak = control_findings({"data": {"classes": {"a": 30, "b": 70}}, "controls": {"rows": rows}})[3]
    assert "**99.5%**" in leak and "against 99.0%" in leak and "+0.5 points" in leak and "31 fields overlap" in leak
    assert control_findings({"data": {}, "controls": {"rows": []}}) == []
