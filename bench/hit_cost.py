"""What one L1 hit answered by the fast path costs inside a process, and which part costs what.

    python -m bench.hit_cost [--no-write]

`app.wsgi_app` (the fast path in front of Flask) is called with a plain `GET /items/<id>` whose item L1
holds, as a gunicorn worker would call it: prometheus metrics in multiprocess mode (each count a write to
an mmap'd file) and the access line written as JSON to a file. Each variant (the production settings,
then the access line off, the request metrics off, both off) runs in a process of its own; the figure is
the median of 7 runs of 20,000 calls, in microseconds per hit. In one process with nothing else running:
no socket, no gunicorn, no other thread; under gunicorn every part costs more (BENCHMARKS.md "Fast path"
has req/s). Writes the "hit_cost" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import timeit
from typing import Any

from bench.report import machine, publish

N = 20_000
VARIANTS = {
    "as in production (access line and request metrics on)": {},
    "ACCESS_LOG=false": {"ACCESS_LOG": "false"},
    "REQUEST_METRICS=false": {"REQUEST_METRICS": "false"},
    "both off": {"ACCESS_LOG": "false", "REQUEST_METRICS": "false"},
}


def measure(tmp: str) -> float:
    """In this process (a child): microseconds per L1 hit through app.wsgi_app, median of 7 runs."""
    import logs
    from app import create_app

    app = create_app({"REDIS_URL": "", "DATABASE_URL": f"sqlite:///{tmp}/items.sqlite3", "LOG_FORMAT": "json"})
    handler = logging.StreamHandler(open(os.path.join(tmp, "access.log"), "w"))  # noqa: SIM115 (lives with the process)
    handler.setFormatter(logs.JsonFormatter())
    logging.root.handlers = [handler]  # one JSON stream, as gunicorn.conf.py leaves a worker
    client = app.test_client()
    client.put("/items/hot", data=json.dumps({"name": "hot"}), headers={"Content-Type": "application/json"})
    client.get("/items/hot")
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/items/hot",
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "bench",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
    }
    answered: list[Any] = []
    body = app.wsgi_app(dict(environ), lambda status, headers, exc_info=None: answered.append(headers))
    if dict(answered[0]).get("X-Cache") != "lru" or not body:
        raise SystemExit(f"not an L1 hit: {answered[0]}")

    def hit() -> None:
        app.wsgi_app(dict(environ), lambda status, headers, exc_info=None: None)

    runs = timeit.repeat(hit, number=N, repeat=7)
    return statistics.median(run / N * 1e6 for run in runs)


def run_variant(env: dict[str, str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "metrics")
        os.mkdir(metrics)
        child_env = {**os.environ, **env, "PROMETHEUS_MULTIPROC_DIR": metrics}
        out = subprocess.run(
            [sys.executable, "-m", "bench.hit_cost", "--child", tmp],
            env=child_env,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    parser.add_argument("--child", metavar="TMP", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(f"{measure(args.child):.2f}")
        return
    costs = {name: run_variant(env) for name, env in VARIANTS.items()}
    whole = costs[next(iter(VARIANTS))]
    rows = ["| variant | us per L1 hit | of the production figure |", "|---|---|---|"]
    rows += [f"| {name} | {cost:.1f} | {cost / whole:.2f} |" for name, cost in costs.items()]
    section = "\n".join(
        [
            "## One L1 hit inside the process, by part",
            "",
            f"`python -m bench.hit_cost` ({machine()}); `app.wsgi_app` called directly, median of 7 x {N:,} hits, "
            "each variant in a process of its own, with multiprocess metrics and the JSON access line to a file.",
            "",
            *rows,
        ]
    )
    publish("hit_cost", section, write=not args.no_write)


if __name__ == "__main__":
    main()
