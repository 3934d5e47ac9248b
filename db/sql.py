"""What both SQL backends share: the statements each must provide, and the store written over them."""

from __future__ import annotations

import builtins
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from db.base import Deadline, Item, MalformedItem, WriteResult, decode_item, encode_fields
from db.changes import ChangeCursor
from db.keys import Fetch, KeyStore, Pending
from db.preconditions import (
    Deleted,
    IfAbsent,
    IfExists,
    IfVersionIn,
    NotFound,
    Precondition,
    PreconditionFailed,
    Unconditional,
)

logger = logging.getLogger(__name__)

Params = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Statements:
    """One backend's SQL, in its driver's own named-parameter style. Item reads select
    (id, fields as text, version, updated_at as the API's ISO-8601 UTC string)."""

    get: str  # id
    upsert: str  # id, fields -> version, created_version, updated_at
    insert_new: str  # as upsert, but a live row is left alone (no row returned): If-None-Match: *
    update_live: str  # as upsert, but only a live row (no row returned otherwise): If-Match: *
    update_if_version: str  # as update_live, and only at one of `versions`: If-Match with ETags
    delete: str  # id -> version
    delete_if_version: str  # id, versions -> version
    live_version: str  # id -> version of the live row
    list_first: str  # limit
    list_after: str  # after, limit
    count: str
    versions: str  # ids -> id, version, deleted
    log_end: str  # -> last seq (0 when none), purged upto
    log_head: str  # -> the highest seq taken so far (committed or not; 0 when none)
    log_before: str  # age -> the highest seq logged over `age` seconds ago, or the purged mark if higher
    changes_after: str  # seq, limit -> seq, id, version, deleted
    mark_purged: str  # upto, age
    purge_changes: str  # upto, age
    purge_tombstones: str  # age
    load_cursor: str  # name -> cursor
    save_cursor: str  # name, cursor


