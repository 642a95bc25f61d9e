-- Schema version 4: workspaces (WIRE.md "Workspaces"), as store-sqlite's
-- fifth version.
--
-- A workspace's `last_activity_at` is when it was last touched itself;
-- the store answers the latest of that and its conversations' own, so an
-- append never has a second row to update.
CREATE TABLE workspaces (
    id                  TEXT PRIMARY KEY,
    title               TEXT NOT NULL,
    default_cwd         TEXT,
    default_computer_id TEXT,
    starred             BOOLEAN NOT NULL DEFAULT false,
    created_at          BIGINT NOT NULL,
    last_activity_at    BIGINT NOT NULL
);

-- The workspaces conversations already name (those whose id is a slug:
-- nothing else can be addressed by the workspace routes).
INSERT INTO workspaces (id, title, created_at, last_activity_at)
    SELECT workspace_id, workspace_id, MIN(created_at), MAX(last_activity_at)
    FROM conversations
    WHERE workspace_id ~ '^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$'
    GROUP BY workspace_id;

CREATE INDEX conversations_by_workspace ON conversations (workspace_id);
