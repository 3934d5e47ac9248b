-- A key keeps what its first answer was (status, item id, version), not the answer's body: a replay rebuilds
-- the answer from the item (routes/idempotency.py), so a key costs a few hundred bytes, not up to an item.
-- `seq` orders the keys as claimed: a claim deletes every key IDEMPOTENCY_KEYS_MAX or more claims older
-- (db/keys.py), which caps the table whatever the rate of new keys; the 24 h purge still applies.
-- SQLite cannot drop a CHECK: the table is rebuilt (the documented way), keys kept in the order claimed.
CREATE TABLE idempotency_keys_new (
    seq         INTEGER PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint TEXT NOT NULL,
    token       TEXT NOT NULL,
    item_id     TEXT NOT NULL,
    status_code INTEGER,
    version     INTEGER,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    claimed_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CHECK ((status_code IS NULL) = (version IS NULL))
);
INSERT INTO idempotency_keys_new (key, fingerprint, token, item_id, status_code, version, created_at, claimed_at)
    SELECT key, fingerprint, token, item_id, status_code, version, created_at, claimed_at
    FROM idempotency_keys ORDER BY created_at;
DROP TABLE idempotency_keys;
ALTER TABLE idempotency_keys_new RENAME TO idempotency_keys;
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
