"""Canonical class names of the datasets the study reads, and the clinical benign/malignant view."""

from __future__ import annotations

#: The 4 classes of the Taleqani B-ALL dataset, in the canonical order used everywhere.
TALEQANI_CLASSES: tuple[str, ...] = ("Benign", "Early", "Pre", "Pro")

#: The 2 classes of C-NMC 2019: ``all`` (leukemic blast) and ``hem`` (normal B-lymphoid cell).
CNMC_CLASSES: tuple[str, ...] = ("all", "hem")

#: What a person reads for each canonical class.
DISPLAY_NAMES: dict[str, str] = {
    "Benign": "Benign (hematogones)",
    "Early": "Early Pre-B ALL",
    "Pre": "Pre-B ALL",
    "Pro": "Pro-B ALL",
    "all": "ALL blast",
    "hem": "normal B cell",
}

#: Classes that are not malignant; every other class is a malignant B-ALL class.
BENIGN_CLASSES: frozenset[str] = frozenset({"Benign", "hem"})


def is_malignant(label: str) -> bool:
    """True for any B-ALL class (the clinical binary view: malignant = any subtype)."""
    return label not in BENIGN_CLASSES


def display_name(label: str) -> str:
    """The human-readable name of a class, or the label itself when it is not a known class."""
    return DISPLAY_NAMES.get(label, label)
