-- Items. `deleted` rows are tombstones: they keep the last version, so a re-created id
-- continues above it and a cached older version can never look newer.
-- `created_version` is the version at which the row last came into existence (created or re-created),
-- which lets one upsert statement report whether it created the item.
CREATE TABLE IF NOT EXISTS items (
    id              TEXT PRIMARY KEY COLLATE "C",
    fields          TEXT NOT NULL,
    version         BIGINT NOT NULL,
    created_version BIGINT NOT NULL,
    deleted         BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at      TEXT NOT NULL
);
