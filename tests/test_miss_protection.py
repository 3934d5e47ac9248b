"""Miss protection and warming through the app, on both stacks."""

from __future__ import annotations

import json
import threading

import pytest

import cache
from cache import CacheEntry
from cache.changelog import warm
from cache.core.lock import Acquired
from cache.core.metrics import DB_LOADS, REQUESTS_BY_TIER, STAMPEDE_WAITS, WRITES_BY_OUTCOME
from tests.support import running_cache

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON_HEADERS = {"Content-Type": "application/json"}


def value(counter) -> float:
    return counter._value.get()


def seed(app, n: int, prefix: str = "item") -> list[str]:
    store = app.extensions["item_store"]
    ids = [f"{prefix}-{i}" for i in range(n)]
    for item_id in ids:
        store.upsert(item_id, {"n": item_id})
    return ids


def _warm(store) -> warm.WarmResult:
    return warm.warm(running_cache(), store, warm.take_lock(running_cache()))


@pytest.fixture
def quick_bloom(monkeypatch):
    monkeypatch.setattr(warm, "BLOOM_GRACE", 0.0)  # no writes are in flight in these tests


def test_concurrent_cold_reads_load_the_database_once(make_app, monkeypatch):
    app = make_app()
    seed(app, 1)
    store = app.extensions["item_store"]
    real_get, gate = store.get, threading.Event()

    def slow_get(item_id):  # the database takes a while, so every reader arrives during the load
        gate.wait(2)
        return real_get(item_id)

    monkeypatch.setattr(store, "get", slow_get)
    loads, waits = value(DB_LOADS), value(STAMPEDE_WAITS)
    statuses: list[int] = []
    threads = [
        threading.Thread(target=lambda: statuses.append(app.test_client().get("/items/item-0").status_code))
        for _ in range(20)
    ]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert statuses == [200] * 20
    assert value(DB_LOADS) - loads == 1
    assert value(STAMPEDE_WAITS) - waits >= 1


