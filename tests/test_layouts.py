"""Tests of dataset layouts (allstudy.data.layouts): class names, C-NMC subjects, folder discovery."""

from __future__ import annotations

import re
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


# ---------------------------------------------------------------------------------------------
# the C-NMC 2019 release as downloaded (Kaggle's and TCIA's layouts)

RELEASE_TRAIN = [
    "fold_0/all/UID_1_1_1_all.bmp",
    "fold_0/hem/UID_H2_1_1_hem.bmp",
    "fold_1/all/UID_3_1_1_all.bmp",
    "fold_1/hem/UID_h4_2_1_hem.bmp",
]
LABELS_CSV = "Patient_ID,new_names,labels\nUID_5_1_1_all.bmp,1.bmp,1\nUID_H6_1_1_hem.bmp,2.bmp,0\n"


def _release(root: Path, kind: str, csv_inside: bool = False, labels: str | None = LABELS_CSV) -> Path:
    """A small C-NMC release in Kaggle's or TCIA's layout (with a labels CSV, a README and a notes file)."""
    if kind == "kaggle":
        top = root / "C-NMC_Leukemia"
        train, prelim_parent, final = top / "training_data", top / "validation_data", top / "testing_data"
    else:
        top = root
        train, prelim_parent, final = top / "C-NMC_training_data", top, top
    _tree(train, RELEASE_TRAIN)
    prelim = prelim_parent / "C-NMC_test_prelim_phase_data"
    _tree(prelim, ["1.bmp", "2.bmp"])
    _tree(final / "C-NMC_test_final_phase_data", ["1.bmp"])
    if labels is not None:
        (prelim if csv_inside else prelim_parent).joinpath("C-NMC_test_prelim_phase_data_labels.csv").write_text(labels)
    (prelim_parent / "notes.txt").write_text("downloaded 2026\n")
    return top


@pytest.mark.parametrize("kind, csv_inside", [("kaggle", False), ("kaggle", True), ("tcia", False), ("tcia", True)])
def test_release_parts_classes_and_subjects(tmp_path: Path, kind: str, csv_inside: bool):
    top = _release(tmp_path / "download", kind, csv_inside)
    for pointed in (tmp_path / "download", top):
        image_root, layout, items = discover(pointed)
        assert image_root == top and "c-nmc-2019 release" in layout and kind in layout
        by_part = {
            part: sorted((i.label, i.subject) for i in items if i.part == part) for part in {i.part for i in items}
        }
        assert by_part["train"] == [("all", "UID_1"), ("all", "UID_3"), ("hem", "UID_H2"), ("hem", "UID_H4")]
        assert by_part["test"] == [("all", "UID_5"), ("hem", "UID_H6")]  # class and subject from the CSV
        assert by_part["unlabelled"] == [("", None)]
        assert not any(i.relpath.endswith((".csv", ".txt")) for i in items)  # skipped, not problems


def test_the_training_folder_alone_is_the_plain_fold_layout(tmp_path: Path):
    top = _release(tmp_path, "kaggle")
    _, layout, items = discover(top / "training_data")
    assert layout.startswith("c-nmc (") and {i.part for i in items} == {""} and len(items) == 4


@pytest.mark.parametrize(
    "labels, message",
    [
        (None, "has no labels: expected C-NMC_test_prelim_phase_data_labels.csv"),
        ("Patient_ID,labels\nUID_5_1_1_all.bmp,1\n", "lacks the column(s) new_names"),
        ("Patient_ID,new_names,labels\nUID_5_1_1_all.bmp,1.bmp,yes\n", "line 2: labels is 'yes'"),
    ],
)
def test_a_missing_or_malformed_labels_csv_names_the_file_and_the_columns(tmp_path: Path, labels, message):
    _release(tmp_path, "kaggle", labels=labels)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        discover(tmp_path)
    assert "Patient_ID, new_names, labels" in str(info.value)
