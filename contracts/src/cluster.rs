//! The `cluster` contract (types in [`dispatch_protocol::cluster`],
//! re-exported here): hosts sharing one store agree on who runs a turn.

use dispatch_abi::{Event, Service};
pub use dispatch_protocol::cluster::*;
use serde_json::Value;

/// The cluster service, provided by a store several hosts share. Answers
/// differ by op (see [`ClusterRequest`]), hence `Value`.
pub const CLUSTER: Service<ClusterRequest, Value> = Service::new("cluster", 1);

/// Published on the host that runs a turn when another host forwarded an
/// action for it (the session acts on it).
pub const FORWARDED: Event<Forwarded> = Event::new("cluster.forwarded", 1);

/// A turn event of a turn another host runs, relayed (published on every
/// other host; the session keeps a copy of the turn's log, so watchers on
/// any host see it).
pub const REMOTE_EVENT: Event<dispatch_protocol::wire::AgentEvent> = Event::new("cluster.remote-event", 1);

/// A status change on another host, as relayed (to the session, which
/// passes it on as [`REMOTE_STATUS`] once it can answer for the turn).
pub const RELAYED_STATUS: Event<dispatch_protocol::session::StatusChanged> =
    Event::new("cluster.relayed-status", 1);

/// A status change on another host, for the transports to tell their
/// clients as for their own host's. Published by the session after the
/// turn it announces is mirrored, so a transport that asks about the turn
/// at once finds it.
pub const REMOTE_STATUS: Event<dispatch_protocol::session::StatusChanged> =
    Event::new("cluster.remote-status", 1);

/// A conversation's surface instance changed on another host (a todo
/// list, a message queue: whatever a plugin shows per conversation),
/// relayed. The `surfaces` registry takes it as its own, so clients of
/// every host see the same instance.
pub const REMOTE_SURFACE: Event<dispatch_protocol::surface::SurfaceChanged> =
    Event::new("cluster.remote-surface", 1);
