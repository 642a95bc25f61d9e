//! # dispatch-kernel — Dispatch's pure core
//!
//! Logic with no I/O, no `abi_stable`, no particular async runtime: the
//! [`bus`] that routes services, events and hooks between plugins, and the
//! dependency [`graph`] that orders plugin activation. The host adapts its
//! FFI objects to these types; everything here is unit-tested with fakes.

#![warn(missing_docs)]

pub mod bus;
pub mod graph;
pub mod surface;

#[cfg(test)]
mod bus_tests;
