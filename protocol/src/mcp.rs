//! The `mcp` contract of the `mcp` plugin: the Model Context Protocol
//! servers it bridges, and how each is doing — what
//! `GET /conversations/:id/mcp` and `dispatch plugins` show.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ServerState {
    /// Being started and initialised (first start).
    Starting,
    /// Initialised: its tools are offered.
    Connected,
    /// It exited, hung or could not start; waiting to start again.
    Restarting,
    /// Gave up on it (it kept failing); its tools are withdrawn.
    Failed,
    /// Shut down with the plugin.
    Stopped,
}

impl ServerState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Starting => "starting",
            ServerState::Connected => "connected",
            ServerState::Restarting => "restarting",
            ServerState::Failed => "failed",
            ServerState::Stopped => "stopped",
        }
    }
}

/// One server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerStatus {
    /// Its name in the configuration (the prefix of its tools' names).
    pub id: String,
    /// Its state.
    pub state: ServerState,
    /// How many tools it offers now.
    pub tool_count: usize,
    /// The last error: why it is restarting or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `stdio` or `http`.
    #[serde(default)]
    pub transport: String,
    /// Starts after the first (restarts).
    #[serde(default)]
    pub restarts: u32,
}

/// What the `mcp.servers` service answers: every configured server, by
/// name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Servers {
    /// In name order.
    pub servers: Vec<ServerStatus>,
}
