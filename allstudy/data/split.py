"""The split: stratified by class, grouped so that no duplicate group or subject spans two splits.

Groups are the connected components of duplicate/overlap links (see :mod:`allstudy.data.duplicates`),
merged with subjects when the file names give them (C-NMC). The split is made by scikit-learn's
``StratifiedGroupKFold`` over ``k`` folds, where ``k`` makes every fraction a whole number of folds
(70/15/15 -> 20 folds: 14 train, 3 val, 3 test); the seed fixes it.

A release with an official test set (the C-NMC 2019 preliminary-test subjects, part ``test`` of the
manifest) keeps it as the test split, as the challenge did; train and validation come from its training
folds, grouped and stratified the same way.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from allstudy.data.duplicates import group_ids
from allstudy.data.manifest import usable_rows

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)
#: How a run's split is made: ``grouped`` (the study's: no duplicate group or subject spans two splits) or
#: ``image`` (the published studies' image-level split, which leaks; a validity control).
SPLIT_PROTOCOLS = ("grouped", "image")


def assign_groups(paths: list[str], subjects: list[str], links: pd.DataFrame) -> list[str]:
    """A group id per path: linked files and files of one subject share a group."""
    first_of_subject: dict[str, str] = {}
    same_subject = [
        (first_of_subject.setdefault(subject, path), path)
        for path, subject in zip(paths, subjects, strict=True)
        if subject
    ]
    pairs = pd.concat(
        [links.reindex(columns=["a", "b"]), pd.DataFrame(same_subject, columns=["a", "b"])], ignore_index=True
    )
    ids = group_ids(paths, pairs)
    return [ids[p] for p in paths]


def _folds_for(fractions: tuple[float, float, float]) -> list[int]:
    """Whole numbers of folds per split, in the smallest total that represents the fractions."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(
            f"split fractions {fractions} must be three non-negative numbers summing to 1 (train, val, test)"
        )
    ratios = [Fraction(f).limit_denominator(100) for f in fractions]
    total = math.lcm(*(r.denominator for r in ratios))
    return [int(r * total) for r in ratios]


#: What each kind of split is, for data.json and the report.
SPLIT_KINDS = {
    "grouped": "grouped: no duplicate, overlapping field or (where the file names give it) subject crosses splits",
    "official": "official: the test set is the release's preliminary-test subjects (disjoint from the training "
    "folds, as in the C-NMC 2019 challenge); train and validation from the training folds, split by subject",
}


def split_kind(table: pd.DataFrame) -> str:
    """``official`` when the usable rows hold a release's test part, else ``grouped`` (:data:`SPLIT_KINDS`)."""
    usable = usable_rows(table)
    return "official" if "part" in usable and (usable["part"] == "test").any() else "grouped"


