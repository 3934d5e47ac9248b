"""What every store implements, and the shapes it returns: items and write results, idempotency keys'
claims and answers, and the request's Deadline (what is left of REQUEST_TIMEOUT, passed to everything a
request waits for)."""

from __future__ import annotations

import builtins
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from db.changes import ChangeBatch, ChangeCursor
from db.preconditions import Deleted, NotFound, Precondition, PreconditionFailed


class DatabaseUnavailable(Exception):
    """The database could not be reached or refused the statement; nothing was written."""


class ConnectionsRefused(DatabaseUnavailable):
    """The database refused a new connection because it has too many (its, or the role's, limit)."""


class CommitOutcomeUnknown(Exception):
    """The connection failed after COMMIT was sent and before its answer arrived: the write may or may not
    have been committed (unlike DatabaseUnavailable, where nothing was)."""


class MalformedItem(Exception):
    """The row of `item_id` does not hold a JSON object (written behind the service's back)."""

    def __init__(self, item_id: str) -> None:
        super().__init__(f"item {item_id!r} is malformed in the database: its body is not a JSON object")
        self.item_id = item_id


@dataclass(frozen=True, slots=True)
class Item:
    id: str
    version: int
    updated_at: str
    fields: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, **self.fields, "version": self.version, "updated_at": self.updated_at}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class WriteResult:
    item: Item
    created: bool  # True when the id did not exist (or had been deleted) before this write


def utc_now() -> str:
    """The server's `updated_at`: UTC, ISO 8601, milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def decode_item(row: Sequence[Any]) -> Item:
    """An Item from a selected row (id, fields as text, version, updated_at); MalformedItem when its body
    is not a JSON object."""
    try:
        fields = json.loads(row[1])
    except (TypeError, ValueError):
        fields = None
    if not isinstance(fields, dict):
        raise MalformedItem(row[0])
    return Item(id=row[0], fields=fields, version=int(row[2]), updated_at=row[3])


def encode_fields(fields: dict[str, Any]) -> str:
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


class DeadlineExceeded(Exception):
    """The request's time ran out while waiting for `waiting_for`; a write was rolled back, nothing committed."""

    def __init__(self, waiting_for: str) -> None:
        super().__init__(f"the request's deadline ran out waiting for {waiting_for}")
        self.waiting_for = waiting_for


@dataclass(frozen=True, slots=True)
class Deadline:
    expires_at: float  # on `clock`'s scale; math.inf: never
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(clock() + seconds, clock)

    @classmethod
    def never(cls) -> Deadline:
        """No time limit (tools, tests, the store's unconditional calls)."""
        return cls(math.inf)

    def remaining(self) -> float:
        """Seconds left, never below 0 (inf for `never`)."""
        return max(0.0, self.expires_at - self.clock())

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def cap(self, seconds: float) -> float:
        """`seconds`, or what is left if that is less: a wait of its own that must also fit the deadline."""
        return min(seconds, self.remaining())

    def check(self, waiting_for: str) -> float:
        """What is left; DeadlineExceeded (naming what the caller was about to wait for) when nothing is."""
        left = self.remaining()
        if left <= 0.0:
            raise DeadlineExceeded(waiting_for)
        return left


@dataclass(frozen=True, slots=True)
class KeyedCreate:
    """A POST with an Idempotency-Key: the key, its request's fingerprint, and the id it would write."""

    key: str
    fingerprint: str
    item_id: str


@dataclass(frozen=True, slots=True)
class Claim:
    key: str
    token: str
    item_id: str  # the key's id: a retry of a made-up id gets the first attempt's


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """What a key keeps of its first answer (status, the item's id and version then), and the item now
    (None: deleted since)."""

    item_id: str
    version: int
    status_code: int
    current: Item | None


@dataclass(frozen=True, slots=True)
class Replay:
    """The key's request completed: answer its response again."""

    response: StoredResponse


@dataclass(frozen=True, slots=True)
class KeyReused:
    """The key belongs to a request with another fingerprint (a different body)."""


@dataclass(frozen=True, slots=True)
class KeyBusy:
    """The key's first request is still running (or died less than its lease ago)."""

    item_id: str


ClaimOutcome = Claim | Replay | KeyReused | KeyBusy


class ClaimLost(Exception):
    """The claim was taken over (its request outlived the lease); the write was rolled back."""


