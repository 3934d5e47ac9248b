-- SQLite cannot add CHECKs or column defaults to a table: rebuild it (the documented way), same columns in
-- the same order. `updated_at` stays TEXT in the API's format, now defaulting to the database's clock.
-- Rows written before the CHECKs existed are copied as they are (as PostgreSQL's NOT VALID does): every
-- write from now on is checked, and the store reports an old malformed row instead of failing the upgrade.
-- The runner turns ignore_check_constraints off again after every migration, whatever happens.
PRAGMA ignore_check_constraints = ON;

CREATE TABLE items_new (
    id              TEXT PRIMARY KEY
                    CHECK (length(id) BETWEEN 1 AND 64 AND id NOT GLOB '*[^A-Za-z0-9_-]*'),
    fields          TEXT NOT NULL
                    CHECK (CASE WHEN json_valid(fields) THEN json_type(fields) = 'object' ELSE 0 END),
    version         INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_version INTEGER NOT NULL DEFAULT 1 CHECK (created_version >= 1),
    deleted         BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
                    CHECK (updated_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z')
);
INSERT INTO items_new (id, fields, version, created_version, deleted, updated_at)
    SELECT id, fields, version, created_version, deleted, updated_at FROM items;
DROP TABLE items;
ALTER TABLE items_new RENAME TO items;

PRAGMA ignore_check_constraints = OFF;

-- Live rows only: list and count walk this index and never visit tombstones.
CREATE INDEX items_live_id ON items (id) WHERE NOT deleted;
