"""Finding the images of a dataset folder and their labels: class-per-folder trees, the Kaggle
Taleqani layouts and C-NMC 2019.

Layouts understood (``root`` is what the user passes):

* any class-per-folder tree: ``root/<class>/<image>`` (deeper folders allowed; the class is the
  nearest enclosing folder whose name is a known class alias, else the top-level folder);
* Kaggle Taleqani: ``root/Original/{Benign,Early,Pre,Pro}`` beside ``root/Segmented/...`` (the
  originals are read; point at ``root/Segmented`` to read the segmented version), and the 4-class
  variant ``Benign``, ``[Malignant] early Pre-B``, ``[Malignant] Pre-B``, ``[Malignant] Pro-B``;
* C-NMC 2019: ``root/fold_*/{all,hem}/UID_<subject>_<image>_<cell>_<class>.bmp`` (subjects parsed);
* the C-NMC 2019 release as it is downloaded, found from ``root`` or a folder below it: Kaggle's
  ``C-NMC_Leukemia/{training_data/fold_*/{all,hem}, validation_data/C-NMC_test_prelim_phase_data,
  testing_data/C-NMC_test_final_phase_data}`` and TCIA's ``C-NMC_training_data/fold_*/...``,
  ``C-NMC_test_prelim_phase_data``, ``C-NMC_test_final_phase_data``. The training folds are part
  ``train``; the preliminary-test cells (part ``test``) take class and subject from
  ``C-NMC_test_prelim_phase_data_labels.csv`` (inside their folder or beside it); the final-phase
  cells have no label (part ``unlabelled``). Files that are not images by name (the CSV, notes) are
  skipped there.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

#: Files that document a dataset rather than belong to it.
IGNORED_NAMES = {
    "readme",
    "readme.md",
    "readme.txt",
    "license",
    "license.txt",
    "manifest.md5",
    "synthetic.json",
    "thumbs.db",
    "desktop.ini",
}

_ALIASES: dict[str, str] = {
    "benign": "Benign",
    "hematogones": "Benign",
    "hematogone": "Benign",
    "early": "Early",
    "earlypreb": "Early",
    "earlypre": "Early",
    "pre": "Pre",
    "preb": "Pre",
    "pro": "Pro",
    "prob": "Pro",
    "all": "all",
    "hem": "hem",
}
_SUBJECT = re.compile(r"^UID_([Hh]?\d+)_", re.ASCII)


#: The parts of a dataset with an official split: training folds, a labelled test set, unlabelled cells.
PARTS = ("train", "test", "unlabelled")


@dataclass(frozen=True)
class Item:
    """One file of a dataset: its path relative to the root (forward slashes), class and subject, and its
    part (``""`` for a dataset without an official split; else one of :data:`PARTS`; ``unlabelled``
    files have the class ``""``)."""

    relpath: str
    label: str
    subject: str | None
    part: str = ""


def canonical_class(folder_name: str) -> str | None:
    """Map a folder name to a canonical class (``Benign``, ``Early``, ``Pre``, ``Pro``, ``all``, ``hem``).

    ``[Malignant] early Pre-B`` -> ``Early``; ``Pro-B`` -> ``Pro``. Returns None for unknown names.
    """
    words = re.sub(r"\[.*?\]|\bmalignant\b", " ", folder_name.lower())
    key = re.sub(r"[^a-z]", "", words)
    if key != "all" and key.endswith("all"):  # "Pre-B ALL" -> "preb"
        key = key[: -len("all")]
    return _ALIASES.get(key)


def subject_of(filename: str) -> str | None:
    """The C-NMC subject of a file name ``UID_<subject>_...``: ``UID_1``, ``UID_H6`` (``h`` written ``H``)."""
    match = _SUBJECT.match(filename)
    return None if match is None else "UID_" + match.group(1).upper()


#: Folder and file names of the C-NMC 2019 release (Kaggle's and TCIA's copies).
CNMC_TRAINING = ("training_data", "C-NMC_training_data")
CNMC_PRELIM = "C-NMC_test_prelim_phase_data"
CNMC_FINAL = "C-NMC_test_final_phase_data"
CNMC_LABELS = "C-NMC_test_prelim_phase_data_labels.csv"
#: Columns of the preliminary-test labels CSV: the original name (subject inside), the file, 1 = all / 0 = hem.
CNMC_LABEL_COLUMNS = ("Patient_ID", "new_names", "labels")
_IMAGE_SUFFIXES = {".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".webp"}


@dataclass(frozen=True)
class CnmcRelease:
    """Where the three parts of a downloaded C-NMC 2019 release are (``prelim``, ``final``, ``labels``: None
    when absent)."""

    root: Path
    training: Path
    prelim: Path | None
    final: Path | None
    labels: Path | None


def _folders_below(root: Path, depth: int) -> list[Path]:
    found, level = [root], [root]
    for _ in range(depth):
        level = [c for p in level for c in sorted(p.iterdir()) if c.is_dir() and not c.name.startswith(".")]
        found += level
    return found


def find_cnmc_release(root: str | os.PathLike, depth: int = 3) -> CnmcRelease | None:
    """The C-NMC 2019 release whose parts are below ``root`` (up to ``depth`` folders down), else None.

    Its training part is a folder named as in :data:`CNMC_TRAINING` holding ``fold_*`` folders; the other
    parts are looked for beside it, or one folder down (Kaggle's ``validation_data/``, ``testing_data/``).
    """
    root = Path(root)
    for folder in _folders_below(root, depth)[1:]:  # the training folder itself: the plain fold_* layout
        if folder.name not in CNMC_TRAINING or not any(c.name.startswith("fold_") for c in folder.iterdir()):
            continue
        top = folder.parent
        near = [top, *(c for c in sorted(top.iterdir()) if c.is_dir() and not c.name.startswith("."))]
        prelim = next((d / CNMC_PRELIM for d in near if (d / CNMC_PRELIM).is_dir()), None)
        final = next((d / CNMC_FINAL for d in near if (d / CNMC_FINAL).is_dir()), None)
        labels = None
        if prelim is not None:
            labels = next((c for c in (prelim / CNMC_LABELS, prelim.parent / CNMC_LABELS) if c.is_file()), None)
        return CnmcRelease(top, folder, prelim, final, labels)
    return None


def read_prelim_labels(path: Path) -> dict[str, tuple[str, str | None]]:
    """The preliminary-test labels CSV: file name -> (class ``all``/``hem``, subject); a clear error when malformed."""
    expected = f"expected the columns {', '.join(CNMC_LABEL_COLUMNS)} (labels 1 = all, 0 = hem)"
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in CNMC_LABEL_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path} lacks the column(s) {', '.join(missing)}; {expected}")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path} cannot be read as a CSV ({err}); {expected}") from None
    labels: dict[str, tuple[str, str | None]] = {}
    for number, row in enumerate(rows, start=2):
        value = (row["labels"] or "").strip()
        if value not in ("0", "1"):
            raise ValueError(f"{path} line {number}: labels is {value!r}, not 1 (all) or 0 (hem); {expected}")
        name = (row["new_names"] or "").strip()
        if not name:
            raise ValueError(f"{path} line {number}: new_names is empty; {expected}")
        labels[name] = ("all" if value == "1" else "hem", subject_of((row["Patient_ID"] or "").strip()))
    return labels


def _release_items(release: CnmcRelease) -> list[Item]:
    """Every image of a C-NMC release with its part, class and subject (see the module's docstring)."""

    def images(folder: Path) -> list[Path]:
        found = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found += [
                Path(dirpath) / n
                for n in sorted(filenames)
                if not n.startswith(".") and Path(n).suffix.lower() in _IMAGE_SUFFIXES
            ]
        return found

    def rel(path: Path) -> str:
        return path.relative_to(release.root).as_posix()

    items = [
        Item(rel(p), _label_for(p.relative_to(release.training).parts), subject_of(p.name), "train")
        for p in images(release.training)
    ]
    if release.prelim is not None:
        if release.labels is None:
            raise ValueError(
                f"{release.prelim} has no labels: expected {CNMC_LABELS} inside it or beside it, with the columns "
                f"{', '.join(CNMC_LABEL_COLUMNS)} (from the C-NMC 2019 download); or move the folder away to leave "
                "the preliminary test set out"
            )
        labels = read_prelim_labels(release.labels)
        for p in images(release.prelim):
            label, subject = labels.get(p.name, ("", None))
            items.append(Item(rel(p), label, subject, "test" if label else "unlabelled"))
    if release.final is not None:
        items += [Item(rel(p), "", None, "unlabelled") for p in images(release.final)]
    return items


def resolve_root(root: str | os.PathLike) -> tuple[Path, str]:
    """Return the folder whose images to read and the name of the layout recognised there."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; pass the dataset folder that holds one folder per class")
    children = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if "original" in children and "segmented" in children:
        return children["original"], "kaggle-taleqani (Original/ read; Segmented/ beside it)"
    if any(name.startswith("fold_") for name in children):
        return root, "c-nmc (fold_*/{all,hem})"
    return root, "class-per-folder"


def _label_for(parts: tuple[str, ...]) -> str:
    for folder in reversed(parts[:-1]):
        label = canonical_class(folder)
        if label is not None:
            return label
    return parts[0]


def discover(root: str | os.PathLike) -> tuple[Path, str, list[Item]]:
    """List every file of the dataset under ``root`` with its class and subject.

    Returns ``(image_root, layout, items)``; paths in items are relative to ``image_root``. Hidden
    files and documentation (README, MANIFEST.md5, SYNTHETIC.json) are skipped; every other file is
    an item, so a text file named ``.jpg`` is found and later reported as a problem.
    """
    release = find_cnmc_release(root) if Path(root).is_dir() else None
    if release is not None:
        kind = "kaggle" if release.training.name == "training_data" else "tcia"
        return (
            release.root,
            f"c-nmc-2019 release ({kind}: training folds, preliminary and final test)",
            _release_items(release),
        )
    image_root, layout = resolve_root(root)
    items: list[Item] = []
    for dirpath, dirnames, filenames in os.walk(image_root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if here == image_root:
            continue  # files at the top level belong to no class
        for name in sorted(filenames):
            if name.startswith(".") or name.lower() in IGNORED_NAMES:
                continue
            rel = (here / name).relative_to(image_root)
            items.append(Item(rel.as_posix(), _label_for(rel.parts), subject_of(name)))
    if items and all(item.label in ("all", "hem") for item in items):
        layout = "c-nmc (all/hem, subjects from UID_<subject>_...)"
    if not items:
        raise ValueError(
            f"{image_root} holds no files in class folders; expected <class>/<image> "
            "(e.g. Benign/x.jpg, Pro/y.jpg) or C-NMC fold_*/all|hem/*.bmp"
        )
    return image_root, layout, items
