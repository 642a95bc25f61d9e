//! The host's own contracts: the `dispatch.plugins` service (every
//! configured plugin, [`PluginList`]) and the `dispatch.plugin-state` event
//! (one plugin changed state, a [`PluginReport`]). The host provides them
//! under the plugin id `dispatch`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a plugin stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum State {
    /// Not yet activated.
    Pending,
    /// Activated and running.
    Active,
    /// Could not be loaded or activated.
    Failed,
    /// Not activated because a dependency is not active.
    Skipped,
    /// Deactivated during shutdown.
    Stopped,
}

impl State {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Active => "active",
            State::Failed => "failed",
            State::Skipped => "skipped",
            State::Stopped => "stopped",
        }
    }
}

/// One declared contribution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Provided {
    /// `service`, `tool`, …
    pub kind: String,
    /// The name.
    pub name: String,
}

/// What happened to one configured plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginReport {
    /// The manifest id, or the file stem when the manifest could not be read.
    pub id: String,
    /// The manifest version.
    pub version: Option<String>,
    /// The library file.
    #[serde(default)]
    pub file: String,
    /// 1-based position in the activation order.
    pub order: Option<usize>,
    /// The state.
    pub state: State,
    /// Why it failed or was skipped.
    pub error: Option<String>,
    /// As configured.
    #[serde(default)]
    pub required: bool,
    /// From the manifest.
    #[serde(default)]
    pub description: String,
    /// From the manifest.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// From the manifest.
    #[serde(default)]
    pub provides: Vec<Provided>,
    /// How long `activate` took.
    pub activate_ms: Option<f64>,
}

/// The `dispatch.plugins` answer (and `GET /extensions`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PluginList {
    /// Every configured plugin, in configuration order.
    pub plugins: Vec<PluginReport>,
    /// Every service, subscription and hook on the bus and the plugin that
    /// registered it — what `dispatch plugins --json` shows, locally or
    /// from a running server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registrations: Vec<Registration>,
    /// The host that answered (`GET /extensions`): its id in the cluster
    /// when it shares a store with other hosts, else `<name>:<pid>` — which
    /// of several hosts behind a load balancer this was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// One registration on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Registration {
    /// `service`, `event` (a subscription) or `hook`.
    pub kind: String,
    /// The bus name.
    pub name: String,
    /// Schema version.
    pub version: u32,
    /// The plugin that registered it.
    pub plugin: String,
    /// A hook handler's priority (lower runs first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
}

/// One plugin a reload touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReloadChange {
    /// The plugin id (the file stem when it has no readable manifest).
    pub id: String,
    /// The library file.
    pub file: String,
    /// The version now running (added, upgraded, restarted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Why (failed, removed as a dependent, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What one reload of the plugin set did (`dispatch.reload`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReloadReport {
    /// New plugins now active.
    pub added: Vec<ReloadChange>,
    /// Plugins no longer configured (or whose file is gone), deactivated.
    pub removed: Vec<ReloadChange>,
    /// Plugins whose file changed: the new build runs.
    pub upgraded: Vec<ReloadChange>,
    /// Plugins restarted because their configuration changed or a
    /// dependency was upgraded.
    pub restarted: Vec<ReloadChange>,
    /// What could not be loaded or activated; the rest is untouched.
    pub failed: Vec<ReloadChange>,
    /// Plugins left running as they were.
    pub unchanged: usize,
}