def test_stampede_protection_off_lets_every_reader_load(make_app, monkeypatch):
    app = make_app(CACHE_STAMPEDE_PROTECTION="false")
    seed(app, 1)
    store = app.extensions["item_store"]
    real_get, barrier = store.get, threading.Barrier(5, timeout=5)

    def slow_get(item_id):
        barrier.wait()  # all five readers are inside the database at once
        return real_get(item_id)

    monkeypatch.setattr(store, "get", slow_get)
    loads = value(DB_LOADS)
    threads = [threading.Thread(target=lambda: app.test_client().get("/items/item-0")) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert value(DB_LOADS) - loads == 5


def test_bloom_filter_answers_never_existing_ids_without_the_database(make_app, quick_bloom):
    app = make_app()
    seed(app, 200)
    _warm(app.extensions["item_store"])
    client = app.test_client()
    loads, bloom_answers = value(DB_LOADS), value(REQUESTS_BY_TIER["bloom"])
    answers = [client.get(f"/items/never-{n}") for n in range(300)]
    assert [a.status_code for a in answers] == [404] * 300
    assert sum(a.headers["X-Cache"] == "bloom" for a in answers) >= 294  # the header says what the metric says
    assert value(DB_LOADS) - loads <= 6  # ~1% false positives may reach the database
    assert value(REQUESTS_BY_TIER["bloom"]) - bloom_answers >= 294
    created = client.put("/items/brand-new", data="{}", headers=JSON_HEADERS)
    assert created.status_code == 201
    assert client.get("/items/brand-new").status_code == 200  # never a false 404
    running_cache().lru.clear()
    assert client.get("/items/brand-new").status_code == 200


def counting_bloom_adds(monkeypatch) -> list[str]:
    """The ids this process's writes add to the Bloom filter from now on (each add still made)."""
    bloom, added = running_cache().bloom, []
    real_add = bloom.add
    monkeypatch.setattr(bloom, "add", lambda item_id: added.append(item_id) or real_add(item_id))
    return added


def test_a_write_that_cannot_add_an_id_makes_no_bloom_filter_add(make_app, quick_bloom, monkeypatch):
    app = make_app()
    _warm(app.extensions["item_store"])
    client, added = app.test_client(), counting_bloom_adds(monkeypatch)
    failed = value(WRITES_BY_OUTCOME["precondition_failed"])
    assert client.put("/items/a", data='{"n": 1}', headers=JSON_HEADERS).status_code == 201
    assert added == ["a"]  # a new id: added before the commit
    updated = client.put("/items/a", data='{"n": 2}', headers=JSON_HEADERS)  # seen written here: an update
    assert updated.status_code == 200 and updated.headers["ETag"] == '"a.2"'
    if_match = {**JSON_HEADERS, "If-Match": updated.headers["ETag"]}
    assert client.put("/items/a", data='{"n": 3}', headers=if_match).status_code == 200
    assert client.put("/items/a", data='{"n": 4}', headers={**JSON_HEADERS, "If-Match": "*"}).status_code == 200
    missing = client.put("/items/b", data="{}", headers={**JSON_HEADERS, "If-Match": "*"})
    assert missing.status_code == 412 and "ETag" not in missing.headers
    assert added == ["a"]  # an update of a live row, or a write only to one, adds nothing
    assert value(WRITES_BY_OUTCOME["precondition_failed"]) == failed + 1  # the 412 only, not the updates
    running_cache().lru.clear()
    assert client.get("/items/a").json["n"] == 4


def test_an_id_deleted_elsewhere_and_rebuilt_out_of_the_filter_is_added_again_when_written_back(
    make_app, quick_bloom, monkeypatch
):
    """This process saw `a` written, so it first tries an update; but another process deleted `a` and the
    filter was rebuilt without it. No live row: the write is made in full, its id added before the commit."""
    app = make_app()
    store, client = app.extensions["item_store"], app.test_client()
    assert client.put("/items/a", data="{}", headers=JSON_HEADERS).status_code == 201
    store.delete("a")  # another process's delete; no listener here, so L1 still holds `a`
    _warm(store)
    cache_now = running_cache()
    assert cache_now.lru.known_version(cache.cache_key("a")) > 0 and not cache_now.bloom.might_contain("a")
    added = counting_bloom_adds(monkeypatch)
    written_back = client.put("/items/a", data='{"n": "back"}', headers=JSON_HEADERS)
    assert written_back.status_code == 201 and added == ["a"]
    assert cache_now.bloom.might_contain("a")
    cache_now.lru.clear()
    cache_now.redis.client.delete(cache.cache_key("a"))
    assert client.get("/items/a").json["n"] == "back"  # never a false 404


def test_warm_fills_redis_with_long_ttl_and_reads_skip_the_database(make_app, quick_bloom):
    app = make_app(CACHE_LONG_TTL="7200", CACHE_TTL_JITTER="0")
    ids = seed(app, 2500)  # several batches
    result = _warm(app.extensions["item_store"])
    assert result.items == 2500 and result.bloom_rebuilt
    client = app.test_client()
    loads = value(DB_LOADS)
    assert all(client.get(f"/items/{i}").headers["X-Cache"] == "redis" for i in ids[::100])
    assert value(DB_LOADS) == loads
    redis_client = running_cache().redis.client
    assert 7_100_000 < redis_client.pttl(cache.cache_key(ids[0])) <= 7_200_000


def test_warm_never_replaces_a_newer_cached_version(make_app, quick_bloom):
    app = make_app()
    seed(app, 1)
    client = app.test_client()
    client.put("/items/item-0", data=json.dumps({"n": "newer"}), headers=JSON_HEADERS)  # version 2 cached
    store = app.extensions["item_store"]
    old = store.get("item-0")
    store.get = lambda item_id: old  # noqa: ARG005 - as if the scan had read the row before the write
    running_cache().lru.clear()
    _warm(store)
    assert client.get("/items/item-0").json["n"] == "newer"


def test_early_refresh_of_a_hot_key_doubles_its_ttl(make_app, monkeypatch):

    app = make_app(CACHE_TTL="100", CACHE_LONG_TTL="1000", CACHE_TTL_JITTER="0", CACHE_L1_MAX_ITEMS="0")
    seed(app, 1)
    client = app.test_client()
    assert client.get("/items/item-0").headers["X-Cache"] == "db"
    assert client.get("/items/item-0").headers["X-Cache"] == "redis"
    # XFetch's draw (tested on its own in test_stampede) says "refresh now": one reader reloads it early.
    monkeypatch.setattr(CacheEntry, "refresh_due", lambda entry, beta: True)
    loads = value(DB_LOADS)
    assert client.get("/items/item-0").headers["X-Cache"] == "db"
    assert value(DB_LOADS) == loads + 1
    redis_client = running_cache().redis.client
    assert redis_client.hget(cache.cache_key("item-0"), "t") == b"200000"
    assert 190_000 < redis_client.pttl(cache.cache_key("item-0")) <= 200_000
    client.get("/items/item-0")
    client.get("/items/item-0")  # refreshed again and again: capped at CACHE_LONG_TTL
    client.get("/items/item-0")
    assert redis_client.hget(cache.cache_key("item-0"), "t") == b"1000000"


def test_an_early_refresh_that_landed_since_the_look_is_not_done_again(make_app, monkeypatch):
    """A reader saw the copy near its expiry; before it takes the lock, another process refreshes the key
    and frees the lock. The reader must find that refresh, not load the key a second time."""

    app = make_app(CACHE_TTL="100", CACHE_LONG_TTL="1000", CACHE_TTL_JITTER="0", CACHE_L1_MAX_ITEMS="0")
    seed(app, 1)
    client = app.test_client()
    assert client.get("/items/item-0").headers["X-Cache"] == "db"
    monkeypatch.setattr(CacheEntry, "refresh_due", lambda entry, beta: True)
    s, key = running_cache(), cache.cache_key("item-0")
    item = app.extensions["item_store"].get("item-0")
    refreshed = CacheEntry.build("item-0", item.version, item.to_json())
    real_acquire = s.lock.acquire

    def the_other_refreshed_first(*args, **kwargs):
        s.redis.refresh(key, refreshed, 200_000)  # as another process's refresh, its lock already freed
        return real_acquire(*args, **kwargs)

    monkeypatch.setattr(s.lock, "acquire", the_other_refreshed_first)
    loads = value(DB_LOADS)
    answer = client.get("/items/item-0")
    assert answer.status_code == 200 and answer.headers["X-Cache"] == "redis" and answer.json["n"] == "item-0"
    assert value(DB_LOADS) == loads
    assert not s.redis.client.exists(s.lock.for_item(key))  # the lock taken for nothing is freed


def test_admin_needs_the_token_and_is_off_without_one(make_app):
    client = make_app().test_client()
    response = client.post("/admin/cache/warm")
    assert response.status_code == 403 and response.json["error"] == "admin_disabled"


def test_admin_rejects_a_wrong_token(make_app):
    client = make_app(API_TOKEN=TOKEN).test_client()
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
        response = client.delete("/admin/cache", headers=headers)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")


def test_admin_warm_then_flush(make_app, quick_bloom):
    app = make_app(API_TOKEN=TOKEN)
    ids = seed(app, 50)
    client = app.test_client()
    started = client.post("/admin/cache/warm", headers=AUTH)
    assert started.status_code == 202 and started.json == {"status": "warming", "items": 50}
    redis_client = running_cache().redis.client
    from tests.support import wait_until

    wait_until(lambda: all(redis_client.exists(cache.cache_key(i)) for i in ids), timeout=10)
    wait_until(lambda: running_cache().bloom.is_built() is True, timeout=10)
    assert client.get(f"/items/{ids[0]}").headers["X-Cache"] == "redis"
    flushed = client.delete("/admin/cache", headers=AUTH)
    assert flushed.status_code == 200 and flushed.json["redis_keys_deleted"] >= 50
    assert not any(redis_client.exists(cache.cache_key(i)) for i in ids)
    assert client.get(f"/items/{ids[0]}").headers["X-Cache"] == "db"


def test_writes_need_the_token_when_one_is_set(make_app):
    client = make_app(API_TOKEN=TOKEN).test_client()
    denied = client.put("/items/a", data="{}", headers=JSON_HEADERS)
    assert denied.status_code == 401 and denied.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.put("/items/a", data="{}", headers={**JSON_HEADERS, **AUTH}).status_code == 201
    assert client.delete("/items/a").status_code == 401
    assert client.get("/items/a").status_code == 200  # reads stay open


def test_warm_cache_cli(make_app, quick_bloom):
    app = make_app()
    seed(app, 30)
    result = app.test_cli_runner().invoke(args=["warm-cache"])
    assert result.exit_code == 0 and "warmed 30 items" in result.output
    assert running_cache().bloom.is_built() is True


def test_init_db_cli(make_app):
    result = make_app().test_cli_runner().invoke(args=["init-db"])
    assert result.exit_code == 0 and "schema ready" in result.output


def test_admin_answers_a_json_503_while_redis_is_down(make_app):
    from tests.support import free_port

    dead = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "REDIS_CLUSTER": "false", "REDIS_SOCKET_TIMEOUT": "0.2"}
    client = make_app(API_TOKEN=TOKEN, **dead).test_client()
    for response in (client.post("/admin/cache/warm", headers=AUTH), client.delete("/admin/cache", headers=AUTH)):
        assert response.status_code == 503 and response.json["error"] == "cache_unavailable"
        assert "Redis is not answering" in response.json["message"] and response.headers["Retry-After"] == "5"
    assert client.get("/health/live").status_code == 200  # and the worker keeps serving


