"""SQLite backend: stdlib sqlite3, WAL, one connection per thread, never shared across a fork."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from db.base import DatabaseUnavailable
from db.sql import SQLStore, schema_sql


class SQLiteStore(SQLStore):
    def __init__(self, path: str, timeout: float = 3.0) -> None:
        self.path = path
        self.timeout = timeout
        self._local = threading.local()
        self._pid = os.getpid()

    def _connection(self) -> sqlite3.Connection:
        if self._pid != os.getpid():  # forked: the parent's connections are not ours to use
            self._local, self._pid = threading.local(), os.getpid()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # Autocommit: every statement we run is a transaction of its own.
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:  # locked too long, disk full, unreadable file
            raise DatabaseUnavailable(f"sqlite: {exc}") from exc

    def init_schema(self) -> None:
        try:
            self._connection().executescript(schema_sql("sqlite"))
        except sqlite3.OperationalError as exc:
            raise DatabaseUnavailable(f"sqlite: {exc}") from exc

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
