"""Integration on the real images in ../shared/data (skipped with the reason when it is absent).

Validates the duplicate thresholds on all-taleqani against what its README documents: the 35
byte-identical pairs, the near pair Pro-744/745, the overlapping pairs it names, no group across
classes and no giant group; and the C-NMC sample's subjects.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from allstudy.data.manifest import read_manifest_csv
from allstudy.data.split import SPLIT_KINDS, make_split, split_counts

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TALEQANI = SHARED / "all-taleqani"
CNMC = SHARED / "cnmc"
pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not TALEQANI.is_dir(), reason=f"real data not found at {SHARED} (../shared/data)"),
]

EXACT_PAIRS = (
    "017=018 019=020 021=022 029=030 037=038 050=051 061=062 074=075 077=078 079=080 089=090 "
    "095=096 097=098 102=103 104=105 106=107 112=113 114=115 117=118 122=123 128=129 130=131 "
    "132=133 134=135 136=137 142=143 145=146 151=152 154=155 157=158 170=171 172=173 177=178 "
    "181=182 188=189"
).split()
NAMED_OVERLAPS = [
    ("Pre/WBC-Malignant-Pre-729.jpg", "Pre/WBC-Malignant-Pre-730.jpg"),
    ("Pre/WBC-Malignant-Pre-755.jpg", "Pre/WBC-Malignant-Pre-756.jpg"),
    ("Pre/WBC-Malignant-Pre-407.jpg", "Pre/WBC-Malignant-Pre-408.jpg"),
    ("Benign/WBC-Benign-351.jpg", "Benign/WBC-Benign-354.jpg"),
    ("Pro/WBC-Malignant-Pro-744.jpg", "Pro/WBC-Malignant-Pro-745.jpg"),
]


def _scan(folder: Path, out: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "allstudy", "data", "scan", str(folder), "--json", "--quiet", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def taleqani(tmp_path_factory):
    out = tmp_path_factory.mktemp("taleqani")
    return _scan(TALEQANI, out), out


def test_counts_and_no_problems(taleqani):
    report, _ = taleqani
    assert report["images"] == 2744
    assert report["classes"] == {"Benign": 430, "Early": 821, "Pre": 825, "Pro": 668}
    assert report["problems"] == []


def test_the_35_exact_pairs(taleqani):
    report, _ = taleqani
    expected = sorted(
        [f"Pro/WBC-Malignant-Pro-{a}.jpg", f"Pro/WBC-Malignant-Pro-{b}.jpg"]
        for a, b in (pair.split("=") for pair in EXACT_PAIRS)
    )
    assert sorted(report["exact_duplicate_groups"]) == expected


def test_near_and_overlapping_pairs_named_by_the_readme(taleqani):
    report, _ = taleqani
    group_of = {path: i for i, group in enumerate(report["near_duplicate_groups"]) for path in group}
    for a, b in NAMED_OVERLAPS:
        assert a in group_of and group_of.get(a) == group_of.get(b), (a, b)


def test_no_group_across_classes_and_no_giant_group(taleqani):
    report, _ = taleqani
    groups = report["exact_duplicate_groups"] + report["near_duplicate_groups"]
    assert all(len({path.split("/")[0] for path in group}) == 1 for group in groups)
    sizes = Counter(len(group) for group in report["near_duplicate_groups"])
    assert max(sizes) <= 16, sizes  # the README: groups of 2 to 8; chains of re-captures may join a few
    in_groups = sum(len(group) for group in report["near_duplicate_groups"])
    assert 0.15 * 2744 < in_groups < 0.5 * 2744  # "roughly a quarter" of the full release


def test_split_keeps_every_group_in_one_fold(taleqani):
    _, out = taleqani
    table = read_manifest_csv(out / "manifest.csv")
    links = pd.read_csv(out / "duplicates.csv", keep_default_na=False)
    split = make_split(table, links, seed=0)
    assert split.groupby("group")["split"].nunique().max() == 1
    counts = split_counts(split)
    for label in ("Benign", "Early", "Pre", "Pro"):
        share = counts.loc[label] / counts.loc[label].sum()
        assert share["train"] == pytest.approx(0.70, abs=0.02)
        assert share["test"] == pytest.approx(0.15, abs=0.02)


@pytest.mark.skipif(not CNMC.is_dir(), reason=f"C-NMC sample not found at {CNMC}")
def test_cnmc_sample_subjects(tmp_path):
    report = _scan(CNMC, tmp_path)
    assert report["images"] == 6
    assert report["classes"] == {"all": 3, "hem": 3}
    assert report["subjects"] == ["UID_1", "UID_H6"]
    table = read_manifest_csv(tmp_path / "manifest.csv")
    assert set(zip(table["class"], table["subject"], strict=True)) == {("all", "UID_1"), ("hem", "UID_H6")}


CNMC_KAGGLE = SHARED / "cnmc-kaggle"


@pytest.mark.skipif(not CNMC_KAGGLE.is_dir(), reason=f"C-NMC Kaggle replica not found at {CNMC_KAGGLE}")
def test_cnmc_kaggle_replica_reads_as_downloaded(tmp_path):
    """Two classes in the training folds, the 12 preliminary-test cells labelled by their CSV, the 2
    final-phase cells unlabelled, the CSV no problem (data/README.md section 2b)."""
    report = _scan(CNMC_KAGGLE, tmp_path)
    assert report["images"] == 52 and report["problems"] == []
    assert report["parts"] == {"train": {"all": 18, "hem": 20}, "test": {"all": 6, "hem": 6}}
    assert report["classes"] == {"all": 24, "hem": 26}
    assert len(report["unlabelled"]) == 2 and all("final_phase" in p for p in report["unlabelled"])
    # two centred cells of different subjects on black look alike: only one subject's files are compared
    assert report["exact_duplicate_groups"] == [] and report["near_duplicate_groups"] == []
    table = read_manifest_csv(tmp_path / "manifest.csv")
    test = table[table["part"] == "test"]
    assert test["subject"].nunique() == 6 and (test["subject"] != "").all()  # from the CSV's Patient_ID
    train_subjects = set(table.loc[table["part"] == "train", "subject"])
    assert not train_subjects & set(test["subject"])  # the parts are subject-disjoint, as released


@pytest.mark.skipif(not CNMC_KAGGLE.is_dir(), reason=f"C-NMC Kaggle replica not found at {CNMC_KAGGLE}")
def test_cnmc_kaggle_replica_split_is_the_official_one(tmp_path):
    from allstudy.data.prepare import prepare

    prepared = prepare(CNMC_KAGGLE, tmp_path / "data")
    split, table = prepared.split, prepared.manifest
    test_subjects = set(table.loc[table["part"] == "test", "subject"])
    assert len(test_subjects) == 6 and set(split.loc[split["split"] == "test", "subject"]) == test_subjects
    assert prepared.info["split_kind"] == "official" and "preliminary-test" in SPLIT_KINDS[prepared.info["split_kind"]]
    assert len(split) == 50 and set(split["split"]) == {"train", "val", "test"}  # the 2 unlabelled left out


def _tcia_release(folder: Path) -> Path:
    """TCIA's copy of the release, built from the replica: the three parts at the top, the CSV inside."""
    kaggle = CNMC_KAGGLE / "C-NMC_Leukemia"
    tcia = folder / "download"
    for source, target in [
        (kaggle / "training_data", tcia / "C-NMC_training_data"),
        (kaggle / "validation_data" / "C-NMC_test_prelim_phase_data", tcia / "C-NMC_test_prelim_phase_data"),
        (kaggle / "testing_data" / "C-NMC_test_final_phase_data", tcia / "C-NMC_test_final_phase_data"),
    ]:
        shutil.copytree(source, target)
    labels = "C-NMC_test_prelim_phase_data_labels.csv"
    shutil.copy(kaggle / "validation_data" / labels, tcia / "C-NMC_test_prelim_phase_data" / labels)
    return folder


