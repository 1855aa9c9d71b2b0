"""What the served model answers on its test split: the guard first, then the decision policy.

The study's evaluation measures the decision policy on the run's predictions; the app and
``allstudy predict`` also put the out-of-distribution guard in front of it. This script reads every
test field of a study's split through the chosen model folder's :class:`allstudy.serving.predictor.Predictor`
(its default runtime, as the app runs it) and prints the verdicts per true class, the malignant
fields called benign and the fields not answered (referred or out-of-distribution).

    .venv/bin/python benchmarks/served_decisions.py --study outputs/study-cpu --out outputs/benchmarks/served.json
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    import pandas as pd

    from allstudy.core.atomic import read_json, write_json
    from allstudy.serving.predictor import VERDICTS, Predictor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="a finished study folder (OUTDIR of allstudy run)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    study = Path(args.study)
    root = Path(read_json(study / "data" / "data.json")["root"])
    split = pd.read_csv(study / "data" / "splits.csv", keep_default_na=False)
    fields = split[split["split"] == args.split].reset_index(drop=True)
    predictor = Predictor(study / "models" / "chosen")
    answers = predictor.predict_batch([root / p for p in fields["path"]])
    fields["verdict"] = [a.verdict for a in answers]
    table = pd.crosstab(fields["class"], fields["verdict"]).reindex(columns=list(VERDICTS), fill_value=0)
    malignant = fields["class"].map(predictor.malignant)
    missed = fields[malignant & (fields["verdict"] == "benign")]
    not_answered = fields["verdict"].isin(["uncertain", "out-of-distribution"])
    print(f"{predictor.meta['run']} ({predictor.runtime}), {len(fields)} {args.split} fields")
    print(table.to_string())
    print(f"malignant fields called benign: {len(missed)} of {int(malignant.sum())} {list(missed['path'])}")
    print(
        f"not answered: {int(not_answered.sum())} ({not_answered.mean():.1%}): "
        f"{int((fields['verdict'] == 'uncertain').sum())} referred, "
        f"{int((fields['verdict'] == 'out-of-distribution').sum())} out-of-distribution"
    )
    if args.out:
        write_json(
            args.out,
            {
                "study": str(study),
                "run": predictor.meta["run"],
                "runtime": predictor.runtime,
                "split": args.split,
                "n": len(fields),
                "verdicts": table.to_dict(orient="index"),
                "malignant_called_benign": list(missed["path"]),
                "n_malignant": int(malignant.sum()),
                "not_answered": int(not_answered.sum()),
            },
        )


if __name__ == "__main__":
    main()
