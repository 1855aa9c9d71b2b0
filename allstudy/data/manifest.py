"""The manifest: one row per file of a dataset, with what a later step needs to trust it.

Columns: ``path`` (relative to the image root, forward slashes), ``class``, ``subject`` (empty when
unknown), ``width``, ``height``, ``mode``, ``sha256``, ``phash`` (16x16 difference hash, hex),
``problem`` (empty for a usable image), ``note`` (e.g. a mode conversion) and ``part`` (empty, or the
official part of a release: ``train``, ``test``, ``unlabelled``). A file with a problem stays in the
manifest, so it is reported, and is left out of every split; so is an unlabelled file.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagehash
import pandas as pd
from tqdm import tqdm

from allstudy.data.images import inspect_bytes
from allstudy.data.layouts import Item, discover

COLUMNS = ["path", "class", "subject", "width", "height", "mode", "sha256", "phash", "problem", "note", "part"]
#: Side of the difference hash (16 x 16 = 256 bits), as used in the data README's own check.
HASH_SIZE = 16
#: Bump when a column's meaning changes, so cached manifests are rebuilt.
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class Manifest:
    """A dataset's manifest with where its images are and which layout was recognised."""

    root: Path
    layout: str
    table: pd.DataFrame

    @property
    def usable(self) -> pd.DataFrame:
        """Rows of images that can be used (:func:`usable_rows`)."""
        return usable_rows(self.table)

    @property
    def unlabelled(self) -> pd.DataFrame:
        """Readable images without a class (a release's unlabelled test part): scored, never split."""
        return self.table[(self.table["problem"] == "") & (self.table["part"] == "unlabelled")]

    def data_hash(self) -> str:
        """A hash of the dataset's content: every usable file's path, class and sha256."""
        return content_hash(self.table)


def usable_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a manifest table that the study uses: readable images with a class."""
    keep = table["problem"] == ""
    if "part" in table:  # tables made by hand (tests, older callers) may have no part column
        keep &= table["part"] != "unlabelled"
    return table[keep]


def content_hash(table: pd.DataFrame) -> str:
    """sha256 over sorted ``path,class,sha256`` lines of the usable rows (the data's identity)."""
    usable = usable_rows(table).sort_values("path")
    lines = "\n".join(f"{p},{c},{s}" for p, c, s in zip(usable["path"], usable["class"], usable["sha256"], strict=True))
    return hashlib.sha256(lines.encode()).hexdigest()


def describe_file(root: Path, item: Item) -> dict:
    """The manifest row of one file; problems are recorded, never raised."""
    row = {
        "path": item.relpath,
        "class": item.label,
        "subject": item.subject or "",
        "width": 0,
        "height": 0,
        "mode": "",
        "sha256": "",
        "phash": "",
        "problem": "",
        "note": "",
        "part": item.part,
    }
    try:
        data = (root / item.relpath).read_bytes()
    except OSError as err:
        row["problem"] = f"cannot read the file: {err.strerror or err}"
        return row
    row["sha256"] = hashlib.sha256(data).hexdigest()
    info, rgb = inspect_bytes(data, root / item.relpath)
    row.update(width=info.width, height=info.height, mode=info.mode, problem=info.problem, note=info.note)
    if rgb is not None:
        row["phash"] = str(imagehash.dhash(rgb, hash_size=HASH_SIZE))
    return row


def build_manifest(root: str | os.PathLike, workers: int | None = None, progress: bool = False) -> Manifest:
    """Scan every file under ``root`` (see :func:`allstudy.data.layouts.discover`) into a manifest."""
    image_root, layout, items = discover(root)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(
            tqdm(
                pool.map(lambda item: describe_file(image_root, item), items),
                total=len(items),
                desc="reading images",
                unit="img",
                disable=not progress,
            )
        )
    table = pd.DataFrame(rows, columns=COLUMNS)
    return Manifest(image_root, layout, table)


def fingerprint(root: str | os.PathLike) -> str:
    """A cheap identity of the files under ``root`` (paths, sizes, modification times) for caching."""
    image_root, _, items = discover(root)
    digest = hashlib.sha256(f"schema={SCHEMA_VERSION}\n".encode())
    for item in items:
        try:
            stat = (image_root / item.relpath).stat()
            state = f"{stat.st_size}|{stat.st_mtime_ns}"
        except OSError as err:  # e.g. a dangling link: the scan reports it as a problem
            state = f"unreadable:{err.errno}"
        digest.update(f"{item.relpath}|{item.label}|{state}\n".encode())
    return digest.hexdigest()


def read_manifest_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest CSV written by :func:`write_manifest_csv`, keeping empty strings as strings."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = set(COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{path} is not a manifest (missing columns {sorted(missing)}); delete it to rebuild it")
    for column in ("width", "height"):
        table[column] = table[column].astype(int)
    return table
