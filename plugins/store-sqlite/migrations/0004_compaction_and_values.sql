-- Schema version 4: compaction and plugins' values.
--
-- A compacted conversation names the archive that holds its whole old log
-- (archives chain: an archive keeps the `compacted_from` of the log it
-- copied).
ALTER TABLE conversations ADD COLUMN compacted_from TEXT;

-- Small values plugins keep through the store (a conversation's
-- compaction threshold, cache-warming toggles, ...), so they live wherever
-- the conversations do. `value` is JSON.
CREATE TABLE plugin_values (
    scope TEXT NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
