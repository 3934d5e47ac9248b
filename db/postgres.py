"""PostgreSQL backend: psycopg 3 with a per-process connection pool, created lazily after any fork."""

from __future__ import annotations

import builtins
import contextlib
import logging
import math
import os
import select
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg_pool
from psycopg import ClientCursor
from psycopg_pool.base import AttemptWithBackoff

import db.postgres_changes as postgres_changes
from db.base import CommitOutcomeUnknown, ConnectionsRefused, DatabaseUnavailable, Deadline, DeadlineExceeded
from db.changes import ChangeBatch, ChangeCursor
from db.keys import Fetch, Pending
from db.migrate import ADVISORY_LOCK_KEY, migrations
from db.postgres_sql import IS_APPLIED, KEY_STATEMENTS, MIGRATIONS_TABLE, RECORD_APPLIED, STATEMENTS
from db.sql import Params, SQLStore

logger = logging.getLogger(__name__)

RECONNECT_FIRST, RECONNECT_MAX = 0.1, 0.5  # seconds between a lost pool's attempts to reconnect
# While the pool's last attempt to connect failed, a checkout waits this long (one reconnect interval: a
# database that just came back is used) instead of DATABASE_TIMEOUT; a waiting checkout looks this often.
DOWN_WAIT = RECONNECT_MAX
# A COMMIT that fails with one of these (or no SQLSTATE: the connection was lost) may have committed.
COMMIT_LOST_SQLSTATES = ("08", "57P01", "57P02")
# How PostgreSQL words a refused connection when it has too many (libpq gives the error no SQLSTATE).
TOO_MANY = ("too many connections", "too many clients", "remaining connection slots are reserved")


# A write sends BEGIN, its timeouts, its statements and COMMIT as one query: PostgreSQL 13 and newer time each
# statement of such a query on its own, with the timeout set before it (older ones time the whole string).
MIN_SERVER_VERSION = 130000


class QuickReconnect(AttemptWithBackoff):
    """psycopg_pool waits 1, 2, 4, 8 s ... between attempts to replace lost connections, so a worker kept
    answering 503 for seconds after the database was back (seen: 5.8 s after an 8 s cut; and a worker the
    readiness probe did not reach still failing reads after readiness said ok). 0.1 s doubling to 0.5 s:
    a returning database is in use within half a second; a dead one sees two attempts a second."""

    INITIAL_DELAY = RECONNECT_FIRST

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, RECONNECT_MAX)


_REFUSAL_SEEN = threading.Lock()


class _Pool(psycopg_pool.ConnectionPool):
    """Reconnects quickly (QuickReconnect) and knows whether its last attempt to connect failed (`down`),
    and if the server refused it for having too many connections, its words (`refused`)."""

    down = False
    refused: str | None = None

    def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        super()._add_connection(attempt or QuickReconnect(timeout=self.reconnect_timeout), growing)

    def _connect(self, timeout: float | None = None) -> psycopg.Connection[Any]:
        try:
            conn = super()._connect(timeout)
        except BaseException as exc:
            self.down = True
            self._note_refusal(exc)
            raise
        self.down = False
        self.refused = None
        return conn

    def _note_refusal(self, exc: BaseException) -> None:
        """Remember a refusal for too many connections, and log it once while it lasts (psycopg_pool's own
        line for each attempt is dropped: _QuietRefusals)."""
        text = str(exc) if isinstance(exc, psycopg.OperationalError) else ""
        if not any(marker in text.lower() for marker in TOO_MANY):
            self.refused = None
            return
        words = " ".join(text.rpartition("FATAL:")[2].split())  # the server's own words
        with _REFUSAL_SEEN:  # the pool's workers connect at once: one of them logs it
            first, self.refused = self.refused is None, words
        if first:
            logger.error(
                "PostgreSQL refuses new connections (%s): this worker's pool opens at most %d; "
                "lower DATABASE_MAX_CONNECTIONS or raise the database's limit",
                words,
                self.max_size,
            )

    def checkout(self, wait: float) -> psycopg.Connection[Any]:
        """A connection within `wait` s; PoolTimeout within about DOWN_WAIT s instead while the pool's
        attempts to connect fail (a request then answers 503 at once rather than after DATABASE_TIMEOUT)."""
        give_up = time.monotonic() + wait
        while True:
            left = give_up - time.monotonic()
            try:
                conn = self.getconn(timeout=max(0.001, min(left, DOWN_WAIT)))
            except psycopg_pool.PoolTimeout:
                if self.down or give_up - time.monotonic() <= 0:
                    raise
                continue
            self.down = False  # it passed the check: the database answers
            return conn

    @contextlib.contextmanager
    def connection_within(self, wait: float) -> Iterator[psycopg.Connection[Any]]:
        """As `connection()`, with `checkout`'s wait."""
        conn = self.checkout(wait)
        try:
            with conn:
                yield conn
        finally:
            self.putconn(conn)