def make_split(
    table: pd.DataFrame, links: pd.DataFrame, seed: int = 0, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> pd.DataFrame:
    """Split the usable rows of a manifest table into train/val/test (:func:`split_kind` says how).

    Returns a frame with columns ``path, class, subject, group, split`` sorted by path. Raises if a
    group would cross splits (it cannot by construction; the check guards future changes).
    """
    usable = usable_rows(table).sort_values("path").reset_index(drop=True)
    if usable.empty:
        raise ValueError("no usable image to split: every file has a problem (see the scan's problems)")
    groups = assign_groups(usable["path"].tolist(), usable["subject"].tolist(), links)
    if split_kind(usable) == "official":
        return _official_split(usable, groups, seed, fractions)
    folds_per_split = _folds_for(fractions)
    n_folds = sum(folds_per_split)
    _check_groups(
        groups,
        usable["class"].to_numpy(),
        n_folds,
        f"the {n_folds} folds that fractions {list(fractions)} need; add images or use coarser "
        "fractions (e.g. --fractions 0.6 0.2 0.2, 5 folds)",
    )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.empty(len(usable), dtype=int)
    for k, (_, test_index) in enumerate(splitter.split(usable, usable["class"], groups)):
        fold[test_index] = k
    # Fold order comes out sorted by size; map folds to splits in a seeded random order.
    order = np.random.default_rng(seed).permutation(n_folds)
    split_of_fold = np.repeat(np.array(SPLITS), folds_per_split)[np.argsort(order)]
    return _split_frame(usable, groups, split_of_fold[fold])


def _check_groups(groups: list[str] | pd.Series, classes: np.ndarray, n_folds: int, needs: str) -> None:
    """A clear error when a class has fewer independent groups than folds (``needs``: what and the remedy)."""
    per_class = pd.Series(list(groups)).groupby(classes).nunique()
    if per_class.min() < n_folds:
        raise ValueError(
            f"class {per_class.idxmin()!r} has only {per_class.min()} independent groups, fewer than {needs}"
        )


def _split_frame(usable: pd.DataFrame, groups: list[str], split: np.ndarray) -> pd.DataFrame:
    """The split table (``path, class, subject, group, split``), checked."""
    result = pd.DataFrame(
        {
            "path": usable["path"],
            "class": usable["class"],
            "subject": usable["subject"],
            "group": groups,
            "split": split,
        }
    )
    check_split(result)
    return result


def _official_split(
    usable: pd.DataFrame, groups: list[str], seed: int, fractions: tuple[float, float, float]
) -> pd.DataFrame:
    """The release's test part as the test split; its training part into train and validation by group, with
    validation about ``val / (train + val)`` of it (one fold of ``round((train + val) / val)``)."""
    _folds_for(fractions)  # the same checks of the fractions
    train_share, val_share = fractions[0], fractions[1]
    if val_share <= 0:
        raise ValueError(f"split fractions {list(fractions)} give no validation split; the study chooses on it")
    n_folds = max(2, round((train_share + val_share) / val_share))
    split = np.where(usable["part"].to_numpy() == "test", "test", "train").astype(object)
    training = np.nonzero(split == "train")[0]
    train_groups = pd.Series(np.asarray(groups, dtype=object)[training])
    _check_groups(
        train_groups,
        usable["class"].to_numpy()[training],
        n_folds,
        f"the {n_folds} folds that a validation share of {val_share / (train_share + val_share):.0%} of the "
        "training folds needs; add images or use a larger validation fraction (e.g. --fractions 0.6 0.2 0.2)",
    )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    val_fold = int(np.random.default_rng(seed).integers(n_folds))
    _, val_index = list(splitter.split(training, usable["class"].to_numpy()[training], train_groups))[val_fold]
    split[training[val_index]] = "val"
    return _split_frame(usable, groups, split.astype(str))


def check_split(split: pd.DataFrame) -> None:
    """Raise AssertionError if any group or subject appears in more than one split."""
    crossing = split.groupby("group")["split"].nunique()
    if (crossing > 1).any():
        raise AssertionError(f"groups cross splits: {sorted(crossing[crossing > 1].index)[:5]}")
    subjects = split[split["subject"] != ""].groupby("subject")["split"].nunique()
    if (subjects > 1).any():
        raise AssertionError(f"subjects cross splits: {sorted(subjects[subjects > 1].index)[:5]}")


def split_counts(split: pd.DataFrame) -> pd.DataFrame:
    """Images per class (rows) and split (columns), with totals."""
    counts = pd.crosstab(split["class"], split["split"]).reindex(columns=list(SPLITS), fill_value=0)
    counts.loc["total"] = counts.sum()
    return counts


def image_level_split(
    table: pd.DataFrame, seed: int = 0, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> pd.DataFrame:
    """The published studies' protocol: a stratified split of the fields that ignores duplicate and overlap
    groups and subjects (every field is its own group), so re-captures of one slide region can land in both
    training and test. For measuring what that leak is worth (:func:`leaked_fields`), never for the study's
    figures. Same columns as :func:`make_split`, ``subject`` blank."""
    return make_split(table.assign(subject=""), pd.DataFrame({"a": [], "b": []}), seed=seed, fractions=fractions)


def leaked_fields(split: pd.DataFrame, groups: pd.Series) -> dict[str, int]:
    """Per evaluation split, how many fields share a duplicate/overlap group with a training field.

    ``groups`` maps each path to its group (the ``group`` column of a :func:`make_split` table, by path).
    Zero for every split of :func:`make_split`; what :func:`image_level_split` leaks.
    """
    group = split["path"].map(groups)
    if group.isna().any():
        raise ValueError(
            f"{int(group.isna().sum())} paths of the split have no group; pass the groups of the same data"
        )
    seen_in_training = set(group[split["split"] == "train"])
    return {s: int(group[split["split"] == s].isin(seen_in_training).sum()) for s in ("val", "test")}
