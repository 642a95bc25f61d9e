//! The `system-prompt` contract. Types in [`dispatch_protocol::prompt`],
//! re-exported here.

use dispatch_abi::Service;
pub use dispatch_protocol::prompt::*;
use serde_json::Value;

/// The template service; answers depend on the op (see [`PromptRequest`]).
pub const PROMPT: Service<PromptRequest, Value> = Service::new("system-prompt", 1);
