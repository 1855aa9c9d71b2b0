"""Where a result came from: the code's version and fingerprint, and the packages that computed it."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from allstudy.core.version import __version__

PACKAGES = (
    "tensorflow",
    "tensorflow-cpu",
    "keras",
    "numpy",
    "scipy",
    "scikit-learn",
    "pillow",
    "opencv-python-headless",
    "pandas",
)
_PACKAGE_DIR = Path(__file__).resolve().parent.parent


#: The modules and subpackages whose source decides what a training run computes (its identity; see
#: allstudy.training.fit), as paths inside the package without ``.py``.
TRAINING_MODULES = (
    "core/atomic",
    "data/classes",
    "data/images",
    "data/preprocess",
    "data/segment",
    "models",
    "training",
)


def _module_name(path: Path) -> str:
    return path.relative_to(_PACKAGE_DIR).with_suffix("").as_posix()


def source_hash(modules: tuple[str, ...] | None = None) -> str:
    """A hash of the package's source files (or of the named modules and subpackages only)."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE_DIR.rglob("*.py"), key=_module_name):
        name = _module_name(path)
        if modules is None or any(name == m or name.startswith(m + "/") for m in modules):
            digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=1)
def code_version() -> dict[str, str | None]:
    """The package version, a hash of its source files, and the git commit when run from a clone."""
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=_PACKAGE_DIR, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "version": __version__,
        "source_sha256": source_hash(),
        "training_source_sha256": source_hash(TRAINING_MODULES),
        "git_commit": commit,
    }


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that decide the numbers."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions
