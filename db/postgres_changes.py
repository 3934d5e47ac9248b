"""Reading PostgreSQL's change log exactly, and waking on its notifications.

Seqs are taken when a row is logged, but transactions commit in another order: while T1 (seq 5) is open,
T2 (seq 6) can commit and be read, and "seq > 6" would then skip seq 5 forever. So the cursor also lists
the transactions that were open (in progress in the read's snapshot) with a floor: their changes above the
floor are still to come. A transaction not in that list when the cursor was taken got its xid after that
snapshot, so every seq it takes is above every seq the cursor covers: nothing is missed. Each change is
delivered once; the list is bounded by the number of transactions open at once.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import psycopg

from db.changes import Change, ChangeBatch, ChangeCursor
from db.sql import end_cursor

logger = logging.getLogger(__name__)

CHANNEL = "item_changes"  # the triggers' pg_notify channel

SNAPSHOT = """
SELECT array(SELECT x::text FROM pg_snapshot_xip(pg_current_snapshot()) AS x),
       coalesce((SELECT max(seq) FROM item_changes), 0),
       (SELECT upto FROM item_changes_purged)
"""

# Changes of once-open transactions that have finished since, at or below the cursor's seq.
LATE_CHANGES = """
SELECT c.seq, c.id, c.version, c.deleted
FROM item_changes AS c
JOIN unnest(%(xids)s::text[]::xid8[], %(floors)s::bigint[]) AS p(xid, floor) ON c.xid = p.xid
WHERE c.seq > %(lowest)s AND c.seq <= %(seq)s AND c.seq > p.floor
ORDER BY c.seq
LIMIT %(limit)s
"""

NEW_CHANGES = "SELECT seq, id, version, deleted FROM item_changes WHERE seq > %(seq)s ORDER BY seq LIMIT %(limit)s"


def changes_after(conn: psycopg.Connection[Any], cursor: ChangeCursor | None, limit: int) -> ChangeBatch:
    """The next batch after `cursor`, read in one REPEATABLE READ snapshot on `conn` (in autocommit)."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        xip_text, last_seq, purged = conn.execute(SNAPSHOT).fetchone()  # type: ignore[misc]
        in_progress = [int(x) for x in xip_text]
        if cursor is None or purged > cursor.safe_seq:
            # At the end: transactions open now may hold any seq up to it (floor: what was ever purged).
            end = end_cursor((last_seq, purged))
            fresh = ChangeCursor(end.seq, tuple((xid, int(purged)) for xid in in_progress))
            return ChangeBatch([], fresh, gap=cursor is not None)
        floors = dict(cursor.pending)
        finished = {xid: floor for xid, floor in floors.items() if xid not in in_progress}
        late = _late_changes(conn, finished, cursor.seq, limit)
        if len(late) == limit:  # maybe more late ones: stay at this seq, raise the finished ones' floors
            pending = {**floors, **{xid: max(floor, late[-1].seq) for xid, floor in finished.items()}}
            pending.update({xid: cursor.seq for xid in in_progress if xid not in pending})
            return ChangeBatch(late, ChangeCursor(cursor.seq, tuple(sorted(pending.items()))))
        rows = conn.execute(NEW_CHANGES, {"seq": cursor.seq, "limit": limit - len(late)}).fetchall()
    new = [_change(row) for row in rows]
    seq = new[-1].seq if new else cursor.seq
    # Open now: a transaction already pending keeps its floor; a newly seen one got its xid after the
    # cursor's snapshot, so its seqs are above cursor.seq (it may hold invisible ones up to `seq`).
    pending = {xid: floors.get(xid, cursor.seq) for xid in in_progress}
    return ChangeBatch(late + new, ChangeCursor(seq, tuple(sorted(pending.items()))))


def _late_changes(conn: psycopg.Connection[Any], finished: dict[int, int], seq: int, limit: int) -> list[Change]:
    if not finished:
        return []
    params = {
        "xids": [str(xid) for xid in finished],
        "floors": list(finished.values()),
        "lowest": min(finished.values()),
        "seq": seq,
        "limit": limit,
    }
    return [_change(row) for row in conn.execute(LATE_CHANGES, params).fetchall()]


def _change(row: Any) -> Change:
    return Change(int(row[0]), row[1], int(row[2]), bool(row[3]))


class ListenWaiter:
    """LISTEN on a dedicated connection outside the pool. After a failure it reconnects on the next wait
    and answers True (notifications sent while disconnected are lost: the caller must poll)."""

    def __init__(self, url: str, connect_timeout: float = 3.0) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.pid = os.getpid()
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def wait(self, timeout: float) -> bool:
        with self._lock:
            if self._conn is None:
                return self._connect(timeout)
            try:
                woken = bool(list(self._conn.notifies(timeout=timeout, stop_after=1)))
                if woken:
                    list(self._conn.notifies(timeout=0))  # drain what else came: one poll answers them all
                return woken
            except psycopg.Error as exc:
                logger.warning("change notifications lost (%s): reconnecting", type(exc).__name__)
                self._drop()
                return True

    def _connect(self, timeout: float) -> bool:
        try:
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(1, int(self.connect_timeout)),
                tcp_user_timeout=10_000,  # a vanished peer fails the wait after this, not never
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=2,
            )
            conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as exc:
            logger.warning("cannot listen for changes (%s): polling", type(exc).__name__)
            self._closed.wait(timeout)  # bounded, like every wait
            return True
        self._conn = conn
        return True  # anything before LISTEN was not heard: poll once

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._drop()
