"""The one Predictor: a model folder in, a calibrated answer with its verdict out.

The app, the ``allstudy predict`` command, the evaluation and the export checks all use it, so an
image becomes model input in one way only: read by content (:mod:`allstudy.data.images`), brought to the
input size as in training (:func:`allstudy.data.preprocess.to_input`), then, for a model trained on a
variant, :func:`allstudy.data.segment.transform_input`.

A model folder holds ``model.keras``, ``model.json`` (see :func:`allstudy.serving.modelcard.model_json`) and,
optionally, ``ood.json`` (an :class:`allstudy.serving.ood.OODGuard`). The answer's ``verdict``:

* ``out-of-distribution`` when the guard says the input is unlike the training fields (first: a
  confident subtype of a photo of a cat helps nobody);
* then model.json's decision policy (:mod:`allstudy.evaluation.decision`): ``benign`` only when malignancy is
  ruled out at its level, ``malignant`` (with the subtypes it cannot tell apart) when a benign field
  is ruled out, otherwise ``uncertain``: refer for expert review, with the reason.

The forward pass returns the probabilities and, with a guard, the model's embedding in the same call,
and is warmed up when the Predictor is made. It runs in one of two runtimes (``runtime``):

* ``tflite``: the folder's ``serving.tflite`` in LiteRT (:mod:`allstudy.serving.runtime`), when its
  ``serving.json`` vouches for it and for this model.keras; the default on a CPU when present;
* ``keras``: :func:`allstudy.models.convert.forward_function` of the Keras model, one ``tf.function`` with a
  fixed input signature (the test-time views stacked on the batch axis, one pass); always used for
  Grad-CAM, and when a GPU is visible.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from allstudy.data.images import ImageProblem, check_image, read_rgb, to_rgb
from allstudy.data.preprocess import model_input, to_input
from allstudy.evaluation.decision import DecisionPolicy
from allstudy.evaluation.gradcam import GradCam, gradcam_for, overlay
from allstudy.evaluation.metrics import apply_temperature
from allstudy.models.convert import forward_function
from allstudy.models.layers import single_view
from allstudy.serving.model_folder import RUN_FIRST, ModelFolder, ModelMeta
from allstudy.serving.ood import OODGuard, compression_artefacts, fine_detail, guard_statistics
from allstudy.serving.runtime import load_serving

VERDICTS = ("benign", "malignant", "uncertain", "out-of-distribution")
RUNTIMES = ("auto", "keras", "tflite")
UNCERTAIN_MESSAGE = "uncertain: refer for expert review"
OOD_MESSAGE = "outside what this model was trained on"


@dataclass
class Prediction:
    """One image's answer. ``error`` is set (and the rest empty) when the image could not be read."""

    probabilities: dict[str, float] = field(default_factory=dict)  # class -> calibrated probability
    label: str = ""
    display: str = ""
    malignant: bool = False
    confidence: float = math.nan
    verdict: str = ""  # one of VERDICTS; "" when error is set
    message: str = ""
    prediction_set: list[str] = field(default_factory=list)  # the classes the policy cannot exclude
    reason: str = ""  # why the policy answered so (for a referral: what is not ruled out)
    ood_scores: dict[str, float] = field(default_factory=dict)
    gradcam: np.ndarray | None = field(default=None, repr=False)
    error: str = ""
    source: str = ""  # the path or name the image came from, when known

    @property
    def ok(self) -> bool:
        return not self.error


def _source_name(image) -> str:
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    return str(getattr(image, "name", "") or getattr(image, "filename", "") or "")


