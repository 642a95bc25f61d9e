//! # dispatch-kernel — Dispatch's pure core
//!
//! Logic with no I/O, no `abi_stable`, no particular async runtime:
//!
//! * [`turn`] — one agent turn ([`turn::run_turn`]) against the
//!   [`provider::Provider`] and [`tool::Tool`] contracts, with injected
//!   [`runtime::Clock`], [`runtime::Sleep`] and [`runtime::AbortSignal`];
//! * [`reconcile`] — repairing dangling tool calls in history;
//! * [`wire`] — the client-facing JSON types (chunks, events, metrics),
//!   re-exported from `dispatch-protocol`, where every contract type lives;
//! * [`remote`], [`toolbus`] — the turn's side of the provider and tool
//!   protocols: kernel [`provider::Provider`]s and [`tool::Tool`]s that
//!   speak to plugins over any bus;
//! * [`graph`] — the plugin dependency graph.
//!
//! Everything here is unit-tested with fakes in microseconds.

#![warn(missing_docs)]

pub mod graph;
pub mod provider;
pub mod remote;
pub mod runtime;
pub mod tool;
pub mod toolbus;
pub mod turn;

pub use dispatch_protocol as protocol;
pub use dispatch_protocol::{reconcile, wire};
