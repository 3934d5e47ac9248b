-- A key keeps what its first answer was (status, item id, version), not the answer's body: a replay rebuilds
-- the answer from the item (routes/idempotency.py), so a key costs a few hundred bytes, not up to an item.
-- `seq` orders the keys as claimed: a claim deletes every key IDEMPOTENCY_KEYS_MAX or more claims older
-- (db/keys.py), which caps the table whatever the rate of new keys; the 24 h purge still applies.
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_check;
ALTER TABLE idempotency_keys DROP COLUMN body;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_completed CHECK ((status_code IS NULL) = (version IS NULL));
ALTER TABLE idempotency_keys ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY;
CREATE UNIQUE INDEX idempotency_keys_seq ON idempotency_keys (seq);
