"""Tests of the manifest (allstudy.data.manifest): one row per file, problems recorded, hashes, CSV."""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from allstudy.data.manifest import COLUMNS, Manifest, build_manifest, content_hash, fingerprint, read_manifest_csv

HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _field(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def _jpeg_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    _field(seed).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


#: path -> expected problem word ("" for usable)
MIXED = {
    "Benign/good-1.jpg": "",
    "Benign/grey.png": "",
    "Benign/zero.jpg": "empty",
    "Benign/text.jpg": "not an image",
    "Pro/good-2.jpg": "",
    "Pro/truncated.jpg": "truncated",
    "Pro/tiny.png": "too small",
    "Pro/notes.txt": "not an image",
}


def _write_mixed(root: Path) -> Path:
    for folder in ("Benign", "Pro"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "Benign/good-1.jpg").write_bytes(_jpeg_bytes(1))
    Image.new("L", (50, 40), 90).save(root / "Benign/grey.png")
    (root / "Benign/zero.jpg").write_bytes(b"")
    (root / "Benign/text.jpg").write_text("not a picture at all\n")
    (root / "Pro/good-2.jpg").write_bytes(_jpeg_bytes(2))
    (root / "Pro/truncated.jpg").write_bytes(_jpeg_bytes(3)[:400])
    Image.new("RGB", (1, 1)).save(root / "Pro/tiny.png")
    (root / "Pro/notes.txt").write_text("a stray note\n")
    (root / "README.md").write_text("about\n")  # documentation: not a row
    return root


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    root = _write_mixed(tmp_path_factory.mktemp("manifest") / "data")
    return build_manifest(root, workers=2)


def _clean_dataset(root: Path, n: int = 3) -> Path:
    for c, label in enumerate(("Benign", "Early")):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / label / f"f{i}.jpg").write_bytes(_jpeg_bytes(10 * c + i))
    return root


# ---------------------------------------------------------------------------------------------
# Rows


def test_one_row_per_file_with_columns(mixed: Manifest):
    table = mixed.table
    assert list(table.columns) == COLUMNS
    assert sorted(table["path"]) == sorted(MIXED)
    assert table["path"].is_unique
    assert mixed.layout == "class-per-folder"
    assert mixed.root.name == "data"


def test_problems_have_reasons(mixed: Manifest):
    table = mixed.table.set_index("path")
    for path, word in MIXED.items():
        problem = table.loc[path, "problem"]
        if word:
            assert word in problem.lower(), (path, problem)
            assert table.loc[path, "phash"] == ""
            assert table.loc[path, "width"] == 0 and table.loc[path, "height"] == 0
        else:
            assert problem == "", (path, problem)


def test_usable_rows_are_complete(mixed: Manifest):
    usable = mixed.usable
    assert sorted(usable["path"]) == sorted(p for p, w in MIXED.items() if not w)
    for row in usable.itertuples(index=False):
        assert row.width > 0 and row.height > 0
        assert row.mode
        assert HEX64.match(row.sha256), row.sha256
        assert HEX64.match(row.phash), f"16x16 dhash must be 64 hex chars: {row.phash!r}"
        data = (mixed.root / row.path).read_bytes()
        assert row.sha256 == hashlib.sha256(data).hexdigest()
    table = mixed.table.set_index("path")
    assert (table.loc["Benign/grey.png", "width"], table.loc["Benign/grey.png", "height"]) == (50, 40)
    assert table.loc["Benign/grey.png", "mode"] == "L"
    assert "RGB" in table.loc["Benign/grey.png", "note"]
    assert table.loc["Pro/good-2.jpg", "mode"] == "RGB" and table.loc["Pro/good-2.jpg", "note"] == ""


def test_classes_and_subjects(mixed: Manifest):
    table = mixed.table.set_index("path")
    for path in MIXED:
        assert table.loc[path, "class"] == path.split("/")[0]
    assert (mixed.table["subject"] == "").all()


def test_readable_broken_files_still_have_sha256(mixed: Manifest):
    table = mixed.table.set_index("path")
    assert table.loc["Benign/zero.jpg", "sha256"] == hashlib.sha256(b"").hexdigest()
    assert HEX64.match(table.loc["Pro/truncated.jpg", "sha256"])


