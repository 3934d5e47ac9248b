"""The items table's triggers, driven by plain SQL as an outside writer would (both backends): every write is
logged once with its version, versions only rise, hard deletes leave tombstones, and ids come back above them."""

from __future__ import annotations

import re
import threading

import pytest

from db import open_store
from tests.support import sql_connection, wait_until

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def sql(store, database_url):
    """Run literal SQL on a plain driver connection; returns the rows (deleted flags as bool)."""
    with sql_connection(database_url) as conn:

        def run(statement: str) -> list[tuple]:
            cursor = conn.execute(statement)
            return [tuple(row) for row in cursor.fetchall()] if cursor.description else []

        yield run


def log(sql) -> list[tuple[str, int, bool]]:
    return [(i, int(v), bool(d)) for i, v, d in sql("SELECT id, version, deleted FROM item_changes ORDER BY seq")]


def row(sql, item_id: str) -> tuple[int, bool]:
    version, deleted = sql(f"SELECT version, deleted FROM items WHERE id = '{item_id}'")[0]
    return int(version), bool(deleted)


def test_plain_insert_is_logged_and_stamped_by_the_database(store, sql):
    sql("""INSERT INTO items (id, fields) VALUES ('p', '{"a":1}')""")
    assert log(sql) == [("p", 1, False)]
    item = store.get("p")
    assert item.fields == {"a": 1} and item.version == 1 and TIMESTAMP.match(item.updated_at)


def test_update_that_leaves_version_alone_still_bumps_it(store, sql):
    store.upsert("p", {"a": 1})
    before = store.get("p").updated_at
    sql("""UPDATE items SET fields = '{"a":2}' WHERE id = 'p'""")
    item = store.get("p")
    assert item.version == 2 and item.fields == {"a": 2} and item.updated_at >= before
    assert log(sql) == [("p", 1, False), ("p", 2, False)]


def test_update_to_a_lower_version_goes_above_the_old_one_and_a_higher_one_is_kept(store, sql):
    store.upsert("p", {})
    store.upsert("p", {})
    sql("UPDATE items SET version = 1 WHERE id = 'p'")
    assert row(sql, "p") == (3, False)
    sql("UPDATE items SET version = 10 WHERE id = 'p'")
    assert row(sql, "p") == (10, False)
    assert log(sql)[-2:] == [("p", 3, False), ("p", 10, False)]


def test_hard_delete_leaves_a_logged_tombstone_and_insert_continues_above_it(store, sql):
    store.upsert("p", {})
    store.upsert("p", {})
    sql("DELETE FROM items WHERE id = 'p'")
    assert row(sql, "p") == (3, True)
    assert store.get("p") is None and store.count() == 0
    sql("""INSERT INTO items (id, fields) VALUES ('p', '{"back":true}')""")
    assert row(sql, "p") == (4, False)
    assert store.get("p").fields == {"back": True}
    assert log(sql) == [("p", 1, False), ("p", 2, False), ("p", 3, True), ("p", 4, False)]


def test_deleting_a_tombstone_is_a_purge_not_a_change(store, sql):
    store.upsert("p", {})
    store.delete("p")
    logged = log(sql)
    sql("DELETE FROM items WHERE id = 'p'")
    assert sql("SELECT count(*) FROM items")[0][0] == 0
    assert log(sql) == logged
    sql("""INSERT INTO items (id, fields) VALUES ('p', '{}')""")  # no tombstone left, its version is
    assert row(sql, "p") == (3, False)  # kept: above the purged one, so an old ETag cannot match this one
    assert log(sql) == [*logged, ("p", 3, False)]
    sql("""INSERT INTO items (id, fields) VALUES ('never', '{}')""")  # any id with no row starts above it
    assert row(sql, "never") == (3, False)


def test_an_insert_that_replaces_a_tombstone_is_no_purge(store, sql):
    store.upsert("p", {})
    store.delete("p")
    sql("""INSERT INTO items (id, fields) VALUES ('p', '{}')""")
    assert row(sql, "p") == (3, False)
    sql("""INSERT INTO items (id, fields) VALUES ('fresh', '{}')""")
    assert row(sql, "fresh") == (1, False)  # nothing was purged: new ids still start at 1


def test_delete_of_every_row_turns_live_rows_into_tombstones(store, sql):
    for item_id in ["a", "b", "c"]:
        store.upsert(item_id, {})
    store.delete("c")
    sql("DELETE FROM items")
    assert sorted(sql("SELECT id, version, deleted FROM items")) == [("a", 2, True), ("b", 2, True)]
    assert log(sql)[-2:] in ([("a", 2, True), ("b", 2, True)], [("b", 2, True), ("a", 2, True)])


