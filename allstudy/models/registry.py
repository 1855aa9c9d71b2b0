"""One registry of architectures: each with its input size, its own preprocessing and its weights.

Every model takes raw RGB pixels in 0..255 at its input size and holds its preprocessing as layers,
so the saved ``model.keras`` is all a predictor or an exporter needs. Transfer models are
``image -> preprocessing -> backbone(training=False) -> head``; the backbone (a nested model named
``backbone``) and the head (``head``: dropout + softmax) are reachable by name, so the head can be
trained on cached backbone features and the top of the backbone fine-tuned afterwards.

Weights: ``"imagenet"`` (a matching file in the weights folder when there is one, else Keras'
download), a file path, or ``None`` (from scratch).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from allstudy.models.layers import load_model


class WeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but neither a local file nor the download could provide them."""


@dataclass(frozen=True)
class Architecture:
    """What the registry knows about one architecture."""

    name: str
    input_size: int
    preprocessing: str  # "unit" (x/255), "tf" (x/127.5-1), "caffe" (BGR - mean), "inside" (in the backbone)
    transfer: bool  # has an ImageNet backbone
    description: str
    offline_file: str | None = None  # name of an ImageNet file that loads with no network (see weights folder)
    fine_tune_layers: int = 0  # top backbone layers with weights unfrozen in phase 2 (BatchNorm stays frozen)
    source: str = ""


REGISTRY: dict[str, Architecture] = {
    a.name: a
    for a in [
        Architecture(
            "sequential",
            150,
            "unit",
            False,
            "1 Conv2D (32 3x3, ReLU), 1 MaxPool, Flatten, Dense softmax (the Pak Heart J study's Sequential model)",
            source="Pak Heart J 2023",
        ),
        Architecture(
            "lenet",
            150,
            "unit",
            False,
            "LeNet-5: Conv 6@5x5, pool, Conv 16@5x5, pool, Dense 120, 84, softmax "
            "(ReLU, max pooling), 150 px as in the Pak Heart J study",
            source="LeCun et al. 1998",
        ),
        Architecture(
            "vgg16",
            224,
            "caffe",
            True,
            "VGG16 (keras.applications) + global average pooling + softmax head",
            fine_tune_layers=3,
            source="Simonyan & Zisserman 2015",
        ),
        Architecture(
            "resnet50",
            224,
            "caffe",
            True,
            "ResNet50 (keras.applications) + global average pooling + softmax head",
            fine_tune_layers=9,
            source="He et al. 2016",
        ),
        Architecture(
            "mobilenet",
            224,
            "tf",
            True,
            "MobileNet v1 (keras.applications, width alpha) + softmax head",
            offline_file="mobilenet_{alpha_tag}_224_tf_no_top.h5",
            fine_tune_layers=4,
            source="Howard et al. 2017",
        ),
        Architecture(
            "mobilenetv2",
            224,
            "tf",
            True,
            "MobileNetV2 alpha 1.0 (keras.applications) + softmax head",
            offline_file="mobilenet_v2_1.0_224_imagenet_no_top.h5",
            fine_tune_layers=6,
            source="Sandler et al. 2018",
        ),
        Architecture(
            "efficientnet",
            224,
            "inside",
            True,
            "EfficientNet-Lite0 from a local .keras file, or "
            "EfficientNetB0 (keras.applications) where ImageNet weights can be downloaded",
            offline_file="efficientnet_lite0_imagenet.keras",
            fine_tune_layers=6,
            source="Tan & Le 2019",
        ),
    ]
}


def get_architecture(name: str) -> Architecture:
    """The registry entry of ``name``, or a clear error listing the known ones."""
    if name not in REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def _alpha_tag(alpha: float) -> str:
    return {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}.get(float(alpha), str(alpha))


def default_weights_dir() -> Path | None:
    """Where ImageNet files that load offline are looked for: ``$ALLSTUDY_WEIGHTS_DIR``, if set."""
    value = os.environ.get("ALLSTUDY_WEIGHTS_DIR")
    return Path(value) if value else None


def resolve_weights(
    arch: Architecture, weights: str | None, alpha: float = 1.0, weights_dir: str | os.PathLike | None = None
) -> str | None:
    """Turn the user's ``weights`` into what the builder loads: None, ``"imagenet"`` or a file path.

    ``"imagenet"`` becomes the architecture's offline file when the weights folder holds it.
    """
    if weights in (None, "", "none", "None", "scratch"):
        return None
    if weights != "imagenet":
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist; pass an existing file, 'imagenet' or 'none'")
        return str(path)
    if not arch.transfer:
        raise ValueError(f"{arch.name} has no ImageNet weights; use weights='none'")
    folder = Path(weights_dir) if weights_dir else default_weights_dir()
    if folder is not None and arch.offline_file:
        candidate = folder / arch.offline_file.format(alpha_tag=_alpha_tag(alpha))
        if candidate.is_file():
            return str(candidate)
    return "imagenet"


