"""Duplicate and overlapping-field groups: the same slide region must never sit in two splits.

Three kinds of evidence link two files:

* ``exact``: identical bytes (sha256);
* ``hash``: the same field re-saved (16x16 difference hashes within ``hash_max_bits`` bits);
* ``overlap``: a second capture of the same region, shifted by a few pixels up to a third of the
  field, re-exposed or re-compressed. A global hash misses these. They are found in two stages:

  1. *candidates*: phase correlation of every pair of 64 x 64 high-passed, whitened thumbnails
     (batched FFTs; the burned-in scale-bar corner is masked first, since it is alike in many
     unrelated fields). Unrelated fields peak at about 0.05 (99.9th percentile 0.09 on
     all-taleqani); overlapping ones at 0.10 to 1.0;
  2. *verification*: ORB keypoints matched with Lowe's ratio test, a similarity transform fitted
     by RANSAC (OpenCV), then the aligned pixels compared: a pair is an overlap when the transform
     has enough inliers, is close to a pure shift, the fields overlap enough, and the band-passed
     grey levels of the overlap correlate.

A single cell cut out on black (C-NMC) is compared on its interior alone: its outline against the black
dominates any hash or band-pass of the image, so two distinct round cells of one subject would otherwise
look like one re-saved or shifted image. For such images a hash link needs the same verification, and the
overlap is a fraction of the smaller cell, not of the image.

Groups are the connected components of all links. Thresholds are in :class:`DuplicateParams`;
``tests/test_shared_data.py`` validates them on the real data (the README's named pairs found, no
group across classes, no giant group) and the synthetic re-captures give a ground truth.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import scipy.fft
from scipy.cluster.hierarchy import DisjointSet
from tqdm import tqdm

from allstudy.data.images import read_rgb
from allstudy.data.manifest import usable_rows
from allstudy.data.segment import corner_region


@dataclass(frozen=True)
class DuplicateParams:
    """Thresholds of duplicate detection (validated on ../shared/data/all-taleqani)."""

    #: The scale-bar corner to mask, as fractions of width and height from the bottom-right.
    corner_width: float = 0.25
    corner_height: float = 0.18
    #: Hamming distance (bits of 256) under which two difference hashes mean the same re-saved field.
    hash_max_bits: int = 12
    #: A hash with fewer set (or unset) bits than this is of a featureless image (e.g. a blank
    #: segmentation failure): such hashes all look alike, so they link nothing.
    hash_min_structure_bits: int = 16
    #: Thumbnail side for phase correlation, and the sigma (thumbnail px) of its high-pass filter.
    thumb: int = 64
    highpass_sigma: float = 4.0
    #: Phase-correlation peak above which a pair is verified (noise floor ~0.05, 99.9th pct 0.09).
    candidate_peak: float = 0.09
    #: Verification: RANSAC inliers, scale and rotation of the fitted similarity transform.
    min_inliers: int = 12
    max_scale_change: float = 0.1
    max_rotation_deg: float = 5.0
    #: Verification: the overlap as a fraction of the field, and the correlation of the aligned
    #: band-passed pixels (unrelated pairs: at most 0.07; blurred re-captures: 0.2 and above).
    min_overlap: float = 0.10
    min_correlation: float = 0.15
    #: A cell cut out on black: at least this fraction of its pixels at most ``cutout_black`` (grey level);
    #: compared on its interior, ``cutout_erosion`` px (of the 256-px matching image) inside the outline.
    cutout_min_background: float = 0.2
    cutout_black: int = 8
    cutout_erosion: int = 10


def _corner_mask(shape: tuple[int, int], params: DuplicateParams) -> np.ndarray:
    """A uint8 mask (255 = use) hiding the scale-bar corner (:func:`allstudy.data.segment.corner_region`)."""
    return np.where(corner_region(shape, params.corner_width, params.corner_height, rounding="nearest"), 0, 255).astype(
        np.uint8
    )


def _matching_grey(path: Path) -> np.ndarray:
    """The field as 8-bit grey, at most 256 px on its longer side (matching needs no more)."""
    image = read_rgb(path).convert("L")
    scale = 256 / max(image.size)
    if scale < 1:
        image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)))
    return np.asarray(image)


def _cell_interior(grey: np.ndarray, params: DuplicateParams) -> np.ndarray | None:
    """For a cell cut out on black, a uint8 mask (255 = use) of its interior away from the outline; None for a
    field (not cut out)."""
    foreground = grey > params.cutout_black
    if 1.0 - foreground.mean() < params.cutout_min_background:
        return None
    size = 2 * params.cutout_erosion + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    return cv2.erode(foreground.astype(np.uint8) * 255, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)


def _thumbnail(grey: np.ndarray, params: DuplicateParams) -> np.ndarray:
    """A high-passed, standardised thumbnail with the corner filled by the mean grey level."""
    field = grey.astype(np.float32)
    mask = _corner_mask(field.shape, params) > 0
    field[~mask] = field[mask].mean()
    thumb = cv2.resize(field, (params.thumb, params.thumb), interpolation=cv2.INTER_AREA)
    thumb = thumb - cv2.GaussianBlur(thumb, (0, 0), params.highpass_sigma)
    return (thumb - thumb.mean()) / (thumb.std() + 1e-6)


#: Pairs compared per inverse FFT call: blocks that stay in cache beat each field's whole row of pairs at
#: once (``benchmarks/scan_speed.py`` times both side by side on the same thumbnails).
_BLOCK = 256


def comparison_keys(table: pd.DataFrame) -> np.ndarray:
    """Which files may show the same slide region: those of one class and, where file names give it, one
    subject. Each class of these datasets comes from its own patients, and a field cannot overlap another
    patient's slide; two cells of different subjects centred on black merely look alike."""
    return (table["class"].astype(str) + "|" + table["subject"].astype(str)).to_numpy()


