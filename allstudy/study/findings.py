"""The report's first screen, written from summary.json and never by hand: the question, the data and the split
in a sentence each, the headline table, the chosen model, the findings a reader must not miss, and links."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from allstudy.data.classes import display_name, is_malignant
from allstudy.data.datasets import CNMC, dataset_facts
from allstudy.data.split import SPLIT_KINDS
from allstudy.evaluation.compare import PUBLISHED
from allstudy.evaluation.controls import IMAGE_SPLIT_RUN

#: The sections the summary links to: anchor -> what a reader finds there (the report makes each anchor).
SECTION_LINKS = {
    "data": "the data",
    "flow": "the flow diagram",
    "split": "the split",
    "comparison": "every run side by side",
    "controls": "the validity controls",
    "errors": "every test error of the chosen model",
    "chosen": "the chosen model's card",
    "architectures": "each architecture's training and evaluation",
    "checklist": "the reporting checklist (CLAIM, TRIPOD+AI)",
}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _ci(value: float | None, ci: list | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1%} ({ci[0]:.1%}–{ci[1]:.1%})" if ci and None not in ci else f"{value:.1%}"


def _published(arch: str, dataset: str) -> str:
    return "; ".join(
        f"{p['accuracy']:.1%} ({p['split']})" for p in PUBLISHED if p["arch"] == arch and p["dataset"] == dataset
    )


def headline_table(summary: dict) -> pd.DataFrame:
    """One row per architecture of the study (controls apart), every figure as summary.json holds it: test
    accuracy and macro-F1 with 95 % CIs, malignant sensitivity and specificity, the decision policy's missed
    malignant images and referral rate, ECE and Brier score (temperature-scaled), and the published figure."""
    dataset = dataset_facts(summary["data"]["classes"]).name
    rows = []
    for name, run in summary["runs"].items():
        test, decision = run["test"], run["decision"]
        rows.append(
            {
                "architecture": name + (" (chosen)" if name == summary["chosen"] else ""),
                "weights": run["weights"],
                "accuracy (95 % CI)": _ci(test["accuracy"], test["accuracy_ci"]),
                "macro-F1 (95 % CI)": _ci(test["macro_f1"], test["macro_f1_ci"]),
                "sensitivity": _pct(test["malignant_sensitivity"]),
                "specificity": _pct(test["malignant_specificity"]),
                "malignant called benign": f"{decision['malignant_called_benign']} of {decision['n_malignant']}",
                "referred": _pct(decision["referral_rate"]),
                "ECE": f"{test['ece']:.3f}",
                "Brier": f"{test['brier']:.3f}" if test.get("brier") is not None else "n/a",
                "published": _published(run["arch"], dataset) or "—",
            }
        )
    return pd.DataFrame(rows)


def _control(summary: dict, suffix: str) -> dict | None:
    rows = summary.get("controls", {}).get("rows", [])
    return next((r for r in rows if r["control"].endswith(suffix)), None)


def key_findings(summary: dict) -> list[str]:
    """The three findings a reader must not miss (plain text): what the shortcut controls show, what the
    published protocol's leak is worth, and what the figures say about new patients and other labs."""
    facts = dataset_facts(summary["data"]["classes"])
    chosen = summary["runs"][summary["chosen"]]["test"]["accuracy"]
    colour, background = _control(summary, "colour-statistics"), _control(summary, "-background")
    if colour is None:
        shortcut = "Shortcut controls: not run in this study."
    else:
        shortcut = (
            f"Shortcuts: colour statistics alone, without a single cell, reach {colour['accuracy']:.1%} "
            f"(the chosen model {chosen:.1%})"
            + (
                f"; the chosen architecture on the background with the cells masked out, {background['accuracy']:.1%}"
                if background
                else ""
            )
            + ". What the images' colour and background give away is not evidence about the cells."
        )
    leak = _control(summary, f"-{IMAGE_SPLIT_RUN}")
    reference = _control(summary, "chosen model")
    if leak is None or reference is None:
        leaked = "The published protocol's leak: not measured in this study (no image-level control run)."
    else:
        leaked = (
            f"The published protocol's leak: on an image-level split, as the published studies used, the chosen "
            f"architecture scores {leak['accuracy']:.1%} against {reference['accuracy']:.1%} on this study's split "
            f"({(leak['accuracy'] - reference['accuracy']) * 100:+.1f} points; {leak['leaked_test_fields']} of "
            f"that split's test {facts.images} overlap a training {facts.image}"
            + ("; it also mixes subjects between training and test" if facts is CNMC else "")
            + ")."
        )
    synthetic = bool(summary["data"].get("synthetic"))
    scope = (
        f"What the figures say: {facts.split_caveat} They come from {facts.source}; no external labelled set was "
        "tested, so performance on other labs, stains and microscopes is unknown."
        + (" These images are synthetic: the figures say nothing about real leukemia." if synthetic else "")
    )
    return [shortcut, leaked, scope]


