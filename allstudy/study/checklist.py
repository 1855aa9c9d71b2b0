"""The reporting checklist: the CLAIM (2024 update) and TRIPOD+AI items that apply to this study, each with the
report's anchor that answers it, or why the study cannot. One table, so it cannot drift from the sections it
links: ``tests/test_report.py`` checks that every anchor exists in the report.

Items are named by their topic, abridged; their numbers differ between CLAIM's 2020 and 2024 versions, so
reviewers should read them against the official checklists (Tejani et al., Radiol Artif Intell 2024;
Collins et al., BMJ 2024).
"""

from __future__ import annotations

import html
from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    """One reporting item: where the report answers it (an anchor), or why it cannot (``reason``)."""

    guideline: str  # "CLAIM" or "TRIPOD+AI"
    topic: str
    anchor: str | None = None
    reason: str | None = None


ITEMS: tuple[Item, ...] = (
    Item("CLAIM", "Identification as an AI study; structured summary", "summary"),
    Item("CLAIM", "Study objectives and the question", "summary"),
    Item("CLAIM", "Study design (retrospective) and goal (model creation and comparison)", "summary"),
    Item("CLAIM", "Intended use and clinical role of the model", "chosen"),
    Item("CLAIM", "Data sources", "data"),
    Item("CLAIM", "Eligibility: which files were used and which left out", "flow"),
    Item("CLAIM", "Data preprocessing steps", "preprocessing"),
    Item(
        "CLAIM",
        "De-identification",
        reason="public datasets, de-identified by their publishers; the study receives no identifiers",
    ),
    Item("CLAIM", "Handling of missing or unusable data", "flow"),
    Item(
        "CLAIM",
        "Image acquisition protocol",
        reason="not published with the datasets beyond their source papers (microscope, camera, magnification)",
    ),
    Item(
        "CLAIM",
        "Reference standard (ground truth): definition, source, annotators",
        reason="labels as published with each dataset; the study did no re-annotation",
    ),
    Item(
        "CLAIM",
        "Inter- and intra-rater variability of the labels",
        reason="one published label per image; no re-annotation, so no second reading to compare",
    ),
    Item("CLAIM", "Assignment to partitions and their proportions", "split"),
    Item("CLAIM", "Level at which partitions are disjoint (duplicates, overlapping fields, subjects)", "split"),
    Item("CLAIM", "Model description: inputs, outputs, architecture", "architectures"),
    Item("CLAIM", "Software, libraries and versions", "provenance"),
    Item("CLAIM", "Initialisation of parameters (from scratch or transfer learning)", "comparison"),
    Item("CLAIM", "Training details: augmentation, hyperparameters, number of models", "architectures"),
    Item("CLAIM", "Method of selecting the final model (validation only)", "summary"),
    Item("CLAIM", "Ensembling (none; test-time views of one model)", "architectures"),
    Item("CLAIM", "Performance metrics", "comparison"),
    Item("CLAIM", "Statistical uncertainty: 95 % confidence intervals", "comparison"),
    Item("CLAIM", "Robustness and shortcut analysis", "controls"),
    Item("CLAIM", "Explainability (Grad-CAM)", "errors"),
    Item(
        "CLAIM",
        "Validation on external data",
        reason="no external labelled set is available to the study; the test split is internal",
    ),
    Item("CLAIM", "Flow of cases through the study", "flow"),
    Item(
        "CLAIM",
        "Demographic and clinical characteristics per partition",
        reason="the datasets publish no patient-level data (no age, sex or clinical details)",
    ),
    Item("CLAIM", "Performance on every partition (validation and test)", "architectures"),
    Item("CLAIM", "Failure analysis of misclassified cases", "errors"),
    Item("CLAIM", "Limitations", "findings"),
    Item("CLAIM", "Implications for practice (not a diagnostic device)", "chosen"),
    Item("CLAIM", "Availability of code and how to reproduce", "provenance"),
    Item(
        "CLAIM",
        "Registration, protocol and funding",
        reason="an open study without registration or funding; its protocol is the code and this report",
    ),
    Item(
        "TRIPOD+AI",
        "Sample size",
        reason="fixed by the published datasets; no sample-size calculation (the CIs show the precision reached)",
    ),
    Item("TRIPOD+AI", "Outcome (the classes) and how it was assessed", "data"),
    Item("TRIPOD+AI", "Class imbalance and how it was handled", "architectures"),
    Item(
        "TRIPOD+AI",
        "Fairness: performance across subgroups",
        reason="no subgroup attributes (age, sex, ancestry) are published with the images",
    ),
    Item("TRIPOD+AI", "Model output and how it is turned into a decision", "decision"),
    Item("TRIPOD+AI", "Calibration (ECE, Brier score, temperature scaling)", "comparison"),
    Item("TRIPOD+AI", "Differences between development and evaluation data", "split"),
    Item("TRIPOD+AI", "Model updating and recalibration at a new site", "chosen"),
    Item(
        "TRIPOD+AI",
        "Patient and public involvement",
        reason="none: a methods study on public datasets",
    ),
    Item(
        "TRIPOD+AI",
        "Ethical approval",
        reason="public de-identified datasets; no new data was collected",
    ),
)


def anchors() -> set[str]:
    """Every anchor the checklist links to (each must exist in the report)."""
    return {item.anchor for item in ITEMS if item.anchor}


def checklist_html() -> str:
    """The checklist as an HTML section (``<section id="checklist">``): answered items link into the report."""
    rows = []
    for item in ITEMS:
        where = (
            f'<a href="#{item.anchor}">answered: #{item.anchor}</a>'
            if item.anchor
            else f"not answerable: {html.escape(str(item.reason))}"
        )
        rows.append(f"<tr><td>{item.guideline}</td><td>{html.escape(item.topic)}</td><td>{where}</td></tr>")
    answered = sum(1 for item in ITEMS if item.anchor)
    return (
        '<section id="checklist"><h1>Reporting checklist</h1>'
        f"<p>{answered} of {len(ITEMS)} items of CLAIM (2024 update) and TRIPOD+AI that apply to this study are "
        f"answered in this report; {len(ITEMS) - answered} cannot be, and say why. Items are named by topic, "
        "abridged: read them against the official checklists.</p>"
        '<table class="checklist"><thead><tr><th>guideline</th><th>item</th><th>where</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )
