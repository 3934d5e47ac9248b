"""The change-log API of the store, one contract for both backends (plus PostgreSQL's commit-order cases)."""

from __future__ import annotations

import random
import threading

import pytest

from db import open_store
from db.changes import Change, ChangeCursor
from tests.support import postgres_schema_url, sql_connection


def drain(store, cursor, limit=100):
    """Every change after `cursor`, batch by batch; returns (changes, last cursor)."""
    changes = []
    while True:
        batch = store.changes_after(cursor, limit)
        assert not batch.gap
        changes += batch.changes
        if not batch.changes and batch.cursor == cursor:
            return changes, cursor
        cursor = batch.cursor


def test_a_new_follower_starts_at_the_end_of_the_log(store):
    store.upsert("old", {})
    start = store.changes_after(None, 100)
    assert start.changes == [] and not start.gap
    store.upsert("new", {})
    store.delete("new")
    changes, _ = drain(store, start.cursor)
    assert [(c.id, c.version, c.deleted) for c in changes] == [("new", 1, False), ("new", 2, True)]


def test_changes_come_in_seq_order_in_batches_of_at_most_limit(store):
    cursor = store.changes_after(None, 10).cursor
    for n in range(25):
        store.upsert(f"item-{n:02d}", {"n": n})
    sizes, seen = [], []
    while batch := store.changes_after(cursor, 10).changes:
        sizes.append(len(batch))
        seen += batch
        cursor = store.changes_after(cursor, 10).cursor
    assert sizes == [10, 10, 5]
    assert [c.id for c in seen] == [f"item-{n:02d}" for n in range(25)]
    assert [c.seq for c in seen] == sorted(c.seq for c in seen)


def test_cursor_text_round_trips_and_junk_is_refused():
    for cursor in [ChangeCursor(0), ChangeCursor(1042), ChangeCursor(1042, ((7781, 1040), (7790, 1042)))]:
        assert ChangeCursor.from_text(cursor.to_text()) == cursor
    assert ChangeCursor(1042, ((7781, 1040),)).safe_seq == 1040
    for junk in ["", "1042", "c9:1", "c1:x", "c1:1:2"]:
        with pytest.raises(ValueError):
            ChangeCursor.from_text(junk)


def test_cursors_are_saved_durably_by_name(store):
    assert store.load_cursor("follower") is None
    store.save_cursor("follower", "c1:5")
    store.save_cursor("follower", "c1:9")
    store.save_cursor("other", "c1:1")
    assert store.load_cursor("follower") == "c1:9" and store.load_cursor("other") == "c1:1"


def test_purged_changes_behind_a_cursor_are_reported_as_a_gap(store):
    behind = store.changes_after(None, 10).cursor
    for n in range(5):
        store.upsert(f"i{n}", {})
    changes, caught_up = drain(store, behind)
    assert store.purge_changes(changes[2].seq, older_than_s=3600) == 0  # too young: kept
    assert store.purge_changes(changes[2].seq, older_than_s=0) == 3
    gap = store.changes_after(behind, 10)
    assert gap.gap and gap.changes == [] and gap.cursor.seq == caught_up.seq
    assert not store.changes_after(caught_up, 10).gap
    store.upsert("after", {})
    assert [c.id for c in store.changes_after(gap.cursor, 10).changes] == ["after"]


def test_purged_tombstones_go_but_versions_never_restart(store):
    store.upsert("t", {})
    store.delete("t")
    store.upsert("live", {})
    assert store.purge_tombstones(older_than_s=3600) == 0
    assert store.versions(["t", "live", "ghost"]) == {"t": (2, True), "live": (1, False)}
    assert store.purge_tombstones(older_than_s=0) == 1
    assert store.versions(["t", "live"]) == {"live": (1, False)}
    # An id with no row starts above every purged version: "t.1" and "t.2" never name another item.
    recreated = store.upsert("t", {})
    assert recreated.created and recreated.item.version == 3
    assert store.upsert("new", {}).item.version == 3 and store.upsert("live", {}).item.version == 2


