-- Schema version 1: what store-sqlite holds after its fourth version, for
-- several hosts writing at once.

CREATE TABLE conversations (
    id               TEXT PRIMARY KEY,
    created_at       BIGINT NOT NULL,
    last_activity_at BIGINT NOT NULL,
    title            TEXT NOT NULL DEFAULT '',
    status           TEXT NOT NULL DEFAULT 'idle',
    workspace_id     TEXT NOT NULL DEFAULT 'default',
    cwd              TEXT,
    model            TEXT,
    reasoning_effort TEXT,
    system_prompt    TEXT,
    -- The archive holding this conversation's log before its last compaction.
    compacted_from   TEXT,
    -- The last seq handed out. Every append bumps it in the statement that
    -- inserts the chunks: the row lock orders appends from any host, and a
    -- rolled-back append takes its bump with it, so seqs stay gap-free.
    last_seq         BIGINT NOT NULL DEFAULT 0,
    -- Turn metrics recorded (the next one's position), the same way.
    metrics_count    BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX conversations_by_activity ON conversations (last_activity_at DESC, id);

CREATE TABLE chunks (
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    seq             BIGINT NOT NULL,
    -- The seq of the first chunk of the message this chunk belongs to.
    message_seq     BIGINT NOT NULL,
    role            TEXT NOT NULL,
    turn_id         TEXT,
    -- The chunk's JSON (the wire's Chunk).
    chunk           TEXT NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);

CREATE TABLE turn_metrics (
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    position        BIGINT NOT NULL,
    turn_id         TEXT NOT NULL,
    metrics         TEXT NOT NULL,
    PRIMARY KEY (conversation_id, position)
);

-- Small JSON values plugins keep through the store.
CREATE TABLE plugin_values (
    scope TEXT NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (scope, key)
);
