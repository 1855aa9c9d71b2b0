"""The Gradio app: a field image in, the Predictor's calibrated answer out.

Thin on purpose: every answer (probabilities, verdict, confidence, message, Grad-CAM, the reason an
image cannot be read) is :class:`allstudy.serving.predictor.Predictor`'s; this module lays it out.

* **One image**: the field, a ``gr.Label`` of the calibrated class probabilities, the verdict line,
  the Grad-CAM overlay and the segmentation view (:mod:`allstudy.data.segment`); synthetic examples made
  at start-up into a temporary folder (never dataset images).
* **Batch**: several files → the table of ``allstudy predict`` and its CSV.
* **Model**: architecture, test metrics with 95 % CIs, data provenance, date and intended use.

Uploads arrive as file paths (``gr.File``), not as images Gradio decoded: ``gr.Image`` opens the
file with Pillow before the function runs, so an empty, truncated or non-image file would fail there
with a generic error; here the Predictor reads it by content and says what is wrong.

API (gradio_client): ``/predict`` (a file → a JSON object ``label, display, verdict, malignant,
confidence, probabilities, message, prediction_set, reason, error``) and ``/predict_batch`` (files → a list of
rows with the CSV columns of ``allstudy predict``, ``path`` named ``file``: see :func:`api_row`). With no usable
model folder the app still starts: the page and both endpoints say how to make one.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from allstudy.core.atomic import write_csv
from allstudy.data.classes import TALEQANI_CLASSES, display_name
from allstudy.data.datasets import CNMC, dataset_facts
from allstudy.data.images import read_rgb
from allstudy.data.preprocess import to_input
from allstudy.data.segment import leukocyte_mask
from allstudy.data.synthetic import render_field
from allstudy.data.synthetic_cnmc import example_cells
from allstudy.evaluation.segmentation import plot_segmentation
from allstudy.serving.predictor import Prediction, Predictor, prediction_row, predictions_frame

if TYPE_CHECKING:
    import gradio as gr

    from allstudy.serving.predictor import Prediction, Predictor

DEFAULT_MODEL_DIR = "outputs/models/chosen"
HOST = "127.0.0.1"
#: Largest upload Gradio accepts (per file).
MAX_FILE_SIZE = "20mb"
#: Prediction events running at once (the machine's cores are the model's), and waiting at most.
CONCURRENCY = 2
QUEUE_SIZE = 64
#: Most files one batch request may hold (each is also under MAX_FILE_SIZE); `allstudy predict` takes any number.
MAX_BATCH_FILES = 100
#: Side of the field the segmentation view works on (the size its parameters are given for).
VIEW_SIDE = 224
TITLE = "allstudy: ALL classification of blood-smear fields (research use only)"
NOT_A_DEVICE = "Research and teaching only: **not a diagnostic device**. A hematologist's review of the smear decides."

_log = logging.getLogger(__name__)
_PLOT_LOCK = threading.Lock()  # pyplot is not thread-safe; the queue runs CONCURRENCY events at once


def _gradio():
    """Gradio, imported with its telemetry off (the app serves a loopback address by default)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio

    return gradio


# ----------------------------------------------------------------------------- texts


def how_to_make_a_model(model_dir: str | os.PathLike, reason: str) -> str:
    """One line for the API: why there is no model and the commands that make one."""
    return (
        f"no trained model in {model_dir} ({reason}). Make one with `make study` (the synthetic default, "
        f"writes outputs/models/chosen/), or on real images `python -m allstudy run --data DIR --profile cpu`; "
        f"then start the app again: `python app.py --model outputs/models/chosen`"
    )


def _no_model_page(model_dir: str | os.PathLike, reason: str) -> str:
    return "\n".join(
        [
            "## No trained model yet",
            f"The app found no usable model folder at `{model_dir}`:",
            "",
            f"> {_escape(reason)}",
            "",
            "Make one, then start the app again:",
            "",
            "```bash",
            "make study                                               # the embedded synthetic default (minutes)",
            "python -m allstudy run --data DIR --profile cpu          # the real images on a CPU (about half an hour)",
            "python app.py --model outputs/models/chosen              # or: python -m allstudy serve --model ...",
            "```",
            "",
            "A model folder holds `model.keras`, `model.json` and, optionally, `ood.json`; the study writes it to "
            "`OUTDIR/models/chosen/`.",
            "",
            NOT_A_DEVICE,
        ]
    )


def _escape(text: str) -> str:
    """Text shown as itself in Markdown (messages and reasons may hold ``*``, ``_`` or ``<``)."""
    for char in "\\`*_[]<>#|":
        text = text.replace(char, "\\" + char)
    return text


