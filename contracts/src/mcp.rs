//! The `mcp` contract of the `mcp` plugin: which Model Context Protocol
//! servers it bridges and how each is doing. Types in
//! [`dispatch_protocol::mcp`], re-exported here.

use dispatch_abi::Service;
pub use dispatch_protocol::mcp::*;
use serde_json::Value;

/// Every configured server with its state (any request; send `{}`).
pub const SERVERS: Service<Value, Servers> = Service::new("mcp.servers", 1);
