"""Chains of steps run side by side: each chain in order, up to ``jobs`` chains at once.

The study's notebooks each run in their own kernel process, so threads here only wait on them. On a
2-core machine two kernels at once keep both cores busy through the single-threaded parts of a step
(imports, data loading, plots, saving) that one kernel leaves idle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def run_chains(chains: Sequence[Sequence[Callable[[], T]]], jobs: int = 1) -> list[list[T]]:
    """Call each chain's steps in order, up to ``jobs`` chains at once, chains started in the order given.

    Returns each chain's results, in the order of ``chains``. When a step raises, or the caller is
    interrupted (Ctrl-C), the chains not yet started are dropped, the ones running finish their current
    step and stop, and the error is raised again here. A second Ctrl-C leaves the running steps: their
    threads are daemons, and a notebook's kernel ends with the process that started it.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    if jobs == 1:
        return [[step() for step in chain] for chain in chains]

    results: list = [None] * len(chains)
    errors: list[BaseException] = []
    waiting = iter(range(len(chains)))
    lock = threading.Lock()
    stop = threading.Event()  # a step raised or the caller was interrupted: start nothing more

    def worker() -> None:
        while not stop.is_set():
            with lock:
                index = next(waiting, None)
            if index is None:
                return
            done = []
            for step in chains[index]:
                if stop.is_set():
                    return
                try:
                    done.append(step())
                except BaseException as err:
                    with lock:
                        errors.append(err)
                    stop.set()
                    return
            results[index] = done

    threads = [
        threading.Thread(target=worker, name=f"allstudy-step-{n}", daemon=True) for n in range(min(jobs, len(chains)))
    ]
    for thread in threads:
        thread.start()
    try:
        _join(threads)
    except BaseException:
        stop.set()
        print("interrupted: waiting for the running steps to end (Ctrl-C again to leave them)", flush=True)
        _join(threads)
        raise
    if errors:
        raise errors[0]
    return results


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join()