class ItemStore(Protocol):
    """Versions are bumped by the database in the write statement itself; a deleted row keeps its
    version (as a tombstone) so a re-created id continues above it and cached versions stay ordered, and
    an id with no row (its tombstone purged) starts above every purged version: versions never restart,
    so one ETag never names two incarnations of an id."""

    def init_schema(self) -> None: ...

    def get(self, item_id: str) -> Item | None:
        """The live item, or None; MalformedItem when its stored body is not a JSON object."""
        ...

    def upsert(self, item_id: str, fields: dict[str, Any]) -> WriteResult: ...

    def delete(self, item_id: str) -> int | None:
        """Delete; return the tombstone's version, or None when there was no such item."""
        ...

    def upsert_if(
        self, item_id: str, fields: dict[str, Any], expect: Precondition, deadline: Deadline
    ) -> WriteResult | PreconditionFailed:
        """Upsert if `expect` holds, checked in the write itself; DeadlineExceeded (rolled back) when it runs out."""
        ...

    def delete_if(
        self, item_id: str, expect: Precondition, deadline: Deadline
    ) -> Deleted | NotFound | PreconditionFailed:
        """Delete if `expect` holds, checked in the write itself; DeadlineExceeded (rolled back) when it runs out."""
        ...

    def claim_key(self, create: KeyedCreate, lease: float, deadline: Deadline, max_keys: int = ...) -> ClaimOutcome:
        """Claim an Idempotency-Key for `create`, or say what holds it (Replay, KeyReused, KeyBusy); keep at
        most `max_keys` keys (the oldest claimed go)."""
        ...

    def create_keyed(
        self,
        create: KeyedCreate,
        fields: dict[str, Any],
        expect: Precondition,
        lease: float,
        deadline: Deadline,
        max_keys: int = ...,
    ) -> WriteResult | PreconditionFailed | Replay | KeyReused | KeyBusy:
        """Claim the key, write the item and record the response in one transaction; a key already held
        answers Replay, KeyReused or KeyBusy (a claim committed on its own: claim_key handles it)."""
        ...

    def upsert_claimed(
        self, claim: Claim, fields: dict[str, Any], expect: Precondition, deadline: Deadline
    ) -> WriteResult | PreconditionFailed:
        """upsert_if of `claim.item_id` that also records the response under the key, in one transaction."""
        ...

    def release_key(self, claim: Claim) -> None: ...

    def purge_keys(self, older_than_s: float) -> int:
        """Delete idempotency keys created over `older_than_s` ago."""
        ...

    def list(self, limit: int, after: str | None = None) -> list[Item]:
        """Up to `limit` live items with id > `after`, in id order; malformed rows are skipped (and logged)."""
        ...

    def iterate(self, batch_size: int = 1000) -> Iterator[builtins.list[Item]]: ...

    def count(self) -> int: ...

    def versions(self, ids: builtins.list[str]) -> dict[str, tuple[int, bool]]:
        """(version, deleted) of each id that has a row, tombstones included."""
        ...

    def changes_after(self, cursor: ChangeCursor | None, limit: int) -> ChangeBatch:
        """Up to `limit` committed changes after `cursor` in seq order, none missed, none repeated; a None
        cursor starts at the current end of the log (a cache that starts empty has nothing to catch up on)."""
        ...

    def log_head(self) -> int:
        """The change log's head now: every change committed before this call has a seq at or below it."""
        ...

    def log_before(self, seconds: float) -> int:
        """Where the log stood about `seconds` ago: the highest seq logged before then (at least the purged mark)."""
        ...

    def load_cursor(self, name: str) -> str | None:
        """The cursor text saved under `name`, or None."""
        ...

    def save_cursor(self, name: str, cursor_text: str) -> None: ...

    def wait_for_changes(self, timeout: float) -> bool:
        """Block until the log may have grown (True) or `timeout` ran out (False); SQLite always waits."""
        ...

    def purge_changes(self, upto_seq: int, older_than_s: float) -> int:
        """Delete log rows with seq <= `upto_seq` (a cursor's safe_seq) logged over `older_than_s` ago."""
        ...

    def purge_tombstones(self, older_than_s: float) -> int:
        """Delete tombstones older than `older_than_s` (the longest cache TTL); returns how many."""
        ...

    def ping(self) -> None:
        """Raise DatabaseUnavailable unless the database answers a trivial query."""
        ...

    def known_down(self) -> bool:
        """True while the store already knows the database is not answering (its last attempt to connect
        failed): a caller with something else to serve need not wait for a connection to learn it."""
        ...

    def close(self) -> None: ...
