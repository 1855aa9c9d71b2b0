"""Chains of steps side by side (the study's --jobs): order of results, real overlap, and failures."""

from __future__ import annotations

import threading
import time

import pytest

from allstudy.core.parallel import run_chains


def _step(log: list, name: str, seconds: float = 0.0, error: Exception | None = None):
    def call():
        log.append(f"start {name}")
        time.sleep(seconds)
        if error:
            raise error
        log.append(f"end {name}")
        return name

    return call


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_results_come_in_the_order_of_the_chains_whatever_finishes_first(jobs):
    log = []
    chains = [[_step(log, "a1", 0.2), _step(log, "a2")], [_step(log, "b1", 0.05), _step(log, "b2")], [_step(log, "c1")]]
    assert run_chains(chains, jobs) == [["a1", "a2"], ["b1", "b2"], ["c1"]]
    for chain in ("a", "b"):  # within a chain, in order
        assert log.index(f"end {chain}1") < log.index(f"start {chain}2")
    if jobs > 1:  # b ran while a slept
        assert log.index("end b2") < log.index("end a1")


def test_two_jobs_run_two_steps_at_once():
    meet = threading.Barrier(2, timeout=10)  # passes only when both steps are running together
    chains = [[lambda: meet.wait() is not None], [lambda: meet.wait() is not None]]
    assert run_chains(chains, jobs=2) == [[True], [True]]


def test_a_failure_is_raised_and_stops_what_has_not_started():
    log = []
    chains = [
        [_step(log, "a1", 0.3), _step(log, "a2")],
        [_step(log, "b1", error=RuntimeError("b1 broke"))],
        [_step(log, "c1")],
    ]
    with pytest.raises(RuntimeError, match="b1 broke"):
        run_chains(chains, jobs=2)
    assert "end a1" in log  # the step running when b1 failed was let finish ...
    assert "start a2" not in log and "start c1" not in log  # ... and nothing new started


def test_one_job_runs_in_the_calling_thread_and_stops_at_the_first_failure():
    log = []
    threads = []
    chains = [
        [lambda: threads.append(threading.current_thread()) or "x"],
        [_step(log, "b1", error=ValueError("bad"))],
        [_step(log, "c1")],
    ]
    with pytest.raises(ValueError, match="bad"):
        run_chains(chains, jobs=1)
    assert threads == [threading.main_thread()] and "start c1" not in log


def test_jobs_below_one_is_a_clear_error():
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        run_chains([], jobs=0)


def test_the_study_takes_jobs_from_the_command_line_and_refuses_zero_before_any_work(tmp_path):
    from allstudy.cli import build_parser
    from allstudy.study.runner import run

    assert build_parser().parse_args(["run", "--jobs", "2"]).jobs == 2
    assert build_parser().parse_args(["run"]).jobs == 1
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        run(None, out=tmp_path / "out", jobs=0)
    assert not (tmp_path / "out").exists()


def test_an_interrupt_starts_nothing_more_and_lets_the_running_steps_end(monkeypatch, capsys):
    import allstudy.core.parallel

    log = []
    both_running = threading.Barrier(3, timeout=10)  # the two first steps and the runner
    join = allstudy.core.parallel._join
    calls = []

    def first(name):
        def call():
            both_running.wait()
            return _step(log, name, 0.3)()

        return call

    def interrupted_join(threads):
        calls.append(True)
        if len(calls) == 1:  # Ctrl-C while the runner waits on its running steps
            both_running.wait()
            raise KeyboardInterrupt
        join(threads)

    monkeypatch.setattr(allstudy.core.parallel, "_join", interrupted_join)
    chains = [[first("a1"), _step(log, "a2")], [first("b1"), _step(log, "b2")], [_step(log, "c1")]]
    with pytest.raises(KeyboardInterrupt):
        run_chains(chains, jobs=2)
    assert "end a1" in log and "end b1" in log  # the running steps ended ...
    assert not {"start a2", "start b2", "start c1"} & set(log)  # ... and nothing new started
    assert "interrupted: waiting for the running steps to end" in capsys.readouterr().out


def test_notebooks_side_by_side_start_in_notebooks_and_leave_the_callers_directory(tmp_path, monkeypatch):
    """papermill's ``cwd`` changes the whole process's directory: when a step that started second ended last, it
    "restored" notebooks/, and `make study` then printed its paths under notebooks/outputs/."""
    import os

    import nbformat

    import allstudy.study.notebooks
    from allstudy.study.notebooks import execute_notebook

    notebooks, caller = tmp_path / "notebooks", tmp_path / "caller"
    notebooks.mkdir()
    caller.mkdir()
    cell = nbformat.v4.new_code_cell("where, seconds = '', 0.0")
    cell.metadata["tags"] = ["parameters"]
    book = nbformat.v4.new_notebook(
        cells=[
            cell,
            nbformat.v4.new_code_cell(
                "import os, pathlib, time\ntime.sleep(seconds)\npathlib.Path(where).write_text(os.getcwd())"
            ),
        ]
    )
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(book, notebooks / "where.ipynb")
    monkeypatch.setattr(allstudy.study.notebooks, "NOTEBOOKS", notebooks)
    monkeypatch.chdir(caller)

    def notebook(k: int, seconds: float):
        return lambda: execute_notebook(
            "where",
            {"where": str(tmp_path / f"cwd-{k}.txt"), "seconds": seconds},
            tmp_path / "out",
            "data",
            output_name=f"where-{k}",
            progress=False,
        )

    # The second starts while the first runs (a kernel takes over a second to start) and ends after it.
    run_chains([[notebook(0, 0.0)], [lambda: time.sleep(0.5), notebook(1, 3.0)]], jobs=2)
    assert os.getcwd() == str(caller)
    assert {(tmp_path / f"cwd-{k}.txt").read_text() for k in range(2)} == {str(notebooks)}