def _pct(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1%}"


def verdict_line(prediction: Prediction) -> str:
    """The verdict in words (Markdown): the answer, the prediction set, and for a referral why."""
    if prediction.error:
        return f"### Cannot read this file\n{_escape(prediction.error)}"
    confidence = f"calibrated probability {_pct(prediction.confidence)}"
    if prediction.verdict == "out-of-distribution":
        head, _, reason = prediction.message.partition(": ")
        return (
            f"### {_escape(head)}\n{_escape(reason)}. The class probabilities below are not meaningful for "
            f"such an image (top: {_escape(prediction.display)}, {confidence})."
        )
    names = " · ".join(_escape(display_name(c)) for c in prediction.prediction_set) or "empty"
    reason = _escape(prediction.reason[:1].upper() + prediction.reason[1:])
    if prediction.verdict == "uncertain":
        return (
            f"### {_escape(prediction.message)}\n{reason}.\n\nPrediction set: {names} (most likely: "
            f"{_escape(prediction.display)}, {confidence})."
        )
    why = f"\n\n{reason}." if prediction.verdict == "benign" else ""
    return f"### {_escape(prediction.message)}\n{confidence}; prediction set: {names}.{why}"


def result_json(prediction: Prediction) -> dict:
    """The ``/predict`` answer: JSON-able, ``confidence`` None when the image could not be read."""
    return {
        "label": prediction.label,
        "display": prediction.display,
        "verdict": prediction.verdict,
        "malignant": prediction.malignant if prediction.ok else None,
        "confidence": prediction.confidence if prediction.ok else None,
        "probabilities": dict(prediction.probabilities),
        "message": prediction.message,
        "prediction_set": list(prediction.prediction_set),
        "reason": prediction.reason,
        "error": prediction.error,
    }


def _count(entry: dict) -> str:
    return f"{entry['count']} of {entry['n']}" if entry.get("n") else "n/a"


def model_panel(info: dict) -> str:
    """The model tab (Markdown) from :attr:`Predictor.info`."""
    test = info.get("metrics", {}).get("test", {})
    metrics = info.get("metrics", {})
    provenance = info.get("provenance", {})
    data = provenance.get("data") or {}
    code = provenance.get("code_version") or {}
    policy = info.get("decision") or {}
    decided = info.get("metrics", {}).get("decision", {})
    saved = Path(info["model_dir"]) / "model.keras"
    date = (
        datetime.fromtimestamp(saved.stat().st_mtime, UTC).strftime("%Y-%m-%d %H:%M UTC")
        if saved.exists()
        else "unknown"
    )

    def ci(name: str) -> str:
        bounds = test.get(f"{name}_ci")
        return f"{_pct(bounds[0])} – {_pct(bounds[1])}" if bounds else "n/a"

    classes = ", ".join(
        f"{info['display_names'][c]}{' (malignant)' if info['malignant'][c] else ''}" for c in info["classes"]
    )
    facts = dataset_facts(info["classes"])
    many, one = facts.images, facts.image
    rows = [
        (label, _pct(test.get(name)), ci(name))
        for name, label in (
            ("accuracy", "accuracy"),
            ("macro_f1", "macro F1"),
            ("weighted_f1", "weighted F1"),
            ("malignant_sensitivity", "malignant sensitivity"),
            ("malignant_specificity", "malignant specificity"),
        )
    ]
    return "\n".join(
        [
            "## Intended use",
            _escape(str(info.get("intended_use", ""))).capitalize() + ".",
            "A hematologist's review of the smear decides; see MODEL_CARD.md in the model folder.",
            "",
            "## Model",
            f"- Architecture `{info.get('arch')}` (run `{info.get('run')}`), weights: {info.get('weights')}; input "
            f"{info['input_size']}×{info['input_size']} RGB, {info['input_mode']} {many}; prediction averages "
            f"{info.get('tta_views', 1)} dihedral view(s).",
            f"- Classes: {classes}.",
            f"- Calibration: temperature {info['temperature']:.3f} (fitted on the validation split).",
            f"- Decision: *benign* only when leukemia is ruled out at the {_pct(1 - policy.get('alpha', 0))} level "
            f"(calibrated probability of leukemia below {policy.get('rule_out', 0):.4f}); "
            f"*malignant* when a benign {one} is ruled out at the {_pct(1 - policy.get('alpha_benign', 0))} level; "
            "otherwise *uncertain: refer for "
            f"expert review*. Fitted on {policy.get('calibration', {}).get('n', '?')} validation {many}; "
            f"{_escape(str(policy.get('assumption', '')))}."
            + (
                f" On test: {_count(decided['malignant_called_benign'])} malignant {many} called benign, "
                f"{_count(decided['referred'])} {many} referred."
                if decided
                else ""
            ),
            f"- Out-of-distribution check: {_escape(str(info.get('ood')))}.",
            f"- Runs on: {_escape(str(info.get('runtime_note', info.get('runtime', 'keras'))))}; Grad-CAM from the "
            "Keras model.",
            f"- Model file saved {date}; folder `{info['model_dir']}`.",
            "",
            f"## Test metrics ({test.get('n', '?')} held-out {many})",
            "| metric | value | 95 % CI |",
            "|---|---|---|",
            *(f"| {label} | {value} | {bounds} |" for label, value, bounds in rows),
            f"| balanced accuracy | {_pct(test.get('balanced_accuracy'))} | |",
            f"| ECE before / after calibration | {_pct(metrics.get('ece_before'))} / "
            f"{_pct(metrics.get('ece_after'))} | |",
            *(
                f"| {label} | {_count(decided[key]) if key != 'answered_accuracy' else _pct(decided[key]['rate'])} | "
                f"{_pct(decided[key]['ci'][0])} – {_pct(decided[key]['ci'][1])} |"
                for key, label in (
                    ("malignant_called_benign", f"malignant {many} called benign"),
                    ("referred", f"{many} referred"),
                    ("answered_accuracy", f"accuracy of the answered {many}"),
                )
                if decided and decided[key]["n"]
            ),
            "",
            "## Data provenance",
            "- Data: " + ", ".join(f"{k} `{v}`" for k, v in data.items() if v is not None) + ".",
            f"- Data hash `{provenance.get('data_hash')}`.",
            f"- Code: allstudy {code.get('version')} (source `{code.get('source_sha256')}`"
            + (f", commit `{code['git_commit']}`" if code.get("git_commit") else "")
            + ").",
            f"- Packages: {', '.join(f'{k} {v}' for k, v in (provenance.get('packages') or {}).items())}.",
        ]
    )


