"""Transfer heads before and after leaving near-constant features unscaled, side by side in one run.

For each transfer architecture of the profile, the stock :func:`allstudy.study.runner.train_architecture`
trains the head twice on the same cached backbone features: once with Keras' plain ``adapt`` (the
``standardise`` layer divides a feature constant in training by 1e-7: before) and once with
:func:`allstudy.models.registry.adapt_standardise` (after). Prints and writes, per head: the features left
unscaled, the last epoch's training and validation loss, validation and test accuracy.

    .venv/bin/python benchmarks/head_standardise.py --work outputs/benchmarks/head-synthetic \\
        --weights-dir ../shared/weights                           # the synthetic default
    .venv/bin/python benchmarks/head_standardise.py --data ../shared/data/all-taleqani \\
        --work outputs/study-cpu --weights-dir ../shared/weights  # reuses a study's feature cache
"""

from __future__ import annotations

import argparse
import os
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _plain_adapt(layer, features) -> int:
    layer.adapt(features)
    return 0


def main() -> None:
    import numpy as np
    import pandas as pd

    import allstudy.training.fit
    from allstudy.core.atomic import write_json
    from allstudy.models.profiles import ARCHITECTURES, get_profile
    from allstudy.study.runner import train_architecture

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset folder (default: the profile's synthetic default)")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--work", required=True, help="study folder whose data step and feature cache are used")
    parser.add_argument("--weights-dir", help="folder of offline ImageNet weight files")
    parser.add_argument("--archs", nargs="*", help="transfer architectures (default: the profile's)")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    settings = get_profile(args.profile)
    archs = args.archs or [a for a in ARCHITECTURES if settings["train"][a].get("weights") == "imagenet"]
    rows = []
    for arch in archs:
        for variant, adapt in (("before", _plain_adapt), ("after", None)):
            patch = mock.patch.object(allstudy.training.fit, "adapt_standardise", adapt) if adapt else mock.MagicMock()
            with patch:
                result = train_architecture(
                    args.data,
                    args.work,
                    args.profile,
                    arch,
                    args.weights_dir,
                    progress=False,
                    run_name=f"bench-head-{arch}-{variant}",
                )
            history, params = result.history, result.params
            predictions = pd.read_csv(result.run_dir / "predictions.csv", keep_default_na=False)
            accuracy = {s: float((f["label"] == f["class"]).mean()) for s, f in predictions.groupby("split")}
            last = history.iloc[-1]
            rows.append(
                {
                    "arch": arch,
                    "variant": variant,
                    "unscaled": params.get("features_left_unscaled"),
                    "train_loss": float(last["loss"]),
                    "val_loss": float(last["val_loss"]),
                    "val_accuracy": accuracy["val"],
                    "test_accuracy": accuracy["test"],
                    "max_val_probability": float(predictions.filter(like="p_").to_numpy().max()),
                }
            )
            r = rows[-1]
            print(
                f"{arch:13s} {variant:6s} unscaled {r['unscaled'] or 0:4d}  train loss {r['train_loss']:.4f}  "
                f"val loss {r['val_loss']:9.4f}  val acc {r['val_accuracy']:.1%}  test acc {r['test_accuracy']:.1%}",
                flush=True,
            )
    if args.out:
        write_json(
            args.out,
            {
                "profile": args.profile,
                "data": args.data or "synthetic default",
                "rows": rows,
                "cores": os.cpu_count(),
                "numpy": np.__version__,
            },
        )


if __name__ == "__main__":
    main()
