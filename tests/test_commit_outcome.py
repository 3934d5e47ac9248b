"""A write whose COMMIT may or may not have happened is told apart from one where nothing was written
(issue 16, finding 3), and the PostgreSQL pool fails a checkout fast once it knows the database is down."""

from __future__ import annotations

import contextlib
import select
from types import SimpleNamespace

import psycopg
import psycopg_pool
import pytest

import db.postgres
from db import UNCONDITIONAL, CommitOutcomeUnknown, DatabaseUnavailable, Deadline, KeyedCreate
from db.postgres import DOWN_WAIT, PostgresStore, _Pool, check_idle_connection
from tests.support import wait_until


class FakeConnection:
    """Records, per round trip, the first word of each statement sent; raises `error` on a round trip that
    holds a statement whose first word is `fail_on`."""

    info = SimpleNamespace(encoding="utf-8")

    def __init__(self, fail_on: str, error: Exception) -> None:
        self.fail_on, self.error, self.sent = fail_on, error, []

    def execute(self, sql: bytes, params=None):
        return FakeCursor(self).execute(sql)


class FakeCursor:
    """psycopg's ClientCursor as db/postgres.py's _Batched uses it (one query of several statements)."""

    def __init__(self, conn: FakeConnection) -> None:
        self.conn, self.answers = conn, []

    def mogrify(self, sql: str, params) -> str:
        return sql.strip()

    def execute(self, query: bytes):
        statements = [statement.split()[0].decode() for statement in query.split(b";\n")]
        self.conn.sent.append(statements)
        if self.conn.fail_on in statements:
            raise self.conn.error
        self.answers = statements
        return self

    @property
    def description(self):
        return ("version", "created_version", "updated_at") if self.answers[0] in ("INSERT", "UPDATE") else None

    def nextset(self) -> bool:
        self.answers = self.answers[1:]
        return bool(self.answers)

    def fetchall(self):
        return [(2, 1, "2026-11-27T00:00:00.000Z")]


class FakePool:
    down = False
    refused = None

    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn

    @contextlib.contextmanager
    def connection_within(self, wait: float):
        yield self.conn


@pytest.fixture(autouse=True)
def fake_cursors(monkeypatch):
    monkeypatch.setattr(db.postgres, "ClientCursor", FakeCursor)


def fake_store(conn: FakeConnection) -> PostgresStore:
    store = PostgresStore("postgresql://unused.invalid/none")
    store._pool = FakePool(conn)  # type: ignore[assignment]
    return store


def write_through(conn: FakeConnection) -> None:
    fake_store(conn).upsert_if("a", {"n": 1}, UNCONDITIONAL, Deadline.never())


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly"),
        psycopg.errors.ConnectionFailure("connection failure"),  # SQLSTATE 08006
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),  # 57P01
    ],
)
def test_a_connection_lost_during_commit_is_an_unknown_outcome(error):
    conn = FakeConnection("COMMIT", error)
    with pytest.raises(CommitOutcomeUnknown):
        write_through(conn)
    assert conn.sent == [["BEGIN", "SET", "SET", "INSERT", "COMMIT"]]  # the write is one round trip


def test_a_connection_lost_before_commit_wrote_nothing():
    # A keyed create reads its claim before it writes: a round trip without the COMMIT.
    conn = FakeConnection("INSERT", psycopg.OperationalError("server closed the connection unexpectedly"))
    with pytest.raises(DatabaseUnavailable):
        fake_store(conn).create_keyed(KeyedCreate("k", "print", "a"), {}, UNCONDITIONAL, 60.0, Deadline.never())
    assert conn.sent[0] == ["BEGIN", "SET", "SET", "INSERT"]
    assert not any("COMMIT" in trip for trip in conn.sent)  # never asked to commit: nothing can have been written


