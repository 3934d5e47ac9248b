"""Reading PostgreSQL's change log exactly, and waking on its notifications.

Seqs are taken when a row is logged, but transactions commit in another order: while T1 (seq 5) is open,
T2 (seq 6) can commit and be read, and "seq > 6" would then skip seq 5 forever. So the cursor also lists
the transactions that were open in the read's snapshot, each with a floor: their changes above the floor
are still to come. Each change is delivered once; the list is bounded by the transactions open at once.

A snapshot lists the open transactions only below its xmax (latest completed xid + 1): one that took its
xid later is not listed though it may already hold a seq. So each read first takes a horizon: the seq
counter's value, then an xid of its own, committed at once, which lifts the snapshot's xmax above every
transaction that could hold a seq up to the horizon; the read delivers no seq above the horizon. Then a
transaction missing from the cursor's list either had finished (its changes were visible) or took its
xid after the horizon was read, and so every seq it holds is above the cursor's seq: nothing is missed.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import psycopg
from psycopg import sql

from db.changes import Change, ChangeBatch, ChangeCursor
from db.sql import end_cursor

logger = logging.getLogger(__name__)

CHANNEL = "item_changes"  # the triggers' pg_notify channel is this, ':', and the table's schema

# The seq counter first (OFFSET 0 keeps the subquery apart, so it is read first), then an xid of our own;
# run in autocommit, so that xid has completed before the snapshot below is taken.
HORIZON = """
SELECT horizon, pg_current_xact_id()::text
FROM (SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('item_changes', 'seq')::regclass), 0)
      AS horizon OFFSET 0) AS counter
"""

SNAPSHOT = """
SELECT array(SELECT x::text FROM pg_snapshot_xip(pg_current_snapshot()) AS x),
       coalesce((SELECT max(seq) FROM item_changes), 0),
       (SELECT upto FROM item_changes_purged)
"""

# The transactions that have written to the log and are still open: each holds a lock on it (its trigger's
# INSERT) until it ends, and its own xid's lock beside. pg_locks, unlike pg_stat_activity, shows every role's.
# Read after the horizon: a transaction that logs a change after this read takes a seq above the horizon.
LOG_WRITERS = """
SELECT t.transactionid::text
FROM pg_locks AS r JOIN pg_locks AS t ON t.virtualtransaction = r.virtualtransaction
WHERE r.locktype = 'relation' AND r.relation = 'item_changes'::regclass AND r.mode = 'RowExclusiveLock'
  AND t.locktype = 'transactionid'
"""
XID32 = 0xFFFFFFFF  # pg_locks shows 32-bit xids; open transactions are never 2**31 apart, so they compare

# Changes of once-open transactions that have finished since, at or below the cursor's seq.
LATE_CHANGES = """
SELECT c.seq, c.id, c.version, c.deleted
FROM item_changes AS c
JOIN unnest(%(xids)s::text[]::xid8[], %(floors)s::bigint[]) AS p(xid, floor) ON c.xid = p.xid
WHERE c.seq > %(lowest)s AND c.seq <= %(seq)s AND c.seq > p.floor
ORDER BY c.seq
LIMIT %(limit)s
"""

NEW_CHANGES = """
SELECT seq, id, version, deleted FROM item_changes
WHERE seq > %(seq)s AND seq <= %(horizon)s
ORDER BY seq
LIMIT %(limit)s
"""


def changes_after(conn: psycopg.Connection[Any], cursor: ChangeCursor | None, limit: int) -> ChangeBatch:
    """The next batch after `cursor`, read in one REPEATABLE READ snapshot on `conn` (in autocommit)."""
    horizon = int(conn.execute(HORIZON).fetchone()[0])  # type: ignore[index]
    writers = {int(xid) for (xid,) in conn.execute(LOG_WRITERS).fetchall()}
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        xip_text, last_seq, purged = conn.execute(SNAPSHOT).fetchone()  # type: ignore[misc]
        in_progress = [int(x) for x in xip_text]
        # A gap: rows after the cursor were purged, or the cursor is ahead of the log (a restored or
        # recreated database): either way the caller cannot know what it missed.
        if cursor is None or purged > cursor.safe_seq or cursor.seq > horizon:
            # At the end: transactions open now may hold any seq up to it (floor: what was ever purged).
            end = end_cursor((min(last_seq, horizon), purged))
            fresh = ChangeCursor(end.seq, tuple((xid, int(purged)) for xid in in_progress))
            return ChangeBatch([], fresh, gap=cursor is not None, upto=fresh.safe_seq)
        floors = dict(cursor.pending)
        finished = {xid: floor for xid, floor in floors.items() if xid not in in_progress}
        late = _late_changes(conn, finished, cursor.seq, limit)
        if len(late) == limit:  # maybe more late ones: stay at this seq, raise the finished ones' floors
            pending = {**floors, **{xid: max(floor, late[-1].seq) for xid, floor in finished.items()}}
            pending.update({xid: cursor.seq for xid in in_progress if xid not in pending})
            truncated = ChangeCursor(cursor.seq, tuple(sorted(pending.items())))
            return ChangeBatch(late, truncated, upto=truncated.safe_seq)
        params = {"seq": cursor.seq, "horizon": horizon, "limit": limit - len(late)}
        rows = conn.execute(NEW_CHANGES, params).fetchall()
    new = [_change(row) for row in rows]
    seq = new[-1].seq if new else cursor.seq
    # Open now: a transaction already pending keeps its floor; a newly listed one was not open at the
    # cursor's read or took its xid after that read's horizon, so its seqs are above cursor.seq.
    pending = {xid: floors.get(xid, cursor.seq) for xid in in_progress}
    after = ChangeCursor(seq, tuple(sorted(pending.items())))
    # Read to the horizon: every seq up to it is delivered but those of the transactions still open that
    # have written to the log (one that has not, an operator's long transaction elsewhere say, can only
    # take a seq above the horizon: it must not hold back what the caller is told is applied).
    held_back = [floor for xid, floor in pending.items() if xid & XID32 in writers]
    upto = after.safe_seq if len(rows) == params["limit"] else min([horizon, *held_back])
    return ChangeBatch(late + new, after, upto=upto)


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
            schema = conn.execute("SELECT current_schema()").fetchone()[0]  # type: ignore[index]
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(f"{CHANNEL}:{schema}")))
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
