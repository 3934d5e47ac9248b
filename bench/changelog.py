"""Outside writers: how fast a change made with plain SQL reaches every worker of every instance, what one
statement updating every row costs the fleet, what the triggers cost the service's own writes, and what
the cache inspector finds over a mixed run. 2 gunicorn instances x 2 workers, one redis-server.

    python -m bench.changelog [--writes 100] [--rows 100000] [--seconds 60]

Needs redis-server and TEST_DATABASE_URL (PostgreSQL); the propagation part also runs on SQLite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import redis

from bench.report import machine, publish
from cache.changelog.follower import applied_key
from tests.integration.consistency import request
from tests.support import Gunicorn, RedisServer, postgres_schema_url, seed_items, sql_connection, wait_until

READS = 4  # consecutive reads per instance that must all show the new version (both workers answer)


@contextlib.contextmanager
def two_instances(db_url: str) -> Iterator[list[Gunicorn]]:
    with RedisServer() as redis_server:
        env = {"REDIS_URL": redis_server.url, "DATABASE_URL": db_url}
        servers = [Gunicorn(env, workers=2).start(), Gunicorn(env, workers=2).start()]
        try:
            wait_until(lambda: all(b"cache_listener_subscribed 1.0" in s.get("/metrics")[2] for s in servers), 20)
            yield servers
        finally:
            for server in servers:
                server.close()


def version_everywhere(servers: list[Gunicorn], item_id: str) -> set[int]:
    seen = set()
    for server in servers:
        for _ in range(READS):
            status, _, body = request(server.base, "GET", f"/items/{item_id}")
            seen.add(json.loads(body)["version"] if status == 200 else 0)
    return seen


def propagation(db_url: str, writes: int) -> list[float]:
    """Seconds from an outside statement's commit to every instance serving it; a fifth are inserts of ids
    cached as absent just before."""
    seed_items(db_url, 50)
    latencies = []
    with two_instances(db_url) as servers, sql_connection(db_url) as sql:
        for n in range(writes):
            if n % 5 == 0:
                item_id, expected = f"new-{n}", 1
                assert version_everywhere(servers, item_id) == {0}  # cached as absent
                statement = f"""INSERT INTO items (id, fields) VALUES ('{item_id}', '{{"n": {n}}}')"""
            else:
                item_id = f"item-{random.randrange(50)}"
                expected = max(version_everywhere(servers, item_id)) + 1  # and cached everywhere now
                statement = f"""UPDATE items SET fields = '{{"n": {n}}}' WHERE id = '{item_id}'"""
            started = time.monotonic()
            sql.execute(statement)
            while version_everywhere(servers, item_id) != {expected}:
                if time.monotonic() - started > 30:
                    raise AssertionError(f"{item_id} not served at version {expected} within 30 s")
            latencies.append(time.monotonic() - started)
    return latencies


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Reader(threading.Thread):
    """GETs of random seeded ids from both instances, timing each."""

    def __init__(self, servers: list[Gunicorn], rows: int) -> None:
        super().__init__(daemon=True)
        self.servers, self.rows, self.samples, self.stop = servers, rows, [], threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            started = time.monotonic()
            request(self.servers[n % 2].base, "GET", f"/items/item-{random.randrange(self.rows)}")
            self.samples.append((started, time.monotonic() - started))
            n += 1

    def p99(self, since: float, until: float) -> float:
        return quantile([d for t, d in self.samples if since <= t < until] or [0.0], 0.99)


def worker_rss_mib(servers: list[Gunicorn]) -> float:
    from bench.load import process_tree

    pids = [pid for s in servers for pid in process_tree(s.proc.pid) if pid != s.proc.pid]
    return max(int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1)) for pid in pids) / 1024


def bulk_update(db_url: str, rows: int) -> dict[str, float]:
    """One UPDATE of every row: when the change follower announced the log applied past it, when a sample
    agreed everywhere, read p99 before and during, RSS."""
    seed_items(db_url, rows)
    with two_instances(db_url) as servers, sql_connection(db_url) as sql:
        sample = random.sample(range(rows), 200)
        for n in sample:
            version_everywhere(servers, f"item-{n}")  # cached everywhere at version 1
        rss_before = worker_rss_mib(servers)
        reader = Reader(servers, rows)
        reader.start()
        time.sleep(5)
        started = time.monotonic()
        sql.execute("""UPDATE items SET fields = '{"bulk": true}'""")
        committed = time.monotonic()
        head = sql.execute("SELECT max(seq) FROM item_changes").fetchone()[0]
        applied = AppliedWatch(servers[0].env["REDIS_URL"], head)
        pending = {f"item-{n}" for n in sample}
        # 8 checkers: one pass over the sample (200 ids x 2 instances x READS requests) in a fraction of a
        # second rather than several, so the pass's own length hardly adds to the time measured.
        with ThreadPoolExecutor(8) as checkers:
            while pending:
                versions = checkers.map(lambda i: (i, version_everywhere(servers, i)), sorted(pending))
                pending = {i for i, seen in versions if seen != {2}}
                if time.monotonic() - committed > 120:
                    raise AssertionError(f"{len(pending)} sampled ids still stale after 120 s")
        agreed = time.monotonic()
        time.sleep(1)
        reader.stop.set()
        reader.join(10)
        return {
            "statement_s": committed - started,
            "applied_s": applied.at(timeout=10) - committed,
            "agreed_s": agreed - committed,
            "p99_before_ms": reader.p99(started - 5, started) * 1000,
            "p99_during_ms": reader.p99(committed, agreed) * 1000,
            "rss_before_mib": rss_before,
            "rss_after_mib": worker_rss_mib(servers),
        }


class AppliedWatch(threading.Thread):
    """When the change follower announces in Redis the log applied up to `head` (its announcements, and the
    floors before them, are in Redis by then)."""

    def __init__(self, redis_url: str, head: int) -> None:
        super().__init__(daemon=True)
        self.client, self.head, self.seen = redis.Redis.from_url(redis_url), head, threading.Event()
        self.when = float("nan")
        self.start()

    def run(self) -> None:
        while int(self.client.get(applied_key("")) or -1) < self.head:
            time.sleep(0.01)
        self.when = time.monotonic()
        self.seen.set()

    def at(self, timeout: float) -> float:
        self.seen.wait(timeout)
        return self.when


def trigger_cost(db_url: str, seconds: float, rounds: int = 3) -> tuple[float, float]:
    """The service's own writes (PUT) per second with and without the change-log triggers, alternating."""
    results: dict[str, list[float]] = {"with": [], "without": []}
    with two_instances(db_url) as servers, sql_connection(db_url) as sql:
        triggers = Triggers(sql)
        for _ in range(rounds):
            for arm in ("with", "without"):
                if arm == "with":
                    triggers.enable()
                else:
                    triggers.disable()
                results[arm].append(put_rate(servers, seconds))
        triggers.enable()
    return statistics.median(results["with"]), statistics.median(results["without"])


