"""What an Idempotency-Key costs the database: bytes per key at the largest sizes a request can make
(a 255-character key, a 64-character id), and issue 24's case, a client that posts one 60 KB item again
and again with a new key each time. Table size with its indexes: PostgreSQL's pg_total_relation_size,
SQLite's dbstat pages.

    python -m bench.key_size [--keys 5000] [--database-url postgresql://...]

Writes the "key_size" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile

from bench.report import machine, update_section
from db import UNCONDITIONAL, Deadline, KeyedCreate, open_store
from db.base import ItemStore
from db.keys import MAX_KEYS
from tests.support import postgres_schema_url

NEVER = Deadline.never()
SQLITE_SIZE = """
SELECT sum(pgsize) FROM dbstat WHERE name IN ('idempotency_keys', 'idempotency_keys_created_at')
    OR name IN (SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'idempotency_keys')
"""
POSTGRES_SIZE = "SELECT pg_total_relation_size('idempotency_keys')"


def table_bytes(store: ItemStore, postgres: bool) -> int:
    with store._within(NEVER) as fetch:  # type: ignore[attr-defined]
        return int(fetch(POSTGRES_SIZE if postgres else SQLITE_SIZE, {})[0][0])


def keyed_writes(store: ItemStore, count: int, key_of: str, item_of: str, fields: dict[str, str]) -> None:
    for n in range(count):
        key, item_id = key_of.format(n=n)[-255:], item_of.format(n=n)[-64:]
        claim = store.claim_key(KeyedCreate(key, "f" * 64, item_id), 60.0, NEVER)
        store.upsert_claimed(claim, fields, UNCONDITIONAL, NEVER)  # type: ignore[arg-type]


def measure(url: str, keys: int) -> tuple[float, int]:
    postgres = url.startswith("postgres")
    store = open_store(url)
    store.init_schema()
    empty = table_bytes(store, postgres)
    blob = secrets.token_urlsafe(45_000)  # 60 KB that does not compress (PostgreSQL's TOAST would)
    keyed_writes(store, 200, "retry-{n}", "one-item", {"blob": blob})
    retries = table_bytes(store, postgres) - empty
    with store._within(NEVER) as fetch:  # type: ignore[attr-defined]
        fetch("DELETE FROM idempotency_keys", {})
    base = table_bytes(store, postgres)  # PostgreSQL keeps the pages: measured from here
    keyed_writes(store, keys, "k" * 255 + "{n:08d}", "i" * 64 + "{n:08d}", {})
    per_key = (table_bytes(store, postgres) - base) / keys
    store.close()
    return per_key, retries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--database-url", default=os.environ.get("TEST_DATABASE_URL"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("SQLite", *measure(f"sqlite:///{tmp}/keys.sqlite3", args.keys)))
    if args.database_url:
        with postgres_schema_url(args.database_url) as url:
            rows.append(("PostgreSQL", *measure(url, args.keys)))
    lines = [
        "## Idempotency keys: what one costs the database",
        "",
        f"`python -m bench.key_size --keys {args.keys}` ({machine()}).",
        f"Per key: {args.keys} keys of 255 characters for 64-character ids (the largest a request can make), table",
        "and indexes. Retries: 200 POSTs of one 60 KB item, each with a new key (issue 24: 13 MB before keys kept",
        "only status, id and version). Worst case: IDEMPOTENCY_KEYS_MAX keys of the largest size.",
        "",
        f"| backend | bytes per key | 200 retries of a 60 KB item | worst case at the default {MAX_KEYS:,} keys |",
        "|---|---|---|---|",
    ]
    for backend, per_key, retries in rows:
        worst = per_key * MAX_KEYS / 1e6
        lines.append(f"| {backend} | {per_key:,.0f} | {retries / 1e3:,.0f} KB | {worst:,.0f} MB |")
    report = "\n".join(lines)
    print(report)
    update_section("key_size", report)


if __name__ == "__main__":
    main()
