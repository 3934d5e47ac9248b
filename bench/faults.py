"""Issue 16's fault-injection run at length: 2 gunicorn instances x 2 workers on PostgreSQL (the first
through a PgProxy) and a redis-server, 3 writers and 4 readers, the faults of tests/integration/test_faults.py
one after another, round after round, for `--seconds`; the checker judges every fault window.

    python -m bench.faults [--seconds 150] [--l1-ttl 2] [--write]

Needs redis-server and TEST_DATABASE_URL (PostgreSQL). Prints one line per fault window (summed over the
rounds) and the healthy time; `--write` also puts the table in BENCHMARKS.md ("faults"). Exits 1 when any
window has a violation (stale, backwards, a "nothing was written" answer that committed).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict

from bench.report import machine, update_section
from tests.integration.fault_plan import committed_versions, database_faults, redis_faults, run_faults
from tests.integration.faults import FaultRun, Verdict
from tests.integration.fleet import TOKEN, fleet, recovered
from tests.pg_proxy import PgProxy
from tests.support import wait_until

COUNTS = ("reads", "writes", "read_failures", "write_failures", "stale", "backwards", "backwards_any")
MORE = ("committed_5xx", "unknown_committed")


def summed(verdicts: list[Verdict]) -> list[Verdict]:
    """One verdict per fault name (the rounds added up), healthy last."""
    totals: dict[str, Verdict] = defaultdict(lambda: Verdict(""))
    for verdict in verdicts:
        total = totals[verdict.name]
        total.name = verdict.name
        for name in (*COUNTS, *MORE):
            setattr(total, name, getattr(total, name) + getattr(verdict, name))
        total.examples += verdict.examples[: max(0, 5 - len(total.examples))]
    healthy = totals.pop("healthy", Verdict("healthy"))
    return [*totals.values(), healthy]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150.0, help="how long to keep injecting faults")
    parser.add_argument("--l1-ttl", type=float, default=2.0, help="CACHE_L1_TTL of the instances")
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args()
    postgres_url = os.environ.get("TEST_DATABASE_URL")
    if not postgres_url:
        sys.exit("bench.faults needs TEST_DATABASE_URL=postgresql://...")
    env = {"CACHE_L1_TTL": str(args.l1_ttl)}
    with fleet(postgres_url, proxy_type=PgProxy, proxied=1, **env) as (redis_server, servers, proxy, db_url):
        wait_until(lambda: recovered(servers), timeout=15)
        run = FaultRun([s.base for s in servers], TOKEN).start()
        began, rounds = time.monotonic(), 0
        while time.monotonic() - began < args.seconds:
            faults = [
                *database_faults(proxy, servers, run.keys, cut=8.0, round_=rounds),
                *redis_faults(redis_server, args.l1_ttl, down=5.0, frozen=args.l1_ttl * 2 + 1),
            ]
            run_faults(run, servers, faults, grace=3.0)
            rounds += 1
            print(f"round {rounds} done at {time.monotonic() - began:.0f}s", flush=True)
        run.stop()
        committed = committed_versions(db_url, run.keys)
    verdicts = summed(run.judge(committed))
    header = "| window | " + " | ".join((*COUNTS, *MORE)) + " |"
    lines = [
        f"`python -m bench.faults --seconds {args.seconds:g}` ({machine()}; {rounds} rounds, "
        f"CACHE_L1_TTL={args.l1_ttl:g} s). Violations are stale, backwards, backwards_any and committed_5xx.",
        "",
        header,
        "|---" * (len(COUNTS) + len(MORE) + 1) + "|",
        *(f"| {v.name} | " + " | ".join(str(getattr(v, n)) for n in (*COUNTS, *MORE)) + " |" for v in verdicts),
    ]
    print("\n".join(lines))
    for verdict in verdicts:
        for example in verdict.examples:
            print(f"  {verdict.name}: {example}")
    if args.write:
        update_section("faults", "\n".join(lines))
    sys.exit(1 if any(v.violations() for v in verdicts) else 0)


if __name__ == "__main__":
    main()
