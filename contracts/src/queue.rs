//! The `message-queue` contract. Types in [`dispatch_protocol::queue`],
//! re-exported here.

use dispatch_abi::{Event, Service};
pub use dispatch_protocol::queue::*;
use serde_json::Value;

/// The queue service; answers depend on the op (see [`QueueRequest`]).
pub const QUEUE: Service<QueueRequest, Value> = Service::new("message-queue", 1);
/// A conversation's queue changed.
pub const CHANGED: Event<QueueState> = Event::new("message-queue.changed", 1);
