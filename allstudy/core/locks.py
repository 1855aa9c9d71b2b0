"""One command per output folder: an advisory lock held for the life of the process."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


class FolderBusy(RuntimeError):
    """Another allstudy command holds the output folder."""


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, shared: bool = False) -> Iterator[Path]:
    """Hold an output folder for one command: ``run`` alone (exclusive), ``train`` beside other ``train``
    commands (``shared``). Another command holding it is :class:`FolderBusy`; the lock ends with the
    process, however it ends. Where the file system has no locks (Windows, some network mounts) it is a no-op.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".allstudy.lock", "a", encoding="utf-8") as handle:
        try:
            import fcntl  # POSIX only

            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusy(
                f"another allstudy command is writing to {out}; wait until it ends, or pass another --out folder"
            ) from None
        except (ImportError, OSError):
            pass  # no advisory locks here: one command per folder is then the user's care
        yield out
