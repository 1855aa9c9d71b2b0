"""Training runs: resumable fits and transfer learning in two phases, into a run folder
(:class:`allstudy.training.run_folder.RunFolder`). While training, each stage keeps
``<stage>/state.json`` and the checkpoint it names, both written atomically after every epoch;
``kill -9`` at any moment, then the same command, resumes from the last finished epoch.

Transfer models (pretrained backbone): phase 1 trains the head on backbone features computed once
per split and cached; phase 2 fine-tunes the top of the backbone at a low learning rate, with
BatchNorm in inference mode (the backbone is called with ``training=False``). Models from scratch
train end to end.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm import tqdm

from allstudy.core.atomic import atomic_path, cached_array, read_json, write_json
from allstudy.core.hashing import sha256_file, short_hash
from allstudy.core.provenance import code_version, package_versions
from allstudy.data.prepare import PreparedData
from allstudy.data.split import SPLITS
from allstudy.models.convert import bulk_predictor
from allstudy.models.layers import load_model, with_tta
from allstudy.models.profiles import STRATEGIES, TrainConfig
from allstudy.models.registry import Built, adapt_standardise, build_model, copy_weights, get_architecture, unfreeze_top
from allstudy.models.views import DIHEDRAL_VIEWS, dihedral
from allstudy.training.pipeline import class_weights, load_images, make_dataset
from allstudy.training.run_folder import RunFolder


@dataclass
class RunResult:
    """A finished run: where it is and its headline figures."""

    run_dir: Path
    params: dict
    history: pd.DataFrame
    skipped: bool = False
    metrics: dict = field(default_factory=dict)


def get_strategy(name: str = "default"):
    """A tf.distribute strategy by name: default, mirrored (GPUs, else all logical CPUs), multiworker, tpu."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":  # reads TF_CONFIG; one worker without it
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")


def _use_mixed_precision_if_gpu() -> bool:
    if tf.config.list_physical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
        return True
    return False


def _optimizer(
    name: str,
    learning_rate: float,
    momentum: float,
    schedule: str = "constant",
    steps: int = 0,
    ema_momentum: float = 0.0,
):
    if not 0.0 <= ema_momentum < 1.0:
        raise ValueError(f"ema_momentum must be in [0, 1), not {ema_momentum}; 0 turns the weight average off")
    ema = {"use_ema": True, "ema_momentum": ema_momentum} if ema_momentum else {}
    if schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, steps))
    elif schedule != "constant":
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose constant or cosine")
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, **ema)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum, **ema)
    raise ValueError(f"unknown optimizer {name!r}; choose adam or sgd")


class _EpochCheckpoint:
    """Keras callback: after each epoch, save the model (optimizer included) and then the state, atomically."""

    def __new__(cls, *args, **kwargs):
        class Callback(keras.callbacks.Callback):
            def __init__(self, stage_dir: Path, rows: list[dict], stage: str):
                super().__init__()
                self.stage_dir, self.rows, self.stage = stage_dir, rows, stage
                self.started = time.perf_counter()

            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                row = {
                    "stage": self.stage,
                    "epoch": epoch + 1,
                    **{k: float(v) for k, v in (logs or {}).items()},
                    "seconds": round(time.perf_counter() - self.started, 2),
                }
                self.rows.append(row)
                name = f"epoch-{epoch + 1:04d}.keras"
                with atomic_path(self.stage_dir / name) as tmp:
                    self.model.save(tmp)
                best = _best_epoch(self.rows)
                if best == epoch + 1:  # the best so far by validation accuracy: keep a copy
                    with atomic_path(self.stage_dir / "best.keras") as tmp:
                        shutil.copyfile(self.stage_dir / name, tmp)
                write_json(
                    self.stage_dir / "state.json",
                    {"epoch": epoch + 1, "checkpoint": name, "best_epoch": best, "history": self.rows},
                )
                for old in self.stage_dir.glob("epoch-*.keras"):
                    if old.name != name:
                        old.unlink(missing_ok=True)

        return Callback(*args, **kwargs)


