"""An out-of-distribution guard: "this input is unlike the fields the model was trained on".

A classifier answers every input with one of its classes, confidently or not: a single-cell crop
from another lab (C-NMC's 450 x 450 cells on black), a smear of another stain or magnification, or a
photograph that is no smear at all. The guard tells these apart from the training fields with two
Mahalanobis distances to the training split's distribution, a focus check and a compression check:

* **image statistics** (:func:`guard_statistics`, no model needed): on the field brought to
  :data:`STATS_SIZE` px, the share of near-black, near-white and stained-violet pixels
  (:func:`allstudy.data.segment.leukocyte_mask`), the CIELAB colour of the background (the brightest
  40 %) and of the stain (the darkest 10 %), the colour spread (std of L*, a*, b*) and the mean
  gradient of L* (sharpness and magnification). Shares enter as logits.
* **the model's embedding** (:func:`embedding_model`): what the single-view model's final layer
  reads, i.e. the pooled backbone output for transfer models (the input of their ``head``) and the
  input of the softmax Dense ``probabilities`` for flat models; when that is a flattened feature map
  wider than :data:`MAX_EMBEDDING_DIM` (the ``sequential`` model), the map is averaged over space
  instead. It is reduced by PCA fitted on the training fields (:data:`N_COMPONENTS` components, at
  most one per :data:`FIELDS_PER_COMPONENT` training fields: a 32-dimensional covariance from 80
  fields would fit them too closely, and new in-distribution fields would score far above them).

* **focus** (:func:`fine_detail`): the log mean |Laplacian| of the field's grey image at the model's
  input size. One-sided: an input is flagged when it has less fine detail than all but
  ``1 - QUANTILE`` of the validation fields. Blur hides in the 64-px statistics, and
  the embedding barely notices it, yet it ruins the answers (measured in docs/results.md).
* **compression** (:func:`compression_artefacts`): how much larger the steps between neighbouring
  pixels of the grey image are across the edges of JPEG's 8 x 8 blocks than inside them, at the
  model's input size. One-sided: flagged when higher than in all but ``1 - QUANTILE`` of the
  validation fields. Every Taleqani field is a 224-px JPEG with the same quantisation tables (IJG
  quality 95, in all four classes alike); stronger compression costs the model dearly, and the checks
  above hardly notice it (measured in docs/results.md).

Each feature vector is standardised by the training split's mean and spread (spreads floored at a
small measurement noise, so a feature that never varies in training cannot make every distance
explode), and its covariance estimated by Ledoit-Wolf shrinkage (scikit-learn ``LedoitWolf``), fitted
on the **training** split. The threshold of each score is the :data:`QUANTILE` (99.5 %) quantile of
the **validation** fields' scores, so that about 0.5 % of in-distribution fields are flagged per
score. An input is out of distribution when either distance exceeds its threshold, its focus
falls below its own, or its compression artefacts rise above theirs.

The rate holds for large validation splits; with ``n`` validation fields the quantile is an order
statistic, and a new in-distribution field exceeds each threshold with probability about
``max(0.005, 1 / (n + 1))`` (a few per cent in all, at most about 10 %, with the few dozen fields of
the synthetic default).

What the guard catches (blur, zoom, exposure, compression, inputs that are no field at all) and what
it lets through (mild blur; compression of a larger picture then brought down to the model's size,
whose blocks no longer sit on the 8-px grid) is measured on the real fields with the ``cpu`` study's
chosen model by ``benchmarks/ood_variants.py``: docs/results.md.

The fitted guard is plain JSON (:meth:`OODGuard.to_json`): means, scales, precision matrices, the
PCA basis and the thresholds; a model folder holds it as ``ood.json`` beside ``model.keras``.
"""

from __future__ import annotations

import math
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from allstudy.core.atomic import atomic_open, read_json
from allstudy.data.images import luma
from allstudy.data.preprocess import model_inputs, to_input
from allstudy.data.segment import leukocyte_mask
from allstudy.models.graph import embedding_model, pooled