def test_a_warm_while_another_runs_answers_409(make_app):
    app = make_app(API_TOKEN=TOKEN)
    hold = warm.take_lock(running_cache())  # another process is warming
    response = app.test_client().post("/admin/cache/warm", headers=AUTH)
    assert response.status_code == 409 and response.json["error"] == "warm_in_progress"
    assert running_cache().lock.release(warm.lock_key(running_cache()), hold.token) is True


def test_a_failed_early_refresh_serves_the_cached_copy(make_app, monkeypatch):
    from cache.core.metrics import REFRESH_FAILURES
    from db import DatabaseUnavailable

    app = make_app(CACHE_L1_MAX_ITEMS="0")
    seed(app, 1)
    client = app.test_client()
    assert client.get("/items/item-0").headers["X-Cache"] == "db"  # cached in Redis now
    store = app.extensions["item_store"]

    def database_down(item_id):
        raise DatabaseUnavailable("postgresql: OperationalError")

    monkeypatch.setattr(store, "get", database_down)
    monkeypatch.setattr(CacheEntry, "refresh_due", lambda entry, beta: True)  # XFetch says "refresh now"
    failures = value(REFRESH_FAILURES)
    answer = client.get("/items/item-0")
    assert answer.status_code == 200 and answer.headers["X-Cache"] == "redis" and answer.json["n"] == "item-0"
    assert value(REFRESH_FAILURES) == failures + 1
    lock = running_cache().lock
    assert not running_cache().redis.client.exists(lock.for_item(cache.cache_key("item-0")))  # lock released