def _best_epoch(rows: list[dict]) -> int:
    """The epoch with the highest validation accuracy (the earliest among ties; by loss if no accuracy)."""
    if rows and "val_accuracy" in rows[0]:
        return max(rows, key=lambda r: (r["val_accuracy"], -r["epoch"]))["epoch"]
    if rows and "val_loss" in rows[0]:
        return min(rows, key=lambda r: (r["val_loss"], r["epoch"]))["epoch"]
    return rows[-1]["epoch"] if rows else 0


def _use_average(model):
    """``model`` with its optimizer's weight average (if it keeps one) as its trainable weights."""
    if getattr(model.optimizer, "use_ema", False) and model.optimizer.built:
        model.optimizer.finalize_variable_values(model.trainable_variables)
    return model


def fit_resumable(
    model,
    train_data,
    val_data,
    epochs: int,
    stage_dir: Path,
    stage: str,
    class_weight: dict | None = None,
    verbose: int = 2,
    strategy=None,
    restore_best: bool = True,
):
    """Fit ``model`` for ``epochs`` epochs, resuming from ``stage_dir`` when an earlier fit was cut off.

    Returns ``(trained_model, history_rows)``; the trained model is ``model`` itself or, on resume,
    the checkpoint loaded with its optimizer state. With ``restore_best`` it ends with the weights
    of the epoch of best validation accuracy (model selection on the validation split only).
    """
    stage_dir.mkdir(parents=True, exist_ok=True)
    state_path = stage_dir / "state.json"
    rows: list[dict] = []
    initial_epoch = 0
    if state_path.exists():
        state = read_json(state_path)
        checkpoint = stage_dir / state["checkpoint"]
        if checkpoint.exists():
            with strategy.scope() if strategy else contextlib.nullcontext():
                model = load_model(checkpoint, compile=True)
            rows, initial_epoch = state["history"], int(state["epoch"])
            print(f"{stage}: resuming after epoch {initial_epoch} of {epochs} ({checkpoint.name})")
    callbacks = [_EpochCheckpoint(stage_dir, rows, stage)]
    if getattr(model.optimizer, "use_ema", False):
        # A weight average: validation (hence the best epoch) measures the average; checkpoints keep the raw
        # weights with the average in the optimizer's state, so a resumed fit goes on exactly where it was.
        callbacks.insert(0, keras.callbacks.SwapEMAWeights())
    if initial_epoch < epochs:
        model.fit(
            train_data,
            validation_data=val_data,
            epochs=epochs,
            initial_epoch=initial_epoch,
            class_weight=class_weight,
            verbose=verbose,
            shuffle=False,  # the tf.data pipeline shuffles
            callbacks=callbacks,
        )
    _use_average(model)
    best = _best_epoch(rows)
    if restore_best and rows and best != rows[-1]["epoch"] and (stage_dir / "best.keras").exists():
        print(f"{stage}: keeping the weights of epoch {best} (best validation accuracy)")
        copy_weights(_use_average(load_model(stage_dir / "best.keras", compile=True)), model)
    for row in rows:
        row["best"] = row["epoch"] == best
    return model, rows


def _weights_sha256(weights: str | None) -> str | None:
    """The sha256 of a weights file; None for no file (from scratch, or Keras' ImageNet download)."""
    if not weights or weights == "imagenet" or not Path(weights).is_file():
        return None
    return sha256_file(weights)


def features_dir(cache_dir, config: dict, weights_key: str | None, size: int, data_hash: str) -> Path | None:
    """Where a backbone's features of this data are cached for reuse by other runs (None: no cache_dir).

    ``config`` is the run's :class:`TrainConfig` as a dict (params.json's ``config``); ``weights_key``
    the weights file's sha256, or ``"imagenet"`` for Keras' download. Files: ``features-view<k>.npy``, one row
    per field of the data in path order (:func:`feature_rows`), whatever the split.
    """
    if cache_dir is None:
        return None
    key = "|".join(map(str, [config["arch"], weights_key, config["alpha"], size, config["input_mode"], data_hash]))
    return Path(cache_dir) / f"features-{config['arch']}-{short_hash(key)}"