def phase_correlation_candidates(
    thumbs: np.ndarray, keys: np.ndarray, params: DuplicateParams, progress: bool = False, block: int = _BLOCK
) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, peak)`` with ``i < j`` and the same key (:func:`comparison_keys`) whose phase-correlation
    peak exceeds the threshold.

    ``block`` pairs go through each inverse FFT; the pairs found do not depend on it.
    """
    n = len(thumbs)
    spectra = scipy.fft.rfft2(thumbs.astype(np.float32), workers=-1)
    spectra /= np.abs(spectra) + 1e-3
    spectra = spectra.astype(np.complex64)
    shape = (params.thumb, params.thumb)
    found: list[tuple[int, int, float]] = []
    for i in tqdm(range(n - 1), desc="comparing fields", unit="img", disable=not progress, mininterval=1):
        others = np.arange(i + 1, n)
        others = others[keys[others] == keys[i]]
        if len(others) == 0:
            continue
        for start in range(0, len(others), block):
            chunk = others[start : start + block]
            surface = scipy.fft.irfft2(spectra[i][None] * np.conj(spectra[chunk]), s=shape, workers=-1)
            peaks = surface.reshape(len(chunk), -1).max(axis=1)
            for j in np.nonzero(peaks > params.candidate_peak)[0]:
                found.append((i, int(chunk[j]), float(peaks[j])))
    return found


class _Verifier:
    """Verifies candidate pairs by local feature matching, RANSAC and aligned pixel correlation."""

    def __init__(self, greys: list[np.ndarray], params: DuplicateParams):
        self.greys, self.params = greys, params
        self.orb = cv2.ORB.create(nfeatures=1000, edgeThreshold=15, patchSize=15, fastThreshold=8)
        self.matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
        self.interiors = [_cell_interior(g, params) for g in greys]
        self.masks = [
            _corner_mask(g.shape, params) if inner is None else inner
            for g, inner in zip(greys, self.interiors, strict=True)
        ]
        self.keypoints: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def _features(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        if i not in self.keypoints:
            points, descriptors = self.orb.detectAndCompute(self.greys[i], self.masks[i])
            self.keypoints[i] = (np.array([p.pt for p in points], np.float32).reshape(-1, 2), descriptors)
        return self.keypoints[i]

    def _bandpass(self, i: int) -> np.ndarray:
        grey = self.greys[i].astype(np.float32)
        return cv2.GaussianBlur(grey, (0, 0), 1.5) - cv2.GaussianBlur(grey, (0, 0), 8)

    def verify(self, i: int, j: int) -> dict:
        """Evidence that field j is a re-capture of field i (transform, inliers, overlap, correlation)."""
        evidence = {
            "inliers": 0,
            "dx": 0.0,
            "dy": 0.0,
            "scale": 1.0,
            "rotation": 0.0,
            "overlap": 0.0,
            "correlation": 0.0,
            "verified": False,
        }
        points_i, desc_i = self._features(i)
        points_j, desc_j = self._features(j)
        if desc_i is None or desc_j is None or len(desc_i) < 8 or len(desc_j) < 8:
            return evidence
        pairs = self.matcher.knnMatch(desc_j, desc_i, k=2)
        good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < 0.8 * m[1].distance]
        if len(good) < 6:
            return evidence
        source = points_j[[m.queryIdx for m in good]]
        target = points_i[[m.trainIdx for m in good]]
        transform, inliers = cv2.estimateAffinePartial2D(
            source, target, method=cv2.RANSAC, ransacReprojThreshold=3.0, maxIters=2000, confidence=0.99, refineIters=10
        )
        if transform is None:
            return evidence
        scale = float(np.hypot(transform[0, 0], transform[1, 0]))
        rotation = float(np.degrees(np.arctan2(transform[1, 0], transform[0, 0])))
        evidence.update(
            inliers=int(inliers.sum()),
            dx=float(transform[0, 2]),
            dy=float(transform[1, 2]),
            scale=scale,
            rotation=rotation,
        )
        height, width = self.greys[i].shape
        warped = cv2.warpAffine(self._bandpass(j), transform, (width, height))
        valid = cv2.warpAffine(self.masks[j], transform, (width, height), flags=cv2.INTER_NEAREST) > 0
        valid &= self.masks[i] > 0
        cutout = self.interiors[i] is not None or self.interiors[j] is not None
        smaller = min(np.count_nonzero(self.masks[i]), np.count_nonzero(self.masks[j])) if cutout else valid.size
        overlap = float(valid.sum() / max(smaller, 1))
        evidence["overlap"] = overlap
        if overlap >= 0.02:
            evidence["correlation"] = _correlation(self._bandpass(i)[valid], warped[valid])
        p = self.params
        evidence["verified"] = bool(
            evidence["inliers"] >= p.min_inliers
            and abs(scale - 1) <= p.max_scale_change
            and abs(rotation) <= p.max_rotation_deg
            and overlap >= p.min_overlap
            and evidence["correlation"] >= p.min_correlation
        )
        return evidence


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two pixel vectors; 0 when either is flat."""
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 1e-9 else 0.0


