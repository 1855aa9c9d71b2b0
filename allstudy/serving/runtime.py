"""A model folder's serving file: the Predictor's forward pass as TensorFlow Lite, run by LiteRT.

On a CPU, LiteRT with its XNNPACK kernels runs the study's models faster than TensorFlow runs the
same graph as a ``tf.function`` (measured in docs/results.md). The study therefore writes, beside the
chosen ``model.keras``:

* ``serving.tflite``: :func:`allstudy.models.convert.forward_function` with the embedding (probabilities and
  the out-of-distribution guard's embedding from one pass), float32, built-in operators only;
* ``serving.json`` (written last): the sha256 of ``model.keras`` and of ``serving.tflite``, and the
  parity measured on held-out fields against the Keras model. The file is written only when every
  field gets the same class and no probability differs by more than :data:`MAX_PROBABILITY_DIFF`.

:class:`allstudy.serving.predictor.Predictor` (``runtime="auto"``) runs the file when ``serving.json`` vouches for
both files as they are, LiteRT is installed and TensorFlow sees no GPU; otherwise the Keras model.
Grad-CAM always uses the Keras model. The full check on the test split is ``allstudy export``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np

from allstudy.core.atomic import atomic_path, read_json, write_json
from allstudy.core.hashing import sha256_file
from allstudy.models.convert import forward_function, litert_available, run_batched, to_tflite
from allstudy.serving.model_folder import ModelFolder

SERVING_FILE, SERVING_JSON = ModelFolder(Path()).serving_file.name, ModelFolder(Path()).serving_record_file.name
#: Largest accepted difference of a class probability between the file and the Keras model.
MAX_PROBABILITY_DIFF = 1e-4
#: Largest accepted difference of the embedding, relative to its largest magnitude.
MAX_EMBEDDING_DIFF = 1e-3


class ServingRunner:
    """``serving.tflite`` (its path or its bytes) in LiteRT:
    ``runner(batch) -> (probabilities (N, k), embedding (N, d))``.

    One interpreter answers single images and one the batches, so that the two do not re-plan each
    other's tensors; a lock makes calls from several threads (the app's queue) safe.
    """

    def __init__(self, model: str | os.PathLike | bytes, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
        self._interpreters = [Interpreter(**source, num_threads=threads or os.cpu_count() or 1) for _ in range(2)]
        self._runners = [i.get_signature_runner() for i in self._interpreters]
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        with self._lock:
            out = self._runners[0 if len(batch) == 1 else 1](image=batch)
            return out["probabilities"].copy(), out["embedding"].copy()


def load_serving(model_dir: str | os.PathLike) -> tuple[ServingRunner | None, str]:
    """(runner, why) for a model folder: the runner when its serving file is vouched for, else None and why not."""
    model = ModelFolder(Path(model_dir))
    folder, record, file = model.path, model.serving_record_file, model.serving_file
    if not record.is_file() or not file.is_file():
        return None, f"no {SERVING_FILE} with its {SERVING_JSON} in {folder} (the study writes them)"
    try:
        facts = read_json(record)
    except ValueError as err:
        return None, f"{record} is unreadable ({err})"
    if facts.get("model_sha256") != sha256_file(model.model_file):
        return None, f"{record} describes another model.keras: {SERVING_FILE} is stale"
    if facts.get("file_sha256") != sha256_file(file):
        return None, f"{file} is not the file {record} vouches for"
    if not litert_available():
        return None, "LiteRT is not installed (pip install ai-edge-litert)"
    try:
        return (
            ServingRunner(file),
            f"{SERVING_FILE} in LiteRT (parity on {facts.get('n_images')} fields: "
            f"max |dp| {facts.get('max_abs_diff', float('nan')):.1e})",
        )
    except (RuntimeError, ValueError) as err:
        return None, f"LiteRT cannot run {file} ({err})"


def write_serving(model_dir: str | os.PathLike, inputs: np.ndarray, batch_size: int = 32, quiet: bool = False) -> dict:
    """Convert the model of ``model_dir``, check it on ``inputs`` (model inputs, N x S x S x 3), write the files.

    Returns serving.json's content; ``accepted`` is False (and no file is left) when the check fails.
    Reused as it is while model.keras is unchanged.
    """
    target = ModelFolder(Path(model_dir))
    record, file = target.serving_record_file, target.serving_file
    model_sha = sha256_file(target.model_file)
    if record.is_file() and file.is_file():
        facts = read_json(record)
        if facts.get("model_sha256") == model_sha and facts.get("file_sha256") == sha256_file(file):
            return facts
    record.unlink(missing_ok=True)  # a stale record must not vouch for anything while we work
    file.unlink(missing_ok=True)
    if not litert_available():
        return {"accepted": False, "reason": "LiteRT is not installed"}
    if not quiet:
        print(f"writing {file} (the forward pass in LiteRT) and checking it on {len(inputs)} fields")
    model = target.load_model()
    size = int(model.input_shape[1])
    function = forward_function(model, size, embedding=True)
    inputs = np.asarray(inputs, dtype=np.float32)
    if len(inputs) == 0:
        raise ValueError("write_serving needs held-out fields to check the serving file on; none were given")

    def keras_forward(batch):
        out = function(batch)
        return np.concatenate([out["probabilities"].numpy(), out["embedding"].numpy()], axis=1)

    reference = run_batched(keras_forward, inputs, batch_size, "keras", quiet=True)
    flatbuffer = to_tflite(model, function, (False,))[0]
    runner = ServingRunner(flatbuffer)
    served = run_batched(lambda b: np.concatenate(runner(b), axis=1), inputs, batch_size, "litert", quiet=True)
    k = int(model.output_shape[-1])
    p_ref, p_lite, e_ref, e_lite = reference[:, :k], served[:, :k], reference[:, k:], served[:, k:]
    facts = {
        "model_sha256": model_sha,
        "file_sha256": hashlib.sha256(flatbuffer).hexdigest(),
        "file_bytes": len(flatbuffer),
        "n_images": int(len(inputs)),
        "argmax_agreement": float(np.mean(p_ref.argmax(1) == p_lite.argmax(1))),
        "max_abs_diff": float(np.abs(p_ref - p_lite).max()),
        "embedding_max_rel_diff": float(np.abs(e_ref - e_lite).max() / max(np.abs(e_ref).max(), 1e-12)),
        "limits": {"max_abs_diff": MAX_PROBABILITY_DIFF, "embedding_max_rel_diff": MAX_EMBEDDING_DIFF},
    }
    facts["accepted"] = bool(
        facts["argmax_agreement"] == 1.0
        and facts["max_abs_diff"] <= MAX_PROBABILITY_DIFF
        and facts["embedding_max_rel_diff"] <= MAX_EMBEDDING_DIFF
    )
    if not facts["accepted"]:
        print(
            f"warning: {SERVING_FILE} was not written: on {len(inputs)} fields it differs from the Keras model "
            f"(agreement {facts['argmax_agreement']:.4f}, max |dp| {facts['max_abs_diff']:.1e}); "
            "the Predictor will use the Keras model"
        )
        return facts
    with atomic_path(file) as tmp:
        tmp.write_bytes(flatbuffer)
    write_json(record, facts)  # last: its presence vouches for the file
    if not quiet:
        print(
            f"  {SERVING_FILE}: {facts['file_bytes'] / 1e6:.1f} MB, max |dp| {facts['max_abs_diff']:.1e} "
            f"on {facts['n_images']} fields"
        )
    return facts


# ----------------------------------------------------------------------------- bulk inference
