"""Tries at moving the Benign / Early Pre-B border, chosen on validation, reported on validation and test.

Reads a finished study (``--study``: its runs, splits and feature cache) and evaluates, each through
the same :func:`allstudy.evaluation.metrics.evaluate` (temperature and decision policy fitted on validation):

* every transfer run as it is (the reference);
* ``ensemble``: the mean of the transfer runs' probabilities (each already averaged over 8 views);
* ``concat``: one softmax head on the transfer backbones' cached features side by side (8 views,
  standardised with :func:`allstudy.models.registry.adapt_standardise`, the profile's head recipe: Adam 1e-3,
  cosine decay over 30 epochs, batch 32, no dropout, class weights).

Printed per candidate, for validation and test: errors, log-loss, malignant fields called benign and
fields referred under the policy. Keep a candidate only if it wins on validation (fewer errors, then
lower log-loss); the test columns are for the report, never for choosing.

    .venv/bin/python benchmarks/border_tries.py --study outputs/study-cpu --out outputs/benchmarks/border_tries.json
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    import keras
    import numpy as np
    import pandas as pd

    from allstudy.core.atomic import read_json, write_json
    from allstudy.evaluation.metrics import evaluate, labels_of, probabilities
    from allstudy.models.registry import adapt_standardise
    from allstudy.training.fit import feature_rows, features_dir
    from allstudy.training.pipeline import class_weights

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="a finished study folder (OUTDIR of allstudy run)")
    parser.add_argument("--runs", nargs="*", default=["mobilenet", "mobilenetv2", "efficientnet"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    study = Path(args.study)
    split = pd.read_csv(study / "data" / "splits.csv", keep_default_na=False)
    params = {r: read_json(study / "runs" / r / "params.json") for r in args.runs}
    frames = {r: pd.read_csv(study / "runs" / r / "predictions.csv", keep_default_na=False) for r in args.runs}
    classes = params[args.runs[0]]["classes"]
    candidates = {r: frames[r] for r in args.runs}

    ensemble = frames[args.runs[0]].copy()
    for c in classes:
        ensemble[f"p_{c}"] = np.mean([frames[r][f"p_{c}"].to_numpy() for r in args.runs], axis=0)
    ensemble["label"] = [classes[i] for i in probabilities(ensemble, classes).argmax(axis=1)]
    candidates["ensemble"] = ensemble

    # a head on the backbones' features side by side
    rows = feature_rows(split)
    index = {c: i for i, c in enumerate(classes)}
    views = range(8)
    per_run = []
    for r in args.runs:
        p = params[r]
        folder = features_dir(
            study / "cache", p["config"], p["weights_sha256"] or p["weights_file"], p["input_size"], p["data_hash"]
        )
        per_run.append(np.stack([np.load(folder / f"features-view{k}.npy") for k in views]))  # (views, fields, d)
    every = np.concatenate(per_run, axis=-1)
    x = {s: every[:, rows[s]] for s in ("train", "val", "test")}
    y = {s: split.loc[split["split"] == s, "class"].map(index).to_numpy() for s in ("train", "val", "test")}
    keras.utils.set_random_seed(0)
    head = keras.Sequential(
        [
            keras.Input((every.shape[-1],)),
            keras.layers.Normalization(name="standardise"),
            keras.layers.Dense(len(classes), activation="softmax", name="probabilities"),
        ]
    )
    train_x = x["train"].reshape(-1, every.shape[-1])
    train_y = keras.utils.to_categorical(np.tile(y["train"], len(views)), len(classes))
    unscaled = adapt_standardise(head.get_layer("standardise"), train_x)
    steps = args.epochs * -(-len(train_x) // 32)
    head.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, steps)),
        loss="categorical_crossentropy",
    )
    head.fit(
        train_x,
        train_y,
        batch_size=32,
        epochs=args.epochs,
        shuffle=True,
        verbose=0,
        class_weight=class_weights(y["train"], len(classes)),
    )
    concat = frames[args.runs[0]].copy()
    for s in ("val", "test"):
        mean = np.mean([head.predict(v, batch_size=256, verbose=0) for v in x[s]], axis=0)
        order = split.loc[split["split"] == s, "path"].to_numpy()
        position = {p: i for i, p in enumerate(order)}
        mask = concat["split"] == s
        at = concat.loc[mask, "path"].map(position).to_numpy()
        for i, c in enumerate(classes):
            concat.loc[mask, f"p_{c}"] = mean[at, i]
    concat["label"] = [classes[i] for i in probabilities(concat, classes).argmax(axis=1)]
    candidates["concat"] = concat

    results = []
    header = (
        f"{'candidate':12s} {'val err':>7s} {'val nll':>8s} {'val miss':>8s} {'val ref':>7s} | "
        f"{'test err':>8s} {'test acc':>8s} {'test miss':>9s} {'test ref':>8s} {'answered acc':>12s}"
    )
    print(header)
    for name, frame in candidates.items():
        report = evaluate(frame, classes, n_resamples=200, seed=0)
        row = {"candidate": name}
        for s in ("val", "test"):
            part = frame[frame["split"] == s]
            p, t = probabilities(part, classes), labels_of(part, classes)
            decided = report["decision"][s]
            row.update(
                {
                    f"{s}_errors": int((p.argmax(axis=1) != t).sum()),
                    f"{s}_n": int(len(t)),
                    f"{s}_nll": float(-np.log(np.clip(p[np.arange(len(t)), t], 1e-12, 1)).mean()),
                    f"{s}_missed": decided["malignant_called_benign"]["count"],
                    f"{s}_referred": decided["referred"]["count"],
                    f"{s}_answered_accuracy": decided["answered_accuracy"]["rate"],
                }
            )
        row["test_accuracy"] = report["test"]["accuracy"]
        row["rule_out"] = report["decision"]["policy"]["rule_out"]
        results.append(row)
        print(
            f"{name:12s} {row['val_errors']:7d} {row['val_nll']:8.4f} {row['val_missed']:8d} "
            f"{row['val_referred']:7d} | "
            f"{row['test_errors']:8d} {row['test_accuracy']:8.2%} {row['test_missed']:9d} {row['test_referred']:8d} "
            f"{row['test_answered_accuracy']:12.2%}",
            flush=True,
        )
    best = min(results, key=lambda r: (r["val_errors"], r["val_nll"]))
    print(f"chosen on validation (fewest errors, then lowest log-loss): {best['candidate']}")
    if args.out:
        write_json(
            args.out,
            {
                "study": str(study),
                "rows": results,
                "chosen_on_validation": best["candidate"],
                "concat_features_unscaled": unscaled,
                "epochs": args.epochs,
            },
        )


if __name__ == "__main__":
    main()