#: Side (px) the field is brought to before its statistics are taken.
STATS_SIZE = 64
#: Quantile of the validation scores that sets each threshold.
QUANTILE = 0.995
#: PCA components kept of the model's embedding ...
N_COMPONENTS = 32
#: ... but no more than one per this many training fields, so that their covariance is well estimated.
FIELDS_PER_COMPONENT = 10
#: JPEG codes a picture in blocks of this many pixels a side, anchored at its top-left corner.
JPEG_BLOCK = 8
#: Pixels darker (L* below) / brighter (L* above) than these count as near-black / near-white.
BLACK_L, WHITE_L = 15.0, 97.0

#: (name, words for a person, noise floor of its spread) of each image statistic, in order.
STATISTICS: tuple[tuple[str, str, float], ...] = (
    ("black_share", "share of near-black pixels", 0.25),
    ("white_share", "share of near-white pixels", 0.25),
    ("violet_share", "share of violet-stained pixels", 0.25),
    ("background_L", "background brightness", 1.0),
    ("background_a", "background colour (red-green)", 0.5),
    ("background_b", "background colour (yellow-blue)", 0.5),
    ("stain_L", "darkness of the stain", 1.0),
    ("stain_a", "stain colour (red-green)", 0.5),
    ("stain_b", "stain colour (yellow-blue)", 0.5),
    ("spread_L", "brightness spread", 0.5),
    ("spread_a", "colour spread (red-green)", 0.5),
    ("spread_b", "colour spread (yellow-blue)", 0.5),
    ("gradient", "sharpness / magnification (mean L* gradient)", 0.25),
)
STAT_NAMES = tuple(name for name, _, _ in STATISTICS)
_SHARE_EPS = 1e-3


def _logit(p: float) -> float:
    p = min(max(p, _SHARE_EPS), 1.0 - _SHARE_EPS)
    return math.log(p / (1.0 - p))


def _field_statistics(image: np.ndarray) -> np.ndarray:
    from PIL import Image
    from skimage.color import rgb2lab

    field = np.asarray(image)
    if field.ndim != 3 or field.shape[2] != 3 or field.dtype != np.uint8:
        raise ValueError(f"expected RGB uint8 fields (H, W, 3), got {field.shape} {field.dtype}")
    if field.shape[:2] != (STATS_SIZE, STATS_SIZE):
        field = to_input(Image.fromarray(field, "RGB"), STATS_SIZE)
    lab = rgb2lab(field.astype(np.float32) / 255.0).reshape(-1, 3)
    lightness = lab[:, 0]
    order = np.argsort(lightness, kind="stable")
    n = len(order)
    background = lab[order[int(0.6 * n) :]]
    stain = lab[order[: max(1, int(0.1 * n))]]
    gy, gx = np.gradient(lightness.reshape(field.shape[:2]))
    return np.array(
        [
            _logit(float((lightness < BLACK_L).mean())),
            _logit(float((lightness > WHITE_L).mean())),
            _logit(float(leukocyte_mask(field).mean())),
            *np.median(background, axis=0),
            *np.median(stain, axis=0),
            *lab.std(axis=0),
            float(np.hypot(gx, gy).mean()),
        ],
        dtype=np.float64,
    )


def _fields(images) -> list:
    """A list of fields from an array (N, H, W, 3), one field (H, W, 3) or a list of them."""
    return list(images) if not isinstance(images, np.ndarray) or images.ndim == 4 else [images]


def guard_statistics(images) -> np.ndarray:
    """(N, len(STAT_NAMES)) statistics of RGB uint8 fields (N, H, W, 3) or a list of (H, W, 3); see the module."""
    images = _fields(images)
    if not images:
        return np.zeros((0, len(STATISTICS)))
    return np.stack([_field_statistics(image) for image in images])


