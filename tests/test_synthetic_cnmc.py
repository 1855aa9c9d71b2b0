"""Tests of the synthetic C-NMC-like release (allstudy.data.synthetic_cnmc)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from allstudy.data.layouts import CNMC_LABELS, subject_of
from allstudy.data.prepare import prepare, scan
from allstudy.data.synthetic import SYNTHETIC_MARKER
from allstudy.data.synthetic_cnmc import RELEASE, example_cells, generate_cnmc_dataset
from allstudy.study.study_data import resolve_data

SMALL = {"n_per_class": 16, "subjects": 5, "test_subjects": 1, "n_unlabelled": 3, "seed": 2, "size": 96}


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_cnmc_dataset(tmp_path_factory.mktemp("cnmc") / "data", **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_release_scans_as_the_real_download(release: Path) -> None:
    """Kaggle's layout, two classes, the preliminary-test subjects apart, the final phase unlabelled, no duplicate
    groups (distinct cells of one subject are not overlapping fields)."""
    found = scan(release)
    report = found.report()
    assert report["layout"].startswith("c-nmc-2019 release (kaggle")
    assert report["problems"] == []
    assert report["parts"] == {"train": {"all": 13, "hem": 13}, "test": {"all": 3, "hem": 3}}
    assert len(report["unlabelled"]) == 3
    assert report["exact_duplicate_groups"] == [] and report["near_duplicate_groups"] == []
    table = found.manifest.usable
    subjects = {part: set(table.loc[table["part"] == part, "subject"]) for part in ("train", "test")}
    assert subjects["test"] == {"UID_5", "UID_H5"} and not subjects["train"] & subjects["test"]
    assert all(
        subject_of(Path(p).name) == s for p, s in zip(table["path"], table["subject"], strict=True) if "fold_" in p
    )


def test_cells_are_single_cells_on_black_in_bmp(release: Path) -> None:
    paths = sorted((release / RELEASE / "training_data").rglob("*.bmp"))
    with Image.open(paths[0]) as image:
        assert image.format == "BMP" and image.size == (96, 96) and image.mode == "RGB"
    for path in paths[:6]:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        cell = rgb.max(axis=2) > 0
        assert 0.08 < cell.mean() < 0.6, path  # one cell, about half the side across
        assert not cell[0].any() and not cell[-1].any() and not cell[:, 0].any()  # black around it
        assert rgb[cell].mean(axis=0)[1] < rgb[cell].mean(axis=0)[[0, 2]].min()  # purple: green absorbed most


def test_the_labels_csv_names_each_test_cell(release: Path) -> None:
    rows = list(csv.DictReader((release / RELEASE / "validation_data" / CNMC_LABELS).open()))
    prelim = release / RELEASE / "validation_data" / "C-NMC_test_prelim_phase_data"
    assert sorted(r["new_names"] for r in rows) == sorted(p.name for p in prelim.iterdir())
    assert all(r["labels"] == ("1" if r["Patient_ID"].endswith("_all.bmp") else "0") for r in rows)


def test_the_official_split_tests_on_the_preliminary_subjects(release: Path, tmp_path: Path) -> None:
    prepared = prepare(release, tmp_path / "data", seed=0, fractions=(0.6, 0.2, 0.2))
    splits = prepared.split
    test = splits[splits["split"] == "test"]
    assert set(test["subject"]) == {"UID_5", "UID_H5"}
    assert prepared.info["split_kind"] == "official"
    for split in ("train", "val"):
        assert set(splits.loc[splits["split"] == split, "class"]) == {"all", "hem"}
    by_subject = splits.groupby("subject")["split"].nunique()
    assert (by_subject == 1).all()  # every subject in one split


def test_generation_is_deterministic_reused_and_rebuilt(tmp_path: Path, release: Path) -> None:
    again = generate_cnmc_dataset(tmp_path / "again", **SMALL)
    assert _files(again) == _files(release)
    stamp = (again / SYNTHETIC_MARKER).stat().st_mtime_ns
    generate_cnmc_dataset(tmp_path / "again", **SMALL)
    assert (again / SYNTHETIC_MARKER).stat().st_mtime_ns == stamp  # reused, not rewritten
    generate_cnmc_dataset(tmp_path / "again", **{**SMALL, "n_unlabelled": 1})
    assert len(list((again / RELEASE / "testing_data").rglob("*.bmp"))) == 1
    assert json.loads((again / SYNTHETIC_MARKER).read_text())["generator"] == "allstudy.synthetic_cnmc"


def test_subjects_differ_in_staining_alike_in_both_classes(release: Path) -> None:
    """A subject's cells share their staining; the classes draw it from one distribution."""
    colours: dict[str, list[np.ndarray]] = {}
    for path in (release / RELEASE / "training_data").rglob("*.bmp"):
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
        colours.setdefault(str(subject_of(path.name)), []).append(rgb[rgb.max(axis=2) > 0].mean(axis=0))
    within = np.mean([np.std(c, axis=0).mean() for c in colours.values() if len(c) > 1])
    between = np.std([np.mean(c, axis=0) for c in colours.values()], axis=0).mean()
    assert within < between


def test_refuses_bad_arguments_and_other_folders(tmp_path: Path) -> None:
    for bad in ({"subjects": 3, "test_subjects": 1}, {"n_per_class": 4}, {"size": 32}, {"n_unlabelled": -1}):
        with pytest.raises(ValueError):
            generate_cnmc_dataset(tmp_path / "x", **{**SMALL, **bad})
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        generate_cnmc_dataset(mine, **SMALL)
    assert (mine / "notes.txt").read_text() == "mine"


def test_example_cells_one_per_class() -> None:
    examples = example_cells(size=64)
    assert [label for label, _ in examples] == ["all", "hem"]
    assert all(image.size == (64, 64) for _, image in examples)


def test_the_study_picks_the_synthetic_dataset(tmp_path: Path) -> None:
    root = resolve_data(None, tmp_path, "quick", progress=False, dataset="cnmc")
    assert root == (tmp_path / "synthetic-cnmc").resolve() and (root / RELEASE).is_dir()
    with pytest.raises(ValueError, match="taleqani, cnmc"):
        resolve_data(None, tmp_path, "quick", progress=False, dataset="mnist")
