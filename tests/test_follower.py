"""The change follower and the cache inspector: the database's own change log, whoever wrote the row,
applied to every tier. Outside writers are plain driver connections running SQL, as psql or sqlite3 would."""

from __future__ import annotations

import json
import time

import pytest
import redis

import cache
from cache import service as cache_service
from cache.changelog import follower as follower_module
from cache.changelog import inspector as inspector_module
from cache.changelog.follower import ChangeFollower
from cache.changelog.inspector import Inspector
from cache.changelog.warm import CacheUnavailable
from cache.coherence.apply import Coherence
from cache.core.guard import OPEN
from cache.core.metrics import CHANGELOG_APPLIED, CHANGELOG_GAPS, INSPECTOR_CHECKED, INSPECTOR_STALE, L1_FLUSHES
from cache.core.redis_tier import decode_message, encode_flush
from tests.support import FakeClock, open_breaker, running_cache, sql_connection, wait_until

JSON_HEADERS = {"Content-Type": "application/json"}


def value(metric, *labels) -> float:
    return (metric.labels(*labels) if labels else metric)._value.get()


@pytest.fixture
def served(make_app, stack):
    """The app, its database URL, and an outside writer's connection to that database."""
    app = make_app()
    with sql_connection(stack["DATABASE_URL"]) as sql:
        yield app, app.test_client(), sql


def follower_for(app, timer=time.monotonic) -> ChangeFollower:
    """A follower that holds the lease, as the one at work in the fleet would."""
    follower = ChangeFollower(running_cache(), app.extensions["item_store"], timer=timer)
    assert follower.hold_lease()
    return follower


def test_a_row_inserted_by_sql_is_served_even_after_its_id_was_cached_as_absent(served):
    app, client, sql = served
    follower = follower_for(app)
    follower.run_once()  # takes its position at the end of the log
    assert client.get("/items/from-sql").status_code == 404
    assert client.get("/items/from-sql").headers["X-Cache"] == "negative"  # cached as absent
    sql.execute("""INSERT INTO items (id, fields) VALUES ('from-sql', '{"by": "psql"}')""")
    applied = value(CHANGELOG_APPLIED)
    assert follower.run_once() == 1 and value(CHANGELOG_APPLIED) == applied + 1
    running_cache().lru.delete(cache.cache_key("from-sql"))  # this test has no listener to hear the floor
    got = client.get("/items/from-sql")
    assert got.status_code == 200 and got.json["by"] == "psql" and got.headers["X-Cache"] == "db"


def test_rows_updated_and_deleted_by_sql_replace_what_is_cached(served):
    app, client, sql = served
    follower = follower_for(app)
    follower.run_once()
    for item_id in ("a", "b"):
        assert client.put(f"/items/{item_id}", data=json.dumps({"v": 1}), headers=JSON_HEADERS).status_code == 201
        assert client.get(f"/items/{item_id}").headers["X-Cache"] == "lru"
    sql.execute("""UPDATE items SET fields = '{"v": 2}' WHERE id = 'a'""")  # version not touched: bumped
    sql.execute("DELETE FROM items WHERE id = 'b'")
    assert follower.run_once() == 4  # the service's two creates, then the two outside writes
    running_cache().lru.clear()  # no listener in this test: L1s are the listener's business (tested below)
    updated = client.get("/items/a")
    assert updated.json == {**updated.json, "v": 2, "version": 2} and updated.headers["X-Cache"] == "db"
    deleted = client.get("/items/b")
    assert deleted.status_code == 404 and deleted.headers["X-Cache"] == "negative"  # the tombstone
    assert client.get("/items").json["items"] == [updated.json]  # the list agrees with GET


def test_after_a_batch_of_the_services_own_writes_the_next_pass_gathers_longer(served):
    app, client, sql = served
    follower = follower_for(app)
    follower.run_once()
    for n in range(3):
        assert client.put(f"/items/own-{n}", data=json.dumps({"v": 1}), headers=JSON_HEADERS).status_code == 201
    assert follower.run_once() == 3 and follower.held_all  # Redis already held all three: nothing urgent
    sql.execute("""UPDATE items SET fields = '{"v": 2}' WHERE id = 'own-0'""")
    assert follower.run_once() == 1 and not follower.held_all  # news for Redis: the short gather again
    assert client.delete("/items/own-1").status_code == 204
    assert follower.run_once() == 1 and not follower.held_all  # a delete's tombstone is never assumed held


