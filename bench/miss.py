"""What miss protection saves: database loads for a stampede and for ids that never existed, with each
protection on and off, and the time and memory of warming.

    python -m bench.miss            (needs TEST_DATABASE_URL: PostgreSQL, as in production)

Counts, not timings: they do not depend on how busy the machine is.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import redis

from bench.report import machine, publish
from tests.integration.fleet import TOKEN, fleet, get_all, total, warm_peak_rss_kb
from tests.support import RedisServer, postgres_schema_url, seed_items, wait_until


def stampede(postgres_url: str, protection: bool) -> float:
    env = {"CACHE_STAMPEDE_PROTECTION": str(protection).lower()}
    with fleet(postgres_url, db_delay=0.05, seed=1, **env) as (_, servers, _, _):
        before = total(servers, "cache_db_loads_total")
        statuses = get_all(servers, ["/items/item-0"] * 200, threads=200)
        assert all(status == 200 for status, _ in statuses)
        return total(servers, "cache_db_loads_total") - before


def penetration(postgres_url: str, bloom: bool) -> float:
    with fleet(postgres_url, seed=10_000, CACHE_BLOOM=str(bloom).lower()) as (redis_server, servers, _, _):
        client = redis.Redis.from_url(redis_server.url)
        if bloom:
            wait_until(lambda: client.exists("{bloom}:meta") and not client.exists("{bloom}:build-lock"), 60)
        status, _, body = servers[0].request("POST", "/admin/cache/warm", headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 202, body
        wait_until(lambda: client.exists("item:item-9999") and not client.exists("{bloom}:build-lock"), 60)
        before = total(servers, "cache_db_loads_total")
        get_all(servers, [f"/items/never-{n}" for n in range(5000)], threads=8)
        return total(servers, "cache_db_loads_total") - before


def warming(postgres_url: str) -> list[str]:
    rows = []
    with RedisServer() as redis_server:
        for n in (10_000, 100_000):
            with postgres_schema_url(postgres_url) as db_url:
                seed_items(db_url, n)
                env = {"REDIS_URL": redis_server.url, "DATABASE_URL": db_url, "CACHE_KEY_PREFIX": f"w{n}:"}
                started = time.monotonic()
                peak_kb, _ = warm_peak_rss_kb(env)
                rows.append(
                    f"| warm {n:,} items (`flask warm-cache`) | {time.monotonic() - started:.1f} s | "
                    f"peak RSS {peak_kb / 1024:.1f} MiB |"
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default=os.environ.get("TEST_DATABASE_URL"))
    args = parser.parse_args()
    if not args.database_url:
        raise SystemExit("set TEST_DATABASE_URL (or --database-url) to a PostgreSQL database bench may use")
    on, off = stampede(args.database_url, True), stampede(args.database_url, False)
    bloom_on, bloom_off = penetration(args.database_url, True), penetration(args.database_url, False)
    warm_rows = warming(args.database_url)
    section = "\n".join(
        [
            "## Miss protection: what each protection saves",
            "",
            f"`python -m bench.miss` (PostgreSQL; {machine()}). 2 gunicorn instances x 2 workers, one",
            "redis-server; database loads summed from `cache_db_loads_total` over both instances.",
            "",
            "| scenario | protection on | protection off |",
            "|---|---|---|",
            f"| 200 concurrent GETs of one cold key (DB +50 ms per round trip): database loads | {on:g} | {off:g} |",
            f"| 5,000 GETs of never-existing ids after warming 10,000: database reads (Bloom filter) "
            f"| {bloom_on:g} ({bloom_on / 50:.2f}%) | {bloom_off:g} ({bloom_off / 50:.0f}%) |",
            "",
            "| warming | time (process start to exit) | memory |",
            "|---|---|---|",
            *warm_rows,
        ]
    )
    publish("miss", section)
    print(json.dumps({"stampede": [on, off], "bloom": [bloom_on, bloom_off]}))


if __name__ == "__main__":
    main()
