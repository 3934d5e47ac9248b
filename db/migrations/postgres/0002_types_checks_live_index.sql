-- The body as `json`, not `jsonb`: json keeps the client's bytes and key order (as SQLite's TEXT does), so
-- a version reads back byte-identical to what its write returned, which strong ETags need; jsonb would
-- reorder keys, and its GIN indexing buys nothing here (items are only looked up by id).
-- A body that is not valid JSON at all makes this migration fail (and roll back) rather than be altered.
-- `updated_at` becomes a timestamptz set by the database (the triggers of 0003 set it on every write).
-- The CHECKs are NOT VALID: they hold for every write from now on, while rows written before them (by
-- anyone) are kept as they are instead of failing the upgrade; the store reports such a row as malformed.
ALTER TABLE items
    ALTER COLUMN fields TYPE json USING fields::json,
    ALTER COLUMN updated_at TYPE timestamptz USING updated_at::timestamptz,
    ALTER COLUMN updated_at SET DEFAULT statement_timestamp(),
    ALTER COLUMN version SET DEFAULT 1,
    ALTER COLUMN created_version SET DEFAULT 1,
    ADD CONSTRAINT items_id_format CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$') NOT VALID,
    ADD CONSTRAINT items_version_positive CHECK (version >= 1 AND created_version >= 1) NOT VALID,
    ADD CONSTRAINT items_fields_object CHECK (json_typeof(fields) = 'object') NOT VALID;

-- Live rows only: list and count walk this index and never visit tombstones.
CREATE INDEX items_live_id ON items (id) WHERE NOT deleted;
