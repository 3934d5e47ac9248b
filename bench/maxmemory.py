"""A Redis at maxmemory, under each maxmemory-policy (issue 27): a redis-server of its own at a small
maxmemory, full of other keys before the service starts, and one instance of 2 gunicorn workers.

    python -m bench.maxmemory [--seconds 20] [--items 300] [--maxmemory 2mb] [--l1-ttl 5] [--write]

For `--seconds` per policy, rounds: every item written (10 KB, incompressible), every third round a third of
them deleted, while 2 threads read random items (their fills race the writes); then every item read twice
through both workers, each read judged against the last acknowledged write (tests/integration/maxmemory.py):
stale (an older version), or resurrected (200 for a deleted item). Prints one row per policy; `--write` puts
the table in BENCHMARKS.md ("maxmemory"). Exits 1 when any read was stale or resurrected, or any request
failed.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator

import redis

from bench.report import machine, update_section
from tests.integration.consistency import request
from tests.integration.maxmemory import (
    POLICIES,
    Outcome,
    delete_all,
    lease_changes,
    read_round,
    refusals,
    service,
    warnings,
    write_round,
)
from tests.support import Gunicorn

SIZE = 10_000
TITLE = "## Maxmemory: a full Redis under each maxmemory-policy"
SETUP = (
    "One instance of 2 gunicorn workers on SQLite; a redis-server of its own, filled with other keys (TTL 1 h) "
    "before the service starts. Rounds of: every item written (10 KB, incompressible), every third round a "
    "third of them deleted, 2 threads reading random items meanwhile (fills racing the writes); then "
    "everything read twice, each read judged against the last acknowledged "
    "write: *stale* (an older version) or *resurrected* (200 for a deleted item). *Hit ratio*: reads "
    "answered without the database. *Lease takes*: times a worker took the change follower's lease (1: it "
    "never moved). *Refusals*: `cache_redis_refusals_total`. Only `noeviction` is supported "
    "([WALKTHROUGH §7](docs/WALKTHROUGH.md#7-lru-vs-lfu-and-redis-maxmemory-policy)): a 0 under another "
    "policy says the race an eviction reopens did not happen in this run, not that it cannot."
)
HEADER = (
    "| maxmemory-policy | reads | hit ratio (no database) | from Redis | stale | resurrected | failed requests "
    "| warnings a minute | lease takes | refusals counted | keys evicted |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


@contextlib.contextmanager
def racing_reads(server: Gunicorn, ids: list[str], threads: int = 2) -> Iterator[None]:
    """Read random items (not judged) while the block writes them."""
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            request(server.base, "GET", f"/items/{random.choice(ids)}")

    readers = [threading.Thread(target=read, daemon=True) for _ in range(threads)]
    for reader in readers:
        reader.start()
    try:
        yield
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=15)


def run_policy(policy: str, args: argparse.Namespace) -> str:
    ids = [f"mm-{n}" for n in range(args.items)]
    with (
        tempfile.TemporaryDirectory() as tmp,
        service(policy, args.maxmemory, f"sqlite:///{tmp}/items.sqlite3", l1_ttl=args.l1_ttl) as (redis_server, server),
    ):
        out, started, round_no = Outcome(), time.monotonic(), 0
        while time.monotonic() - started < args.seconds:
            round_no += 1
            with racing_reads(server, ids):  # fills racing the writes: the stale-set race, if evictions reopen it
                expected: dict[str, int | None] = dict(write_round(server, ids, round_no, SIZE, out))
                if round_no % 3 == 0:
                    gone = ids[round_no % 3 :: 3]
                    delete_all(server, gone, out)
                    expected.update(dict.fromkeys(gone))
            read_round(server, expected, 2, out)
        minutes = (time.monotonic() - started) / 60
        with redis.Redis.from_url(redis_server.url) as client:
            evicted = client.info("stats")["evicted_keys"]
        logged = warnings(server)
        failed = out.write_failures + out.read_failures
        row = (
            f"| {policy} | {out.reads} | {out.hit_ratio():.2f} | {out.tiers['redis'] / max(1, out.reads):.2f} "
            f"| {out.stale} | {out.resurrected} | {failed} | {len(logged) / minutes:.1f} | {lease_changes(server)} "
            f"| {refusals(server):.0f} | {evicted} |"
        )
        if out.examples:
            print(f"{policy}: {out.examples}", file=sys.stderr)
        for line, count in Counter(re.sub(r"\d+", "N", line)[:150] for line in logged).most_common(6):
            print(f"  {policy} warned {count}x: {line}", file=sys.stderr)
        return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="per policy")
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--maxmemory", default="2mb")
    parser.add_argument("--l1-ttl", type=float, default=5.0)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--write", action="store_true", help="put the table in BENCHMARKS.md")
    args = parser.parse_args()
    rows = []
    print(HEADER, flush=True)
    for policy in args.policies.split(","):
        rows.append(run_policy(policy, args))
        print(rows[-1], flush=True)
    table = "\n".join([HEADER, *rows])
    if args.write:
        command = (
            f"python -m bench.maxmemory --seconds {args.seconds:g} --items {args.items} "
            f"--maxmemory {args.maxmemory} --l1-ttl {args.l1_ttl:g}"
        )
        update_section("maxmemory", f"{TITLE}\n\n`{command}` ({machine()}). {SETUP}\n\n{table}")
    violations = [row for row in rows if any(cell.strip() != "0" for cell in row.split("|")[5:8])]
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
