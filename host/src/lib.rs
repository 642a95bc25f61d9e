//! # dispatch-host — the `dispatch` binary's library
//!
//! Reads `plugins.toml` ([`config`]), loads plugin libraries ([`loader`]),
//! activates them in dependency order and shuts them down in reverse
//! ([`supervisor`]), giving each plugin its handle on the shared bus
//! (`dispatch_bus::hostapi`). The binary (`src/main.rs`) adds the command line;
//! [`client`] is its other half, the client of a running server.

#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod environ;
pub mod loader;
pub mod logging;
pub mod report;
pub mod scaffold;
pub mod signals;
pub mod supervisor;
pub mod turn;
