"""The chosen model as a folder others load: ``model.keras``, ``model.json`` and ``MODEL_CARD.md``.

``model.json`` holds what a predictor needs beyond the weights (classes, input size and mode, the
temperature and the decision policy, both fitted on validation) and what a reader needs to trust it
(test metrics with 95 % CIs, data and code provenance). ``MODEL_CARD.md`` follows Mitchell et al.,
"Model Cards for Model Reporting" (FAT* 2019).
"""

from __future__ import annotations

import os
from pathlib import Path

from allstudy.data.classes import display_name, is_malignant
from allstudy.data.datasets import dataset_facts
from allstudy.data.split import SPLIT_KINDS
from allstudy.evaluation.metrics import Evaluation, plot_tradeoff
from allstudy.serving.model_folder import ModelFolder
from allstudy.training.run_folder import RunFolder, RunParams


def model_json(run: str, params: dict, evaluation: Evaluation, data_info: dict) -> dict:
    """The metadata of a deployable model (see the module docstring)."""
    test, view = evaluation["test"], RunParams(params)
    return {
        "format": 1,
        "run": run,
        "arch": view.arch,
        "weights": view.weights,
        "classes": view.classes,
        "dataset": dataset_facts(view.classes).name,
        "display_names": {c: display_name(c) for c in view.classes},
        "malignant": {c: is_malignant(c) for c in view.classes},
        "input_size": view.input_size,
        "input_mode": view.input_mode,
        "preprocessing": f"inside the model ({params['preprocessing']}); feed RGB 0..255",
        "tta_views": view.tta_views,
        "temperature": evaluation["temperature"],
        "decision": evaluation["decision"]["policy"],
        "metrics": {
            "test": {
                k: test[k]
                for k in (
                    "n",
                    "accuracy",
                    "accuracy_ci",
                    "balanced_accuracy",
                    "macro_f1",
                    "macro_f1_ci",
                    "weighted_f1",
                    "weighted_f1_ci",
                    "malignant_sensitivity",
                    "malignant_sensitivity_ci",
                    "malignant_specificity",
                    "malignant_specificity_ci",
                )
            },
            "bootstrap": evaluation.get("bootstrap", {}),
            "ece_before": evaluation["ece_before"],
            "ece_after": evaluation["ece_after"],
            "decision": {
                k: evaluation["decision"]["test"][k]
                for k in (
                    "n",
                    "verdicts",
                    "malignant_called_benign",
                    "benign_called_malignant",
                    "referred",
                    "referred_per_class",
                    "answered_accuracy",
                    "answered_macro_f1",
                    "answered_macro_f1_ci",
                )
            },
            "tradeoff": evaluation["decision"]["tradeoff"],
        },
        "provenance": {
            "data_hash": params["data_hash"],
            "data": {k: data_info.get(k) for k in ("root", "images", "classes", "seed", "fractions", "split_kind")},
            "code_version": params["code_version"],
            "packages": params["packages"],
            "weights_sha256": params.get("weights_sha256"),
            "trained_seconds": params.get("train_seconds"),
        },
        "intended_use": f"research and teaching on classifying {dataset_facts(view.classes).content}; "
        "not a diagnostic device",
    }


def _pct(value, ci=None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.1%}"
    return text + (f" (95 % CI {ci[0]:.1%}–{ci[1]:.1%})" if ci else "")


def _published_caveat(facts_name: str) -> str:
    if facts_name == "C-NMC 2019 binary":
        return (
            "- The published 91.4 / 92.8 / 51.4 % (MobileNet / VGG16 / ResNet50) come from 70 test cells of an "
            "image-level split that mixes subjects; the challenge ranked by weighted F1 on its test subjects. Compare "
            "these figures with the challenge's, not with the 70 cells."
        )
    return (
        "- The published 99.5–99.9 % on this dataset come from image-level splits that leak overlapping fields; do "
        "not compare them directly with these figures."
    )