@pytest.mark.skipif(not CNMC_KAGGLE.is_dir(), reason=f"C-NMC Kaggle replica not found at {CNMC_KAGGLE}")
def test_cnmc_replica_in_tcias_layout_reads_the_same(tmp_path):
    from allstudy.data.prepare import prepare

    root = _tcia_release(tmp_path)
    report = _scan(root, tmp_path / "scan")
    assert "tcia" in report["layout"] and report["problems"] == []
    assert report["parts"] == {"train": {"all": 18, "hem": 20}, "test": {"all": 6, "hem": 6}}
    assert len(report["unlabelled"]) == 2 and report["near_duplicate_groups"] == []
    prepared = prepare(root, tmp_path / "data")
    assert prepared.info["split_kind"] == "official" and (prepared.split["split"] == "test").sum() == 12


@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.skipif(not CNMC_KAGGLE.is_dir(), reason=f"C-NMC Kaggle replica not found at {CNMC_KAGGLE}")
def test_the_study_runs_end_to_end_on_the_c_nmc_release_as_downloaded(tmp_path):
    """`allstudy run` on TCIA's layout of the real cells (quick profile, MobileNet: counts too small for accuracy,
    the point is every step on the real format): the official split, a report in the C-NMC study's terms, a
    binary chosen model that scores the unlabelled final-phase cells."""
    from allstudy.study.runner import run

    weights = SHARED.parent / "weights"
    out = tmp_path / "out"
    run(
        _tcia_release(tmp_path),
        "quick",
        out,
        architectures=["mobilenet"],
        jobs=2,
        weights_dir=weights if weights.is_dir() else None,
    )

    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["split_kind"] == "official" and set(summary["data"]["classes"]) == {"all", "hem"}
    split = pd.read_csv(out / "data" / "splits.csv", keep_default_na=False)
    test_subjects = {"UID_13", "UID_24", "UID_25", "UID_H3", "UID_H4", "UID_H5"}  # from the labels CSV
    assert set(split.loc[split["split"] == "test", "subject"]) == test_subjects
    assert not test_subjects & set(split.loc[split["split"] != "test", "subject"])
    chosen = summary["runs"][summary["chosen"]]
    assert {"weighted_f1", "malignant_sensitivity", "malignant_specificity"} <= set(chosen["test"])

    report = (out / "report.html").read_text(encoding="utf-8")
    for text in ("C-NMC 2019 binary", "The official split", "91.4%", "weighted_f1", "malignant test cells"):
        assert text in report, text
    model = out / "models" / "chosen"
    meta = json.loads((model / "model.json").read_text())
    assert meta["classes"] == ["all", "hem"] and meta["dataset"] == "C-NMC 2019 binary"
    card = (model / "MODEL_CARD.md").read_text()
    assert "ALL blast" in card and "weighted F1" in card and "70 test cells" in card
    assert "malignant cells called benign" in card and "fields called" not in card

    final = tmp_path / "download" / "C-NMC_test_final_phase_data"
    scored = subprocess.run(
        [
            sys.executable,
            "-m",
            "allstudy",
            "predict",
            str(final),
            "--model",
            str(model),
            "--out",
            str(tmp_path / "final.csv"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert scored.returncode == 0, scored.stderr
    predictions = pd.read_csv(tmp_path / "final.csv", keep_default_na=False)
    assert len(predictions) == 2 and {"p_all", "p_hem", "verdict"} <= set(predictions.columns)

    from allstudy.serving.app import build_app, make_examples, model_panel
    from allstudy.serving.predictor import Predictor

    panel = model_panel(Predictor(model).info)
    assert "held-out cells" in panel and "weighted F1" in panel and "ALL blast (malignant)" in panel
    build_app(model)  # the app builds on the binary model
    examples = make_examples(tmp_path / "examples", classes=meta["classes"])
    assert [label for _, label in examples] == ["synthetic ALL blast", "synthetic normal B cell"]
