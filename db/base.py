"""What every store implements, and the shapes it returns."""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol


class DatabaseUnavailable(Exception):
    """The database could not be reached or refused the statement; nothing was written."""


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


def encode_fields(fields: dict[str, Any]) -> str:
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


class ItemStore(Protocol):
    """Versions are bumped by the database in the write statement itself; a deleted row keeps its
    version (as a tombstone) so a re-created id continues above it and cached versions stay ordered."""

    def init_schema(self) -> None: ...

    def get(self, item_id: str) -> Item | None: ...

    def upsert(self, item_id: str, fields: dict[str, Any]) -> WriteResult: ...

    def delete(self, item_id: str) -> int | None:
        """Delete; return the tombstone's version, or None when there was no such item."""
        ...

    def list(self, limit: int, after: str | None = None) -> list[Item]: ...

    def iterate(self, batch_size: int = 1000) -> Iterator[builtins.list[Item]]: ...

    def count(self) -> int: ...

    def outbox_add(self, item_id: str, version: int) -> None:
        """Record that the cache may hold a version of `item_id` older than `version` (keeps the newest)."""
        ...

    def outbox_list(self, limit: int = 100) -> builtins.list[tuple[str, int]]: ...

    def outbox_done(self, item_id: str, version: int) -> None:
        """Forget the record, unless a newer version was recorded meanwhile."""
        ...

    def ping(self) -> None:
        """Raise DatabaseUnavailable unless the database answers a trivial query."""
        ...

    def close(self) -> None: ...
