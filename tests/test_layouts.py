"""Tests of dataset layouts (allstudy.data.layouts): class names, C-NMC subjects, folder discovery."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from allstudy.data.layouts import Item, canonical_class, discover, resolve_root, subject_of

TALEQANI = ("Benign", "Early", "Pre", "Pro")
VARIANT = ("Benign", "[Malignant] early Pre-B", "[Malignant] Pre-B", "[Malignant] Pro-B")


def _image(path: Path, colour: tuple[int, int, int] = (200, 120, 180), fmt: str | None = None) -> Path:
    """A small valid image (40 x 40) at ``path``, made by Pillow."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 40), colour).save(path, format=fmt or ("BMP" if path.suffix == ".bmp" else "JPEG"))
    return path


def _tree(root: Path, relpaths: list[str]) -> Path:
    for rel in relpaths:
        _image(root / rel)
    return root


def _by_path(items: list[Item]) -> dict[str, Item]:
    return {item.relpath: item for item in items}


# ---------------------------------------------------------------------------------------------
# canonical_class and subject_of


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Benign", "Benign"),
        ("benign", "Benign"),
        ("Hematogones", "Benign"),
        ("[Malignant] early Pre-B", "Early"),
        ("[Malignant] Pre-B", "Pre"),
        ("[Malignant] Pro-B", "Pro"),
        ("Early", "Early"),
        ("Pre", "Pre"),
        ("Pro", "Pro"),
        ("Pre-B ALL", "Pre"),
        ("all", "all"),
        ("ALL", "all"),
        ("hem", "hem"),
        ("cats", None),
        ("Original", None),
        ("Segmented", None),
        ("fold_0", None),
        ("Malignant", None),
        ("", None),
    ],
)
def test_canonical_class(name: str, expected: str | None):
    assert canonical_class(name) == expected


@pytest.mark.parametrize(
    "filename, expected",
    [
        ("UID_1_3_1_all.bmp", "UID_1"),
        ("UID_11_10_2_all.bmp", "UID_11"),
        ("UID_H6_5_1_hem.bmp", "UID_H6"),
        ("UID_h3_1_1_hem.bmp", "UID_H3"),
        ("synthetic-Benign-0001.jpg", None),
        ("Snap_001.jpg", None),
        ("UID_x_1_1_all.bmp", None),
        ("uid_1_1_1_all.bmp", None),
        ("UID_1.bmp", None),
        ("", None),
    ],
)
def test_subject_of(filename: str, expected: str | None):
    assert subject_of(filename) == expected


# ---------------------------------------------------------------------------------------------
# discover


def test_plain_class_per_folder(tmp_path: Path):
    root = _tree(tmp_path / "data", [f"{c}/{c.lower()}-{i}.jpg" for c in TALEQANI for i in range(2)])
    image_root, layout, items = discover(root)
    assert image_root == root
    assert layout == "class-per-folder"
    assert len(items) == 8
    assert all(isinstance(item, Item) for item in items)
    assert {item.relpath: item.label for item in items} == {
        f"{c}/{c.lower()}-{i}.jpg": c for c in TALEQANI for i in range(2)
    }
    assert all(item.subject is None for item in items)


def test_relpaths_use_forward_slashes_and_deeper_folders_keep_the_class(tmp_path: Path):
    root = _tree(tmp_path / "data", ["Benign/slide1/a.jpg", "Pro/slide2/deep/b.jpg", "cats/x/c.jpg"])
    _, _, items = discover(root)
    labels = {item.relpath: item.label for item in items}
    assert labels == {
        "Benign/slide1/a.jpg": "Benign",
        "Pro/slide2/deep/b.jpg": "Pro",
        "cats/x/c.jpg": "cats",
    }  # unknown class names: the top-level folder


def test_nearest_known_class_folder_wins(tmp_path: Path):
    root = _tree(tmp_path / "data", ["batch1/Early/a.jpg", "batch1/Pre/b.jpg"])
    _, _, items = discover(root)
    assert {item.relpath: item.label for item in items} == {"batch1/Early/a.jpg": "Early", "batch1/Pre/b.jpg": "Pre"}


def test_kaggle_original_and_segmented_reads_original_only(tmp_path: Path):
    root = tmp_path / "kaggle"
    _tree(root, [f"Original/{c}/o-{i}.jpg" for c in TALEQANI for i in range(2)])
    _tree(root, [f"Segmented/{c}/s-{i}.jpg" for c in TALEQANI for i in range(3)])
    image_root, layout, items = discover(root)
    assert image_root == root / "Original"
    assert "kaggle" in layout.lower()
    assert len(items) == 8
    assert all(item.relpath.split("/")[-1].startswith("o-") for item in items)
    assert {item.relpath: item.label for item in items} == {f"{c}/o-{i}.jpg": c for c in TALEQANI for i in range(2)}
    # Pointing at Segmented reads the segmented version.
    seg_root, seg_layout, seg_items = discover(root / "Segmented")
    assert seg_root == root / "Segmented" and seg_layout == "class-per-folder"
    assert len(seg_items) == 12 and {item.label for item in seg_items} == set(TALEQANI)


def test_resolve_root_is_case_insensitive_for_kaggle(tmp_path: Path):
    root = tmp_path / "kaggle"
    _tree(root, ["original/Benign/a.jpg", "segmented/Benign/a.jpg"])
    image_root, layout = resolve_root(root)
    assert image_root == root / "original" and "kaggle" in layout.lower()