class Triggers:
    """The items table's triggers switched off and on: PostgreSQL can disable them; SQLite drops and
    re-creates them from their own definitions."""

    def __init__(self, sql) -> None:
        self.sql = sql
        self.postgres = not hasattr(sql, "total_changes")  # sqlite3 connections have it; psycopg's do not
        query = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'items'"
        self.definitions = [] if self.postgres else sql.execute(query).fetchall()

    def disable(self) -> None:
        if self.postgres:
            self.sql.execute("ALTER TABLE items DISABLE TRIGGER USER")
        for name, _ in self.definitions:
            self.sql.execute(f"DROP TRIGGER IF EXISTS {name}")

    def enable(self) -> None:
        if self.postgres:
            self.sql.execute("ALTER TABLE items ENABLE TRIGGER USER")
        for name, definition in self.definitions:
            self.sql.execute(f"DROP TRIGGER IF EXISTS {name}")
            self.sql.execute(definition)


def put_rate(servers: list[Gunicorn], seconds: float, threads: int = 8) -> float:
    done, deadline = [0] * threads, time.monotonic() + seconds

    def loop(t: int) -> None:
        while time.monotonic() < deadline:
            request(servers[t % 2].base, "PUT", f"/items/w-{t}-{done[t] % 100}", b'{"w": 1}')
            done[t] += 1

    workers = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(done) / seconds


