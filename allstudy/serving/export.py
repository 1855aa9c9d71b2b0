"""Export a model folder to TensorFlow Lite or ONNX, and check the export on the model's test split.

``python -m allstudy export --model MODEL_DIR --format tflite|onnx --out DIR`` writes

* ``tflite``: ``model.tflite`` (float32) and ``model_dynamic.tflite`` (dynamic-range quantised: int8
  weights, float activations), built-in TFLite operators only, so any LiteRT runtime runs them;
* ``onnx``: ``model.onnx`` (tf2onnx), checked with ONNX Runtime;

and, last, ``DIR/model.json`` (the model folder's, for classes, input size and temperature) and
``DIR/parity.json``: the export against the Keras model on every test field, ``argmax_agreement``,
``max_abs_diff`` (of the probabilities), ``n_images``, each variant's size and test accuracy beside the
Keras model's, ``verdict_agreement`` under model.json's decision policy, and the provenance of both.

The exported graph is the saved model's own forward pass: the same single-view network and the same
:class:`allstudy.models.layers.Dihedral` layers, with the views stacked on the batch axis so that the network
appears once (TFLite also needs the static channel count that ``keras.ops.rot90`` loses). Its input is
what :meth:`allstudy.serving.predictor.Predictor.model_input` gives, as float32 RGB 0..255, shape (N, S, S, 3);
its output the raw class probabilities, before model.json's temperature. The reference is the
Predictor's forward pass on the same inputs, so the check covers the file reading and resizing the app
uses.

The test split is read from ``splits.csv`` of the study that made the model: ``OUTDIR/data/splits.csv``
for ``OUTDIR/models/chosen`` (or ``--split-csv``); the images from the root recorded beside it in
``data.json`` or in model.json (or ``--data``).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import tensorflow as tf

from allstudy.core.atomic import atomic_path, read_json, write_json
from allstudy.core.hashing import sha256_file
from allstudy.evaluation.decision import DecisionPolicy
from allstudy.evaluation.metrics import apply_temperature
from allstudy.models.convert import forward_function, run_batched, to_tflite
from allstudy.serving import EXPORT_FORMATS
from allstudy.serving.model_folder import ModelFolder, ModelMeta
from allstudy.serving.predictor import Predictor

FORMATS = EXPORT_FORMATS
#: Files written per format, by variant: the first is the one parity.json's top-level keys describe.
FILES = {
    "tflite": {"float32": "model.tflite", "dynamic_range_int8": "model_dynamic.tflite"},
    "onnx": {"float32": "model.onnx"},
}
_TOOLS = {
    "tflite": ("tensorflow", "tensorflow-cpu", "keras", "numpy", "ai-edge-litert"),
    "onnx": ("tensorflow", "tensorflow-cpu", "keras", "numpy", "tf2onnx", "onnx", "onnxruntime"),
}


class ExportUnavailable(ValueError):
    """A converter or runtime the format needs is not installed."""


@dataclass
class HeldOutSplit:
    """The test fields of a model's data split."""

    root: Path
    paths: list[str]  # relative to root, as in splits.csv
    labels: np.ndarray  # class indices in the model's class order
    splits_csv: Path
    data_hash: str | None


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------- the test split


def find_test_split(
    model_dir: str | os.PathLike,
    meta: dict,
    split_csv: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
) -> HeldOutSplit:
    """The test split of the data the model in ``model_dir`` was trained on (see the module docstring).

    Raises FileNotFoundError or ValueError naming the option to pass when it cannot be located or does
    not match the model (its data hash, its classes).
    """
    import pandas as pd

    model_dir = Path(model_dir)
    csv = Path(split_csv) if split_csv else model_dir.resolve().parent.parent / "data" / "splits.csv"
    if not csv.is_file():
        where = (
            f"{csv} does not exist"
            if split_csv
            else (f"no splits.csv where the study keeps it ({csv}, for a model in OUTDIR/models/chosen)")
        )
        raise FileNotFoundError(
            f"cannot find the test split of {model_dir}: {where}; pass --split-csv "
            "OUTDIR/data/splits.csv of the study that trained it"
        )
    view = ModelMeta(meta)
    model_hash = view.data_hash
    info = read_json(csv.parent / "data.json") if (csv.parent / "data.json").is_file() else {}
    data_hash = info.get("data_hash")
    if model_hash and data_hash and model_hash != data_hash:
        raise ValueError(
            f"{csv} splits other data (data hash {data_hash[:12]}…) than {model_dir} was trained on "
            f"({model_hash[:12]}…); pass --split-csv the splits.csv of the study that trained it"
        )
    root = data or info.get("root") or view.data_root
    if not root or not Path(root).is_dir():
        found = f"{root} does not exist" if root else "neither data.json nor model.json records it"
        raise FileNotFoundError(f"cannot find the images of {csv}: {found}; pass --data the dataset folder")
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    missing = {"path", "class", "split"} - set(frame.columns)
    if missing:
        raise ValueError(
            f"{csv} lacks the column(s) {', '.join(sorted(missing))}: it is not a splits.csv written "
            "by allstudy.data.prepare; pass --split-csv OUTDIR/data/splits.csv"
        )
    test = frame[frame["split"] == "test"]
    if test.empty:
        raise ValueError(f"{csv} has no test rows; pass --split-csv a split with a test part")
    classes = list(meta["classes"])
    unknown = sorted(set(test["class"]) - set(classes))
    if unknown:
        raise ValueError(
            f"{csv} has classes {unknown} that {model_dir} does not know ({classes}); pass --split-csv "
            "the splits.csv of the study that trained it"
        )
    root = Path(root)
    absent = [p for p in test["path"] if not (root / p).is_file()]
    if absent:
        raise FileNotFoundError(
            f"{len(absent)} of {len(test)} test images are not under {root} (e.g. "
            f"{root / absent[0]}); pass --data the dataset folder the split was made from"
        )
    return HeldOutSplit(root, list(test["path"]), np.array([classes.index(c) for c in test["class"]]), csv, data_hash)