def test_a_listening_process_serves_outside_writes_from_every_tier(served):
    app, client, sql = served
    cache_service.start_listener()  # listener + follower threads, as in a gunicorn worker
    wait_until(
        lambda: running_cache().trust.usable and cache_service.running().follower.lease.held is not None,
        timeout=10,
    )
    client.put("/items/hot", data=json.dumps({"v": 1}), headers=JSON_HEADERS)
    wait_until(lambda: client.get("/items/hot").headers["X-Cache"] == "lru", timeout=5)
    sql.execute("""UPDATE items SET fields = '{"v": 2}' WHERE id = 'hot'""")
    wait_until(lambda: client.get("/items/hot").json["v"] == 2, timeout=5)  # L1 dropped it, Redis floored it
    sql.execute("""INSERT INTO items (id, fields) VALUES ('cold', '{"v": 1}')""")
    wait_until(lambda: client.get("/items/cold").status_code == 200, timeout=5)


def test_a_slow_reader_cannot_put_the_pre_commit_row_back(served):
    app, client, sql = served
    follower = follower_for(app)
    follower.run_once()
    client.put("/items/r", data=json.dumps({"v": 1}), headers=JSON_HEADERS)
    before = cache.CacheEntry.build("r", 1, b'{"id":"r","v":1}')  # what a reader loaded before the commit
    sql.execute("""UPDATE items SET fields = '{"v": 2}' WHERE id = 'r'""")
    follower.run_once()
    assert cache.cache_fill(cache.cache_key("r"), before) is cache.SetOutcome.NEWER  # the floor refuses it
    running_cache().lru.clear()
    assert client.get("/items/r").json["v"] == 2


def test_the_position_survives_a_restart_and_changes_made_meanwhile_are_caught_up(served):
    app, client, sql = served
    first = follower_for(app)
    first.run_once()
    client.put("/items/k", data=json.dumps({"v": 1}), headers=JSON_HEADERS)
    first.stop()  # a follower that is gone (its lease released)
    sql.execute("""UPDATE items SET fields = '{"v": 2}' WHERE id = 'k'""")  # while no follower runs
    successor = follower_for(app)
    assert successor.run_once() == 2  # resumes from the saved position: the create, then the update
    running_cache().lru.clear()
    assert client.get("/items/k").json["v"] == 2


def test_a_purged_log_past_the_position_flushes_the_cache_and_says_so(served, caplog):
    app, client, sql = served
    store = app.extensions["item_store"]
    follower = follower_for(app)
    follower.run_once()
    client.put("/items/g", data=json.dumps({"v": 1}), headers=JSON_HEADERS)
    sql.execute("""UPDATE items SET fields = '{"v": 2}' WHERE id = 'g'""")
    store.purge_changes(10**9, older_than_s=0)  # the log is gone past the follower's position
    gaps, position = value(CHANGELOG_GAPS), follower.cursor
    breaker = running_cache().breaker
    open_breaker(breaker)  # Redis is skipped: the flush cannot happen yet...
    with pytest.raises(CacheUnavailable):
        follower.run_once()
    assert value(CHANGELOG_GAPS) == gaps and follower.cursor == position  # ...so nothing moves, nothing counts
    breaker.success()
    follower.run_once()
    assert value(CHANGELOG_GAPS) == gaps + 1 and "purged past this cache's position" in caplog.text
    assert running_cache().redis.client.exists(cache.cache_key("g")) == 0 and len(running_cache().lru) == 0
    assert client.get("/items/g").json["v"] == 2


