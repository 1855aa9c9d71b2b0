"""A newcomer's first run: ``make study``'s embedded default (the ``demo`` profile) from a fresh output folder.

Runs ``allstudy run --profile demo`` as ``make study`` does (two notebooks at once, the terminal's
one line per step), and reports the wall time, each step's time, the chosen model with its test
accuracy, malignant test fields called benign and fields referred, and every architecture's test
accuracy. Exits 1 when a target of the first run is missed: at most ``--budget`` seconds, the chosen
model at least 90 % on the synthetic test split, every transfer model at least twice chance.

    .venv/bin/python benchmarks/first_run.py --weights-dir ../shared/weights --out outputs/benchmarks/first_run.json
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from study_jobs import timed_study

from allstudy.core.atomic import write_json

STEP_LINE = re.compile(r"^\[\s*\d+/\d+\] (?P<name>.+?)\s+(?P<seconds>\d+) s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", help="folder of offline ImageNet weight files")
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds the first run may take")
    parser.add_argument("--work", default="outputs/benchmarks/first_run", help="scratch folder (emptied first)")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out = work / "study"
    command = [sys.executable, "-m", "allstudy", "run", "--profile", args.profile, "--out", str(out), "--jobs", "2"]
    command += ["--weights-dir", args.weights_dir] if args.weights_dir else []
    print(" ".join(command), flush=True)
    timing = timed_study(command, work / "terminal.log")
    steps = [m.groupdict() for m in map(STEP_LINE.match, (work / "terminal.log").read_text().splitlines()) if m]

    summary = json.loads((out / "summary.json").read_text())
    chosen = summary["chosen"]
    runs = summary["runs"]
    accuracy = {name: run["test"]["accuracy"] for name, run in runs.items()}
    transfer = [name for name, run in runs.items() if run["weights"] == "imagenet"]
    chance = 1.0 / len(summary["data"]["classes"])
    decision = runs[chosen]["decision"]
    report = {
        **timing,
        "profile": args.profile,
        "steps": {s["name"]: int(s["seconds"]) for s in steps},
        "chosen": chosen,
        "chosen_test_accuracy": accuracy[chosen],
        "malignant_called_benign": f"{decision['malignant_called_benign']} of {decision['n_malignant']}",
        "referred": f"{decision['referred']} ({decision['referral_rate']:.1%})",
        "test_accuracy": accuracy,
    }
    print(json.dumps(report, indent=2))
    missed = []
    if timing["wall_s"] > args.budget:
        missed.append(f"took {timing['wall_s']:.0f} s, more than {args.budget:.0f} s")
    if accuracy[chosen] < 0.90:
        missed.append(f"chosen {chosen} at {accuracy[chosen]:.1%} test accuracy, below 90 %")
    missed += [f"{n} at {accuracy[n]:.1%}, below twice chance" for n in transfer if accuracy[n] < 2 * chance]
    report["targets_missed"] = missed
    if args.out:
        write_json(args.out, report)
    if missed:
        sys.exit("first run misses its targets: " + "; ".join(missed))


if __name__ == "__main__":
    main()