def test_versions_of_no_ids_is_empty(store):
    assert store.versions([]) == {}


def test_wait_for_changes_is_bounded(store, database_url):
    if database_url.startswith("sqlite"):
        assert store.wait_for_changes(0.05) is False  # SQLite polls: the wait is the poll interval
        return
    assert store.wait_for_changes(0.05) is True  # just connected: whatever came before was not heard
    assert store.wait_for_changes(0.2) is False  # nothing committed: the timeout ran out


def test_postgres_wakes_a_waiter_at_a_commit(pg):
    store, _ = pg
    store.wait_for_changes(0.01)  # connect and LISTEN
    threading.Timer(0.1, lambda: store.upsert("w", {})).start()
    assert store.wait_for_changes(5) is True  # woken by the commit (bench/changelog.py times it)
    assert store.wait_for_changes(0.05) is False  # the notifications of that write were drained


@pytest.fixture
def pg(postgres_url):
    """A PostgreSQL store and its URL: commit order differs from seq order only there (SQLite has one
    writer at a time, so its seq order is commit order)."""
    with postgres_schema_url(postgres_url) as url:
        store = open_store(url)
        store.init_schema()
        yield store, url
        store.close()


def test_a_lower_seq_committed_last_is_not_missed(pg):
    pg_store, database_url = pg
    cursor = pg_store.changes_after(None, 10).cursor
    with sql_connection(database_url) as first, sql_connection(database_url) as second:
        first.execute("BEGIN")
        first.execute("""INSERT INTO items (id, fields) VALUES ('low', '{}')""")  # takes the lower seq
        second.execute("""INSERT INTO items (id, fields) VALUES ('high', '{}')""")  # commits first
        batch = pg_store.changes_after(cursor, 10)
        assert [c.id for c in batch.changes] == ["high"]
        first.execute("COMMIT")
    later = pg_store.changes_after(batch.cursor, 10)
    assert [c.id for c in later.changes] == ["low"] and later.changes[0].seq < batch.changes[0].seq
    assert pg_store.changes_after(later.cursor, 10).changes == []  # delivered once, not again


def test_a_long_open_transaction_does_not_hold_back_newer_changes(pg):
    pg_store, database_url = pg
    cursor = pg_store.changes_after(None, 10).cursor
    with sql_connection(database_url) as idle:
        idle.execute("BEGIN")
        idle.execute("""INSERT INTO items (id, fields) VALUES ('slow', '{}')""")
        delivered = []
        for n in range(3):
            pg_store.upsert(f"fast-{n}", {})
            batch = pg_store.changes_after(cursor, 10)
            delivered += [c.id for c in batch.changes]
            cursor = batch.cursor
        assert delivered == ["fast-0", "fast-1", "fast-2"]
        assert cursor.safe_seq < cursor.seq  # the open transaction's seq may still come: purge stops there
        idle.execute("ROLLBACK")
    assert pg_store.changes_after(cursor, 10).changes == []


def test_an_open_transaction_that_never_wrote_an_item_does_not_hold_back_what_is_applied(pg):
    pg_store, database_url = pg
    cursor = pg_store.changes_after(None, 10).cursor
    with sql_connection(database_url) as elsewhere, sql_connection(database_url) as writer:
        elsewhere.execute("BEGIN")
        elsewhere.execute("SELECT pg_current_xact_id()")  # an operator's transaction on anything else: an xid
        pg_store.upsert("after", {})
        batch = pg_store.changes_after(cursor, 10)
        assert [c.id for c in batch.changes] == ["after"]
        assert batch.upto >= batch.changes[0].seq  # applied up to it: nothing open can still come below
        writer.execute("BEGIN")
        writer.execute("""INSERT INTO items (id, fields) VALUES ('open', '{}')""")  # holds a seq, not committed
        pg_store.upsert("later", {})
        held = pg_store.changes_after(batch.cursor, 10)
        assert [c.id for c in held.changes] == ["later"]
        assert held.upto < held.changes[0].seq  # the open writer's lower seq may still come: not past it
        writer.execute("COMMIT")
        elsewhere.execute("ROLLBACK")


