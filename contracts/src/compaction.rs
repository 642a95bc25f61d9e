//! The `compaction` plugin's contract (types in
//! [`dispatch_protocol::compaction`], re-exported here).

use dispatch_abi::Event;
pub use dispatch_protocol::compaction::*;

/// A conversation was compacted: the session forgets what it held of its
/// history, the WebSocket tells every client.
pub const COMPACTED: Event<Compacted> = Event::new("conversation.compacted", 1);
