"""The store contract: every backend (SQLite; PostgreSQL when TEST_DATABASE_URL is set) runs all of it."""

from __future__ import annotations

import threading

import pytest

from db import open_store


def test_get_missing_is_none(store):
    assert store.get("nope") is None


def test_create_then_update_bumps_version(store):
    first = store.upsert("a", {"name": "one"})
    assert first.created and first.item.version == 1
    second = store.upsert("a", {"name": "two"})
    assert not second.created and second.item.version == 2
    got = store.get("a")
    assert got.fields == {"name": "two"} and got.version == 2
    assert got.updated_at == second.item.updated_at and got.updated_at.endswith("Z")


def test_fields_round_trip_exactly(store):
    fields = {"nested": {"list": [1, 2.5, None, True], "text": "żółw ✓"}, "n": 10**20}
    store.upsert("x", fields)
    assert store.get("x").fields == fields
    assert store.get("x").to_dict() == {"id": "x", **fields, "version": 1, "updated_at": store.get("x").updated_at}


def test_delete_then_recreate_continues_above_the_tombstone(store):
    store.upsert("a", {})
    store.upsert("a", {})
    assert store.delete("a") == 3
    assert store.get("a") is None
    assert store.delete("a") is None
    again = store.upsert("a", {"back": True})
    assert again.created and again.item.version == 4


def test_delete_missing_is_none(store):
    assert store.delete("ghost") is None


def test_list_is_keyset_paginated_in_id_order_without_deleted(store):
    for item_id in ["c", "a", "B", "b", "d"]:
        store.upsert(item_id, {})
    store.delete("c")
    assert [i.id for i in store.list(2)] == ["B", "a"]  # byte order: upper case first, in both backends
    assert [i.id for i in store.list(2, after="a")] == ["b", "d"]
    assert store.list(2, after="d") == []
    assert store.count() == 4


def test_iterate_streams_every_item_in_batches(store):
    for n in range(25):
        store.upsert(f"item-{n:03d}", {"n": n})
    batches = list(store.iterate(batch_size=10))
    assert [len(b) for b in batches] == [10, 10, 5]
    assert [i.fields["n"] for b in batches for i in b] == list(range(25))


def test_concurrent_writers_get_distinct_versions(store):
    store.upsert("hot", {})
    versions: list[int] = []
    lock = threading.Lock()

    def write() -> None:
        for _ in range(10):
            v = store.upsert("hot", {}).item.version
            with lock:
                versions.append(v)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(versions) == list(range(2, 42))
    assert store.get("hot").version == 41


def test_schema_creation_is_idempotent(store):
    store.upsert("a", {})
    store.init_schema()
    assert store.get("a") is not None


def test_ping_passes_on_a_live_store_and_raises_on_an_unusable_one(store, tmp_path):
    from db import DatabaseUnavailable

    store.ping()  # the database answers: no exception
    unusable = open_store(f"sqlite:///{tmp_path}")  # a directory cannot be opened as a database file
    with pytest.raises(DatabaseUnavailable):
        unusable.ping()


def test_unreachable_postgres_raises_database_unavailable():
    from db import DatabaseUnavailable
    from tests.support import free_port

    dead = open_store(f"postgresql://postgres@127.0.0.1:{free_port()}/test")
    dead.pool_timeout = 1.0
    with pytest.raises(DatabaseUnavailable):
        dead.get("a")
    with pytest.raises(DatabaseUnavailable):
        dead.ping()
    dead.close()
