-- The change log, written by the database itself: triggers on items append (seq, id, version, deleted) in
-- the writing transaction, whoever the writer is, and keep versions rising for plain SQL writes too.
-- SQLite has one writer at a time, so seq order is commit order. seq is the rowid: a new row gets the
-- largest + 1, so a seq is never reused as long as the newest row stays (purge_changes always keeps it;
-- AUTOINCREMENT would guarantee the same at the cost of a second table write per change).
CREATE TABLE item_changes (
    seq       INTEGER PRIMARY KEY,
    id        TEXT NOT NULL,
    version   INTEGER NOT NULL,
    deleted   BOOLEAN NOT NULL,
    logged_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- The highest seq ever purged: a cursor below it may have missed changes (a gap).
CREATE TABLE item_changes_purged (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    upto      INTEGER NOT NULL
);
INSERT INTO item_changes_purged (singleton, upto) VALUES (1, 0);

-- Followers' durable positions (ChangeCursor.to_text), by name.
CREATE TABLE change_cursors (
    name     TEXT PRIMARY KEY,
    cursor   TEXT NOT NULL,
    saved_at TEXT NOT NULL
);

-- The version of the row an INSERT is about to replace, kept for the moment between the BEFORE and the
-- AFTER trigger (SQLite's triggers cannot assign NEW, so the AFTER trigger fixes the new row up).
CREATE TABLE item_replaced_versions (
    id      TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);

-- An INSERT of an id that has a tombstone (or, by INSERT OR REPLACE, a live row at or above the inserted
-- version): remember the old version; drop the tombstone so the insert can take its place. The service's
-- own upsert inserts above the old version, so for a live row this does not fire on its path.
CREATE TRIGGER items_insert_replaces BEFORE INSERT ON items
WHEN EXISTS (SELECT 1 FROM items WHERE id = NEW.id AND (deleted OR version >= NEW.version))
BEGIN
    INSERT OR REPLACE INTO item_replaced_versions (id, version) SELECT id, version FROM items WHERE id = NEW.id;
    DELETE FROM items WHERE id = NEW.id AND deleted;
END;

-- After an INSERT: an id that existed continues above its old version. That fix-up is an UPDATE, which
-- items_updated logs (triggers already running do not fire again; other triggers do: recursive_triggers is
-- off, its default); otherwise the insert is logged here.
CREATE TRIGGER items_inserted AFTER INSERT ON items
BEGIN
    UPDATE items SET version = (SELECT version + 1 FROM item_replaced_versions WHERE id = NEW.id)
    WHERE id = NEW.id AND NEW.version <= (SELECT version FROM item_replaced_versions WHERE id = NEW.id);
    INSERT INTO item_changes (id, version, deleted)
    SELECT NEW.id, NEW.version, NEW.deleted
    WHERE NEW.version > coalesce((SELECT version FROM item_replaced_versions WHERE id = NEW.id), 0);
    DELETE FROM item_replaced_versions WHERE id = NEW.id;
END;

-- After an UPDATE by a writer that did not raise the version (or did not set updated_at): versions only
-- rise (new = max(requested, old + 1)) and updated_at is the database's clock. The service's statements do
-- both, so this only runs for other writers. Its fix-up is an UPDATE that items_updated then logs.
CREATE TRIGGER items_update_fixup AFTER UPDATE ON items
WHEN NEW.version <= OLD.version OR NEW.updated_at IS OLD.updated_at
BEGIN
    UPDATE items SET
        version = max(NEW.version, OLD.version + 1),
        updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
    WHERE id = NEW.id;
END;

-- Every UPDATE that raised the version is logged; one that did not is logged by its fix-up (above), which
-- raises it. A fix-up that only restamps updated_at keeps the version, so nothing is logged twice.
CREATE TRIGGER items_updated AFTER UPDATE ON items
WHEN NEW.version > OLD.version
BEGIN
    INSERT INTO item_changes (id, version, deleted) VALUES (NEW.id, NEW.version, NEW.deleted);
END;

-- The old id would vanish without a tombstone, and caches would keep serving it.
CREATE TRIGGER items_id_immutable BEFORE UPDATE OF id ON items
WHEN NEW.id IS NOT OLD.id
BEGIN
    SELECT RAISE(ABORT, 'items.id cannot change: delete the row and insert a new one');
END;

-- A hard DELETE of a live row leaves a tombstone one version above it (logged as a deletion by
-- items_inserted), so a cached copy is replaced and the id, if inserted again, continues above it.
-- Deleting a tombstone (a purge) does not fire this: no recursion, nothing logged.
CREATE TRIGGER items_deleted AFTER DELETE ON items
WHEN NOT OLD.deleted
BEGIN
    INSERT INTO items (id, fields, version, created_version, deleted)
    VALUES (OLD.id, '{}', OLD.version + 1, OLD.version + 1, TRUE);
END;
