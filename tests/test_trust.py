"""When Redis is trusted again after a doubt (cache/core/trust.py), and what a doubted process serves meanwhile:
the rule alone with a fake clock, then a process over a real store and its change follower, driven a pass
at a time (no threads). Several processes and real outages: tests/integration/test_monotonic_reads.py."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import cache
from cache import CacheEntry, SetOutcome
from cache.changelog.follower import ChangeFollower
from cache.changelog.maintenance import Maintenance
from cache.core.metrics import REDIS_CATCH_UPS
from cache.core.trust import CATCH_UP_LIMIT, L1Trust
from tests.support import FakeClock, running_cache, sql_connection, wait_until

JSON_HEADERS = {"Content-Type": "application/json"}


def test_a_doubt_ends_only_when_the_log_is_applied_up_to_a_head_taken_after_it():
    trust = L1Trust(FakeClock(), follows_log=True)
    generation = trust.generation
    trust.doubt_redis()
    assert not trust.redis_current and not trust.usable and trust.generation > generation
    epoch = trust.epoch
    assert not trust.applied(epoch, 10**9)  # no head yet: nothing can end the doubt
    assert trust.set_head(epoch, 42)
    assert not trust.applied(epoch, 41)
    assert trust.applied(epoch, 42) and trust.redis_current and trust.usable and trust.head is None


def test_a_new_doubt_voids_the_head_and_the_announcement_of_the_one_before():
    trust = L1Trust(FakeClock(), follows_log=True)
    trust.doubt_redis()
    stale = trust.epoch
    assert trust.set_head(stale, 5)
    trust.doubt_redis()  # Redis failed again after the head was taken
    assert trust.head is None
    assert not trust.applied(stale, 100) and not trust.redis_current
    assert not trust.set_head(stale, 5)  # a head read before this doubt cannot cover it
    assert trust.set_head(trust.epoch, 7) and trust.applied(trust.epoch, 7)


def test_l1_needs_the_listener_redis_and_the_catch_up():
    trust = L1Trust(FakeClock(), follows_log=True)
    trust.doubt_redis()
    trust.set_head(trust.epoch, 1)
    trust.set_subscribed(False)
    trust.applied(trust.epoch, 1)
    assert trust.redis_current and not trust.usable  # Redis caught up, but this process cannot hear writes
    trust.set_subscribed(True)
    assert trust.usable


def test_without_an_announcement_redis_is_trusted_again_after_the_limit_counted_from_the_head():
    clock = FakeClock()
    trust = L1Trust(clock, follows_log=True)
    trust.doubt_redis()
    clock.tick(CATCH_UP_LIMIT * 2)  # Redis away all this time: no head, no giving up
    assert not trust.give_up(trust.epoch)
    trust.set_head(trust.epoch, 3)
    clock.tick(CATCH_UP_LIMIT - 0.5)
    assert not trust.give_up(trust.epoch)
    clock.tick(0.5)
    assert not trust.give_up(trust.epoch - 1)  # an older doubt's catch-up
    assert trust.give_up(trust.epoch) and trust.redis_current


@pytest.fixture
def doubting(make_app, stack):
    """An app whose process follows the log (a follower, not started: the test runs its passes), its
    chores (not started either), and an outside writer's connection to its database."""
    app = make_app()
    s = running_cache()
    s.trust.follow_log()
    follower = ChangeFollower(s, app.extensions["item_store"])
    assert follower.hold_lease()
    follower.run_once()
    with sql_connection(stack["DATABASE_URL"]) as sql:
        yield app.test_client(), s, Maintenance(s), sql, follower


def test_a_doubted_process_reads_the_database_until_the_follower_announces_the_head(doubting):
    client, s, chores, sql, follower = doubting
    client.put("/items/a", data=json.dumps({"v": 1}), headers=JSON_HEADERS)
    follower.run_once()
    chores.catch_up()
    assert s.trust.redis_current
    # Redis misses version 2 (down at the write, or restarted since): Redis still holds version 1.
    sql.execute("""UPDATE items SET fields = '{"v": 2}' WHERE id = 'a'""")
    s.trust.doubt_redis()
    for _ in range(2):
        got = client.get("/items/a")
        assert (got.json["v"], got.headers["X-Cache"]) == (2, "db")  # never version 1 from Redis
        chores.catch_up()  # the head is taken: the log up to version 2's change
        assert not s.trust.redis_current
    applied = REDIS_CATCH_UPS.labels("applied")._value.get()
    follower.run_once()  # applies the change, announces it
    chores.catch_up()
    assert s.trust.redis_current and REDIS_CATCH_UPS.labels("applied")._value.get() == applied + 1
    got = client.get("/items/a")
    assert got.json["v"] == 2 and got.headers["X-Cache"] in ("redis", "lru")  # the read-through filled it


def test_a_follower_that_finds_redis_emptied_applies_the_recent_log_again(doubting):
    client, s, chores, sql, follower = doubting
    client.put("/items/b", data=json.dumps({"v": 1}), headers=JSON_HEADERS)
    client.put("/items/b", data=json.dumps({"v": 2}), headers=JSON_HEADERS)
    follower.run_once()
    key = cache.cache_key("b")
    for name in (key, follower.applied_key):  # Redis restarted empty (this prefix's keys: a shared server)
        s.redis.client.delete(name)
    old = CacheEntry.build("b", 1, b'{"id":"b","v":1}')  # a slow reader's load from before version 2
    follower.run_once()  # finds its announcement gone: Redis lost writes
    assert follower.rewind_due
    follower.run_once()  # applies the last seconds of the log again: version 2's floor is back
    assert s.redis.set_if_newer(key, old, 60_000) is SetOutcome.NEWER
    assert s.redis.applied_position(follower.applied_key) >= 0


