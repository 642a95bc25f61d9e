-- Schema version 6: turn traces (the `traces` plugin; README "Observability").
--
-- One row per fact of a turn: what it offered the model, each provider
-- request, each tool call, its end. `body` is the record's JSON; the other
-- columns are what the store selects and aggregates by. `id` orders the
-- rows and is the cursor a page continues after. No foreign key: a trace
-- never creates or touches its conversation.
CREATE TABLE traces (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL,
    turn_id         TEXT NOT NULL,
    kind            TEXT NOT NULL,
    ended_at        INTEGER NOT NULL,
    model           TEXT,
    output_tokens   INTEGER,
    gen_ms          INTEGER,
    body            TEXT NOT NULL
);

CREATE INDEX traces_by_conversation ON traces (conversation_id, id);
-- Throughput: the `turn` rows of a period.
CREATE INDEX traces_turns_by_time ON traces (ended_at) WHERE kind = 'turn';
