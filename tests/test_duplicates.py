"""Tests of duplicate and overlapping-field detection (allstudy.data.duplicates) on synthetic fields.

One synthetic dataset (24 fields per class, a quarter of them re-captures with ground truth in
SYNTHETIC.json) is generated per module, then edited by hand:

* an exact copy of one field (same bytes, new name, same class);
* a near copy: another field re-saved as JPEG at another quality;
* a shifted crop: a third field's content moved 30 px and padded back to 224 x 224;
* two unrelated fields that share only a pasted bottom-right corner (the scale-bar corner, which
  is masked, so they must stay unlinked).
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from allstudy.data import duplicates
from allstudy.data.duplicates import DuplicateParams, find_links, group_ids, groups_of, params_dict
from allstudy.data.manifest import Manifest, build_manifest
from allstudy.data.segment import corner_region
from allstudy.data.synthetic import SYNTHETIC_MARKER, generate_dataset, render_field
from allstudy.data.synthetic_cnmc import generate_cnmc_dataset

N_PER_CLASS = 24
SEED = 3
SHIFT = 30
LINK_COLUMNS = ["a", "b", "kind", "peak", "inliers", "dx", "dy", "scale", "rotation", "overlap", "correlation"]


@dataclass(frozen=True)
class Scene:
    root: Path
    manifest: Manifest
    links: pd.DataFrame
    recaptures: list[list[str]]
    exact: tuple[str, str]
    near: tuple[str, str]
    shifted: tuple[str, str]
    corner: tuple[str, str]

    @property
    def expected_pairs(self) -> set[frozenset[str]]:
        pairs = {frozenset(group) for group in self.recaptures}
        return pairs | {frozenset(self.exact), frozenset(self.near), frozenset(self.shifted)}


def _pair_set(links: pd.DataFrame) -> set[frozenset[str]]:
    return {frozenset((a, b)) for a, b in zip(links["a"], links["b"], strict=True)}


def _kind(links: pd.DataFrame, a: str, b: str) -> str | None:
    a, b = sorted((a, b))
    row = links[(links["a"] == a) & (links["b"] == b)]
    return None if row.empty else str(row["kind"].iloc[0])


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    root = tmp_path_factory.mktemp("duplicates") / "data"
    generate_dataset(root, n_per_class=N_PER_CLASS, seed=SEED, recapture_fraction=0.25)
    recaptures = json.loads((root / SYNTHETIC_MARKER).read_text(encoding="utf-8"))["recapture_groups"]
    in_groups = {path for group in recaptures for path in group}

    def singles(label: str) -> list[str]:
        return [
            f"{label}/{p.name}" for p in sorted((root / label).glob("*.jpg")) if f"{label}/{p.name}" not in in_groups
        ]

    benign, early, pre, pro = singles("Benign"), singles("Early"), singles("Pre"), singles("Pro")

    # An exact copy under a new name in the same class.
    exact_source = benign[0]
    exact_copy = "Benign/copy-of-" + Path(exact_source).name
    shutil.copy(root / exact_source, root / exact_copy)

    # The same field re-saved at another JPEG quality.
    near_source = early[0]
    near_copy = "Early/resaved-" + Path(near_source).name
    with Image.open(root / near_source) as image:
        image.convert("RGB").save(root / near_copy, format="JPEG", quality=60)

    # A hand-made re-capture: the content shifted by SHIFT px right and down, padded back to 224.
    shift_source = pre[0]
    shifted_copy = "Pre/shifted-" + Path(shift_source).name
    with Image.open(root / shift_source) as image:
        field = np.asarray(image.convert("RGB"))
    size = field.shape[0]
    region = field[SHIFT:, SHIFT:]  # the field seen SHIFT px further on
    moved = np.pad(region, ((0, SHIFT), (0, SHIFT), (0, 0)), mode="edge")
    assert moved.shape == field.shape == (size, size, 3)
    Image.fromarray(moved, "RGB").save(root / shifted_copy, format="JPEG", quality=92)

    # One field's bottom-right corner (exactly the masked region) pasted into two unrelated fields.
    params = DuplicateParams()
    with Image.open(root / benign[1]) as image:
        donor = np.asarray(image.convert("RGB"))
    region = corner_region((size, size), params.corner_width, params.corner_height, rounding="nearest")
    top, left = int(region.any(1).argmax()), int(region.any(0).argmax())
    corner_paths = []
    for source in (pro[0], pro[1]):
        with Image.open(root / source) as image:
            pixels = np.asarray(image.convert("RGB")).copy()
        pixels[top:, left:] = donor[top:, left:]
        target = f"Pro/corner-{Path(source).stem}.png"
        Image.fromarray(pixels, "RGB").save(root / target, format="PNG")  # lossless: identical corners
        (root / source).unlink()
        corner_paths.append(target)

    manifest = build_manifest(root)
    assert (manifest.table["problem"] == "").all()
    links = find_links(manifest.root, manifest.table)
    return Scene(
        root,
        manifest,
        links,
        recaptures,
        tuple(sorted((exact_source, exact_copy))),
        tuple(sorted((near_source, near_copy))),
        tuple(sorted((shift_source, shifted_copy))),
        tuple(sorted(corner_paths)),
    )


# ---------------------------------------------------------------------------------------------
# Links


def test_links_frame_shape(scene: Scene):
    links = scene.links
    assert list(links.columns) == LINK_COLUMNS
    assert (links["a"] < links["b"]).all()
    assert not links.duplicated(["a", "b"]).any()
    assert set(links["kind"]) <= {"exact", "hash", "overlap"}
    paths = set(scene.manifest.table["path"])
    assert set(links["a"]) | set(links["b"]) <= paths


def test_exact_copy_is_exact(scene: Scene):
    assert _kind(scene.links, *scene.exact) == "exact"


def test_resaved_copy_is_hash_or_overlap(scene: Scene):
    assert _kind(scene.links, *scene.near) in {"hash", "overlap"}


def test_shifted_crop_is_overlap(scene: Scene):
    assert _kind(scene.links, *scene.shifted) == "overlap"
    row = scene.links[(scene.links["a"] == scene.shifted[0]) & (scene.links["b"] == scene.shifted[1])].iloc[0]
    assert abs(abs(row["dx"]) - SHIFT) <= 3 and abs(abs(row["dy"]) - SHIFT) <= 3, row.to_dict()
    assert abs(row["scale"] - 1) < 0.02 and abs(row["rotation"]) < 1


def test_every_recapture_pair_is_in_one_group(scene: Scene):
    assert len(scene.recaptures) == 4 * 5  # 24 per class at 0.25: 5 second copies per class
    ids = group_ids(scene.manifest.usable["path"], scene.links)
    missed = [pair for pair in scene.recaptures if ids[pair[0]] != ids[pair[1]]]
    assert not missed, f"re-capture pairs not grouped: {missed}"


def test_overlap_evidence_of_recaptures(scene: Scene):
    overlaps = scene.links[scene.links["kind"] == "overlap"]
    assert (overlaps["inliers"] >= DuplicateParams().min_inliers).all()
    assert (overlaps["overlap"] >= DuplicateParams().min_overlap).all()
    assert (overlaps["correlation"] >= DuplicateParams().min_correlation).all()
    assert (overlaps["peak"] > DuplicateParams().candidate_peak).all()


def test_no_group_spans_two_classes(scene: Scene):
    table = scene.manifest.usable
    ids = group_ids(table["path"], scene.links)
    classes: dict[str, set[str]] = {}
    for path, label in zip(table["path"], table["class"], strict=True):
        classes.setdefault(ids[path], set()).add(label)
    mixed = {group: labels for group, labels in classes.items() if len(labels) > 1}
    assert not mixed


def test_unrelated_fields_are_not_linked(scene: Scene):
    found = _pair_set(scene.links)
    expected = scene.expected_pairs
    assert len(expected) == 23
    missing = expected - found
    extra = found - expected
    assert not missing, f"expected links not found: {sorted(map(sorted, missing))}"
    assert len(found) <= len(expected) + 2, f"unexpected links: {sorted(map(sorted, extra))}"


def test_pasted_scale_bar_corner_does_not_link(scene: Scene):
    assert frozenset(scene.corner) not in _pair_set(scene.links)
    ids = group_ids(scene.manifest.usable["path"], scene.links)
    assert ids[scene.corner[0]] != ids[scene.corner[1]]


def test_groups_of_exact_only(scene: Scene):
    assert groups_of(scene.links, ["exact"]) == [list(scene.exact)]


def test_groups_of_all_kinds(scene: Scene):
    groups = groups_of(scene.links)
    assert all(len(group) >= 2 and group == sorted(group) for group in groups)
    assert [len(g) for g in groups] == sorted((len(g) for g in groups), reverse=True)
    assert list(scene.exact) in groups and list(scene.shifted) in groups
    members = [path for group in groups for path in group]
    assert len(members) == len(set(members))


def test_group_ids_are_first_member(scene: Scene):
    paths = scene.manifest.usable["path"]
    ids = group_ids(paths, scene.links)
    assert set(ids) == set(paths)
    assert ids[scene.exact[0]] == ids[scene.exact[1]] == scene.exact[0]
    singles = [p for p in paths if p not in set(scene.links["a"]) | set(scene.links["b"])]
    assert singles and all(ids[p] == p for p in singles)


# ---------------------------------------------------------------------------------------------
# Small cases and the mask itself


def test_no_links_for_fewer_than_two_usable_images(scene: Scene):
    one = scene.manifest.table.iloc[:1]
    links = find_links(scene.root, one)
    assert list(links.columns) == LINK_COLUMNS and links.empty
    assert groups_of(links) == []


def test_problem_rows_are_not_compared(scene: Scene):
    table = scene.manifest.table.copy()
    table.loc[table["path"] == scene.exact[1], "problem"] = "pretend it is broken"
    links = find_links(scene.root, table[table["path"].isin(list(scene.exact) + list(scene.shifted))])
    assert _pair_set(links) == {frozenset(scene.shifted)}


def test_masked_corner_does_not_change_the_thumbnail(scene: Scene):
    params = DuplicateParams()
    with Image.open(scene.root / scene.shifted[0]) as image:
        grey = np.asarray(image.convert("L"))
    other = grey.copy()
    mask = duplicates._corner_mask(grey.shape, params)
    assert mask.dtype == np.uint8 and mask[0, 0] == 255 and mask[-1, -1] == 0 and mask[-1, 0] == 255
    hidden = mask == 0
    assert 0.03 < hidden.mean() < 0.06  # 0.25 x 0.18 of the field
    other[hidden] = 255 - other[hidden]
    np.testing.assert_array_equal(duplicates._thumbnail(grey, params), duplicates._thumbnail(other, params))
    unmasked = dataclasses.replace(params, corner_width=0.0, corner_height=0.0)
    assert not np.allclose(duplicates._thumbnail(grey, unmasked), duplicates._thumbnail(other, unmasked))


def test_masking_is_what_keeps_a_shared_corner_apart(tmp_path: Path):
    """With a large corner (half the field each way) shared by two unrelated fields, the mask keeps
    them apart, and the same pair is linked once the mask is switched off: the mask does the work."""
    fields = [np.asarray(render_field("Pro", np.random.default_rng(seed))).copy() for seed in (11, 12, 13)]
    params = DuplicateParams(corner_width=0.5, corner_height=0.5)
    start = fields[0].shape[0] // 2
    root = tmp_path / "data"
    (root / "Pro").mkdir(parents=True)
    for k in (0, 1):
        fields[k][start:, start:] = fields[2][start:, start:]
        Image.fromarray(fields[k], "RGB").save(root / "Pro" / f"field-{k}.png")
    table = build_manifest(root).table
    assert find_links(root, table, params).empty
    unmasked = find_links(root, table, dataclasses.replace(params, corner_width=0.0, corner_height=0.0))
    assert list(unmasked["kind"]) == ["overlap"]


# ---------------------------------------------------------------------------------------------
# Parameters


def test_duplicate_params_are_sane():
    p = DuplicateParams()
    assert 0 < p.corner_width < 0.5 and 0 < p.corner_height < 0.5
    assert 0 < p.hash_max_bits < 256 // 8  # a few percent of the 256 bits
    assert p.thumb >= 32 and p.thumb & (p.thumb - 1) == 0
    assert 0 < p.highpass_sigma < p.thumb / 4
    assert 0.05 < p.candidate_peak < 0.5  # above the documented noise floor of unrelated fields
    assert p.min_inliers >= 3
    assert 0 < p.max_scale_change < 0.5
    assert 0 < p.max_rotation_deg < 45
    assert 0 < p.min_overlap < 1
    assert 0.07 < p.min_correlation < 1  # above the documented at most 0.07 of unrelated pairs


def test_duplicate_params_are_frozen_and_recorded():
    p = DuplicateParams()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.min_inliers = 1  # type: ignore[misc]
    recorded = params_dict(p)
    assert set(recorded) == {f.name for f in dataclasses.fields(DuplicateParams)}
    assert json.loads(json.dumps(recorded)) == recorded
    assert params_dict(dataclasses.replace(p, hash_max_bits=3))["hash_max_bits"] == 3


def test_every_duplicate_param_is_documented():
    """Each field sits under a ``#:`` comment (fields may share one)."""
    lines = inspect.getsource(DuplicateParams).splitlines()
    names = frozenset(f.name for f in dataclasses.fields(DuplicateParams))
    seen = set()
    for index, line in enumerate(lines):
        name = line.strip().split(":")[0]
        if name not in names:
            continue
        above = index - 1
        while above >= 0 and lines[above].strip().split(":")[0] in names:
            above -= 1
        assert lines[above].strip().startswith("#:"), f"{name} has no #: comment"
        seen.add(name)
    assert seen == names