def _preprocessing(kind: str, x):
    import keras

    if kind == "unit":
        return keras.layers.Rescaling(1 / 255.0, name="preprocess")(x)
    if kind == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(x)
    if kind == "caffe":  # RGB -> BGR and ImageNet mean subtraction, as keras.applications' "caffe" mode
        permute = np.zeros((1, 1, 3, 3), np.float32)
        permute[0, 0, 2, 0] = permute[0, 0, 1, 1] = permute[0, 0, 0, 2] = 1.0
        layer = keras.layers.Conv2D(3, 1, name="preprocess", trainable=False)
        y = layer(x)
        layer.set_weights([permute, np.array([-103.939, -116.779, -123.68], np.float32)])
        return y
    if kind == "inside":
        return x
    raise ValueError(f"unknown preprocessing {kind!r}")


def _download_guard(arch: Architecture, build: Callable, weights: str | None, alpha: float = 1.0):
    try:
        return build()
    except Exception as err:  # Keras raises several kinds when the download fails
        if weights != "imagenet" or isinstance(err, (ValueError, TypeError)) and "URL" not in str(err):
            raise
        offline = arch.offline_file.format(alpha_tag=_alpha_tag(alpha)) if arch.offline_file else "the Keras .h5 file"
        raise WeightsUnavailable(
            f"ImageNet weights for {arch.name} could not be downloaded ({type(err).__name__}: {err}). "
            f"With no network, pass a weights file (--weights PATH, or --weights-dir DIR holding "
            f"{offline}), or train from scratch with --weights none."
        ) from err


def _backbone(arch: Architecture, size: int, weights: str | None, alpha: float):
    import keras

    apps = keras.applications
    shape = (size, size, 3)
    common = {"include_top": False, "input_shape": shape, "pooling": "avg"}
    if arch.name == "vgg16":
        return _download_guard(arch, lambda: apps.VGG16(weights=weights, **common), weights)
    if arch.name == "resnet50":
        return _download_guard(arch, lambda: apps.ResNet50(weights=weights, **common), weights)
    if arch.name == "mobilenet":
        return _download_guard(arch, lambda: apps.MobileNet(alpha=alpha, weights=weights, **common), weights, alpha)
    if arch.name == "mobilenetv2":
        return _download_guard(arch, lambda: apps.MobileNetV2(alpha=1.0, weights=weights, **common), weights)
    if arch.name == "efficientnet":
        if weights is not None and weights.endswith(".keras"):  # EfficientNet-Lite0, whole model: cut at avg_pool
            full = load_model(weights)
            if size != full.input_shape[1] and full.input_shape[1] is not None:
                raise ValueError(f"{weights} takes {full.input_shape[1]} px input, not {size}")
            return keras.Model(full.inputs, full.get_layer("avg_pool").output, name="efficientnet_lite0")
        return _download_guard(arch, lambda: apps.EfficientNetB0(weights=weights, **common), weights)
    raise ValueError(f"{arch.name} has no backbone")


@dataclass
class Built:
    """A built model and, for transfer models, the parts phase 1 and phase 2 train separately."""

    model: Any  # keras.Model (Keras ships no type information)
    arch: Architecture
    input_size: int
    weights: str | None
    features: Any = None  # image -> pooled backbone features
    head: Any = None  # features -> probabilities
    backbone: Any = None
    info: dict = field(default_factory=dict)


def build_model(
    name: str,
    n_classes: int,
    input_size: int | None = None,
    weights: str | None = None,
    alpha: float = 1.0,
    dropout: float = 0.2,
    weights_dir: str | os.PathLike | None = None,
) -> Built:
    """Build the named architecture for ``n_classes`` classes (see :data:`REGISTRY`)."""
    import keras

    arch = get_architecture(name)
    if n_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {n_classes}")
    size = int(input_size or arch.input_size)
    resolved = resolve_weights(arch, weights, alpha, weights_dir)
    inputs = keras.Input((size, size, 3), name="image")
    x = _preprocessing(arch.preprocessing, inputs)
    if name == "sequential":
        x = keras.layers.Conv2D(32, 3, activation="relu", name="conv")(x)
        x = keras.layers.MaxPooling2D(2, name="pool")(x)
        x = keras.layers.Flatten(name="flatten")(x)
        outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")(x)
        return Built(keras.Model(inputs, outputs, name=name), arch, size, None)
    if name == "lenet":
        x = keras.layers.Conv2D(6, 5, activation="relu", name="c1")(x)
        x = keras.layers.MaxPooling2D(2, name="s2")(x)
        x = keras.layers.Conv2D(16, 5, activation="relu", name="c3")(x)
        x = keras.layers.MaxPooling2D(2, name="s4")(x)
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dense(120, activation="relu", name="f5")(x)
        x = keras.layers.Dense(84, activation="relu", name="f6")(x)
        outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")(x)
        return Built(keras.Model(inputs, outputs, name=name), arch, size, None)

    backbone = _backbone(arch, size, resolved, alpha)
    backbone.name = "backbone"  # a stable name for fine-tuning and Grad-CAM
    pretrained = resolved is not None
    if pretrained:
        _inference_mode(backbone)
    else:
        _fast_batchnorm(backbone)
        _he_initialise(backbone)
    # Pretrained: called with training=False, and (since Keras 3 passes the outer call's training flag
    # down anyway) made deterministic by _inference_mode. From scratch, BatchNorm must learn.
    features = backbone(x, training=False) if pretrained else backbone(x)
    # The head standardises the pooled features (adapted on the training features by allstudy.training.fit):
    # backbone features differ in scale by orders of magnitude, and a linear softmax on them trains
    # far better once they are centred and scaled, as for any logistic regression.
    head = keras.Sequential(
        [
            keras.Input((features.shape[-1],)),
            keras.layers.Normalization(name="standardise"),
            keras.layers.Dropout(dropout, name="dropout"),
            keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities"),
        ],
        name="head",
    )
    outputs = head(features)
    model = keras.Model(inputs, outputs, name=name)
    return Built(
        model,
        arch,
        size,
        resolved,
        features=keras.Model(inputs, features, name=f"{name}_features"),
        head=head,
        backbone=backbone,
        info={"alpha": alpha if name == "mobilenet" else None},
    )


