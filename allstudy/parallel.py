"""Chains of steps run side by side: each chain in order, up to ``jobs`` chains at once.

The study's notebooks each run in their own kernel process, so threads here only wait on them. On a
2-core machine two kernels at once keep both cores busy through the single-threaded parts of a step
(imports, data loading, plots, saving) that one kernel leaves idle.
"""
from __future__ import annotations

from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def run_chains(chains: Sequence[Sequence[Callable[[], T]]], jobs: int = 1) -> list[list[T]]:
    """Call each chain's steps in order, up to ``jobs`` chains at once, chains started in the order given.

    Returns each chain's results, in the order of ``chains``. When a step raises, the chains not yet
    started are dropped, the ones running finish their current step and stop, and the first error
    raised is raised again here.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    if jobs == 1:
        return [[step() for step in chain] for chain in chains]

    failed = []  # set once a step has raised: the other chains stop after their current step

    def run_chain(chain: Sequence[Callable[[], T]]) -> list[T]:
        results = []
        for step in chain:
            if failed:
                break
            try:
                results.append(step())
            except BaseException:
                failed.append(True)
                raise
        return results

    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="allstudy-step") as pool:
        futures = [pool.submit(run_chain, chain) for chain in chains]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        errors = [f for f in futures if f in done and f.exception() is not None]
        if errors:
            failed.append(True)
            pool.shutdown(wait=True, cancel_futures=True)
            raise errors[0].exception()
    return [f.result() for f in futures]