def test_candidate_pairs_do_not_depend_on_the_block_size(scene: Scene):
    params = DuplicateParams()
    usable = scene.manifest.usable.sort_values("path").reset_index(drop=True)
    thumbs = np.stack(
        [duplicates._thumbnail(duplicates._matching_grey(scene.manifest.root / p), params) for p in usable["path"]]
    )
    keys = duplicates.comparison_keys(usable)
    whole_rows = duplicates.phase_correlation_candidates(thumbs, keys, params, block=len(thumbs))
    assert len(whole_rows) >= len(scene.recaptures)  # the re-captures at least are candidates
    for block in (1, 7, duplicates._BLOCK):
        assert duplicates.phase_correlation_candidates(thumbs, keys, params, block=block) == whole_rows


def test_the_scan_masks_the_corner_it_always_masked():
    # The scan's corner starts at the pixel nearest 1 - fraction, as before the corner geometry moved to
    # allstudy.data.segment; rounding it up instead changed the Taleqani groups (and so the split).
    old = np.ones((192, 256), bool)
    old[int(round(192 * 0.9)) :, int(round(256 * 0.78)) :] = False
    mask = duplicates._corner_mask((192, 256), DuplicateParams(corner_width=0.22, corner_height=0.1))
    assert ((mask > 0) == old).all()


