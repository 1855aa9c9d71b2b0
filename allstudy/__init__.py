"""allstudy: a reproducible deep-learning study of Acute Lymphoblastic Leukemia detection.

The public API, importable from here (each name is loaded on first use, so that ``import allstudy``
and the data commands do not start TensorFlow):

>>> from allstudy import Predictor, prepare_data, run, train
"""

from __future__ import annotations

import importlib
import os as _os
from typing import TYPE_CHECKING, Any

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) is noise for the study's users.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from allstudy.core.version import __version__

#: Public name -> (module, attribute).
_API = {
    "scan": ("allstudy.data.prepare", "scan"),
    "prepare_data": ("allstudy.data.prepare", "prepare"),
    "generate_dataset": ("allstudy.data.synthetic", "generate_dataset"),
    "generate_cnmc_dataset": ("allstudy.data.synthetic_cnmc", "generate_cnmc_dataset"),
    "build_model": ("allstudy.models.registry", "build_model"),
    "load_model": ("allstudy.models.layers", "load_model"),
    "train_config": ("allstudy.models.profiles", "train_config"),
    "TrainConfig": ("allstudy.models.profiles", "TrainConfig"),
    "train": ("allstudy.training.fit", "train"),
    "evaluate_run": ("allstudy.evaluation.compare", "evaluate_run"),
    "DecisionPolicy": ("allstudy.evaluation.decision", "DecisionPolicy"),
    "Predictor": ("allstudy.serving.predictor", "Predictor"),
    "export_model": ("allstudy.serving.export", "export_model"),
    "launch": ("allstudy.serving.app", "launch"),
    "run": ("allstudy.study.runner", "run"),
    "train_architecture": ("allstudy.study.runner", "train_architecture"),
}
__all__ = [
    "DecisionPolicy",
    "Predictor",
    "TrainConfig",
    "__version__",
    "build_model",
    "evaluate_run",
    "export_model",
    "generate_cnmc_dataset",
    "generate_dataset",
    "launch",
    "load_model",
    "prepare_data",
    "run",
    "scan",
    "train",
    "train_architecture",
    "train_config",
]

if TYPE_CHECKING:  # for type checkers and editors; at run time each name is imported on first use
    from allstudy.data.prepare import prepare as prepare_data
    from allstudy.data.prepare import scan
    from allstudy.data.synthetic import generate_dataset
    from allstudy.data.synthetic_cnmc import generate_cnmc_dataset
    from allstudy.evaluation.compare import evaluate_run
    from allstudy.evaluation.decision import DecisionPolicy
    from allstudy.models.layers import load_model
    from allstudy.models.profiles import TrainConfig, train_config
    from allstudy.models.registry import build_model
    from allstudy.serving.app import launch
    from allstudy.serving.export import export_model
    from allstudy.serving.predictor import Predictor
    from allstudy.study.runner import run, train_architecture
    from allstudy.training.fit import train


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'allstudy' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
