"""Profiles: every setting of a study run in one place.

* ``quick``: the tests and the embedded synthetic default; tiny, minutes on a laptop CPU.
* ``cpu``: the real data on a 2-core laptop CPU: honest settings that finish in about half an hour.
* ``paper``: the source studies' own settings, for a GPU or Colab.
"""
from __future__ import annotations

import copy
from typing import Any

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "seed": 0,
        "fractions": [0.70, 0.15, 0.15],
        "synthetic_per_class": 60,
        "explore_samples_per_class": 6,
        "explore_duplicate_groups": 6,
    },
    "cpu": {
        "seed": 0,
        "fractions": [0.70, 0.15, 0.15],
        "synthetic_per_class": 150,
        "explore_samples_per_class": 8,
        "explore_duplicate_groups": 12,
    },
    "paper": {
        "seed": 0,
        "fractions": [0.70, 0.15, 0.15],
        "synthetic_per_class": 300,
        "explore_samples_per_class": 8,
        "explore_duplicate_groups": 12,
    },
}


def get_profile(name: str) -> dict[str, Any]:
    """A copy of the named profile's settings; a clear error for an unknown name."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return copy.deepcopy(PROFILES[name])
