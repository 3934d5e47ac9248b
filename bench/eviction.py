"""Eviction under uniform reads: what a small, full Redis does to the hit ratio and to correctness, under
each maxmemory-policy asked for (issue 28).

    python -m bench.eviction [--seconds 15] [--items 3000] [--cases noeviction@2mb,allkeys-lru@2mb,...] [--write]

Per case: a redis-server of its own at that maxmemory and policy, filled with other keys (TTL 1 h) before
the service starts (tests/integration/maxmemory.py), and one instance of 2 gunicorn workers on SQLite with
L1 off (CACHE_L1_MAX_ITEMS=0: every hit is a Redis hit, so the ratio is Redis's own). `--items` items of
about 1 KB (incompressible) are seeded in the database and read once each (not measured: Redis then holds
what fits); for `--seconds`, 4 threads GET ids drawn uniformly
while one thread PUTs ids drawn uniformly. Every GET is judged against the writes acknowledged before it
began: *stale* when it answers a version older than one acknowledged more than the invalidation lag (LAG,
0.2 s) before it began; *within the lag* when older only than one acknowledged in that last 0.2 s. Hit
ratio: GETs answered from Redis. A case `unlimited@0` (no maxmemory) is the reference: every item fits.
Exits 1 when any read was stale or any request failed.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import redis

from bench.report import machine, update_section
from tests.integration.consistency import request
from tests.integration.maxmemory import LAG, TOKEN, body_of, refusals, service
from tests.support import Gunicorn, seed_items

SIZE = 1_000
CASES = "unlimited@0,noeviction@2mb,allkeys-lru@2mb,volatile-lfu@2mb,allkeys-lru@1400kb"
TITLE = "## Eviction: the hit ratio and correctness under uniform reads"
HEADER = (
    "| maxmemory-policy | maxmemory | reads | hit ratio (Redis) | stale | within the lag | writes "
    "| failed requests | refusals counted | keys evicted | copies Redis held at the end (version floors) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


@dataclass
class Acks:
    """Per id, the versions acknowledged and when (monotonic), in order."""

    times: dict[str, list[float]] = field(default_factory=dict)
    versions: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, item_id: str, version: int, at: float) -> None:
        with self.lock:
            self.times.setdefault(item_id, []).append(at)
            self.versions.setdefault(item_id, []).append(version)

    def newest_before(self, item_id: str, at: float) -> int:
        with self.lock:
            n = bisect.bisect_right(self.times[item_id], at)
            return self.versions[item_id][n - 1] if n else 0


@dataclass
class Tally:
    reads: int = 0
    writes: int = 0
    failed: int = 0
    stale: int = 0
    within_lag: int = 0
    tiers: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def judge(self, item_id: str, began: float, status: int, x_cache: str, body: bytes, acks: Acks) -> None:
        with self.lock:
            self.reads += 1
            self.tiers[x_cache] += 1
            if status != 200:
                self.failed += 1
                return
            version = json.loads(body)["version"]
            if version < acks.newest_before(item_id, began - LAG):
                self.stale += 1
                if len(self.examples) < 5:
                    self.examples.append(f"{item_id} v{version} via {x_cache}")
            elif version < acks.newest_before(item_id, began):
                self.within_lag += 1


def drive(server: Gunicorn, ids: list[str], acks: Acks, seconds: float, readers: int = 4) -> Tally:
    tally, stop = Tally(), threading.Event()

    def read() -> None:
        while not stop.is_set():
            item_id = random.choice(ids)
            began = time.monotonic()
            status, headers, body = request(server.base, "GET", f"/items/{item_id}")
            tally.judge(item_id, began, status, headers.get("X-Cache", "-"), body, acks)

    def write() -> None:
        while not stop.is_set():
            item_id = random.choice(ids)
            status, _, body = request(server.base, "PUT", f"/items/{item_id}", body_of(0, SIZE), token=TOKEN)
            with tally.lock:
                tally.writes += 1
                tally.failed += status not in (200, 201)
            if status in (200, 201):
                acks.record(item_id, json.loads(body)["version"], time.monotonic())

    threads = [threading.Thread(target=read) for _ in range(readers)] + [threading.Thread(target=write)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    return tally


def copies_held(client: redis.Redis) -> tuple[int, int]:
    """Items Redis holds a copy of, and version floors (a version without a body: left where a fill was
    refused for memory, or by a write the change follower applied; the Redis tier's SET_IF_NEWER, FLOOR)."""
    keys = list(client.scan_iter(match="*ev-*", count=1000))
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hexists(key, "b")
            pipe.hexists(key, "f")
        found = pipe.execute()
    return sum(found[0::2]), sum(found[1::2])


def warm(server: Gunicorn, ids: list[str]) -> None:
    """Read every item once (not judged): Redis holds what it can before the measured reads."""
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda item_id: request(server.base, "GET", f"/items/{item_id}"), ids))


