"""SQLite backend: stdlib sqlite3, WAL, one connection per thread, never shared across a fork."""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from db.base import DatabaseUnavailable, Deadline, DeadlineExceeded
from db.changes import Change, ChangeBatch, ChangeCursor
from db.keys import Fetch, Pending
from db.migrate import migrations, sqlite_statements
from db.sql import Params, SQLStore, end_cursor
from db.sqlite_sql import IS_APPLIED, KEY_STATEMENTS, MIGRATIONS_TABLE, RECORD_APPLIED, STATEMENTS


def _wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch to WAL, trying again until `timeout`: connections opening a new database together can find
    it locked without SQLite waiting its busy timeout (two escalating to the exclusive lock the switch
    needs, one of them is refused at once): 5 of 200 runs of four concurrent migrators on a new file failed so."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


class SQLiteStore(SQLStore):
    sql = STATEMENTS
    keys = KEY_STATEMENTS

    def __init__(self, path: str, timeout: float = 3.0) -> None:
        self.path = path
        self.timeout = timeout
        self._local = threading.local()
        self._pid = os.getpid()
        self._waiter = PollingWaiter()

    def _connection(self) -> sqlite3.Connection:
        if self._pid != os.getpid():  # forked: the parent's connections are not ours to use
            self._local, self._pid = threading.local(), os.getpid()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # Autocommit: every statement we run is a transaction of its own.
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            _wal(conn, self.timeout)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:  # locked too long, disk full, unreadable file
            raise DatabaseUnavailable(f"sqlite: {exc}") from exc

    @contextlib.contextmanager
    def _transaction(self, begin: str = "BEGIN") -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        with self._errors():
            conn.execute(begin)
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextlib.contextmanager
    def _within(self, deadline: Deadline) -> Iterator[Fetch]:
        # SQLite's only wait is for the write lock: the busy timeout, taken from what is left. BEGIN
        # IMMEDIATE takes the lock first, so a statement never finds the database locked half-way.
        busy = min(deadline.check("the database's write lock"), self.timeout)
        conn = self._connection()
        shortened = busy < self.timeout  # else the connection's own busy timeout is the bound: no PRAGMAs
        if shortened:
            conn.execute(f"PRAGMA busy_timeout = {max(1, int(busy * 1000))}")
        try:
            with self._transaction("BEGIN IMMEDIATE") as tx:
                yield _Immediate(tx)
        except DatabaseUnavailable as exc:
            if shortened and "locked" in str(exc):
                raise DeadlineExceeded("the database's write lock") from exc
            raise
        finally:
            if shortened:
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")

    def _fetch(self, sql: str, params: Params | None = None) -> list[Any]:
        with self._errors():
            return self._connection().execute(sql, params or {}).fetchall()

    def _execute(self, sql: str, params: Params | None = None) -> int:
        with self._errors():
            return self._connection().execute(sql, params or {}).rowcount

    def _ids_param(self, ids: builtins.list[Any]) -> Any:
        return json.dumps(ids)

    def init_schema(self) -> None:
        """Apply the migrations not yet applied, each in a transaction of its own (see db.migrate)."""
        for migration in migrations("sqlite"):
            try:
                # IMMEDIATE: take the write lock before reading what is applied, so two migrators queue.
                with self._transaction("BEGIN IMMEDIATE") as conn:
                    conn.execute(MIGRATIONS_TABLE)
                    if conn.execute(IS_APPLIED, (migration.version,)).fetchall():
                        continue
                    for statement in sqlite_statements(migration.sql):
                        conn.execute(statement)
                    conn.execute(RECORD_APPLIED, (migration.version, migration.name))
            finally:
                self._connection().execute("PRAGMA ignore_check_constraints = OFF")

    def changes_after(self, cursor: ChangeCursor | None, limit: int) -> ChangeBatch:
        # One writer at a time: seq order is commit order, and "after seq" misses nothing.
        with self._transaction() as conn:  # one read snapshot for the end, the purge mark and the rows
            log_end = conn.execute(self.sql.log_end).fetchone()
            end, purged = end_cursor(log_end), int(log_end[1])
            if cursor is None:
                return ChangeBatch([], end, gap=False, upto=end.seq)
            if purged > cursor.safe_seq or cursor.seq > end.seq:  # purged, or ahead: a recreated database
                return ChangeBatch([], end, gap=True, upto=end.seq)
            rows = conn.execute(self.sql.changes_after, {"seq": cursor.seq, "limit": limit}).fetchall()
        changes = [Change(int(r[0]), r[1], int(r[2]), bool(r[3])) for r in rows]
        seq = changes[-1].seq if changes else cursor.seq
        return ChangeBatch(changes, ChangeCursor(seq), gap=False, upto=seq if len(changes) == limit else end.seq)

    def wait_for_changes(self, timeout: float) -> bool:
        return self._waiter.wait(timeout)

    def close(self) -> None:
        self._waiter.close()
        self._waiter = PollingWaiter()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class _Immediate:
    """The open transaction (db.keys.Fetch): sqlite3 runs every statement at once, sent or fetched."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __call__(self, sql: str, params: Params, /) -> list[Any]:
        return self.conn.execute(sql, params).fetchall()

    def send(self, sql: str, params: Params, /) -> Pending:
        rows = self.conn.execute(sql, params).fetchall()
        return lambda: rows


class PollingWaiter:
    """SQLite cannot notify: wait out the timeout (the caller then polls); close() ends a wait early."""

    def __init__(self) -> None:
        self._closed = threading.Event()

    def wait(self, timeout: float) -> bool:
        self._closed.wait(timeout)
        return False

    def close(self) -> None:
        self._closed.set()
