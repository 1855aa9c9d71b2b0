"""Prediction speed on this machine: what the Predictor adds to the model's own forward pass.

1. Single image, p50/p95 latency, the four measured in turn on each image, in rotating order (so
   load drifts and the previous call's lingering threads hit all alike): ``Predictor.predict(path)``
   (read by content, resize, forward, temperature, OOD guard); the bare forward pass in the Predictor's
   runtime on a prepared tensor (``serving.tflite`` in
   LiteRT, or the Keras model's ``tf.function``: the floor the Predictor is held to); the Keras
   model's bare ``tf.function`` (for scale, whatever the runtime); a naive ``model.predict`` per call
   (what a hand-written app often does).
2. A folder: images/s through ``Predictor.predict_batch(paths)`` vs the bare batched forward pass in
   the same runtime on prepared tensors, best of ``--repeats``.

The images are synthetic fields (allstudy.data.synthetic) written to a temporary folder.

    .venv/bin/python benchmarks/predict_speed.py --model outputs/models/chosen --images 100 \\
        --out outputs/benchmarks/predict_speed.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _fields(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` synthetic 224-px fields as JPEG files, classes in turn."""
    from allstudy.data.classes import TALEQANI_CLASSES
    from allstudy.data.synthetic import render_field

    paths = []
    for i in range(n):
        label = TALEQANI_CLASSES[i % len(TALEQANI_CLASSES)]
        paths.append(folder / f"field-{i:04d}-{label}.jpg")
        render_field(label, np.random.default_rng([seed, i]), 224).save(paths[-1], quality=90)
    return paths


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _quantiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "mean_ms": float(ms.mean()),
        "n": int(ms.size),
    }


def bare_keras(model, size: int):
    """The Keras model's forward pass as one compiled call of fixed signature."""
    import tensorflow as tf

    call = tf.function(
        lambda x: model(x, training=False), input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)]
    )
    return lambda x: call(x).numpy()


def bare_forward(predictor):
    """The forward pass in the Predictor's runtime on a prepared batch, nothing else (the floor)."""
    if predictor.runtime == "tflite":
        from allstudy.serving.runtime import SERVING_FILE, ServingRunner

        runner = ServingRunner(predictor.model_dir / SERVING_FILE)
        return lambda x: runner(np.asarray(x))
    return bare_keras(predictor.model, predictor.input_size)


def single_latency(predictor, paths: list[Path], inputs: np.ndarray, bare, keras_bare) -> dict:
    """p50/p95 of the four ways, interleaved image by image."""
    import tensorflow as tf

    model = predictor.model
    tensors = [tf.constant(x[None]) for x in inputs]
    for warm in range(2):  # tracing, first allocations, model.predict's own function
        predictor.predict(paths[warm])
        bare(inputs[warm : warm + 1])
        keras_bare(tensors[warm])
        model.predict(inputs[warm : warm + 1], verbose=0)
    times: dict[str, list[float]] = {"predictor": [], "bare": [], "bare_keras": [], "naive": []}
    for i, (path, x, tensor) in enumerate(zip(paths, inputs, tensors, strict=True)):
        ways = {
            "predictor": lambda: predictor.predict(path),
            "bare": lambda: bare(inputs[i : i + 1]),
            "bare_keras": lambda: keras_bare(tensor),
            "naive": lambda: model.predict(x[None], verbose=0),
        }
        names = list(ways)
        for name in names[i % 4 :] + names[: i % 4]:  # rotated: TensorFlow's thread pools still spinning after
            times[name].append(_timed(ways[name]))  # one way must not always slow the same next one
    return {name: _quantiles(seconds) for name, seconds in times.items()}


