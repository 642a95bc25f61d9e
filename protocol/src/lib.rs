//! # dispatch-protocol — everything that travels
//!
//! Pure data and the few pure traits around it: no `abi_stable`, no I/O, no
//! particular async runtime. Two audiences share it, so each type has one
//! definition in the whole system:
//!
//! * **clients** (the CLI, the web frontend's contract tests, scripts) read
//!   and write [`wire`]: chunks, messages, [`wire::AgentEvent`], usage,
//!   metrics — exactly the JSON of `WIRE.md`;
//! * **plugins** exchange the payloads of the bundled bus contracts:
//!   [`provider`], [`catalog`], [`tool`], [`store`], [`surface`],
//!   [`plugins`] (the host's own), [`todo`](mod@todo), [`session`],
//!   [`queue`], [`prompt`], [`websocket`]. The typed bus keys for these
//!   live in `dispatch-contracts`, which adds `dispatch-abi` on top.
//!
//! The kernel's turn loop runs on these types too ([`tool::Tool`],
//! [`provider::ProviderEvent`], [`abort::AbortSignal`]).
//!
//! # Evolving a contract
//!
//! One policy for every contract here:
//!
//! * **Requests are strict.** A service refuses a request with a field it
//!   does not know (`deny_unknown_fields`), with an `invalid_payload` error
//!   naming the field: a caller asking for behaviour the provider does not
//!   have must hear so, not be silently ignored. An unknown `op` is refused
//!   the same way (`invalid_payload`: "unknown variant `x`, expected one of
//!   …").
//! * **Answers and events are lenient.** Readers ignore fields they do not
//!   know, so a provider may add an informative field without breaking
//!   older readers.
//! * **What needs no version bump:** a new optional field (with a default),
//!   a new `op`, a new event or result variant. Every enum a contract may
//!   grow (ops, event kinds, result kinds, states) is `#[non_exhaustive]`,
//!   so matching code keeps compiling.
//! * **Hook values pass through every filter**, and a filter built before a
//!   field existed drops it when it re-encodes the value: a new field of a
//!   hook value must be one whose loss its readers survive (they fall back,
//!   as `session.tools` does to a tool's own description without
//!   `describe`).
//! * **What bumps the schema version** (the `u32` of the bus key): removing,
//!   renaming or retyping a field, a new required field, or a changed
//!   meaning. A plugin built against the old version then gets
//!   `version_mismatch` when it binds, never a misread value.

#![warn(missing_docs)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub mod abort;
pub mod catalog;
pub mod cluster;
pub mod compaction;
pub mod concurrency;
pub mod heartbeat;
pub mod http;
pub mod mcp;
pub mod plugins;
pub mod prompt;
pub mod provider;
pub mod queue;
pub mod reconcile;
pub mod secrets;
pub mod session;
pub mod store;
pub mod surface;
pub mod todo;
pub mod tool;
pub mod trace;
pub mod vision;
pub mod websocket;
pub mod wire;
pub mod workspace;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Starts a background task (a host passes its runtime's `spawn`).
pub type Spawner = Arc<dyn Fn(BoxFuture<()>) + Send + Sync>;

/// A bus call that failed: a stable code (`not_found`, `version_mismatch`,
/// `invalid_payload`, `panic`, `unavailable`, `plugin`, …) and a message
/// for people. What code that talks to the bus without `dispatch-abi` (the
/// kernel) sees of a failed call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code})")]
pub struct CallError {
    /// The stable code; match on this, never on the message.
    pub code: String,
    /// What went wrong.
    pub message: String,
}

impl CallError {
    /// A call error with a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        CallError { code: code.into(), message: message.into() }
    }
}
