//! End-to-end tests: the real `dispatch` binary loading real plugin `.so`
//! files, driven as an operator or a client would.
//!
//! The plugin libraries must be built first — `cargo test` does not build
//! cdylibs. The README's test command (`scripts/test`) does both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod async_io;
mod bus;
mod cli;
mod compaction;
mod concurrency;
mod external;
mod heartbeat;
mod http;
mod lifecycle;
mod loading;
mod lsp;
mod mcp;
mod metrics;
mod openapi;
mod otel;
mod postgres;
mod providers;
mod reload;
mod service;
mod skills;
mod store;
mod support;
mod tools;
mod traces;
mod vision;
mod warming;
mod workspaces;
mod ws;
