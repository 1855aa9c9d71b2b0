"""The grouped, stratified, seeded split."""

from __future__ import annotations

import pandas as pd
import pytest

from allstudy.data.split import (
    _folds_for,
    assign_groups,
    check_split,
    image_level_split,
    leaked_fields,
    make_split,
    split_counts,
    split_kind,
)


def _table(n_per_class: int = 100, classes=("A", "B", "C"), subjects: bool = False) -> pd.DataFrame:
    rows = []
    for label in classes:
        for i in range(n_per_class):
            rows.append(
                {
                    "path": f"{label}/{i:04d}.jpg",
                    "class": label,
                    "subject": f"S{label}{i // 4}" if subjects else "",
                    "problem": "",
                }
            )
    return pd.DataFrame(rows)


def _links(pairs) -> pd.DataFrame:
    return pd.DataFrame({"a": [a for a, _ in pairs], "b": [b for _, b in pairs], "kind": "overlap"})


def test_fractions_to_folds():
    assert _folds_for((0.7, 0.15, 0.15)) == [14, 3, 3]
    assert _folds_for((0.8, 0.1, 0.1)) == [8, 1, 1]
    assert _folds_for((0.6, 0.2, 0.2)) == [3, 1, 1]
    with pytest.raises(ValueError, match="sum"):
        _folds_for((0.7, 0.2, 0.2))


def test_split_is_stratified_and_has_the_fractions():
    split = make_split(_table(200), _links([]), seed=0)
    counts = split_counts(split)
    for label in ("A", "B", "C"):
        assert counts.loc[label, "train"] == pytest.approx(140, abs=3)
        assert counts.loc[label, "val"] == pytest.approx(30, abs=3)
        assert counts.loc[label, "test"] == pytest.approx(30, abs=3)


def test_linked_files_never_cross_splits():
    table = _table(100)
    # chains of 5 linked files, as overlapping re-captures of one slide region
    pairs = [(f"A/{i:04d}.jpg", f"A/{i + 1:04d}.jpg") for i in range(0, 100, 5) for i in range(i, i + 4)]
    split = make_split(table, _links(pairs), seed=3)
    for a, b in pairs:
        assert split.set_index("path").loc[a, "split"] == split.set_index("path").loc[b, "split"]
    assert split.groupby("group")["split"].nunique().max() == 1


def test_subjects_are_kept_together():
    split = make_split(_table(100, subjects=True), _links([]), seed=1)
    assert split.groupby("subject")["split"].nunique().max() == 1
    assert set(split["split"]) == {"train", "val", "test"}


def test_same_seed_same_split_other_seed_differs():
    table, links = _table(80), _links([("B/0001.jpg", "B/0002.jpg")])
    first, again = make_split(table, links, seed=7), make_split(table, links, seed=7)
    pd.testing.assert_frame_equal(first, again)
    assert not first["split"].equals(make_split(table, links, seed=8)["split"])


def test_problem_files_are_left_out():
    table = _table(60)
    table.loc[0, "problem"] = "empty file (0 bytes)"
    split = make_split(table, _links([]), seed=0)
    assert table.loc[0, "path"] not in set(split["path"])
    assert len(split) == len(table) - 1


def test_check_split_catches_a_crossing_group():
    split = pd.DataFrame(
        {"path": ["a", "b"], "class": ["A", "A"], "subject": ["", ""], "group": ["g", "g"], "split": ["train", "test"]}
    )
    with pytest.raises(AssertionError, match="cross"):
        check_split(split)


def test_too_few_groups_is_a_clear_error():
    with pytest.raises(ValueError, match="only 3 independent groups.*--fractions"):
        make_split(_table(3), _links([]), seed=0)
    assert len(make_split(_table(6), _links([]), seed=0, fractions=(0.6, 0.2, 0.2))) == 18


def test_assign_groups_merges_links_and_subjects():
    groups = assign_groups(["a", "b", "c", "d"], ["", "", "S1", "S1"], _links([("a", "b")]))
    assert groups[0] == groups[1] and groups[2] == groups[3] and groups[0] != groups[2]


def test_the_image_level_split_lets_overlapping_fields_cross_and_counts_them():
    table = _table(100)
    pairs = [(f"A/{i:04d}.jpg", f"A/{i + 1:04d}.jpg") for i in range(0, 100, 5) for i in range(i, i + 4)]
    grouped = make_split(table, _links(pairs), seed=3)
    groups = grouped.set_index("path")["group"]
    assert leaked_fields(grouped, groups) == {"val": 0, "test": 0}
    leaky = image_level_split(table, seed=3)
    assert leaky["group"].tolist() == leaky["path"].tolist()
    assert (image_level_split(_table(100, subjects=True), seed=3)["subject"] == "").all()
    assert split_counts(leaky).loc["total"].tolist() == split_counts(grouped).loc["total"].tolist()
    leaked = leaked_fields(leaky, groups)
    # A field leaks when a field of its overlap chain is in training: count them by hand.
    chain_in_training = {groups[p] for p, s in zip(leaky["path"], leaky["split"], strict=True) if s == "train"}
    for name in ("val", "test"):
        part = leaky[leaky["split"] == name]
        assert leaked[name] == sum(groups[p] in chain_in_training for p in part["path"]) > 0
    with pytest.raises(ValueError, match="no group"):
        leaked_fields(leaky, groups.iloc[:10])


def _release_table(train_subjects: int = 20, test_subjects: int = 6, cells: int = 3) -> pd.DataFrame:
    """A C-NMC-like release: training-fold subjects, preliminary-test subjects, and unlabelled cells."""
    rows = []
    for part, n in (("train", train_subjects), ("test", test_subjects)):
        for s in range(n):
            label = "all" if s % 2 else "hem"
            for c in range(cells):
                path = f"{part}/{label}/UID_{part}{s}_{c}.bmp"
                rows.append({"path": path, "class": label, "subject": f"UID_{part}{s}", "problem": "", "part": part})
    rows.append({"path": "final/1.bmp", "class": "", "subject": "", "problem": "", "part": "unlabelled"})
    return pd.DataFrame(rows)


def test_a_release_keeps_its_official_test_set_and_splits_its_training_folds_by_subject():
    table = _release_table()
    split = make_split(table, _links([]), seed=3)
    assert split_kind(table) == "official"
    test = split[split["split"] == "test"]
    assert set(test["subject"]) == {f"UID_test{s}" for s in range(6)} and len(test) == 18
    assert "final/1.bmp" not in set(split["path"])  # unlabelled: never split
    val = split[split["split"] == "val"]
    assert set(val["class"]) == {"all", "hem"} and 0.10 < len(val) / (len(split) - len(test)) < 0.25
    check_split(split)  # no subject in two splits
    assert split.equals(make_split(table, _links([]), seed=3))
    assert not split.equals(make_split(table, _links([]), seed=4))
    assert split_kind(table[table["part"] != "test"]) == "grouped"


def test_an_official_split_names_what_it_lacks():
    with pytest.raises(ValueError, match="only 2 independent groups, fewer than the 6 folds .* of the training folds"):
        make_split(_release_table(train_subjects=4), _links([]))
    with pytest.raises(ValueError, match="no validation split"):
        make_split(_release_table(), _links([]), fractions=(0.85, 0.0, 0.15))
