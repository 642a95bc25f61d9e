-- Schema version 5: turn traces (the `traces` plugin; README
-- "Observability"), as store-sqlite's sixth version.
--
-- `id` orders the rows and is the cursor a page continues after. One
-- conversation's turn runs on one host at a time and its traces are
-- written in order by that host, so within a conversation ids are
-- committed in order and a page never skips a row committed later.
CREATE TABLE traces (
    id              BIGSERIAL PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    turn_id         TEXT NOT NULL,
    kind            TEXT NOT NULL,
    ended_at        BIGINT NOT NULL,
    model           TEXT,
    output_tokens   BIGINT,
    gen_ms          BIGINT,
    body            TEXT NOT NULL
);

CREATE INDEX traces_by_conversation ON traces (conversation_id, id);
CREATE INDEX traces_turns_by_time ON traces (ended_at) WHERE kind = 'turn';
