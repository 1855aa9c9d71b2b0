"""A tiny model folder's pieces shared by test_predict, test_app and test_export: synthetic fields loaded at
32 px, model.json of a LeNet with a decision policy (allstudy.serving.modelcard), and broken image files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32
TEMPERATURE = 1.7


def field_paths(root: Path) -> list[Path]:
    return sorted(root.rglob("*.jpg"))


def load_fields(paths: list[Path]) -> np.ndarray:
    from allstudy.data.preprocess import load_image

    return np.stack([load_image(p, SIZE) for p in paths])


def model_meta(classes: list[str], refer_all: bool, tta_views: int = 8) -> dict:
    """model.json of a test model: its policy refers every field (``refer_all``), or answers by p_malignant > 0.5."""
    from allstudy.data.classes import is_malignant
    from allstudy.evaluation.decision import DecisionPolicy
    from allstudy.evaluation.metrics import decision_metrics, tradeoff
    from allstudy.serving.modelcard import model_json

    params = {
        "arch": "lenet",
        "config": {"weights": None, "input_mode": "original", "tta_views": tta_views},
        "classes": classes,
        "input_size": SIZE,
        "preprocessing": "unit",
        "data_hash": "0" * 64,
        "code_version": {"version": "test", "source_sha256": "0"},
        "packages": {"keras": "3"},
        "train_seconds": 0.0,
    }
    test = {
        "n": 40,
        "accuracy": 0.5,
        "accuracy_ci": [0.4, 0.6],
        "balanced_accuracy": 0.5,
        "macro_f1": 0.5,
        "macro_f1_ci": [0.4, 0.6],
        "weighted_f1": 0.5,
        "weighted_f1_ci": [0.4, 0.6],
        "malignant_sensitivity": 0.9,
        "malignant_sensitivity_ci": [0.8, 1.0],
        "malignant_specificity": 0.7,
        "malignant_specificity_ci": [0.5, 0.9],
    }
    malignant = tuple(is_malignant(c) for c in classes)
    policy = DecisionPolicy(
        tuple(classes),
        malignant,
        0.005,
        0.05,
        0.05,
        rule_out=0.0 if refer_all else 0.5,
        benign_limit=1.0 if refer_all else 0.5,
        subtype_thresholds={c: 0.5 for c, m in zip(classes, malignant, strict=True) if m},
        calibration={
            "split": "val",
            "n": 40,
            "n_malignant": 30,
            "n_benign": 10,
            "n_per_class": {},
            "fields_needed": {"alpha": 199, "alpha_benign": 19, "alpha_subtype": 19},
        },
    )
    rng = np.random.default_rng(0)
    y, proba = rng.integers(0, len(classes), 40), rng.dirichlet(np.ones(len(classes)), 40)
    evaluation = {
        "test": test,
        "temperature": TEMPERATURE,
        "ece_before": 0.1,
        "ece_after": 0.05,
        "decision": {
            "policy": policy.to_json(),
            "test": decision_metrics(y, proba, policy, n_resamples=20),
            "tradeoff": tradeoff(y, proba, y, proba, classes),
        },
    }
    return model_json("lenet", params, evaluation, {"root": "synthetic", "images": 160, "seed": 0})


def encode_image(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


def _noise(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


BROKEN = {  # name -> (bytes, a word of the reason)
    "empty.jpg": (lambda: b"", "empty"),
    "text.jpg": (lambda: b"This is a text file, not a picture.\n" * 20, "not an image"),
    "truncated.jpg": (
        lambda: encode_image(Image.fromarray(_noise((64, 80, 3))), "JPEG")[:900],
        "truncated",
    ),
    "one-pixel.png": (lambda: encode_image(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"), "too small"),
    "bomb.png": (lambda: png_header_only(100_000, 100_000), "decompression bomb"),
}
