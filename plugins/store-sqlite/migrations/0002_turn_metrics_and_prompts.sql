-- Schema version 2: per-turn metrics and per-conversation system prompts.

CREATE TABLE turn_metrics (
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    position        INTEGER NOT NULL,
    turn_id         TEXT NOT NULL,
    metrics         TEXT NOT NULL,
    PRIMARY KEY (conversation_id, position)
) WITHOUT ROWID;

ALTER TABLE conversations ADD COLUMN system_prompt TEXT;
