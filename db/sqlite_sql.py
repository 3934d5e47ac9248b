"""SQLite's statements, in sqlite3's named style (:name). Timestamps come from SQLite's own clock."""

from __future__ import annotations

from db.keys import KeyStatements
from db.sql import Statements

NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"  # the API's format: UTC, milliseconds, 'Z'
CUTOFF = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('-%f seconds', :age))"
ITEM = "id, fields, version, updated_at"

UPSERT = f"""
INSERT INTO items (id, fields, version, created_version, deleted, updated_at)
SELECT :id, :fields, v, v, FALSE, {NOW}
FROM (SELECT coalesce((SELECT version FROM items WHERE id = :id), (SELECT upto FROM item_versions_purged)) + 1 AS v)
WHERE TRUE
ON CONFLICT (id) DO UPDATE SET
    fields = excluded.fields,
    version = items.version + 1,
    created_version = CASE WHEN items.deleted THEN items.version + 1 ELSE items.created_version END,
    deleted = FALSE,
    updated_at = excluded.updated_at
"""
RETURNING = "RETURNING version, created_version, updated_at"
UPDATE_LIVE = f"""
UPDATE items SET fields = :fields, version = version + 1, updated_at = {NOW}
WHERE id = :id AND NOT deleted"""
DELETE = f"UPDATE items SET deleted = TRUE, version = version + 1, fields = '{{}}', updated_at = {NOW}"
IN_VERSIONS = "version IN (SELECT value FROM json_each(:versions))"

STATEMENTS = Statements(
    get=f"SELECT {ITEM} FROM items WHERE id = :id AND NOT deleted",
    # One statement: the database bumps the version atomically with the write. The inserted version is
    # computed from the row already there (or, for an id with none, above every purged tombstone's), so an
    # id whose tombstone the triggers replace (a plain INSERT path) comes back above the tombstone with no
    # fix-up, and RETURNING reports what is stored.
    upsert=f"{UPSERT}{RETURNING}",
    # The conditions sit in the one write statement (SQLite has one writer at a time anyway).
    insert_new=f"{UPSERT}WHERE items.deleted\n{RETURNING}",
    update_live=f"{UPDATE_LIVE}\n{RETURNING}",
    update_if_version=f"{UPDATE_LIVE} AND {IN_VERSIONS}\n{RETURNING}",
    delete=f"{DELETE} WHERE id = :id AND NOT deleted RETURNING version",
    delete_if_version=f"{DELETE} WHERE id = :id AND NOT deleted AND {IN_VERSIONS} RETURNING version",
    live_version="SELECT version FROM items WHERE id = :id AND NOT deleted",
    list_first=f"SELECT {ITEM} FROM items WHERE NOT deleted ORDER BY id LIMIT :limit",
    list_after=f"SELECT {ITEM} FROM items WHERE NOT deleted AND id > :after ORDER BY id LIMIT :limit",
    # INDEXED BY: SQLite would otherwise scan the table, tombstones and bodies included, to count.
    count="SELECT count(*) FROM items INDEXED BY items_live_id WHERE NOT deleted",
    versions="SELECT id, version, deleted FROM items WHERE id IN (SELECT value FROM json_each(:ids))",
    log_end="SELECT coalesce((SELECT max(seq) FROM item_changes), 0), (SELECT upto FROM item_changes_purged)",
    log_head="SELECT coalesce(max(seq), 0) FROM item_changes",  # one writer at a time: the last committed
    log_before=f"""
SELECT max(coalesce((SELECT max(seq) FROM item_changes WHERE logged_at <= {CUTOFF}), 0),
           (SELECT upto FROM item_changes_purged))
""",
    changes_after="SELECT seq, id, version, deleted FROM item_changes WHERE seq > :seq ORDER BY seq LIMIT :limit",
    mark_purged=f"""
UPDATE item_changes_purged SET upto = max(upto, coalesce(
    (SELECT max(seq) FROM item_changes
     WHERE seq <= :upto AND logged_at <= {CUTOFF} AND seq < (SELECT max(seq) FROM item_changes)), 0))
""",
    purge_changes=f"""
DELETE FROM item_changes
WHERE seq <= :upto AND seq <= (SELECT upto FROM item_changes_purged) AND logged_at <= {CUTOFF}
    AND seq < (SELECT max(seq) FROM item_changes)
""",
    purge_tombstones=f"DELETE FROM items WHERE deleted AND updated_at <= {CUTOFF}",
    load_cursor="SELECT cursor FROM change_cursors WHERE name = :name",
    save_cursor=f"""
INSERT INTO change_cursors (name, cursor, saved_at) VALUES (:name, :cursor, {NOW})
ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor, saved_at = excluded.saved_at
""",
)

KEY_STATEMENTS = KeyStatements(
    claim="""
INSERT INTO idempotency_keys (key, fingerprint, token, item_id)
VALUES (:key, :fingerprint, :token, :item_id)
ON CONFLICT (key) DO NOTHING RETURNING item_id, seq
""",
    evict="DELETE FROM idempotency_keys WHERE seq <= :seq - :keep",
    find=f"""
SELECT k.fingerprint, k.item_id, k.status_code, k.version, k.claimed_at <= {CUTOFF},
    i.id, i.fields, i.version, i.updated_at
FROM idempotency_keys AS k LEFT JOIN items AS i ON i.id = k.item_id AND NOT i.deleted
WHERE k.key = :key
""",
    take_over=f"""
UPDATE idempotency_keys SET token = :token, claimed_at = {NOW}
WHERE key = :key AND status_code IS NULL AND claimed_at <= {CUTOFF} RETURNING item_id
""",
    complete="""
UPDATE idempotency_keys SET status_code = :status_code, version = :version
WHERE key = :key AND token = :token AND status_code IS NULL RETURNING key
""",
    complete_written="""
UPDATE idempotency_keys AS k
SET status_code = CASE WHEN i.version = i.created_version THEN 201 ELSE 200 END, version = i.version
FROM items AS i WHERE i.id = k.item_id AND k.key = :key AND k.token = :token AND k.status_code IS NULL
""",
    release="DELETE FROM idempotency_keys WHERE key = :key AND token = :token AND status_code IS NULL",
    purge=f"DELETE FROM idempotency_keys WHERE created_at <= {CUTOFF}",
)

# db.migrate's record of what is applied (positional parameters: these run in init_schema only).
MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)
"""
IS_APPLIED = "SELECT 1 FROM schema_migrations WHERE version = ?"
RECORD_APPLIED = "INSERT INTO schema_migrations (version, name) VALUES (?, ?)"