class SQLStore(KeyStore):
    """The store over `_fetch(sql, params)`, `_execute(sql, params)` and `_within(deadline)`, which a
    backend implements; idempotency keys come from KeyStore."""

    sql: Statements

    def _fetch(self, sql: str, params: Params | None = None) -> list[Sequence[Any]]:
        raise NotImplementedError

    def _execute(self, sql: str, params: Params | None = None) -> int:
        """Run a write; how many rows it touched."""
        raise NotImplementedError

    def _ids_param(self, ids: builtins.list[Any]) -> Any:
        raise NotImplementedError

    def _within(self, deadline: Deadline) -> contextlib.AbstractContextManager[Fetch]:
        """One transaction bounded by `deadline` (connection, locks, statements): when it runs out the
        transaction is rolled back and DeadlineExceeded raised, so nothing commits late."""
        raise NotImplementedError

    def get(self, item_id: str) -> Item | None:
        rows = self._fetch(self.sql.get, {"id": item_id})
        return decode_item(rows[0]) if rows else None

    def upsert(self, item_id: str, fields: dict[str, Any]) -> WriteResult:
        rows = self._fetch(self.sql.upsert, {"id": item_id, "fields": encode_fields(fields)})
        return _written(item_id, fields, rows[0])

    def delete(self, item_id: str) -> int | None:
        rows = self._fetch(self.sql.delete, {"id": item_id})
        return int(rows[0][0]) if rows else None

    def upsert_if(
        self, item_id: str, fields: dict[str, Any], expect: Precondition, deadline: Deadline
    ) -> WriteResult | PreconditionFailed:
        with self._within(deadline) as fetch:
            result = self._send_upsert(fetch, item_id, fields, expect)  # sent with the COMMIT
        return result()

    def _upsert_in(
        self, fetch: Fetch, item_id: str, fields: dict[str, Any], expect: Precondition
    ) -> WriteResult | PreconditionFailed:
        """The conditional upsert as one statement in the caller's transaction, its result read at once."""
        return self._send_upsert(fetch, item_id, fields, expect)()

    def _send_upsert(
        self, fetch: Fetch, item_id: str, fields: dict[str, Any], expect: Precondition
    ) -> Callable[[], WriteResult | PreconditionFailed]:
        """Send the conditional upsert (one statement) and, for a condition, the live version to report if it
        fails: neither waits for an answer, so both can go with the COMMIT. Returns its result's reader."""
        params: dict[str, Any] = {"id": item_id, "fields": encode_fields(fields)}
        match expect:
            case Unconditional():
                sql = self.sql.upsert
            case IfAbsent():
                sql = self.sql.insert_new
            case IfExists():
                sql = self.sql.update_live
            case IfVersionIn(versions):
                sql, params["versions"] = self.sql.update_if_version, self._ids_param(sorted(versions))
        written = fetch.send(sql, params)
        # An unconditional upsert always returns its row; If-Match: * fails only where no row is live.
        live = None if isinstance(expect, Unconditional | IfExists) else self._send_live_version(fetch, item_id)

        def result() -> WriteResult | PreconditionFailed:
            rows = written()
            if not rows:
                return PreconditionFailed(item_id, live() if live is not None else None)
            return _written(item_id, fields, rows[0])

        return result

    def delete_if(
        self, item_id: str, expect: Precondition, deadline: Deadline
    ) -> Deleted | NotFound | PreconditionFailed:
        deleted: Pending | None
        live: Callable[[], int | None] | None
        with self._within(deadline) as fetch:
            # Each statement is sent, not waited for: the transaction takes one round trip with its COMMIT.
            match expect:
                case IfAbsent():  # "delete it only if it does not exist": nothing to do either way
                    deleted, live = None, self._send_live_version(fetch, item_id)
                case IfVersionIn(versions):
                    params = {"id": item_id, "versions": self._ids_param(sorted(versions))}
                    deleted = fetch.send(self.sql.delete_if_version, params)
                    live = self._send_live_version(fetch, item_id)
                case _:
                    deleted = fetch.send(self.sql.delete, {"id": item_id})
                    live = None if isinstance(expect, Unconditional) else self._send_live_version(fetch, item_id)
        if deleted is not None and (rows := deleted()):
            return Deleted(int(rows[0][0]))
        if live is None:  # unconditional: there was nothing to delete
            return NotFound()
        version = live()
        if isinstance(expect, IfAbsent) and version is None:
            return NotFound()
        # If-Match on an absent item is false (RFC 9110 13.1.1): 412, not 404.
        return PreconditionFailed(item_id, version)

    def _send_live_version(self, fetch: Fetch, item_id: str) -> Callable[[], int | None]:
        pending = fetch.send(self.sql.live_version, {"id": item_id})

        def version() -> int | None:
            rows = pending()
            return int(rows[0][0]) if rows else None

        return version

    def list(self, limit: int, after: str | None = None) -> list[Item]:
        items: list[Item] = []
        # A malformed row is skipped, not fatal to the page: read on past it until the page is full,
        # so a full page still means "there may be more" to the caller.
        while len(items) < limit:
            wanted = limit - len(items)
            if after is None:
                rows = self._fetch(self.sql.list_first, {"limit": wanted})
            else:
                rows = self._fetch(self.sql.list_after, {"after": after, "limit": wanted})
            for row in rows:
                try:
                    items.append(decode_item(row))
                except MalformedItem as exc:
                    logger.warning("skipping malformed item %s in a listing", exc.item_id)
            if len(rows) < wanted:
                break
            after = rows[-1][0]
        return items

    def iterate(self, batch_size: int = 1000) -> Iterator[builtins.list[Item]]:
        """Every item in id order, `batch_size` at a time (keyset pages: constant memory)."""
        after: str | None = None
        while batch := self.list(batch_size, after):
            yield batch
            after = batch[-1].id

    def count(self) -> int:
        return int(self._fetch(self.sql.count)[0][0])

    def versions(self, ids: builtins.list[str]) -> dict[str, tuple[int, bool]]:
        if not ids:
            return {}
        rows = self._fetch(self.sql.versions, {"ids": self._ids_param(ids)})
        return {row[0]: (int(row[1]), bool(row[2])) for row in rows}

    def load_cursor(self, name: str) -> str | None:
        rows = self._fetch(self.sql.load_cursor, {"name": name})
        return str(rows[0][0]) if rows else None

    def save_cursor(self, name: str, cursor_text: str) -> None:
        self._execute(self.sql.save_cursor, {"name": name, "cursor": cursor_text})

    def log_head(self) -> int:
        return int(self._fetch(self.sql.log_head)[0][0])

    def log_before(self, seconds: float) -> int:
        return int(self._fetch(self.sql.log_before, {"age": float(seconds)})[0][0])

    def purge_changes(self, upto_seq: int, older_than_s: float) -> int:
        params = {"upto": upto_seq, "age": float(older_than_s)}
        # Record the purge before doing it, and delete no further than recorded: a follower behind it
        # then always learns that it missed rows (a gap), even if this process dies in between.
        self._execute(self.sql.mark_purged, params)
        return self._execute(self.sql.purge_changes, params)

    def purge_tombstones(self, older_than_s: float) -> int:
        # The triggers keep the highest purged version (item_versions_purged, migration 0006), and an id
        # with no row starts above it: a re-created id never reuses an old version, so an old ETag never
        # matches it. The caller must also have applied the log past the deletion (older_than_s covers
        # its lag), so the follower does not write the old tombstone into a cache after the id is back.
        return self._execute(self.sql.purge_tombstones, {"age": float(older_than_s)})

    def ping(self) -> None:
        self._fetch("SELECT 1")

    def known_down(self) -> bool:
        return False  # SQLite: a local file, nothing to reconnect to


def end_cursor(log_end: Sequence[Any]) -> ChangeCursor:
    """The cursor at the end of the log from a `log_end` row (last seq, purged upto)."""
    return ChangeCursor(max(int(log_end[0]), int(log_end[1])))


def _written(item_id: str, fields: dict[str, Any], row: Sequence[Any]) -> WriteResult:
    """A write statement's result from its RETURNING version, created_version, updated_at."""
    version, created_version, updated_at = row
    item = Item(id=item_id, fields=fields, version=int(version), updated_at=updated_at)
    return WriteResult(item=item, created=version == created_version)
