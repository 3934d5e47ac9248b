"""Writes are never lost, doubled or late, with real processes: 2 instances x 2 workers over PostgreSQL.
Concurrent PUTs holding one ETag, concurrent POSTs sharing one Idempotency-Key (and a replay after a restart),
and a write stuck behind a table lock past REQUEST_TIMEOUT."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg

from tests.integration.fleet import TOKEN, fleet, total
from tests.support import Gunicorn, RedisServer

AUTH_JSON = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def at_once(servers: list[Gunicorn], n: int, method: str, path: str, body: dict, headers: dict) -> list[tuple]:
    """`n` requests released together by a barrier, alternating between the instances: (status, headers, body)."""
    start = threading.Barrier(n)

    def one(i: int) -> tuple:
        start.wait(30)
        return servers[i % len(servers)].request(method, path, json.dumps(body).encode(), {**AUTH_JSON, **headers})

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_fifty_puts_holding_one_etag_over_two_instances_give_one_winner(request):
    with fleet(request.getfixturevalue("postgres_url")) as (_, servers, _, _):
        created = servers[0].request("PUT", "/items/contended", b'{"n": 0}', AUTH_JSON)
        etag = created[1]["ETag"]
        answers = at_once(servers, 50, "PUT", "/items/contended", {"n": 1}, {"If-Match": etag})
        statuses = Counter(status for status, _, _ in answers)
        assert statuses == {200: 1, 412: 49}, statuses
        assert all(h["ETag"] == '"contended.2"' for s, h, _ in answers if s == 412)
        status, _, body = servers[1].get("/items/contended")
        assert status == 200 and json.loads(body)["version"] == 2  # one more than before, not 50
        assert total(servers, 'cache_write_outcomes_total{outcome="precondition_failed"}') == 49


def test_on_sqlite_too_one_etag_one_winner_and_one_key_one_item(tmp_path):
    """Two instances sharing one SQLite file (SQLite's single writer is the serialisation point)."""
    with RedisServer() as redis_server:
        env = {
            "REDIS_URL": redis_server.url,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'items.sqlite3'}",
            "API_TOKEN": TOKEN,
        }
        servers = [Gunicorn(env, workers=2), Gunicorn(env, workers=2)]
        try:
            for server in servers:
                server.start()
            etag = servers[0].request("PUT", "/items/contended", b'{"n": 0}', AUTH_JSON)[1]["ETag"]
            answers = at_once(servers, 50, "PUT", "/items/contended", {"n": 1}, {"If-Match": etag})
            assert Counter(status for status, _, _ in answers) == {200: 1, 412: 49}
            assert json.loads(servers[1].get("/items/contended")[2])["version"] == 2
            posts = at_once(servers, 20, "POST", "/items", {"name": "order"}, {"Idempotency-Key": "order-7"})
            assert {status for status, _, _ in posts} == {201}
            assert len({json.loads(body)["id"] for _, _, body in posts}) == 1
            assert len(json.loads(servers[0].get("/items")[2])["items"]) == 2  # "contended" and the one order
        finally:
            for server in servers:
                server.close()


def test_twenty_posts_sharing_one_key_create_one_item_and_replay_after_a_restart(request):
    with fleet(request.getfixturevalue("postgres_url")) as (_, servers, _, db_url):
        answers = at_once(servers, 20, "POST", "/items", {"name": "order"}, {"Idempotency-Key": "order-42"})
        assert {status for status, _, _ in answers} == {201}, [(s, b) for s, _, b in answers]
        ids = {json.loads(body)["id"] for _, _, body in answers}
        assert len(ids) == 1  # every answer names the same item
        firsts = [h for _, h, _ in answers if h.get("Idempotent-Replayed") != "true"]
        assert len(firsts) == 1
        with psycopg.connect(db_url) as conn:
            assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 1
        for server in servers:  # every instance down, then up again: the keys are in the database
            server.stop()
        servers[1].start()
        status, headers, body = servers[1].request(
            "POST", "/items", json.dumps({"name": "order"}).encode(), {**AUTH_JSON, "Idempotency-Key": "order-42"}
        )
        assert status == 201 and headers["Idempotent-Replayed"] == "true"
        assert json.loads(body)["id"] == ids.pop() and json.loads(body)["version"] == 1


def test_a_write_behind_a_table_lock_answers_within_its_deadline_and_changes_nothing(request):
    with fleet(request.getfixturevalue("postgres_url"), REQUEST_TIMEOUT="2") as (_, servers, _, db_url):
        servers[0].request("PUT", "/items/locked", b'{"n": 1}', AUTH_JSON)
        with psycopg.connect(db_url, autocommit=True) as locker:
            locker.execute("BEGIN")
            locker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
            began = time.monotonic()
            status, headers, body = servers[1].request("PUT", "/items/locked", b'{"n": 2}', AUTH_JSON)
            elapsed = time.monotonic() - began
            time.sleep(1.0)  # the lock outlives the deadline: nothing may commit once it is released
            locker.execute("ROLLBACK")
        assert status == 503 and json.loads(body)["error"] == "deadline_exceeded" and headers["Retry-After"] == "1"
        assert 1.9 <= elapsed < 2.5, elapsed  # the deadline plus a small margin
        with psycopg.connect(db_url) as conn:
            row = conn.execute("SELECT version, fields::text FROM items WHERE id = 'locked'").fetchone()
            logged = conn.execute("SELECT count(*) FROM item_changes WHERE id = 'locked'").fetchone()[0]
        assert row[0] == 1 and json.loads(row[1]) == {"n": 1} and logged == 1
        assert total(servers, 'cache_write_outcomes_total{outcome="deadline_exceeded"}') == 1