def test_an_applied_position_evicted_again_and_again_is_a_warning_once_a_minute(served, caplog):
    app, client, sql = served
    clock = FakeClock()
    follower = follower_for(app, timer=clock)
    for n in range(6):  # under an allkeys-* maxmemory-policy Redis evicts the position, pass after pass
        client.put(f"/items/e{n}", data=json.dumps({"v": n}), headers=JSON_HEADERS)
        follower.run_once()
        running_cache().redis.client.delete(follower.applied_key)
        clock.tick(1.0)
    follower.run_once()
    lost = [r.levelname for r in caplog.records if "lost the log's applied position" in r.getMessage()]
    assert lost[0] == "WARNING" and lost[1:] == ["INFO"] * (len(lost) - 1) and len(lost) >= 3  # each rewinds
    clock.tick(follower_module.LOST_LOG_INTERVAL)
    running_cache().redis.client.delete(follower.applied_key)
    follower.run_once()
    follower.run_once()
    lost = [r for r in caplog.records if "lost the log's applied position" in r.getMessage()]
    assert lost[-1].levelname == "WARNING"


def test_redis_down_keeps_the_position_until_the_batch_is_applied(served, monkeypatch):
    """Judged by what reaches Redis, not by the cursor: on PostgreSQL the cursor also moves as transactions
    open anywhere on the server finish (its `pending`), which another process's tests did once here."""
    app, client, sql = served
    follower = follower_for(app)
    follower.run_once()
    key, redis_client = cache.cache_key("x"), running_cache().redis.client
    monkeypatch.setattr(follower_module, "REWIND_SECONDS", 0.0)  # a rewind must not hide a change skipped
    with monkeypatch.context() as down:
        down.setattr(running_cache().bulk, "pipeline", FailingPipeline)  # Redis is down
        sql.execute("""INSERT INTO items (id, fields) VALUES ('x', '{}')""")
        applied = value(CHANGELOG_APPLIED)
        for _ in range(3):
            assert follower.run_once() == 0
        assert value(CHANGELOG_APPLIED) == applied and redis_client.hget(key, "v") is None
    wait_until(lambda: follower.run_once() and redis_client.hget(key, "v") == b"1", timeout=5)  # not skipped
    assert value(CHANGELOG_APPLIED) == applied + 1


def test_the_inspector_counts_an_entry_still_stale_after_the_bound(served, monkeypatch):
    app, client, sql = served
    clock = FakeClock(0.0)
    inspector = Inspector(running_cache(), app.extensions["item_store"], timer=clock)
    client.put("/items/s", data=json.dumps({"v": 1}), headers=JSON_HEADERS)  # Redis and L1 at version 1
    client.put("/items/fresh", data=json.dumps({"v": 1}), headers=JSON_HEADERS)
    sql.execute("""UPDATE items SET fields = '{"v": 2}' WHERE id = 's'""")  # and no follower applies it
    checked, stale = value(INSPECTOR_CHECKED, "redis"), value(INSPECTOR_STALE, "redis")
    inspector.inspect_once()
    assert value(INSPECTOR_CHECKED, "redis") == checked + 2 and value(INSPECTOR_CHECKED, "lru") >= 2
    assert value(INSPECTOR_STALE, "redis") == stale  # a suspect only: the change may be in flight
    clock.tick(inspector_module.BOUND)
    inspector.inspect_once()
    assert value(INSPECTOR_STALE, "redis") == stale + 1 and value(INSPECTOR_STALE, "lru") >= 1


def test_the_inspector_does_not_count_a_change_applied_within_the_bound(served):
    app, client, sql = served
    clock = FakeClock(0.0)
    inspector = Inspector(running_cache(), app.extensions["item_store"], timer=clock)
    follower = follower_for(app)
    follower.run_once()
    client.put("/items/s", data=json.dumps({"v": 1}), headers=JSON_HEADERS)
    sql.execute("""UPDATE items SET fields = '{"v": 2}' WHERE id = 's'""")
    stale = value(INSPECTOR_STALE, "redis")
    inspector.inspect_once()  # sees version 1 cached, 2 in the database: a suspect
    follower.run_once()  # the change lands within the bound
    clock.tick(inspector_module.BOUND)
    inspector.inspect_once()
    assert value(INSPECTOR_STALE, "redis") == stale


def test_only_one_follower_works_at_a_time(served):
    app, _, _ = served
    first = follower_for(app)
    second = ChangeFollower(running_cache(), app.extensions["item_store"])
    assert not second.hold_lease()
    first.stop()
    assert second.hold_lease()
    assert follower_module.LEASE_MS >= 1000