# ----------------------------------------------------------------------------- pictures


def make_examples(
    folder: str | os.PathLike, seed: int = 0, classes: Sequence[str] = TALEQANI_CLASSES
) -> list[tuple[Path, str]]:
    """One synthetic image per class, written to ``folder``: (path, label) pairs. Fields of the Taleqani
    generator, or for a model of the C-NMC classes, cells of its generator."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    if dataset_facts(classes) is CNMC:
        for label, image in example_cells(seed):
            path = folder / f"synthetic-{label}.png"
            image.save(path)
            examples.append((path, f"synthetic {display_name(label)}"))
        return examples
    for i, label in enumerate(TALEQANI_CLASSES):
        path = folder / f"synthetic-{label}.jpg"
        render_field(label, np.random.default_rng([seed, i]), 224).save(path, quality=92)
        examples.append((path, f"synthetic {display_name(label)}"))
    return examples


def segmentation_view(rgb) -> np.ndarray:
    """The field at 224 px, its leukocyte mask and the segmented field, side by side (RGB uint8)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    field = to_input(rgb, VIEW_SIDE)
    mask = leukocyte_mask(field)
    with _PLOT_LOCK:
        canvas = FigureCanvasAgg(plot_segmentation(field, mask))
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _display(image: np.ndarray | None, side: int = VIEW_SIDE) -> np.ndarray | None:
    """A small model-size picture (e.g. a 32-px Grad-CAM) enlarged for the eye."""
    from PIL import Image

    if image is None or min(image.shape[:2]) >= side:
        return image
    return np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR))


def _thumbnail(rgb, side: int = 768) -> np.ndarray:
    picture = rgb.copy()
    picture.thumbnail((side, side))
    return np.asarray(picture)


# ----------------------------------------------------------------------------- answers


def _failed(path, err: Exception) -> Prediction:
    _log.exception("could not process %s", path)
    reason = f"cannot process the image ({type(err).__name__}: {err})"
    return Prediction(error=reason, message=reason, source=str(path))


def predict_files(predictor: Predictor, paths: list, gradcam: bool = False) -> list[Prediction]:
    """The Predictor's answers in its batches; a file that breaks a batch gets an error row, the rest go on.

    Grad-CAM (about as costly as the prediction itself) only when the caller shows it.
    """
    answers: list[Prediction] = []
    step = predictor.batch_size
    for start in range(0, len(paths), step):
        chunk = paths[start : start + step]
        try:
            answers += predictor.predict_batch(chunk, gradcam=gradcam)
        except Exception:  # an unforeseen decoder error in one file: find it, answer the others
            for path in chunk:
                try:
                    answers.append(predictor.predict(path, gradcam=gradcam))
                except Exception as err:
                    answers.append(_failed(path, err))
    return answers


