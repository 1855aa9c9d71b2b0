"""What people read about each dataset the study knows: its name, what one image is, where it comes from.

One place for the words that differ between the Taleqani 4-class fields and the C-NMC 2019 binary cells, so
that the report, the model card and the app say the same thing; which dataset is read from its classes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from allstudy.data.classes import CNMC_CLASSES
from allstudy.data.split import SPLIT_KINDS


@dataclass(frozen=True)
class DatasetFacts:
    """The words for one dataset."""

    name: str  # as the published figures name it (allstudy.evaluation.compare.PUBLISHED)
    image: str  # one image: "field" or "cell"
    images: str  # plural
    content: str  # what the images show, for "a model that classifies ..."
    source: str  # where the images come from
    out_of_scope: str  # images the model was not made for
    shortcut: str  # how the class can show in something other than the cells' morphology
    split_caveat: str  # what the split can and cannot say about new patients, by split kind


TALEQANI = DatasetFacts(
    name="Taleqani 4-class",
    image="field",
    images="fields",
    content="peripheral-blood-smear fields of B-lineage ALL",
    source="one hospital (Taleqani, Tehran)",
    out_of_scope="single-cell crops, other stains, magnifications, microscopes or labs than the training fields",
    shortcut="The classes of the training data come from different patients and acquisition sessions, so stain "
    "colour, illumination and the burned-in scale bar differ by class. A model can score by recognising the "
    "session, not the disease; the report's validity controls measure how much.",
    split_caveat="The split is by field (overlapping fields kept together), not by patient: the dataset publishes "
    "no patient IDs. Fields of one patient can sit on both sides, so the figures are an upper bound for new patients.",
)

CNMC = DatasetFacts(
    name="C-NMC 2019 binary",
    image="cell",
    images="cells",
    content="single segmented, stain-normalised lymphoid cells from blood-smear images",
    source="one centre (the C-NMC 2019 challenge, AIIMS New Delhi)",
    out_of_scope="whole smear fields, cells not segmented and cut out on black, other stains, normalisations or labs",
    shortcut="Each subject's cells share a slide's staining and imaging, and a subject holds one class, so a model "
    "can score by recognising the subject; the split keeps subjects apart, and the validity controls measure "
    "what colour alone is worth.",
    split_caveat="The split keeps subjects apart (IDs from the file names and the test labels): no subject sits on "
    "two sides, so the figures are for new patients of the same centre, not for other labs.",
)


def dataset_facts(classes: Iterable[str]) -> DatasetFacts:
    """The dataset these classes are of: C-NMC 2019 when they are all/hem, else Taleqani."""
    classes = set(classes)
    return CNMC if classes and classes <= set(CNMC_CLASSES) else TALEQANI


def split_statement(classes: Iterable[str], split_kind: str) -> str:
    """What the study's split is and why (Markdown), for the report: ``split_kind`` as in
    :data:`allstudy.data.split.SPLIT_KINDS`."""
    facts = dataset_facts(classes)
    if split_kind == "official":
        return (
            f"**The official split** ({SPLIT_KINDS['official']}). Why: the release names its test subjects, and "
            "testing on them, never seen in training or validation, is how the C-NMC 2019 challenge ranked its "
            "entries (by weighted F1). With subjects kept apart, the figures are for new patients of the same "
            "centre; the published 70-cell figures mixed subjects between training and test."
        )
    if facts is CNMC:
        return (
            f"**A subject-grouped split** ({SPLIT_KINDS['grouped']}): the folder has no official test part, so "
            "train, validation and test are drawn by subject from the cells given. " + facts.split_caveat
        )
    return (
        f"**A grouped split** ({SPLIT_KINDS['grouped']}). The Taleqani dataset does not publish patient IDs, so "
        "the split is **by field, not by patient**: grouped by duplicate and overlapping fields, but fields of one "
        "patient can still sit in training and in test. Figures here are an upper bound for new patients."
    )