def fine_detail(images) -> np.ndarray:
    """(N,) log mean |Laplacian| of the grey (luma) image of RGB uint8 fields (N, H, W, 3) as given: low when out
    of focus or blurred."""
    from scipy.ndimage import laplace

    values = [np.abs(laplace(luma(np.asarray(field, np.uint8)).astype(np.float32))).mean() for field in _fields(images)]
    return np.log(np.asarray(values, np.float64) + 1e-3)


def _block_edge_ratio(grey: np.ndarray) -> float:
    """log(mean step across the vertical JPEG block edges / mean step elsewhere) of a 2-D image."""
    steps = np.abs(np.diff(grey, axis=1)).mean(axis=0)  # steps[j]: between columns j and j + 1
    edge = (np.arange(len(steps)) % JPEG_BLOCK) == JPEG_BLOCK - 1
    return float(np.log((steps[edge].mean() + 1e-3) / (steps[~edge].mean() + 1e-3)))


def compression_artefacts(images) -> np.ndarray:
    """(N,) JPEG blockiness of RGB uint8 fields (N, H, W, 3) as given: the log ratio of the mean step between
    neighbouring grey pixels across the edges of the 8 x 8 blocks to the mean step inside them, averaged
    over rows and columns. About 0 for an uncompressed or lightly compressed field, higher the stronger the
    compression at this size; 0 for fields under two blocks a side."""
    values = []
    for image in _fields(images):
        grey = luma(np.asarray(image, np.uint8)).astype(np.float32)
        if min(grey.shape) < 2 * JPEG_BLOCK:
            values.append(0.0)
            continue
        values.append((_block_edge_ratio(grey) + _block_edge_ratio(grey.T)) / 2.0)
    return np.asarray(values, np.float64)


# ----------------------------------------------------------------------------- the model's embedding


class Embedder:
    """The embedding of raw RGB fields (0..255 at the model's input size) by a compiled, warmed function."""

    def __init__(self, model, batch_size: int = 64):
        self.net, self.layer = embedding_model(model)
        self.input_size = int(self.net.input_shape[1])
        self.batch_size = int(batch_size)
        self.traces = 0

        def embed(images):
            self.traces += 1
            return pooled(self.net(images, training=False))

        self._function = tf.function(
            embed, input_signature=[tf.TensorSpec((None, self.input_size, self.input_size, 3), tf.float32)]
        )
        self.dim = int(self._function(tf.zeros((1, self.input_size, self.input_size, 3))).shape[-1])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(
            [self._function(images[i : i + self.batch_size]).numpy() for i in range(0, len(images), self.batch_size)]
        )


_EMBEDDERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def embedder_for(model) -> Embedder:
    """The :class:`Embedder` of ``model``, built (and traced) on first use and kept while the model lives."""
    if model not in _EMBEDDERS:
        _EMBEDDERS[model] = Embedder(model)
    return _EMBEDDERS[model]


# ----------------------------------------------------------------------------- the distances