def _overlapping_crops(seed: int) -> tuple[Image.Image, Image.Image]:
    """Two 224-px crops of one rendered region, 24 px apart: a re-capture of the same slide region."""
    big = render_field("Pro", np.random.default_rng(seed), size=288)
    return big.crop((0, 0, 224, 224)), big.crop((24, 16, 248, 240))


def test_overlap_search_stays_within_a_subject_and_a_class(tmp_path: Path):
    """Same subject: linked. Another subject or another class: never an overlap (a field cannot show another
    patient's slide). An exact copy is a duplicate wherever it sits."""
    first, second = _overlapping_crops(3)
    cells = tmp_path / "cells"
    for name, image in [
        ("fold_0/all/UID_1_1_1_all.bmp", first),
        ("fold_0/all/UID_1_2_1_all.bmp", second),  # the same subject: an overlap
        ("fold_0/all/UID_2_1_1_all.bmp", second),  # another subject, same pixels as the line above
    ]:
        (cells / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(cells / name)
    manifest = build_manifest(cells)
    links = find_links(manifest.root, manifest.table)
    kinds = {frozenset((a, b)): k for a, b, k in zip(links["a"], links["b"], links["kind"], strict=True)}
    one, same, other = "fold_0/all/UID_1_1_1_all.bmp", "fold_0/all/UID_1_2_1_all.bmp", "fold_0/all/UID_2_1_1_all.bmp"
    assert kinds[frozenset((one, same))] == "overlap"
    assert frozenset((one, other)) not in kinds  # the overlap across subjects is not searched
    assert kinds[frozenset((same, other))] == "exact"  # byte-identical files: found across subjects

    fields = tmp_path / "fields"
    for name, image in [("Pro/a.jpg", first), ("Pro/b.jpg", second), ("Pre/c.jpg", second)]:
        (fields / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(fields / name, quality=90)
    manifest = build_manifest(fields)
    links = find_links(manifest.root, manifest.table)
    kinds = {frozenset((a, b)): k for a, b, k in zip(links["a"], links["b"], links["kind"], strict=True)}
    assert kinds[frozenset(("Pro/a.jpg", "Pro/b.jpg"))] == "overlap"
    assert frozenset(("Pro/a.jpg", "Pre/c.jpg")) not in kinds
    assert kinds[frozenset(("Pre/c.jpg", "Pro/b.jpg"))] == "exact"


def test_cut_out_cells_link_only_when_they_are_one_cell(tmp_path: Path):
    """Cells on black are compared on their interiors: a re-encoded or shifted copy of a cell is found, distinct
    round cells of one subject (alike in outline, hash and band-pass) are not."""
    release = generate_cnmc_dataset(tmp_path / "c", n_per_class=24, subjects=4, test_subjects=1, n_unlabelled=0)
    folder = release / "C-NMC_Leukemia" / "training_data" / "fold_0" / "all"
    original = sorted(folder.iterdir())[0]
    rgb = np.asarray(Image.open(original).convert("RGB"))
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=85)
    Image.open(buffer).convert("RGB").save(folder / "UID_1_90_1_all.bmp")  # re-encoded
    shifted = np.zeros_like(rgb)
    shifted[12:, 7:] = rgb[:-12, :-7]
    Image.fromarray(shifted).save(folder / "UID_1_91_1_all.bmp")  # the same cell, cut out 12 px lower
    manifest = build_manifest(release)
    links = find_links(manifest.root, manifest.table)
    linked = {frozenset((a.split("/")[-1], b.split("/")[-1])) for a, b in zip(links["a"], links["b"], strict=True)}
    assert frozenset((original.name, "UID_1_90_1_all.bmp")) in linked
    assert frozenset((original.name, "UID_1_91_1_all.bmp")) in linked
    assert len(linked) == 3  # the three copies of one cell, nothing else
