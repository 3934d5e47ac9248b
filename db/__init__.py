"""The item store: one small interface, SQLite and PostgreSQL behind it."""

from __future__ import annotations

from db.base import (
    Claim,
    ClaimLost,
    CommitOutcomeUnknown,
    ConnectionsRefused,
    DatabaseUnavailable,
    Deadline,
    DeadlineExceeded,
    Item,
    ItemStore,
    KeyBusy,
    KeyedCreate,
    KeyReused,
    MalformedItem,
    Replay,
    StoredResponse,
    WriteResult,
)
from db.changes import Change, ChangeBatch, ChangeCursor
from db.keys import KEY_LIFETIME
from db.preconditions import (
    UNCONDITIONAL,
    Deleted,
    IfAbsent,
    IfExists,
    IfVersionIn,
    NotFound,
    Precondition,
    PreconditionFailed,
    Unconditional,
)


def open_store(url: str, timeout: float = 3.0, pool_size: int = 8) -> ItemStore:
    """Build the store for `url` (sqlite:///path, postgres:// or postgresql://); connects lazily.
    `timeout`: seconds a call may wait for a connection (or SQLite's lock) before DatabaseUnavailable.
    `pool_size`: PostgreSQL connections per process, at most."""
    if url.startswith(("postgres://", "postgresql://")):
        from db.postgres import PostgresStore

        return PostgresStore(url, connect_timeout=timeout, pool_timeout=timeout, pool_size=pool_size)
    from db.sqlite import SQLiteStore

    return SQLiteStore(url.removeprefix("sqlite:///"), timeout=timeout)


__all__ = [
    "KEY_LIFETIME",
    "UNCONDITIONAL",
    "Claim",
    "ClaimLost",
    "KeyBusy",
    "KeyReused",
    "KeyedCreate",
    "Replay",
    "StoredResponse",
    "Change",
    "Deadline",
    "DeadlineExceeded",
    "Deleted",
    "IfAbsent",
    "IfExists",
    "IfVersionIn",
    "NotFound",
    "Precondition",
    "PreconditionFailed",
    "Unconditional",
    "ChangeBatch",
    "ChangeCursor",
    "CommitOutcomeUnknown",
    "ConnectionsRefused",
    "DatabaseUnavailable",
    "Item",
    "ItemStore",
    "MalformedItem",
    "WriteResult",
    "open_store",
]
