"""How the colour segmentation (:mod:`allstudy.data.segment`) agrees with the dataset's own segmented images.

The dataset sets everything outside its cells to black; :func:`reference_mask` reads that mask back,
:func:`is_blank` flags its failed (black) images, and :func:`compare_with_reference` measures Dice
and IoU per field, summarised per class by :func:`agreement_by_class`.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from skimage.transform import resize
from tqdm import tqdm

from allstudy.data.images import ImageProblem, luma, read_rgb
from allstudy.data.segment import SegmentParams, apply_mask, check_mask, check_rgb, leukocyte_mask


def reference_mask(segmented: np.ndarray, threshold: int = 30) -> np.ndarray:
    """The mask implied by one of the dataset's segmented images: pixels brighter than ``threshold``
    in grey level (the dataset sets everything outside its cells to black)."""
    return luma(segmented) > threshold


def is_blank(segmented: np.ndarray, threshold: int = 30, min_fraction: float = 0.005) -> bool:
    """True for a failed (essentially black) segmented image: under ``min_fraction`` of its pixels
    brighter than ``threshold`` (the data README's test; 178 of the 668 Pro images here, no other)."""
    return bool(reference_mask(segmented, threshold).mean() < min_fraction)


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} and {b.shape}")
    return a, b


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A|+|B|) of two masks; 1.0 when both are empty."""
    a, b = _pair(a, b)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union |A∩B| / |A∪B| of two masks; 1.0 when both are empty."""
    a, b = _pair(a, b)
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def _compare_one(original_root: Path, segmented_root: Path, path: str, params: SegmentParams) -> dict:
    row: dict[str, Any] = {
        "path": path,
        "class": PurePosixPath(path).parts[0],
        "reference_missing": False,
        "reference_blank": False,
        "dice": math.nan,
        "iou": math.nan,
        "mask_fraction": math.nan,
        "reference_fraction": math.nan,
        "problem": "",
    }
    try:
        mask = leukocyte_mask(np.asarray(read_rgb(original_root / path)), params)
    except ImageProblem as problem:
        row["problem"] = f"original: {problem.reason}"
    else:
        row["mask_fraction"] = float(mask.mean())
    try:
        segmented = np.asarray(read_rgb(segmented_root / path))
    except ImageProblem as problem:
        row["reference_missing"] = True
        row["problem"] = "; ".join(filter(None, [row["problem"], f"segmented: {problem.reason}"]))
        return row
    reference = reference_mask(segmented)
    row["reference_fraction"] = float(reference.mean())
    row["reference_blank"] = is_blank(segmented)
    if row["reference_blank"] or row["problem"]:
        return row
    if reference.shape != mask.shape:
        reference = resize(reference, mask.shape, order=0, anti_aliasing=False, preserve_range=True).astype(bool)
    row["dice"], row["iou"] = dice(mask, reference), iou(mask, reference)
    return row


def compare_with_reference(
    original_root: str | os.PathLike,
    segmented_root: str | os.PathLike,
    paths: list[str],
    params: SegmentParams = SegmentParams(),
    progress: bool = False,
) -> pd.DataFrame:
    """One row per relative path: our mask of the original against the dataset's segmented version.

    Columns: ``path``, ``class`` (first path component), ``reference_missing`` (no readable segmented
    file), ``reference_blank`` (:func:`is_blank`), ``dice``, ``iou`` (NaN where the reference is blank
    or missing), ``mask_fraction``, ``reference_fraction`` and ``problem`` (empty, or the reason an
    image could not be read). Its time on the real fields is in docs/results.md.
    """
    original_root, segmented_root = Path(original_root), Path(segmented_root)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        rows = list(
            tqdm(
                pool.map(lambda p: _compare_one(original_root, segmented_root, p, params), paths),
                total=len(paths),
                desc="segmenting",
                unit="img",
                disable=not progress,
            )
        )
    columns = [
        "path",
        "class",
        "reference_missing",
        "reference_blank",
        "dice",
        "iou",
        "mask_fraction",
        "reference_fraction",
        "problem",
    ]
    return pd.DataFrame(rows, columns=columns)


def plot_segmentation(image: np.ndarray, mask: np.ndarray, reference: np.ndarray | None = None) -> Figure:
    """Figure of the image, the mask, the segmented image and, when given, the dataset's segmented
    version (titled with the Dice of the mask against it, or "blank" for a failed one)."""
    image = check_rgb(image)
    mask = check_mask(image, mask)
    panels = [(image, "image"), (mask, f"mask ({mask.mean():.1%} of field)"), (apply_mask(image, mask), "segmented")]
    if reference is not None:
        reference = np.asarray(reference)
        if is_blank(reference):
            title = "dataset's segmented (blank)"
        elif reference.shape[:2] == mask.shape:
            title = f"dataset's segmented (Dice {dice(mask, reference_mask(reference)):.2f})"
        else:
            title = "dataset's segmented"
        panels.append((reference, title))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9))
    for ax, (picture, title) in zip(axes, panels, strict=True):
        ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    plt.close(fig)
    return fig


def agreement_by_class(frame: pd.DataFrame) -> pd.DataFrame:
    """Per class: fields compared, blank references, and median/mean Dice and IoU on the non-blank ones."""
    usable = frame[~frame["reference_blank"].astype(bool)]
    table = usable.groupby("class").agg(
        compared=("dice", "count"),
        dice_median=("dice", "median"),
        dice_mean=("dice", "mean"),
        iou_median=("iou", "median"),
    )
    table.insert(0, "fields", frame.groupby("class").size())
    table.insert(1, "blank_references", frame.groupby("class")["reference_blank"].sum().astype(int))
    return table.fillna({"compared": 0})