def test_a_doubted_read_falls_back_on_redis_while_the_database_is_down_too(doubting):
    client, s, chores, sql, follower = doubting
    client.put("/items/c", data=json.dumps({"v": 1}), headers=JSON_HEADERS)
    s.trust.doubt_redis()
    store = s.store

    def down(item_id):
        from db import DatabaseUnavailable

        raise DatabaseUnavailable("test: the database is down")

    store.get, real = down, store.get
    try:
        got = client.get("/items/c")
    finally:
        store.get = real
    assert got.status_code == 200 and got.json["v"] == 1 and got.headers["X-Cache"] == "redis"


def test_a_failed_redis_call_puts_redis_in_doubt_in_a_process_that_follows_the_log(doubting):
    client, s, chores, sql, follower = doubting
    chores.catch_up()
    follower.run_once()
    chores.catch_up()
    assert s.trust.redis_current
    s.breaker.failure()  # one timeout: a write of this process may have missed Redis
    assert not s.trust.redis_current and not s.trust.usable


def test_a_follower_whose_redis_call_failed_applies_the_recent_log_again(doubting, monkeypatch):
    client, s, chores, sql, follower = doubting
    client.put("/items/d", data=json.dumps({"v": 1}), headers=JSON_HEADERS)
    monkeypatch.setattr(follower, "apply", lambda changes: False)  # Redis failed under the batch
    assert follower.run_once() == 0 and follower.rewind_due
    monkeypatch.undo()
    before = follower.cursor
    follower.run_once()  # rewinds (at most to where it was), then applies from there
    assert not follower.rewind_due and follower.cursor.seq >= before.seq
    assert s.redis.applied_position(follower.applied_key) >= before.seq


def test_a_doubted_read_serves_redis_at_once_while_the_store_knows_the_database_is_down(doubting):
    client, s, chores, sql, follower = doubting
    client.put("/items/d", data=json.dumps({"v": 1}), headers=JSON_HEADERS)
    s.trust.doubt_redis()
    store, asked = s.store, []
    store.known_down, store.get = (lambda: True), (lambda item_id: asked.append(item_id))
    try:
        got = client.get("/items/d")
    finally:
        del store.known_down, store.get  # the instance attributes: the class's methods again
    assert got.status_code == 200 and got.json["v"] == 1 and got.headers["X-Cache"] == "redis"
    assert asked == []  # no wait for a connection the pool knows will not come


def test_a_doubted_process_loads_a_hot_key_once_for_its_concurrent_readers(doubting):
    client, s, chores, sql, follower = doubting
    client.put("/items/hot", data=json.dumps({"v": 1}), headers=JSON_HEADERS)
    s.trust.doubt_redis()
    store, loads, release = s.store, [], threading.Event()
    real = store.get

    def slow_get(item_id):
        loads.append(item_id)
        release.wait(5)
        return real(item_id)

    store.get = slow_get
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = [pool.submit(read, client, "/items/hot") for _ in range(8)]
            wait_until(
                lambda: running_cache()._db_reads.waiting(cache.cache_key("hot")) == 7, timeout=10
            )  # all arrived
            release.set()
            results = [a.result(timeout=10) for a in answers]
    finally:
        release.set()
        del store.get
    assert all(status == 200 and v == 1 for status, v in results)
    assert loads == ["hot"]  # one database load for eight readers, Redis in doubt or not


def read(client, path):
    got = client.application.test_client().get(path)  # a client per thread
    return got.status_code, got.json["v"]


def test_a_follower_that_finds_redis_restored_from_an_old_snapshot_applies_the_log_again_from_it(doubting, monkeypatch):
    client, s, chores, sql, follower = doubting
    monkeypatch.setattr("cache.changelog.follower.REWIND_SECONDS", 0)  # the snapshot is older than the usual rewind
    client.put("/items/e", data=json.dumps({"v": 1}), headers=JSON_HEADERS)
    follower.run_once()
    snapshot_position = s.redis.applied_position(follower.applied_key)
    client.put("/items/e", data=json.dumps({"v": 2}), headers=JSON_HEADERS)
    follower.run_once()
    assert s.redis.applied_position(follower.applied_key) > snapshot_position
    # Redis restarts from its snapshot: the position and the item as they were before version 2.
    key, old = cache.cache_key("e"), CacheEntry.build("e", 1, b'{"id":"e","v":1}')
    s.redis.client.delete(key)
    assert s.redis.set_if_newer(key, old, 60_000) is SetOutcome.WRITTEN
    s.redis.client.set(follower.applied_key, snapshot_position)
    follower.run_once()  # finds the position gone back: Redis lost what came after it
    assert follower.rewind_due
    follower.run_once()  # applies the log again from the snapshot's position: version 2's floor is back
    assert s.redis.set_if_newer(key, old, 60_000) is SetOutcome.NEWER