def batch_throughput(predictor, paths: list[Path], inputs: np.ndarray, bare, batch_size: int, repeats: int) -> dict:
    """Images/s of a folder through predict_batch vs the bare batched forward (best of ``repeats``)."""
    batches = [inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size)]
    best = {"predictor": 0.0, "bare": 0.0}
    for _ in range(repeats):
        seconds = _timed(lambda: predictor.predict_batch(paths, batch_size=batch_size))
        best["predictor"] = max(best["predictor"], len(paths) / seconds)
        seconds = _timed(lambda: [bare(b) for b in batches])
        best["bare"] = max(best["bare"], len(paths) / seconds)
    return {f"{name}_images_per_s": value for name, value in best.items()}


def main() -> None:
    from allstudy.core.atomic import write_json
    from allstudy.serving.predictor import Predictor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder (model.keras, model.json, optional ood.json)")
    parser.add_argument("--images", type=int, default=50, help="synthetic fields to time (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="folder passes; the best counts")
    parser.add_argument(
        "--runtime",
        default="auto",
        choices=("auto", "keras", "tflite"),
        help="the Predictor's runtime (default: %(default)s)",
    )
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    predictor = Predictor(args.model, batch_size=args.batch_size, runtime=args.runtime)
    with tempfile.TemporaryDirectory(prefix="predict-speed-") as scratch:
        paths = _fields(Path(scratch), args.images)
        inputs = np.stack([predictor.model_input(p) for p in paths]).astype(np.float32)
        bare = bare_forward(predictor)
        single = single_latency(predictor, paths, inputs, bare, bare_keras(predictor.model, predictor.input_size))
        batch = batch_throughput(predictor, paths, inputs, bare, args.batch_size, args.repeats)
    ratios = {
        "predictor_p50_over_bare_p50": single["predictor"]["p50_ms"] / single["bare"]["p50_ms"],
        "naive_p50_over_predictor_p50": single["naive"]["p50_ms"] / single["predictor"]["p50_ms"],
        "bare_keras_p50_over_predictor_p50": single["bare_keras"]["p50_ms"] / single["predictor"]["p50_ms"],
        "batch_predictor_over_bare_throughput": batch["predictor_images_per_s"] / batch["bare_images_per_s"],
    }
    figures = {
        "cores": os.cpu_count(),
        "model": str(args.model),
        "arch": predictor.meta.get("arch"),
        "input_size": predictor.input_size,
        "tta_views": predictor.meta.get("tta_views", 1),
        "ood_guard": predictor.guard is not None,
        "runtime": predictor.runtime,
        "images": args.images,
        "batch_size": args.batch_size,
        "single": single,
        "batch": batch,
        "ratios": ratios,
    }

    print(
        f"{predictor.meta.get('arch')} at {predictor.input_size} px, {args.images} synthetic fields, "
        f"{os.cpu_count()} cores, OOD guard {'on' if predictor.guard is not None else 'off'}, "
        f"runtime {predictor.runtime}"
    )
    print(f"{'single image':34s} {'p50 ms':>8s} {'p95 ms':>8s}")
    for name, label in (
        ("predictor", "Predictor.predict(path)"),
        ("bare", f"bare {predictor.runtime} forward"),
        ("bare_keras", "bare Keras tf.function"),
        ("naive", "model.predict per call"),
    ):
        print(f"{label:34s} {single[name]['p50_ms']:8.2f} {single[name]['p95_ms']:8.2f}")
    print(f"\n{'folder, batch ' + str(args.batch_size):34s} {'img/s':>8s}")
    print(f"{'Predictor.predict_batch(paths)':34s} {batch['predictor_images_per_s']:8.1f}")
    print(f"{'bare batched ' + predictor.runtime + ' forward':34s} {batch['bare_images_per_s']:8.1f}")
    print(
        f"\nPredictor p50 / bare p50: {ratios['predictor_p50_over_bare_p50']:.2f}x;  "
        f"naive p50 / Predictor p50: {ratios['naive_p50_over_predictor_p50']:.2f}x;  "
        f"batch throughput Predictor / bare: {ratios['batch_predictor_over_bare_throughput']:.2f}"
    )
    if args.out:
        write_json(args.out, figures)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
