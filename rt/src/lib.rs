//! # dispatch-rt — the Rust libraries the host and the bundled plugins share
//!
//! Every plugin is its own `.so`. Built the ordinary way, each one carries a
//! private copy of std, tokio, serde, serde_json, futures and abi_stable, and
//! a running server keeps every copy's start-up code resident: with the
//! seventeen bundled plugins, that per-library floor was most of the idle
//! memory (BENCHMARKS.md, "Idle memory, fourth pass").
//!
//! This crate is a Rust `dylib` that holds one copy of those libraries for the
//! whole process. The workspace builds with `-C prefer-dynamic`
//! (`.cargo/config.toml`), so std is linked from the toolchain's
//! `libstd-<hash>.so`, and `dispatch-contracts` names this crate when its
//! `shared-rt` feature is on (the workspace turns it on for the host and every
//! bundled plugin), so rustc links tokio and the rest from
//! `libdispatch_rt.so` instead of copying them into each library. Every crate
//! this library holds is pinned in `Cargo.toml` with one feature set
//! (`scripts/rt-features`): cargo names a dylib without a hash, and a build
//! that resolved other features would overwrite it with an incompatible one.
//!
//! What it means for a plugin:
//!
//! - Nothing in the ABI changes. Third-party plugins built against
//!   `dispatch-abi` alone keep their own static copies and load as before.
//! - A bundled plugin only loads into a host built by the same toolchain
//!   from the same lock file: a mismatch fails at `dlopen` with an undefined
//!   symbol (Rust symbol names carry a hash of each crate's version, features
//!   and compiler), never at run time.
//! - std's process-wide state is shared: one panic hook chain (see
//!   `dispatch_abi`'s logging for how a panic is still attributed to its
//!   plugin), one tokio thread-local context (a plugin's code polled on
//!   another plugin's thread sees that thread's runtime).
//!
//! The re-exports are what makes rustc link each crate into this library;
//! plugins keep using the crates by their own names.

pub use abi_stable;
pub use async_ffi;
pub use bytes;
pub use futures;
pub use serde;
pub use serde_json;
pub use tokio;