def model_card(meta: dict, params: dict, data_info: dict, controls: dict | None = None) -> str:
    """MODEL_CARD.md for the chosen model, with Mitchell et al.'s sections."""
    test = meta["metrics"]["test"]
    facts = dataset_facts(meta["classes"])
    one, many = facts.image, facts.images
    classes = ", ".join(f"{c} = {display_name(c)}" for c in meta["classes"])
    policy, decided = meta["decision"], meta["metrics"]["decision"]
    benign = ", ".join(display_name(c) for c in meta["classes"] if not meta["malignant"][c])
    split = SPLIT_KINDS[data_info.get("split_kind") or "grouped"]
    packages = meta["provenance"]["packages"]
    resamples = meta["metrics"].get("bootstrap", {}).get("n_resamples", "?")
    lines = [
        f"# Model card: {meta['arch']} ({meta['run']})",
        "",
        "## Model details",
        f"- Architecture `{meta['arch']}` from the allstudy registry, weights: {meta['weights']}; input "
        f"{meta['input_size']}×{meta['input_size']} RGB ({meta['input_mode']} {many}), preprocessing inside the model; "
        f"prediction averages {meta['tta_views']} dihedral view(s) of the {one}.",
        f"- {params['params']:,} parameters; trained by allstudy {meta['provenance']['code_version']['version']} "
        f"(source `{meta['provenance']['code_version']['source_sha256']}`), Keras "
        f"{meta['provenance']['packages'].get('keras')}, "
        f"TensorFlow {packages.get('tensorflow') or packages.get('tensorflow-cpu')}.",
        f"- Settings: {', '.join(f'{k}={v}' for k, v in params['config'].items())}.",
        f"- Calibration: temperature {meta['temperature']:.3f}, fitted on the validation split.",
        "",
        "## Intended use",
        f"- Research and teaching: a reproducible reference for classifying {facts.content} into {classes}.",
        "- **Not a diagnostic device.** It has not been validated clinically; a hematologist's review of the smear "
        "(and flow cytometry) decides.",
        f"- Out of scope: {facts.out_of_scope}; bone-marrow aspirates; any non-B-lineage leukemia; any decision "
        "about a patient.",
        "",
        "## Factors",
        f"- {facts.shortcut}",
        "- Performance on other labs' staining and cameras is unknown.",
        "",
        "## Metrics",
        f"On the held-out test split ({test['n']} {many}):",
        f"- accuracy {_pct(test['accuracy'], test['accuracy_ci'])}; "
        f"macro-F1 {_pct(test['macro_f1'], test['macro_f1_ci'])}; "
        f"weighted F1 {_pct(test.get('weighted_f1'), test.get('weighted_f1_ci'))}; "
        f"balanced accuracy {_pct(test['balanced_accuracy'])};",
        f"- malignant vs benign ({benign}): sensitivity "
        f"{_pct(test['malignant_sensitivity'], test['malignant_sensitivity_ci'])}, specificity "
        f"{_pct(test['malignant_specificity'], test['malignant_specificity_ci'])};",
        f"- expected calibration error {meta['metrics']['ece_before']:.3f} before and "
        f"{meta['metrics']['ece_after']:.3f} after temperature scaling.",
        *decision_lines(policy, decided, meta["metrics"]["tradeoff"], many),
        f"- Intervals: 95 % percentile bootstrap over test {many} ({resamples} resamples). {many.capitalize()} from "
        "the same patient are not independent, so the intervals are optimistic.",
        "",
        "## Evaluation data",
        f"- `{Path(str(data_info.get('root', ''))).name}` ({data_info.get('images')} images; data hash "
        f"`{meta['provenance']['data_hash'][:16]}…`), split {split}; seeded and stratified; every group of "
        f"byte-identical, re-encoded or overlapping {many} stays inside one split.",
        f"- {facts.split_caveat}",
        "",
        "## Training data",
        "- The same dataset's training split; validation chose the epoch, the temperature, the decision policy and the "
        "model (best validation macro-F1); the test split chose nothing.",
        "",
        "## Ethical considerations",
        f"- A confident wrong answer could delay care or alarm a family; the model refers a {one} it cannot rule out "
        "and must never replace a hematologist. Images uploaded to the demo stay on the machine that runs it.",
        f"- The training images come from {facts.source} and may not represent other populations.",
        "",
        "## Caveats and recommendations",
        f"- Validate on your own lab's {many}, patient-grouped, before any use; recalibrate the temperature there.",
        _published_caveat(facts.name),
    ]
    if controls:
        lines += ["", "## Validity controls (test accuracy)"]
        lines += [
            f"- {row['control']}: {_pct(row['accuracy'], row.get('accuracy_ci'))}" for row in controls.get("rows", [])
        ]
    return "\n".join(lines) + "\n"


