"""What conditional writes and idempotency keys cost, against a plain write in the same run: through the
store, and through the HTTP API in one process, on SQLite and PostgreSQL, in alternating rounds
(A B C ... A B C ...).

    python -m bench.write_cost [--rounds 7] [--writes 1000] [--database-url postgresql://...]

Store arms (ops/s, one thread): `upsert` (one autocommit statement: the write path before issue 12, kept
for tools), `upsert_if` unconditional (today's plain write: one transaction bounded by a deadline),
`upsert_if` with If-Match, a keyed create (create_keyed: claim, write and record in one transaction), and
a replay (claim_key of a completed key: the idempotency lookup). HTTP arms (requests/s through Flask's
test client, real Redis): PUT, PUT with If-Match, POST, POST with a new Idempotency-Key, POST replayed.
Every figure is the median over rounds; every ratio the median of per-round ratios to the plain write of
that round. Writes the
"write_cost" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable

from app import create_app
from bench.report import machine, update_section
from cache import service as cache_service
from db import UNCONDITIONAL, Deadline, IfVersionIn, KeyedCreate, open_store
from db.base import ItemStore, WriteResult
from tests.support import RedisServer, postgres_schema_url

IDS = 200  # each arm cycles over ids of its own: one create each, then updates
BODY = {"name": "widget", "tags": ["a", "b"], "price": 12.5, "stock": {"here": 3, "there": 9}}
TIMEOUT = 10.0
Op = Callable[[int], object]
NOTES = [
    "Reading it: today's plain write is one transaction bounded by the request's deadline, sent with its COMMIT",
    "as one query (PostgreSQL: BEGIN, the SET LOCALs, the statement, COMMIT), where the write before issue 12 was",
    "one autocommit statement: the `upsert (autocommit)` row is the price of the deadline in the store; in a",
    "whole request it is diluted by Flask, Redis and the network. If-Match adds only a WHERE on the version to",
    "the same statement; over HTTP a PUT with it goes through Flask, where a plain PUT takes the fast path",
    "(routes/fast_path.py). A keyed create is one transaction of two round trips: the claim, then the write and the",
    "key's record with the COMMIT (a duplicate waits for it in the database). A replay is the claim that finds",
    "the key, its lookup and the COMMIT, and no write: in the store about a plain write on PostgreSQL, faster",
    "on SQLite and over HTTP, where it skips Redis.",
]


def per_s(op: Op, writes: int, offset: int) -> float:
    started = time.perf_counter()
    for n in range(offset, offset + writes):
        op(n)
    return writes / (time.perf_counter() - started)


def store_arms(store: ItemStore) -> dict[str, Op]:
    versions: dict[str, int] = {}
    completed = []

    def deadline() -> Deadline:
        return Deadline.after(TIMEOUT)

    def plain(n: int) -> object:
        return store.upsert_if(f"u-{n % IDS}", BODY, UNCONDITIONAL, deadline())

    def if_match(n: int) -> object:
        item_id = f"m-{n % IDS}"
        expect = IfVersionIn(frozenset({versions[item_id]})) if item_id in versions else UNCONDITIONAL
        result = store.upsert_if(item_id, BODY, expect, deadline())
        assert isinstance(result, WriteResult), result
        versions[item_id] = result.item.version
        return result

    def keyed(n: int) -> object:
        create = KeyedCreate(uuid.uuid4().hex, "print", f"k-{n % IDS}")
        if len(completed) < IDS:
            completed.append(create)
        return store.create_keyed(create, BODY, UNCONDITIONAL, TIMEOUT + 1, deadline())

    return {
        "upsert_if, unconditional (plain write)": lambda n: store.upsert_if(
            f"u-{n % IDS}", BODY, UNCONDITIONAL, deadline()
        ),
        "upsert (autocommit, before #12)": lambda n: store.upsert(f"a-{n % IDS}", BODY),
        "upsert_if, If-Match": if_match,
        "keyed create (claim + write + record, one transaction)": keyed,
        "replay (key lookup)": lambda n: store.claim_key(completed[n % len(completed)], TIMEOUT + 1, deadline()),
    }


def http_arms(client) -> dict[str, Op]:
    etags: dict[str, str] = {}
    body = json.dumps(BODY)
    headers = {"Content-Type": "application/json"}
    replay_keys: list[str] = []

    def put_if_match(n: int) -> object:
        item_id = f"hm-{n % IDS}"
        extra = {"If-Match": etags[item_id]} if item_id in etags else {}
        response = client.put(f"/items/{item_id}", data=body, headers={**headers, **extra})
        assert response.status_code in (200, 201), response.data
        etags[item_id] = response.headers["ETag"]
        return response

    def post_keyed(n: int) -> object:
        key = uuid.uuid4().hex
        if len(replay_keys) < IDS:
            replay_keys.append(key)
        return client.post("/items", data=body, headers={**headers, "Idempotency-Key": key})

    def post_replay(n: int) -> object:
        response = client.post("/items", data=body, headers={**headers, "Idempotency-Key": replay_keys[n % IDS]})
        assert response.headers.get("Idempotent-Replayed") == "true"
        return response

    return {
        "PUT (plain write)": lambda n: client.put(f"/items/hp-{n % IDS}", data=body, headers=headers),
        "PUT with If-Match": put_if_match,
        "POST": lambda n: client.post("/items", data=body, headers=headers),
        "POST with a new Idempotency-Key": post_keyed,
        "POST replayed (key lookup)": post_replay,
    }


def measure(arms: dict[str, Op], rounds: int, writes: int, baselines: dict[str, str]) -> dict[str, dict[str, float]]:
    """Median ops/s per arm, and the median per-round ratio to its baseline arm."""
    for op in arms.values():  # warm up: create every id and key, prepare statements
        for n in range(IDS):
            op(n)
    rates: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(rounds):
        for i, (name, op) in enumerate(arms.items()):
            rates[name].append(per_s(op, writes, IDS + (r * len(arms) + i) * writes))
    return {
        name: {
            "rate": statistics.median(rates[name]),
            "ratio": statistics.median(a / b for a, b in zip(rates[name], rates[baselines[name]], strict=True)),
            "baseline": baselines[name],
        }
        for name in arms
    }


def run(database_url: str, redis_url: str, rounds: int, writes: int) -> tuple[dict, dict]:
    store = open_store(database_url)
    store.init_schema()
    arms = store_arms(store)
    plain = "upsert_if, unconditional (plain write)"
    store_results = measure(arms, rounds, writes, {name: plain for name in arms})
    store.close()
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "LOG_LEVEL": "WARNING", "REQUEST_METRICS": "false"}
    app = create_app({**env, "CACHE_KEY_PREFIX": f"bench-{uuid.uuid4().hex[:8]}:"})
    arms = http_arms(app.test_client())
    baselines = {name: "POST" if name.startswith("POST") else "PUT (plain write)" for name in arms}
    http_results = measure(arms, rounds, writes, baselines)
    app.extensions["item_store"].close()
    cache_service.reset()
    return store_results, http_results


def table(title: str, unit: str, results: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    lines = [f"| {title} | backend | {unit} | ratio to | ratio |", "|---|---|---|---|---|"]
    for backend, arms in results.items():
        for name, r in arms.items():
            ratio = "baseline" if r["baseline"] == name else f"{r['ratio']:.2f}"
            lines.append(f"| {name} | {backend} | {r['rate']:,.0f} | {r['baseline']} | {ratio} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--writes", type=int, default=1000, help="operations per round and arm")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="a PostgreSQL database the benchmark may create a scratch schema in",
    )
    args = parser.parse_args()
    store_results, http_results = {}, {}
    with RedisServer() as redis_server:
        with tempfile.TemporaryDirectory() as scratch:
            sqlite_url = f"sqlite:///{scratch}/items.sqlite3"
            store_results["SQLite"], http_results["SQLite"] = run(
                sqlite_url, redis_server.url, args.rounds, args.writes
            )
        with postgres_schema_url(args.database_url) as url:
            store_results["PostgreSQL"], http_results["PostgreSQL"] = run(
                url, redis_server.url, args.rounds, args.writes
            )
    lines = [
        "## Write cost: conditional writes and idempotency keys against a plain write",
        "",
        f"`python -m bench.write_cost --rounds {args.rounds} --writes {args.writes}` ({machine()}).",
        f"One thread; each arm cycles over {IDS} ids of its own (~90-byte bodies); arms alternate within every",
        "round; figures are medians over rounds, ratios medians of per-round ratios to the plain write of the",
        "same round (ratio >= 0.90: at most 10% slower). HTTP: Flask's test client in one process, real Redis.",
        "",
        *table("store call", "ops/s", store_results),
        "",
        *table("HTTP request", "requests/s", http_results),
        "",
        *NOTES,
    ]
    print("\n".join(lines))
    update_section("write_cost", "\n".join(lines))


if __name__ == "__main__":
    main()
