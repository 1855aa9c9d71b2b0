"""Training speed on this machine: images/s per architecture, and cached features vs recomputing.

1. For every architecture at its profile's input size: training images/s over a fixed number of
   batches after a warm-up (for transfer models, also the backbone's feature extraction, in Keras and
   in LiteRT as training runs it on a CPU, and a fine-tuning step), and the parameter count.
2. For a transfer model (MobileNet alpha 0.25 by default): the wall time to reach the same
   validation accuracy (a) training the head on backbone features computed once and cached, and
   (b) training the same head with the frozen backbone recomputed on every batch of every epoch.
   Both start from the same seed and run side by side in this one process.

    .venv/bin/python benchmarks/train_speed.py --data ../shared/data/all-taleqani --weights-dir ../shared/weights \\
        --out outputs/benchmarks/train_speed.json
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _throughput(step, batches: int, batch_size: int) -> float:
    step()  # warm-up: tracing and first allocation
    start = time.perf_counter()
    for _ in range(batches):
        step()
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    import keras

    from allstudy.core.atomic import write_json
    from allstudy.models.convert import LiteRTModel, litert_available
    from allstudy.models.profiles import ARCHITECTURES, train_config
    from allstudy.models.registry import build_model, unfreeze_top
    from allstudy.study.study_data import prepare_study_data
    from allstudy.training.pipeline import load_images, make_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset folder (default: the synthetic default)")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--work", default="outputs/benchmarks/work", help="scratch output folder")
    parser.add_argument("--weights-dir", help="folder of offline ImageNet weight files")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--transfer-arch", default="mobilenet")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    data = prepare_study_data(args.data, args.work, args.profile, progress=False)
    classes = sorted(data.split["class"].unique())
    figures: dict = {"cores": os.cpu_count(), "profile": args.profile, "architectures": {}}
    rng = np.random.default_rng(0)

    print(
        f"{'architecture':14s} {'px':>4s} {'params':>12s} {'train img/s':>12s} {'features img/s':>15s} "
        f"{'LiteRT img/s':>13s}"
    )
    for arch in ARCHITECTURES:
        config = train_config(args.profile, arch)
        built = build_model(
            arch, len(classes), config.input_size, config.weights, config.alpha, config.dropout, args.weights_dir
        )
        x = rng.uniform(0, 255, (config.batch_size, built.input_size, built.input_size, 3)).astype("float32")
        y = keras.utils.to_categorical(rng.integers(0, len(classes), config.batch_size), len(classes))
        row = {
            "input_size": built.input_size,
            "params": int(built.model.count_params()),
            "weights": "imagenet" if built.weights else "none",
        }
        if built.weights is not None:
            row["features_images_per_s"] = _throughput(
                lambda: built.features.predict_on_batch(x), args.batches, config.batch_size
            )
            if litert_available():
                lite = LiteRTModel(built.features)
                row["features_litert_images_per_s"] = _throughput(
                    lambda: lite.predict(x, config.batch_size), args.batches, config.batch_size
                )
            unfreeze_top(built.backbone, built.arch.fine_tune_layers)
        built.model.compile(optimizer="adam", loss="categorical_crossentropy")
        row["train_images_per_s"] = _throughput(
            lambda: built.model.train_on_batch(x, y), args.batches, config.batch_size
        )
        figures["architectures"][arch] = row
        print(
            f"{arch:14s} {built.input_size:4d} {row['params']:12,d} {row['train_images_per_s']:12.1f} "
            f"{row.get('features_images_per_s', float('nan')):15.1f} "
            f"{row.get('features_litert_images_per_s', float('nan')):13.1f}",
            flush=True,
        )

    # Cached features vs recomputing the frozen backbone every epoch, to the same validation accuracy.
    config = train_config(args.profile, args.transfer_arch)
    parts = {s: data.split[data.split["split"] == s] for s in ("train", "val")}
    index = {c: i for i, c in enumerate(classes)}
    images = {
        s: load_images(data.root, p["path"].tolist(), 224, os.path.join(args.work, "cache")) for s, p in parts.items()
    }
    labels = {s: keras.utils.to_categorical(p["class"].map(index), len(classes)) for s, p in parts.items()}

    def fresh():
        keras.utils.set_random_seed(0)
        built = build_model(
            args.transfer_arch, len(classes), 224, "imagenet", config.alpha, config.dropout, args.weights_dir
        )
        return built

    class Stop(keras.callbacks.Callback):
        def __init__(self, target):
            super().__init__()
            self.target, self.reached_at, self.start = target, None, time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if self.target is not None and logs["val_accuracy"] >= self.target and self.reached_at is None:
                self.reached_at = time.perf_counter() - self.start
                self.model.stop_training = True

    # (a) cached: features once, then the head
    built = fresh()
    start = time.perf_counter()
    features = {s: built.features.predict(make_dataset(images[s], None, 64), verbose=0) for s in images}
    feature_seconds = time.perf_counter() - start
    built.head.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate), loss="categorical_crossentropy", metrics=["accuracy"]
    )
    history = built.head.fit(
        features["train"],
        labels["train"],
        validation_data=(features["val"], labels["val"]),
        epochs=args.max_epochs,
        batch_size=config.batch_size,
        verbose=0,
    )
    target = float(max(history.history["val_accuracy"]))
    built = fresh()
    start = time.perf_counter()
    features = {s: built.features.predict(make_dataset(images[s], None, 64), verbose=0) for s in images}
    built.head.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate), loss="categorical_crossentropy", metrics=["accuracy"]
    )
    stop = Stop(target)
    stop.start = start
    built.head.fit(
        features["train"],
        labels["train"],
        validation_data=(features["val"], labels["val"]),
        epochs=args.max_epochs,
        batch_size=config.batch_size,
        verbose=0,
        callbacks=[stop],
    )
    cached_seconds = stop.reached_at or (time.perf_counter() - start)

    # (b) recomputed: the same head behind the frozen backbone, images through the backbone every epoch
    built = fresh()
    built.model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate), loss="categorical_crossentropy", metrics=["accuracy"]
    )
    stop = Stop(target)
    built.model.fit(
        make_dataset(images["train"], labels["train"], config.batch_size, shuffle=True),
        validation_data=make_dataset(images["val"], labels["val"], 64),
        epochs=args.max_epochs,
        verbose=0,
        callbacks=[stop],
    )
    recomputed_seconds = stop.reached_at or (time.perf_counter() - stop.start)
    figures["cached_vs_recomputed"] = {
        "arch": args.transfer_arch,
        "target_val_accuracy": target,
        "feature_extraction_s": feature_seconds,
        "cached_s": cached_seconds,
        "recomputed_s": recomputed_seconds,
        "recomputed_reached_target": stop.reached_at is not None,
        "speedup": recomputed_seconds / cached_seconds,
    }
    print(
        f"\n{args.transfer_arch}: validation accuracy {target:.2%} reached in {cached_seconds:.1f} s with cached "
        f"features (extraction {feature_seconds:.1f} s) vs {recomputed_seconds:.1f} s recomputing the backbone "
        f"every epoch{'' if stop.reached_at else ' (not reached: capped)'}: {recomputed_seconds / cached_seconds:.1f}x"
    )
    if args.out:
        write_json(args.out, figures)


if __name__ == "__main__":
    main()