# --------------------------------------------------------------------------------- the graph


def to_onnx(function, path: str | os.PathLike, opset: int | None = None) -> int:
    """Write ``function`` as ONNX to ``path`` with tf2onnx; return the ONNX opset used."""
    try:
        import tf2onnx
    except ImportError as err:
        raise ExportUnavailable(
            f"ONNX export needs tf2onnx, onnx and onnxruntime ({err}); install them with pip install -e '.[export]'"
        ) from None
    proto, _ = tf2onnx.convert.from_function(
        function, input_signature=function.input_signature, opset=opset, output_path=str(path)
    )
    return max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


# --------------------------------------------------------------------------------- runtimes


class TFLiteRunner:
    """A TFLite file run by LiteRT (``ai_edge_litert``; TensorFlow's deprecated interpreter without it)."""

    def __init__(self, path: str | os.PathLike):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Interpreter = tf.lite.Interpreter
        self.interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self._shape: tuple[int, ...] | None = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.shape != self._shape:
            self.interpreter.resize_tensor_input(self.input, batch.shape)
            self.interpreter.allocate_tensors()
            self._shape = batch.shape
        self.interpreter.set_tensor(self.input, batch)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output).copy()


class ONNXRunner:
    """An ONNX file run by ONNX Runtime on the CPU."""

    def __init__(self, path: str | os.PathLike):
        try:
            import onnxruntime
        except ImportError as err:
            raise ExportUnavailable(
                f"checking an ONNX export needs onnxruntime ({err}); install it with pip install -e '.[export]'"
            ) from None
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.asarray(batch, dtype=np.float32)})[0]


# --------------------------------------------------------------------------------- parity


def parity(
    reference: np.ndarray,
    exported: np.ndarray,
    labels: np.ndarray,
    policy: DecisionPolicy | None = None,
    temperature: float = 1.0,
) -> dict:
    """Agreement of exported probabilities with the reference ones, and both accuracies on ``labels``.

    With the model's decision ``policy`` (and temperature), also how often the two give the same
    verdict and how many malignant fields each calls benign.
    """
    if reference.shape != exported.shape:
        raise ValueError(f"the export gives probabilities of shape {exported.shape}, the model {reference.shape}")
    diff = np.abs(exported.astype(np.float64) - reference.astype(np.float64))
    accuracy = float(np.mean(exported.argmax(1) == labels))
    keras_accuracy = float(np.mean(reference.argmax(1) == labels))
    return {
        "argmax_agreement": float(np.mean(exported.argmax(1) == reference.argmax(1))),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "n_images": int(len(labels)),
        "n_disagree": int(np.sum(exported.argmax(1) != reference.argmax(1))),
        "test_accuracy": accuracy,
        "keras_test_accuracy": keras_accuracy,
        "accuracy_change_pp": round(100 * (accuracy - keras_accuracy), 4),
        **({} if policy is None else _verdict_parity(reference, exported, labels, policy, temperature)),
    }


def _verdict_parity(
    reference: np.ndarray, exported: np.ndarray, labels: np.ndarray, policy: DecisionPolicy, temperature: float
) -> dict:
    ours, theirs = (policy.decide(apply_temperature(p, temperature)).verdict for p in (exported, reference))
    malignant = np.array(policy.malignant)[labels]
    return {
        "verdict_agreement": float(np.mean(ours == theirs)),
        "n_verdict_disagree": int(np.sum(ours != theirs)),
        "malignant_called_benign": int(np.sum((ours == "benign") & malignant)),
        "keras_malignant_called_benign": int(np.sum((theirs == "benign") & malignant)),
    }