def _hash_bits(hex_hash: str) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(hex_hash), dtype=np.uint8))


def find_links(
    root: str | os.PathLike,
    table: pd.DataFrame,
    params: DuplicateParams = DuplicateParams(),
    progress: bool = False,
    workers: int | None = None,
) -> pd.DataFrame:
    """Every pair of usable files that shows the same field, with its kind and evidence.

    ``table`` is a manifest table; returns a frame with columns ``a, b, kind, peak, inliers, dx, dy,
    scale, rotation, overlap, correlation`` (paths relative to ``root``; ``a < b``).
    """
    root = Path(root)
    usable = usable_rows(table).sort_values("path").reset_index(drop=True)
    paths = usable["path"].tolist()
    links: dict[tuple[int, int], dict] = {}

    for _, group in usable.groupby("sha256"):
        members = sorted(group.index)
        for other in members[1:]:
            links[(members[0], other)] = {"kind": "exact"}

    if len(usable) >= 2:
        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            greys = list(
                tqdm(
                    pool.map(lambda p: _matching_grey(root / p), paths),
                    total=len(paths),
                    desc="loading fields",
                    unit="img",
                    disable=not progress,
                )
            )
        verifier = _Verifier(greys, params)
        cutout = np.array([inner is not None for inner in verifier.interiors])

        # Byte-identical files are duplicates wherever they sit; a similar hash or an overlap only counts between
        # files that may show one slide region (comparison_keys), and between cut-out cells only when verified.
        keys = comparison_keys(usable)
        bits = np.stack([_hash_bits(h) for h in usable["phash"]])
        ones = bits.sum(axis=1)
        structured = (ones >= params.hash_min_structure_bits) & (ones <= bits.shape[1] - params.hash_min_structure_bits)
        for i in np.nonzero(structured[:-1])[0]:
            distance = np.count_nonzero(bits[i + 1 :] != bits[i], axis=1)
            close = (distance <= params.hash_max_bits) & structured[i + 1 :] & (keys[i + 1 :] == keys[i])
            for j in int(i) + 1 + np.nonzero(close)[0]:
                pair = (int(i), int(j))
                if pair not in links and (not (cutout[i] or cutout[j]) or verifier.verify(*pair)["verified"]):
                    links[pair] = {"kind": "hash"}

        thumbs = np.stack([_thumbnail(g, params) for g in greys])
        candidates = phase_correlation_candidates(thumbs, keys, params, progress=progress)
        for i, j, peak in tqdm(candidates, desc="verifying candidates", unit="pair", disable=not progress):
            if (i, j) in links:
                links[(i, j)]["peak"] = peak
                continue
            evidence = verifier.verify(i, j)
            if evidence.pop("verified"):
                links[(i, j)] = {"kind": "overlap", "peak": peak, **evidence}

    columns = ["a", "b", "kind", "peak", "inliers", "dx", "dy", "scale", "rotation", "overlap", "correlation"]
    rows = [{"a": paths[i], "b": paths[j], **info} for (i, j), info in sorted(links.items())]
    return pd.DataFrame(rows, columns=columns)


def group_ids(paths: Iterable[str], links: pd.DataFrame) -> dict[str, str]:
    """Map each path to a group id: the first path (sorted) of its connected component under ``links``
    (columns ``a``, ``b``); links that name a path not given are ignored."""
    paths = sorted(paths)
    sets = DisjointSet(paths)
    for a, b in zip(links["a"], links["b"], strict=True):
        if a in sets and b in sets:
            sets.merge(a, b)
    return {p: min(sets.subset(p)) for p in paths}


def groups_of(links: pd.DataFrame, kinds: Iterable[str] | None = None) -> list[list[str]]:
    """Connected components (size >= 2) of the links of the given kinds, each sorted, largest first."""
    if kinds is not None:
        links = links[links["kind"].isin(list(kinds))]
    members = sorted(set(links["a"]) | set(links["b"]))
    ids = group_ids(members, links)
    components: dict[str, list[str]] = {}
    for path, group in ids.items():
        components.setdefault(group, []).append(path)
    return sorted((sorted(c) for c in components.values() if len(c) > 1), key=lambda c: (-len(c), c[0]))


def params_dict(params: DuplicateParams) -> dict:
    """The thresholds as a plain dict, for provenance files."""
    return asdict(params)
