"""Grad-CAM: where in a blood-smear image a model looked for the class it predicts.

The keras-io recipe ("Grad-CAM class activation visualization", after Selvaraju et al. 2017): the
gradients of the class score with respect to the last convolutional feature map, averaged over space,
weight that map's channels; their weighted sum, through a ReLU and normalised to [0, 1], is the heatmap.
The class score is the pre-softmax logit when the model ends in a softmax ``Dense`` (as every model of
:mod:`allstudy.models.registry` does), as in the recipe, so that a confident prediction does not saturate it.

Transfer models are ``image -> preprocess -> backbone (nested model) -> head``; Keras 3 cannot join
tensors across a nested model's boundary, so for them the outer layers run one after another, the
backbone through a model of its own graph that also returns the feature map. Flat models (sequential,
lenet) use one model of their own graph. Either is built once per (model, layer) and the gradient step
runs in a ``tf.function`` traced once, so repeated calls (the app's, one per request) are fast.
"""

from __future__ import annotations

import functools
import weakref

import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf

from allstudy.data.classes import display_name
from allstudy.models.graph import node_of

_POOLING = ("MaxPooling2D", "AveragePooling2D", "GlobalMaxPooling2D", "GlobalAveragePooling2D")


def _is_model(layer) -> bool:
    return isinstance(layer, keras.Model)


def _feature_map_layer(layer) -> bool:
    """A layer whose (single) output is a 4-D feature map, pooling and inputs excepted."""
    if type(layer).__name__ in _POOLING + ("InputLayer",) or _is_model(layer):
        return False
    try:
        return len(layer.output.shape) == 4
    except (AttributeError, ValueError):  # never called, or called more than once
        return False


def last_conv_layer(model) -> tuple[str | None, str]:
    """(nested model's name or None, layer name) of the last 4-D feature map, the layer Grad-CAM uses.

    Nested models (a transfer model's ``backbone``) are searched inside, one level deep; pooling layers
    are skipped, so VGG16 gives ``block5_conv3`` rather than ``block5_pool``.
    """
    for layer in reversed(model.layers):
        if _is_model(layer):
            for inner in reversed(layer.layers):
                if _feature_map_layer(inner):
                    return layer.name, inner.name
        elif _feature_map_layer(layer):
            return None, layer.name
    raise ValueError(f"model {model.name!r} has no layer with a 4-D output for Grad-CAM")


def _find_layer(model, name: str) -> tuple[str | None, str]:
    """Where the layer called ``name`` is: at the top level, or inside a nested model ("nested/name" too)."""
    if "/" in name:
        outer, inner = name.split("/", 1)
        model.get_layer(outer).get_layer(inner)  # raises a clear ValueError when absent
        return outer, inner
    if any(layer.name == name for layer in model.layers):
        return None, name
    for layer in model.layers:
        if _is_model(layer) and any(inner.name == name for inner in layer.layers):
            return layer.name, name
    raise ValueError(f"no layer {name!r} in model {model.name!r} or its nested models")


def _top_level_chain(model) -> list:
    """The model's top-level layers from input to output, when each takes the one before's output."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("Grad-CAM needs a model with one input and one output")
    chain, tensor = [], model.outputs[0]
    while tensor is not model.inputs[0]:
        operation, node = node_of(tensor)
        if len(node.input_tensors) != 1:
            raise ValueError(
                f"Grad-CAM through a nested model needs a chain of layers at the top level; "
                f"{operation.name!r} takes {len(node.input_tensors)} inputs"
            )
        chain.append(operation)
        tensor = node.input_tensors[0]
    return chain[::-1]


def _softmax_dense(layer) -> bool:
    return isinstance(layer, keras.layers.Dense) and getattr(layer.activation, "__name__", "") == "softmax"


def _tail(final) -> tuple[list, object | None]:
    """How the class scores come from the final layer's input: (layers to run, softmax Dense or None).

    None means the final layer runs as it is and its output is the score.
    """
    if _softmax_dense(final):
        return [], final
    if isinstance(final, keras.Sequential) and final.layers and _softmax_dense(final.layers[-1]):
        return list(final.layers[:-1]), final.layers[-1]
    return [final], None


def _logits(dense, x):
    """A softmax Dense layer's pre-activation."""
    from keras import ops

    x = ops.matmul(ops.cast(x, dense.compute_dtype), dense.kernel)
    return ops.add(x, dense.bias) if dense.use_bias else x


