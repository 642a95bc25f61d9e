//! The `compaction` plugin's contract (types in
//! [`dispatch_protocol::compaction`], re-exported here).

use dispatch_abi::{Event, Service};
pub use dispatch_protocol::compaction::*;

/// A conversation was compacted: the session forgets what it held of its
/// history, the WebSocket tells every client.
pub const COMPACTED: Event<Compacted> = Event::new("conversation.compacted", 1);

/// The compaction service (the session asks it at tool-result boundaries).
pub const COMPACTION: Service<CompactionRequest, InFlight> = Service::new("compaction", 1);