def run_case(case: str, args: argparse.Namespace) -> str:
    policy, maxmemory = case.split("@")
    label = "noeviction (no maxmemory: reference)" if policy == "unlimited" else policy
    policy = "noeviction" if policy == "unlimited" else policy
    with tempfile.TemporaryDirectory() as tmp:
        database_url = f"sqlite:///{tmp}/items.sqlite3"
        ids = seed_items(database_url, args.items, "ev", lambda i: json.dumps({"data": os.urandom(SIZE // 2).hex()}))
        acks = Acks()
        for item_id in ids:
            acks.record(item_id, 1, 0.0)  # seeded at version 1
        settings = {"CACHE_L1_MAX_ITEMS": "0", "LOG_LEVEL": "WARNING"}
        with service(policy, maxmemory, database_url, settings=settings) as (redis_server, server):
            warm(server, ids)
            tally = drive(server, ids, acks, args.seconds)
            with redis.Redis.from_url(redis_server.url) as client:
                evicted = client.info("stats")["evicted_keys"]
                held = copies_held(client)
            refused = refusals(server)
    if tally.examples:
        print(f"{case}: {tally.examples}", file=sys.stderr)
    shown = "none" if maxmemory == "0" else maxmemory
    return (
        f"| {label} | {shown} | {tally.reads} | {tally.tiers['redis'] / max(1, tally.reads):.3f} | {tally.stale} "
        f"| {tally.within_lag} | {tally.writes} | {tally.failed} | {refused:.0f} | {evicted} "
        f"| {held[0]} of {args.items} ({held[1]}) |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="per case")
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--cases", default=CASES, help="policy@maxmemory, comma-separated (unlimited@0: none)")
    parser.add_argument("--write", action="store_true", help="put the table in BENCHMARKS.md")
    args = parser.parse_args()
    print(HEADER, flush=True)
    rows = []
    for case in args.cases.split(","):
        rows.append(run_case(case, args))
        print(rows[-1], flush=True)
    if args.write:
        command = f"python -m bench.eviction --seconds {args.seconds:g} --items {args.items} --cases {args.cases}"
        update_section(
            "eviction",
            f"{TITLE}\n\n`{command}` ({machine()}; shared with other work while it ran). {SETUP}\n\n"
            + "\n".join([HEADER, *rows]),
        )
    failed = [row for row in rows if row.split("|")[5].strip() != "0" or row.split("|")[8].strip() != "0"]
    return 1 if failed else 0


SETUP = (
    "Per row: a redis-server of its own at that maxmemory and policy, filled with other keys (TTL 1 h) before "
    "the service starts; one instance of 2 gunicorn workers on SQLite with L1 off (`CACHE_L1_MAX_ITEMS=0`: "
    "every hit is a Redis hit); items of about 1 KB (incompressible) seeded in the database; 4 threads GET ids "
    "drawn uniformly while 1 thread PUTs ids drawn uniformly, after one unmeasured read of every item. "
    "*Hit ratio*: GETs answered from Redis. *Stale*: a "
    "GET that answered a version older than one acknowledged more than 0.2 s (the invalidation lag, generously) "
    "before it began; *within the lag*: older only than one acknowledged in that last 0.2 s. *Refusals*: "
    "`cache_redis_refusals_total` (Redis answering OOM). Only `noeviction` is supported; a 0 in *stale* under "
    "another policy says the race an eviction reopens did not happen in this run, not that it cannot.\n\n"
    "Reading it: under `noeviction` a full Redis refuses every fill, so every read goes to the database and "
    "stays correct (a refused write leaves a version floor, which no older copy can pass). Under the evicting "
    "policies each fill evicts another copy (the filler keys first, then items), so uniform reads over more "
    "items than fit hit about as often as the share Redis holds, less the churn. Where maxmemory is below "
    "what Redis needs besides the keys (buffers, scripts, pub/sub), even `allkeys-lru` evicts everything "
    "and still refuses: the last row."
)


if __name__ == "__main__":
    sys.exit(main())
