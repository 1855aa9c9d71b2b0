"""The study's notebooks executed by papermill, each skipped while its notebook, parameters, data and code
are unchanged since its last successful execution; a failure names the step and keeps its executed copy."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import papermill

from allstudy.core.atomic import atomic_path, read_json, write_json, write_text
from allstudy.core.provenance import code_version
from allstudy.study.report import render_html

#: The notebooks folder of the package's source tree (the notebooks are not installed as data).
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@dataclass(frozen=True)
class StepResult:
    """One executed (or reused) notebook."""

    name: str
    notebook: Path
    html: Path
    skipped: bool
    seconds: float


def _stamp(notebook: Path, parameters: dict, data_hash: str) -> str:
    digest = hashlib.sha256(notebook.read_bytes())
    digest.update(json.dumps(parameters, sort_keys=True).encode())
    digest.update(f"{data_hash}|{code_version()['source_sha256']}".encode())
    return digest.hexdigest()


def execute_notebook(
    name: str,
    parameters: dict,
    out: Path,
    data_hash: str,
    force: bool = False,
    output_name: str | None = None,
    progress: bool = True,
) -> StepResult:
    """Execute ``notebooks/<name>.ipynb`` with papermill into ``out/notebooks/`` and render HTML; skip if fresh.

    ``progress``: papermill's progress bar per cell; without it (steps running side by side) one line
    when the step starts and one when it ends.
    """
    source = NOTEBOOKS / f"{name}.ipynb"
    if not source.exists():
        raise FileNotFoundError(f"{source} is missing; the notebooks ship with the source tree (run from a clone)")
    name = output_name or name
    target = out / "notebooks" / f"{name}.ipynb"
    html = out / "notebooks" / f"{name}.html"
    stamp_path = out / "notebooks" / f".{name}.stamp.json"
    stamp = _stamp(source, parameters, data_hash)
    if (
        not force
        and target.exists()
        and html.exists()
        and stamp_path.exists()
        and read_json(stamp_path).get("stamp") == stamp
    ):
        print(f"{name}: unchanged since its last run, reused {target}")
        return StepResult(name, target, html, True, 0.0)
    start = time.perf_counter()
    print(f"{name}: executing with {parameters}")
    target.parent.mkdir(parents=True, exist_ok=True)
    failed = target.with_name(f"{name}.failed.ipynb")
    with atomic_path(target) as tmp:
        try:
            # The kernel starts in notebooks/ (nbclient's resources path), as in Jupyter. Not papermill's
            # ``cwd``: that changes the whole process's directory, which steps running side by side in
            # threads then restore in the wrong order, leaving the caller in notebooks/.
            papermill.execute_notebook(
                str(source),
                str(tmp),
                parameters=parameters,
                progress_bar=progress,
                kernel_name="python3",
                resources={"metadata": {"path": str(NOTEBOOKS)}},
            )
        except papermill.PapermillExecutionError as err:
            with contextlib.suppress(OSError):
                os.replace(tmp, failed)  # keep the executed copy with its traceback for the user
            raise step_error(name, err, failed) from None
    failed.unlink(missing_ok=True)
    write_text(html, render_html(target))
    seconds = time.perf_counter() - start
    write_json(stamp_path, {"stamp": stamp, "seconds": round(seconds, 1), "parameters": parameters})
    if not progress:
        print(f"{name}: done in {seconds:.0f} s")
    return StepResult(name, target, html, False, seconds)


class StudyError(RuntimeError):
    """A step of the study that cannot go on, in one line: what failed, where to look, what to do."""


#: An OSError as a notebook's error value shows it: ``[Errno 28] No space left on device: '/x/y'``.
_ERRNO_VALUE = re.compile(r"^\[Errno (\d+)\] (.+?)(?:: '(.*?)')?(?: -> '.*')?$")


#: Errors of the disk or the folder, not of the step: the user's to fix, told as the CLI tells any OSError.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


def step_error(name: str, err, failed: Path) -> Exception:
    """The error to raise for a notebook that failed: its OSError when the disk is full or a folder cannot be
    written (so the user is told what to do), else a :class:`StudyError` naming the step and its executed copy."""
    match = _ERRNO_VALUE.match(str(err.evalue or "").strip())
    if match and int(match[1]) in DISK_ERRNOS:
        return OSError(int(match[1]), match[2], match[3])
    return StudyError(f"step {name} failed with {err.ename}: {err.evalue}; its traceback is in {failed}")
