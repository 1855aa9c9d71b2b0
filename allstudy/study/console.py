"""What ``allstudy run`` shows on the terminal: one line per step with its time, and a progress bar.

Everything else the study writes to standard output and standard error (TensorFlow's and absl's C++
logs, the kernels' warnings, papermill's and the data step's own lines) goes to a log file in the
output folder, at the file-descriptor level so that the notebooks' kernels, which inherit them, write
there too. Used by the command line only: a notebook calling :func:`allstudy.study.runner.run` keeps its
own output (a console made without a log file).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TypeVar

from tqdm import tqdm

T = TypeVar("T")

#: The log file's name in the output folder.
LOG_NAME = "study.log"


class StudyConsole:
    """One line per finished step and a bar of steps done; ``enabled`` False does nothing (plain output)."""

    def __init__(self, log: str | os.PathLike | None = None, total: int = 0) -> None:
        self.log = Path(log) if log is not None else None
        self._total = total
        self._lock = threading.Lock()
        self._running: list[str] = []
        self._done = 0
        self._bar: tqdm | None = None
        self._stream: IO[str] | None = None
        self._saved: tuple[int, int] | None = None
        self._ticking = threading.Event()

    @property
    def enabled(self) -> bool:
        return self.log is not None

    @property
    def total(self) -> int:
        """The number of steps, known once the runner has read the profile."""
        return self._total

    @total.setter
    def total(self, steps: int) -> None:
        self._total = steps
        if self._bar is not None:
            with self._lock:
                self._bar.total = steps
                self._bar.refresh()

    def __enter__(self) -> StudyConsole:
        if self.log is None:
            return self
        self.log.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        with open(self.log, "a", encoding="utf-8") as handle:
            handle.write(f"\n==== allstudy run, {time.strftime('%Y-%m-%d %H:%M:%S')} ====\n")
            handle.flush()
            os.dup2(handle.fileno(), 1)  # the study's own prints, and every kernel's, go to the log
            os.dup2(handle.fileno(), 2)  # TensorFlow, absl and the kernels' warnings too
        self._stream = os.fdopen(os.dup(self._saved[0]), "w", buffering=1, encoding="utf-8")
        self._bar = tqdm(
            total=self._total or None,
            file=self._stream,
            unit="step",
            bar_format="{desc} {bar} {n_fmt}/{total_fmt} steps [{elapsed}]",
            dynamic_ncols=True,
            disable=None,  # no bar when the terminal is a file or a pipe (CI logs): the step lines alone
        )
        threading.Thread(target=self._tick, name="allstudy-console", daemon=True).start()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if self._saved is None:
            return
        self._ticking.set()
        if self._bar is not None:
            self._bar.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._saved = None
        if self._stream is not None:
            self._stream.close()
        if kind is not None:
            print(f"allstudy: the study stopped; its full log: {self.log}", file=sys.stderr)

    def _tick(self) -> None:
        """Refresh the bar once a second, so its clock moves during a long step."""
        while not self._ticking.wait(1.0):
            with self._lock:
                if self._bar is not None:
                    self._bar.refresh()

    def say(self, line: str) -> None:
        """A line on the terminal (above the bar), or on standard output when not enabled."""
        if self._bar is None:
            print(line, flush=True)
            return
        with self._lock:
            self._bar.write(line, file=self._stream)

    def run(self, name: str, work: Callable[[], T]) -> T:
        """Call ``work()`` as the step ``name``: on the bar while it runs, then one line with its time
        (``unchanged, reused`` when its result says it was skipped)."""
        with self.step(name) as notes:
            result = work()
            if getattr(result, "skipped", False):
                notes.append("unchanged, reused")
        return result

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[list[str]]:
        """Time a step: it shows on the bar while it runs, then as one line ``[k/n] name  N s``; notes
        appended to the list it gives follow the time."""
        notes: list[str] = []
        start = time.perf_counter()
        with self._lock:
            self._running.append(name)
            self._describe()
        try:
            yield notes
        except BaseException:
            notes.append("failed")
            raise
        finally:
            self._finished(name, time.perf_counter() - start, notes)

    def _describe(self) -> None:
        if self._bar is not None:
            self._bar.set_description_str(", ".join(self._running), refresh=True)

    def _finished(self, name: str, seconds: float, notes: list[str]) -> None:
        with self._lock:
            self._running.remove(name)
            if not self.enabled:
                return
            self._done += 1
            line = f"[{self._done:>2}/{self.total}] {name:<50} {seconds:6.0f} s" + "".join(f"  ({n})" for n in notes)
            if self._bar is not None:
                self._bar.write(line, file=self._stream)
                self._bar.update(1)
                self._describe()
