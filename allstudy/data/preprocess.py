"""The one place that turns an image into model input, for training, evaluation, the guard and the Predictor.

Every model of the registry takes raw RGB pixels in 0..255 at its input size and does its own
preprocessing inside (see :mod:`allstudy.models.registry`): the input is the field resized to the
model's side (:func:`to_input`), then, for a model trained on a variant (segmentation, the validity
controls), that variant (:func:`model_input`).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from allstudy.data.images import read_rgb
from allstudy.data.segment import transform_input

#: Resampling used everywhere an image is brought to a model's input size.
RESAMPLE = Image.Resampling.BILINEAR


def to_input(image: Image.Image, size: int) -> np.ndarray:
    """An RGB image as a (size, size, 3) uint8 array: the model input (no cropping; fields are square)."""
    if image.size != (size, size):
        image = image.resize((size, size), RESAMPLE, reducing_gap=3.0)
    return np.asarray(image, dtype=np.uint8)


def model_input(field: np.ndarray, mode: str = "original") -> np.ndarray:
    """A field at the model's input size as the model sees it: itself, or its ``mode`` variant
    (:func:`allstudy.data.segment.transform_input`)."""
    return field if mode == "original" else transform_input(field, mode)


def model_inputs(fields: np.ndarray, mode: str = "original") -> np.ndarray:
    """:func:`model_input` of each field of an (N, S, S, 3) array."""
    if mode == "original" or not len(fields):
        return np.asarray(fields)
    return np.stack([transform_input(f, mode) for f in fields])


def load_image(path: str | os.PathLike, size: int, mode: str = "original") -> np.ndarray:
    """Read a file (any format Pillow reads, decided by content) as model input.

    ``mode`` is one of :data:`allstudy.data.segment.INPUT_MODES`: the field itself (``original``) or a
    variant for the segmentation option and the validity controls, made at the model's input size.
    """
    return model_input(to_input(read_rgb(path), size), mode)
