//! # dispatch-kernel — Dispatch's pure core
//!
//! Logic with no I/O, no `abi_stable`, no particular async runtime:
//!
//! * [`turn`] — one agent turn ([`turn::run_turn`]) against the
//!   [`provider::Provider`] and [`tool::Tool`] contracts, with injected
//!   [`runtime::Clock`], [`runtime::Sleep`] and [`runtime::AbortSignal`];
//! * [`reconcile`] — repairing dangling tool calls in history;
//! * [`wire`] — the client-facing JSON types (chunks, events, metrics);
//! * [`bus`] — the service/event/hook bus that connects plugins;
//! * [`graph`] — the plugin dependency graph;
//! * [`surface`] — surface types shared by first-party plugins.
//!
//! Everything here is unit-tested with fakes in microseconds.

#![warn(missing_docs)]

pub mod bus;
pub mod graph;
pub mod provider;
pub mod reconcile;
pub mod remote;
pub mod runtime;
pub mod store;
pub mod surface;
pub mod tool;
pub mod toolbus;
pub mod turn;
pub mod wire;

#[cfg(test)]
mod bus_tests;
