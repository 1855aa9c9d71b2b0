"""Atomic file writes: a reader never sees half a file, a killed writer leaves the old one intact."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path`` (same filesystem).

    The temporary file keeps the target's suffix so that writers choosing a format by suffix
    (matplotlib, pandas, Keras) behave as for the real name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes it private (0600); give it the mode of a normally created file
            tmp_path.chmod(0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; rename it over ``path`` when closed cleanly."""
    if "w" not in mode:
        raise ValueError(f"atomic_open writes only; mode {mode!r} has no 'w'")
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically; return the path."""
    with atomic_open(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` atomically; return the path."""
    with atomic_open(path) as handle:
        handle.write(text)
    return Path(path)


def write_csv(frame, path: str | os.PathLike) -> Path:
    """Write a pandas DataFrame as CSV (no index), atomically; return the path."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def cached_array(path: str | os.PathLike, compute: Callable[[], Any]):
    """A NumPy array kept in ``path``: loaded when it is there and readable, else computed and saved atomically."""
    import numpy as np

    path = Path(path)
    if path.exists():
        try:
            return np.load(path)
        except (OSError, ValueError):
            path.unlink()  # damaged: compute it again
    array = compute()
    with atomic_path(path) as tmp:
        np.save(tmp, array)
    return array


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, naming the file in the error when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it and run again to rebuild it") from err


#: The name :func:`allstudy.core.atomic.atomic_path` gives its temporary file: ``.<stem>.<8 random chars>.tmp<suffix>``.
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9_]+)?$")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that writers killed mid-write left under ``folder``; return them.

    Only for a folder that no other process is writing to (see :func:`output_lock`).
    """
    removed = []
    for path in sorted(Path(folder).rglob(".*.tmp*")):
        if _TEMPORARY.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
