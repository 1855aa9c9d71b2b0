"""The app under load: many concurrent ``/predict`` calls through gradio_client.

Starts ``python -m allstudy serve`` on a free loopback port (its own process, as users would run
it), waits until it answers, sends ``--requests`` single-image requests from ``--concurrency``
threads, one gradio_client session each (a request: upload a synthetic field, predict, receive the
JSON), then stops it. Reports errors (exceptions, or an answer with ``error`` set), latency p50/p95
as a client sees it (upload and queueing included) and throughput.

    .venv/bin/python benchmarks/load.py --model outputs/models/chosen --requests 200 --concurrency 8 \\
        --out outputs/benchmarks/load.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def _fields(folder: Path, n: int) -> list[Path]:
    from allstudy.data.classes import TALEQANI_CLASSES
    from allstudy.data.synthetic import render_field

    paths = []
    for i in range(n):
        label = TALEQANI_CLASSES[i % len(TALEQANI_CLASSES)]
        paths.append(folder / f"field-{i:02d}-{label}.jpg")
        render_field(label, np.random.default_rng([1, i]), 224).save(paths[-1], quality=90)
    return paths


def one_request(client, path: Path) -> tuple[float, str]:
    """(seconds, error or '') of one /predict call."""
    from gradio_client import handle_file

    start = time.perf_counter()
    try:
        answer = client.predict(handle_file(str(path)), api_name="/predict")
        error = answer.get("error", "") if isinstance(answer, dict) else f"unexpected answer {answer!r}"
    except Exception as err:  # a failed request is counted, not fatal
        error = f"{type(err).__name__}: {err}"
    return time.perf_counter() - start, error


def run_load(url: str, paths: list[Path], requests: int, concurrency: int) -> dict:
    """``concurrency`` users, each with its own Client, send the requests; latency, errors and throughput.

    One Client per thread: gradio_client 2.7.2 shares one SSE reader among the jobs of a Client, and a
    single Client used from 8 threads now and then fails a job with CancelledError (a client-side race;
    the server answered it), which would be counted against the app.
    """
    from gradio_client import Client

    clients = [Client(url, verbose=False, download_files=False) for _ in range(concurrency)]
    for client in clients:
        one_request(client, paths[0])  # warm-up: each session's first upload and call

    def user(k: int) -> list[tuple[float, str]]:
        return [one_request(clients[k], paths[i % len(paths)]) for i in range(k, requests, concurrency)]

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [r for answers in pool.map(user, range(concurrency)) for r in answers]
    wall = time.perf_counter() - start
    ms = np.asarray([s for s, _ in results]) * 1000.0
    errors = [e for _, e in results if e]
    return {
        "requests": len(results),
        "concurrency": concurrency,
        "errors": len(errors),
        "first_errors": errors[:5],
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "max_ms": float(ms.max()),
        "wall_s": wall,
        "requests_per_s": len(results) / wall,
    }


def main() -> None:
    from allstudy.core.atomic import write_json
    from allstudy.testing.servers import free_port, local_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="load-") as scratch, open(Path(scratch) / "server.log", "w") as log:
        paths = _fields(Path(scratch), 16)
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "TF_CPP_MIN_LOG_LEVEL": "2"}
        command = [sys.executable, "-m", "allstudy", "serve", "--model", args.model, "--port", str(port)]
        url = f"http://127.0.0.1:{port}/"
        with local_server(command, url, 180, f"the app (log: {log.name})", log=log, env=env):
            figures = run_load(url, paths, args.requests, args.concurrency)
    figures.update({"cores": os.cpu_count(), "model": str(args.model)})
    print(
        f"{figures['requests']} /predict requests, {figures['concurrency']} concurrent, {os.cpu_count()} cores: "
        f"{figures['errors']} errors; latency p50 {figures['p50_ms']:.0f} ms, p95 {figures['p95_ms']:.0f} ms, "
        f"max {figures['max_ms']:.0f} ms; {figures['requests_per_s']:.1f} requests/s ({figures['wall_s']:.1f} s)"
    )
    for error in figures["first_errors"]:
        print(f"  error: {error}")
    if args.out:
        write_json(args.out, figures)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