@dataclass
class Gaussian:
    """A Mahalanobis distance: ``sqrt((z - 0)' P z)`` with ``z = (basis @ (x - mean)) / scale``."""

    mean: np.ndarray
    scale: np.ndarray
    precision: np.ndarray
    threshold: float = math.inf
    basis: np.ndarray | None = None  # (k, d) PCA components, or None for the identity

    @classmethod
    def fit(cls, x: np.ndarray, floors: np.ndarray | float, n_components: int | None = None) -> Gaussian:
        from sklearn.covariance import LedoitWolf
        from sklearn.decomposition import PCA

        x = np.asarray(x, dtype=np.float64)
        if len(x) < 3:
            raise ValueError(f"fitting the out-of-distribution guard needs at least 3 training fields, got {len(x)}")
        mean, basis = x.mean(axis=0), None
        if n_components is not None:
            k = int(min(n_components, max(2, len(x) // FIELDS_PER_COMPONENT), len(x) - 1, x.shape[1]))
            pca = PCA(n_components=k, svd_solver="full" if x.shape[1] <= 4096 else "randomized", random_state=0).fit(x)
            mean, basis = pca.mean_, pca.components_
        projected = cls._project(x, mean, basis)
        spread = projected.std(axis=0)
        if n_components is not None:  # floor relative to the leading component: PCA directions have no units
            floors = max(float(spread.max(initial=0.0)), 1e-6) * 1e-3
        scale = np.maximum(spread, floors)
        z = projected / scale
        precision = LedoitWolf(assume_centered=True).fit(z).precision_
        return cls(mean, scale, precision, basis=basis)

    @staticmethod
    def _project(x: np.ndarray, mean: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
        centred = np.asarray(x, dtype=np.float64) - mean
        return centred if basis is None else centred @ basis.T

    def standardised(self, x: np.ndarray) -> np.ndarray:
        return self._project(x, self.mean, self.basis) / self.scale

    def distance(self, x: np.ndarray) -> np.ndarray:
        z = self.standardised(np.atleast_2d(x))
        return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", z, self.precision, z), 0.0))

    def to_json(self) -> dict:
        data = {
            "mean": _floats(self.mean),
            "scale": _floats(self.scale),
            "precision": _floats(self.precision),
            "threshold": float(self.threshold),
        }
        if self.basis is not None:
            data["pca_components"] = _floats(self.basis)
        return data

    @classmethod
    def from_json(cls, data: dict) -> Gaussian:
        basis = data.get("pca_components")
        return cls(
            np.asarray(data["mean"], np.float64),
            np.asarray(data["scale"], np.float64),
            np.asarray(data["precision"], np.float64),
            float(data["threshold"]),
            None if basis is None else np.asarray(basis, np.float64),
        )


def _floats(array: np.ndarray):
    """Nested lists of floats at float32 precision, written in their shortest form (a third of float64's JSON)."""
    array = np.asarray(array, dtype=np.float32)
    return np.array([float(str(v)) for v in array.ravel()], dtype=object).reshape(array.shape).tolist()


# ----------------------------------------------------------------------------- the guard


FORMAT = 3
KIND = "allstudy.serving.ood-guard"


@dataclass
class OODGuard:
    """Two Mahalanobis scores (image statistics, model embedding) with thresholds; see the module docstring.

    ``score``/``is_ood`` take RGB uint8 fields at the model's input size (N, S, S, 3) (the
    embedding needs the model: :meth:`attach` it, or pass it to :func:`fit_guard`/:meth:`load`), or
    precomputed features ``{"stats": guard_statistics(fields), "embedding": raw embeddings}``.
    """

    stats: Gaussian
    embedding: Gaussian
    focus_threshold: float
    compression_threshold: float
    input_size: int
    input_mode: str = "original"
    quantile: float = QUANTILE
    layer: str = ""
    fit_info: dict = field(default_factory=dict)
    embedder: Embedder | None = field(default=None, repr=False, compare=False)

    def attach(self, model) -> OODGuard:
        """Use ``model`` (the one the guard was fitted for) to embed images; returns the guard."""
        embedder = embedder_for(model)
        if embedder.input_size != self.input_size:
            raise ValueError(
                f"the guard was fitted for {self.input_size}-px inputs, the model takes "
                f"{embedder.input_size} px; fit the guard again for this model"
            )
        if embedder.dim != self.embedding.mean.shape[0]:
            raise ValueError(
                f"the guard was fitted on {self.embedding.mean.shape[0]}-dimensional embeddings, the "
                f"model gives {embedder.dim}; fit the guard again for this model"
            )
        self.embedder = embedder
        return self

    def features(self, fields: np.ndarray) -> dict[str, np.ndarray]:
        """{"stats", "embedding"} of RGB uint8 fields at the model's input size (original mode)."""
        if self.embedder is None:
            raise ValueError(
                "the guard has no model to embed images with: call guard.attach(model), or pass "
                "precomputed {'stats': ..., 'embedding': ...}"
            )
        fields = np.asarray(fields)
        if fields.ndim == 3:
            fields = fields[None]
        return {
            "stats": guard_statistics(fields),
            "embedding": self.embedder(model_inputs(fields, self.input_mode)),
            "focus": fine_detail(fields),
            "compression": compression_artefacts(fields),
        }

    def score(self, images_or_features) -> dict[str, np.ndarray]:
        """{"stats": distances, "embedding": distances, "focus": fine detail, "compression": JPEG blockiness}, each
        an array of N."""
        features = images_or_features if isinstance(images_or_features, dict) else self.features(images_or_features)
        return {
            "stats": self.stats.distance(features["stats"]),
            "embedding": self.embedding.distance(features["embedding"]),
            "focus": np.asarray(features["focus"], np.float64),
            "compression": np.asarray(features["compression"], np.float64),
        }

    @property
    def thresholds(self) -> dict[str, float]:
        return {
            "stats": self.stats.threshold,
            "embedding": self.embedding.threshold,
            "focus": self.focus_threshold,
            "compression": self.compression_threshold,
        }

    def flags(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """Bool array: either distance above its threshold, the focus below its own or the compression above it."""
        return (
            (np.asarray(scores["stats"]) > self.stats.threshold)
            | (np.asarray(scores["embedding"]) > self.embedding.threshold)
            | (np.asarray(scores["focus"]) < self.focus_threshold)
            | (np.asarray(scores["compression"]) > self.compression_threshold)
        )

    def is_ood(self, images_or_features) -> np.ndarray:
        """Bool array of N: True where the input is unlike the training fields."""
        return self.flags(self.score(images_or_features))

    def reason(self, scores: dict[str, float], stats: np.ndarray | None = None) -> str:
        """Words for why one input was flagged ("" when it was not); ``stats`` names the most unusual statistic."""
        parts = []
        if scores["stats"] > self.stats.threshold:
            text = "its colours and brightness are unlike the training fields"
            if stats is not None:
                z = self.stats.standardised(np.atleast_2d(stats))[0]
                worst = int(np.argmax(np.abs(z)))
                text += f" (most of all the {STATISTICS[worst][1]})"
            parts.append(text)
        if scores["embedding"] > self.embedding.threshold:
            parts.append("the model's features of it are unlike those of the training fields")
        if scores["focus"] < self.focus_threshold:
            parts.append("it looks out of focus or blurred (less fine detail than the training fields)")
        if scores["compression"] > self.compression_threshold:
            parts.append(
                "it looks strongly JPEG-compressed (its 8 x 8 block edges stand out more than in the "
                "training fields); use the original image or a higher JPEG quality"
            )
        return "; ".join(parts)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "kind": KIND,
            "input_size": self.input_size,
            "input_mode": self.input_mode,
            "quantile": self.quantile,
            "stats_size": STATS_SIZE,
            "stats": {"names": list(STAT_NAMES), **self.stats.to_json()},
            "embedding": {"layer": self.layer, "dim": int(self.embedding.mean.shape[0]), **self.embedding.to_json()},
            "focus": {"threshold": self.focus_threshold},
            "compression": {"threshold": self.compression_threshold, "block": JPEG_BLOCK},
            "fit": self.fit_info,
        }

    @classmethod
    def from_json(cls, data: dict, model=None) -> OODGuard:
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise ValueError(f"not an out-of-distribution guard (expected kind {KIND!r})")
        if data.get("format") != FORMAT:
            raise ValueError(f"guard format {data.get('format')!r} is not {FORMAT}; fit the guard again")
        if list(data["stats"]["names"]) != list(STAT_NAMES) or data.get("stats_size") != STATS_SIZE:
            raise ValueError("the guard's image statistics differ from this version's; fit the guard again")
        guard = cls(
            Gaussian.from_json(data["stats"]),
            Gaussian.from_json(data["embedding"]),
            float(data["focus"]["threshold"]),
            float(data["compression"]["threshold"]),
            int(data["input_size"]),
            data.get("input_mode", "original"),
            float(data["quantile"]),
            data["embedding"].get("layer", ""),
            dict(data.get("fit", {})),
        )
        return guard.attach(model) if model is not None else guard

    def save(self, path: str | os.PathLike) -> Path:
        """Write the guard as compact JSON, atomically."""
        import json

        with atomic_open(path) as handle:
            json.dump(self.to_json(), handle, separators=(",", ":"))
            handle.write("\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, model=None) -> OODGuard:
        """Read a guard written by :meth:`save` (and attach ``model`` when given)."""
        path = Path(path)
        try:
            return cls.from_json(read_json(path), model)
        except (KeyError, TypeError) as err:
            raise ValueError(
                f"{path} is not a complete out-of-distribution guard (missing {err}); fit it again"
            ) from None
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None


def fit_guard(
    model,
    train_images: np.ndarray,
    val_images: np.ndarray,
    input_mode: str = "original",
    quantile: float = QUANTILE,
    n_components: int = N_COMPONENTS,
    train_embedding: np.ndarray | None = None,
) -> OODGuard:
    """Fit the guard on the training fields and set its thresholds on the validation fields.

    ``train_images`` and ``val_images`` are RGB uint8 fields (N, S, S, 3) at the model's input size,
    as :func:`allstudy.training.pipeline.load_images` gives them in ``original`` mode; ``input_mode`` is the
    model's (model.json), applied before the embedding. ``model`` is the deployable model (with or
    without test-time augmentation). ``train_embedding``: the training fields' embeddings when already
    computed (a transfer model's cached backbone features of the upright view), else computed here.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), not {quantile}")
    if len(val_images) < 1:
        raise ValueError("fitting the out-of-distribution guard needs validation fields for its thresholds")
    embedder = embedder_for(model)
    train, val = np.asarray(train_images), np.asarray(val_images)
    for name, fields in (("train", train), ("val", val)):
        if fields.ndim != 4 or fields.shape[1:] != (embedder.input_size, embedder.input_size, 3):
            raise ValueError(
                f"{name} fields must be (N, {embedder.input_size}, {embedder.input_size}, 3) at the "
                f"model's input size, got {fields.shape}"
            )
    if train_embedding is None:
        train_embedding = embedder(model_inputs(train, input_mode))
    elif np.shape(train_embedding) != (len(train), embedder.dim):
        raise ValueError(
            f"train_embedding must be ({len(train)}, {embedder.dim}), one embedding per training field, "
            f"got {np.shape(train_embedding)}"
        )
    floors = np.array([floor for _, _, floor in STATISTICS])
    train_features = {"stats": guard_statistics(train), "embedding": np.asarray(train_embedding, np.float32)}
    guard = OODGuard(
        Gaussian.fit(train_features["stats"], floors),
        Gaussian.fit(train_features["embedding"], 0.0, n_components),
        -math.inf,
        math.inf,
        embedder.input_size,
        input_mode,
        quantile,
        embedder.layer,
    )
    guard.embedder = embedder
    val_scores = guard.score(val)
    guard.stats.threshold = float(np.quantile(val_scores["stats"], quantile))
    guard.embedding.threshold = float(np.quantile(val_scores["embedding"], quantile))
    guard.focus_threshold = float(np.quantile(val_scores["focus"], 1.0 - quantile))
    guard.compression_threshold = float(np.quantile(val_scores["compression"], quantile))
    guard.fit_info = {
        "n_train": int(len(train)),
        "n_val": int(len(val)),
        "embedding_components": int(len(guard.embedding.mean) if (b := guard.embedding.basis) is None else b.shape[0]),
        "val_flag_rate": {
            "stats": float((val_scores["stats"] > guard.stats.threshold).mean()),
            "embedding": float((val_scores["embedding"] > guard.embedding.threshold).mean()),
            "focus": float((val_scores["focus"] < guard.focus_threshold).mean()),
            "compression": float((val_scores["compression"] > guard.compression_threshold).mean()),
            "either": float(guard.flags(val_scores).mean()),
        },
    }
    return guard


def load_guard(path: str | os.PathLike, model=None) -> OODGuard:
    """:meth:`OODGuard.load`."""
    return OODGuard.load(path, model)
