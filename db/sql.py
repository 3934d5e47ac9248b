"""The statements both SQL backends share; a backend supplies connections and its placeholder."""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import Any

from db.base import Item, WriteResult, encode_fields, utc_now

GET = "SELECT id, fields, version, updated_at FROM items WHERE id = ? AND NOT deleted"

# One statement: the database bumps the version atomically with the write. A row that was a
# tombstone comes back to life above its old version (created_version marks that moment).
UPSERT = """
INSERT INTO items (id, fields, version, created_version, deleted, updated_at)
VALUES (?, ?, 1, 1, FALSE, ?)
ON CONFLICT (id) DO UPDATE SET
    fields = excluded.fields,
    version = items.version + 1,
    created_version = CASE WHEN items.deleted THEN items.version + 1 ELSE items.created_version END,
    deleted = FALSE,
    updated_at = excluded.updated_at
RETURNING version, created_version
"""

DELETE = """
UPDATE items SET deleted = TRUE, version = version + 1, fields = '{}', updated_at = ?
WHERE id = ? AND NOT deleted
RETURNING version
"""

LIST_FIRST = "SELECT id, fields, version, updated_at FROM items WHERE NOT deleted ORDER BY id LIMIT ?"
LIST_AFTER = "SELECT id, fields, version, updated_at FROM items WHERE NOT deleted AND id > ? ORDER BY id LIMIT ?"
COUNT = "SELECT count(*) FROM items WHERE NOT deleted"

OUTBOX_ADD = """
INSERT INTO cache_outbox (id, version) VALUES (?, ?)
ON CONFLICT (id) DO UPDATE SET
    version = CASE WHEN excluded.version > cache_outbox.version THEN excluded.version ELSE cache_outbox.version END
"""
OUTBOX_LIST = "SELECT id, version FROM cache_outbox ORDER BY id LIMIT ?"
OUTBOX_DONE = "DELETE FROM cache_outbox WHERE id = ? AND version <= ?"


def schema_sql(name: str) -> str:
    return resources.files("db").joinpath("schema", f"{name}.sql").read_text()


def _item(row: Sequence[Any]) -> Item:
    return Item(id=row[0], fields=json.loads(row[1]), version=int(row[2]), updated_at=row[3])


class SQLStore:
    """get/upsert/delete/list/iterate over `_fetch(sql, params)`, which a backend implements."""

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        raise NotImplementedError

    def get(self, item_id: str) -> Item | None:
        rows = self._fetch(GET, (item_id,))
        return _item(rows[0]) if rows else None

    def upsert(self, item_id: str, fields: dict[str, Any]) -> WriteResult:
        updated_at = utc_now()
        version, created_version = self._fetch(UPSERT, (item_id, encode_fields(fields), updated_at))[0]
        item = Item(id=item_id, fields=fields, version=int(version), updated_at=updated_at)
        return WriteResult(item=item, created=version == created_version)

    def delete(self, item_id: str) -> int | None:
        rows = self._fetch(DELETE, (utc_now(), item_id))
        return int(rows[0][0]) if rows else None

    def list(self, limit: int, after: str | None = None) -> list[Item]:
        if after is None:
            return [_item(row) for row in self._fetch(LIST_FIRST, (limit,))]
        return [_item(row) for row in self._fetch(LIST_AFTER, (after, limit))]

    def iterate(self, batch_size: int = 1000) -> Iterator[builtins.list[Item]]:
        """Every item in id order, `batch_size` at a time (keyset pages: constant memory)."""
        after: str | None = None
        while batch := self.list(batch_size, after):
            yield batch
            after = batch[-1].id

    def count(self) -> int:
        return int(self._fetch(COUNT)[0][0])

    def ping(self) -> None:
        self._fetch("SELECT 1")

    def outbox_add(self, item_id: str, version: int) -> None:
        self._fetch(OUTBOX_ADD, (item_id, version))

    def outbox_list(self, limit: int = 100) -> builtins.list[tuple[str, int]]:
        return [(row[0], int(row[1])) for row in self._fetch(OUTBOX_LIST, (limit,))]

    def outbox_done(self, item_id: str, version: int) -> None:
        self._fetch(OUTBOX_DONE, (item_id, version))