def test_many_late_changes_are_paged_without_loss(pg):
    pg_store, database_url = pg
    cursor = pg_store.changes_after(None, 5).cursor
    with sql_connection(database_url) as bulk:
        bulk.execute("BEGIN")
        for n in range(12):
            bulk.execute(f"""INSERT INTO items (id, fields) VALUES ('late-{n:02d}', '{{}}')""")
        pg_store.upsert("early", {})
        first = pg_store.changes_after(cursor, 5)
        bulk.execute("COMMIT")
    changes, _ = drain(pg_store, first.cursor, limit=5)
    assert [c.id for c in first.changes] == ["early"]
    assert [c.id for c in changes] == [f"late-{n:02d}" for n in range(12)]
    assert all(isinstance(c, Change) for c in changes)


def test_seqs_are_never_reused_after_a_purge_of_everything(store):
    cursor = store.changes_after(None, 10).cursor
    for n in range(3):
        store.upsert(f"i{n}", {})
    changes, cursor = drain(store, cursor)
    store.purge_changes(changes[-1].seq, older_than_s=0)
    store.upsert("next", {})
    batch = store.changes_after(cursor, 10)
    assert not batch.gap and [(c.id, c.seq > changes[-1].seq) for c in batch.changes] == [("next", True)]


def test_the_listener_reconnects_after_its_connection_is_killed_and_says_poll(pg):
    store, database_url = pg
    store.wait_for_changes(0.01)  # connect and LISTEN
    backend_pid = store._waiter._conn.info.backend_pid
    with sql_connection(database_url) as admin:
        admin.execute(f"SELECT pg_terminate_backend({backend_pid})")
    assert store.wait_for_changes(5) is True  # the failure: poll, notifications may have been lost
    assert store.wait_for_changes(5) is True  # reconnected: poll once more for what it did not hear
    assert store._waiter._conn.info.backend_pid != backend_pid
    threading.Timer(0.1, lambda: store.upsert("after", {})).start()
    assert store.wait_for_changes(5) is True


def test_a_follower_racing_concurrent_writers_gets_every_committed_change_exactly_once(pg):
    store, database_url = pg
    cursor = store.changes_after(None, 7).cursor

    def writer(number: int) -> None:
        chance = random.Random(number)
        with sql_connection(database_url) as conn:
            for txn in range(25):
                conn.execute("BEGIN")
                for k in range(chance.randint(1, 3)):
                    item_id = f"w{number}-{chance.randint(0, 5)}"
                    conn.execute(
                        f"INSERT INTO items (id, fields) VALUES ('{item_id}', '{{}}') "
                        f'ON CONFLICT (id) DO UPDATE SET fields = \'{{"t":{txn},"k":{k}}}\''
                    )
                together.wait()  # every writer holds its seqs now: their commits race and overtake each other
                conn.execute("ROLLBACK" if chance.random() < 0.1 else "COMMIT")

    together = threading.Barrier(4, timeout=30)
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in writers:
        thread.start()
    delivered: list[int] = []
    writing = True
    while writing:
        writing = any(t.is_alive() for t in writers)  # one more read after the last writer is done
        batch = store.changes_after(cursor, 7)
        delivered += [c.seq for c in batch.changes]
        cursor = batch.cursor
    changes, _ = drain(store, cursor, limit=7)
    delivered += [c.seq for c in changes]
    with sql_connection(database_url) as conn:
        logged = [row[0] for row in conn.execute("SELECT seq FROM item_changes ORDER BY seq").fetchall()]
    assert len(delivered) == len(set(delivered))  # nothing twice
    assert sorted(set(logged) - set(delivered)) == [] and sorted(set(delivered) - set(logged)) == []


def test_a_cursor_ahead_of_the_log_is_a_gap(store):
    store.upsert("a", {})
    end = store.changes_after(None, 10).cursor
    ahead = ChangeCursor(end.seq + 1000)  # e.g. saved against a database since restored from a backup
    batch = store.changes_after(ahead, 10)
    assert batch.gap and batch.cursor.seq == end.seq
