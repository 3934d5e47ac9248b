-- Idempotency-Key records for POST /items (IETF httpapi draft): in the database so they survive restarts and
-- every instance shares them. A row is claimed (status_code NULL: running) before the write and completed in
-- the write's own transaction, so a key's item is written at most once; purged after KEY_LIFETIME (24 h).
CREATE TABLE idempotency_keys (
    key         text COLLATE "C" PRIMARY KEY CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint text NOT NULL,   -- sha256 of method, path and body: the key reused for another request -> 422
    token       text NOT NULL,   -- the running request's claim; a takeover of a dead claim changes it
    item_id     text NOT NULL,   -- fixed at the claim: a made-up id is the same for every retry
    status_code integer,         -- the first response, NULL while running
    version     bigint,
    body        text,
    created_at  timestamptz NOT NULL DEFAULT statement_timestamp(),
    claimed_at  timestamptz NOT NULL DEFAULT statement_timestamp(),
    CHECK ((status_code IS NULL) = (version IS NULL) AND (status_code IS NULL) = (body IS NULL))
);

CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