def api_row(row: dict) -> dict:
    """A ``/predict_batch`` row: the CSV row with ``path`` named ``file`` (gradio_client takes any JSON
    object with a string ``path`` for a file to download, and would fail on it)."""
    return {"file": row["path"], **{k: v for k, v in row.items() if k != "path"}}


def _batch_paths(paths) -> list:
    """The uploaded files of a batch request, refused (gr.Error) beyond MAX_BATCH_FILES."""
    paths = list(paths or [])
    if len(paths) > MAX_BATCH_FILES:
        raise _gradio().Error(
            f"{len(paths)} files in one request; the app takes at most {MAX_BATCH_FILES}. "
            "Send them in smaller batches, or use `python -m allstudy predict` for a folder."
        )
    return paths


def _names(paths: list) -> list[str]:
    return [Path(str(p)).name for p in paths]


# ----------------------------------------------------------------------------- the app


def build_app(model_dir: str | os.PathLike = DEFAULT_MODEL_DIR) -> gr.Blocks:
    """The Blocks of the app for ``model_dir`` (queued; launch it with :func:`launch`).

    A missing or incomplete model folder gives the how-to page instead of failing.
    """
    try:
        predictor = Predictor(model_dir, gradcam=True)
    except (OSError, ValueError) as err:
        _log.warning("no usable model: %s", err)
        return _no_model_app(model_dir, str(err))
    return _model_app(predictor)


def _queued(app: gr.Blocks) -> gr.Blocks:
    return app.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)


def _model_app(predictor: Predictor) -> gr.Blocks:
    import matplotlib

    matplotlib.use("Agg")  # figures are drawn in worker threads, never shown
    gr = _gradio()
    info = predictor.info
    examples_dir = Path(tempfile.mkdtemp(prefix="allstudy-app-"))
    atexit.register(shutil.rmtree, examples_dir, ignore_errors=True)
    examples = make_examples(examples_dir / "examples", classes=predictor.classes)

    def analyse(path):
        """The UI's answer: field, probabilities, verdict, Grad-CAM, segmentation, JSON."""
        if path is None:
            return None, None, "", None, None, None
        prediction = predict_files(predictor, [path], gradcam=True)[0]
        if not prediction.ok:
            return None, None, verdict_line(prediction), None, None, result_json(prediction)

        rgb = read_rgb(path)
        try:
            segmented = segmentation_view(rgb)
        except Exception:  # the answer stands without the view
            _log.exception("segmentation view failed for %s", path)
            segmented = None
        probabilities = {predictor.display_names[c]: p for c, p in prediction.probabilities.items()}
        return (
            _thumbnail(rgb),
            probabilities,
            verdict_line(prediction),
            _display(prediction.gradcam),
            segmented,
            result_json(prediction),
        )

    def predict(path) -> dict:
        """``/predict``: one image file → label, verdict, calibrated confidence and probabilities."""
        if path is None:
            return result_json(_no_file())
        return result_json(predict_files(predictor, [path])[0])

    def predict_batch(paths) -> list[dict]:
        """``/predict_batch``: image files → one row each (the columns of ``allstudy predict``)."""
        paths = _batch_paths(paths)
        return [
            api_row(prediction_row(p, predictor.classes, name))
            for p, name in zip(predict_files(predictor, paths), _names(paths), strict=True)
        ]

    def batch_table(paths):
        """The batch tab: the table and its CSV."""
        paths = _batch_paths(paths)
        if not paths:
            return None, gr.DownloadButton(visible=False)
        frame = predictions_frame(predict_files(predictor, paths), predictor.classes, _names(paths))
        out = Path(tempfile.mkdtemp(dir=examples_dir)) / "predictions.csv"
        write_csv(frame, out)
        return frame.round(4), gr.DownloadButton(value=str(out), visible=True)

    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(
            f"# Acute lymphoblastic leukemia: blood-smear field classifier\n{NOT_A_DEVICE} "
            f"Model `{info.get('arch')}`: see the *Model* tab for its test metrics and provenance."
        )
        with gr.Tab("One image"):
            with gr.Row():
                with gr.Column(scale=1):
                    upload = gr.File(
                        label="A peripheral-blood-smear field (any image format; read by content)",
                        file_count="single",
                        type="filepath",
                        elem_id="upload",
                    )
                    gr.Examples(
                        [[str(p)] for p, _ in examples],
                        inputs=[upload],
                        example_labels=[label for _, label in examples],
                        label="Synthetic examples (made at start-up; not patient data)",
                    )
                with gr.Column(scale=1):
                    verdict = gr.Markdown(elem_id="verdict")
                    label = gr.Label(
                        num_top_classes=len(predictor.classes),
                        label="Calibrated probabilities",
                        elem_id="probabilities",
                    )
            with gr.Row():
                field = gr.Image(label="The field", type="numpy", format="png", interactive=False, elem_id="field")
                cam = gr.Image(
                    label="Grad-CAM: where the evidence for the top class lies",
                    type="numpy",
                    format="png",
                    interactive=False,
                    elem_id="gradcam",
                )
            segmentation = gr.Image(
                label="Segmentation: leukocyte mask and segmented field",
                type="numpy",
                format="png",
                interactive=False,
                elem_id="segmentation",
            )
            with gr.Accordion("The answer as JSON (what the /predict API returns)", open=False):
                answer = gr.JSON(elem_id="answer")
            api_single = gr.Button(visible=False)
        with gr.Tab("Batch"):
            files = gr.File(label="Several image files", file_count="multiple", type="filepath", elem_id="batch")
            run_batch = gr.Button("Classify all", variant="primary")
            table = gr.Dataframe(
                label="Answers (the columns of `allstudy predict`)", interactive=False, elem_id="table"
            )
            download = gr.DownloadButton("Download CSV", visible=False)
            rows = gr.JSON(visible=False)
            api_batch = gr.Button(visible=False)
        with gr.Tab("Model"):
            gr.Markdown(model_panel(info), elem_id="model-panel")

        shared = {"concurrency_id": "model"}
        upload.change(
            analyse, upload, [field, label, verdict, cam, segmentation, answer], api_visibility="private", **shared
        )
        api_single.click(predict, upload, answer, api_name="predict", **shared)
        run_batch.click(batch_table, files, [table, download], api_visibility="private", **shared)
        api_batch.click(predict_batch, files, rows, api_name="predict_batch", **shared)
    app.allstudy_dir = examples_dir  # the launcher lets Gradio serve the examples from here
    return _queued(app)


