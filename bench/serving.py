"""The serving defaults (worker class, threads, keep-alive, access log), measured against today's in one run.

    python -m bench.serving [--quick] [--seconds 3] [--database-url postgresql://...]

For each configuration it starts three gunicorn services on one redis-server and a PostgreSQL schema
(cache on with the database behind a proxy that answers 200 ms late; L1 off; cache off), once with one
worker and once with the 2-worker production start, and measures: an L1 hit, an L2 hit, a database read
and /health/live with wrk (connections enough that no worker idles), 200 concurrent reads of one cold key
(the fleet lock), cold reads from the 200 ms database, and ordinary requests beside 500 stalled clients.
Columns: req/s, server CPU per request (master + workers, /proc), p50/p99, failures; every row also as a
ratio to today's defaults measured in the same run. Writes the "serving" section of BENCHMARKS.md.
--quick: today's defaults and the new worker only, one worker, 1 s per row (a smoke run, not figures).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from bench.load import Result, cpu_seconds, measure, process_tree
from bench.report import machine, publish
from tests.integration.slow_clients import Latencies, stalled
from tests.support import Gunicorn, RedisServer, TcpProxy, postgres_schema_url, seed_items, wait_until, with_port

TODAY = "gthread, 4 threads, keep-alive 5, access log on"  # the defaults before issue 13
DB_DELAY = 0.2
STALLED = 500
ROWS = (
    "L1 hit GET",
    "L2 hit GET",
    "database read GET",
    "GET /health/live",
    "200 concurrent cold reads (fleet lock)",
    f"cold reads, database answers in {DB_DELAY * 1000:.0f} ms",
    f"ordinary GETs beside {STALLED} stalled clients",
)


@dataclass(frozen=True)
class Setup:
    name: str
    worker_class: str
    threads: int
    keepalive: int
    access_log: bool

    def env(self, workers: int) -> dict[str, str]:
        args = f"--worker-class {self.worker_class} --threads {self.threads} --keep-alive {self.keepalive}"
        return {"GUNICORN_CMD_ARGS": args, "ACCESS_LOG": str(self.access_log).lower(), "WEB_CONCURRENCY": str(workers)}


NEW = "buffering_worker.BufferingWorker"
SETUPS = [
    Setup(TODAY, "gthread", 4, 5, True),
    Setup("BufferingWorker, 4 threads, keep-alive 5, access log on", NEW, 4, 5, True),
    Setup("BufferingWorker, 1 thread", NEW, 1, 5, True),
    Setup("BufferingWorker, 2 threads", NEW, 2, 5, True),
    Setup("BufferingWorker, 8 threads", NEW, 8, 5, True),
    Setup("BufferingWorker, keep-alive 0", NEW, 4, 0, True),
    Setup("BufferingWorker, access log off", NEW, 4, 5, False),
]


def burst(port: int, paths: Iterable[str], concurrency: int, timeout: float, seconds: float | None = None) -> Latencies:
    """GET each of `paths` (a new connection each) from `concurrency` threads; with `seconds`, stop then."""
    todo = iter(paths)
    lock = threading.Lock()
    took: list[float] = []
    failures = [0]
    deadline = time.monotonic() + seconds if seconds else float("inf")

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                path = next(todo, None)
            if path is None:
                return
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
                    ok = response.status == 200
            except OSError:
                ok = False
            with lock:
                if ok:
                    took.append(time.perf_counter() - started)
                else:
                    failures[0] += 1

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Latencies(sorted(took), failures[0])


def timed(server: Gunicorn, run) -> Result:  # noqa: ANN001 - run: () -> Latencies
    """Run a Python-driven row: its requests per second, latencies and the server's CPU per request."""
    pids = process_tree(server.proc.pid)  # type: ignore[union-attr]
    cpu_before, started = cpu_seconds(pids), time.monotonic()
    latencies: Latencies = run()
    elapsed, cpu = time.monotonic() - started, cpu_seconds(pids) - cpu_before
    n = len(latencies.seconds)
    return Result(
        rps=n / elapsed,
        p50_ms=latencies.quantile(0.5) * 1000,
        p99_ms=latencies.quantile(0.99) * 1000,
        requests=n,
        errors=latencies.failures,
        cpu_us_per_request=cpu / max(n, 1) * 1e6,
    )


@contextlib.contextmanager
def services(setup: Setup, tag: str, workers: int, redis_url: str, db_url: str, slow_db_url: str) -> Iterator[dict]:
    """The three services of one configuration: cache on (database 200 ms late), L1 off, cache off."""
    # The default LOG_LEVEL: WARNING would drop the INFO access line, and the access-log rows would compare nothing.
    base = {**setup.env(workers), "REDIS_URL": redis_url, "CACHE_BLOOM": "false"}
    specs = {
        "app": {"DATABASE_URL": slow_db_url, "CACHE_KEY_PREFIX": tag},
        "l1-off": {"DATABASE_URL": db_url, "CACHE_KEY_PREFIX": f"l1{tag}", "CACHE_L1_MAX_ITEMS": "0"},
        "no-cache": {"DATABASE_URL": db_url, "CACHE_KEY_PREFIX": f"nc{tag}", "CACHE_ENABLED": "false"},
    }
    with contextlib.ExitStack() as stack:
        started = {}
        for name, env in specs.items():  # all three start at once: start-up is most of a short run
            started[name] = server = Gunicorn({**base, **env}, workers=workers)
            stack.callback(server.close)
            server.launch()
        for server in started.values():
            wait_until(lambda s=server: s.get("/health/live")[0] == 200, timeout=60)
        yield started