class Topology:
    """A cluster client's view of its slots, as far as a test needs it: how often it was asked anew."""

    def __init__(self) -> None:
        self.refreshed = 0

    def initialize(self) -> None:
        self.refreshed += 1


class FailingPipeline:
    def __init__(self, *args, **kwargs) -> None:
        pass

    def __getattr__(self, name):
        return lambda *args, **kwargs: None  # queueing works...

    def execute(self, raise_on_error: bool = True):
        raise redis.ConnectionError("Connection refused")  # ...sending fails, as on a killed primary


def behind_a_failing_pipeline(served, monkeypatch) -> tuple[ChangeFollower, FakeClock]:
    """A caught-up follower on a clock of the test's, one change behind, whose batch client's pipeline fails."""
    app, _, sql = served
    clock = FakeClock()
    follower = follower_for(app, timer=clock)
    follower.run_once()
    monkeypatch.setattr(running_cache().bulk, "pipeline", FailingPipeline)
    sql.execute("""INSERT INTO items (id, fields) VALUES ('x', '{}')""")
    return follower, clock


def test_a_failing_pipeline_has_both_cluster_clients_ask_for_the_slots_at_most_once_a_second(served, monkeypatch):
    follower, clock = behind_a_failing_pipeline(served, monkeypatch)
    state = running_cache()
    requests_view, batches_view = Topology(), Topology()
    monkeypatch.setattr(state.redis.client, "nodes_manager", requests_view, raising=False)
    monkeypatch.setattr(state.bulk, "nodes_manager", batches_view, raising=False)

    assert follower.run_once() == 0  # the pipeline failed: the batch client may point at a dead primary
    assert (requests_view.refreshed, batches_view.refreshed) == (1, 1)
    clock.tick(0.5)
    assert follower.run_once() == 0
    assert (requests_view.refreshed, batches_view.refreshed) == (1, 1)  # not on every failed batch
    clock.tick(0.5)
    assert follower.run_once() == 0
    assert (requests_view.refreshed, batches_view.refreshed) == (2, 2)
    monkeypatch.undo()
    assert follower.run_once() == 1  # answered again: the change is applied


@pytest.mark.parametrize("stack", ["embedded", "real"], indirect=True)  # a single Redis
def test_a_failing_pipeline_outside_a_cluster_opens_the_breaker_like_any_failure(served, monkeypatch):
    """No topology to refresh: nothing may count as a success between the pipeline's failures."""
    follower, clock = behind_a_failing_pipeline(served, monkeypatch)
    state = running_cache()
    for _ in range(state.breaker.threshold):
        assert follower.run_once() == 0
        clock.tick(1.0)  # past the topology interval each time
    assert not state.breaker.allow()  # open: Redis is skipped for its cooldown


def test_the_follower_applies_changes_while_its_process_breaker_is_open(make_app, stack):
    """Other processes may trust Redis again before this one's breaker closes (after an outage, each catches
    up on its own): what the follower brings must reach Redis then, as a write's update does, not a
    cooldown later."""
    app = make_app(REDIS_BREAKER_COOLDOWN="60")
    client, s = app.test_client(), running_cache()
    client.put("/items/a", data=json.dumps({"v": 1}), headers=JSON_HEADERS)
    follower = follower_for(app)
    follower.run_once()
    open_breaker(s.breaker)  # Redis timed out for this process; it answers the others
    assert s.breaker.state == OPEN
    announced = int(s.redis.client.get(follower.applied_key) or -1)
    with sql_connection(stack["DATABASE_URL"]) as sql:
        sql.execute("""UPDATE items SET fields = '{"v": 2}' WHERE id = 'a'""")
    applied = value(CHANGELOG_APPLIED)
    assert follower.hold_lease() and follower.run_once() >= 1 and value(CHANGELOG_APPLIED) > applied
    assert s.redis.client.hget(cache.cache_key("a"), "v") == b"2"  # version 2's floor: no process serves 1
    assert int(s.redis.client.get(follower.applied_key)) > announced  # and the others may stop doubting
    assert s.breaker.state == OPEN  # one answer proves little: the probe decides


