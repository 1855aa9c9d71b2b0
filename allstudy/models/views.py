"""The eight symmetries of a square field (a smear has no up or left), for test-time augmentation.

NumPy only, so that the command line can offer the view counts without loading TensorFlow; the Keras
layer that applies one inside a model is :class:`allstudy.models.layers.Dihedral`.
"""

from __future__ import annotations

import numpy as np

#: The symmetries of the square used for test-time augmentation, by view count: identity first.
DIHEDRAL_VIEWS = {1: (0,), 4: (0, 1, 2, 3), 8: (0, 1, 2, 3, 4, 5, 6, 7)}


def dihedral(images: np.ndarray, k: int) -> np.ndarray:
    """View ``k`` (0..7) of a batch (N, H, W, C): ``k % 4`` quarter turns, then a left-right flip if ``k >= 4``."""
    view = np.rot90(images, k % 4, axes=(1, 2))
    return np.ascontiguousarray(view[:, :, ::-1] if k >= 4 else view)
