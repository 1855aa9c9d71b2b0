"""Tests of the synthetic blood-smear generator (allstudy.data.synthetic)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from allstudy.data.classes import TALEQANI_CLASSES
from allstudy.data.synthetic import SYNTHETIC_MARKER, generate_dataset, render_field

N_PER_CLASS = 40
SEED = 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One dataset shared by the read-only tests: 40 fields per class, 10 % re-captures."""
    root = tmp_path_factory.mktemp("synthetic") / "data"
    return generate_dataset(root, n_per_class=N_PER_CLASS, seed=SEED, recapture_fraction=0.1)


def _marker(root: Path) -> dict:
    return json.loads((root / SYNTHETIC_MARKER).read_text(encoding="utf-8"))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64)


def _first_captures(root: Path) -> list[tuple[Path, int]]:
    """Every file but the second member of a re-capture pair, with its class index."""
    seconds = {b for _, b in _marker(root)["recapture_groups"]}
    return [
        (p, ci)
        for ci, label in enumerate(TALEQANI_CLASSES)
        for p in sorted((root / label).glob("*.jpg"))
        if f"{label}/{p.name}" not in seconds
    ]


def _best_shift_correlation(a: np.ndarray, b: np.ndarray, max_shift: int = 48) -> tuple[float, tuple[int, int]]:
    """Best normalised correlation of the centre of ``a`` against ``b`` over integer shifts within
    +-max_shift, and that shift (how far ``b``'s content moved relative to ``a``)."""
    a, b = a.mean(axis=2), b.mean(axis=2)
    h, w = b.shape
    t = a[max_shift : h - max_shift, max_shift : w - max_shift]
    th, tw = t.shape
    t = t - t.mean()
    # Numerator for every placement by FFT (the valid part of a circular correlation is exact).
    full = np.fft.irfft2(np.fft.rfft2(b) * np.fft.rfft2(t[::-1, ::-1], s=b.shape), s=b.shape)
    num = full[th - 1 :, tw - 1 :]
    ii = np.pad(b.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    ii2 = np.pad((b * b).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    s = ii[th:, tw:] - ii[:-th, tw:] - ii[th:, :-tw] + ii[:-th, :-tw]
    s2 = ii2[th:, tw:] - ii2[:-th, tw:] - ii2[th:, :-tw] + ii2[:-th, :-tw]
    var = np.maximum(s2 - s * s / (th * tw), 1e-9)
    ncc = num / (np.sqrt((t * t).sum()) * np.sqrt(var))
    iy, ix = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
    return float(ncc[iy, ix]), (max_shift - int(iy), max_shift - int(ix))


# --- render_field -------------------------------------------------------------------------------


def test_render_field_is_rgb_of_the_requested_size_and_seeded() -> None:
    for label in TALEQANI_CLASSES:
        image = render_field(label, np.random.default_rng(1))
        assert image.mode == "RGB" and image.size == (224, 224)
    a = np.asarray(render_field("Pre", np.random.default_rng(5), size=128))
    b = np.asarray(render_field("Pre", np.random.default_rng(5), size=128))
    assert a.shape == (128, 128, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, np.asarray(render_field("Pre", np.random.default_rng(6), size=128)))


def test_render_field_rejects_unknown_class() -> None:
    with pytest.raises(ValueError, match="unknown class"):
        render_field("Myeloid", np.random.default_rng(0))


def test_fields_look_like_smears() -> None:
    """A pale background, plenty of red cells and some purple leukocyte pixels."""
    for ci, label in enumerate(TALEQANI_CLASSES):
        a = np.asarray(render_field(label, np.random.default_rng(100 + ci)), dtype=np.float64)
        gray = a.mean(axis=2)
        assert np.percentile(gray, 95) > 200  # pale background
        assert 0.25 < (gray < np.percentile(gray, 97) - 25).mean() < 0.9  # cells cover much of it
        purple = (a[..., 2] - a[..., 1] > 60) & (a[..., 1] < 150)
        assert purple.sum() > 150  # at least one stained nucleus


# --- layout, marker, determinism ---------------------------------------------------------------


def test_layout_and_counts(dataset: Path) -> None:
    entries = sorted(p.name for p in dataset.iterdir())
    assert entries == sorted([*TALEQANI_CLASSES, SYNTHETIC_MARKER])
    for label in TALEQANI_CLASSES:
        files = sorted((dataset / label).iterdir())
        assert len(files) == N_PER_CLASS
        for path in files:
            assert re.fullmatch(rf"synthetic-{label}-\d{{4}}\.jpg", path.name)
        with Image.open(files[0]) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == (224, 224)
    leftovers = [p.name for p in dataset.parent.iterdir() if p.name != dataset.name]
    assert leftovers == []  # no temporary folder left behind


def test_marker_content(dataset: Path) -> None:
    marker = _marker(dataset)
    assert marker["synthetic"] is True
    assert marker["generator"] == "allstudy.synthetic"  # as written since the first release
    assert marker["version"] == 1
    assert marker["seed"] == SEED and marker["n_per_class"] == N_PER_CLASS and marker["size"] == 224
    assert marker["recapture_fraction"] == 0.1
    assert marker["classes"] == list(TALEQANI_CLASSES)
    assert "not patient data" in marker["note"]
    groups = marker["recapture_groups"]
    assert len(groups) == 4 * 4  # round(40 * 0.1 / 1.1) = 4 per class
    seen = set()
    for a, b in groups:
        assert "\\" not in a and "\\" not in b
        assert a.split("/")[0] == b.split("/")[0]  # a pair stays within its class
        assert (dataset / a).is_file() and (dataset / b).is_file()
        seen.update((a, b))
    assert len(seen) == 2 * len(groups)


def test_generation_is_deterministic(tmp_path: Path) -> None:
    a = generate_dataset(tmp_path / "a", n_per_class=3, seed=11, recapture_fraction=0.4)
    b = generate_dataset(tmp_path / "b", n_per_class=3, seed=11, recapture_fraction=0.4)
    c = generate_dataset(tmp_path / "c", n_per_class=3, seed=12, recapture_fraction=0.4)
    files_a, files_b, files_c = _files(a), _files(b), _files(c)
    assert len(files_a) == 4 * 3 + 1
    assert files_a == files_b
    images_a = {k: v for k, v in files_a.items() if k.endswith(".jpg")}
    images_c = {k: v for k, v in files_c.items() if k.endswith(".jpg")}
    assert images_a.keys() == images_c.keys()
    assert all(images_a[k] != images_c[k] for k in images_a)


def test_fields_do_not_depend_on_the_dataset_size(tmp_path: Path) -> None:
    """A field is seeded by (seed, class, index): more fields per class leave the first ones alone."""
    small = _files(generate_dataset(tmp_path / "small", n_per_class=2, seed=4, recapture_fraction=0))
    large = _files(generate_dataset(tmp_path / "large", n_per_class=5, seed=4, recapture_fraction=0))
    small_images = {v for k, v in small.items() if k.endswith(".jpg")}
    large_images = {v for k, v in large.items() if k.endswith(".jpg")}
    assert small_images <= large_images


# --- cache and safety ---------------------------------------------------------------------------


def test_cache_does_not_rewrite_and_other_parameters_rebuild(tmp_path: Path) -> None:
    root = tmp_path / "data"
    assert generate_dataset(root, n_per_class=2, seed=1) == root
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    inode = root.stat().st_ino
    assert generate_dataset(root, n_per_class=2, seed=1, progress=False) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps
    assert root.stat().st_ino == inode

    generate_dataset(root, n_per_class=3, seed=1)  # other parameters: rebuilt
    assert _marker(root)["n_per_class"] == 3
    assert all(len(list((root / label).glob("*.jpg"))) == 3 for label in TALEQANI_CLASSES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_refuses_a_non_synthetic_folder(tmp_path: Path) -> None:
    root = tmp_path / "precious"
    root.mkdir()
    (root / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ValueError, match="empty folder") as info:
        generate_dataset(root, n_per_class=1)
    assert str(root) in str(info.value)
    assert (root / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / SYNTHETIC_MARKER).write_text(json.dumps({"synthetic": True, "generator": "other"}))
    with pytest.raises(ValueError):
        generate_dataset(foreign, n_per_class=1)
    assert (foreign / SYNTHETIC_MARKER).exists()

    a_file = tmp_path / "file.jpg"
    a_file.write_bytes(b"x")
    with pytest.raises(ValueError):
        generate_dataset(a_file, n_per_class=1)


def test_empty_folder_is_filled_and_stale_temporary_removed(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    stale = tmp_path / f"data.tmp-{os.getpid()}"
    stale.mkdir()
    (stale / "half-written.jpg").write_bytes(b"")
    generate_dataset(root, n_per_class=1, progress=True)
    assert not stale.exists()
    assert (root / SYNTHETIC_MARKER).is_file()
    assert sum(1 for _ in root.rglob("*.jpg")) == 4


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_dataset(tmp_path / "x", n_per_class=0)
    with pytest.raises(ValueError):
        generate_dataset(tmp_path / "x", recapture_fraction=1.5)
    with pytest.raises(ValueError):
        generate_dataset(tmp_path / "x", seed=-1)
    assert not (tmp_path / "x").exists()


# --- re-captures --------------------------------------------------------------------------------


def test_recapture_pairs_are_shifted_crops_of_one_region(dataset: Path) -> None:
    groups = _marker(dataset)["recapture_groups"]
    for a, b in groups:
        first, second = _rgb(dataset / a), _rgb(dataset / b)
        assert not np.array_equal(first, second)
        corr, (dy, dx) = _best_shift_correlation(first, second)
        assert corr > 0.9, (a, b, corr)
        assert 5 <= max(abs(dy), abs(dx)) <= 40, (a, b, dy, dx)
    # Unrelated fields, of the same class and of others, do not match anywhere.
    firsts = [p for p, _ in _first_captures(dataset)]
    paired = {dataset / x for group in groups for x in group}
    unrelated = [p for p in firsts if p not in paired][:12]
    for p, q in zip(unrelated[0::2], unrelated[1::2], strict=False):
        corr, _ = _best_shift_correlation(_rgb(p), _rgb(q))
        assert corr < 0.7, (p.name, q.name, corr)


# --- no colour shortcut, but morphology --------------------------------------------------------


def _colour_features(a: np.ndarray) -> np.ndarray:
    pixels = a.reshape(-1, 3)
    return np.concatenate([pixels.mean(axis=0), pixels.std(axis=0)])


def _nucleus_features(a: np.ndarray) -> list[float]:
    """Area, darkness and solidity of the largest dark purple blob (a nucleus), background-relative."""
    rel = a / np.percentile(a, 97, axis=(0, 1))
    g, b = rel[..., 1], rel[..., 2]
    dark = ndimage.binary_opening((g < 0.62) & (b - g > 0.3))
    labels, n = ndimage.label(dark)
    if n == 0:
        return [0.0, 1.0, 1.0]
    areas = ndimage.sum_labels(dark, labels, np.arange(1, n + 1))
    blob = labels == int(np.argmax(areas)) + 1
    return [float(areas.max()), float(g[blob].mean()), float(blob.sum() / ndimage.binary_fill_holes(blob).sum())]


def _cv_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(model, features, labels, cv=folds).mean())


def test_global_colour_does_not_predict_the_class_but_morphology_does(dataset: Path) -> None:
    pytest.importorskip("sklearn")
    items = _first_captures(dataset)
    images = [_rgb(p) for p, _ in items]
    labels = np.array([ci for _, ci in items])
    colour = np.array([_colour_features(a) for a in images])
    morphology = np.array([_nucleus_features(a) for a in images])

    colour_acc = _cv_accuracy(colour, labels)
    morphology_acc = _cv_accuracy(morphology, labels)
    assert colour_acc < 0.45, f"global colour predicts the class: {colour_acc:.2f} on 4 classes"
    assert morphology_acc > colour_acc + 0.15, (morphology_acc, colour_acc)

    area = [morphology[labels == ci, 0].mean() for ci in range(len(TALEQANI_CLASSES))]
    assert area == sorted(area), f"nucleus area not Benign < Early < Pre < Pro: {area}"
    darkness = [morphology[labels == ci, 1].mean() for ci in range(len(TALEQANI_CLASSES))]
    assert darkness[0] == min(darkness), f"Benign chromatin should be darkest: {darkness}"


# --- crowded fields (the demo profile's) --------------------------------------------------------


def _nuclei(a: np.ndarray) -> int:
    """Dark purple blobs of a nucleus's size (platelets are far smaller)."""
    rel = a / np.percentile(a, 97, axis=(0, 1))
    g, b = rel[..., 1], rel[..., 2]
    labels, n = ndimage.label(ndimage.binary_opening((g < 0.62) & (b - g > 0.3)))
    return int((ndimage.sum_labels(np.ones_like(g), labels, np.arange(1, n + 1)) > 60).sum())


def test_leukocytes_sets_the_cells_per_field() -> None:
    """Benign cells are small enough that five always fit; the default draws one to three."""
    for seed in range(6):
        crowded = np.asarray(render_field("Benign", np.random.default_rng(seed), leukocytes=(5, 5)), np.float64)
        default = np.asarray(render_field("Benign", np.random.default_rng(seed)), np.float64)
        assert _nuclei(crowded) == 5
        assert 1 <= _nuclei(default) <= 3


def test_leukocytes_is_a_parameter_of_the_dataset(tmp_path: Path) -> None:
    root = tmp_path / "data"
    generate_dataset(root, n_per_class=2, seed=1, recapture_fraction=0)
    assert _marker(root)["leukocytes"] is None
    plain = _files(root)
    generate_dataset(root, n_per_class=2, seed=1, recapture_fraction=0, leukocytes=(3, 6))  # rebuilt
    assert _marker(root)["leukocytes"] == [3, 6]
    crowded = _files(root)
    assert all(crowded[k] != plain[k] for k in plain if k.endswith(".jpg"))
    for bad in [(0, 2), (4, 3), (1.5, 3)]:
        with pytest.raises(ValueError, match="leukocytes"):
            generate_dataset(tmp_path / "bad", n_per_class=1, leukocytes=bad)
    assert not (tmp_path / "bad").exists()


def test_a_dataset_of_the_moved_generator_is_rebuilt_not_reused(tmp_path: Path) -> None:
    """Its platelets were drawn in another order: same parameters, other pixels."""
    root = generate_dataset(tmp_path / "data", n_per_class=2, seed=1, recapture_fraction=0)
    made = _files(root)
    marker = _marker(root)
    (root / SYNTHETIC_MARKER).write_text(json.dumps({**marker, "generator": "allstudy.data.synthetic"}))
    (root / "Pro" / "synthetic-Pro-0000.jpg").write_bytes(b"stale")
    generate_dataset(root, n_per_class=2, seed=1, recapture_fraction=0)
    assert _files(root) == made