def read_image(image) -> Image.Image:
    """Any image Pillow can read, by content, as RGB: a path, bytes, a file-like, a PIL image or a uint8 array.

    Raises :class:`allstudy.data.images.ImageProblem` with the reason when it cannot be used.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_rgb(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return read_rgb(None, data=bytes(image))
    if hasattr(image, "read"):
        name = getattr(image, "name", None)
        try:
            data = image.read()
        except OSError as err:
            raise ImageProblem(name, f"cannot read the file: {err}") from None
        if not isinstance(data, (bytes, bytearray)):
            raise ImageProblem(name, "the file was opened as text; open it in binary mode ('rb')")
        return read_rgb(name if isinstance(name, str) else None, data=bytes(data))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ImageProblem(None, f"an array must be uint8 RGB 0..255, not {image.dtype}")
        if not (image.ndim == 2 or image.ndim == 3 and image.shape[2] in (1, 3, 4)):
            raise ImageProblem(None, f"an array must be (H, W), (H, W, 3) or (H, W, 4), not {image.shape}")
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    if isinstance(image, Image.Image):
        return to_rgb(check_image(image))
    raise ImageProblem(
        None,
        f"cannot read a {type(image).__name__} as an image: pass a path, bytes, a binary file, "
        "a PIL image or a uint8 array",
    )


class Predictor:
    """The model of a model folder, ready to answer (see the module docstring).

    ``gradcam`` adds a Grad-CAM overlay of the single-view model to each answer; ``batch_size`` is
    the batch :meth:`predict_batch` uses by default (the forward pass is warmed up with it); ``runtime``
    is ``auto`` (``tflite`` when the folder's serving file is vouched for and no GPU is visible, else
    ``keras``), ``keras`` or ``tflite`` (an error when the serving file cannot be used).
    """

    def __init__(
        self, model_dir: str | os.PathLike, gradcam: bool = False, batch_size: int = 32, runtime: str = "auto"
    ):
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
        folder = ModelFolder(Path(model_dir))
        folder.check_complete()
        self.folder, self.model_dir = folder, folder.path
        view = folder.meta()
        self.meta = view.raw
        self.model = folder.load_model()
        self.classes: list[str] = view.classes
        self.input_size = view.input_size
        self.input_mode = view.input_mode
        self.temperature = view.temperature
        try:
            self.policy = DecisionPolicy.from_json(view.decision)
        except ValueError as err:
            raise ValueError(f"{folder.meta_file}: {err}; {RUN_FIRST}") from None
        if list(self.policy.classes) != self.classes:
            raise ValueError(
                f"{folder.meta_file}: its decision policy is for classes {list(self.policy.classes)}, "
                f"the model's are {self.classes}; {RUN_FIRST}"
            )
        self.batch_size = int(batch_size)
        if tuple(self.model.input_shape[1:]) != (self.input_size, self.input_size, 3):
            raise ValueError(
                f"{folder}: model.json says {self.input_size}-px inputs, model.keras takes "
                f"{self.model.input_shape[1:]}; {RUN_FIRST}"
            )
        if int(self.model.output_shape[-1]) != len(self.classes):
            raise ValueError(
                f"{folder}: model.json lists {len(self.classes)} classes, model.keras outputs "
                f"{self.model.output_shape[-1]}; {RUN_FIRST}"
            )

        self.display_names = view.display_names
        self.malignant = view.malignant

        self.guard = None
        if folder.guard_file.is_file():
            self.guard = OODGuard.load(folder.guard_file)
            if self.guard.input_size != self.input_size or self.guard.input_mode != self.input_mode:
                raise ValueError(
                    f"{folder.guard_file} was fitted for {self.guard.input_size}-px "
                    f"{self.guard.input_mode} inputs, the model takes {self.input_size}-px "
                    f"{self.input_mode} ones; fit the guard again (allstudy.serving.ood.fit_guard)"
                )
        self._build_forward(tf, runtime)
        self._explainer: GradCam | None = None
        if gradcam:
            self._explainer = gradcam_for(single_view(self.model))
            self._explainer.explain(np.zeros((1, self.input_size, self.input_size, 3), np.float32))  # trace it now

    # ------------------------------------------------------------------ the hot path

    def _build_forward(self, tf, runtime: str) -> None:
        """The forward pass in the chosen runtime, warmed up here at batch 1 and at the default batch size."""
        self._serving, self.runtime_note = None, "Keras, one compiled tf.function"
        if runtime != "keras":
            gpu = bool(tf.config.list_physical_devices("GPU"))
            runner, why = load_serving(self.model_dir) if runtime == "tflite" or not gpu else (None, "a GPU is visible")
            if runner is None and runtime == "tflite":
                raise ValueError(f"runtime 'tflite' is not available: {why}")
            if runner is not None:
                self._serving, self.runtime_note = runner, why
            else:
                self.runtime_note += f" ({why})"
        self.runtime = "keras" if self._serving is None else "tflite"
        embedding = self.guard is not None
        function = self._keras_function = forward_function(self.model, self.input_size, embedding=embedding)

        def keras_forward(images):
            out = function(images)
            if embedding:
                return out["probabilities"].numpy(), out["embedding"].numpy()
            return out.numpy(), np.zeros((len(images), 0), np.float32)

        self._keras_forward = keras_forward
        for n in sorted({1, self.batch_size}):
            _, features = self._run(np.zeros((n, self.input_size, self.input_size, 3), np.float32))
        if self.guard is not None:
            dim = int(self.guard.embedding.mean.shape[0])
            if features.shape[-1] != dim:
                raise ValueError(
                    f"{self.model_dir / 'ood.json'} was fitted on {dim}-dimensional embeddings, the "
                    f"model gives {features.shape[-1]}; fit the guard again for this model"
                )

    @property
    def traces(self) -> int:
        """How often the Keras forward pass was traced (once, with its fixed input signature)."""
        return int(self._keras_function.experimental_get_tracing_count())

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, embeddings) of one batch in the Predictor's runtime."""
        if self._serving is None:
            return self._keras_forward(batch)
        probabilities, features = self._serving(batch)
        return probabilities, features if self.guard is not None else np.zeros((len(batch), 0), np.float32)

    def model_input(self, image) -> np.ndarray:
        """The (S, S, 3) uint8 input the model sees for ``image`` (raises ImageProblem when unreadable)."""
        return self._convert(read_image(image))[1]

    def _convert(self, rgb: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """(field at the input size, model input): the same conversion as training's load_image."""
        field_ = to_input(rgb, self.input_size)
        return field_, model_input(field_, self.input_mode)

    def forward(self, inputs: np.ndarray, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(raw model probabilities (N, k), embeddings (N, d)) of model inputs (N, S, S, 3), batched."""
        inputs = np.asarray(inputs, dtype=np.float32)
        step = max(1, int(batch_size or self.batch_size))
        probabilities, features = [], []
        for start in range(0, len(inputs), step):
            p, f = self._run(inputs[start : start + step])
            probabilities.append(p)
            features.append(f)
        if not probabilities:
            return np.zeros((0, len(self.classes)), np.float32), np.zeros((0, 0), np.float32)
        return np.concatenate(probabilities), np.concatenate(features)

    # ------------------------------------------------------------------ answers

    def predict(self, image, gradcam: bool | None = None) -> Prediction:
        """The answer for one image (a Prediction with ``error`` set when it cannot be read)."""
        return self.predict_batch([image], batch_size=1, gradcam=gradcam)[0]

    def predict_batch(self, images, batch_size: int | None = None, gradcam: bool | None = None) -> list[Prediction]:
        """One answer per image, in order; unreadable images give a Prediction with ``error``, the rest go on.

        ``gradcam`` False skips the overlay for this call (None: as the Predictor was made).
        """
        images = list(images)
        answers: list[Prediction | None] = [None] * len(images)
        fields, inputs, where = [], [], []
        for i, image in enumerate(images):
            try:
                field_, x = self._convert(read_image(image))
            except ImageProblem as problem:
                answers[i] = Prediction(
                    error=problem.reason, source=_source_name(image), message=f"cannot read the image: {problem.reason}"
                )
                continue
            fields.append(field_)
            inputs.append(x)
            where.append(i)
        if where:
            batch = np.stack(inputs)
            raw, features = self.forward(batch, batch_size)
            calibrated = apply_temperature(raw, self.temperature)
            scores: dict[str, np.ndarray] = {}
            reasons = [""] * len(where)
            if self.guard is not None:
                stack = np.stack(fields)
                stats = guard_statistics(stack)
                scores = self.guard.score(
                    {
                        "stats": stats,
                        "embedding": features,
                        "focus": fine_detail(stack),
                        "compression": compression_artefacts(stack),
                    }
                )
                for j, flagged in enumerate(self.guard.flags(scores)):
                    if flagged:
                        reasons[j] = self.guard.reason({k: float(v[j]) for k, v in scores.items()}, stats[j])
            explain = self._explainer is not None and gradcam is not False
            heatmaps = self._gradcam(batch, self.policy.decide(calibrated).label) if explain else None
            for j, i in enumerate(where):
                own = {k: float(v[j]) for k, v in scores.items()}
                answers[i] = self._answer(
                    calibrated[j], own, reasons[j], None if heatmaps is None else heatmaps[j], _source_name(images[i])
                )
        done = [a for a in answers if a is not None]
        assert len(done) == len(images), "every image has an answer"
        return done

    def _gradcam(self, inputs: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
        assert self._explainer is not None, "made with gradcam=True"
        heatmaps = self._explainer(inputs.astype(np.float32), labels.astype(np.int64))
        return [overlay(x, h) for x, h in zip(inputs, heatmaps, strict=True)]

    def _answer(self, p: np.ndarray, ood_scores: dict, ood_reason: str, gradcam, source: str) -> Prediction:
        decision = self.policy.decide(p[None])
        in_set, label, verdict = decision.sets[0], self.classes[int(decision.label[0])], str(decision.verdict[0])
        reason = self.policy.message(verdict, in_set, float(decision.p_malignant[0]))
        if ood_reason:
            verdict, message, reason = "out-of-distribution", f"{OOD_MESSAGE}: {ood_reason}", ood_reason
        else:
            message = {"uncertain": UNCERTAIN_MESSAGE, "benign": self.display_names[label]}.get(verdict, reason)
        return Prediction(
            {c: float(v) for c, v in zip(self.classes, p, strict=True)},
            label,
            self.display_names[label],
            self.malignant[label],
            float(p[self.classes.index(label)]),
            verdict,
            message,
            self.policy.names(in_set),
            reason,
            ood_scores,
            gradcam,
            "",
            source,
        )

    # ------------------------------------------------------------------ what the app shows

    @property
    def info(self) -> dict:
        """What the app's model panel shows: architecture, classes, input, metrics with CIs, provenance, use."""
        view = ModelMeta(self.meta)
        if self.guard is None:
            ood = "no ood.json in the model folder: inputs unlike the training fields are NOT detected"
        else:
            fit = self.guard.fit_info
            ood = (
                f"guard from ood.json: image statistics and the model's embedding, each flagged above the "
                f"{self.guard.quantile:.1%} quantile of {fit.get('n_val', '?')} validation fields "
                f"(fitted on {fit.get('n_train', '?')} training fields), a focus check flagging less fine "
                f"detail than all but {1 - self.guard.quantile:.1%} of them, and a compression check flagging "
                f"stronger JPEG block edges than all but {1 - self.guard.quantile:.1%} of them"
            )
        return {
            "model_dir": str(self.model_dir),
            "run": view.run,
            "arch": view.arch,
            "weights": view.weights,
            "classes": self.classes,
            "display_names": self.display_names,
            "malignant": self.malignant,
            "input_size": self.input_size,
            "input_mode": self.input_mode,
            "tta_views": view.tta_views,
            "temperature": self.temperature,
            "decision": view.decision,
            "metrics": view.metrics,
            "provenance": view.provenance,
            "intended_use": view.intended_use,
            "ood": ood,
            "ood_thresholds": None if self.guard is None else self.guard.thresholds,
            "gradcam": self._explainer is not None,
            "runtime": self.runtime,
            "runtime_note": self.runtime_note,
        }


# ----------------------------------------------------------------------------- files and tables


def collect_files(paths) -> list[Path]:
    """Every file under the given files and folders (recursively, sorted), decided later by content.

    A path that does not exist stays in the list: reading it gives its row an error.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file())
        else:
            files.append(path)
    return files


def prediction_row(prediction: Prediction, classes: list[str], path: str | None = None) -> dict:
    """A CSV row: ``path, label, verdict, confidence, p_<class>..., error``."""
    row = {
        "path": path if path is not None else prediction.source,
        "label": prediction.label,
        "verdict": prediction.verdict,
        "confidence": None if prediction.error else prediction.confidence,
    }
    row.update({f"p_{c}": prediction.probabilities.get(c) for c in classes})
    row["error"] = prediction.error
    return row


def predictions_frame(predictions: list[Prediction], classes: list[str], paths: list[str] | None = None):
    """A pandas DataFrame of :func:`prediction_row`, columns in the CLI's order."""
    import pandas as pd

    columns = ["path", "label", "verdict", "confidence", *(f"p_{c}" for c in classes), "error"]
    rows = [prediction_row(p, classes, None if paths is None else str(paths[i])) for i, p in enumerate(predictions)]
    return pd.DataFrame(rows, columns=columns)


__all__ = ["Prediction", "Predictor", "read_image", "collect_files", "predictions_frame", "prediction_row", "VERDICTS"]
