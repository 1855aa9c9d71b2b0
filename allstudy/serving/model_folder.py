"""A model folder (e.g. ``OUT/models/chosen/``): the only code that knows its files, and a typed view of ``model.json``.

Files (../shared/DESIGN.md): ``model.keras``; ``model.json`` (classes, input size and mode, temperature,
decision policy, metrics, provenance; written last, its presence marks a complete folder);
``MODEL_CARD.md`` and ``tradeoff.png``; optionally ``ood.json`` (the out-of-distribution guard, with
its stamp ``.ood.stamp.json``) and ``serving.tflite`` vouched for by ``serving.json``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from allstudy.core.atomic import atomic_path, read_json, write_json, write_text
from allstudy.data.classes import display_name, is_malignant
from allstudy.models.layers import load_model

#: What a model folder's ``model.json`` must hold for a Predictor to answer.
REQUIRED_KEYS = ("classes", "input_size", "input_mode", "temperature", "decision")
#: What to do about a missing or foreign model folder, in every message that finds one.
RUN_FIRST = "run `python -m allstudy run` first (it writes OUTDIR/models/chosen/), or pass --model a model folder"
INTENDED_USE = "research and teaching; not a diagnostic device"


@dataclass(frozen=True)
class ModelMeta:
    """A read-only, typed view of ``model.json``, with the defaults of folders written before a key existed."""

    raw: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.raw["classes"])

    @property
    def input_size(self) -> int:
        return int(self.raw["input_size"])

    @property
    def input_mode(self) -> str:
        return str(self.raw["input_mode"])

    @property
    def temperature(self) -> float:
        return float(self.raw["temperature"])

    @property
    def decision(self) -> dict[str, Any]:
        """The decision policy as :meth:`allstudy.evaluation.decision.DecisionPolicy.to_json` wrote it."""
        return dict(self.raw["decision"])

    @property
    def tta_views(self) -> int:
        return int(self.raw.get("tta_views", 1))

    @property
    def run(self) -> str | None:
        return self.raw.get("run")

    @property
    def arch(self) -> str | None:
        return self.raw.get("arch")

    @property
    def weights(self) -> str | None:
        return self.raw.get("weights")

    @property
    def display_names(self) -> dict[str, str]:
        names = self.raw.get("display_names", {})
        return {c: names.get(c, display_name(c)) for c in self.classes}

    @property
    def malignant(self) -> dict[str, bool]:
        flags = self.raw.get("malignant", {})
        return {c: bool(flags.get(c, is_malignant(c))) for c in self.classes}

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.raw.get("metrics", {}))

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.raw.get("provenance") or {})

    @property
    def data_hash(self) -> str | None:
        return self.provenance.get("data_hash")

    @property
    def data_root(self) -> str | None:
        return (self.provenance.get("data") or {}).get("root")

    @property
    def intended_use(self) -> str:
        return str(self.raw.get("intended_use", INTENDED_USE))


@dataclass(frozen=True)
class ModelFolder:
    """One model folder. Use it wherever a path is expected (it is ``os.PathLike``)."""

    path: Path

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def model_file(self) -> Path:
        return self.path / "model.keras"

    @property
    def meta_file(self) -> Path:
        return self.path / "model.json"

    @property
    def card_file(self) -> Path:
        return self.path / "MODEL_CARD.md"

    @property
    def tradeoff_file(self) -> Path:
        return self.path / "tradeoff.png"

    @property
    def guard_file(self) -> Path:
        return self.path / "ood.json"

    @property
    def guard_stamp_file(self) -> Path:
        return self.path / ".ood.stamp.json"

    @property
    def serving_file(self) -> Path:
        return self.path / "serving.tflite"

    @property
    def serving_record_file(self) -> Path:
        return self.path / "serving.json"

    def check_complete(self) -> None:
        """Raise FileNotFoundError, saying what to do, unless the folder has ``model.keras`` and ``model.json``."""
        if not self.path.is_dir():
            raise FileNotFoundError(f"model folder {self.path} does not exist; {RUN_FIRST}")
        for file in (self.model_file, self.meta_file):
            if not file.is_file():
                raise FileNotFoundError(
                    f"model folder {self.path} has no {file.name}; it is not a complete model folder: {RUN_FIRST}"
                )

    def meta(self) -> ModelMeta:
        """``model.json``, checked to hold :data:`REQUIRED_KEYS` (a ValueError naming the file otherwise)."""
        raw = read_json(self.meta_file)
        if not isinstance(raw, dict):
            raise ValueError(f"{self.meta_file} is not a model description (a JSON object); {RUN_FIRST}")
        missing = [k for k in REQUIRED_KEYS if k not in raw]
        if missing:
            raise ValueError(
                f"{self.meta_file} lacks {', '.join(missing)}: it was not written by "
                f"allstudy.serving.modelcard; {RUN_FIRST}"
            )
        return ModelMeta(raw)

    def load_model(self) -> Any:
        """The Keras model of ``model.keras`` (a ValueError naming the file when it cannot be loaded)."""
        try:
            return load_model(self.model_file)
        except Exception as err:
            raise ValueError(f"{self.model_file} cannot be loaded ({type(err).__name__}: {err}); {RUN_FIRST}") from None

    def write(self, model_file: str | os.PathLike, meta: dict[str, Any], card: str, tradeoff_figure: Any) -> None:
        """Fill the folder, each file atomically: a copy of ``model_file``, the trade-off figure, the card, and
        ``model.json`` last (its presence marks a complete folder)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.model_file) as tmp:
            shutil.copyfile(model_file, tmp)
        with atomic_path(self.tradeoff_file) as tmp:
            tradeoff_figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        write_text(self.card_file, card)
        write_json(self.meta_file, meta)