def test_kaggle_four_class_variant_names(tmp_path: Path):
    root = _tree(tmp_path / "variant", [f"{folder}/img-{i}.jpg" for folder in VARIANT for i in range(2)])
    image_root, layout, items = discover(root)
    assert image_root == root and layout == "class-per-folder"
    labels = {item.relpath: item.label for item in items}
    assert labels == {
        f"{folder}/img-{i}.jpg": canonical
        for folder, canonical in zip(VARIANT, TALEQANI, strict=True)
        for i in range(2)
    }


def test_kaggle_variant_inside_original_and_segmented(tmp_path: Path):
    root = tmp_path / "variant"
    _tree(root, [f"{top}/{folder}/img.jpg" for top in ("Original", "Segmented") for folder in VARIANT])
    image_root, _, items = discover(root)
    assert image_root == root / "Original"
    assert sorted(item.label for item in items) == sorted(TALEQANI)


def test_cnmc_folds_with_subjects(tmp_path: Path):
    files = {
        "fold_0/all/UID_1_3_1_all.bmp": ("all", "UID_1"),
        "fold_0/all/UID_11_1_2_all.bmp": ("all", "UID_11"),
        "fold_0/hem/UID_H6_5_1_hem.bmp": ("hem", "UID_H6"),
        "fold_1/all/UID_2_1_1_all.bmp": ("all", "UID_2"),
        "fold_1/hem/UID_h3_1_1_hem.bmp": ("hem", "UID_H3"),
    }
    root = _tree(tmp_path / "cnmc", list(files))
    image_root, layout, items = discover(root)
    assert image_root == root
    assert layout.lower().startswith("c-nmc")
    assert {item.relpath: (item.label, item.subject) for item in items} == files


def test_cnmc_without_folds_still_gets_subjects(tmp_path: Path):
    root = _tree(tmp_path / "cnmc", ["all/UID_1_1_1_all.bmp", "hem/UID_H2_1_1_hem.bmp"])
    _, layout, items = discover(root)
    assert layout.lower().startswith("c-nmc")
    assert {item.subject for item in items} == {"UID_1", "UID_H2"}


def test_documentation_and_hidden_files_are_skipped(tmp_path: Path):
    root = _tree(tmp_path / "data", ["Benign/a.jpg", "Pro/b.jpg", ".hidden/c.jpg", "Pro/.cache/d.jpg"])
    (root / "README.md").write_text("about the data\n")
    (root / "Benign" / "README.md").write_text("about benign\n")
    (root / "Benign" / "readme.txt").write_text("about benign\n")
    (root / "Benign" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "Pro" / "Thumbs.db").write_bytes(b"\0" * 16)
    (root / "Pro" / "MANIFEST.md5").write_text("0123  b.jpg\n")
    (root / "SYNTHETIC.json").write_text("{}")
    (root / "Pro" / "SYNTHETIC.json").write_text("{}")
    _, _, items = discover(root)
    assert sorted(item.relpath for item in items) == ["Benign/a.jpg", "Pro/b.jpg"]


def test_other_files_in_class_folders_are_items(tmp_path: Path):
    """A stray non-image in a class folder is listed, so the manifest reports it."""
    root = _tree(tmp_path / "data", ["Benign/a.jpg"])
    (root / "Benign" / "notes.txt").write_text("not an image")
    _, _, items = discover(root)
    assert sorted(item.relpath for item in items) == ["Benign/a.jpg", "Benign/notes.txt"]


def test_files_at_top_level_are_ignored(tmp_path: Path):
    root = _tree(tmp_path / "data", ["Benign/a.jpg", "stray.jpg", "Pro/b.jpg"])
    _, _, items = discover(root)
    assert sorted(item.relpath for item in items) == ["Benign/a.jpg", "Pro/b.jpg"]


def test_only_top_level_files_is_an_error_naming_the_folder(tmp_path: Path):
    root = _tree(tmp_path / "flat", ["a.jpg", "b.jpg"])
    with pytest.raises(ValueError, match="no files in class folders") as caught:
        discover(root)
    assert str(root) in str(caught.value)


def test_empty_folder_is_an_error_naming_the_folder(tmp_path: Path):
    root = tmp_path / "empty-dataset"
    root.mkdir()
    with pytest.raises(ValueError) as caught:
        discover(root)
    assert str(root) in str(caught.value)


def test_empty_class_folders_are_an_error_naming_the_folder(tmp_path: Path):
    root = tmp_path / "hollow"
    for c in TALEQANI:
        (root / c).mkdir(parents=True)
    with pytest.raises(ValueError) as caught:
        discover(root)
    assert str(root) in str(caught.value)


def test_kaggle_with_empty_original_names_original(tmp_path: Path):
    root = tmp_path / "kaggle"
    (root / "Original" / "Benign").mkdir(parents=True)
    _tree(root, ["Segmented/Benign/a.jpg"])
    with pytest.raises(ValueError) as caught:
        discover(root)
    assert str(root / "Original") in str(caught.value)


def test_missing_folder_is_an_error_naming_the_folder(tmp_path: Path):
    missing = tmp_path / "no-such-dataset"
    with pytest.raises(FileNotFoundError) as caught:
        discover(missing)
    assert str(missing) in str(caught.value)


def test_a_file_instead_of_a_folder_is_an_error(tmp_path: Path):
    path = _image(tmp_path / "one.jpg")
    with pytest.raises(FileNotFoundError) as caught:
        discover(path)
    assert str(path) in str(caught.value)


def test_discover_accepts_a_string_and_is_sorted(tmp_path: Path):
    root = _tree(tmp_path / "data", ["Pro/z.jpg", "Benign/b.jpg", "Benign/a.jpg", "Early/m.jpg"])
    image_root, _, items = discover(str(root))
    assert image_root == root
    assert [item.relpath for item in items] == ["Benign/a.jpg", "Benign/b.jpg", "Early/m.jpg", "Pro/z.jpg"]
