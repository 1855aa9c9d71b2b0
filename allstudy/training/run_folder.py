"""A run folder, ``OUT/runs/<run>/``: the only code that knows its files, and a typed view of ``params.json``.

Files (../shared/DESIGN.md): ``model.keras``, ``params.json`` (every parameter, the data hash, code and
package versions; written last, its ``complete`` flag marks a finished run), ``history.csv``,
``curves.png``, ``predictions.csv``, ``metrics.json``; later ``evaluation.json`` (the cached
evaluation) and ``cost.json`` (the cached inference cost). ``training/`` holds the checkpoints of a
run in progress.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from allstudy.core.atomic import atomic_path, read_json, write_csv, write_json

#: The folder of ``OUT`` that holds the run folders.
RUNS = "runs"


@dataclass(frozen=True)
class RunParams:
    """A read-only, typed view of a run's ``params.json``, with the defaults of runs written before a key existed."""

    raw: dict[str, Any]

    @property
    def arch(self) -> str:
        return str(self.raw["arch"])

    @property
    def classes(self) -> list[str]:
        return list(self.raw["classes"])

    @property
    def input_size(self) -> int:
        return int(self.raw["input_size"])

    @property
    def config(self) -> dict[str, Any]:
        """The run's :class:`allstudy.models.profiles.TrainConfig` as a dict."""
        return dict(self.raw["config"])

    @property
    def weights(self) -> str:
        """``imagenet``, a weights file, or ``none`` (from scratch)."""
        return self.raw["config"]["weights"] or "none"

    @property
    def input_mode(self) -> str:
        return str(self.raw["config"].get("input_mode", "original"))

    @property
    def tta_views(self) -> int:
        return int(self.raw["config"].get("tta_views", 1))

    @property
    def fine_tuned(self) -> bool:
        """Whether the backbone of a transfer model was trained too (its cached features no longer describe it)."""
        return int(self.raw["config"].get("epochs", 0)) > 0

    @property
    def split_protocol(self) -> str:
        return str(self.raw.get("split_protocol", "grouped"))

    @property
    def leaked_fields(self) -> dict[str, int]:
        return dict(self.raw.get("leaked_fields", {"val": 0, "test": 0}))

    @property
    def n_params(self) -> int:
        return int(self.raw.get("params", 0))

    @property
    def train_seconds(self) -> float:
        """Training time: this process's, or the epochs' total when the run was resumed across processes."""
        return max(self.raw.get("train_seconds") or 0.0, self.raw.get("epoch_seconds_total") or 0.0)

    @property
    def feature_runtime(self) -> str | None:
        """How a transfer run computed its backbone features (litert, keras, cached); None when trained on images."""
        return self.raw.get("feature_runtime")

    @property
    def weights_key(self) -> str | None:
        """What identifies the backbone's weights in the feature cache: the file's sha256, or its name."""
        return self.raw.get("weights_sha256") or self.raw.get("weights_file")

    @property
    def complete(self) -> bool:
        return bool(self.raw.get("complete"))


@dataclass(frozen=True)
class RunFolder:
    """One run's folder. Use it wherever a path is expected (it is ``os.PathLike``)."""

    path: Path

    @classmethod
    def of(cls, out: str | os.PathLike, name: str) -> RunFolder:
        """The folder of run ``name`` in the study folder ``out``."""
        return cls(Path(out) / RUNS / name)

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def model_file(self) -> Path:
        return self.path / "model.keras"

    @property
    def params_file(self) -> Path:
        return self.path / "params.json"

    @property
    def history_file(self) -> Path:
        return self.path / "history.csv"

    @property
    def predictions_file(self) -> Path:
        return self.path / "predictions.csv"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    @property
    def curves_file(self) -> Path:
        return self.path / "curves.png"

    @property
    def evaluation_file(self) -> Path:
        return self.path / "evaluation.json"

    @property
    def cost_file(self) -> Path:
        return self.path / "cost.json"

    @property
    def work_dir(self) -> Path:
        """Checkpoints and state of a run in progress (removed when it finishes)."""
        return self.path / "training"

    def params(self) -> RunParams:
        return RunParams(read_json(self.params_file))

    def raw_params(self) -> dict[str, Any]:
        """``params.json`` as written (for identity checks and provenance that copy it whole)."""
        return dict(read_json(self.params_file))

    def predictions(self) -> pd.DataFrame:
        return pd.read_csv(self.predictions_file, keep_default_na=False)

    def history(self) -> pd.DataFrame:
        return pd.read_csv(self.history_file)

    def metrics(self) -> dict[str, Any]:
        return dict(read_json(self.metrics_file))

    def is_finished(self) -> bool:
        """A complete ``params.json`` and the predictions: training ended and wrote everything."""
        return self.params_file.exists() and self.predictions_file.exists() and self.params().complete

    def write_results(
        self,
        predictions: pd.DataFrame,
        metrics: dict[str, Any],
        history: pd.DataFrame | None = None,
        model: Any = None,
        curves: Any = None,
    ) -> None:
        """The results of training, each file atomically: the saved Keras ``model``, ``history``, the
        ``curves`` figure, ``predictions`` and ``metrics``. :meth:`write_params` comes last."""
        self.path.mkdir(parents=True, exist_ok=True)
        if model is not None:
            with atomic_path(self.model_file) as tmp:
                model.save(tmp)
        if history is not None:
            write_csv(history, self.history_file)
        write_csv(predictions, self.predictions_file)
        if curves is not None:
            with atomic_path(self.curves_file) as tmp:
                curves.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        write_json(self.metrics_file, metrics)

    def write_params(self, params: dict[str, Any]) -> None:
        """``params.json``, last: with ``complete`` set, its presence marks a finished run."""
        write_json(self.params_file, params)


def finished_runs(out: str | os.PathLike, names: list[str] | None = None) -> dict[str, RunFolder]:
    """The finished runs under ``out/runs``, by name (only ``names``, in their order, when given)."""
    folders = {p.parent.name: RunFolder(p.parent) for p in sorted((Path(out) / RUNS).glob("*/params.json"))}
    found = {name: folder for name, folder in folders.items() if folder.is_finished()}
    return {n: found[n] for n in (names if names is not None else found) if n in found}
