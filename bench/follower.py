"""The change follower alone, in one process: how long it takes to apply a one-statement UPDATE of every
cached row, against the statement's own duration, and its CPU per change (the whole process: the follower's
thread and the thread listing the next batch).

    python -m bench.follower [--rows 100000] [--profile]

A real redis-server of its own and a scratch schema of TEST_DATABASE_URL (PostgreSQL); `--rows` items seeded
and warmed into Redis, the follower caught up; then one `UPDATE items SET fields = ...` by a plain SQL
connection, applied by `run_once` until caught up; then the same changes applied again (Redis already holds
their versions, as it holds the service's own writes). No listener and no gunicorn: BENCHMARKS.md "Writes"
has the fleet's figure (bench.changelog's bulk_update). Run it from another tree's root (with this file
copied there) to compare. `--profile`: cProfile of the first apply, by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time

from tests.support import RedisServer, postgres_schema_url, seed_items, sql_connection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    from app import create_app
    from cache import service
    from cache.changelog import warm
    from cache.changelog.follower import ChangeFollower

    database = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    with RedisServer() as redis_server, postgres_schema_url(database) as url:
        seed_items(url, args.rows)
        app = create_app({"REDIS_URL": redis_server.url, "DATABASE_URL": url, "API_TOKEN": "x" * 32})
        cache = service.running().cache
        cache.trust.follows_log = True
        follower = ChangeFollower(cache, app.extensions["item_store"])
        assert follower.hold_lease()
        while follower.run_once():
            pass
        warm.warm(cache, app.extensions["item_store"], warm.take_lock(cache))
        start = follower.cursor
        with sql_connection(url) as sql:
            began = time.perf_counter()
            sql.execute("""UPDATE items SET fields = '{"bulk": 1}'""")
            statement = time.perf_counter() - began
        profile = cProfile.Profile()
        if args.profile:
            profile.enable()
        seconds, cpu = apply_all(follower)
        profile.disable()
        follower.cursor = start
        again_seconds, again_cpu = apply_all(follower)
        follower.stop()
    print(
        f"statement {statement:.2f} s; applied in {seconds:.2f} s ({seconds / statement:.2f}x), "
        f"{cpu / args.rows * 1e6:.1f} us CPU a change; applied again (already in Redis) in "
        f"{again_seconds:.2f} s, {again_cpu / args.rows * 1e6:.1f} us CPU a change"
    )
    if args.profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)


def apply_all(follower) -> tuple[float, float]:
    """Run the follower until caught up: (seconds, this process's CPU seconds)."""
    began, cpu = time.perf_counter(), time.process_time()
    while follower.run_once():
        pass
    return time.perf_counter() - began, time.process_time() - cpu


if __name__ == "__main__":
    main()