def test_a_failure_after_the_server_answered_commit_is_never_reported_as_nothing_written(monkeypatch):
    # Reading a statement's answer fails after the COMMIT was answered: it committed, so the client must be
    # told "may have committed" (503 outcome_unknown), not an error that says the write failed.
    def broken_rows(cursor):
        raise psycopg.InterfaceError("could not read the answers")

    monkeypatch.setattr(db.postgres, "_rows", broken_rows)
    conn = FakeConnection("", psycopg.Error("unused"))
    with pytest.raises(CommitOutcomeUnknown, match="committed"):
        write_through(conn)
    assert conn.sent == [["BEGIN", "SET", "SET", "INSERT", "COMMIT"]]  # and no ROLLBACK after it


def test_commit_refused_by_the_server_wrote_nothing():
    # The server answered the COMMIT with an error: it rolled the transaction back.
    conn = FakeConnection("COMMIT", psycopg.errors.SerializationFailure("could not serialize access"))
    with pytest.raises(DatabaseUnavailable):
        write_through(conn)


def test_unknown_outcome_answers_503_saying_how_to_find_out(client, app, monkeypatch):
    def lost(*args, **kwargs):
        raise CommitOutcomeUnknown("postgresql: OperationalError during COMMIT")

    monkeypatch.setattr(app.extensions["item_store"], "upsert_if", lost)
    response = client.put("/items/u1", json={"n": 1})
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert response.json["error"] == "outcome_unknown"
    message = response.json["message"]
    assert "may or may not have been committed" in message
    assert "GET" in message and "If-Match" in message and "Idempotency-Key" in message
    assert "nothing was written" not in message


def test_database_down_still_says_nothing_was_written(client, app, monkeypatch):
    def down(*args, **kwargs):
        raise DatabaseUnavailable("postgresql: OperationalError")

    monkeypatch.setattr(app.extensions["item_store"], "upsert_if", down)
    response = client.put("/items/u1", json={"n": 1})
    assert response.status_code == 503 and response.json["error"] == "database_unavailable"
    assert "nothing was written" in response.json["message"]


def test_checkout_gives_up_after_one_wait_once_the_pool_knows_the_database_is_down(monkeypatch):
    pool = _Pool("postgresql://unused.invalid/none", open=False)
    asked: list[float] = []

    def getconn(timeout: float):
        asked.append(timeout)
        if len(asked) == 2:
            pool.down = True  # the pool's attempt to reconnect failed while this checkout waited
        raise psycopg_pool.PoolTimeout("no connection")

    monkeypatch.setattr(pool, "getconn", getconn)
    with pytest.raises(psycopg_pool.PoolTimeout):
        pool.checkout(wait=3600.0)
    assert len(asked) == 2 and all(timeout <= DOWN_WAIT for timeout in asked)


def test_the_checkout_check_reads_descriptors_above_1024():
    """A worker holds up to worker_connections client sockets, so a database connection's descriptor may
    pass select()'s limit of 1024: the check must still tell a readable one from a quiet one."""
    import os
    import socket

    from db.postgres import _readable

    ours, theirs = socket.socketpair()
    high = os.dup2(ours.fileno(), 1500)
    try:
        assert _readable(high) is False
        theirs.send(b"x")
        assert _readable(high) is True
    finally:
        os.close(high)
        ours.close()
        theirs.close()


def test_the_checkout_check_fails_a_connection_the_server_ended_and_passes_a_live_one(postgres_url):
    with (
        psycopg.connect(postgres_url, autocommit=True) as conn,
        psycopg.connect(postgres_url, autocommit=True) as admin,
    ):
        check_idle_connection(conn)  # idle and alive: passes (without a round trip: the server sent nothing)
        admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        wait_until(lambda: bool(select.select([conn.fileno()], [], [], 0)[0]), timeout=5)
        with pytest.raises(psycopg.OperationalError):
            check_idle_connection(conn)


def test_a_postgresql_older_than_13_is_refused_at_start_naming_its_version():
    """A write's one query relies on 13's per-statement timeouts: an older server would let the deadline lapse."""
    conn = FakeConnection("", psycopg.Error("unused"))
    conn.info = SimpleNamespace(encoding="utf-8", server_version=120017)
    with pytest.raises(DatabaseUnavailable, match="postgresql 12 is older than 13"):
        fake_store(conn).init_schema()
    assert conn.sent == []  # no migration was tried