def _no_file() -> Prediction:
    return Prediction(error="no file given: send one image file", message="no file given: send one image file")


def _no_model_app(model_dir: str | os.PathLike, reason: str) -> gr.Blocks:
    gr = _gradio()
    message = how_to_make_a_model(model_dir, reason)

    def predict(path) -> dict:
        """``/predict`` without a model: the how-to."""
        return {
            "label": "",
            "display": "",
            "verdict": "",
            "malignant": None,
            "confidence": None,
            "probabilities": {},
            "message": message,
            "error": message,
        }

    def predict_batch(paths) -> list[dict]:
        """``/predict_batch`` without a model: one row per file (or one row), each with the how-to."""
        names = _names(list(paths or [])) or [""]
        return [{"file": name, "label": "", "verdict": "", "confidence": None, "error": message} for name in names]

    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(_no_model_page(model_dir, reason), elem_id="no-model")
        with gr.Row(visible=False):
            upload = gr.File(file_count="single", type="filepath")
            files = gr.File(file_count="multiple", type="filepath")
            answer, rows = gr.JSON(), gr.JSON()
            single, batch = gr.Button(), gr.Button()
        single.click(predict, upload, answer, api_name="predict")
        batch.click(predict_batch, files, rows, api_name="predict_batch")
    app.allstudy_dir = None
    return _queued(app)


def launch(
    model_dir: str | os.PathLike = DEFAULT_MODEL_DIR,
    port: int | None = None,
    share: bool = False,
    host: str = HOST,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
) -> gr.Blocks:
    """Build the app and serve it on ``host:port`` (loopback by default; a public link only with ``share``).

    Blocks until interrupted unless ``prevent_thread_lock``; returns the app (``app.local_url``,
    ``app.close()``).
    """
    app = build_app(model_dir)
    examples_dir = getattr(app, "allstudy_dir", None)
    allowed = [str(examples_dir)] if examples_dir else None
    app.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=MAX_FILE_SIZE,
        prevent_thread_lock=prevent_thread_lock,
        allowed_paths=allowed,
        show_error=True,
        quiet=quiet,
    )
    return app


__all__ = [
    "build_app",
    "launch",
    "result_json",
    "verdict_line",
    "model_panel",
    "make_examples",
    "segmentation_view",
    "predict_files",
    "how_to_make_a_model",
    "DEFAULT_MODEL_DIR",
]
