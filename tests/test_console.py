"""What ``allstudy run`` shows (allstudy.study.console): one line per step on the terminal, the rest in the log."""

from __future__ import annotations

import subprocess
import sys

import pytest

from allstudy.study.console import StudyConsole

SCRIPT = """
import subprocess, sys
from allstudy.study.console import StudyConsole
with StudyConsole(sys.argv[1]) as console:
    console.total = 2
    print("a step's own print")
    subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('a kernel warning')"], check=True)
    console.run("01_explore", lambda: None)
    with console.step("report"):
        pass
print("after the study")
"""


def test_steps_on_the_terminal_everything_else_in_the_log(tmp_path):
    # In a process of its own: the console redirects file descriptors 1 and 2, which pytest's capture replaces.
    log = tmp_path / "study.log"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(log)], capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("[ 1/2] 01_explore") and lines[0].endswith(" s"), done.stdout
    assert lines[1].startswith("[ 2/2] report") and lines[2] == "after the study"  # the terminal is back
    assert "a step's own print" not in done.stdout + done.stderr and "a kernel warning" not in done.stderr
    text = log.read_text()
    assert "a step's own print" in text and "a kernel warning" in text


def test_a_failed_step_says_so_and_names_the_log(tmp_path, capfd):
    log = tmp_path / "study.log"
    with pytest.raises(RuntimeError), StudyConsole(log) as console:
        console.total = 1
        with console.step("03_train-lenet"):
            raise RuntimeError("boom")
    out, err = capfd.readouterr()
    assert "03_train-lenet" in out and "(failed)" in out
    assert str(log) in err


def test_without_a_log_nothing_is_redirected(capfd):
    with StudyConsole() as console:
        console.total = 1
        print("plain")
        assert console.run("step", lambda: 3) == 3
    assert capfd.readouterr().out == "plain\n"
