"""Outside writers with real processes: plain SQL on PostgreSQL while 2 instances x 2 workers serve, and the
change follower's faults (its process killed mid-batch, Redis frozen, every instance down, the log purged
past its position). Each test prints what it measured."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator

from db import open_store
from tests.integration.fleet import fleet, log_lines, wait_recovered
from tests.support import Gunicorn, seed_items, sql_connection, wait_until

READS_PER_INSTANCE = 6  # enough that both workers of an instance answer (they share its socket)


def served_versions(servers: list[Gunicorn], item_id: str) -> set[int]:
    """The versions every instance serves for `item_id` now (0: a 404), reading each several times."""
    versions = set()
    for server in servers:
        for _ in range(READS_PER_INSTANCE):
            status, _, body = server.get(f"/items/{item_id}")
            versions.add(json.loads(body)["version"] if status == 200 else 0)
    return versions


@contextlib.contextmanager
def every_instance_down(servers: list[Gunicorn]) -> Iterator[None]:
    """Stop every instance (their logs are kept), then start them all again."""
    for server in servers:
        server.stop()
    yield
    for server in servers:
        server.start()


def follower_pid(servers: list[Gunicorn]) -> int:
    """The pid of the worker whose follower holds the lease (it logs when it takes it)."""
    lines = [line for s in servers for line in log_lines(s) if "follows the database's change log" in line["message"]]
    return int(lines[-1]["pid"])


def test_outside_inserts_updates_and_deletes_reach_every_worker_within_a_second(request, capsys):
    with fleet(request.getfixturevalue("postgres_url")) as (_, servers, _, db_url):
        wait_recovered(servers, timeout=20)
        with sql_connection(db_url) as sql:
            assert served_versions(servers, "by-sql") == {0}  # cached as absent on every instance
            timings = {}
            for what, statement, expected in (
                ("insert", """INSERT INTO items (id, fields) VALUES ('by-sql', '{"n": 1}')""", {1}),
                ("update", """UPDATE items SET fields = '{"n": 2}' WHERE id = 'by-sql'""", {2}),
                ("delete", "DELETE FROM items WHERE id = 'by-sql'", {0}),
            ):
                assert served_versions(servers, "by-sql") != expected  # cached on every instance first
                started = time.monotonic()
                sql.execute(statement)
                wait_until(lambda expected=expected: served_versions(servers, "by-sql") == expected, timeout=10)
                timings[what] = time.monotonic() - started
        with capsys.disabled():
            print(
                "\n[outside writes] served by every worker after: "
                + ", ".join(f"{k} {v * 1000:.0f}ms" for k, v in timings.items())
            )
    assert max(timings.values()) < 2.0  # the promise is 1 s at p99 (bench/changelog.py); this bounds a slow CI


def test_the_follower_killed_mid_batch_skips_nothing(request, capsys):
    rows = 20_000
    with fleet(request.getfixturevalue("postgres_url"), seed=rows) as (_, servers, _, db_url):
        wait_recovered(servers, timeout=20)
        sample = [f"item-{n}" for n in range(0, rows, rows // 40)]
        assert all(served_versions(servers[:1], i) == {1} for i in sample)  # cached at version 1
        wait_until(lambda: "follows the database's change log" in servers[0].output() + servers[1].output(), 10)
        victim = follower_pid(servers)
        with sql_connection(db_url) as sql:
            sql.execute("""UPDATE items SET fields = '{"bulk": true}'""")  # one statement, every row
        time.sleep(0.1)  # the follower is inside the 20 batches of this change
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: all(served_versions(servers, i) == {2} for i in sample), timeout=30)
        agreed = time.monotonic() - killed
        store = open_store(db_url)
        try:
            end = store.changes_after(None, 1).cursor.seq
            wait_until(lambda: int(store.load_cursor("cache:").split(":")[1]) >= end, timeout=15)
        finally:
            store.close()
        with capsys.disabled():
            print(f"\n[follower killed] {rows} rows updated; every tier agreed {agreed:.2f}s after the kill")


def test_outside_writes_while_redis_is_frozen_are_applied_when_it_answers(request):
    with fleet(request.getfixturevalue("postgres_url"), seed=10) as (redis_server, servers, _, db_url):
        wait_recovered(servers, timeout=20)
        assert served_versions(servers, "item-3") == {1}  # Redis and L1 hold version 1
        redis_server.pause()
        try:
            with sql_connection(db_url) as sql:
                sql.execute("""UPDATE items SET fields = '{"during": "outage"}' WHERE id = 'item-3'""")
            time.sleep(1.0)  # the follower cannot apply it; Redis still holds version 1
        finally:
            redis_server.resume()
        wait_until(lambda: served_versions(servers, "item-3") == {2}, timeout=15)


def test_changes_made_while_every_instance_was_down_are_applied_at_start(request):
    with fleet(request.getfixturevalue("postgres_url"), seed=10) as (_, servers, _, db_url):
        wait_recovered(servers, timeout=20)
        assert served_versions(servers, "item-5") == {1}
        with every_instance_down(servers), sql_connection(db_url) as sql:
            sql.execute("""UPDATE items SET fields = '{"while": "down"}' WHERE id = 'item-5'""")
        wait_until(lambda: served_versions(servers, "item-5") == {2}, timeout=15)  # Redis held version 1


def test_a_log_purged_past_a_stopped_fleets_position_flushes_and_serves_the_truth(request):
    with fleet(request.getfixturevalue("postgres_url"), seed=10) as (_, servers, _, db_url):
        wait_recovered(servers, timeout=20)
        assert served_versions(servers, "item-7") == {1}
        with every_instance_down(servers), sql_connection(db_url) as sql:
            sql.execute("""UPDATE items SET fields = '{"missed": true}' WHERE id = 'item-7'""")
            store = open_store(db_url)
            try:
                assert store.purge_changes(10**12, older_than_s=0) >= 1  # another cache's purge, say
            finally:
                store.close()
        wait_until(lambda: served_versions(servers, "item-7") == {2}, timeout=15)
        assert any("purged past this cache's position" in s.output() for s in servers)


def test_seeded_rows_are_known_without_a_warm(request):
    with fleet(request.getfixturevalue("postgres_url")) as (_, servers, _, db_url):
        wait_recovered(servers, timeout=20)
        seed_items(db_url, 50, prefix="late")  # COPY behind the service's back, after it started
        wait_until(lambda: all(served_versions(servers[:1], f"late-{n}") == {1} for n in range(0, 50, 7)), 10)
