"""Local servers in child processes (the app, JupyterLab): a free loopback port, a start that waits
until the server answers HTTP, and a stop that always ends the process."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import IO


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_answers(url: str, process: subprocess.Popen, timeout_s: float, what: str = "the server") -> None:
    """Return once ``url`` answers HTTP 200; raise RuntimeError when ``process`` exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer {url} within {timeout_s:.0f} s")
        time.sleep(0.5)


def stop(process: subprocess.Popen, timeout_s: float = 20) -> None:
    """Terminate ``process``; kill it when it has not ended within ``timeout_s``."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def local_server(
    command: list[str],
    url: str,
    timeout_s: float = 120,
    what: str = "the server",
    log: IO | None = None,
    env: dict | None = None,
    cwd: str | os.PathLike | None = None,
) -> Iterator[subprocess.Popen]:
    """Run ``command``; yield its process once ``url`` answers; stop it on the way out, whatever happened.

    Its output goes to ``log`` (a file opened for writing), or nowhere.
    """
    sink = log if log is not None else subprocess.DEVNULL
    process = subprocess.Popen(
        command, stdout=sink, stderr=subprocess.STDOUT if log is not None else sink, env=env, cwd=cwd
    )
    try:
        wait_until_answers(url, process, timeout_s, what)
        yield process
    finally:
        stop(process)
