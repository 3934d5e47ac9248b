"""Latency per tier, one request at a time and at a stated concurrency, and what one L1 entry costs.

    python -m bench.latency [--samples 400] [--concurrency 8] [--database-url postgresql://...]

Starts a redis-server of its own and two instances of the production start (`gunicorn app:app`, the
production gunicorn.conf.py with its defaults: 2 workers x 4 threads each) sharing it and one database
(SQLite; PostgreSQL from `--database-url` / TEST_DATABASE_URL as a second column). Instance A is measured;
instance B (the same settings and CACHE_BLOOM=false) fills Redis for A the way another instance of a fleet
would, and answers the one 404 that must reach the database. Every sample is one GET over a keep-alive
connection (http.client), timed by the client, and its X-Cache header must name the tier measured: a
sample from any other tier stops the run. Tiers are interleaved request by request, so that a busy
moment of the machine falls on all of them alike; /health/live (no I/O) is the baseline in the same run.

- L1 hit: one hot item, read once on the connection first (its worker's L1 then holds it).
- Redis hit: a fresh id per sample, read once through B just before (Redis has it, no worker of A has).
- miss to the database: a fresh id per sample that no one read.
- 404, Bloom: an id that never existed (A's Bloom filter answers).
- 404, cached negative: an id that never existed, read once through B (no Bloom filter: it reached the
  database and cached its absence in Redis), then on A.
- 404, database: an id that never existed, on B (no Bloom filter, nothing cached: the database answers).

L1 bytes per entry: a third instance with one worker (WEB_CONCURRENCY=1) reads N items of about 170 bytes
from Redis into its L1; the worker's VmRSS before and after, over N (cache_l1_entries confirms N landed).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import re
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.load import process_tree
from bench.report import machine, publish
from tests.integration.fleet import metric
from tests.support import Gunicorn, RedisServer, postgres_schema_url, seed_items, wait_until

ITEM_FIELDS = '{"name":"widget","price":9.5,"tags":["a","b"],"note":"' + "x" * 51 + '"}'  # ~170-byte body


@dataclass
class Tier:
    name: str
    expected: str  # X-Cache every sample must carry
    status: int
    prepare: Callable[[int], str]  # sample number -> path (after any unmeasured fill)
    on_peer: bool = False  # measured on B, not A
    tolerated: tuple[int, str] | None = None  # another answer this tier may give: counted, not sampled
    samples: list[float] = field(default_factory=list)  # milliseconds
    other: int = 0  # answers that were `tolerated`


class Client:
    """One keep-alive connection per instance; GET returns (status, X-Cache, ms)."""

    def __init__(self, ports: tuple[int, int]) -> None:
        self.connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for port in ports]

    def get(self, path: str, peer: bool = False) -> tuple[int, str, float]:
        connection = self.connections[1 if peer else 0]
        started = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        elapsed = (time.perf_counter() - started) * 1000
        return response.status, response.headers.get("X-Cache", "-"), elapsed

    def close(self) -> None:
        for connection in self.connections:
            connection.close()


def tiers_for(client: Client, worker: int) -> list[Tier]:
    """The tiers one client measures; `worker` keeps every client's fresh ids apart."""

    def fill_on_peer(path: str) -> str:
        client.get(path, peer=True)
        return path

    hot = "/items/hot-0"
    for _ in range(3):  # into the L1 of the worker that holds this connection
        client.get(hot)
    return [
        Tier("baseline: /health/live", "-", 200, lambda n: "/health/live"),
        Tier("L1 hit", "lru", 200, lambda n: hot),
        Tier("Redis hit (fresh id, filled by B)", "redis", 200, lambda n: fill_on_peer(f"/items/r{worker}-{n}")),
        Tier("miss to the database (fresh id)", "db", 200, lambda n: f"/items/d{worker}-{n}"),
        # A false positive of the Bloom filter (about 1% by design) is a database 404: counted, not sampled.
        Tier("404, Bloom filter", "bloom", 404, lambda n: f"/items/never-b{worker}-{n}", tolerated=(404, "db")),
        Tier(
            "404, cached negative (filled by B)", "negative", 404, lambda n: fill_on_peer(f"/items/never-n{worker}-{n}")
        ),
        Tier("404, database (B: no Bloom filter)", "db", 404, lambda n: f"/items/never-d{worker}-{n}", on_peer=True),
    ]


