"""The cached data step (allstudy.data.prepare.prepare) and the scan report's keys."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from allstudy.data.prepare import prepare, scan
from allstudy.data.synthetic import generate_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("synth") / "fields", n_per_class=28, seed=5, recapture_fraction=0.2)


def test_scan_report_has_the_documented_keys(dataset):
    report = scan(dataset).report()
    for key in ("images", "classes", "problems", "exact_duplicate_groups", "near_duplicate_groups"):
        assert key in report
    assert report["images"] == 112
    assert report["classes"] == {"Benign": 28, "Early": 28, "Pre": 28, "Pro": 28}
    assert report["problems"] == []
    assert all(isinstance(group, list) and len(group) >= 2 for group in report["near_duplicate_groups"])


def test_prepare_writes_files_and_reuses_them(dataset, tmp_path):
    out = tmp_path / "data"
    first = prepare(dataset, out, seed=0)
    for name in ("manifest.csv", "duplicates.csv", "splits.csv", "data.json"):
        assert (out / name).exists(), name
    assert first.info["synthetic"] is True
    assert len(first.split) == 112
    stamps = {name: (out / name).stat().st_mtime_ns for name in ("manifest.csv", "splits.csv")}
    second = prepare(dataset, out, seed=0)
    assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps  # nothing rewritten
    pd.testing.assert_frame_equal(
        first.split.reset_index(drop=True), second.split.reset_index(drop=True), check_dtype=False
    )


def test_prepare_redoes_the_split_for_a_new_seed_and_the_scan_for_new_files(dataset, tmp_path):
    out = tmp_path / "data"
    prepare(dataset, out, seed=0)
    manifest_time = (out / "manifest.csv").stat().st_mtime_ns
    reseeded = prepare(dataset, out, seed=1)
    assert (out / "manifest.csv").stat().st_mtime_ns == manifest_time
    assert reseeded.info["split"]["seed"] == 1
    touched = next((dataset / "Pro").iterdir())
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 1_000_000_000))
    prepare(dataset, out, seed=1)
    assert (out / "manifest.csv").stat().st_mtime_ns != manifest_time


def test_prepare_rejects_a_corrupt_cache_with_a_clear_message(dataset, tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "data.json").write_text("{ half written")
    with pytest.raises(ValueError, match="data.json"):
        prepare(dataset, out)