def feature_rows(split: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each split's fields (in the split table's order) as row numbers of the feature files, which hold every
    field of the data in path order: any split of the same data reads the same files."""
    paths = np.sort(split["path"].to_numpy())
    return {s: np.searchsorted(paths, split.loc[split["split"] == s, "path"].to_numpy()) for s in SPLITS}


def split_hash(split: pd.DataFrame) -> str:
    """A fingerprint of which field is in which split (part of a run's identity)."""
    rows = sorted(zip(split["path"], split["split"], strict=True))
    return short_hash("\n".join(f"{p}\t{s}" for p, s in rows))


class _FeatureExtractor:
    """The frozen backbone's features of images: LiteRT on a CPU (checked against Keras on the first
    images it sees, :func:`allstudy.models.convert.bulk_predictor`), else Keras; set up only when needed."""

    def __init__(self, built: Built, batch_size: int):
        self.built, self.batch_size, self._predict, self.runtime = built, batch_size, None, None

    def __call__(self, images: np.ndarray, path: Path, view: int = 0) -> np.ndarray:
        """Features of one dihedral view of the images, computed once and cached in ``path``."""

        def compute():
            if self._predict is None:
                self._predict, self.runtime = bulk_predictor(self.built.features, images[:8], self.batch_size)
            return self._predict(dihedral(images, view))

        features = cached_array(path, compute)
        if len(features) != len(images):  # not these fields (a cache from other code): compute them again
            path.unlink()
            features = cached_array(path, compute)
        return features

    def by_split(
        self, images: dict[str, np.ndarray], split: pd.DataFrame, views, folder: Path, progress: bool
    ) -> dict[str, np.ndarray]:
        """Each split's features of every view, shape (views, fields, features), from per-view files that hold
        every field of the data in path order (:func:`feature_rows`)."""
        rows = feature_rows(split)
        every = np.empty((len(split), *next(iter(images.values())).shape[1:]), np.uint8)
        for name, part in images.items():
            every[rows[name]] = part
        per_view = [
            self(every, folder / f"features-view{k}.npy", k)
            for k in tqdm(views, desc="features", unit="view", disable=not progress)
        ]
        return {name: np.stack([features[rows[name]] for features in per_view]) for name in images}


def train(
    config: TrainConfig,
    data: PreparedData,
    run_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    weights_dir: str | os.PathLike | None = None,
) -> RunResult:
    """Train one architecture on a prepared dataset into ``run_dir``; reuse a finished run with the same parameters."""
    run = RunFolder(Path(run_dir))
    identity = {
        "config": asdict(config),
        "data_hash": data.info["data_hash"],
        "split_hash": split_hash(data.split),
        "code_source": code_version()["training_source_sha256"],
    }
    if run.params_file.exists() and run.model_file.exists():
        params = run.raw_params()
        if {k: params.get(k) for k in identity} == identity:
            print(f"{config.arch}: unchanged since its last run, reused {run.path}")
            return RunResult(run.path, params, run.history(), skipped=True, metrics=run.metrics())
    work = run.work_dir
    stamp_path = work / "identity.json"
    if stamp_path.exists() and read_json(stamp_path) != identity:
        shutil.rmtree(work)  # checkpoints of other parameters or data: start over
    work.mkdir(parents=True, exist_ok=True)
    write_json(stamp_path, identity)

    start = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    mixed = _use_mixed_precision_if_gpu()
    strategy = get_strategy(config.strategy)
    arch = get_architecture(config.arch)
    classes = sorted(data.split["class"].unique())
    index = {c: i for i, c in enumerate(classes)}
    size = int(config.input_size or arch.input_size)
    parts = {s: data.split[data.split["split"] == s].reset_index(drop=True) for s in ("train", "val", "test")}
    images = {
        s: load_images(data.root, part["path"].tolist(), size, cache_dir, progress=progress, mode=config.input_mode)
        for s, part in parts.items()
    }
    labels = {s: part["class"].map(index).to_numpy() for s, part in parts.items()}
    onehot = {s: keras.utils.to_categorical(y, len(classes)) for s, y in labels.items()}
    weights = class_weights(labels["train"], len(classes)) if config.class_weighting else None
    batch = config.batch_size * strategy.num_replicas_in_sync
    verbose = 2 if progress else 0
    views = DIHEDRAL_VIEWS.get(config.tta_views)
    if views is None:
        raise ValueError(f"tta_views must be 1, 4 or 8, not {config.tta_views}")

    with strategy.scope():
        built = build_model(config.arch, len(classes), size, config.weights, config.alpha, config.dropout, weights_dir)
    rows: list[dict] = []

    def fit_on_images(learning_rate: float, stage: str) -> list[dict]:
        """Compile the whole model and fit it on (augmented) images, resumably; keep the weights in ``built``."""
        steps = config.epochs * -(-len(images["train"]) // batch)
        with strategy.scope():
            built.model.compile(
                optimizer=_optimizer(
                    config.optimizer, learning_rate, config.momentum, config.lr_schedule, steps, config.ema_momentum
                ),
                loss="categorical_crossentropy",
                metrics=["accuracy"],
            )
        trained, stage_rows = fit_resumable(
            built.model,
            make_dataset(
                images["train"], onehot["train"], batch, True, config.augment, config.seed, config.colour_jitter
            ),
            make_dataset(images["val"], onehot["val"], batch),
            config.epochs,
            work / stage,
            stage,
            weights,
            verbose,
            strategy,
            config.restore_best,
        )
        copy_weights(trained, built.model)
        return stage_rows

    features, feature_runtime, unscaled = None, None, None
    if built.weights is not None and built.head is not None:  # transfer learning, two phases
        # Phase 1 on cached features of every dihedral view: the views are the augmentation.
        where = (
            features_dir(
                cache_dir, asdict(config), _weights_sha256(built.weights) or built.weights, size, data.info["data_hash"]
            )
            or work
        )
        extract = _FeatureExtractor(built, batch)
        features = extract.by_split(images, data.split, views, where, progress)
        feature_runtime = extract.runtime or "cached"  # litert, keras, or all read from the cache
        head_x = {s: f.reshape(-1, f.shape[-1]) for s, f in features.items()}
        head_y = {s: np.tile(y, (len(views), 1)) for s, y in onehot.items()}
        steps = config.head_epochs * -(-len(head_x["train"]) // batch)
        with strategy.scope():
            unscaled = adapt_standardise(built.head.get_layer("standardise"), head_x["train"])
            built.head.compile(
                optimizer=_optimizer(
                    config.optimizer, config.learning_rate, config.momentum, config.lr_schedule, steps
                ),
                loss="categorical_crossentropy",
                metrics=["accuracy"],
            )
        head_data = make_dataset(head_x["train"], head_y["train"], batch, shuffle=True, seed=config.seed)
        head_val = make_dataset(head_x["val"], head_y["val"], batch)
        trained, head_rows = fit_resumable(
            built.head,
            head_data,
            head_val,
            config.head_epochs,
            work / "head",
            "head",
            weights,
            verbose,
            strategy,
            config.restore_best,
        )
        copy_weights(trained, built.head)
        rows += head_rows
        if config.epochs > 0:
            features = None  # the backbone changes: features no longer describe it
            with strategy.scope():
                unfreeze_top(
                    built.backbone,
                    config.fine_tune_layers if config.fine_tune_layers is not None else arch.fine_tune_layers,
                )
            rows += fit_on_images(config.fine_tune_learning_rate, "finetune")
    else:
        rows += fit_on_images(config.learning_rate, "train")
    train_seconds = time.perf_counter() - start  # this process only; epoch_seconds_total spans resumes

    history = pd.DataFrame(rows)
    deployable = with_tta(_deployable(built.model), config.tta_views)
    if features is not None:  # the head on cached features computes what the deployable model does, cheaply
        probabilities = {
            s: np.mean([built.head.predict(f, batch_size=batch, verbose=0) for f in features[s]], axis=0)
            for s in ("val", "test")
        }
        check = _consistency(deployable, images["test"][:8], probabilities["test"][:8])
    else:
        probabilities = {
            s: deployable.predict(make_dataset(images[s], None, batch), verbose=0) for s in ("val", "test")
        }
        check = 0.0
    predictions = _prediction_frame(parts, probabilities, classes)
    metrics = {
        s: float(
            (predictions[predictions["split"] == s]["label"] == predictions[predictions["split"] == s]["class"]).mean()
        )
        for s in ("val", "test")
    }
    run.write_results(predictions, {"accuracy": metrics}, history, deployable, plot_curves(history, config.arch))
    params = {
        **identity,
        "arch": config.arch,
        "classes": classes,
        "input_size": size,
        "preprocessing": arch.preprocessing,
        "weights_file": built.weights,
        "weights_sha256": _weights_sha256(built.weights),
        "params": int(built.model.count_params()),
        "train_seconds": round(train_seconds, 1),
        "epoch_seconds_total": round(float(history["seconds"].sum()), 1) if len(history) else 0.0,
        "epochs_run": len(history),
        "tta_views": config.tta_views,
        "prediction_check_max_abs_diff": check,
        "feature_runtime": feature_runtime,
        "features_left_unscaled": unscaled,
        "split_protocol": data.info.get("split", {}).get("protocol", "grouped"),
        "leaked_fields": data.info.get("leaked_fields", {"val": 0, "test": 0}),
        "mixed_precision": mixed,
        "replicas": strategy.num_replicas_in_sync,
        "code_version": code_version(),
        "packages": package_versions(),
        "platform": platform.platform(),
        "complete": True,
    }
    run.write_params(params)
    shutil.rmtree(work, ignore_errors=True)
    return RunResult(run.path, params, history, metrics={"accuracy": metrics})


def _deployable(model):
    """An uncompiled copy with the same weights: what a predictor loads carries no optimizer state."""
    copy = keras.models.clone_model(model)
    copy_weights(model, copy)
    return copy


def _consistency(model, images: np.ndarray, expected: np.ndarray, tolerance: float = 1e-4) -> float:
    """Max |Δp| between the deployable model on images and the probabilities computed from cached features."""
    got = model.predict(images.astype(np.float32), verbose=0)
    difference = float(np.abs(got - expected).max()) if len(images) else 0.0
    if difference > tolerance:
        raise RuntimeError(
            f"the saved model and its cached features disagree (max |dp| {difference:.2g}); "
            "delete the run's training/ folder and train again"
        )
    return difference


def _prediction_frame(parts: dict, probabilities: dict, classes: list[str]) -> pd.DataFrame:
    frames = []
    for split in ("val", "test"):
        frame = parts[split][["path", "class"]].copy()
        frame.insert(0, "split", split)
        frame["label"] = [classes[i] for i in probabilities[split].argmax(axis=1)]
        for i, label in enumerate(classes):
            frame[f"p_{label}"] = probabilities[split][:, i]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def plot_curves(history: pd.DataFrame, title: str):
    """Accuracy and loss per epoch (train and validation), stages one after another."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    step = np.arange(1, len(history) + 1)
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        if metric in history:
            ax.plot(step, history[metric], label="train")
        if f"val_{metric}" in history:
            ax.plot(step, history[f"val_{metric}"], label="validation")
        if "stage" in history and history["stage"].nunique() > 1:
            for boundary in np.nonzero(history["stage"].to_numpy()[1:] != history["stage"].to_numpy()[:-1])[0]:
                ax.axvline(boundary + 1.5, color="grey", linestyle=":", linewidth=1)
        ax.set(xlabel="epoch", title=metric)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def deterministic_ops() -> bool:
    """Make TensorFlow's ops deterministic when no GPU is visible, so that a seeded run repeats to the bit.

    Without it the augmentation's random ops, run in parallel by tf.data, draw in a different order each
    time and two runs of the same seed differ by several points on the quick profile. On a CPU it costs
    little; on a GPU deterministic kernels are slower or missing, so GPU runs are left as they are.
    """
    if tf.config.list_physical_devices("GPU"):
        return False
    tf.config.experimental.enable_op_determinism()
    return True