class GradCam:
    """Grad-CAM of one model at one layer (its last 4-D feature map unless ``layer`` names one).

    ``layer`` is a layer name, searched at the top level and then inside nested models, or
    ``"backbone/<name>"``. Call it with a batch of raw RGB images (0..255, at the model's input size).
    """

    def __init__(self, model, layer: str | None = None, batch_size: int = 32):
        self.nested, self.layer = _find_layer(model, layer) if layer else last_conv_layer(model)
        self.input_shape = tuple(model.input_shape[1:])
        self.n_classes = int(model.output_shape[-1])
        self.batch_size = int(batch_size)
        final, node = node_of(model.outputs[0])
        self._tail_layers, self._dense = _tail(final)
        if self.nested is None:  # flat: one model of the graph, up to the final layer's input
            self._steps, self._after = [], []
            if self._dense is None or len(node.input_tensors) != 1:  # scores: the model's own output
                self._tail_layers, self._dense, ends = [], None, model.outputs[0]
            else:
                ends = node.input_tensors[0]
            self._features = keras.Model(model.inputs, [model.get_layer(self.layer).output, ends])
        else:  # nested: the outer layers one by one, the nested model through a model of its own graph
            chain = _top_level_chain(model)
            container = model.get_layer(self.nested)
            position = chain.index(container)
            self._steps = chain[:position]
            self._after = chain[position + 1 : -1]
            if position == len(chain) - 1:  # the nested model is the last layer: its output is the score
                self._tail_layers, self._dense = [], None
            self._features = keras.Model(
                container.inputs, [container.get_layer(self.layer).output, container.outputs[0]]
            )
        # A partial, not the method: TensorFlow counts retracing per code object, and so would take the
        # one trace of each of several GradCams for retracing.
        self._trace = tf.function(
            functools.partial(GradCam._step, self),
            input_signature=[tf.TensorSpec((None, *self.input_shape), tf.float32), tf.TensorSpec((None,), tf.int32)],
        )

    def _forward(self, images):
        """(feature map, class scores) of a batch, in inference mode."""
        x = images
        for layer in self._steps:
            x = layer(x, training=False)
        feature_map, x = self._features(x, training=False)
        for layer in self._after + self._tail_layers:
            x = layer(x, training=False)
        return feature_map, (_logits(self._dense, x) if self._dense is not None else x)

    def _step(self, images, class_index):
        with tf.GradientTape() as tape:
            tape.watch(images)  # records every operation, frozen backbones included
            feature_map, scores = self._forward(images)
            feature_map, scores = tf.cast(feature_map, tf.float32), tf.cast(scores, tf.float32)
            target = tf.where(class_index < 0, tf.argmax(scores, axis=-1, output_type=tf.int32), class_index)
            score = tf.gather(scores, target, axis=1, batch_dims=1)
        gradients = tape.gradient(score, feature_map)  # each image's score depends on that image only
        if gradients is None:
            raise ValueError(f"the class scores do not depend on layer {self.layer!r}")
        weights = tf.reduce_mean(gradients, axis=(1, 2))
        cam = tf.nn.relu(tf.einsum("nhwc,nc->nhw", feature_map, weights))
        cam = tf.image.resize(cam[..., None], tf.shape(images)[1:3], method="bilinear")[..., 0]
        heatmaps = tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=(1, 2), keepdims=True))  # 0 stays 0
        probabilities = tf.nn.softmax(scores) if self._dense is not None else scores
        return tf.clip_by_value(heatmaps, 0.0, 1.0), probabilities

    def _class_indices(self, class_index, n: int) -> np.ndarray:
        if class_index is None:
            return np.full(n, -1, np.int32)
        indices = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (n,))
        if indices.size and (indices.min() < 0 or indices.max() >= self.n_classes):
            raise ValueError(f"class_index must be in 0..{self.n_classes - 1}, got {class_index}")
        return indices.astype(np.int32)

    def explain(self, images: np.ndarray, class_index: int | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(heatmaps (N, H, W) in [0, 1], the model's class probabilities (N, classes)) of a batch.

        ``class_index``: one class for all, one per image, or None for each image's predicted class.
        A single image (H, W, 3) gives a heatmap (H, W) and probabilities (classes,).
        """
        images = np.asarray(images, dtype=np.float32)
        single = images.ndim == 3
        images = images[None] if single else images
        expected = self.input_shape
        if images.ndim != 4 or any(e is not None and e != s for e, s in zip(expected, images.shape[1:], strict=True)):
            raise ValueError(f"images must be (N, {', '.join(map(str, expected))}) raw RGB, got {images.shape}")
        indices = self._class_indices(class_index, len(images))
        heat_batches, proba_batches = [], []
        for start in range(0, len(images), self.batch_size):
            h, p = self._trace(images[start : start + self.batch_size], indices[start : start + self.batch_size])
            heat_batches.append(h.numpy())
            proba_batches.append(p.numpy())
        heatmaps = np.concatenate(heat_batches) if heat_batches else np.zeros((0, *images.shape[1:3]), np.float32)
        probabilities = np.concatenate(proba_batches) if proba_batches else np.zeros((0, self.n_classes), np.float32)
        return (heatmaps[0], probabilities[0]) if single else (heatmaps, probabilities)

    def __call__(self, images: np.ndarray, class_index: int | np.ndarray | None = None) -> np.ndarray:
        """Heatmaps (N, H, W) float32 in [0, 1] at the images' resolution (see :meth:`explain`)."""
        return self.explain(images, class_index)[0]


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def gradcam_for(model, layer: str | None = None) -> GradCam:
    """The :class:`GradCam` of ``model`` at ``layer``, built on first use and kept while the model lives."""
    per_model = _CACHE.setdefault(model, {})
    if layer not in per_model:
        per_model[layer] = GradCam(model, layer)
    return per_model[layer]


def gradcam(
    model, images: np.ndarray, class_index: int | np.ndarray | None = None, layer: str | None = None
) -> np.ndarray:
    """Grad-CAM heatmaps (N, H, W), float32 in [0, 1], of raw RGB images (0..255) for ``model``.

    ``class_index`` None explains each image's predicted class; ``layer`` None uses
    :func:`last_conv_layer`. An all-zero map (no positive evidence) stays all zeros.
    """
    return gradcam_for(model, layer)(images, class_index)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colormap: str = "jet") -> np.ndarray:
    """The image (RGB or grey, 0..255) blended with the coloured heatmap: uint8 RGB of the image's size."""
    import matplotlib
    from PIL import Image

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = np.asarray(image, dtype=np.float32)
    rgb = np.repeat(rgb[..., None], 3, axis=-1) if rgb.ndim == 2 else rgb[..., :3]
    heat = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
    if heat.shape != rgb.shape[:2]:
        heat = np.asarray(Image.fromarray(heat).resize((rgb.shape[1], rgb.shape[0]), Image.Resampling.BILINEAR))
    colours = matplotlib.colormaps[colormap](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    return np.clip(np.rint((1.0 - alpha) * rgb + alpha * colours), 0, 255).astype(np.uint8)


def _as_indices(values, classes: list[str]) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return values.astype(int)
    position = {label: i for i, label in enumerate(classes)}
    return np.array([position[str(v)] for v in values], dtype=int)


def _blank(ax) -> None:
    ax.set_xticks([]), ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _pick(rng: np.random.Generator, members: np.ndarray, k: int) -> np.ndarray:
    return np.sort(rng.choice(members, size=min(k, len(members)), replace=False)) if len(members) else members


def gradcam_gallery(
    model,
    images: np.ndarray,
    y_true,
    y_pred,
    classes: list[str],
    per_class: int = 2,
    seed: int = 0,
    layer: str | None = None,
) -> plt.Figure:
    """Per true class (a row): up to ``per_class`` correct, then up to ``per_class`` wrong predictions.

    Each example is the image and its Grad-CAM overlay (of the predicted class), titled
    "true → predicted (p)"; ``y_true``/``y_pred`` are class indices or labels of ``classes``; ``layer``
    as in :class:`GradCam`. Closed, so a notebook shows it once (when it is the cell's value).
    """
    classes = [str(c) for c in classes]
    y_true, y_pred = _as_indices(y_true, classes), _as_indices(y_pred, classes)
    rng = np.random.default_rng(seed)
    chosen = {}
    for c in range(len(classes)):
        of_class = y_true == c
        chosen[c] = (
            _pick(rng, np.flatnonzero(of_class & (y_pred == c)), per_class),
            _pick(rng, np.flatnonzero(of_class & (y_pred != c)), per_class),
        )
    selected = np.concatenate([np.concatenate(pair) for pair in chosen.values()]).astype(int)
    explained = {}
    if len(selected):
        heatmaps, probabilities = gradcam_for(model, layer).explain(np.asarray(images)[selected], y_pred[selected])
        explained = {i: (h, p[y_pred[i]]) for i, h, p in zip(selected, heatmaps, probabilities, strict=True)}

    cols = 4 * per_class  # (image, overlay) pairs: correct ones, then wrong ones
    fig, axes = plt.subplots(len(classes), cols, figsize=(1.7 * cols, 1.9 * len(classes) + 0.4), squeeze=False)
    for c, (correct, wrong) in chosen.items():
        for group, (members, kind) in enumerate(((correct, "correct"), (wrong, "wrong"))):
            for k in range(per_class):
                ax_image, ax_map = axes[c][2 * (group * per_class + k)], axes[c][2 * (group * per_class + k) + 1]
                _blank(ax_image)
                _blank(ax_map)
                if k >= len(members):
                    if k == 0:
                        ax_image.text(
                            0.5,
                            0.5,
                            f"no {kind}\npredictions",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="grey",
                            transform=ax_image.transAxes,
                        )
                    continue
                i = members[k]
                heatmap, p = explained[i]
                image = np.asarray(images[i])
                ax_image.imshow(np.clip(image, 0, 255).astype(np.uint8))
                ax_map.imshow(overlay(image, heatmap))
                ax_image.set_title(
                    f"{classes[y_true[i]]} → {classes[y_pred[i]]} ({p:.2f})",
                    fontsize=7,
                    color="tab:green" if kind == "correct" else "tab:red",
                    loc="left",
                )
        axes[c][0].set_ylabel(display_name(classes[c]), fontsize=8)
    where = gradcam_for(model, layer)
    fig.suptitle(
        f"Grad-CAM ({'/'.join(filter(None, (where.nested, where.layer)))}) of the predicted class: "
        f"correct (left) and wrong (right) predictions per true class",
        fontsize=9,
    )
    fig.tight_layout()
    plt.close(fig)
    return fig
