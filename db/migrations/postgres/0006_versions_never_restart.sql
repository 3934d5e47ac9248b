-- Versions never restart. A tombstone is an id's only record of its last version, and the follower purges
-- old ones; the highest version a purged tombstone had is kept here, and an id with no row starts above it.
-- So a new incarnation of a purged id never reuses a version, nor an ETag, of an old one: an If-Match with
-- an old ETag fails, and a cached old version stays below the new ones. Started at the highest version the
-- change log still holds of an id that has no row (purged before this migration; older ones left no trace).
CREATE TABLE item_versions_purged (
    singleton boolean PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    upto      bigint NOT NULL
);
INSERT INTO item_versions_purged (upto)
SELECT coalesce(max(version), 0) FROM item_changes AS c WHERE NOT EXISTS (SELECT 1 FROM items AS i WHERE i.id = c.id);

-- As in 0003, and an INSERT of a live row for an id with no row at all starts above every purged version.
-- The floor is read after the tombstone DELETE: if a purge is deleting the same tombstone, that DELETE waits
-- for it to commit, and the read (a statement of its own, a snapshot of its own) sees the floor it raised.
CREATE OR REPLACE FUNCTION items_before_write() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    tombstone_version bigint;
BEGIN
    NEW.updated_at := statement_timestamp();
    IF TG_OP = 'INSERT' THEN
        -- Deleting a tombstone is not logged (items_keep_tombstone fires for live rows only).
        DELETE FROM items WHERE id = NEW.id AND deleted RETURNING version INTO tombstone_version;
        IF tombstone_version IS NOT NULL THEN
            NEW.version := greatest(NEW.version, tombstone_version + 1);
        ELSIF NOT NEW.deleted AND NEW.version >= 1 THEN  -- (below 1: items_version_positive refuses it;
            -- a tombstone items_keep_tombstone inserts continues its live row)
            NEW.version := greatest(NEW.version, (SELECT upto + 1 FROM item_versions_purged));
        END IF;
        NEW.created_version := NEW.version;
    ELSE
        IF NEW.id IS DISTINCT FROM OLD.id THEN
            -- The old id would vanish without a tombstone, and caches would keep serving it.
            RAISE EXCEPTION 'items.id cannot change (% -> %): delete the row and insert a new one', OLD.id, NEW.id;
        END IF;
        NEW.version := greatest(NEW.version, OLD.version + 1);
        IF OLD.deleted AND NOT NEW.deleted THEN
            NEW.created_version := NEW.version;
        END IF;
    END IF;
    RETURN NEW;
END
$$;

-- A tombstone deleted (a purge, the service's or anyone's) raises the floor to its version. Not the one
-- items_before_write deletes to make way for an INSERT of its id (a trigger level down): the new row
-- continues above it, and re-creating an id does not contend for this one row.
CREATE FUNCTION items_tombstone_purged() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() = 1 THEN
        UPDATE item_versions_purged SET upto = greatest(upto, OLD.version);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER items_tombstone_purged AFTER DELETE ON items
    FOR EACH ROW WHEN (OLD.deleted) EXECUTE FUNCTION items_tombstone_purged();
