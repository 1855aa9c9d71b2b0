"""How long the data scan takes, stage by stage, and why it compares candidates, not all pairs.

Also measures the duplicate thresholds' margins on random pairs (peak and aligned correlation).
Times, in one process on the same images: reading the manifest; the phase-correlation candidate
stage over every pair (in cache-sized blocks, and again with each field's whole row of pairs at once,
for the ratio); the feature-matching verification of the candidates; and the verification
of a random sample of pairs, extrapolated to every pair (what matching all pairs blindly would
cost). Prints a table and writes JSON.

    .venv/bin/python benchmarks/scan_speed.py ../shared/data/all-taleqani --out outputs/benchmarks/scan_speed.json
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from allstudy.core.atomic import write_json
from allstudy.data.duplicates import (
    DuplicateParams,
    _matching_grey,
    _thumbnail,
    _Verifier,
    comparison_keys,
    phase_correlation_candidates,
)
from allstudy.data.manifest import build_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="dataset folder")
    parser.add_argument(
        "--sample-pairs", type=int, default=400, help="random pairs verified to extrapolate all-pairs matching"
    )
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    params = DuplicateParams()
    figures: dict[str, float | int | str] = {"cores": os.cpu_count() or 1}

    start = time.perf_counter()
    manifest = build_manifest(args.data)
    figures["manifest_s"] = time.perf_counter() - start
    usable = manifest.usable.sort_values("path").reset_index(drop=True)
    n = len(usable)
    figures["images"] = n
    figures["pairs"] = n * (n - 1) // 2

    start = time.perf_counter()
    greys = [_matching_grey(manifest.root / p) for p in usable["path"]]
    thumbs = np.stack([_thumbnail(g, params) for g in greys])
    figures["thumbnails_s"] = time.perf_counter() - start
    keys = comparison_keys(usable)
    start = time.perf_counter()
    candidates = phase_correlation_candidates(thumbs, keys, params)
    figures["candidate_search_s"] = time.perf_counter() - start
    figures["candidates_s"] = figures["thumbnails_s"] + figures["candidate_search_s"]
    figures["candidates"] = len(candidates)
    # The same search with each field's whole row of pairs in one inverse FFT (no blocks), same thumbnails.
    start = time.perf_counter()
    whole_rows = phase_correlation_candidates(thumbs, keys, params, block=n)
    figures["candidate_search_whole_rows_s"] = time.perf_counter() - start
    if whole_rows != candidates:
        raise SystemExit("blocked and whole-row candidate searches disagree")
    figures["whole_rows_over_blocks"] = figures["candidate_search_whole_rows_s"] / figures["candidate_search_s"]

    verifier = _Verifier(greys, params)
    start = time.perf_counter()
    verified = sum(verifier.verify(i, j)["verified"] for i, j, _ in candidates)
    figures["verify_candidates_s"] = time.perf_counter() - start
    figures["verified"] = int(verified)

    rng = np.random.default_rng(0)
    sample = [tuple(rng.choice(n, 2, replace=False)) for _ in range(args.sample_pairs)]
    fresh = _Verifier(greys, params)  # no cached keypoints: a fair per-pair cost including features
    for i in range(n):
        fresh._features(i)
    start = time.perf_counter()
    evidence = [fresh.verify(int(i), int(j)) for i, j in sample]
    per_pair = (time.perf_counter() - start) / len(sample)
    # The thresholds' margins on random pairs (almost all unrelated): phase-correlation peak and
    # aligned-pixel correlation, against DuplicateParams.candidate_peak and min_correlation.
    spectra = np.fft.rfft2(thumbs)
    spectra /= np.abs(spectra) + 1e-3
    peaks = [float(np.fft.irfft2(spectra[i] * np.conj(spectra[j]), s=thumbs.shape[1:]).max()) for i, j in sample]
    figures["random_pairs_peak_median"] = float(np.median(peaks))
    figures["random_pairs_peak_max"] = float(np.max(peaks))
    figures["random_pairs_correlation_max"] = float(max(e["correlation"] for e in evidence))
    figures["random_pairs_verified"] = int(sum(e["verified"] for e in evidence))
    figures["verify_per_pair_ms"] = per_pair * 1000
    figures["verify_all_pairs_estimated_s"] = per_pair * figures["pairs"]
    ours = figures["candidates_s"] + figures["verify_candidates_s"]
    figures["scan_duplicates_s"] = ours
    figures["all_pairs_over_ours"] = figures["verify_all_pairs_estimated_s"] / ours

    for key, value in figures.items():
        print(f"{key:32s} {value:,.2f}" if isinstance(value, float) else f"{key:32s} {value}")
    if args.out:
        write_json(Path(args.out), {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()})


if __name__ == "__main__":
    main()
