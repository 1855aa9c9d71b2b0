"""The data step of the study: scan a dataset, find its duplicate groups, split it, cache the result.

``scan`` is what ``allstudy data scan`` prints; ``prepare`` writes ``manifest.csv``,
``duplicates.csv``, ``splits.csv`` and ``data.json`` (provenance) into an output folder and reuses
them while the images and the parameters are unchanged.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from allstudy.core.atomic import read_json, write_csv, write_json
from allstudy.core.version import __version__
from allstudy.data.duplicates import DuplicateParams, find_links, groups_of, params_dict
from allstudy.data.layouts import PARTS
from allstudy.data.manifest import Manifest, build_manifest, content_hash, fingerprint, read_manifest_csv
from allstudy.data.split import (
    DEFAULT_FRACTIONS,
    image_level_split,
    leaked_fields,
    make_split,
    split_counts,
    split_kind,
)

#: Bump when the cached files' meaning changes, so that old caches are rebuilt.
CACHE_VERSION = 1


@dataclass(frozen=True)
class Scan:
    """A dataset's manifest and the links between its files that show the same field."""

    manifest: Manifest
    links: pd.DataFrame
    seconds: float

    def report(self) -> dict:
        """The scan as the JSON document of ``allstudy data scan --json`` (see DESIGN.md)."""
        table = self.manifest.table
        usable = self.manifest.usable
        exact = groups_of(self.links, ["exact"])
        near = [g for g in groups_of(self.links) if g not in exact]
        subjects = sorted({s for s in usable["subject"] if s})
        return {
            "images": int(len(table)),
            "classes": {str(k): int(v) for k, v in usable["class"].value_counts().sort_index().items()},
            "problems": [{"path": p, "reason": r} for p, r in zip(table["path"], table["problem"], strict=True) if r],
            "exact_duplicate_groups": exact,
            "near_duplicate_groups": near,
            "root": str(self.manifest.root),
            "layout": self.manifest.layout,
            "usable": int(len(usable)),
            "subjects": subjects,
            "notes": [{"path": p, "note": n} for p, n in zip(table["path"], table["note"], strict=True) if n],
            "data_hash": self.manifest.data_hash(),
            "seconds": round(self.seconds, 1),
            # a release with an official split: usable images per part and class, and the unlabelled ones
            "parts": {
                str(part): {str(k): int(v) for k, v in rows["class"].value_counts().sort_index().items()}
                for part, rows in sorted(usable.groupby("part"), key=lambda kv: PARTS.index(kv[0]) if kv[0] else -1)
                if part
            },
            "unlabelled": self.manifest.unlabelled["path"].tolist(),
        }


def scan(root: str | os.PathLike, params: DuplicateParams = DuplicateParams(), progress: bool = False) -> Scan:
    """Read every file under ``root``, record problems, and link duplicates and overlapping fields."""
    start = time.perf_counter()
    manifest = build_manifest(root, progress=progress)
    links = find_links(manifest.root, manifest.table, params, progress=progress)
    return Scan(manifest, links, time.perf_counter() - start)


@dataclass(frozen=True)
class PreparedData:
    """The cached data step: where the images are and the tables that describe them."""

    root: Path
    manifest: pd.DataFrame
    links: pd.DataFrame
    split: pd.DataFrame
    info: dict

    def counts(self) -> pd.DataFrame:
        """Images per class and split."""
        return split_counts(self.split)


def prepare(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    params: DuplicateParams = DuplicateParams(),
    progress: bool = False,
) -> PreparedData:
    """Scan and split ``root`` into ``out_dir`` (manifest.csv, duplicates.csv, splits.csv, data.json).

    The scan is reused while the files (paths, sizes, modification times) and the duplicate
    thresholds are unchanged; the split while the seed and fractions are unchanged too.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info_path = out_dir / "data.json"
    print_ = print if progress else (lambda *a, **k: None)
    stamp = {"cache_version": CACHE_VERSION, "fingerprint": fingerprint(root), "duplicate_params": params_dict(params)}
    split_stamp = {"seed": seed, "fractions": list(fractions)}
    info = read_json(info_path) if info_path.exists() else {}
    scan_cached = all(info.get(k) == v for k, v in stamp.items()) and all(
        (out_dir / name).exists() for name in ("manifest.csv", "duplicates.csv")
    )

    if scan_cached:
        print_(f"data: reusing the scan in {out_dir} (images unchanged)")
        table = read_manifest_csv(out_dir / "manifest.csv")
        links = pd.read_csv(out_dir / "duplicates.csv", keep_default_na=False)
        image_root = Path(info["root"])
    else:
        result = scan(root, params, progress=progress)
        table, links, image_root = result.manifest.table, result.links, result.manifest.root
        write_csv(table, out_dir / "manifest.csv")
        write_csv(links, out_dir / "duplicates.csv")
        info = {
            **stamp,
            "root": str(image_root),
            "layout": result.manifest.layout,
            "scan_seconds": round(result.seconds, 1),
            "report": result.report(),
        }
        write_json(info_path, info)  # the split below is then stale: its stamp is absent

    split_cached = info.get("split") == split_stamp and (out_dir / "splits.csv").exists()
    if split_cached:
        split = pd.read_csv(out_dir / "splits.csv", dtype=str, keep_default_na=False)
    else:
        split = make_split(table, links, seed=seed, fractions=fractions)
        write_csv(split, out_dir / "splits.csv")
        info = {
            **info,
            "split": split_stamp,
            "data_hash": content_hash(table),
            "code_version": __version__,
            "synthetic": (Path(root) / "SYNTHETIC.json").exists(),
            "split_counts": split_counts(split).to_dict(),
            "split_kind": split_kind(table),  # what it means: allstudy.data.split.SPLIT_KINDS
        }
        write_json(info_path, info)
    return PreparedData(image_root, table, links, split, info)


def with_image_level_split(
    prepared: PreparedData, seed: int = 0, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> PreparedData:
    """``prepared`` with the published studies' image-level split in place of the grouped one: a control that
    measures what their protocol's leak is worth, never the study's own figures.

    ``info["leaked_fields"]`` counts the validation and test fields that overlap a training field. A run's
    identity holds its split (:func:`allstudy.training.fit.split_hash`), so no run of the grouped split is
    reused for it; the cached backbone features are per field and serve both.
    """
    split = image_level_split(prepared.manifest, seed=seed, fractions=fractions)
    leaked = leaked_fields(split, prepared.split.set_index("path")["group"])
    info = {
        **prepared.info,
        "split": {"seed": seed, "fractions": list(fractions), "protocol": "image-level"},
        "split_counts": split_counts(split).to_dict(),
        "leaked_fields": leaked,
    }
    return PreparedData(prepared.root, prepared.manifest, prepared.links, split, info)
