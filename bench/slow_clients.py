"""Slow clients: what stalled connections do to ordinary requests, with each mechanism tried.

    python -m bench.slow_clients [--stalled 500] [--half-lines-only]

The 2-worker production start (embedded Redis, SQLite) per mechanism: `--stalled` connections send, in
turn, half a request line or a whole head and part of its body (tests/integration/slow_clients.py
UNFINISHED_BODIES; `--half-lines-only`: all half a request line), and stall; meanwhile 100 GET
/health/live on new connections (8 at a time, each given 5 s); then how long until the server has closed
every stalled connection. Writes the "slow-clients" section of
BENCHMARKS.md. Counts and seconds, not throughput: a busy machine moves them little.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from gunicorn.workers.gthread import TConn, ThreadWorker

from bench.report import machine, publish
from buffering_worker import accept_connection
from tests.integration.slow_clients import (
    HALF_REQUEST_LINE,
    UNFINISHED_BODIES,
    ordinary_requests,
    seconds_until_closed,
    stalled,
)
from tests.support import Gunicorn

CLOSE_WAIT = 30.0  # seconds we wait for the server to close the stalled connections
MECHANISMS = {  # name: GUNICORN_CMD_ARGS
    "gthread, 4 threads (before issue 13)": "--worker-class gthread",
    "gthread, 64 threads": "--worker-class gthread --threads 64",
    "gthread + 5 s socket read timeout in the thread": "--worker-class bench.slow_clients.TimeoutWorker",
    "BufferingWorker, 4 threads, CLIENT_TIMEOUT 10 (the default now)": "",
}


class TimeoutConn(TConn):
    def init(self) -> None:
        super().init()
        self.sock.settimeout(5.0)


class TimeoutWorker(ThreadWorker):
    """An alternative measured, not used: gthread whose threads read with a plain 5 s socket timeout."""

    def accept(self, listener) -> None:  # gthread's accept, with TimeoutConn
        accepted = accept_connection(listener)
        if accepted is None:
            return
        sock, client = accepted
        self.nr_conns += 1
        sock.setblocking(True)
        self.enqueue_req(TimeoutConn(self.cfg, sock, client, listener.getsockname()))


def trial(args: str, stalled_count: int, payloads: list[bytes], tmp: str) -> str:
    env = {"REDIS_URL": "", "DATABASE_URL": f"sqlite:///{tmp}/items.sqlite3", "LOG_LEVEL": "WARNING"}
    if args:
        env["GUNICORN_CMD_ARGS"] = args
    with Gunicorn(env, workers=2) as server, stalled(server.port, stalled_count, payloads) as socks:
        opened = time.monotonic()
        latencies = ordinary_requests(server.port, 100, concurrency=8, timeout=5.0)
        closed = seconds_until_closed(socks, CLOSE_WAIT)
        elapsed = time.monotonic() - opened
        closed_at = f"after {elapsed:.1f} s" if closed is not None else f"not all: still open after {elapsed:.0f} s"
    p99 = f"{latencies.quantile(0.99) * 1000:.0f}" if latencies.seconds else "-"
    return f"{100 - latencies.failures} | {p99} | {closed_at}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stalled", type=int, default=500)
    parser.add_argument("--half-lines-only", action="store_true")
    args = parser.parse_args()
    payloads = [HALF_REQUEST_LINE] if args.half_lines_only else [HALF_REQUEST_LINE, *UNFINISHED_BODIES]
    what = "half a request line" if args.half_lines_only else "half a request line or an unfinished body, in turn,"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, gunicorn_args in MECHANISMS.items():
            rows.append(f"| {name} | {trial(gunicorn_args, args.stalled, payloads, tmp)} |")
            print(rows[-1], flush=True)
    section = "\n".join(
        [
            "## Slow clients: stalled connections against ordinary requests",
            "",
            f"`python -m bench.slow_clients --stalled {args.stalled}{' --half-lines-only' * args.half_lines_only}`"
            f" ({machine()}). 2 workers;",
            f"{args.stalled} connections send {what} and stall",
            "(unfinished bodies: chunked, behind `Expect: 100-continue`, short of a Content-Length); meanwhile",
            "100 GET /health/live on new connections, 8 at a time, each allowed 5 s; then the time from opening",
            "the stalled connections until the server had closed the last of them.",
            "",
            "| mechanism | ordinary answered (of 100) | their p99 ms | stalled connections closed |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    publish("slow-clients", section)


if __name__ == "__main__":
    main()
