"""Synthetic C-NMC 2019-like cells: the embedded default of the binary study (``--dataset cnmc``).

C-NMC 2019 holds single lymphoid cells, each segmented, centred and cut out on black, named
``UID_<subject>_<image>_<cell>_<class>.bmp`` (healthy subjects ``H<n>``), in training folds and two
test phases of other subjects. This generator writes the same release, in the layout of the Kaggle
download, from the cell model of :mod:`allstudy.data.synthetic`:

* ``all`` (ALL blast): the Early, Pre or Pro morphology, one per ALL subject (a patient's blasts
  share a phenotype); as in C-NMC, a cell's label is its subject's diagnosis, and 5-25 % of an ALL
  subject's cells (drawn per subject) look normal: the label noise that keeps the task from being trivial;
* ``hem`` (normal B-lymphoid cell): the hematogone (Benign) morphology.

Staining, background, magnification, focus and noise are drawn once per subject, from the same
distributions for both classes: cells of one subject look alike, as on a real slide, which is why the
split must keep subjects apart. The release::

    C-NMC_Leukemia/training_data/fold_<k>/{all,hem}/UID_...bmp        training subjects, 3 folds
    C-NMC_Leukemia/validation_data/C-NMC_test_prelim_phase_data/<n>.bmp   other subjects, labels in
    C-NMC_Leukemia/validation_data/C-NMC_test_prelim_phase_data_labels.csv
    C-NMC_Leukemia/testing_data/C-NMC_test_final_phase_data/<n>.bmp    unlabelled, yet other subjects
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from allstudy.core.atomic import write_text
from allstudy.data.classes import CNMC_CLASSES
from allstudy.data.layouts import CNMC_FINAL, CNMC_LABEL_COLUMNS, CNMC_LABELS, CNMC_PRELIM
from allstudy.data.synthetic import _MORPHOLOGY, _leukocyte, _mix, build_dataset, check_positive

#: Written into the marker (``SYNTHETIC.json``); see :func:`allstudy.data.synthetic.build_dataset`.
GENERATOR_NAME = "allstudy.synthetic_cnmc"
#: Bump when the images for given arguments change; a cached dataset of another version is rebuilt.
GENERATOR_VERSION = 1
NOTE = "Synthetic C-NMC-like cells made by allstudy; not patient data. Results on them say nothing about real leukemia."
RELEASE = "C-NMC_Leukemia"
FOLDS = 3
_BLASTS = ("Early", "Pre", "Pro")  # the morphologies of allstudy.data.synthetic an ALL subject's blasts take
# C-NMC cells were imaged at one magnification and stain-normalised: dark purple (mean RGB about 67, 29, 78 on the
# replica's 52 cells), about 0.47 of the image side across (median area 17 % of the image).
_NUCLEUS_OD = (np.array([1.15, 1.95, 0.95]), np.array([1.05, 2.05, 1.10]))  # per unit stain, R, G, B
_CYTOPLASM_OD = (np.array([1.20, 2.00, 1.00]), np.array([1.00, 1.90, 1.10]))
_CELL_SIDE = 0.44  # a normal B cell's mean diameter / the image side
_SIZE_EXPONENT = 0.35  # blasts larger than normal cells by (their diameter ratio) ** this: sizes overlap
_REF_RED_CELL = 23.0  # the red-cell diameter (px) the cell model's texture sizes refer to
_SUBJECT, _CELL = 0, 1  # purposes mixed into each SeedSequence


@dataclass(frozen=True)
class _Subject:
    """One subject: class, name, the morphology of its cells and its slide's imaging conditions."""

    label: str
    name: str  # UID_<n> or UID_H<n>
    morphology: str
    normal_looking: float  # the fraction of its cells drawn with the normal (Benign) morphology
    nucleus: np.ndarray
    cytoplasm: np.ndarray
    background: np.ndarray
    magnification: float
    blur: float
    noise: float


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(GENERATOR_VERSION, *key))))


