"""Request deadlines: the Deadline itself (fake clock), REQUEST_TIMEOUT's validation, a write that meets a
table lock longer than its deadline (rolled back, 503), and reads that stop waiting for another's load."""

from __future__ import annotations

import json
import time

import pytest

from cache.core.lock import FleetLock
from config import ConfigError, load_config
from db import UNCONDITIONAL, Deadline, DeadlineExceeded
from tests.support import FakeClock, running_cache, sql_connection


def test_deadline_counts_down_on_its_clock():
    clock = FakeClock()
    deadline = Deadline.after(2.0, clock)
    assert deadline.remaining() == 2.0 and deadline.cap(5.0) == 2.0 and deadline.cap(0.5) == 0.5
    clock.tick(1.5)
    assert deadline.check("a lock") == 0.5 and not deadline.expired()
    clock.tick(1.0)
    assert deadline.remaining() == 0.0 and deadline.expired() and deadline.cap(3.0) == 0.0
    with pytest.raises(DeadlineExceeded, match="waiting for a lock"):
        deadline.check("a lock")


def test_never_never_runs_out():
    assert Deadline.never().remaining() == float("inf") and not Deadline.never().expired()


def test_request_timeout_default_and_validation():
    assert load_config({}).request_timeout == 10.0
    assert load_config({"REQUEST_TIMEOUT": "2.5"}).request_timeout == 2.5
    for bad in ("0", "30", "-1", "soon"):
        with pytest.raises(ConfigError, match="REQUEST_TIMEOUT"):
            load_config({"REQUEST_TIMEOUT": bad})


def _lock_items_table(conn, database_url: str) -> None:
    """Hold every writer off the items table (PostgreSQL: a table lock; SQLite: the database's write lock)."""
    if database_url.startswith("sqlite"):
        conn.execute("BEGIN EXCLUSIVE")
    else:
        conn.execute("BEGIN")
        conn.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")


@pytest.mark.parametrize("stack", ["embedded", "real"], indirect=True)
def test_a_write_behind_a_long_table_lock_is_rolled_back_at_its_deadline(make_app, stack):
    app = make_app(REQUEST_TIMEOUT="1")
    client = app.test_client()
    headers = {"Content-Type": "application/json"}
    assert client.put("/items/locked", data=json.dumps({"n": 1}), headers=headers).status_code == 201
    with sql_connection(stack["DATABASE_URL"]) as conn:
        _lock_items_table(conn, stack["DATABASE_URL"])
        began = time.monotonic()
        response = client.put("/items/locked", data=json.dumps({"n": 2}), headers=headers)
        elapsed = time.monotonic() - began
        conn.execute("ROLLBACK")  # the lock is released only now, long after the client was answered
    assert response.status_code == 503 and response.json["error"] == "deadline_exceeded"
    assert response.headers["Retry-After"] == "1"
    assert 0.9 <= elapsed < 1.5  # the deadline plus a small margin
    with sql_connection(stack["DATABASE_URL"]) as conn:
        row = conn.execute("SELECT version, CAST(fields AS TEXT) FROM items WHERE id = 'locked'").fetchall()
    assert [(row[0][0], json.loads(row[0][1]))] == [(1, {"n": 1})]  # exactly as before
    assert client.get("/items/locked").json["version"] == 1


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_a_write_with_no_time_left_touches_nothing(make_app, stack):
    app = make_app()
    store = app.extensions["item_store"]
    with pytest.raises(DeadlineExceeded):
        app.extensions["item_cache"].write_item("late", {}, UNCONDITIONAL, Deadline(0.0, clock=lambda: 1.0))
    assert store.get("late") is None


@pytest.mark.parametrize("stack", ["embedded", "real"], indirect=True)
def test_a_read_stops_waiting_for_another_load_when_its_deadline_runs_out(make_app, monkeypatch):
    app = make_app(CACHE_BLOOM="false", CACHE_LOCK_WAIT="5")
    app.extensions["item_store"].upsert("slow", {"n": 1})
    s = running_cache()
    held = s.lock.acquire(FleetLock.for_item(s.key("slow")))  # another process is loading it, and never fills
    assert held is not None
    waits: list[float] = []
    monkeypatch.setattr(s.fills, "wait", lambda key, timeout: waits.append(timeout) or False)
    read = s.read_item("slow", Deadline(0.0, clock=lambda: 1.0))
    assert read.tier == "db" and read.entry.version == 1
    assert waits == []  # no time left: loaded at once instead of waiting CACHE_LOCK_WAIT for the other
