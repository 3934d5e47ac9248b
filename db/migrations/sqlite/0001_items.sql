-- Items. `deleted` rows are tombstones: they keep the last version, so a re-created id
-- continues above it and a cached older version can never look newer.
-- `created_version` is the version at which the row last came into existence (created or re-created),
-- which lets one upsert statement report whether it created the item.
CREATE TABLE IF NOT EXISTS items (
    id              TEXT PRIMARY KEY,
    fields          TEXT NOT NULL,
    version         INTEGER NOT NULL,
    created_version INTEGER NOT NULL,
    deleted         BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at      TEXT NOT NULL
);

-- Cache writes that did not reach Redis (it was unreachable from the writer): the newest version per id.
-- Any process that reaches Redis drops older cached copies of these ids, then deletes the row, so a
-- writer that cannot reach Redis (or dies before it can) never leaves an old version served for long.
CREATE TABLE IF NOT EXISTS cache_outbox (
    id      TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