#: A feature whose training spread is below this fraction of the median feature's is left unscaled.
NEAR_CONSTANT = 1e-2


def adapt_standardise(layer, features: np.ndarray) -> int:
    """Adapt a head's ``standardise`` layer to training features; leave near-constant features unscaled.

    Keras' Normalization divides by max(spread, 1e-7): a feature (near) constant in training, such as
    a ReLU unit that no training field lights up, would turn the first field that does into an
    extreme answer. As scikit-learn's ``StandardScaler`` does for constant features, such a feature
    is only centred (variance 1), so no single feature can dominate. Returns how many were.
    """
    layer.adapt(features)
    variance = np.asarray(layer.adapt_variance.numpy(), dtype=np.float64)
    spread = np.sqrt(np.maximum(variance, 0.0))
    floor = NEAR_CONSTANT * float(np.median(spread)) if spread.size else 0.0
    constant = spread <= floor
    if constant.any():
        layer.adapt_variance.assign(np.where(constant, 1.0, variance).astype(layer.adapt_variance.dtype))
        layer.finalize_state()
    return int(constant.sum())


def copy_weights(source, target) -> None:
    """``target.set_weights(source.get_weights())``, then refresh what adapted layers derive from their weights.

    A Keras ``Normalization`` layer computes its mean and variance tensors from its variables only in
    ``adapt`` and on loading (``finalize_state``); ``set_weights`` alone leaves the old ones in use.
    """
    import keras

    target.set_weights(source.get_weights())
    stack = list(target.layers)
    while stack:
        layer = stack.pop()
        stack.extend(getattr(layer, "layers", []))
        if isinstance(layer, keras.layers.Normalization):
            layer.finalize_state()


def _inference_mode(backbone) -> None:
    """Freeze a pretrained backbone so that it computes the same in training as in inference.

    Keras 3 runs a BatchNormalization layer whose ``trainable`` is False in inference mode (its
    moving statistics, never the batch's), and that stays so while fine-tuning (see
    :func:`unfreeze_top`); dropout inside a backbone (EfficientNetB0's stochastic depth) is
    switched off, so that cached features equal what the model computes.
    """
    import keras

    backbone.trainable = False
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0


def _he_initialise(backbone) -> None:
    """From scratch, draw the convolution kernels from He's normal initialiser (ReLU networks).

    keras.applications builds them with Glorot's, which halves the signal at every ReLU: fine with
    BatchNorm (ResNet50), but VGG16 has none, and through its 13 plain convolutions Glorot's kernels
    learned slowly, or stayed near chance at a larger learning rate, like the collapse the Pak Heart J
    study reported (measured in docs/results.md).
    """
    import keras

    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel = layer.kernel
            kernel.assign(keras.initializers.HeNormal()(kernel.shape, kernel.dtype))


def _fast_batchnorm(backbone, momentum: float = 0.9) -> None:
    """From scratch, let BatchNorm's moving statistics follow the weights within a short run.

    Keras' default momentum 0.99 averages over ~100 steps; a few epochs of 60 steps leave the moving
    statistics far behind the changing weights, and validation (which uses them) collapses while
    training accuracy climbs, as ResNet50 from scratch did (measured in docs/results.md).
    """
    import keras

    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def unfreeze_top(backbone, n_layers: int) -> int:
    """Make the top ``n_layers`` layers *with weights* of a backbone trainable, BatchNorm excepted.

    BatchNorm layers stay frozen, hence in inference mode. Returns how many layers were unfrozen.
    """
    import keras

    backbone.trainable = True
    count = 0
    for layer in reversed(backbone.layers):
        unfreeze = count < n_layers and bool(layer.weights) and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = unfreeze
        count += unfreeze
    return count