def _count(entry: dict) -> str:
    if not entry["n"]:
        return "n/a (none in the test split)"
    return f"{entry['count']} of {entry['n']} ({_pct(entry['rate'], entry['ci'])})"


def decision_lines(policy: dict, decided: dict, tradeoff: list[dict], many: str = "fields") -> list[str]:
    """The model card's account of the decision policy: what it is, its guarantee, its test figures (``many``:
    what the images are, ``fields`` or ``cells``)."""
    one = many.removesuffix("s")
    calibration = policy["calibration"]
    level = f"{100 * (1 - policy['alpha']):.4g} %"
    referred = ", ".join(f"{c} {_count(r)}" for c, r in decided["referred_per_class"].items())
    subtypes = len(decided["referred_per_class"]) > 2  # more than one malignant class: it names the subtypes
    lines = [
        f"- Decision ({policy['method']}; `allstudy.evaluation.decision`): *benign* only when leukemia is ruled "
        f"out at the {level} level (at most {policy['alpha']:.2%} of malignant {many} called benign: "
        f"calibrated probability of any malignant class below {policy['rule_out']:.4f}); "
        f"*malignant* when a benign {one} is ruled out (at most "
        f"{policy['alpha_benign']:.0%} of benign {many} called malignant: above {policy['benign_limit']:.4f})"
        + (f", naming the subtypes it cannot tell apart (level {policy['alpha_subtype']:.0%})" if subtypes else "")
        + f"; otherwise *uncertain: refer for expert review*. Fitted on the {calibration['split']} split: "
        f"{calibration['n']} {many}, {calibration['n_malignant']} malignant (level {policy['alpha']:g} needs at least "
        f"{calibration['fields_needed']['alpha']}; with fewer, nothing is ruled out and every benign-looking {one} "
        "is referred).",
        f"- The guarantee's assumption: {policy['assumption']}.",
        f"- On test: malignant {many} called benign {_count(decided['malignant_called_benign'])}; benign {many} called "
        f"malignant {_count(decided['benign_called_malignant'])}; referred {_count(decided['referred'])} "
        f"(per true class: {referred}); accuracy of the answered {many} {_count(decided['answered_accuracy'])}, "
        f"macro-F1 {_pct(decided['answered_macro_f1'], decided['answered_macro_f1_ci'])}. Intervals of counts: "
        "exact (Clopper-Pearson).",
        "- Trade-off (each level fitted on validation; `tradeoff.png`):",
        "",
        "  | α | rule-out below | test referred | test malignant called benign |",
        "  |---|---|---|---|",
        *(
            f"  | {row['alpha']:g} | {row['rule_out']:.4f} | "
            f"{row['test_referred']} ({row['test_referred_rate']:.1%}) | {row['test_missed']} |"
            for row in tradeoff
        ),
        "",
    ]
    return lines


def write_model_dir(
    run_dir: str | os.PathLike,
    dest: str | os.PathLike,
    run: str,
    params: dict,
    evaluation: Evaluation,
    data_info: dict,
    controls: dict | None = None,
) -> ModelFolder:
    """Copy a run's model into the model folder ``dest`` with model.json, MODEL_CARD.md and tradeoff.png."""
    folder = ModelFolder(Path(dest))
    meta = model_json(run, params, evaluation, data_info)
    folder.write(
        RunFolder(Path(run_dir)).model_file,
        meta,
        model_card(meta, params, data_info, controls),
        plot_tradeoff(evaluation["decision"]["tradeoff"], meta["decision"]["alpha"]),
    )
    return folder