def _subject(label: str, number: int, seed: int, class_index: int) -> _Subject:
    rng = _rng(seed, _SUBJECT, class_index, number)
    background = 1.0 - np.abs(rng.normal(0.0, 0.03, 3))
    return _Subject(
        label=label,
        name=f"UID_{'H' if label == 'hem' else ''}{number}",
        morphology="Benign" if label == "hem" else _BLASTS[int(rng.integers(len(_BLASTS)))],
        normal_looking=0.0 if label == "hem" else float(rng.uniform(0.05, 0.25)),
        nucleus=_mix(_NUCLEUS_OD, rng.random(), rng.uniform(0.85, 1.15)).astype(np.float32),
        cytoplasm=_mix(_CYTOPLASM_OD, rng.random(), rng.uniform(0.85, 1.15)).astype(np.float32),
        background=(background / background.max() * rng.uniform(0.86, 0.99)).astype(np.float32),
        magnification=float(rng.uniform(0.9, 1.1)),
        blur=float(rng.uniform(0.4, 1.2)),
        noise=float(rng.uniform(0.8, 3.0)),
    )


def _render_cell(subject: _Subject, rng: np.random.Generator, size: int = 224) -> Image.Image:
    """One segmented cell of ``subject``, centred (a few pixels off) on black, ``size`` x ``size`` RGB."""
    morphology = "Benign" if rng.random() < subject.normal_looking else subject.morphology
    ratio = _MORPHOLOGY[morphology].diameter[0] / _MORPHOLOGY["Benign"].diameter[0]
    diameter = _CELL_SIDE * size * subject.magnification * ratio**_SIZE_EXPONENT
    d_rbc = diameter / _MORPHOLOGY[morphology].diameter[0]  # the red cell the cell model scales by
    scale = d_rbc / _REF_RED_CELL
    half, nucleus, cytoplasm = _leukocyte(morphology, rng, d_rbc, scale)
    side = max(size, 2 * half + 1) + 8
    stains = np.zeros((2, side, side), np.float32)
    y0 = side // 2 - half + int(rng.integers(-3, 4))
    x0 = side // 2 - half + int(rng.integers(-3, 4))
    stains[0, y0 : y0 + 2 * half + 1, x0 : x0 + 2 * half + 1] = nucleus
    stains[1, y0 : y0 + 2 * half + 1, x0 : x0 + 2 * half + 1] = cytoplasm
    top = (side - size) // 2
    stains = stains[:, top : top + size, top : top + size]
    od = stains[0, ..., None] * subject.nucleus + stains[1, ..., None] * subject.cytoplasm
    light = ndimage.gaussian_filter(np.exp(-od) * subject.background, (subject.blur, subject.blur, 0))
    cell = ndimage.binary_fill_holes(ndimage.binary_opening(stains.sum(axis=0) > 1e-3)).astype(np.float32)
    pixels = light * np.float32(255.0) + rng.standard_normal(light.shape, dtype=np.float32) * np.float32(subject.noise)
    return Image.fromarray(np.clip(np.rint(pixels * cell[..., None]), 0, 255).astype(np.uint8), "RGB")


