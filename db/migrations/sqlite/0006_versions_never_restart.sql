-- Versions never restart. A tombstone is an id's only record of its last version, and the follower purges
-- old ones; the highest version a purged tombstone had is kept here, and an id with no row starts above it.
-- So a new incarnation of a purged id never reuses a version, nor an ETag, of an old one: an If-Match with
-- an old ETag fails, and a cached old version stays below the new ones. Started at the highest version the
-- change log still holds of an id that has no row (purged before this migration; older ones left no trace).
CREATE TABLE item_versions_purged (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    upto      INTEGER NOT NULL
);
INSERT INTO item_versions_purged (singleton, upto)
SELECT 1, coalesce(max(version), 0) FROM item_changes AS c WHERE NOT EXISTS (SELECT 1 FROM items AS i WHERE i.id = c.id);

-- A tombstone deleted (a purge, the service's or anyone's) raises the floor to its version. Not the one
-- items_insert_replaces deletes to make way for an INSERT of its id (it noted the id first): the new row
-- continues above it.
CREATE TRIGGER items_tombstone_purged AFTER DELETE ON items
WHEN OLD.deleted AND NOT EXISTS (SELECT 1 FROM item_replaced_versions WHERE id = OLD.id)
BEGIN
    UPDATE item_versions_purged SET upto = max(upto, OLD.version);
END;

-- As in 0003, and an INSERT of a live row for an id with no row at all, at or below the floor, is moved
-- above the floor the same way (items_inserted raises it above the version noted here). The service's
-- upsert inserts above it; a tombstone items_deleted inserts continues its live row.
DROP TRIGGER items_insert_replaces;
CREATE TRIGGER items_insert_replaces BEFORE INSERT ON items
WHEN EXISTS (SELECT 1 FROM items WHERE id = NEW.id AND (deleted OR version >= NEW.version))
    OR (NOT NEW.deleted AND NEW.version <= (SELECT upto FROM item_versions_purged)
        AND NOT EXISTS (SELECT 1 FROM items WHERE id = NEW.id))
BEGIN
    INSERT OR REPLACE INTO item_replaced_versions (id, version)
    SELECT NEW.id, coalesce((SELECT version FROM items WHERE id = NEW.id), (SELECT upto FROM item_versions_purged));
    DELETE FROM items WHERE id = NEW.id AND deleted;
END;
