"""The study one notebook at a time (--jobs 1) against two at once (--jobs 2), side by side in one run.

Runs ``allstudy run`` once with each ``--jobs`` value, each from a fresh output folder, on the same
data, profile and architectures (the controls of the chosen one included), and reports each one's
wall time, the peak memory of its whole process tree (runner and kernels, summed, sampled every
0.5 s), the ratio of the two wall times, and whether every run and control reached the same
figures (it must: the kernels are the same, only their overlap changes).

    .venv/bin/python benchmarks/study_jobs.py --data ../shared/data/all-taleqani --profile cpu \\
        --weights-dir ../shared/weights --arch sequential lenet mobilenet --out outputs/benchmarks/study_jobs.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from allstudy.core.atomic import write_json


def tree_rss(process: psutil.Process) -> int:
    """Resident memory of ``process`` and all its descendants, in bytes."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass  # ended between listing and reading
    return total


def timed_study(command: list[str], log: Path) -> dict:
    """Run ``command`` to its end; its wall time and the peak summed memory of its process tree."""
    peak = 0
    start = time.perf_counter()
    with open(log, "w") as handle:
        child = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
        watched = psutil.Process(child.pid)
        done = threading.Event()

        def sample():
            nonlocal peak
            while not done.wait(0.5):
                peak = max(peak, tree_rss(watched))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = child.wait()
        done.set()
        sampler.join()
    if code:
        sys.exit(f"{' '.join(command)} failed ({code}); see {log}")
    return {"wall_s": round(time.perf_counter() - start, 1), "peak_tree_rss_gb": round(peak / 1e9, 2)}


def figures(out: Path) -> dict:
    """Every run's and control's test accuracy and macro-F1, from the study's summary."""
    summary = json.loads((out / "summary.json").read_text())
    found = {name: run["test"] for name, run in summary["runs"].items()}
    found.update({row["control"]: [row["accuracy"], row["macro_f1"]] for row in summary["controls"]["rows"]})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset folder (default: the synthetic default)")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--weights-dir", help="folder of offline ImageNet weight files")
    parser.add_argument("--arch", nargs="+", help="architectures (default: the profile's)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="the --jobs values compared, in order")
    parser.add_argument("--work", default="outputs/benchmarks/study_jobs", help="scratch folder (emptied first)")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    results = {}
    for jobs in args.jobs:
        out = work / f"jobs{jobs}"
        command = [
            sys.executable,
            "-m",
            "allstudy",
            "run",
            "--profile",
            args.profile,
            "--out",
            str(out),
            "--jobs",
            str(jobs),
        ]
        command += ["--data", args.data] if args.data else []
        command += ["--weights-dir", args.weights_dir] if args.weights_dir else []
        command += ["--arch", *args.arch] if args.arch else []
        print(f"--jobs {jobs}: {' '.join(command)}", flush=True)
        results[jobs] = {**timed_study(command, work / f"jobs{jobs}.log"), "figures": figures(out)}
        print(
            f"  {results[jobs]['wall_s']:.0f} s, peak memory of the process tree "
            f"{results[jobs]['peak_tree_rss_gb']:.1f} GB",
            flush=True,
        )

    first, *others = args.jobs
    report = {
        "profile": args.profile,
        "data": args.data,
        "architectures": args.arch,
        "cores": psutil.cpu_count(),
        "runs": {str(j): r for j, r in results.items()},
    }
    for jobs in others:
        ratio = results[first]["wall_s"] / results[jobs]["wall_s"]
        same = results[first]["figures"] == results[jobs]["figures"]
        report[f"speed-up jobs {jobs} vs {first}"] = round(ratio, 2)
        report[f"same figures jobs {jobs} vs {first}"] = same
        print(
            f"--jobs {jobs} vs --jobs {first}: {ratio:.2f}x the speed; "
            f"{'the same' if same else 'DIFFERENT'} figures for all {len(results[jobs]['figures'])} runs"
        )
    if args.out:
        write_json(args.out, report)


if __name__ == "__main__":
    main()
