"""The study's dataset: the folder given, or the profile's synthetic default, through the cached data step.

Apart from the runner so that the notebooks that only look at the data (01, 02) do not start TensorFlow.
"""

from __future__ import annotations

import os
from pathlib import Path

from allstudy.data.prepare import PreparedData, prepare
from allstudy.data.synthetic import generate_dataset
from allstudy.data.synthetic_cnmc import generate_cnmc_dataset
from allstudy.models.profiles import get_profile

#: The synthetic defaults, by the dataset they imitate: what ``--dataset`` chooses when no ``--data`` is given.
SYNTHETIC_DATASETS = {
    "taleqani": "4-class blood-smear fields like the Taleqani B-ALL set (allstudy.data.synthetic)",
    "cnmc": "single segmented cells, ALL vs normal, like the C-NMC 2019 release (allstudy.data.synthetic_cnmc)",
}


def resolve_data(
    data: str | os.PathLike | None,
    out: str | os.PathLike,
    profile: str,
    progress: bool = True,
    dataset: str = "taleqani",
) -> Path:
    """The dataset folder to study: ``data`` itself, or the synthetic default of ``dataset`` generated under
    ``out`` (one of :data:`SYNTHETIC_DATASETS`)."""
    if dataset not in SYNTHETIC_DATASETS:
        raise ValueError(f"unknown synthetic dataset {dataset!r}; choose one of {', '.join(SYNTHETIC_DATASETS)}")
    if data is not None:
        path = Path(data)
        if not path.is_dir():
            raise FileNotFoundError(
                f"--data {path} is not a folder; pass a dataset folder with one folder per class "
                "(see data/README.md), or leave --data out to use the synthetic default"
            )
        return path.resolve()
    settings = get_profile(profile)
    if dataset == "cnmc":
        return generate_cnmc_dataset(
            Path(out) / "synthetic-cnmc",
            n_per_class=settings["synthetic_per_class"],
            seed=settings["seed"],
            progress=progress,
        ).resolve()
    return generate_dataset(
        Path(out) / "synthetic-data",
        n_per_class=settings["synthetic_per_class"],
        seed=settings["seed"],
        progress=progress,
        leukocytes=settings["synthetic_leukocytes"],
    ).resolve()


def prepare_study_data(
    data: str | os.PathLike | None,
    out: str | os.PathLike,
    profile: str = "quick",
    progress: bool = True,
    dataset: str = "taleqani",
) -> PreparedData:
    """Resolve the dataset (:func:`resolve_data`) and run the cached data step into ``out/data``."""
    settings = get_profile(profile)
    root = resolve_data(data, out, profile, progress, dataset)
    return prepare(
        root, Path(out) / "data", seed=settings["seed"], fractions=tuple(settings["fractions"]), progress=progress
    )


def reference_segmentation(root: Path) -> Path | None:
    """The dataset's own segmented version beside it (``<root>-segmented``), when there is one."""
    candidate = root.parent / f"{root.name}-segmented"
    return candidate if candidate.is_dir() else None