def test_with_the_breaker_open_the_holder_keeps_its_lease_and_no_other_follower_takes_it(make_app):
    """The holder renews past an open breaker (what it brings must not wait for its cooldown); a follower
    that does not hold the lease takes nothing then, and calls nothing: the lease goes to a healthy process."""
    app = make_app(REDIS_BREAKER_COOLDOWN="60")
    s = running_cache()
    holder = follower_for(app)
    standby = ChangeFollower(s, app.extensions["item_store"])  # another process's, as far as the lease knows
    open_breaker(s.breaker)
    # Half-lapsed: only a renewal (to LEASE_MS) takes it above that again. Half, not nearly: the renewal must
    # reach Redis before the lease lapses, and a loaded machine stalls a process for more than 0.1 s.
    half = follower_module.LEASE_MS // 2
    s.redis.client.pexpire(holder.lease.key, half)
    assert holder.hold_lease() and not standby.hold_lease()
    assert s.redis.client.get(holder.lease.key) == holder.lease.token.encode()
    assert s.redis.client.pttl(holder.lease.key) > half  # renewed


class Announcements:
    """What `origin` (a follower) publishes on the invalidation channel, as decoded messages."""

    def __init__(self, client: redis.Redis, channel: str, origin: str) -> None:
        self.origin = origin
        self.pubsub = client.pubsub()
        self.pubsub.subscribe(channel)
        self.take()  # the subscribe confirmation

    def take(self) -> list:
        heard, quiet_since = [], time.monotonic()
        while time.monotonic() - quiet_since < 0.5:
            message = self.pubsub.get_message(timeout=0.1)
            if message is not None and message["type"] == "message":
                decoded = decode_message(message["data"])
                heard += [decoded] if decoded is not None and decoded.origin == self.origin else []
                quiet_since = time.monotonic()
        return heard


def put_items(client, ids) -> None:
    for item_id in ids:
        assert client.put(f"/items/{item_id}", data=json.dumps({"v": 1}), headers=JSON_HEADERS).status_code == 201


def test_a_bulk_change_is_announced_by_l1_flushes_and_a_few_rows_key_by_key(served, monkeypatch):
    """Chunks of CHUNK floors; a chunk with more than MOST_ANNOUNCED new floors is one flush of every L1
    (on a cluster: one flush for the batch); the service's own writes are floored already: not announced."""
    monkeypatch.setattr(follower_module, "CHUNK", 20)
    monkeypatch.setattr(follower_module, "MOST_ANNOUNCED", 5)
    app, client, sql = served
    state = running_cache()
    follower = follower_for(app)
    follower.run_once()
    heard = Announcements(state.redis.client, state.redis.channel, follower.origin)
    ids = [f"b{n:02d}" for n in range(30)]
    put_items(client, ids)
    assert follower.run_once() == 30 and heard.take() == []  # its own writes: Redis holds them already

    sql.execute("""UPDATE items SET fields = '{"v": 2}'""")
    assert follower.run_once() == 30
    flushes = heard.take()
    cluster = hasattr(state.bulk, "get_nodes")
    assert [(m.key, m.reason, m.origin) for m in flushes] == [("*", "bulk_change", follower.origin)] * (
        1 if cluster else 2  # 20 + 10 floors, each chunk above 5
    )
    for item_id in ids:  # every key a floor at version 2
        assert state.redis.client.hmget(cache.cache_key(item_id), "v", "f") == [b"2", b"1"]

    sql.execute("""UPDATE items SET fields = '{"v": 3}' WHERE id IN ('b00', 'b01', 'b02')""")
    assert follower.run_once() == 3
    assert sorted((m.key, m.version) for m in heard.take()) == [(cache.cache_key(f"b0{n}"), 3) for n in range(3)]

    flushed = value(L1_FLUSHES, "bulk_change")
    Coherence(state).on_message(flushes[0])  # what every listener does with it (no listener in this test)
    assert value(L1_FLUSHES, "bulk_change") == flushed + 1 and len(state.lru) == 0
    got = client.get("/items/b05")
    assert got.json["v"] == 2 and got.headers["X-Cache"] == "db"  # the floor: loaded anew ...
    assert client.get("/items/b05").headers["X-Cache"] == "lru"  # ... and kept in L1