def test_cnmc_subjects_in_manifest(tmp_path: Path):
    root = tmp_path / "cnmc"
    for rel in ("fold_0/all/UID_1_1_1_all.bmp", "fold_0/hem/UID_H6_1_1_hem.bmp"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        _field(7).save(root / rel, format="BMP")
    table = build_manifest(root).table.set_index("path")
    assert table.loc["fold_0/all/UID_1_1_1_all.bmp", "subject"] == "UID_1"
    assert table.loc["fold_0/hem/UID_H6_1_1_hem.bmp", "subject"] == "UID_H6"
    assert list(table["class"]) == ["all", "hem"]


# ---------------------------------------------------------------------------------------------
# content_hash and fingerprint


def test_content_hash_is_stable(tmp_path: Path):
    root = _clean_dataset(tmp_path / "data")
    first = build_manifest(root)
    second = build_manifest(root, workers=1)
    assert HEX64.match(first.data_hash())
    assert first.data_hash() == second.data_hash() == content_hash(first.table)
    shuffled = first.table.sample(frac=1.0, random_state=0).reset_index(drop=True)
    assert content_hash(shuffled) == first.data_hash()


def test_content_hash_changes_with_bytes_and_ignores_broken_files(tmp_path: Path):
    root = _clean_dataset(tmp_path / "data")
    before = build_manifest(root).data_hash()
    (root / "Benign" / "f0.jpg").write_bytes(_jpeg_bytes(99))
    changed = build_manifest(root).data_hash()
    assert changed != before
    (root / "Benign" / "broken.jpg").write_bytes(b"")
    assert build_manifest(root).data_hash() == changed  # only usable rows are the data's identity


def test_content_hash_changes_with_class(tmp_path: Path):
    root = _clean_dataset(tmp_path / "data")
    table = build_manifest(root).table
    relabelled = table.copy()
    relabelled.loc[0, "class"] = "Pro"
    assert content_hash(relabelled) != content_hash(table)


def test_fingerprint_changes_when_touched_or_added(tmp_path: Path):
    root = _clean_dataset(tmp_path / "data")
    first = fingerprint(root)
    assert HEX64.match(first)
    assert fingerprint(root) == first
    target = root / "Early" / "f1.jpg"
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    touched = fingerprint(root)
    assert touched != first
    (root / "Early" / "f9.jpg").write_bytes(_jpeg_bytes(42))
    added = fingerprint(root)
    assert added not in (first, touched)
    (root / "Early" / "f9.jpg").unlink()
    assert fingerprint(root) == touched


def test_fingerprint_ignores_documentation(tmp_path: Path):
    root = _clean_dataset(tmp_path / "data")
    first = fingerprint(root)
    (root / "README.md").write_text("about\n")
    (root / "Benign" / ".DS_Store").write_bytes(b"\0")
    assert fingerprint(root) == first


# ---------------------------------------------------------------------------------------------
# CSV round trip


def test_csv_round_trip_keeps_empty_strings(mixed: Manifest, tmp_path: Path):
    path = tmp_path / "manifest.csv"
    mixed.table.to_csv(path, index=False)
    back = read_manifest_csv(path)
    assert list(back.columns) == COLUMNS
    for column in ("subject", "phash", "problem", "note", "mode"):
        assert not back[column].isna().any()
    assert (back["subject"] == "").all()
    assert (back.loc[back["problem"] != "", "phash"] == "").all()
    assert (back["problem"] == "").sum() == len(mixed.usable)
    assert back["width"].dtype.kind == "i" and back["height"].dtype.kind == "i"
    pd.testing.assert_frame_equal(back, mixed.table, check_dtype=False)
    assert content_hash(back) == mixed.data_hash()


def test_csv_round_trip_keeps_na_like_strings(tmp_path: Path):
    """A class folder named like a missing value stays a string."""
    root = tmp_path / "data"
    for label in ("NA", "None"):
        (root / label).mkdir(parents=True)
        (root / label / "x.jpg").write_bytes(_jpeg_bytes(5))
    table = build_manifest(root).table
    table.to_csv(tmp_path / "m.csv", index=False)
    back = read_manifest_csv(tmp_path / "m.csv")
    assert sorted(back["class"]) == ["NA", "None"]


def test_read_manifest_csv_refuses_other_csv(tmp_path: Path):
    path = tmp_path / "other.csv"
    pd.DataFrame({"path": ["a"], "label": ["b"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="not a manifest"):
        read_manifest_csv(path)


# ---------------------------------------------------------------------------------------------
# Unreadable files


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read a chmod 000 file")
def test_unreadable_file_is_a_problem_not_a_crash(tmp_path: Path):
    root = _clean_dataset(tmp_path / "data")
    locked = root / "Benign" / "f1.jpg"
    locked.chmod(0)
    try:
        table = build_manifest(root).table.set_index("path")
        assert "cannot read" in table.loc["Benign/f1.jpg", "problem"]
        assert table.loc["Benign/f0.jpg", "problem"] == ""
    finally:
        locked.chmod(0o644)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_dangling_symlink_is_a_problem_not_a_crash(tmp_path: Path):
    """Unreadable for everyone, root included: a link to a file that is gone."""
    root = _clean_dataset(tmp_path / "data")
    os.symlink(tmp_path / "gone.jpg", root / "Benign" / "link.jpg")
    table = build_manifest(root).table.set_index("path")
    assert "cannot read" in table.loc["Benign/link.jpg", "problem"]
    assert (table.drop(index="Benign/link.jpg")["problem"] == "").all()


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_fingerprint_survives_a_dangling_symlink(tmp_path: Path):
    root = _clean_dataset(tmp_path / "data")
    os.symlink(tmp_path / "gone.jpg", root / "Benign" / "link.jpg")
    assert HEX64.match(fingerprint(root))
