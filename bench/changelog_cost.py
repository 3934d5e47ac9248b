"""What the change-log triggers cost the service's own writes: upserts/s through the store with the
triggers and without them, on both backends, in alternating rounds of one run (A B A B ...).

    python -m bench.changelog_cost [--rounds 7] [--writes 2000] [--database-url postgresql://...]

PostgreSQL: one scratch schema, `ALTER TABLE items DISABLE/ENABLE TRIGGER USER` between rounds. SQLite: one
scratch file, its triggers dropped and re-created between rounds. The service's statements are complete
without the triggers (they only log and fix up outside writes), so both arms store the same rows. Every
figure is the median over rounds; the ratio is the median of per-round-pair ratios. Writes the
"changelog_cost" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator

from bench.report import machine, publish
from db import open_store
from db.base import ItemStore
from tests.support import postgres_schema_url, sql_connection

IDS = 500  # the writes cycle over these ids: one create each, then updates
BODY = {"name": "widget", "tags": ["a", "b"], "price": 12.5, "stock": {"here": 3, "there": 9}}


def upserts_per_s(store: ItemStore, writes: int, offset: int) -> float:
    started = time.perf_counter()
    for n in range(offset, offset + writes):
        store.upsert(f"item-{n % IDS}", {**BODY, "n": n})
    return writes / (time.perf_counter() - started)


@contextlib.contextmanager
def postgres_toggle(url: str) -> Iterator[Callable[[bool], None]]:
    with sql_connection(url) as conn:

        def set_triggers(on: bool) -> None:
            conn.execute(f"ALTER TABLE items {'ENABLE' if on else 'DISABLE'} TRIGGER USER")

        yield set_triggers


@contextlib.contextmanager
def sqlite_toggle(url: str) -> Iterator[Callable[[bool], None]]:
    with sql_connection(url) as conn:
        triggers = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'items'")
        saved = triggers.fetchall()
        present = [True]

        def set_triggers(on: bool) -> None:
            if on != present[0]:
                for name, sql in saved:
                    conn.execute(sql if on else f"DROP TRIGGER {name}")
                present[0] = on

        yield set_triggers


def run(
    url: str,
    toggle: Callable[[str], contextlib.AbstractContextManager[Callable[[bool], None]]],
    rounds: int,
    writes: int,
) -> dict[str, float]:
    store = open_store(url)
    store.init_schema()
    upserts_per_s(store, IDS, 0)  # warm up: create every id, fill caches and prepared statements
    with_rates, without_rates, ratios = [], [], []
    with toggle(url) as set_triggers:
        for r in range(rounds):
            set_triggers(True)
            with_rate = upserts_per_s(store, writes, (2 * r + 1) * writes)
            set_triggers(False)
            without_rate = upserts_per_s(store, writes, (2 * r + 2) * writes)
            with_rates.append(with_rate)
            without_rates.append(without_rate)
            ratios.append(with_rate / without_rate)
        set_triggers(True)
    store.close()
    return {
        "with": statistics.median(with_rates),
        "without": statistics.median(without_rates),
        "ratio": statistics.median(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--writes", type=int, default=2000, help="upserts per round and arm")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="a PostgreSQL database the benchmark may create a scratch schema in",
    )
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        results["SQLite"] = run(f"sqlite:///{scratch}/items.sqlite3", sqlite_toggle, args.rounds, args.writes)
    with postgres_schema_url(args.database_url) as url:
        results["PostgreSQL"] = run(url, postgres_toggle, args.rounds, args.writes)
    lines = [
        "## Change log: what the triggers cost the service's own writes",
        "",
        f"`python -m bench.changelog_cost --rounds {args.rounds} --writes {args.writes}` ({machine()}).",
        f"One thread, upserts through the store over {IDS} ids (updates of ~130-byte bodies), triggers on and",
        "off in alternating rounds of one run; medians over rounds. Aim: at most 15% slower (ratio >= 0.85).",
        "",
        "| backend | upserts/s with triggers | without | ratio (with / without) |",
        "|---|---|---|---|",
        *[f"| {name} | {r['with']:,.0f} | {r['without']:,.0f} | {r['ratio']:.2f} |" for name, r in results.items()],
    ]
    publish("changelog_cost", "\n".join(lines))


if __name__ == "__main__":
    main()
