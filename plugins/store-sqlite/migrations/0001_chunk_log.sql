-- Schema version 1: the append-only chunk log and conversation metadata.

CREATE TABLE conversations (
    id               TEXT PRIMARY KEY NOT NULL,
    created_at       INTEGER NOT NULL,
    last_activity_at INTEGER NOT NULL,
    title            TEXT NOT NULL DEFAULT '',
    status           TEXT NOT NULL DEFAULT 'idle',
    workspace_id     TEXT NOT NULL DEFAULT 'default',
    cwd              TEXT,
    model            TEXT,
    reasoning_effort TEXT,
    -- The last seq handed out; bumped in the same transaction as the insert,
    -- so seqs are gap-free and a rolled-back append leaves no hole.
    last_seq         INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE chunks (
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    seq             INTEGER NOT NULL,
    -- The seq of the first chunk of the message this chunk belongs to.
    message_seq     INTEGER NOT NULL,
    role            TEXT NOT NULL,
    turn_id         TEXT,
    -- The chunk as the wire's StoredChunk JSON ({"seq","role","chunk"}), so a
    -- history read is one concatenation instead of per-row work.
    stored          TEXT NOT NULL,
    PRIMARY KEY (conversation_id, seq)
) WITHOUT ROWID;

CREATE INDEX conversations_by_activity ON conversations(last_activity_at DESC);
