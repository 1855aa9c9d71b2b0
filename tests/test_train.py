"""Training runs: the run folder, transfer learning in two phases, kill -9 and resume, MirroredStrategy."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from allstudy.data.prepare import prepare  # noqa: E402
from allstudy.data.synthetic import generate_dataset  # noqa: E402
from allstudy.models.profiles import TrainConfig
from allstudy.training.fit import _best_epoch, train  # noqa: E402

pytestmark = pytest.mark.slow  # trains or builds Keras models: the full tier (make test), not make test-fast


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = generate_dataset(tmp_path_factory.mktemp("synth") / "fields", n_per_class=24, seed=11)
    return prepare(root, tmp_path_factory.mktemp("data"), seed=0, fractions=(0.6, 0.2, 0.2))


def test_a_run_folder_has_everything(prepared, tmp_path):
    result = train(
        TrainConfig("lenet", input_size=48, epochs=3, batch_size=16), prepared, tmp_path / "run", progress=False
    )
    for name in ("model.keras", "params.json", "history.csv", "curves.png", "predictions.csv", "metrics.json"):
        assert (tmp_path / "run" / name).exists(), name
    assert not (tmp_path / "run" / "training").exists()  # checkpoints are removed once the run is complete
    params = json.loads((tmp_path / "run" / "params.json").read_text())
    assert params["config"]["arch"] == "lenet" and params["data_hash"] == prepared.info["data_hash"]
    assert params["packages"]["keras"] and params["code_version"]["source_sha256"]
    assert params["epochs_run"] == 3 and list(result.history["epoch"]) == [1, 2, 3]
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert set(predictions["split"]) == {"val", "test"}
    assert (predictions.filter(like="p_").sum(axis=1) - 1).abs().max() < 1e-4
    # the model kept is the epoch of best validation accuracy, and the predictions are that model's
    best = result.history[result.history["best"]]
    assert len(best) == 1 and best["val_accuracy"].iloc[0] == result.history["val_accuracy"].max()
    val = predictions[predictions["split"] == "val"]
    assert (val["class"] == val["label"]).mean() == pytest.approx(best["val_accuracy"].iloc[0], abs=1e-6)
    again = train(
        TrainConfig("lenet", input_size=48, epochs=3, batch_size=16), prepared, tmp_path / "run", progress=False
    )
    assert again.skipped


def test_best_epoch_is_chosen_by_validation_accuracy_then_earliest():
    rows = [
        {"epoch": 1, "val_accuracy": 0.5, "val_loss": 1.0},
        {"epoch": 2, "val_accuracy": 0.8, "val_loss": 0.9},
        {"epoch": 3, "val_accuracy": 0.8, "val_loss": 0.5},
        {"epoch": 4, "val_accuracy": 0.3, "val_loss": 2.0},
    ]
    assert _best_epoch(rows) == 2
    assert _best_epoch([{"epoch": 1, "val_loss": 2.0}, {"epoch": 2, "val_loss": 1.0}]) == 2
    assert _best_epoch([]) == 0


@pytest.fixture()
def tiny_mobilenet_weights(tmp_path):
    """A weights file for MobileNet alpha 0.25 at 64 px (random: what matters is the transfer path)."""
    import keras

    backbone = keras.applications.MobileNet(
        alpha=0.25, include_top=False, weights=None, input_shape=(64, 64, 3), pooling="avg"
    )
    weights = tmp_path / "mobilenet_tiny.weights.h5"
    backbone.save_weights(weights)
    return weights


def test_transfer_learning_trains_the_head_on_cached_features_then_fine_tunes(
    prepared, tmp_path, tiny_mobilenet_weights
):
    import keras

    weights = tiny_mobilenet_weights
    config = TrainConfig(
        "mobilenet", weights=str(weights), alpha=0.25, input_size=64, head_epochs=3, epochs=2, batch_size=16
    )
    result = train(config, prepared, tmp_path / "run", progress=False)
    assert list(result.history["stage"]) == ["head"] * 3 + ["finetune"] * 2
    model = keras.saving.load_model(tmp_path / "run" / "model.keras", safe_mode=True)
    batch_norms = [
        layer for layer in model.get_layer("backbone").layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert batch_norms and not any(layer.trainable for layer in batch_norms)
    assert result.params["weights_sha256"]


def test_transfer_heads_train_on_every_view_and_the_saved_model_averages_them(
    prepared, tmp_path, tiny_mobilenet_weights
):
    import keras

    config = TrainConfig(
        "mobilenet",
        weights=str(tiny_mobilenet_weights),
        alpha=0.25,
        input_size=64,
        head_epochs=2,
        epochs=0,
        batch_size=16,
        tta_views=8,
        lr_schedule="cosine",
    )
    result = train(config, prepared, tmp_path / "run", progress=False)
    assert list(result.history["stage"]) == ["head"] * 2
    # predictions come from cached features; the saved 8-view model computes the same
    assert result.params["tta_views"] == 8 and result.params["prediction_check_max_abs_diff"] <= 1e-4
    from allstudy.models.convert import litert_available

    # the features came from LiteRT on this CPU, and the Keras model computes the same from the images
    assert result.params["feature_runtime"] == ("litert" if litert_available() else "keras")
    model = keras.saving.load_model(tmp_path / "run" / "model.keras", safe_mode=True)
    assert model.name == "mobilenet_tta8"
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    test = predictions[predictions["split"] == "test"]
    from allstudy.training.pipeline import load_images

    images = load_images(prepared.root, test["path"].tolist()[:5], 64).astype("float32")
    expected = test[[c for c in test if c.startswith("p_")]].to_numpy()[:5]
    assert abs(model.predict(images, verbose=0) - expected).max() < 1e-4


def test_the_guard_of_a_transfer_run_reads_its_cached_upright_training_features(
    prepared, tmp_path, tiny_mobilenet_weights
):
    import keras

    from allstudy.serving import ood
    from allstudy.study.runner import cached_train_embedding
    from allstudy.training.pipeline import load_images

    config = TrainConfig(
        "mobilenet",
        weights=str(tiny_mobilenet_weights),
        alpha=0.25,
        input_size=64,
        head_epochs=1,
        epochs=0,
        batch_size=16,
        tta_views=8,
    )
    result = train(config, prepared, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    params = dict(result.params)
    cached = cached_train_embedding(params, prepared, tmp_path / "cache")
    model = keras.saving.load_model(tmp_path / "run" / "model.keras", safe_mode=True)
    paths = prepared.split.loc[prepared.split["split"] == "train", "path"].tolist()
    expected = ood.embedder_for(model)(load_images(prepared.root, paths, 64))
    assert cached.shape == expected.shape
    np.testing.assert_allclose(cached, expected, rtol=1e-3, atol=1e-3 * float(np.abs(expected).max()))
    assert (
        cached_train_embedding({**params, "config": {**params["config"], "epochs": 2}}, prepared, tmp_path / "cache")
        is None
    )  # a fine-tuned backbone: the features are stale
    assert cached_train_embedding(params, prepared, tmp_path / "elsewhere") is None


def test_bulk_features_use_keras_when_litert_disagrees(tiny_mobilenet_weights, monkeypatch):
    import allstudy.models.convert as convert
    from allstudy.models.registry import build_model

    features = build_model("mobilenet", 4, 64, str(tiny_mobilenet_weights), alpha=0.25).features
    images = np.random.default_rng(0).uniform(0, 255, (5, 64, 64, 3)).astype(np.float32)
    expected = features.predict(images, verbose=0)
    if convert.litert_available():
        predict, runtime = convert.bulk_predictor(features, images[:2], batch_size=2)
        assert runtime == "litert"
        np.testing.assert_allclose(predict(images), expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
    monkeypatch.setattr(convert, "MAX_BULK_DIFF", -1.0)  # nothing can agree: Keras it is
    predict, runtime = convert.bulk_predictor(features, images[:2], batch_size=2)
    assert runtime == "keras"
    # the same Keras model in batches of 2, not 32: equal to float32 rounding, which on some CPUs (AMD EPYC) moves
    # features that are ~1e-16 of the largest by 1e-4 of themselves
    np.testing.assert_allclose(predict(images), expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_unknown_schedule_and_view_count_are_clear_errors(prepared, tmp_path):
    with pytest.raises(ValueError, match="schedule"):
        train(
            TrainConfig("lenet", input_size=48, epochs=1, lr_schedule="step"), prepared, tmp_path / "a", progress=False
        )
    with pytest.raises(ValueError, match="tta_views"):
        train(TrainConfig("lenet", input_size=48, epochs=1, tta_views=2), prepared, tmp_path / "b", progress=False)


def _train_command(out: Path, epochs: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "allstudy",
        "train",
        "--arch",
        "lenet",
        "--profile",
        "quick",
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        "--input-size",
        "48",
    ]


def test_kill_9_at_random_moments_then_the_same_command_resumes(tmp_path):
    out, epochs = tmp_path / "out", 40
    command = _train_command(out, epochs)
    state = out / "runs" / "lenet" / "training" / "train" / "state.json"
    rng = random.Random(7)
    resumed_from = []
    for _attempt in range(3):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # wait until this attempt has trained at least one more epoch, then kill at a random moment
        before = json.loads(state.read_text())["epoch"] if state.exists() else 0
        deadline = time.time() + 240
        while time.time() < deadline and process.poll() is None:
            if state.exists() and json.loads(state.read_text())["epoch"] > before:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        assert process.poll() is None, "training finished before it could be killed; raise the epochs"
        os.kill(process.pid, signal.SIGKILL)
        output = process.communicate()[0]
        if "resuming after epoch" in output:
            resumed_from.append(output)
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert "resuming after epoch" in finished.stdout
    assert len(resumed_from) >= 1  # later attempts resumed too
    history = pd.read_csv(out / "runs" / "lenet" / "history.csv")
    assert list(history["epoch"]) == list(range(1, epochs + 1))  # every epoch exactly once
    import keras

    keras.saving.load_model(out / "runs" / "lenet" / "model.keras", safe_mode=True)
    assert not list((out / "runs" / "lenet").glob("**/*.tmp*"))


def test_mirrored_strategy_over_two_logical_cpus(prepared, tmp_path):
    script = textwrap.dedent(f"""
        import json, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from allstudy.data.prepare import prepare
        from allstudy.training.fit import train
        from allstudy.models.profiles import TrainConfig
        data = prepare({str(prepared.root)!r}, {str(tmp_path / "data")!r}, seed=0, fractions=(0.6, 0.2, 0.2))
        result = train(TrainConfig("lenet", input_size=48, epochs=2, batch_size=8, strategy="mirrored"), data,
                       {str(tmp_path / "run")!r}, progress=False)
        print(json.dumps({{"replicas": result.params["replicas"], "epochs": result.params["epochs_run"]}}))
    """)
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    figures = json.loads(finished.stdout.strip().splitlines()[-1])
    assert figures == {"replicas": 2, "epochs": 2}


def test_unknown_strategy_is_a_clear_error(prepared, tmp_path):
    with pytest.raises(ValueError, match="unknown strategy"):
        train(
            TrainConfig("lenet", input_size=48, epochs=1, strategy="cluster"),
            prepared,
            tmp_path / "run",
            progress=False,
        )


def _tiny_ema_model():
    import keras

    from allstudy.training.fit import _optimizer

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3, activation="softmax")]
    )
    model.compile(
        optimizer=_optimizer("adam", 0.05, 0.9, ema_momentum=0.8), loss="categorical_crossentropy", metrics=["accuracy"]
    )
    return model


def test_a_weight_average_is_what_validation_sees_what_is_kept_and_what_a_resumed_fit_continues(tmp_path):
    import keras
    import tensorflow as tf

    from allstudy.training.fit import _use_average, fit_resumable

    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype("float32")
    y = keras.utils.to_categorical((x[:, 0] > 0).astype(int) + (x[:, 1] > 1).astype(int), 3)
    train_data = tf.data.Dataset.from_tensor_slices((x[:64], y[:64])).batch(16)
    val_data = tf.data.Dataset.from_tensor_slices((x[64:], y[64:])).batch(16)

    whole, rows = fit_resumable(
        _tiny_ema_model(), train_data, val_data, 4, tmp_path / "whole", "train", verbose=0, restore_best=False
    )
    # validation measured the average, and the model kept is the average, not the last raw weights
    assert whole.evaluate(val_data, verbose=0, return_dict=True)["accuracy"] == pytest.approx(rows[-1]["val_accuracy"])
    raw = keras.saving.load_model(tmp_path / "whole" / "epoch-0004.keras", safe_mode=True)
    assert not all(np.allclose(a, b) for a, b in zip(raw.get_weights(), whole.get_weights(), strict=True))
    averaged = _use_average(raw).get_weights()
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(averaged, whole.get_weights(), strict=True))

    # cut off after epoch 2, then the same call resumes: the average goes on as if never interrupted
    fit_resumable(_tiny_ema_model(), train_data, val_data, 2, tmp_path / "cut", "train", verbose=0, restore_best=False)
    resumed, resumed_rows = fit_resumable(
        _tiny_ema_model(), train_data, val_data, 4, tmp_path / "cut", "train", verbose=0, restore_best=False
    )
    assert [r["epoch"] for r in resumed_rows] == [1, 2, 3, 4]
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(resumed.get_weights(), whole.get_weights(), strict=True))


def test_a_weight_average_momentum_outside_0_1_is_a_clear_error():
    from allstudy.training.fit import _optimizer

    with pytest.raises(ValueError, match="ema_momentum"):
        _optimizer("adam", 1e-3, 0.9, ema_momentum=1.0)


def test_a_run_with_a_weight_average_keeps_the_average_its_validation_measured(prepared, tmp_path, monkeypatch):
    import allstudy.training.fit

    made = []
    original = allstudy.training.fit._optimizer

    def recording(*args, **kwargs):
        optimizer = original(*args, **kwargs)
        made.append(optimizer)
        return optimizer

    monkeypatch.setattr(allstudy.training.fit, "_optimizer", recording)
    result = train(
        TrainConfig("lenet", input_size=48, epochs=4, batch_size=16, ema_momentum=0.5),
        prepared,
        tmp_path / "run",
        progress=False,
    )
    assert [o.use_ema for o in made] == [True] and result.params["config"]["ema_momentum"] == 0.5
    best = result.history[result.history["best"]]["val_accuracy"].iloc[0]
    assert result.metrics["accuracy"]["val"] == pytest.approx(best, abs=1e-6)


def test_a_run_on_the_published_image_level_split_is_a_run_of_its_own(prepared, tmp_path):
    from allstudy.data.prepare import with_image_level_split
    from allstudy.data.split import leaked_fields

    leaky = with_image_level_split(prepared, seed=0, fractions=(0.6, 0.2, 0.2))
    assert not leaky.split.set_index("path")["split"].equals(prepared.split.set_index("path")["split"])
    assert leaky.info["leaked_fields"] == leaked_fields(leaky.split, prepared.split.set_index("path")["group"])
    assert sum(leaky.info["leaked_fields"].values()) > 0  # the synthetic default has re-captures: some cross
    config = TrainConfig("sequential", input_size=32, epochs=1, batch_size=16)
    train(config, prepared, tmp_path / "run", progress=False)
    result = train(config, leaky, tmp_path / "run", progress=False)
    assert not result.skipped  # the same data, another split: never the grouped split's run
    params = json.loads((tmp_path / "run" / "params.json").read_text())
    assert params["split_protocol"] == "image-level" and params["leaked_fields"] == leaky.info["leaked_fields"]
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    expected = leaky.split[leaky.split["split"] != "train"]
    assert sorted(zip(predictions["split"], predictions["path"], strict=True)) == sorted(
        zip(expected["split"], expected["path"], strict=True)
    )


def test_cached_features_are_per_field_so_another_split_of_the_data_reuses_them(
    prepared, tmp_path, tiny_mobilenet_weights
):
    from allstudy.data.prepare import with_image_level_split

    config = TrainConfig(
        "mobilenet",
        weights=str(tiny_mobilenet_weights),
        alpha=0.25,
        input_size=64,
        head_epochs=1,
        epochs=0,
        batch_size=16,
        tta_views=4,
    )
    grouped = train(config, prepared, tmp_path / "grouped", cache_dir=tmp_path / "cache", progress=False)
    files = sorted((tmp_path / "cache").glob("features-*/features-view*.npy"))
    assert [f.name for f in files] == [f"features-view{k}.npy" for k in range(4)]
    assert all(len(np.load(f)) == len(prepared.split) for f in files)
    stamps = [f.stat().st_mtime_ns for f in files]
    leaky = train(
        config,
        with_image_level_split(prepared, 0, (0.6, 0.2, 0.2)),
        tmp_path / "leaky",
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    assert leaky.params["feature_runtime"] == "cached"  # every view read from the grouped run's files
    assert [f.stat().st_mtime_ns for f in files] == stamps
    # a field's probabilities depend on the head, not on where the field's features were read from
    for run in (grouped, leaky):
        assert run.params["prediction_check_max_abs_diff"] <= 1e-4