def _versions(fmt: str) -> dict[str, str]:
    found = {}
    for name in _TOOLS[fmt]:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def write_export(fmt: str, model, function, out: Path) -> dict[str, dict]:
    """Convert and write every variant of ``fmt`` (see FILES) atomically; return {variant: facts}."""
    files = FILES[fmt]
    if fmt == "tflite":
        facts: dict[str, dict] = {}
        for (variant, name), flatbuffer in zip(files.items(), to_tflite(model, function, (False, True)), strict=True):
            with atomic_path(out / name) as tmp:
                tmp.write_bytes(flatbuffer)
            facts[variant] = {}
        return facts
    with atomic_path(out / files["float32"]) as tmp:
        return {"float32": {"onnx_opset": to_onnx(function, tmp)}}


def export_model(
    model_dir: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike,
    split_csv: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    batch_size: int = 32,
    limit: int | None = None,
    quiet: bool = False,
) -> dict:
    """Export ``model_dir`` as ``fmt`` into ``out`` and check it on the test split; return parity.json's content.

    ``limit`` checks only the first N test images (for a quick look; parity.json says so).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, not {batch_size}")
    if fmt == "onnx":  # fail before the slow steps when the tools are missing
        for module in ("tf2onnx", "onnxruntime"):
            try:
                __import__(module)
            except ImportError as err:
                raise ExportUnavailable(
                    f"ONNX export needs tf2onnx, onnx and onnxruntime ({err}); install them "
                    "with pip install -e '.[export]'"
                ) from None
    started = time.perf_counter()
    predictor = Predictor(model_dir, batch_size=batch_size, runtime="keras")  # the reference is Keras
    meta, size = predictor.meta, predictor.input_size
    split = find_test_split(model_dir, meta, split_csv, data)
    paths, labels = split.paths[: limit or None], split.labels[: limit or None]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "parity.json").unlink(missing_ok=True)  # a stale one must not vouch for the files written now

    from tqdm import tqdm

    _log(f"test split: {len(paths)} images from {split.splits_csv} (images in {split.root})", quiet)
    inputs = np.stack(
        [
            predictor.model_input(split.root / p)
            for p in tqdm(paths, desc="reading test images", unit="img", disable=quiet)
        ]
    ).astype(np.float32)
    t0 = time.perf_counter()
    reference = run_batched(lambda b: predictor.forward(b)[0], inputs, batch_size, "keras model", quiet)
    seconds = {"keras_predict": time.perf_counter() - t0}

    function = forward_function(predictor.model, size)
    runner = TFLiteRunner if fmt == "tflite" else ONNXRunner
    _log(f"converting to {fmt} ...", quiet)
    t0 = time.perf_counter()
    written = write_export(fmt, predictor.model, function, out)
    seconds["convert"] = time.perf_counter() - t0
    variants = []
    for variant, name in FILES[fmt].items():
        t0 = time.perf_counter()
        probabilities = run_batched(runner(out / name), inputs, batch_size, name, quiet)
        row = {
            "variant": variant,
            "file": name,
            "file_bytes": (out / name).stat().st_size,
            "sha256": sha256_file(out / name),
            **written[variant],
            **parity(reference, probabilities, labels, predictor.policy, predictor.temperature),
            "predict_seconds": round(time.perf_counter() - t0, 2),
        }
        variants.append(row)
        _log(
            f"  {name}: {row['file_bytes'] / 1e6:.2f} MB, argmax agreement {row['argmax_agreement']:.4f}, "
            f"max |dp| {row['max_abs_diff']:.2e}, test accuracy {row['test_accuracy']:.2%} "
            f"(Keras {row['keras_test_accuracy']:.2%}, {row['accuracy_change_pp']:+.2f} pp), verdict agreement "
            f"{row['verdict_agreement']:.4f}",
            quiet,
        )

    keras_file, view = predictor.folder.model_file, ModelMeta(meta)
    report = {
        "format": fmt,
        **variants[0],
        "variants": variants,
        "source": {
            "model_dir": str(model_dir),
            "model_sha256": sha256_file(keras_file),
            "model_bytes": keras_file.stat().st_size,
            "run": view.run,
            "arch": view.arch,
            "tta_views": view.tta_views,
            "input_mode": view.input_mode,
            "code_version": view.provenance.get("code_version"),
        },
        "data": {
            "splits_csv": str(split.splits_csv),
            "root": str(split.root),
            "split": "test",
            "data_hash": split.data_hash or view.data_hash,
            "n_test": len(split.paths),
            "limited_to": limit,
        },
        "io": {
            "input": {
                "name": "image",
                "shape": [None, size, size, 3],
                "dtype": "float32",
                "values": "RGB 0..255, as allstudy.serving.predictor.Predictor.model_input gives",
            },
            "output": {
                "shape": [None, len(predictor.classes)],
                "classes": predictor.classes,
                "values": "class probabilities before temperature scaling (model.json temperature)",
            },
        },
        "reference": "allstudy.serving.predictor.Predictor.forward (Keras, safe mode) on the same inputs",
        "tools": _versions(fmt),
        "seconds": {**{k: round(v, 2) for k, v in seconds.items()}, "total": round(time.perf_counter() - started, 2)},
    }
    write_json(ModelFolder(out).meta_file, meta)
    write_json(out / "parity.json", report)  # last: its presence marks a complete export
    return report
