"""PostgreSQL's statements, in psycopg's named style (%(name)s). Timestamps come from the server's clock."""

from __future__ import annotations

from db.keys import KeyStatements
from db.sql import Statements


def _iso(column: str) -> str:
    """The API's format for updated_at: UTC, ISO 8601, milliseconds, 'Z' (as db.base.utc_now wrote before)."""
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""


UPDATED_AT = _iso("updated_at")
# The body as the exact text stored (json keeps it byte for byte), decoded by the store, not the driver.
ITEM = f"id, fields::text, version, {UPDATED_AT}"
CUTOFF = "statement_timestamp() - make_interval(secs => %(age)s)"

UPSERT = """
INSERT INTO items (id, fields) VALUES (%(id)s, %(fields)s::json)
ON CONFLICT (id) DO UPDATE SET
    fields = excluded.fields,
    version = items.version + 1,
    created_version = CASE WHEN items.deleted THEN items.version + 1 ELSE items.created_version END,
    deleted = FALSE,
    updated_at = statement_timestamp()
"""
RETURNING = f"RETURNING version, created_version, {UPDATED_AT}"
UPDATE_LIVE = """
UPDATE items SET fields = %(fields)s::json, version = version + 1, updated_at = statement_timestamp()
WHERE id = %(id)s AND NOT deleted"""
DELETE = "UPDATE items SET deleted = TRUE, version = version + 1, fields = '{}', updated_at = statement_timestamp()"

STATEMENTS = Statements(
    get=f"SELECT {ITEM} FROM items WHERE id = %(id)s AND NOT deleted",
    # One statement: the database bumps the version atomically with the write. It is complete without
    # the triggers (they only log it, and replace a tombstone before the insert: version and
    # created_version then come from the trigger, and RETURNING reports them).
    upsert=f"{UPSERT}{RETURNING}",
    # The conditions sit in the one write statement: an UPDATE re-checks its WHERE on the newest row version
    # after waiting for a concurrent writer's lock, and ON CONFLICT DO UPDATE ... WHERE does the same, so
    # of two writers holding one ETag only the first to commit matches.
    insert_new=f"{UPSERT}WHERE items.deleted\n{RETURNING}",
    update_live=f"{UPDATE_LIVE}\n{RETURNING}",
    update_if_version=f"{UPDATE_LIVE} AND version = ANY(%(versions)s)\n{RETURNING}",
    delete=f"{DELETE} WHERE id = %(id)s AND NOT deleted RETURNING version",
    delete_if_version=f"{DELETE} WHERE id = %(id)s AND NOT deleted AND version = ANY(%(versions)s) RETURNING version",
    live_version="SELECT version FROM items WHERE id = %(id)s AND NOT deleted",
    list_first=f"SELECT {ITEM} FROM items WHERE NOT deleted ORDER BY id LIMIT %(limit)s",
    list_after=f"SELECT {ITEM} FROM items WHERE NOT deleted AND id > %(after)s ORDER BY id LIMIT %(limit)s",
    count="SELECT count(*) FROM items WHERE NOT deleted",
    versions="SELECT id, version, deleted FROM items WHERE id = ANY(%(ids)s)",
    log_end="SELECT coalesce((SELECT max(seq) FROM item_changes), 0), (SELECT upto FROM item_changes_purged)",
    # The counter, not max(seq): a seq taken by a transaction still open counts (its commit may come first).
    log_head="""
SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('item_changes', 'seq')::regclass), 0)
""",
    log_before=f"""
SELECT greatest(coalesce((SELECT max(seq) FROM item_changes WHERE logged_at <= {CUTOFF}), 0),
                (SELECT upto FROM item_changes_purged))
""",
    changes_after="""
SELECT seq, id, version, deleted FROM item_changes WHERE seq > %(seq)s ORDER BY seq LIMIT %(limit)s
""",
    mark_purged=f"""
UPDATE item_changes_purged SET upto = greatest(upto,
    (SELECT max(seq) FROM item_changes WHERE seq <= %(upto)s AND logged_at <= {CUTOFF}))
""",
    purge_changes=f"""
DELETE FROM item_changes
WHERE seq <= %(upto)s AND seq <= (SELECT upto FROM item_changes_purged) AND logged_at <= {CUTOFF}
""",
    purge_tombstones=f"DELETE FROM items WHERE deleted AND updated_at <= {CUTOFF}",
    load_cursor="SELECT cursor FROM change_cursors WHERE name = %(name)s",
    save_cursor="""
INSERT INTO change_cursors (name, cursor) VALUES (%(name)s, %(cursor)s)
ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor, saved_at = statement_timestamp()
""",
)

KEY_STATEMENTS = KeyStatements(
    claim="""
INSERT INTO idempotency_keys (key, fingerprint, token, item_id)
VALUES (%(key)s, %(fingerprint)s, %(token)s, %(item_id)s)
ON CONFLICT (key) DO NOTHING RETURNING item_id, seq
""",
    evict="DELETE FROM idempotency_keys WHERE seq <= %(seq)s - %(keep)s",
    find=f"""
SELECT k.fingerprint, k.item_id, k.status_code, k.version, k.claimed_at <= {CUTOFF},
    i.id, i.fields::text, i.version, {_iso("i.updated_at")}
FROM idempotency_keys AS k LEFT JOIN items AS i ON i.id = k.item_id AND NOT i.deleted
WHERE k.key = %(key)s
""",
    take_over=f"""
UPDATE idempotency_keys SET token = %(token)s, claimed_at = statement_timestamp()
WHERE key = %(key)s AND status_code IS NULL AND claimed_at <= {CUTOFF} RETURNING item_id
""",
    complete="""
UPDATE idempotency_keys SET status_code = %(status_code)s, version = %(version)s
WHERE key = %(key)s AND token = %(token)s AND status_code IS NULL RETURNING key
""",
    complete_written="""
UPDATE idempotency_keys AS k
SET status_code = CASE WHEN i.version = i.created_version THEN 201 ELSE 200 END, version = i.version
FROM items AS i WHERE i.id = k.item_id AND k.key = %(key)s AND k.token = %(token)s AND k.status_code IS NULL
""",
    release="DELETE FROM idempotency_keys WHERE key = %(key)s AND token = %(token)s AND status_code IS NULL",
    purge=f"DELETE FROM idempotency_keys WHERE created_at <= {CUTOFF}",
)

# db.migrate's record of what is applied (positional parameters: these run in init_schema only).
MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
IS_APPLIED = "SELECT 1 FROM schema_migrations WHERE version = %s"
RECORD_APPLIED = "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)"