def check_idle_connection(conn: psycopg.Connection[Any]) -> None:
    """The pool's check at checkout, without a round trip while the server has sent nothing: an idle
    connection the server closed (a restart, pg_terminate_backend, a proxy cut) has its socket readable (the
    FATAL message or the end of the stream), and only then is psycopg_pool's check (an empty query) run, to
    fail it. A write sent on a connection found dead only by the write would answer CommitOutcomeUnknown."""
    if conn.closed or _readable(conn.fileno()):
        psycopg_pool.ConnectionPool.check_connection(conn)


def _readable(fd: int) -> bool:
    """Whether `fd` has something to read now (poll, not select: a worker's descriptors may pass 1024)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _QuietRefusals(logging.Filter):
    """Drops psycopg_pool's "error connecting" line (one per attempt, two a second) when the server refused
    for too many connections: the pool's one line (_Pool._note_refusal) says it while it lasts."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("error connecting"):
            return True
        return not any(marker in str(record.args).lower() for marker in TOO_MANY)


QUIET_REFUSALS = _QuietRefusals()


class PostgresStore(SQLStore):
    sql = STATEMENTS
    keys = KEY_STATEMENTS

    def __init__(
        self, url: str, *, connect_timeout: float = 3.0, pool_timeout: float = 5.0, pool_size: int = 8
    ) -> None:
        self.url = url
        self.pool_size = pool_size  # connections per process, at most (config.database_pool_size)
        self.connect_timeout = connect_timeout
        self.pool_timeout = pool_timeout
        self._pool: _Pool | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._waiter: postgres_changes.ListenWaiter | None = None

    def _get_pool(self) -> _Pool:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                # After a fork the parent's pool (its sockets and worker threads) is not ours: start anew.
                self._pid = os.getpid()
                self._pool = _Pool(
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
                    # So a connection broken by a database restart is replaced instead of failing a request.
                    check=check_idle_connection,
                    open=True,
                    name="items",
                )
                pool_logger = logging.getLogger("psycopg.pool")
                if QUIET_REFUSALS not in pool_logger.filters:
                    pool_logger.addFilter(QUIET_REFUSALS)
            return self._pool

    @contextlib.contextmanager
    def _connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        pool = self._get_pool()
        try:
            with pool.connection_within(self.pool_timeout if timeout is None else timeout) as conn:
                yield conn
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise _unavailable(pool, exc) from exc

    @contextlib.contextmanager
    def _within(self, deadline: Deadline) -> Iterator[Fetch]:
        wait = min(deadline.check("a database connection"), self.pool_timeout)
        pool = self._get_pool()
        try:
            with pool.connection_within(wait) as conn:
                yield from _bounded_transaction(conn, deadline)
        except psycopg_pool.PoolTimeout as exc:
            if wait < self.pool_timeout and not pool.down:
                raise DeadlineExceeded("a database connection") from exc
            raise _unavailable(pool, exc) from exc
        except (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable) as exc:
            raise DeadlineExceeded("a database lock or statement") from exc
        except psycopg.OperationalError as exc:
            raise _unavailable(pool, exc) from exc

    def _fetch(self, sql: str, params: Params | None = None, timeout: float | None = None) -> list[Any]:
        with self._connection(timeout) as conn:
            cursor = conn.execute(sql.encode(), params)
            return list(cursor.fetchall()) if cursor.description else []

    def _execute(self, sql: str, params: Params | None = None) -> int:
        with self._connection() as conn:
            return conn.execute(sql.encode(), params).rowcount

    def _ids_param(self, ids: builtins.list[Any]) -> Any:
        return ids

    def init_schema(self) -> None:
        """Apply the migrations not yet applied, each in a transaction of its own (see db.migrate).
        DatabaseUnavailable, naming the version, from a server older than MIN_SERVER_VERSION."""
        with self._connection() as conn:
            if conn.info.server_version < MIN_SERVER_VERSION:
                raise DatabaseUnavailable(
                    f"postgresql {conn.info.server_version // 10000} is older than 13, the oldest this service runs "
                    "on: a write's deadline (SET LOCAL statement_timeout) bounds each statement of its one query "
                    "only from 13 on"
                )
        for migration in migrations("postgres"):
            with self._connection() as conn, conn.transaction():
                # Several workers or instances may start at once: one migrates, the others then skip.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
                conn.execute(MIGRATIONS_TABLE)
                if conn.execute(IS_APPLIED, (migration.version,)).fetchall():
                    continue
                conn.execute(migration.sql.encode())
                conn.execute(RECORD_APPLIED, (migration.version, migration.name))

    def changes_after(self, cursor: ChangeCursor | None, limit: int) -> ChangeBatch:
        with self._connection() as conn:
            return postgres_changes.changes_after(conn, cursor, limit)

    def wait_for_changes(self, timeout: float) -> bool:
        with self._lock:
            if self._waiter is None or self._waiter.pid != os.getpid():  # forked: not ours
                self._waiter = postgres_changes.ListenWaiter(self.url, self.connect_timeout)
            waiter = self._waiter
        return waiter.wait(timeout)

    def known_down(self) -> bool:
        pool = self._pool
        return pool is not None and pool.down

    def ping(self) -> None:
        self._fetch("SELECT 1", timeout=min(1.0, self.pool_timeout))

    def close(self) -> None:
        with self._lock:
            if self._waiter is not None and self._waiter.pid == os.getpid():
                self._waiter.close()
            self._waiter = None
            if self._pool is not None and self._pid == os.getpid():
                self._pool.close()
            self._pool = None