def _cell_counts(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as whole numbers allow (the first ones one more)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _subject_cells(
    subject: _Subject, n: int, seed: int, class_index: int, number: int, size: int
) -> list[tuple[str, Image.Image]]:
    """``n`` cells of one subject, named as C-NMC names them: images of one to three cells each."""
    rng = _rng(seed, _CELL, class_index, number)
    cells: list[tuple[str, Image.Image]] = []
    image = 0
    while len(cells) < n:
        image += 1
        for cell in range(1, min(int(rng.integers(1, 4)), n - len(cells)) + 1):
            name = f"{subject.name}_{image}_{cell}_{subject.label}.bmp"
            cells.append((name, _render_cell(subject, rng, size)))
    return cells


def _write_release(
    folder: Path,
    tick: Callable[..., object],
    n_per_class: int,
    subjects: int,
    test_subjects: int,
    n_unlabelled: int,
    seed: int,
    size: int,
) -> dict:
    release = folder / RELEASE
    prelim = release / "validation_data" / CNMC_PRELIM
    final = release / "testing_data" / CNMC_FINAL
    prelim.mkdir(parents=True)
    final.mkdir(parents=True)
    prelim_cells: list[tuple[str, str, Image.Image]] = []  # (original name, class, image)
    listing: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for ci, label in enumerate(CNMC_CLASSES):
        counts = _cell_counts(n_per_class, subjects)
        for i, n in enumerate(counts):
            subject = _subject(label, i + 1, seed, ci)
            test = i >= subjects - test_subjects
            listing["test" if test else "train"].setdefault(label, []).append(subject.name)
            for name, image in _subject_cells(subject, n, seed, ci, i + 1, size):
                if test:
                    prelim_cells.append((name, label, image))
                else:
                    target = release / "training_data" / f"fold_{i % FOLDS}" / label
                    target.mkdir(parents=True, exist_ok=True)
                    image.save(target / name)
                tick()
    order = _rng(seed, _SUBJECT, len(CNMC_CLASSES), 0).permutation(len(prelim_cells))
    rows = []
    for new, k in enumerate(order, start=1):
        name, label, image = prelim_cells[int(k)]
        image.save(prelim / f"{new}.bmp")
        rows.append({"Patient_ID": name, "new_names": f"{new}.bmp", "labels": 1 if label == "all" else 0})
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(CNMC_LABEL_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda row: int(str(row["new_names"]).split(".")[0])))
    write_text(release / "validation_data" / CNMC_LABELS, table.getvalue())
    # The final phase: one cell from each of yet other subjects, both classes in turn, no labels written.
    for new in range(1, n_unlabelled + 1):
        ci = (new - 1) % len(CNMC_CLASSES)
        number = subjects + 1 + (new - 1) // len(CNMC_CLASSES)
        subject = _subject(CNMC_CLASSES[ci], number, seed, ci)
        _render_cell(subject, _rng(seed, _CELL, ci, number), size).save(final / f"{new}.bmp")
        tick()
    return {"subjects_by_part": listing, "note": NOTE}


def generate_cnmc_dataset(
    out_dir: str | os.PathLike,
    n_per_class: int = 100,
    subjects: int = 12,
    test_subjects: int = 3,
    n_unlabelled: int = 10,
    seed: int = 0,
    size: int = 224,
    progress: bool = False,
) -> Path:
    """Write a C-NMC 2019-like release into ``out_dir/C-NMC_Leukemia`` (see the module's docstring); return
    ``out_dir``.

    ``n_per_class`` labelled cells per class over ``subjects`` subjects per class, of whom the last
    ``test_subjects`` form the preliminary test set; ``n_unlabelled`` cells of the final phase. Reused when
    already written with the same arguments, else rebuilt at once
    (:func:`allstudy.data.synthetic.build_dataset`).
    """
    n_per_class = check_positive("n_per_class", n_per_class)
    subjects = check_positive("subjects", subjects, 2)
    test_subjects = check_positive("test_subjects", test_subjects)
    if not subjects - test_subjects >= FOLDS:
        raise ValueError(
            f"subjects ({subjects}) must leave at least {FOLDS} training subjects per class after the "
            f"{test_subjects} test subjects"
        )
    if n_per_class < subjects:
        raise ValueError(f"n_per_class ({n_per_class}) must give every one of the {subjects} subjects a cell")
    n_unlabelled = check_positive("n_unlabelled", n_unlabelled, 0)
    seed = check_positive("seed", seed, 0)
    size = check_positive("size (pixels)", size, 64)
    wanted = {
        "synthetic": True,
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "seed": seed,
        "n_per_class": n_per_class,
        "subjects": subjects,
        "test_subjects": test_subjects,
        "n_unlabelled": n_unlabelled,
        "size": size,
        "classes": list(CNMC_CLASSES),
    }

    def write(folder: Path, tick: Callable[..., object]) -> dict:
        return _write_release(folder, tick, n_per_class, subjects, test_subjects, n_unlabelled, seed, size)

    total = n_per_class * len(CNMC_CLASSES) + n_unlabelled
    return build_dataset(out_dir, wanted, write, total, progress, unit="synthetic cells")


def example_cells(seed: int = 0, size: int = 224) -> list[tuple[str, Image.Image]]:
    """One synthetic cell per class (a subject of its own), for the app's examples: (class, image) pairs."""
    examples = []
    for ci, label in enumerate(CNMC_CLASSES):
        number = 10_000 + seed  # a subject no default dataset holds
        subject = _subject(label, number, seed, ci)
        examples.append((label, _render_cell(subject, _rng(seed, _CELL, ci, number), size)))
    return examples
