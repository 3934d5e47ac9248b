"""The item store: one small interface, SQLite and PostgreSQL behind it."""

from __future__ import annotations

from db.base import DatabaseUnavailable, Item, ItemStore, WriteResult


def open_store(url: str) -> ItemStore:
    """Build the store for `url` (sqlite:///path, postgres:// or postgresql://); connects lazily."""
    if url.startswith(("postgres://", "postgresql://")):
        from db.postgres import PostgresStore

        return PostgresStore(url)
    from db.sqlite import SQLiteStore

    return SQLiteStore(url.removeprefix("sqlite:///"))


__all__ = ["DatabaseUnavailable", "Item", "ItemStore", "WriteResult", "open_store"]