def _unavailable(pool: _Pool, exc: BaseException) -> DatabaseUnavailable:
    """What a failed checkout or statement means: ConnectionsRefused while the server refuses the pool new
    connections for having too many, else DatabaseUnavailable."""
    refused = pool.refused
    if refused is not None and isinstance(exc, psycopg_pool.PoolTimeout):
        return ConnectionsRefused(f"postgresql refuses new connections: {refused}")
    return DatabaseUnavailable(f"postgresql: {type(exc).__name__}")


def _bounded_transaction(conn: psycopg.Connection[Any], deadline: Deadline) -> Iterator[Fetch]:
    """BEGIN with statement_timeout and lock_timeout set to what is left (SET LOCAL: they end with the
    transaction, the pooled connection keeps none), the caller's statements, COMMIT; ROLLBACK on any error.
    Statements are batched (_Batched): a write whose result is read after the commit is one round trip.
    CommitOutcomeUnknown when the connection failed while the COMMIT was on its way or its answer was: it
    may have committed."""
    left = deadline.check("the database")
    ms = 0 if math.isinf(left) else max(1, int(left * 1000))  # 0: no limit (Deadline.never)
    batch = _Batched(conn, [b"BEGIN", b"SET LOCAL statement_timeout = %d" % ms, b"SET LOCAL lock_timeout = %d" % ms])
    try:
        yield batch
        batch.commit()
    except BaseException as exc:
        if batch.committed:  # the server answered the COMMIT: never report this write as failed
            raise CommitOutcomeUnknown(f"postgresql: committed, then {type(exc).__name__}") from exc
        lost = isinstance(exc, psycopg.OperationalError) and (
            exc.sqlstate is None or exc.sqlstate.startswith(COMMIT_LOST_SQLSTATES)
        )
        if batch.commit_sent and lost:
            raise CommitOutcomeUnknown(f"postgresql: {type(exc).__name__} during COMMIT") from exc
        with contextlib.suppress(psycopg.Error):  # a broken connection: the pool discards it
            conn.execute(b"ROLLBACK")
        raise  # the server answered with an error (a statement's or the COMMIT's): rolled back


class _Batched:
    """The open transaction (db.keys.Fetch). Statements are bound on the client and queued; they go to the
    server as one simple query (one message, one answer) when a caller needs a result before the commit,
    and with the COMMIT otherwise: fewer round trips and less driver work than a call per statement, or
    than psycopg's pipeline mode (bench.writes)."""

    def __init__(self, conn: psycopg.Connection[Any], first: list[bytes]) -> None:
        self.cursor = ClientCursor(conn)
        self.encoding = conn.info.encoding
        self.queued: list[tuple[bytes, _Answer | None]] = [(sql, None) for sql in first]
        self.commit_sent = False
        self.committed = False  # the server answered the COMMIT

    def __call__(self, sql: str, params: Params, /) -> list[Any]:
        return self.send(sql, params)()

    def send(self, sql: str, params: Params, /) -> Pending:
        answer = _Answer(self)
        self.queued.append((self.cursor.mogrify(sql, params).encode(self.encoding), answer))
        return answer

    def flush(self) -> None:
        """Send what is queued as one query (a round trip); each statement's answer is kept for its reader."""
        queued, self.queued = self.queued, []
        if queued:
            self._send(queued)

    def commit(self) -> None:
        """Send what is queued and COMMIT as one query."""
        queued, self.queued = [*self.queued, (b"COMMIT", None)], []
        self.commit_sent = True
        self._send(queued)

    def _send(self, queued: list[tuple[bytes, _Answer | None]]) -> None:
        self.cursor.execute(b";\n".join(sql for sql, _ in queued))
        self.committed = self.commit_sent  # the server ran every statement: the COMMIT too, if it was sent
        for n, (_, answer) in enumerate(queued):
            if n and not self.cursor.nextset():
                raise psycopg.InterfaceError(f"{len(queued)} statements sent, {n} answered")
            if answer is not None:
                answer.rows = _rows(self.cursor)


class _Answer:
    """A queued statement's rows: reading them before they came sends what is queued (a round trip)."""

    def __init__(self, batch: _Batched) -> None:
        self.batch = batch
        self.rows: list[Any] | None = None

    def __call__(self) -> list[Any]:
        if self.rows is None:
            self.batch.flush()
        assert self.rows is not None
        return self.rows


def _rows(cursor: psycopg.Cursor[Any]) -> list[Any]:
    return list(cursor.fetchall()) if cursor.description else []