def test_a_reader_that_loaded_before_a_bulk_change_fills_no_tier_after_its_flush(served):
    app, client, sql = served
    state = running_cache()
    follower = follower_for(app)
    follower.run_once()
    put_items(client, ["s"])
    follower.run_once()
    key, before = cache.cache_key("s"), cache.CacheEntry.build("s", 1, b'{"id":"s","v":1}')
    generation = state.trust.generation  # a reader began: it loaded version 1 ...
    sql.execute("""UPDATE items SET fields = '{"v": 2}'""")
    follower.run_once()
    Coherence(state).on_message(decode_message(encode_flush(follower.origin, "bulk_change")))
    state.fill_l1(key, before, generation)  # ... and fills after the flush
    assert state.lru.get(key) is None  # the flush began a new generation
    assert cache.cache_fill(key, before) is cache.SetOutcome.NEWER  # the floor refuses it
    assert client.get("/items/s").json["v"] == 2


def test_a_bulk_insert_adds_every_id_to_the_bloom_filter(served):
    app, client, sql = served
    state = running_cache()
    assert state.bloom is not None
    follower = follower_for(app)
    follower.run_once()
    m, k = state.bloom.begin_build(10)
    state.bloom.finish_build()  # built, empty
    for n in range(follower_module.CHUNK + 20):  # two Bloom adds
        sql.execute(f"INSERT INTO items (id, fields) VALUES ('new-{n}', '{{}}')")
    assert follower.run_once() == follower_module.CHUNK + 20
    assert all(state.bloom.might_contain(f"new-{n}") for n in range(follower_module.CHUNK + 20))
    assert not state.bloom.might_contain("never-written-anywhere")  # the filter is used, not disabled


@pytest.mark.parametrize("stack", ["cluster"], indirect=True)
def test_on_a_cluster_a_bulk_changes_flush_that_failed_is_published_before_the_next_batch(served, monkeypatch):
    """The floors landed, the flush after them did not: applied again they are no news (no flush), so the
    flush stays due until Redis takes it."""
    monkeypatch.setattr(follower_module, "MOST_ANNOUNCED", 2)
    app, client, sql = served
    state = running_cache()
    follower = follower_for(app)
    follower.run_once()
    put_items(client, [f"c{n}" for n in range(5)])
    follower.run_once()
    heard = Announcements(state.redis.client, state.redis.channel, follower.origin)
    sql.execute("""UPDATE items SET fields = '{"v": 2}'""")
    publish = state.bulk.publish

    def refused(*args, **kwargs):
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(state.bulk, "publish", refused)
    assert follower.run_once() == 0 and heard.take() == []
    monkeypatch.setattr(state.bulk, "publish", publish)
    assert follower.run_once() >= 5  # the batch again (and the recent log: Redis failed)
    assert [(m.key, m.reason) for m in heard.take()] == [("*", "bulk_change")]
    assert follower.run_once() == 0 and heard.take() == []


def test_a_batch_listed_ahead_is_used_only_after_the_position_it_was_listed_from(served, monkeypatch):
    """A full batch has the next one listed while it is applied; a follower whose position moved otherwise
    (a rewind) lists anew."""
    monkeypatch.setattr(follower_module, "BATCH", 3)
    app, client, sql = served
    state = running_cache()
    follower = follower_for(app)
    follower.run_once()
    for n in range(7):
        sql.execute(f"INSERT INTO items (id, fields) VALUES ('ahead-{n}', '{{}}')")
    start = follower.cursor
    assert follower.run_once() == 3
    follower.cursor = start  # rewound: the batch listed ahead (after the first three) does not fit
    assert follower.run_once() == 3  # the first three again, not the three listed ahead
    assert not state.redis.client.exists(cache.cache_key("ahead-3"))
    assert [follower.run_once() for _ in range(3)] == [3, 1, 0]
    for n in range(7):
        assert state.redis.client.hmget(cache.cache_key(f"ahead-{n}"), "v", "f") == [b"1", b"1"]
    follower.stop()
