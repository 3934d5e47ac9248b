"""The item store: one small interface, SQLite and PostgreSQL behind it."""

from __future__ import annotations

from db.base import DatabaseUnavailable, Item, ItemStore, MalformedItem, WriteResult
from db.changes import Change, ChangeBatch, ChangeCursor


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
    "Change",
    "ChangeBatch",
    "ChangeCursor",
    "DatabaseUnavailable",
    "Item",
    "ItemStore",
    "MalformedItem",
    "WriteResult",
    "open_store",
]