def measure(ports: tuple[int, int], worker: int, samples: int, barrier: threading.Barrier) -> list[Tier]:
    client = Client(ports)
    try:
        plan = tiers_for(client, worker)
        barrier.wait(60)
        for n in range(samples):
            for tier in plan:  # interleaved: one sample of each tier in turn
                path = tier.prepare(n)
                status, x_cache, ms = client.get(path, peer=tier.on_peer)
                if (status, x_cache) == tier.tolerated:
                    tier.other += 1
                    continue
                if (status, x_cache) != (tier.status, tier.expected):
                    raise AssertionError(f"{tier.name}: GET {path} answered {status} X-Cache {x_cache}")
                tier.samples.append(ms)
        return plan
    finally:
        client.close()


@dataclass
class Mode:
    samples: dict[str, list[float]]  # tier name -> milliseconds, over every client
    other: int  # answers tolerated, not sampled (the Bloom filter's false positives)


def run_mode(ports: tuple[int, int], concurrency: int, samples: int, first_worker: int) -> Mode:
    """`concurrency` clients at once, each `samples` of every tier."""
    barrier = threading.Barrier(concurrency)
    results: list[list[Tier]] = [[] for _ in range(concurrency)]
    errors: list[BaseException] = []

    def one(index: int) -> None:
        try:
            results[index] = measure(ports, first_worker + index, samples, barrier)
        except BaseException as exc:  # noqa: BLE001 - reported below, after every client stopped
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    merged: dict[str, list[float]] = {}
    for plan in results:
        for tier in plan:
            merged.setdefault(tier.name, []).extend(tier.samples)
    return Mode(merged, sum(tier.other for plan in results for tier in plan))


def quantile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[round(q * 100) - 1]


def rss_kib(pid: int) -> int:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert match, pid
    return int(match.group(1))


def subscribed(server: Gunicorn) -> bool:
    """Every worker's listener subscribed: L1 is bypassed until then."""
    return metric(server, "cache_listener_subscribed") == 1


def l1_bytes_per_entry(env: dict[str, str], peer: Gunicorn, entries: int) -> tuple[float, int]:
    """(bytes per entry by the worker's VmRSS, body bytes) for `entries` items read from Redis into L1.
    Redis is filled through B before the measured instance starts: a fill announced while it runs would
    leave a version floor in its L1 (an entry without a body), which a later read only replaces."""
    warm = 500  # the allocator and the connection pools warmed first, on other ids
    client = Client((peer.port, peer.port))
    try:
        for n in range(warm + entries):
            client.get(f"/items/m-{n}")
    finally:
        client.close()
    with Gunicorn(env, workers=1) as one:
        wait_until(lambda: subscribed(one), timeout=30)
        client = Client((one.port, peer.port))
        try:
            for n in range(warm):
                client.get(f"/items/m-{n}")
            assert one.proc is not None
            worker = process_tree(one.proc.pid)[1]
            before, held = rss_kib(worker), metric(one, "cache_l1_entries")
            for n in range(warm, warm + entries):
                status, x_cache, _ = client.get(f"/items/m-{n}")
                assert (status, x_cache) == (200, "redis"), (status, x_cache)
            after, landed = rss_kib(worker), metric(one, "cache_l1_entries") - held
            assert landed == entries, f"{landed:g} entries landed in L1, not {entries} (held {held:g} before)"
            body = len(one.get("/items/m-0")[2])
        finally:
            client.close()
    return (after - before) * 1024 / entries, body


@contextlib.contextmanager
def stack(
    database_url: str, redis_url: str, prefix: str, seeds: dict[str, int]
) -> Iterator[tuple[Gunicorn, Gunicorn, dict[str, str]]]:
    """Instances A (measured) and B (CACHE_BLOOM=false) over one database, seeded with `seeds` (prefix: count)."""
    for kind, count in seeds.items():
        seed_items(database_url, count, prefix=kind, fields=lambda i: ITEM_FIELDS)
    env = {"REDIS_URL": redis_url, "DATABASE_URL": database_url, "CACHE_KEY_PREFIX": prefix}
    with Gunicorn(env) as a, Gunicorn({**env, "CACHE_BLOOM": "false"}) as b:
        wait_until(lambda: subscribed(a) and subscribed(b), timeout=60)
        probes = itertools.count()  # a new id each time: an answer from the database would be cached
        wait_until(lambda: a.get(f"/items/never-probe-{next(probes)}")[1].get("X-Cache") == "bloom", timeout=60)
        yield a, b, env


