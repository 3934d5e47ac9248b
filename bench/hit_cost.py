"""What one L1 hit answered by the fast path costs inside a process, and which part costs what.

    python -m bench.hit_cost [--no-write]

`app.wsgi_app` (the fast path in front of Flask) is called with a plain `GET /items/<id>` whose item L1
holds, as a gunicorn worker would call it: prometheus metrics in multiprocess mode (each count a write to
an mmap'd file) and the access line written as JSON to a file. Each variant (the production settings,
then the access line off, the request metrics off, both off) runs in a process of its own; the figure is
the median of 7 runs of 20,000 calls, in microseconds per hit. In one process with nothing else running:
no socket, no gunicorn, no other thread; under gunicorn every part costs more (BENCHMARKS.md "Fast path"
has req/s). Each process also times bench/bare_app.py's observed_app, alternating with the hit: it does the
hit's counts, request id and access line (as that variant's settings say) and nothing else, so the
difference is what the fast path itself costs. Writes the "hit_cost" section of BENCHMARKS.md.
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
from functools import partial
from typing import Any

from bench.report import machine, publish

N = 20_000
VARIANTS = {
    "as in production (access line and request metrics on)": {},
    "ACCESS_LOG=false": {"ACCESS_LOG": "false"},
    "REQUEST_METRICS=false": {"REQUEST_METRICS": "false"},
    "both off": {"ACCESS_LOG": "false", "REQUEST_METRICS": "false"},
}


def measure(tmp: str) -> tuple[float, ...]:
    """In this process (a child): microseconds per L1 hit through app.wsgi_app, and per call of
    bench/bare_app.py's observed_app (the same counts, request id and access line, nothing else), each the
    median of 7 runs, alternating."""
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

    from bench.bare_app import observed_app

    def hit() -> None:
        app.wsgi_app(dict(environ), lambda status, headers, exc_info=None: None)

    def observed() -> None:
        observed_app(dict(environ), lambda status, headers, exc_info=None: None)

    hits, observed_only = [], []
    for _ in range(7):  # alternating, so that both see the same machine
        hits.append(timeit.timeit(hit, number=N) / N * 1e6)
        observed_only.append(timeit.timeit(observed, number=N) / N * 1e6)
    return statistics.median(hits), statistics.median(observed_only), *declines(app.wsgi_app, environ)


def declines(wrapper: Any, environ: dict[str, Any]) -> tuple[float, float]:
    """What the fast path adds to a request it does not answer, in microseconds: one outside /items/, and
    an item GET that L1 does not hold (the wrapper in front of an app that does nothing, less that app)."""
    from routes.fast_path import FastPath

    def nothing(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return []

    declining = FastPath(nothing, wrapper.item_cache, wrapper.config, wrapper.metrics, wrapper.cors_options)
    costs = []
    for path in ("/health/live", "/items/not-cached"):
        request = {**environ, "PATH_INFO": path}
        wrapped = timeit.repeat(partial(declining, request, None), number=N, repeat=7)
        bare = timeit.repeat(partial(nothing, request, None), number=N, repeat=7)
        costs.append((statistics.median(wrapped) - statistics.median(bare)) / N * 1e6)
    return costs[0], costs[1]


def run_variant(env: dict[str, str]) -> tuple[float, ...]:
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
        return tuple(float(cost) for cost in out.stdout.strip().splitlines()[-1].split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    parser.add_argument("--child", metavar="TMP", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(" ".join(f"{cost:.2f}" for cost in measure(args.child)))
        return
    costs = {name: run_variant(env) for name, env in VARIANTS.items()}
    whole = costs[next(iter(VARIANTS))][0]
    rows = [
        "| variant | us per L1 hit | of the production figure | observed_app in the same process | the hit's own |",
        "|---|---|---|---|---|",
    ]
    rows += [
        f"| {name} | {hit:.1f} | {hit / whole:.2f} | {observed:.1f} | {hit - observed:.1f} |"
        for name, (hit, observed, *_) in costs.items()
    ]
    other, item_miss = costs[next(iter(VARIANTS))][2:]
    section = "\n".join(
        [
            "## One L1 hit inside the process, by part",
            "",
            f"`python -m bench.hit_cost` ({machine()}); `app.wsgi_app` called directly, median of 7 x {N:,} hits, "
            "each variant in a process of its own, with multiprocess metrics and the JSON access line to a file; "
            "bench/bare_app.py's observed_app timed in the same process, alternating with the hit.",
            "",
            *rows,
            "",
            f"What the fast path adds to a request it passes on to Flask (production settings): {other:.2f} us "
            f"for a path outside /items/, {item_miss:.2f} us for an item GET that L1 does not hold (the path's "
            "regex and the L1 lookup).",
        ]
    )
    publish("hit_cost", section, write=not args.no_write)


if __name__ == "__main__":
    main()
