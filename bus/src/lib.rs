//! # dispatch-bus — where plugins meet
//!
//! * the bus itself (this crate's root): who provides which service at which
//!   schema version, event fan-out with one queue per subscriber, ordered
//!   hook chains — pure routing, generic over the service handler, with
//!   event pumps started through an injected [`Spawner`];
//! * [`hostapi`]: the [`dispatch_abi::ffi::HostApi`] each plugin receives,
//!   attributing everything it registers to its id.
//!
//! Two hosts use both: the `dispatch` binary (plugins from `.so` files) and
//! `dispatch-testkit` (plugins from their `rlib`, in a test). Keeping the
//! bus and its plugin-facing adapter together is what lets a plugin's unit
//! tests exercise exactly the bus the product runs.

#![warn(missing_docs)]

pub mod hostapi;
mod routing;

pub use routing::*;

#[cfg(test)]
mod bus_tests;