def test_demo_db_load_delay_slows_database_loads_and_nothing_else(stack):
    """DEMO_DB_LOAD_DELAY (the demo's slow database, demo/slow_app.py): a sleep before each load only."""
    from app import create_app
    from demo.slow_app import SlowLoads

    slept: list[float] = []
    app = create_app(stack, wrap_store=lambda store: SlowLoads(store, 0.25, sleep=slept.append))
    seed(app, 1)
    client = app.test_client()
    tiers = [client.get("/items/item-0").headers["X-Cache"] for _ in range(2)]
    assert tiers == ["db", "lru"] and slept == [0.25]


@pytest.mark.parametrize("raw", ["-0.1", "60", "soon"])
def test_a_bad_demo_db_load_delay_names_the_variable(raw):
    from demo.slow_app import load_delay

    with pytest.raises(ValueError, match="DEMO_DB_LOAD_DELAY"):
        load_delay({"DEMO_DB_LOAD_DELAY": raw})


def test_a_fill_landing_between_a_waiters_looks_is_served_not_loaded_again(make_app, monkeypatch):
    """Another process holds the load lock; its fill lands (releasing the lock) just after a waiting reader
    here has looked and found nothing. The reader must take the fill, not the lock now free: a look and a
    lock taken in two steps let it load the item a second time (the likely cause of CI's 2 loads for 200
    cold reads)."""
    app = make_app(CACHE_L1_MAX_ITEMS="0")
    seed(app, 1)
    s = running_cache()
    key = cache.cache_key("item-0")
    other = s.lock.acquire(s.lock.for_item(key))  # as another process: the lock is its own
    assert isinstance(other, Acquired)
    store = app.extensions["item_store"]
    item = store.get("item-0")
    entry = CacheEntry.build("item-0", item.version, item.to_json())
    looks: list[str] = []

    def the_other_fills_after(look):
        def looked(*args, **kwargs):
            found = look(*args, **kwargs)
            looks.append(look.__name__)
            if len(looks) == 3:  # the reader's first look while waiting (a miss, then the lock held, before)
                s.redis.set_if_newer(key, entry, 60_000, release=other)
            return found

        return looked

    for name in ("get", "read_or_lock"):
        monkeypatch.setattr(s.redis, name, the_other_fills_after(getattr(s.redis, name)))
    loads, waits = value(DB_LOADS), value(STAMPEDE_WAITS)
    answer = app.test_client().get("/items/item-0")
    assert answer.status_code == 200 and answer.json["n"] == "item-0"
    assert answer.headers["X-Cache"] == "redis"
    assert value(DB_LOADS) == loads  # the other process's load was the only one
    assert value(STAMPEDE_WAITS) == waits + 1
    assert len(looks) >= 4  # the fill did land between two of the reader's looks