def measure_setup(servers: dict, cold: Iterator[str], seconds: float, connections: int) -> dict[str, Result]:
    """Every row for one configuration; `cold` yields paths of items nothing has read yet."""
    app, l1_off, no_cache = servers["app"], servers["l1-off"], servers["no-cache"]
    hot = "/items/item-hot-0"  # seed_items numbers its ids
    for server in (app, l1_off):  # fill the tiers, unmeasured
        wait_until(lambda s=server: s.get(hot)[0] == 200, timeout=30)
        measure(server.base + hot, 1.0, connections)

    def wrk_row(server: Gunicorn, path: str) -> Result:
        return measure(server.base + path, seconds, connections, pids=process_tree(server.proc.pid))  # type: ignore[union-attr]

    results = {
        ROWS[0]: wrk_row(app, hot),
        ROWS[1]: wrk_row(l1_off, hot),
        ROWS[2]: wrk_row(no_cache, hot),
        ROWS[3]: wrk_row(app, "/health/live"),
        ROWS[4]: timed(app, lambda: burst(app.port, [next(cold)] * 200, 200, timeout=30)),
        ROWS[5]: timed(app, lambda: burst(app.port, cold, 64, timeout=30, seconds=seconds)),
    }
    with stalled(app.port, STALLED):
        results[ROWS[6]] = timed(app, lambda: burst(app.port, ["/health/live"] * 100, 10, timeout=1.0))
    return results


def run(setups: list[Setup], worker_counts: list[int], seconds: float, pg_base: str) -> dict:
    table: dict[tuple[int, str], dict[str, Result]] = {}
    with contextlib.ExitStack() as stack:
        redis_server = stack.enter_context(RedisServer())
        db_url = stack.enter_context(postgres_schema_url(pg_base))
        seed_items(db_url, 50_000)
        seed_items(db_url, 1, prefix="item-hot")
        proxy = TcpProxy(urllib.parse.urlsplit(db_url).port or 5432, delay=DB_DELAY)
        stack.callback(proxy.close)
        slow_db_url = with_port(db_url, proxy.port)
        cold = (f"/items/item-{n}" for n in itertools.count())
        for workers in worker_counts:
            connections = 16 if workers == 1 else 32 * workers
            for number, setup in enumerate(setups):
                began = time.monotonic()
                with services(setup, f"w{workers}s{number}:", workers, redis_server.url, db_url, slow_db_url) as found:
                    table[workers, setup.name] = measure_setup(found, cold, seconds, connections)
                print(f"{workers} worker(s), {setup.name} ({time.monotonic() - began:.0f} s):", flush=True)
                for row, result in table[workers, setup.name].items():
                    print(
                        f"    {row}: {result.rps:,.0f} req/s, {result.cpu_us_per_request:.0f} us CPU/req, "
                        f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, failures {result.errors}",
                        flush=True,
                    )
    return table


def ratio(value: float, baseline: float, meaningful: object = True) -> str:
    return f"{value / baseline:.2f}" if meaningful and baseline else "-"


def markdown(table: dict, setups: list[Setup], worker_counts: list[int]) -> list[str]:
    lines = []
    for workers in worker_counts:
        today = table[workers, TODAY]
        lines += [
            "",
            f"**{workers} worker{'s' if workers > 1 else ''}** (ratios: to {TODAY}, same run)",
            "",
            "| row | configuration | req/s | ratio | CPU us/req | ratio | p50 ms | p99 ms | failures |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in ROWS:
            base = today[row]
            for setup in setups:
                r = table[workers, setup.name][row]
                cpu = f"{r.cpu_us_per_request:.0f}" if r.requests else "-"
                lines.append(
                    f"| {row} | {setup.name} | {r.rps:,.0f} | {ratio(r.rps, base.rps)} | {cpu} | "
                    f"{ratio(r.cpu_us_per_request, base.cpu_us_per_request, r.requests and base.requests)} | "
                    f"{r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.errors} |"
                )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--database-url", default=os.environ.get("TEST_DATABASE_URL"))
    args = parser.parse_args()
    if not args.database_url:
        raise SystemExit("set TEST_DATABASE_URL (or --database-url) to a PostgreSQL database bench may use")
    setups, worker_counts, seconds = (SETUPS[:2], [1], 1.0) if args.quick else (SETUPS, [1, 2], args.seconds)
    started = time.monotonic()
    table = run(setups, worker_counts, seconds, args.database_url)
    command = "python -m bench.serving --quick" if args.quick else f"python -m bench.serving --seconds {seconds:g}"
    section = "\n".join(
        [
            "## Serving: the gunicorn defaults against today's",
            "",
            f"`{command}` (PostgreSQL; {machine()}; {time.monotonic() - started:.0f} s). One redis-server; wrk -t1,",
            "16 connections per worker for one worker, 32 per worker for two; Python clients for the cold, slow and",
            f"stalled rows ({STALLED} connections that sent half a request line; ordinary GETs on new connections with",
            "a 1 s timeout: a failure is one that got no answer). One run: ratios within 5% are noise.",
            *markdown(table, setups, worker_counts),
        ]
    )
    publish("serving", section, write=not args.quick)


if __name__ == "__main__":
    main()
