-- Schema version 3: relayed events too large for a NOTIFY payload (8000
-- bytes) travel by reference to a row here; rows older than ten minutes
-- are deleted as new ones arrive.
CREATE TABLE relayed (
    id      BIGSERIAL PRIMARY KEY,
    body    TEXT NOT NULL,
    sent_at BIGINT NOT NULL
);

CREATE INDEX relayed_by_age ON relayed (sent_at);
