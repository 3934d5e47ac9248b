"""Invalidation lag and staleness across processes: 2 gunicorn instances x 2 workers, one redis-server.

    python -m bench.coherence [--seconds 30]

Runs the consistency checker of tests/integration under two loads (the checker's full read/write mix,
which saturates this machine's cores, and a light stream of writes), and reports the publish -> applied
lag that every worker's histogram recorded, summed over both instances.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import threading
import time
from collections import defaultdict

from bench.report import histogram_quantile, machine, update_section
from tests.integration.consistency import Checker, request
from tests.support import Gunicorn, RedisServer, postgres_schema_url, wait_until


def lag_buckets(servers: list[Gunicorn]) -> list[tuple[float, float]]:
    summed: dict[float, float] = defaultdict(float)
    for server in servers:
        text = server.get("/metrics")[2].decode()
        for le, count in re.findall(r'^cache_invalidation_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.M):
            summed[float(le)] += float(count)
    return sorted(summed.items())


def minus(after: list[tuple[float, float]], before: list[tuple[float, float]]) -> list[tuple[float, float]]:
    old = dict(before)
    return [(le, n - old.get(le, 0.0)) for le, n in after]


def light_writes(bases: list[str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        request(bases[n % 2], "PUT", f"/items/light-{n % 50}", b"{}")
        n += 1
        time.sleep(0.02)


def run(seconds: float, database_url: str | None) -> str:
    rows = []
    with RedisServer() as redis_server, tempfile.TemporaryDirectory() as tmp:
        db_ctx = postgres_schema_url(database_url) if database_url else None
        db_url = db_ctx.__enter__() if db_ctx else f"sqlite:///{tmp}/items.sqlite3"
        env = {"REDIS_URL": redis_server.url, "DATABASE_URL": db_url}
        servers = [Gunicorn(env, workers=2).start(), Gunicorn(env, workers=2).start()]
        try:
            bases = [s.base for s in servers]
            wait_until(lambda: all(b"cache_listener_subscribed 1.0" in s.get("/metrics")[2] for s in servers), 15)
            for name, load in (("checker mix (2 writers, 4 readers)", "checker"), ("light: 50 writes/s", "light")):
                before = lag_buckets(servers)
                if load == "checker":
                    checker = Checker(bases).start()
                    time.sleep(seconds)
                    checker.stop()
                    report = checker.report()
                    detail = (
                        f"{report.reads} reads, {report.writes} writes, {report.stale_reads} stale, "
                        f"max staleness {report.max_staleness * 1000:.1f} ms"
                    )
                else:
                    threading.Thread(target=light_writes, args=(bases, seconds)).run()
                    detail = "no readers"
                time.sleep(0.5)
                buckets = minus(lag_buckets(servers), before)
                p50, p99 = histogram_quantile(buckets, 0.5), histogram_quantile(buckets, 0.99)
                rows.append(f"| {name} | {int(buckets[-1][1])} | {p50 * 1000:.2f} | {p99 * 1000:.2f} | {detail} |")
                print(rows[-1], flush=True)
        finally:
            for server in servers:
                server.close()
            if db_ctx:
                db_ctx.__exit__(None, None, None)
    db = "PostgreSQL" if database_url else "SQLite"
    return "\n".join(
        [
            "## Coherence: invalidation lag across processes",
            "",
            f"`python -m bench.coherence --seconds {seconds:g}` ({db}; {machine()}).",
            "2 gunicorn instances x 2 workers (the production gunicorn.conf.py), one redis-server, all on loopback. "
            "Lag is publish (inside the",
            "writer's Lua script) to applied (in every other worker), from the workers' own histograms, quantiles",
            "interpolated within buckets as Prometheus does. Staleness is measured by the client-side checker.",
            "",
            "| load | invalidations applied | lag p50 (ms) | lag p99 (ms) | checker |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--database-url", default=os.environ.get("TEST_DATABASE_URL"))
    args = parser.parse_args(argv)
    update_section("coherence", run(args.seconds, args.database_url))
    print("updated BENCHMARKS.md")


if __name__ == "__main__":
    main()
