-- The change log, written by the database itself: triggers on items append (seq, id, version, deleted) in
-- the writing transaction, whoever the writer is, and keep versions rising for plain SQL writes too.
-- `xid` is the writing transaction: seqs are taken at insert time but transactions commit in another
-- order, and the store uses it to deliver a late-committing lower seq instead of skipping it.
CREATE TABLE item_changes (
    seq       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid       xid8 NOT NULL DEFAULT pg_current_xact_id(),
    id        text COLLATE "C" NOT NULL,
    version   bigint NOT NULL,
    deleted   boolean NOT NULL,
    logged_at timestamptz NOT NULL DEFAULT statement_timestamp()
);

-- The highest seq ever purged: a cursor below it may have missed changes (a gap).
CREATE TABLE item_changes_purged (
    singleton boolean PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    upto      bigint NOT NULL
);
INSERT INTO item_changes_purged (upto) VALUES (0);

-- Followers' durable positions (ChangeCursor.to_text), by name.
CREATE TABLE change_cursors (
    name     text PRIMARY KEY,
    cursor   text NOT NULL,
    saved_at timestamptz NOT NULL DEFAULT statement_timestamp()
);

-- Before a row is written: the database's clock, versions that only rise (new = max(requested, old + 1)),
-- and a plain INSERT of an id whose tombstone is still there replaces the tombstone and continues above
-- its version (PostgreSQL lets a BEFORE trigger assign NEW; SQLite's triggers do this differently).
CREATE FUNCTION items_before_write() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    tombstone_version bigint;
BEGIN
    NEW.updated_at := statement_timestamp();
    IF TG_OP = 'INSERT' THEN
        -- Deleting a tombstone is not logged (items_keep_tombstone fires for live rows only).
        DELETE FROM items WHERE id = NEW.id AND deleted RETURNING version INTO tombstone_version;
        NEW.version := greatest(NEW.version, tombstone_version + 1);
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

-- After a row is written: log it, and wake the followers (identical notifications of one transaction are
-- folded into one, delivered at commit).
CREATE FUNCTION items_log_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO item_changes (id, version, deleted) VALUES (NEW.id, NEW.version, NEW.deleted);
    PERFORM pg_notify('item_changes:' || TG_TABLE_SCHEMA, '');  -- per schema: others are not woken
    RETURN NULL;
END
$$;

-- A hard DELETE of a live row leaves a tombstone one version above it (logged as a deletion by the insert),
-- so a cached copy is replaced and the id, if inserted again, continues above it. Deleting a tombstone
-- (a purge) does not fire this: no recursion, nothing logged.
CREATE FUNCTION items_keep_tombstone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO items (id, fields, version, created_version, deleted)
    VALUES (OLD.id, '{}', OLD.version + 1, OLD.created_version, TRUE);
    RETURN NULL;
END
$$;

CREATE TRIGGER items_before_write BEFORE INSERT OR UPDATE ON items
    FOR EACH ROW EXECUTE FUNCTION items_before_write();
CREATE TRIGGER items_log_change AFTER INSERT OR UPDATE ON items
    FOR EACH ROW EXECUTE FUNCTION items_log_change();
CREATE TRIGGER items_keep_tombstone AFTER DELETE ON items
    FOR EACH ROW WHEN (NOT OLD.deleted) EXECUTE FUNCTION items_keep_tombstone();
