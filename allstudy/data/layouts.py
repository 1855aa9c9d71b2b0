"""Finding the images of a dataset folder and their labels: class-per-folder trees, the Kaggle
Taleqani layouts and C-NMC 2019.

Layouts understood (``root`` is what the user passes):

* any class-per-folder tree: ``root/<class>/<image>`` (deeper folders allowed; the class is the
  nearest enclosing folder whose name is a known class alias, else the top-level folder);
* Kaggle Taleqani: ``root/Original/{Benign,Early,Pre,Pro}`` beside ``root/Segmented/...`` (the
  originals are read; point at ``root/Segmented`` to read the segmented version), and the 4-class
  variant ``Benign``, ``[Malignant] early Pre-B``, ``[Malignant] Pre-B``, ``[Malignant] Pro-B``;
* C-NMC 2019: ``root/fold_*/{all,hem}/UID_<subject>_<image>_<cell>_<class>.bmp`` (subjects parsed).
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Item:
    """One file of a dataset: its path relative to the root (forward slashes), class and subject."""

    relpath: str
    label: str
    subject: str | None


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
