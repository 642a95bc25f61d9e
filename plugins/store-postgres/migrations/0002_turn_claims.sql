-- Schema version 2: which host runs each conversation's turn.
--
-- A claim lasts until `expires_at` (ms, the database's clock, so the hosts'
-- clocks do not matter); its host renews it while the turn runs and deletes
-- it when the turn seals. A host that dies stops renewing: another host may
-- claim the conversation once the lease has run out.
CREATE TABLE turn_claims (
    conversation_id TEXT PRIMARY KEY,
    host_id         TEXT NOT NULL,
    turn_id         TEXT,
    expires_at      BIGINT NOT NULL
);

CREATE INDEX turn_claims_by_host ON turn_claims (host_id);
