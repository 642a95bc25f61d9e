//! The conversation store: the `store` service (provided by `store-sqlite`
//! today; any store plugin speaks the same contract). Types in
//! [`dispatch_protocol::store`], re-exported here.

use dispatch_abi::Service;
pub use dispatch_protocol::store::*;
use serde_json::Value;

/// The `store` service. Answers differ by op (see [`StoreRequest`]).
pub const STORE: Service<StoreRequest, Value> = Service::new("store", 1);