def inspector_run(db_url: str, seconds: float) -> dict[str, float]:
    """Service reads and writes plus an outside writer for `seconds`; what the inspector counted."""
    seed_items(db_url, 500)
    with two_instances(db_url) as servers, sql_connection(db_url) as sql:
        reader = Reader(servers, 500)
        reader.start()
        deadline, n = time.monotonic() + seconds, 0
        while time.monotonic() < deadline:
            item_id = f"item-{random.randrange(500)}"
            if n % 2:
                sql.execute(f"""UPDATE items SET fields = '{{"sql": {n}}}' WHERE id = '{item_id}'""")
            else:
                request(servers[n % 4 // 2].base, "PUT", f"/items/{item_id}", b'{"svc": 1}')
            n += 1
            time.sleep(0.02)
        time.sleep(2)  # the last suspects' bound passes
        reader.stop.set()
        text = "".join(s.get("/metrics")[2].decode() for s in servers)
        counts = {}
        for name in ("cache_inspector_checked_total", "cache_inspector_stale_total"):
            counts[name] = sum(float(v) for v in re.findall(rf'^{name}\{{tier="[a-z]+"\}} (\S+)$', text, re.M))
        counts["writes"] = n
        return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writes", type=int, default=100)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    database_url = os.environ.get("TEST_DATABASE_URL")
    if not database_url:
        raise SystemExit("set TEST_DATABASE_URL to a PostgreSQL database the benchmark may create schemas in")
    lines = [
        "## Outside writers: the change log",
        "",
        f"`python -m bench.changelog --writes {args.writes} --rows {args.rows} --seconds {args.seconds:g}`, "
        f"{machine()}. 2 instances x 2 workers, one redis-server; outside writes are plain SQL statements on a "
        f"driver connection of their own. A change counts as served when {READS} reads in a row from each "
        "instance return its version.",
        "",
        "| outside write reaches every worker | n | p50 | p99 | max |",
        "|---|---|---|---|---|",
    ]
    with postgres_schema_url(database_url) as db_url:
        pg = propagation(db_url, args.writes)
    with tempfile.TemporaryDirectory() as tmp:
        lite = propagation(f"sqlite:///{tmp}/items.sqlite3", args.writes)
    for name, values in (("PostgreSQL (LISTEN/NOTIFY)", pg), ("SQLite (polled)", lite)):
        q = [quantile(values, p) * 1000 for p in (0.5, 0.99, 1.0)]
        lines.append(f"| {name} | {len(values)} | {q[0]:.0f} ms | {q[1]:.0f} ms | {q[2]:.0f} ms |")
        print(lines[-1], flush=True)
    with postgres_schema_url(database_url) as db_url:
        bulk = bulk_update(db_url, args.rows)
    print(bulk, flush=True)
    costs = {}
    with postgres_schema_url(database_url) as db_url:
        costs["PostgreSQL"] = trigger_cost(db_url, 5.0)
    with tempfile.TemporaryDirectory() as tmp:
        costs["SQLite"] = trigger_cost(f"sqlite:///{tmp}/items.sqlite3", 5.0)
    print(costs, flush=True)
    with postgres_schema_url(database_url) as db_url:
        found = inspector_run(db_url, args.seconds)
    print(found, flush=True)
    lines += [
        "",
        f"One `UPDATE items SET fields = ...` of all {args.rows:,} rows (PostgreSQL), the items cached everywhere "
        "first, a reader hitting random ids throughout:",
        "",
        "| statement | every tier agrees on a 200-id sample after the commit | read p99 before | read p99 during "
        "| worker RSS before -> after |",
        "|---|---|---|---|---|",
        f"| {bulk['statement_s']:.1f} s | {bulk['agreed_s']:.1f} s | {bulk['p99_before_ms']:.0f} ms "
        f"| {bulk['p99_during_ms']:.0f} ms | {bulk['rss_before_mib']:.0f} -> {bulk['rss_after_mib']:.0f} MiB |",
        "",
        "The triggers' cost on the service's own writes (PUT, 8 threads over both instances, 3 alternating "
        "rounds of 5 s; aim: at most 15% slower): "
        + "; ".join(
            f"{name} {w:,.0f} req/s with, {wo:,.0f} without (**{w / wo:.2f}x**)" for name, (w, wo) in costs.items()
        )
        + ".",
        "",
        f"The cache inspector over {args.seconds:g} s of reads, {found['writes']:.0f} writes (half of them outside "
        f"SQL): {found['cache_inspector_checked_total']:,.0f} entries checked, "
        f"**{found['cache_inspector_stale_total']:.0f} stale** a full bound (1 s) after first seen.",
    ]
    publish("changelog", "\n".join(lines))


if __name__ == "__main__":
    main()