def test_soft_delete_and_undelete_by_sql_are_logged_as_such(store, sql):
    store.upsert("p", {"a": 1})
    sql("UPDATE items SET deleted = TRUE WHERE id = 'p'")
    assert store.get("p") is None
    sql("UPDATE items SET deleted = FALSE WHERE id = 'p'")
    assert store.get("p").version == 3
    assert log(sql) == [("p", 1, False), ("p", 2, True), ("p", 3, False)]
    again = store.upsert("p", {"a": 2})
    assert not again.created and again.item.version == 4


def test_bulk_update_bumps_and_logs_every_row(store, sql):
    for n in range(200):
        store.upsert(f"item-{n:03d}", {"n": n})
    sql("""UPDATE items SET fields = '{"bulk":true}'""")
    assert sql("SELECT min(version), max(version), count(*) FROM items") == [(2, 2, 200)]
    changes = log(sql)
    assert len(changes) == 400 and sorted(changes[200:]) == [(f"item-{n:03d}", 2, False) for n in range(200)]


def test_the_services_own_writes_log_exactly_one_change_each(store, sql):
    assert store.upsert("s", {"a": 1}).created
    assert not store.upsert("s", {"a": 2}).created
    assert store.delete("s") == 3
    again = store.upsert("s", {"a": 3})
    assert again.created and again.item.version == 4
    assert store.delete("nope") is None
    assert log(sql) == [("s", 1, False), ("s", 2, False), ("s", 3, True), ("s", 4, False)]
    assert store.get("s").updated_at == again.item.updated_at


def test_the_services_upsert_after_a_hard_delete_continues_above_it(store, sql):
    store.upsert("s", {})
    sql("DELETE FROM items WHERE id = 's'")
    again = store.upsert("s", {"b": 1})
    assert again.created and again.item.version == 3
    assert store.get("s").version == 3 and log(sql)[-1] == ("s", 3, False)


def test_an_id_cannot_be_renamed(store, sql):
    store.upsert("p", {})
    with pytest.raises(Exception, match="cannot change"):
        sql("UPDATE items SET id = 'q' WHERE id = 'p'")
    assert row(sql, "p") == (1, False)


def test_checks_refuse_what_the_service_would_never_store(store, sql):
    for bad in [
        """INSERT INTO items (id, fields) VALUES ('a', '[1,2]')""",
        """INSERT INTO items (id, fields) VALUES ('has space', '{}')""",
        """INSERT INTO items (id, fields, version) VALUES ('a', '{}', 0)""",
    ]:
        with pytest.raises(Exception, match="(?i)check"):
            sql(bad)
    assert sql("SELECT count(*) FROM items")[0][0] == 0


def test_sqlite_insert_or_replace_of_a_live_row_continues_above_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'items.sqlite3'}"
    store = open_store(url)
    store.init_schema()
    store.upsert("p", {})
    store.upsert("p", {})
    with sql_connection(url) as conn:  # INSERT OR REPLACE is SQLite's; its delete fires no trigger
        conn.execute("""INSERT OR REPLACE INTO items (id, fields) VALUES ('p', '{"r":1}')""")
        logged = conn.execute("SELECT id, version, deleted FROM item_changes ORDER BY seq").fetchall()
    assert store.get("p").version == 3 and store.get("p").fields == {"r": 1}
    assert logged[-1] == ("p", 3, 0)
    store.close()


def test_concurrent_upserts_of_a_deleted_id_continue_above_its_tombstone_once(store):
    store.upsert("hot", {})
    store.delete("hot")
    results = []
    lock = threading.Lock()

    def write() -> None:
        for _ in range(10):
            result = store.upsert("hot", {})
            with lock:
                results.append(result)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.item.version for r in results) == list(range(3, 43))
    assert [r.item.version for r in results if r.created] == [3]


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # SQLite: one writer at a time
def test_a_create_racing_the_purge_of_its_ids_tombstone_still_starts_above_it(store, database_url):
    store.upsert("x", {})
    store.delete("x")  # tombstone at 2
    results = []
    with sql_connection(database_url) as purger, sql_connection(database_url) as watcher:
        purger.execute("BEGIN")
        assert purger.execute("DELETE FROM items WHERE deleted").rowcount == 1  # not committed yet
        writer = threading.Thread(target=lambda: results.append(store.upsert("x", {})))
        writer.start()
        waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"
        wait_until(lambda: watcher.execute(waiting).fetchone()[0] >= 1)  # the create waits for the purge
        purger.execute("COMMIT")
        writer.join(timeout=10)
    assert results and results[0].created and results[0].item.version == 3
