"""What a write costs on the production start, against baselines measured in the same run: PUT and POST
through `gunicorn app:app` (2 workers, a redis-server of its own) on PostgreSQL and SQLite, and a bulk
change reaching every tier.

    python -m bench.writes [--seconds 5] [--rounds 3] [--rows 100000] [--baseline-tree DIR] [--write]

Per backend (and per source tree: this one, and with --baseline-tree an older export of the project, e.g.
`git archive 9015060 | tar -x -C DIR`, started the same way), in alternating rounds with wrk:
- PUT over 2,000 ids with 16 connections against GET /health/live on the same server (target >= 0.35x on
  PostgreSQL, >= 0.45x on SQLite);
- one connection: PUT p50 minus /health/live p50 (what a PUT adds to the server's own cost) against one
  raw transactional upsert's p50 from one client of this process (BEGIN, the same upsert, COMMIT; target
  within 1.5x);
- POST with a new Idempotency-Key each against plain POST, 16 connections (target >= 0.85x).
Then, on this tree and PostgreSQL only, bench.changelog's bulk update: one UPDATE of every row, how long
until a 200-id sample agrees everywhere, against the statement's own duration (target <= 1.5x).
Every figure is a median over rounds; every ratio the median of per-round ratios. Needs wrk, redis-server,
TEST_DATABASE_URL. With --write, the "writes" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import Result, cpu_seconds, idle_rate, process_tree, settle, split_cpus, wrk
from bench.report import machine, publish
from tests.support import ROOT, Gunicorn, RedisServer, postgres_schema_url

IDS = 2000  # put_ids.lua's ids
RAW_UPSERTS = 400  # per round, for the raw upsert's p50
BODY = '{"name":"bench write","price":9.5}'


class TreeGunicorn(Gunicorn):
    """`gunicorn app:app` started from `root` (this tree, or an export of an older commit)."""

    def __init__(self, env: dict[str, str], root: Path) -> None:
        super().__init__(env, workers=2)
        self.root = root

    def launch(self) -> subprocess.Popen[bytes]:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", self.app],
            cwd=self.root,
            env={**self.env, "PYTHONPATH": str(self.root)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        return self.proc


@dataclass
class Arm:
    """One server (a backend on a source tree) and what each round measured on it."""

    name: str
    backend: str
    server: Gunicorn
    raw_upsert: Callable[[], float]  # one raw transactional upsert's p50 (s) over RAW_UPSERTS
    results: dict[str, list[Result]] = field(default_factory=dict)
    raw_ms: list[float] = field(default_factory=list)

    def load(self, label: str, path: str, connections: int, seconds: float, script: str | None, env: dict) -> None:
        pids = process_tree(self.server.proc.pid)  # type: ignore[union-attr]
        before = cpu_seconds(pids)
        result = wrk(self.server.base + path, seconds, connections, script, env={"IDS": str(IDS), **env})
        result.cpu_us_per_request = (cpu_seconds(pids) - before) / max(result.requests, 1) * 1e6
        self.results.setdefault(label, []).append(result)
        print(
            f"  {self.name} {label}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
            f"{result.cpu_us_per_request:.0f} us CPU/req, errors {result.errors}",
            flush=True,
        )

    def median(self, label: str, attr: str = "rps") -> float:
        return statistics.median(getattr(r, attr) for r in self.results[label])

    def ratio(self, label: str, baseline: str) -> float:
        pairs = zip(self.results[label], self.results[baseline], strict=True)
        return statistics.median(a.rps / b.rps for a, b in pairs)

    def added_ms(self) -> list[float]:
        """Per round: PUT p50 minus /health/live p50, one connection."""
        pairs = zip(self.results["PUT x1"], self.results["live x1"], strict=True)
        return [put.p50_ms - live.p50_ms for put, live in pairs]


NOTES = [
    "Reading it: a plain PUT is answered before Flask (routes/fast_path.py), an update of an id the worker has",
    "seen written makes no Bloom filter add (one Redis call, not two), and the body is read in one piece. The",
    "store's part is one round trip to PostgreSQL (BEGIN, the deadline's SET LOCALs, the statement and COMMIT",
    "as one query), with about half the driver CPU of four calls (table below). What a PUT costs beyond",
    "/health/live is gunicorn's request parsing, the database round trip, the versioned set, the JSON, and each",
    "worker's listener waking for its announcement. The machine was shared: per-round ratios move by up to 0.2.",
]
CPU_COLUMNS = ("PUT x16", "live x16", "POST x16", "keyed POST x16")
SCENARIOS = [  # label, path, connections, script, wrk env
    ("live x16", "/health/live", 16, None, {}),
    ("PUT x16", "/", 16, "put_ids.lua", {}),
    ("POST x16", "/items", 16, "post.lua", {}),
    ("keyed POST x16", "/items", 16, "post.lua", {"KEYED": "1"}),
    ("live x1", "/health/live", 1, None, {}),
    ("PUT x1", "/", 1, "put_ids.lua", {}),
]


def pg_raw_upsert(url: str) -> Callable[[], float]:
    import psycopg

    from db.postgres_sql import STATEMENTS

    conn = psycopg.connect(url, autocommit=True)
    sql = STATEMENTS.upsert.encode()

    def one(n: int) -> None:
        with conn.transaction():
            conn.execute(sql, {"id": f"raw-{n % IDS}", "fields": BODY}).fetchall()

    return lambda: _p50(one)


def sqlite_raw_upsert(path: str) -> Callable[[], float]:
    from db.sqlite_sql import STATEMENTS

    conn = sqlite3.connect(path, isolation_level=None, timeout=5)

    def one(n: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(STATEMENTS.upsert, {"id": f"raw-{n % IDS}", "fields": BODY}).fetchall()
        conn.execute("COMMIT")

    return lambda: _p50(one)


def driver_costs(url: str, upserts: int = 2000, rounds: int = 3) -> dict[str, tuple[float, float]]:
    """CPU per upsert (this process's, the PostgreSQL backend's from /proc) for three ways to send one
    bounded write on one connection: CPU, unlike time, barely moves with what else runs on the machine."""
    import psycopg

    from db.postgres_sql import STATEMENTS

    upsert = STATEMENTS.upsert.encode()
    timeouts = b"SET LOCAL statement_timeout = 9999; SET LOCAL lock_timeout = 9999"

    def calls(conn: psycopg.Connection, n: int) -> None:  # the store before issue 26
        conn.execute(b"BEGIN; " + timeouts)
        conn.execute(upsert, {"id": f"raw-{n % IDS}", "fields": BODY}).fetchall()
        conn.execute(b"COMMIT")

    def pipeline(conn: psycopg.Connection, n: int) -> None:
        with conn.pipeline():
            conn.execute(b"BEGIN")
            conn.execute(
                b"SELECT set_config('statement_timeout', '9999', true), set_config('lock_timeout', '9999', true)"
            )
            cursor = conn.execute(upsert, {"id": f"raw-{n % IDS}", "fields": BODY})
            conn.execute(b"COMMIT")
        cursor.fetchall()

    def batched(conn: psycopg.Connection, n: int) -> None:  # the store now (db/postgres.py's _Batched)
        cursor = psycopg.ClientCursor(conn)
        statement = cursor.mogrify(upsert, {"id": f"raw-{n % IDS}", "fields": BODY}).encode()
        cursor.execute(b"BEGIN; " + timeouts + b"; " + statement + b"; COMMIT")
        for _ in range(3):
            cursor.nextset()
        cursor.fetchall()

    def cpu(op: Callable[[psycopg.Connection, int], None]) -> tuple[float, float]:
        with psycopg.connect(url, autocommit=True) as conn:
            backend = Path(f"/proc/{conn.info.backend_pid}/stat")
            for n in range(20):
                op(conn, n)
            backend_before, before = cpu_seconds_of(backend), time.process_time()
            for n in range(upserts):
                op(conn, n)
            return (time.process_time() - before) / upserts * 1e6, (
                cpu_seconds_of(backend) - backend_before
            ) / upserts * 1e6

    arms = {"four calls (before)": calls, "pipeline mode": pipeline, "one batched query (now)": batched}
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in arms}
    for _ in range(rounds):
        for name, op in arms.items():
            measured[name].append(cpu(op))
    return {
        name: (statistics.median(c for c, _ in values), statistics.median(b for _, b in values))
        for name, values in measured.items()
    }


def cpu_seconds_of(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _p50(op: Callable[[int], None]) -> float:
    times = []
    for n in range(RAW_UPSERTS):
        started = time.perf_counter()
        op(n)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@contextlib.contextmanager
def arms(trees: dict[str, Path], redis_url: str, pg_base: str, scratch: str) -> Iterator[list[Arm]]:
    """A server per backend and tree, each on a database of its own (its follower applies only its writes)."""
    with contextlib.ExitStack() as stack:
        found = []
        for number, (tree, root) in enumerate(trees.items()):
            sqlite_path = f"{scratch}/tree-{number}.sqlite3"
            pg_url = stack.enter_context(postgres_schema_url(pg_base))
            for backend, url in (("PostgreSQL", pg_url), ("SQLite", f"sqlite:///{sqlite_path}")):
                env = {"REDIS_URL": redis_url, "DATABASE_URL": url, "CACHE_KEY_PREFIX": f"t{number}-{backend}:"}
                server = stack.enter_context(TreeGunicorn(env, root))
                raw = pg_raw_upsert(url) if backend == "PostgreSQL" else sqlite_raw_upsert(sqlite_path)
                found.append(Arm(f"{backend}, {tree}", backend, server, raw))
        yield found


def measure_rounds(found: list[Arm], seconds: float, rounds: int) -> None:
    every_pid = [pid for arm in found for pid in process_tree(arm.server.proc.pid)]  # type: ignore[union-attr]
    for arm in found:  # warm up: create the ids, prepare statements
        for _label, path, connections, script, env in SCENARIOS:
            wrk(arm.server.base + path, 1, connections, script, env={"IDS": str(IDS), **env})
    idle = idle_rate(every_pid, 2.0)
    for number in range(1, rounds + 1):
        print(f"round {number}", flush=True)
        for arm in found:
            for label, path, connections, script, env in SCENARIOS:
                settle(every_pid, idle, timeout=10)  # what the last write scenario left (the follower's work)
                arm.load(label, path, connections, seconds, script, env)
            arm.raw_ms.append(arm.raw_upsert() * 1000)


def table(found: list[Arm]) -> list[str]:
    rows = [
        "| backend, tree | PUT x16 req/s | /health/live x16 | **PUT / live** | PUT x1 p50 - live x1 p50 "
        "| raw upsert p50 | **added / raw** | POST x16 | keyed POST x16 | **keyed / plain** "
        "| server CPU us: PUT / live / POST / keyed POST |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in found:
        added = statistics.median(arm.added_ms())
        raw = statistics.median(arm.raw_ms)
        ratios = [a / r for a, r in zip(arm.added_ms(), arm.raw_ms, strict=True)]
        rows.append(
            f"| {arm.name} | {arm.median('PUT x16'):,.0f} | {arm.median('live x16'):,.0f} "
            f"| **{arm.ratio('PUT x16', 'live x16'):.2f}x** | {added:.2f} ms | {raw:.2f} ms "
            f"| **{statistics.median(ratios):.2f}x** | {arm.median('POST x16'):,.0f} "
            f"| {arm.median('keyed POST x16'):,.0f} | **{arm.ratio('keyed POST x16', 'POST x16'):.2f}x** "
            f"| {' / '.join(str(round(arm.median(label, 'cpu_us_per_request'))) for label in CPU_COLUMNS)} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the bulk update (0: skip it)")
    parser.add_argument("--baseline-tree", type=Path, help="an export of an older commit to measure beside")
    parser.add_argument("--baseline-name", default="before", help="its name in the table")
    parser.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="a PostgreSQL database the benchmark may create scratch schemas in",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("bench.writes needs wrk (apt-get install wrk)")
    cpus = split_cpus()
    trees = {"this tree": ROOT}
    if args.baseline_tree:
        trees = {args.baseline_name: args.baseline_tree.resolve(), **trees}
    with RedisServer() as redis_server, tempfile.TemporaryDirectory() as scratch:
        with arms(trees, redis_server.url, args.database_url, scratch) as found:
            measure_rounds(found, args.seconds, args.rounds)
    with postgres_schema_url(args.database_url) as url:
        from db import open_store

        store = open_store(url)
        store.init_schema()
        store.close()
        costs = driver_costs(url)
    bulk = None
    if args.rows:
        from bench.changelog import bulk_update

        with postgres_schema_url(args.database_url) as url:
            bulk = bulk_update(url, args.rows)
    command = f"python -m bench.writes --seconds {args.seconds:g} --rounds {args.rounds} --rows {args.rows}"
    if args.baseline_tree:
        command += f" --baseline-tree DIR --baseline-name {args.baseline_name!r}"
    lines = [
        "## Writes: a PUT against the server's own cost and a raw upsert; keyed creates; a bulk change",
        "",
        f"`{command}` ({machine()}; {cpus or 'servers and wrk on shared CPUs'}; the machine was shared with other",
        "work, so only the ratios within one run mean much). `gunicorn app:app`, 2 workers, a redis-server of its",
        f"own; wrk, {args.rounds} alternating rounds of {args.seconds:g} s. PUT: {IDS:,} ids drawn at random; raw",
        f"upsert: BEGIN, the store's upsert statement, COMMIT from one client of the bench process ({RAW_UPSERTS} a",
        "round, p50). Server CPU: gunicorn's processes (master and workers, /proc) per request. Targets: PUT /",
        "live >= 0.35x (PostgreSQL), >= 0.45x (SQLite); added / raw <= 1.5x; keyed / plain >= 0.85x.",
        "",
        *table(found),
        "",
        *NOTES,
    ]
    lines += [
        "",
        "What sending one bounded upsert costs in CPU on one connection (2,000 upserts, median of 3 rounds;",
        "CPU, unlike time, barely moves with the machine's other load): this process (psycopg) and the",
        "PostgreSQL backend (/proc). The round trips: four calls 3, pipeline mode 1, one batched query 1.",
        "",
        "| how | client CPU us/upsert | backend CPU us/upsert |",
        "|---|---|---|",
        *(f"| {name} | {client:.0f} | {backend:.0f} |" for name, (client, backend) in costs.items()),
    ]
    if bulk is not None:
        lines += [
            "",
            f"One `UPDATE items SET fields = ...` of all {args.rows:,} rows (PostgreSQL, this tree, bench.changelog's",
            "bulk_update: 2 instances x 2 workers, a reader throughout): the statement took "
            f"{bulk['statement_s']:.1f} s; the change follower announced it applied {bulk['applied_s']:.1f} s after "
            f"its commit ({bulk['applied_s'] / bulk['statement_s']:.1f}x);",
            f"a 200-id sample agreed everywhere {bulk['agreed_s']:.1f} s after its commit "
            f"(**{bulk['agreed_s'] / bulk['statement_s']:.1f}x** the statement; target 1.5x); read p99 "
            f"{bulk['p99_before_ms']:.0f} ms before, {bulk['p99_during_ms']:.0f} ms during; worker RSS "
            f"{bulk['rss_before_mib']:.0f} -> {bulk['rss_after_mib']:.0f} MiB.",
        ]
    publish("writes", "\n".join(lines), write=args.write)


if __name__ == "__main__":
    main()