def run_database(label: str, database_url: str, redis_url: str, args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"lat{abs(hash(label)) % 10_000}:"
    fresh = max(args.samples, args.samples_concurrent)
    seeds = {"hot": 1, "m": args.l1_entries + 500}
    seeds |= {f"{kind}{w}": fresh for kind in ("r", "d") for w in range(args.concurrency + 1)}
    with stack(database_url, redis_url, prefix, seeds) as (a, b, env):
        ports = (a.port, b.port)
        one = run_mode(ports, 1, args.samples, first_worker=0)
        many = run_mode(ports, args.concurrency, args.samples_concurrent, first_worker=1)
        per_entry, body = l1_bytes_per_entry(env, b, args.l1_entries)
    return {"one": one, "many": many, "l1_bytes": per_entry, "body": body}


def cells(samples: list[float], baseline: list[float]) -> str:
    p50, p99 = quantile(samples, 0.5), quantile(samples, 0.99)
    return f"{p50:.2f} / {p99:.2f} ({p50 / quantile(baseline, 0.5):.1f}x)"


def table(columns: dict[str, dict[str, Any]], concurrency: int) -> list[str]:
    heads = [f"{label}: {mode}" for label in columns for mode in ("one at a time", f"{concurrency} at once")]
    rows = ["| tier (X-Cache) | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    names = list(next(iter(columns.values()))["one"].samples)
    for name in names:
        row = []
        for result in columns.values():
            for mode in ("one", "many"):
                row.append(cells(result[mode].samples[name], result[mode].samples[names[0]]))
        rows.append(f"| {name} | " + " | ".join(row) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=400, help="per tier, one request at a time")
    parser.add_argument("--concurrency", type=int, default=8, help="clients at once (8: 2 workers x 4 threads)")
    parser.add_argument("--samples-concurrent", type=int, default=100, help="per tier and client, at once")
    parser.add_argument("--l1-entries", type=int, default=5000)
    parser.add_argument("--database-url", default=os.environ.get("TEST_DATABASE_URL"))
    parser.add_argument("--write", action="store_true", help="put the table in BENCHMARKS.md")
    args = parser.parse_args()
    started = time.monotonic()
    columns: dict[str, dict[str, Any]] = {}
    with RedisServer() as redis_server, tempfile.TemporaryDirectory() as tmp:
        columns["SQLite"] = run_database("sqlite", f"sqlite:///{tmp}/items.sqlite3", redis_server.url, args)
        if args.database_url:
            with postgres_schema_url(args.database_url) as url:
                columns["PostgreSQL"] = run_database("postgresql", url, redis_server.url, args)
    command = (
        f"python -m bench.latency --samples {args.samples} --concurrency {args.concurrency} "
        f"--samples-concurrent {args.samples_concurrent} --l1-entries {args.l1_entries}"
    )
    false_positives = "; ".join(
        f"{label}: {result['one'].other} of {args.samples} one at a time, {result['many'].other} of "
        f"{args.samples_concurrent * args.concurrency} at once"
        for label, result in columns.items()
    )
    memory = "; ".join(
        f"{label}: {result['l1_bytes']:,.0f} bytes per entry for a {result['body']}-byte item"
        for label, result in columns.items()
    )
    section = "\n".join(
        [
            "## Latency per tier: one request at a time and at once",
            "",
            f"`{command}` with `--database-url` for PostgreSQL ({machine()}; shared with other work while it ran; "
            f"{time.monotonic() - started:.0f} s).",
            "The production start (`gunicorn app:app`: 2 workers x 4 threads, keep-alive 5 s), a redis-server, all "
            "on loopback; client-side milliseconds over keep-alive connections (Python http.client), "
            "p50 / p99 and, in brackets, the p50 as a multiple of the baseline's in the same mode. "
            f"One at a time: {args.samples} samples a tier; at once: {args.concurrency} clients, "
            f"{args.samples_concurrent} samples a tier each. How each tier is reached, and why a Redis hit "
            "needs a fresh id: the docstring of bench/latency.py; every sample's X-Cache was checked.",
            "",
            *table(columns, args.concurrency),
            "",
            f"Ids that never existed which the Bloom filter let through (its false positives, answered by the "
            f"database and left out of the Bloom row): {false_positives}.",
            f"L1 memory, by the worker's VmRSS over {args.l1_entries:,} entries read from Redis into one worker's "
            f"L1 (allocator overhead included): {memory}.",
            "",
            "Reading it: an L1 hit is answered before Flask's routing (the fast path), the baseline goes through "
            "Flask, so it is the cheaper of the two. A 404 from the Bloom filter or a cached negative costs about "
            "what a Redis hit costs, one from the database about what a miss costs (the fleet lock, the database "
            f"read, the fill). The columns at once carry the client's own {args.concurrency} threads on the same "
            "2 cores: compare their ratios, not their milliseconds, with the column one at a time; the p99s are "
            "the machine's noise as much as the service's.",
        ]
    )
    publish("latency", section, write=args.write)
    print(json.dumps({label: round(result["l1_bytes"]) for label, result in columns.items()}))


if __name__ == "__main__":
    main()
