//! The `websocket` contract of the `transport-ws` plugin: hand it an
//! upgraded connection accepted elsewhere (the HTTP transport's `/ws`).
//! Types in [`dispatch_protocol::websocket`], re-exported here.

use dispatch_abi::{Event, Service};
pub use dispatch_protocol::websocket::*;
use serde_json::Value;

/// The upgrade service; answers depend on the op (see [`UpgradeRequest`]).
pub const WEBSOCKET: Service<UpgradeRequest, Value> = Service::new("websocket", 1);
/// How many WebSocket connections are open now: published when one opens
/// or closes.
pub const CONNECTIONS: Event<Connections> = Event::new("websocket.connections", 1);
