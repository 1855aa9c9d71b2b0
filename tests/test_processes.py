"""allstudy.testing.servers: a local server is waited for, and always stopped."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from allstudy.testing.servers import free_port, local_server, stop

SERVER = (
    "import http.server, sys; http.server.test(HandlerClass=http.server.SimpleHTTPRequestHandler, "
    "port=int(sys.argv[1]), bind='127.0.0.1')"
)
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"
)


def test_a_server_is_yielded_once_it_answers_and_stopped_afterwards(tmp_path):
    port = free_port()
    with (
        open(tmp_path / "log", "w") as log,
        local_server(
            [sys.executable, "-c", SERVER, str(port)], f"http://127.0.0.1:{port}/", 30, log=log, cwd=tmp_path
        ) as process,
    ):
        assert process.poll() is None
    assert process.poll() is not None


def test_a_server_that_exits_or_never_answers_is_a_clear_error():
    with pytest.raises(RuntimeError, match="the toy exited with status 3 before answering"):
        with local_server(
            [sys.executable, "-c", "raise SystemExit(3)"], f"http://127.0.0.1:{free_port()}/", 30, "the toy"
        ):
            pass
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="did not answer .* within 1 s"):
        with local_server([sys.executable, "-c", "import time; time.sleep(60)"], f"http://127.0.0.1:{free_port()}/", 1):
            pass
    assert time.monotonic() - started < 30


def test_stop_kills_a_process_that_ignores_terminate():
    process = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"  # its SIGTERM handler is in place
    stop(process, timeout_s=1)
    assert process.returncode == -9
