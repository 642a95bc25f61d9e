-- Schema version 5: workspaces (WIRE.md "Workspaces").
--
-- A workspace's `last_activity_at` is when it was last touched itself;
-- the store answers the latest of that and its conversations' own, so an
-- append never has a second row to update.
CREATE TABLE workspaces (
    id                  TEXT PRIMARY KEY,
    title               TEXT NOT NULL,
    default_cwd         TEXT,
    default_computer_id TEXT,
    starred             INTEGER NOT NULL DEFAULT 0,
    created_at          INTEGER NOT NULL,
    last_activity_at    INTEGER NOT NULL
);

-- The workspaces conversations already name (those whose id is a slug:
-- 1-40 of a-z 0-9 -, no hyphen at either end; nothing else can be
-- addressed by the workspace routes).
INSERT INTO workspaces (id, title, created_at, last_activity_at)
    SELECT workspace_id, workspace_id, MIN(created_at), MAX(last_activity_at)
    FROM conversations
    WHERE length(workspace_id) BETWEEN 1 AND 40
      AND workspace_id NOT GLOB '*[^a-z0-9-]*'
      AND workspace_id NOT GLOB '-*' AND workspace_id NOT GLOB '*-'
    GROUP BY workspace_id;

CREATE INDEX conversations_by_workspace ON conversations (workspace_id);
