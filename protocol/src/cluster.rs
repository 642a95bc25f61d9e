//! The `cluster` service: what hosts sharing one database agree on — who
//! runs a conversation's turn, and getting an operation to that host. A
//! store that several hosts share provides it (`store-postgres`); with a
//! store of one host's own there is no cluster, and each host decides
//! alone.

use serde::{Deserialize, Serialize};

/// Requests to the `cluster` service, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub enum ClusterRequest {
    /// Claim the conversation's turn for this host; answers [`Claimed`].
    /// Granted unless another live host holds it. A claim lasts while its
    /// host renews it (automatically); a host that dies loses its claims
    /// within the lease.
    Claim {
        /// The conversation.
        conversation_id: String,
        /// The turn this host is starting.
        turn_id: String,
    },
    /// Give up this host's claim on the conversation (the turn sealed);
    /// answers `{}`.
    Release {
        /// The conversation.
        conversation_id: String,
    },
    /// Deliver `action` to the host running the conversation's turn, if
    /// another host runs it; answers [`Delivered`].
    Forward {
        /// The conversation.
        conversation_id: String,
        /// What that host should do.
        action: ForwardAction,
    },
    /// This host's identity in the cluster; answers [`Member`].
    Whoami,
}

/// What a forwarded request asks of the host running a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum ForwardAction {
    /// Abort the running turn (`POST …/stop`).
    Stop,
    /// Abort it and close the conversation (`POST …/close`).
    Close,
}

/// The answer to [`ClusterRequest::Claim`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claimed {
    /// Whether this host now holds the claim.
    pub granted: bool,
    /// When refused: the host holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// When refused: the turn it runs, if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
}

/// The answer to [`ClusterRequest::Forward`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivered {
    /// Whether another host runs the turn and was sent the action.
    pub delivered: bool,
    /// That host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// The answer to [`ClusterRequest::Whoami`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// This host's id (unique per process start).
    pub host_id: String,
}

/// `cluster.forwarded`: another host asked this one to act on a turn it
/// runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Forwarded {
    /// The conversation.
    pub conversation_id: String,
    /// What to do.
    pub action: ForwardAction,
}
