"""Leukocyte segmentation by colour, the dataset's own segmentation as a reference, and input variants.

The source study (Pak Heart J 2023) says only that each field is "divided as red, blue, green channels"
and that "region-based segmentation" groups pixels of similar colour; it gives no algorithm. This
module does what a careful practitioner would: the stained leukocytes are the violet pixels of the
field, found by an Otsu threshold on CIELAB a* (red-magenta against green) among the pixels of
violet-blue hue, then cleaned by morphology. Its agreement with the dataset's own ``Segmented``
images (:func:`compare_with_reference`, per class) is measured in docs/results.md; on Pro it is low
because the dataset's own Pro segmentation mostly failed (blank images, or small fragments).

:func:`transform_input` is the one place that turns a model input into each variant of the study:
the original, the segmented cells only, the background only (cells hidden), and the scale-bar
corner only or hidden (shortcut controls).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Side of the fields the pixel sizes of :class:`SegmentParams` are given for.
REFERENCE_SIDE = 224

#: Share of each side taken by the bottom-right corner that holds the burned-in scale bar. Measured
#: on the 2744 real 224-px fields: three label styles occur, a red "200 pixels" text with ticks
#: (924 fields), a small white box with black text and bar (1366) and a large white box "500 pixels"
#: with a black bar (451); every one lies in rows >= 194 and columns >= 192, i.e. within the last
#: 32 px (0.143 of the side) on both axes. The synthetic fields' label (allstudy.data.synthetic) reaches
#: 39 px from the right edge. 0.18 (41 px at 224) covers both with a margin. The real label style
#: goes with the class (Pro: always the small white box; Early: never), so the corner is a shortcut.
CORNER_FRACTION = 0.18

#: The input variants of :func:`transform_input`.
INPUT_MODES = ("original", "segmented", "background", "corner", "no_corner", "mitigated")


@dataclass(frozen=True)
class SegmentParams:
    """Parameters of :func:`leukocyte_mask`. Lengths and areas are in pixels of a 224-px field and are
    scaled with the image size (radii below half a pixel after scaling are skipped).

    The defaults were chosen on the real fields against the dataset's segmented versions and on
    synthetic fields against where their cells were drawn.
    """

    #: Lowest a* threshold: Otsu's value is raised to this. Pale background and grey-blue red cells
    #: have a* < 8, so a field without violet pixels gives an empty mask.
    min_threshold: float = 8.0
    #: Only pixels of violet-blue hue are kept: b* < 0 and, where a* > 0, a CIELAB hue angle at least
    #: this many degrees below the +a* axis. Measured (5-95 %): leukocyte pixels of the real Benign,
    #: Early and Pre fields 54-68 degrees; the magenta blasts of some Pro fields 37-47; pink red cells
    #: of the synthetic fields 27-30 (``max_fraction`` deals with those); the red scale-bar text +20
    #: to -10 (JPEG chroma bleeding). Dice against the real references hardly depends on it over a wide
    #: range around this value (measured in docs/results.md).
    violet_angle: float = 30.0
    #: Largest plausible leukocyte share of the field (the real references cover at most 33 %).
    #: When more than this lies above Otsu's a* threshold (a field of pinkish red cells and few
    #: leukocytes, where Otsu split red cells from background), Otsu is applied again to the pixels
    #: above it, up to three times.
    max_fraction: float = 0.35
    #: Objects of this area (px) or smaller are dropped (platelets, noise).
    min_object: float = 30.0
    #: Radius of the binary closing (px); 0 turns it off.
    closing: float = 1.0
    #: Fill holes inside objects (pale nucleoli, vacuoles).
    fill_holes: bool = True
    #: Radius of a final dilation of the mask (px); 0 keeps the mask as thresholded.
    dilation: float = 0.0
    #: Extra dilation (px) of the mask hidden in the "background" input, so that no rim of the cells
    #: (pale basophilic cytoplasm, the blur halo) is left to show their size and shape.
    background_margin: float = 4.0


def check_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), not {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image, not dtype {image.dtype}")
    return image


def _scale(shape: tuple[int, ...]) -> float:
    """Linear size of an image relative to a 224-px field."""
    return math.sqrt(shape[0] * shape[1]) / REFERENCE_SIDE


def _disk(radius: float, scale: float) -> np.ndarray | None:
    """A disk footprint of ``radius`` px at 224 scaled to the image; None when under a pixel."""
    from skimage.morphology import disk

    r = int(round(radius * scale))
    return disk(r) if r >= 1 else None


def _grow(mask: np.ndarray, radius: float) -> np.ndarray:
    """``mask`` dilated by ``radius`` px at 224 (scaled to the mask's size)."""
    from skimage.morphology import dilation

    footprint = _disk(radius, _scale(mask.shape))
    return dilation(mask, footprint) if footprint is not None and mask.any() else mask


def _purple_threshold(a: np.ndarray, params: SegmentParams) -> float:
    """Otsu's threshold of the field's a*, re-split while its foreground is implausibly large (more
    than ``max_fraction`` of the field), and never below ``min_threshold``; inf for a uniform field."""
    from skimage.filters import threshold_otsu

    values = a.ravel()
    if values.size < 2 or np.ptp(values) < 1e-6:
        return math.inf
    threshold = float(threshold_otsu(values))
    for _ in range(3):
        above = values[values > threshold]
        if above.size <= params.max_fraction * values.size or above.size < 2 or np.ptp(above) < 1e-6:
            break
        threshold = float(threshold_otsu(above))
    return max(threshold, params.min_threshold)


def leukocyte_mask(image: np.ndarray, params: SegmentParams = SegmentParams()) -> np.ndarray:
    """Bool (H, W) mask of the violet-stained leukocytes (nucleus and stained cytoplasm) of an RGB
    uint8 field: the pixels of violet-blue hue above the field's Otsu threshold on CIELAB a*, then
    small objects removed, closing, holes filled and an optional dilation. Any size; a blank or
    uniform image gives an empty mask. Pale basophilic (blue) cytoplasm is only partly included.
    """
    from scipy.ndimage import binary_fill_holes
    from skimage.color import rgb2lab
    from skimage.morphology import closing, remove_small_objects
    from skimage.util import img_as_float32

    image = check_rgb(image)
    lab = rgb2lab(img_as_float32(image))  # float32: faster than from uint8 (float64), same values
    a, b = lab[..., 1], lab[..., 2]
    candidate = b < -math.tan(math.radians(params.violet_angle)) * np.maximum(a, 0.0)
    mask = candidate & (a > _purple_threshold(a, params))
    if not mask.any():
        return mask
    scale = _scale(mask.shape)
    mask = remove_small_objects(mask, max_size=int(round(params.min_object * scale * scale)))
    footprint = _disk(params.closing, scale)
    if footprint is not None:
        mask = closing(mask, footprint)
    if params.fill_holes:
        mask = binary_fill_holes(mask)
    return _grow(mask, params.dilation)


def _fill_colour(image: np.ndarray, keep: np.ndarray, fill: str | int | tuple[int, int, int]) -> np.ndarray:
    """The RGB fill: the median colour of the ``keep`` pixels (all pixels if none) or a given value."""
    if isinstance(fill, str):
        if fill != "median":
            raise ValueError(f"fill must be 'median', a grey level or an RGB triple, not {fill!r}")
        pixels = image[keep] if keep.any() else image.reshape(-1, 3)
        return np.median(pixels, axis=0).round().astype(np.uint8)
    return np.broadcast_to(np.asarray(fill, dtype=np.uint8), (3,))


def check_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match the image's {image.shape[:2]}")
    return mask


def apply_mask(image: np.ndarray, mask: np.ndarray, background: int | tuple[int, int, int] = 0) -> np.ndarray:
    """The segmented image: the ``mask`` pixels kept, all others set to ``background`` (black)."""
    image = check_rgb(image)
    mask = check_mask(image, mask)
    out = image.copy()
    out[~mask] = _fill_colour(image, mask, background)
    return out


def mask_out(image: np.ndarray, mask: np.ndarray, fill: str | int | tuple[int, int, int] = "median") -> np.ndarray:
    """The complement of :func:`apply_mask`: the ``mask`` pixels replaced by ``fill``, by default the
    median colour of the rest of the image (the background-only shortcut control)."""
    image = check_rgb(image)
    mask = check_mask(image, mask)
    out = image.copy()
    out[mask] = _fill_colour(image, ~mask, fill)
    return out


def corner_region(
    shape: tuple[int, ...], width: float = CORNER_FRACTION, height: float | None = None, rounding: str = "up"
) -> np.ndarray:
    """Bool (H, W) mask of the bottom-right corner that holds the scale bar: ``width`` of the columns and
    ``height`` (default: ``width``) of the rows; 0 is no corner. ``rounding`` ``up``: each side rounded up to
    whole pixels (the segmentation's); ``nearest``: the corner starts at the pixel nearest ``1 - fraction``
    (the duplicate scan's, kept so that its groups, and so the split, stay as they were)."""
    height = width if height is None else height
    if not (0.0 <= width <= 1.0 and 0.0 <= height <= 1.0):
        raise ValueError(f"corner fractions must be in [0, 1], not {width!r} x {height!r}")
    if rounding not in ("up", "nearest"):
        raise ValueError(f"rounding must be 'up' or 'nearest', not {rounding!r}")
    h, w = shape[:2]
    corner = np.zeros((h, w), bool)
    if rounding == "up":
        rows, cols = math.ceil(height * h - 1e-9), math.ceil(width * w - 1e-9)
    else:
        rows, cols = h - int(round(h * (1 - height))), w - int(round(w * (1 - width)))
    if rows and cols:
        corner[h - rows :, w - cols :] = True
    return corner


def scale_bar_corner(image: np.ndarray, fraction: float = CORNER_FRACTION) -> np.ndarray:
    """A copy of the bottom-right corner (``fraction`` of each side) that holds the scale bar."""
    image = np.asarray(image)
    corner = corner_region(image.shape, fraction)
    rows, cols = np.flatnonzero(corner.any(1)), np.flatnonzero(corner.any(0))
    return image[rows[0] :, cols[0] :].copy()


def mask_corner(
    image: np.ndarray, fraction: float = CORNER_FRACTION, fill: str | int | tuple[int, int, int] = "median"
) -> np.ndarray:
    """The image with its scale-bar corner replaced by ``fill`` (median colour of the rest)."""
    image = check_rgb(image)
    return mask_out(image, corner_region(image.shape, fraction), fill)


def transform_input(image: np.ndarray, mode: str, params: SegmentParams = SegmentParams()) -> np.ndarray:
    """The model input ``image`` (H, W, 3 uint8) as one of :data:`INPUT_MODES`; same shape and dtype.

    ``original`` unchanged (returned as is); ``segmented`` the leukocytes on black (:func:`apply_mask`);
    ``background`` the leukocytes, grown by ``params.background_margin``, replaced by the median
    background colour (:func:`mask_out`); ``corner`` only the scale-bar corner, the rest filled with
    the median colour outside it; ``no_corner`` the corner filled so (:func:`mask_corner`).
    """
    if mode not in INPUT_MODES:
        raise ValueError(f"unknown input mode {mode!r}; expected one of {', '.join(INPUT_MODES)}")
    image = check_rgb(image)
    if mode == "original":
        return image
    if mode == "segmented":
        return apply_mask(image, leukocyte_mask(image, params))
    if mode == "background":
        return mask_out(image, _grow(leukocyte_mask(image, params), params.background_margin))
    if mode == "corner":
        corner = corner_region(image.shape)
        out = image.copy()
        out[~corner] = _fill_colour(image, ~corner, "median")
        return out
    if mode == "mitigated":
        return mask_corner(stain_normalise(image))
    return mask_corner(image)


#: Target CIELAB mean and spread of :func:`stain_normalise` (a typical field of the Taleqani set).
STAIN_TARGET = ((87.0, 2.4, -11.7), (11.9, 10.5, 15.1))  # measured: mean of 69 fields (every 40th)


def stain_normalise(image: np.ndarray, target: tuple = STAIN_TARGET) -> np.ndarray:
    """Reinhard colour normalisation: each CIELAB channel of the field moved to a fixed mean and spread.

    It takes away what differs between slides and sessions as a whole (stain strength, illumination,
    white balance) and keeps what differs within the field (the cells against the background).
    """
    from skimage.color import lab2rgb, rgb2lab

    image = check_rgb(image)
    lab = rgb2lab(image.astype(np.float32) / 255.0)
    mean, std = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0)
    lab = (lab - mean) / np.maximum(std, 1e-3) * np.asarray(target[1]) + np.asarray(target[0])
    return (np.clip(lab2rgb(lab), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def plot_channels(image: np.ndarray) -> Figure:
    """Figure of the RGB channel view: the image and its red, green and blue channels in grey."""
    import matplotlib.pyplot as plt

    image = check_rgb(image)
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
    axes[0].imshow(image)
    axes[0].set_title("RGB")
    for ax, channel, name in zip(axes[1:], range(3), ("red", "green", "blue"), strict=True):
        ax.imshow(image[..., channel], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{name} channel")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_input_modes(image: np.ndarray, params: SegmentParams = SegmentParams()) -> Figure:
    """One field as every input mode the study trains on (:data:`INPUT_MODES`)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(INPUT_MODES), figsize=(2.2 * len(INPUT_MODES), 2.5))
    for ax, mode in zip(axes, INPUT_MODES, strict=True):
        ax.imshow(transform_input(image, mode, params))
        ax.set_title(mode, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    plt.close(fig)
    return fig
