"""Migrations: a database made by the old init_schema upgrades in place; migrators may start at once; a
failing migration leaves nothing behind; rows the new CHECKs would refuse are kept and reported as malformed."""

from __future__ import annotations

import threading

import pytest

from db import Deadline, KeyBusy, KeyedCreate, Replay, StoredResponse, open_store
from db.base import MalformedItem
from db.migrate import migrations
from tests.support import postgres_schema_url, sql_connection

LEGACY_ROWS = """
INSERT INTO items (id, fields, version, created_version, deleted, updated_at) VALUES
    ('live', '{"b":1,"a":[1,2]}', 3, 1, FALSE, '2026-01-02T03:04:05.678Z'),
    ('gone', '{}', 2, 1, TRUE, '2026-01-02T03:04:06.000Z'),
    ('odd', '[1,2]', 1, 1, FALSE, '2026-01-02T03:04:07.000Z'),
    ('zed', '{"z":true}', 1, 1, FALSE, '2026-01-02T03:04:08.000Z')
"""

COLUMN_TYPES = """
SELECT column_name, data_type FROM information_schema.columns
WHERE table_name = 'items' AND table_schema = current_schema()
"""


def backend(database_url: str) -> str:
    return "sqlite" if database_url.startswith("sqlite") else "postgres"


def make_legacy_database(database_url: str, rows: str = LEGACY_ROWS) -> None:
    """The schema as the old init_schema left it (no schema_migrations), with rows."""
    with sql_connection(database_url) as conn:
        for statement in migrations(backend(database_url))[0].sql.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(rows)


def applied(database_url: str) -> list[int]:
    with sql_connection(database_url) as conn:
        return [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()]


def test_a_database_from_the_old_init_schema_upgrades_in_place(database_url):
    make_legacy_database(database_url)
    store = open_store(database_url)
    store.init_schema()
    assert applied(database_url) == [m.version for m in migrations(backend(database_url))]
    live = store.get("live")
    assert (live.version, live.updated_at) == (3, "2026-01-02T03:04:05.678Z")
    assert list(live.fields) == ["b", "a"]  # the body's key order is kept (json, not jsonb)
    assert store.get("gone") is None
    again = store.upsert("gone", {"back": True})  # the old tombstone still orders versions
    assert again.created and again.item.version == 3
    assert store.upsert("live", {"x": 1}).item.version == 4
    store.init_schema()  # a second run applies nothing
    assert store.get("live").fields == {"x": 1}
    start = store.changes_after(None, 10).cursor  # the upgraded table has the triggers and the checks
    with sql_connection(database_url) as conn:
        conn.execute("UPDATE items SET fields = '{\"sql\":1}' WHERE id = 'zed'")
        with pytest.raises(Exception, match="(?i)check"):
            conn.execute("INSERT INTO items (id, fields) VALUES ('new', '[1]')")
        if backend(database_url) == "postgres":
            kinds = dict(conn.execute(COLUMN_TYPES).fetchall())
            assert (kinds["fields"], kinds["updated_at"]) == ("json", "timestamp with time zone")
    assert [(c.id, c.version) for c in store.changes_after(start, 10).changes] == [("zed", 2)]
    store.close()


def test_a_malformed_row_from_before_the_checks_is_reported_not_fatal(database_url):
    make_legacy_database(database_url)
    store = open_store(database_url)
    store.init_schema()
    with pytest.raises(MalformedItem) as raised:
        store.get("odd")
    assert raised.value.item_id == "odd"
    assert [i.id for i in store.list(2)] == ["live", "zed"]  # skipped, and the page is still full
    assert [i.id for b in store.iterate(batch_size=1) for i in b] == ["live", "zed"]
    store.close()


def test_concurrent_migrators_apply_each_migration_once(database_url):
    stores = [open_store(database_url, timeout=30) for _ in range(4)]
    errors: list[BaseException] = []

    def migrate(store) -> None:
        try:
            store.init_schema()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert applied(database_url) == [m.version for m in migrations(backend(database_url))]
    assert stores[0].upsert("a", {}).item.version == 1
    for store in stores:
        store.close()


def test_a_failing_postgres_migration_leaves_the_database_as_it_was(postgres_url):
    with postgres_schema_url(postgres_url) as database_url:
        make_legacy_database(database_url, LEGACY_ROWS.replace("'[1,2]'", "'not json'"))
        store = open_store(database_url)
        with pytest.raises(Exception, match="(?i)json"):  # json refuses it: the upgrade stops, loudly
            store.init_schema()
        assert applied(database_url) == [1]  # 0001 committed; 0002 rolled back entirely
        with sql_connection(database_url) as conn:
            kinds = dict(conn.execute(COLUMN_TYPES).fetchall())
        assert kinds["fields"] == "text" and kinds["updated_at"] == "text"
        store.close()


def test_sqlite_keeps_a_body_that_is_not_json_and_reports_it(tmp_path):
    database_url = f"sqlite:///{tmp_path / 'items.sqlite3'}"
    make_legacy_database(database_url, LEGACY_ROWS.replace("'[1,2]'", "'not json'"))
    store = open_store(database_url)
    store.init_schema()
    with pytest.raises(MalformedItem):
        store.get("odd")
    assert store.count() == 3 and store.get("zed").fields == {"z": True}
    store.close()


def test_a_database_at_0005_upgrades_its_keys_and_keeps_versions_of_ids_purged_before(database_url, monkeypatch):
    """0006 starts the purged-version floor from the change log; 0007 drops the keys' stored bodies (a
    replay is rebuilt from the item) and numbers the keys in the order they were claimed."""
    import db.postgres
    import db.sqlite

    store = open_store(database_url)
    first_five = migrations(backend(database_url))[:5]
    module = db.sqlite if backend(database_url) == "sqlite" else db.postgres
    monkeypatch.setattr(module, "migrations", lambda _: first_five)
    store.init_schema()
    with sql_connection(database_url) as conn:  # as the service at 0005 would have left them
        conn.execute("""INSERT INTO items (id, fields) VALUES ('a', '{"n":1}')""")
        conn.execute("INSERT INTO item_changes (id, version, deleted) VALUES ('ghost', 7, TRUE)")  # purged row
        conn.execute(
            "INSERT INTO idempotency_keys (key, fingerprint, token, item_id, status_code, version, body)"
            " VALUES ('done', 'f', 't', 'a', 201, 1, '{\"stale\":\"body\"}')"
        )
        conn.execute(
            "INSERT INTO idempotency_keys (key, fingerprint, token, item_id) VALUES ('running', 'f', 't', 'b')"
        )
    monkeypatch.undo()
    store.init_schema()
    assert applied(database_url) == [m.version for m in migrations(backend(database_url))]
    replay = store.claim_key(KeyedCreate("done", "f", "x"), 60.0, Deadline.never())
    assert replay == Replay(StoredResponse("a", 1, 201, store.get("a")))
    assert store.claim_key(KeyedCreate("running", "f", "x"), 60.0, Deadline.never()) == KeyBusy("b")
    assert store.upsert("ghost", {}).item.version == 8  # above what the log remembered of it
    assert store.upsert("a", {}).item.version == 2  # ids with rows are untouched
    store.close()
