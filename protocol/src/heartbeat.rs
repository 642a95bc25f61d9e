//! Heartbeat (WIRE.md "Heartbeat"): a workspace's scheduled agent. Every
//! `intervalMinutes` a run opens a new conversation (in workspace
//! `heartbeat`) with the configured task prompt, system prompt, model and
//! effort, and the workspace's directory.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::wire::ReasoningEffort;

/// The workspace a run's conversation is filed in.
pub const HEARTBEAT_WORKSPACE: &str = "heartbeat";

/// One workspace's heartbeat settings; the defaults when never set (and
/// for any field a stored config lacks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct HeartbeatConfig {
    /// Whether the loop is armed.
    pub enabled: bool,
    /// Skip a fire while any conversation of the workspace is active.
    pub inactive_only: bool,
    /// The run's system prompt template; `""`: the global one.
    pub system_prompt: String,
    /// The run's opening message (a template too).
    pub task_prompt: String,
    /// Minutes between the end of a run (or a change) and the next fire; ≥ 1.
    pub interval_minutes: u64,
    /// `<credential>/<model>`; `""`: the server's default.
    pub model: String,
    /// The run's effort; `null`: the default resolution.
    pub reasoning_effort: Option<ReasoningEffort>,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            enabled: false,
            inactive_only: true,
            system_prompt: String::new(),
            task_prompt: String::new(),
            interval_minutes: 30,
            model: String::new(),
            reasoning_effort: None,
        }
    }
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Its turn runs.
    Running,
    /// Its turn ended.
    Completed,
    /// Stopped by a client, or found running at start-up.
    Stopped,
}

/// One run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatRun {
    /// Its id.
    pub id: String,
    /// The conversation it opened.
    pub conversation_id: String,
    /// When it fired (ISO-8601).
    pub triggered_at: String,
    /// Where it stands.
    pub status: RunStatus,
}

/// `GET /workspaces/:id/heartbeat/runs`: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatRuns {
    /// The runs.
    pub runs: Vec<HeartbeatRun>,
}

/// `GET /workspaces/:id/heartbeat/next-run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NextRun {
    /// When it fires next (ISO-8601); `null` when disabled or while a run
    /// is in flight.
    pub next_run_at: Option<String>,
}
