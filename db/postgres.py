"""PostgreSQL backend: psycopg 3 with a per-process connection pool, created lazily after any fork."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from typing import Any

import psycopg
import psycopg_pool

from db.base import DatabaseUnavailable
from db.sql import SQLStore, schema_sql


@functools.cache
def _pyformat(sql: str) -> Any:
    """The shared statements use qmark placeholders; psycopg wants %s."""
    return sql.replace("?", "%s")


class PostgresStore(SQLStore):
    def __init__(
        self, url: str, *, connect_timeout: float = 3.0, pool_timeout: float = 5.0, pool_size: int = 8
    ) -> None:
        self.url = url
        self.pool_size = pool_size  # connections per process, at most (DATABASE_POOL_SIZE)
        self.connect_timeout = connect_timeout
        self.pool_timeout = pool_timeout
        self._pool: psycopg_pool.ConnectionPool | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _get_pool(self) -> psycopg_pool.ConnectionPool:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                # After a fork the parent's pool (its sockets and worker threads) is not ours: start anew.
                self._pid = os.getpid()
                self._pool = psycopg_pool.ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=self.pool_size,
                    timeout=self.pool_timeout,
                    kwargs={
                        "autocommit": True,
                        "connect_timeout": max(1, int(self.connect_timeout)),
                        # A connection whose peer vanished (no ACKs) fails after this, not never.
                        "tcp_user_timeout": 10_000,
                    },
                    # One cheap round trip per checkout, so a connection broken by a database restart
                    # is replaced instead of failing a request.
                    check=psycopg_pool.ConnectionPool.check_connection,
                    open=True,
                    name="items",
                )
            return self._pool

    def _fetch(self, sql: str, params: Sequence[Any] = (), timeout: float | None = None) -> list[Sequence[Any]]:
        try:
            with self._get_pool().connection(timeout=timeout) as conn:
                cursor = conn.execute(_pyformat(sql), params)
                return list(cursor.fetchall()) if cursor.description else []
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise DatabaseUnavailable(f"postgresql: {type(exc).__name__}") from exc

    def init_schema(self) -> None:
        try:
            with self._get_pool().connection() as conn, conn.transaction():
                # Concurrent CREATE TABLE IF NOT EXISTS can still collide in the catalog: serialise it.
                conn.execute("SELECT pg_advisory_xact_lock(727274)")
                conn.execute(schema_sql("postgres").encode())
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise DatabaseUnavailable(f"postgresql: {type(exc).__name__}") from exc

    def ping(self) -> None:
        self._fetch("SELECT 1", timeout=min(1.0, self.pool_timeout))

    def close(self) -> None:
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.close()
            self._pool = None