def summary_html(summary: dict) -> str:
    """The first screen of the report as an HTML fragment (``<section id="summary">``)."""
    data = summary["data"]
    classes = list(data["classes"])
    facts = dataset_facts(classes)
    counts = data.get("split_counts", {})
    chosen_name = summary["chosen"]
    chosen = summary["runs"][chosen_name]
    test, decision = chosen["test"], chosen["decision"]
    names = [display_name(c) for c in classes]
    benign = " or ".join(display_name(c) for c in classes if not is_malignant(c))
    question = (
        f"Can a network tell {', '.join(names[:-1])} and {names[-1]} apart in {facts.content}, and how often does "
        f"it call a leukemic {facts.image} {benign}?"
    )
    design = (
        "Retrospective, on "
        + ("a synthetic stand-in for a published dataset" if data.get("synthetic") else "a published dataset")
        + ": models made and compared with the published studies on a leakage-free split, each figure with a 95 % "
        "confidence interval, shortcut controls, and a decision policy that refers what it cannot rule out."
    )
    split_sizes = ", ".join(
        f"{part} {counts[part]['total']}"
        for part in ("train", "val", "test")
        if part in counts and "total" in counts[part]
    )
    data_line = (
        f"{sum(data['classes'].values())} usable {facts.images} of the {facts.name} set "
        f"(<code>{html.escape(Path(str(data.get('root', ''))).name)}</code>"
        + (", synthetic: not patient data" if data.get("synthetic") else "")
        + "), "
        + ", ".join(f"{display_name(c)} {n}" for c, n in data["classes"].items())
        + "."
    )
    split_line = "The " + SPLIT_KINDS[data.get("split_kind") or "grouped"].replace(": ", " split: ", 1)
    split_line += f" ({split_sizes} {facts.images})."
    chosen_line = (
        "<b>Chosen model</b> (best validation macro-F1, the test split chose nothing): "
        f"<b>{html.escape(chosen_name)}</b>, "
        f"test accuracy {_ci(test['accuracy'], test['accuracy_ci'])}, malignant sensitivity "
        f"{_pct(test['malignant_sensitivity'])}, specificity {_pct(test['malignant_specificity'])}. Under its "
        f"decision policy it called <b>{decision['malignant_called_benign']} of {decision['n_malignant']}</b> "
        f"malignant test {facts.images} benign and referred <b>{_pct(decision['referral_rate'])}</b> for expert "
        "review."
    )
    table = headline_table(summary).to_html(index=False, classes="headline", border=0, escape=True)
    findings = "".join(f"<li>{html.escape(f)}</li>" for f in key_findings(summary))
    provenance = summary.get("provenance", {})
    code = provenance.get("code_version", {})
    packages = ", ".join(f"{k} {v}" for k, v in (provenance.get("packages") or {}).items())
    source, commit = html.escape(str(code.get("source_sha256"))), html.escape(str(code.get("git_commit") or "")[:12])
    data_hash = html.escape(str(provenance.get("data_hash", ""))[:16])
    provenance_line = (
        f"allstudy {html.escape(str(code.get('version')))} (source <code>{source}</code>"
        + (f", commit <code>{commit}</code>" if commit else "")
        + f"); data hash <code>{data_hash}…</code>; {html.escape(packages)}. Every figure here is read from "
        "<code>summary.json</code>; <code>make study</code> (or <code>allstudy run</code> with the same data and "
        "profile) makes it again."
    )
    links = " · ".join(f'<a href="#{anchor}">{html.escape(text)}</a>' for anchor, text in SECTION_LINKS.items())
    return (
        '<section id="summary" class="allstudy-summary">'
        "<h1>Summary</h1>"
        f"<p><b>Question.</b> {html.escape(question)}</p>"
        f"<p><b>Design.</b> {html.escape(design)}</p>"
        f"<p><b>Data.</b> {data_line}</p>"
        f"<p><b>Split.</b> {html.escape(split_line)}</p>"
        f"{table}"
        f"<p>{chosen_line}</p>"
        f'<p><b>Do not miss:</b></p><ol id="findings">{findings}</ol>'
        f"<p class='links'>Below: {links}.</p>"
        f'<p id="provenance" class="provenance"><b>Provenance.</b> {provenance_line}</p>'
        "</section>"
    )
