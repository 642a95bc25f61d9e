//! Provider concurrency (types in [`dispatch_protocol::concurrency`],
//! re-exported here): the service that hands out provider slots.

use dispatch_abi::Service;
pub use dispatch_protocol::concurrency::*;
use serde_json::Value;

/// Provided by `provider-concurrency`; without it every provider runs
/// unlimited. Answers differ by op, hence `Value`.
pub const CONCURRENCY: Service<ConcurrencyRequest, Value> = Service::new("concurrency", 1);
