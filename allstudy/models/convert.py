"""A Keras model of this study as one traced forward pass, converted to TensorFlow Lite and run by LiteRT.

:func:`forward_function` is the saved model's own forward pass (its dihedral views stacked on the
batch axis so that the network appears once; optionally with the out-of-distribution guard's
embedding from the same pass). :func:`to_tflite` converts it with built-in operators only. Training
runs frozen backbones through LiteRT for bulk features (:func:`bulk_predictor`), the study writes the
model folder's serving file (:mod:`allstudy.serving.runtime`) and ``allstudy export`` the exported files
(:mod:`allstudy.serving.export`) from the same two functions.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from allstudy.models.graph import embedding_model, pooled
from allstudy.models.layers import Dihedral, single_view


def forward_function(model, input_size: int, embedding: bool = False):
    """The model's forward pass as a ``tf.function`` of one input, float32 (None, S, S, 3), named ``image``.

    For a :func:`allstudy.models.layers.with_tta` model: each of its Dihedral views of the batch, stacked on the
    batch axis, through its single-view network once, averaged per image. Otherwise the model itself.
    It returns the probabilities; with ``embedding``, a dict of them and of the out-of-distribution
    guard's embedding (:func:`allstudy.models.graph.embedding_model`, pooled) of the identity view, from the same pass.
    """
    single = single_view(model)
    views = [layer for layer in model.layers if isinstance(layer, Dihedral)]
    spec = tf.TensorSpec((None, input_size, input_size, 3), tf.float32, name="image")
    tta = single is not model and bool(views)
    network = single if tta else model
    identity = [view.k for view in views].index(0) if tta else 0  # where the unturned view sits in the stack
    if embedding:
        network = keras.Model(network.inputs[0], [network.outputs[0], embedding_model(model)[0].outputs[0]])

    def forward(image):
        with _statistics_from_variables(model):
            n = tf.shape(image)[0]
            batch = image
            if tta:
                batch = tf.concat([tf.reshape(view(image), (-1, input_size, input_size, 3)) for view in views], 0)
            outputs = network(batch, training=False)
            probabilities, features = outputs if embedding else (outputs, None)
            probabilities = tf.cast(probabilities, tf.float32)
            if tta:
                probabilities = tf.reduce_mean(tf.reshape(probabilities, (len(views), n, -1)), axis=0)
            if not embedding:
                return probabilities
            return {"probabilities": probabilities, "embedding": pooled(features[identity * n : (identity + 1) * n])}

    return tf.function(forward, input_signature=[spec], autograph=False)  # no Python control flow to convert


@contextlib.contextmanager
def _statistics_from_variables(model):
    """While tracing: adapted ``Normalization`` layers compute their mean and variance from their variables.

    Keras keeps them as eager tensors derived from the variables; a traced function would capture
    those as extra inputs, which tf2onnx leaves as unfed graph inputs. Derived inside the graph, they
    are frozen with the weights. The eager tensors are put back afterwards.
    """
    layers, stack = [], list(model.layers)
    while stack:
        layer = stack.pop()
        stack.extend(getattr(layer, "layers", []))
        if isinstance(layer, keras.layers.Normalization) and layer.built and layer.input_mean is None:
            layers.append(layer)
    saved = [(layer.mean, layer.variance) for layer in layers]
    for layer in layers:
        layer.finalize_state()
    try:
        yield
    finally:
        for layer, (mean, variance) in zip(layers, saved, strict=True):
            layer.mean, layer.variance = mean, variance


def to_tflite(model, function, quantize: tuple[bool, ...] = (False, True)) -> list[bytes]:
    """TFLite flatbuffers of ``function``, one per ``quantize`` flag, from one SavedModel of it with the model's
    weights.

    A true flag: dynamic-range quantisation (weights int8, activations float). Built-in operators only.
    """
    flatbuffers = []
    with tempfile.TemporaryDirectory(prefix="allstudy-export-") as saved:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", function)
        archive.write_out(saved, verbose=False)
        for flag in quantize:
            converter = tf.lite.TFLiteConverter.from_saved_model(saved)  # one converter per conversion
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            if flag:
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            flatbuffers.append(converter.convert())
    return flatbuffers


def run_batched(runner, inputs: np.ndarray, batch_size: int, desc: str, quiet: bool = False) -> np.ndarray:
    """``runner`` over ``inputs`` in batches, with a progress bar; the stacked outputs."""
    outputs = []
    with tqdm(total=len(inputs), desc=desc, unit="img", disable=quiet) as bar:
        for start in range(0, len(inputs), batch_size):
            outputs.append(np.asarray(runner(inputs[start : start + batch_size]), dtype=np.float32))
            bar.update(min(batch_size, len(inputs) - start))
    return np.concatenate(outputs)


def litert_available() -> bool:
    """Whether LiteRT (``ai_edge_litert``) can be imported."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True


#: Largest accepted difference, relative to the largest magnitude, of a bulk LiteRT output from Keras.
MAX_BULK_DIFF = 1e-3


class LiteRTModel:
    """A one-input, one-output Keras model converted in memory to TFLite and run by LiteRT (XNNPACK).

    For bulk inference on a CPU, such as the frozen backbone's features in transfer learning: about
    2-3 times the throughput of ``model.predict`` on this study's backbones. Inputs are float32
    (N, S, S, 3) images as the Keras model takes them.
    """

    def __init__(self, model, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        function = forward_function(model, int(model.input_shape[1]))
        interpreter = Interpreter(
            model_content=to_tflite(model, function, (False,))[0], num_threads=threads or os.cpu_count() or 1
        )
        self._runner = interpreter.get_signature_runner()
        self._output = next(iter(self._runner.get_output_details()))

    def predict(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """The model's output for ``images``, in batches of ``batch_size``."""
        return np.concatenate(
            [
                self._runner(image=np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32))[
                    self._output
                ].copy()
                for i in range(0, len(images), batch_size)
            ]
        )


def bulk_predictor(model, check_images: np.ndarray, batch_size: int = 32):
    """``predict(images) -> outputs`` for bulk inference: LiteRT on a CPU when it agrees with Keras on
    ``check_images`` (within :data:`MAX_BULK_DIFF`), else the Keras model's own ``predict``; and its name."""

    def keras_predict(images):
        return model.predict(np.asarray(images, np.float32), batch_size=batch_size, verbose=0)

    if tf.config.list_physical_devices("GPU") or not litert_available():
        return keras_predict, "keras"
    try:
        lite = LiteRTModel(model)
    except Exception as err:  # a converter limitation: Keras still works, say so and go on
        print(f"note: LiteRT cannot run {model.name} ({type(err).__name__}: {err}); using Keras")
        return keras_predict, "keras"
    check = np.asarray(check_images, np.float32)
    expected, got = keras_predict(check), lite.predict(check, batch_size)
    difference = float(np.abs(expected - got).max() / max(float(np.abs(expected).max()), 1e-12))
    if difference > MAX_BULK_DIFF:
        print(f"note: LiteRT differs from Keras on {model.name} (relative {difference:.1e}); using Keras")
        return keras_predict, "keras"
    return (lambda images: lite.predict(images, batch_size)), "litert"
