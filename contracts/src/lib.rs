//! # dispatch-contracts — the bundled plugins' bus contracts, typed
//!
//! Every service and event the bundled plugins (and the host itself) offer
//! on the bus, as typed keys ([`dispatch_abi::Service`],
//! [`dispatch_abi::Event`]) next to their request and response types, plus
//! the helpers that serve the two pull protocols:
//!
//! | module | key(s) | owner |
//! |---|---|---|
//! | [`catalog`] | `models` | the `models` plugin |
//! | [`provider`] | `provider.<name>` ([`provider::key`]), [`provider::serve`] | each provider plugin |
//! | [`tool`] | `tool.<name>` ([`tool::key`]), [`tool::serve`], [`tool::ToolServer`]; `tools.changed` | each tool plugin |
//! | [`store`] | `store` | `store-sqlite` |
//! | [`surface`] | `surfaces`, `surfaces.changed`, `surfaces.action` | `surfaces` |
//! | [`plugins`] | `dispatch.plugins`, `dispatch.plugin-state` | the host |
//! | [`todo`](mod@todo) | `todo`, `todo.changed` | `tool-todo` |
//! | [`session`] | `session`, `session.event`, `session.status`, `session.open`; hooks `session.tools`, `session.tool-result`, `session.system-prompt` | `session` |
//! | [`queue`] | `message-queue`, `message-queue.changed` | `message-queue` |
//! | [`prompt`] | `system-prompt` | `system-prompt` |
//! | [`websocket`] | `websocket` | `transport-ws` |
//! | [`mcp`] | `mcp.servers` (and `tool.<server>__<tool>` for each bridged tool) | `mcp` |
//! | [`http`] | `http:<METHOD> <path>` per route ([`http::Route`]), answered by `transport-http` | any plugin |
//!
//! [`openapi`] builds each route's OpenAPI operation from the types it
//! reads and answers, and assembles the server's document.
//!
//! The payload types themselves live in `dispatch-protocol` (re-exported
//! here as [`protocol`] and per module), which has no `abi_stable` in it, so
//! clients and the kernel use the very same definitions. The rules for
//! changing a contract are written down there (`dispatch_protocol`'s
//! "Evolving a contract").
//!
//! Feature `runtime` (off by default) enables [`tool::serve`] and
//! [`provider::serve`], which run calls on the plugin's own tokio runtime;
//! a plugin that only calls services does not need it.
//!
//! Why a crate apart from `dispatch-abi`: the host refuses a plugin built
//! against another minor version of `dispatch-abi` (its binary interface),
//! while contracts grow all the time. Keeping them here means a new field
//! in a store answer never forces every plugin to be rebuilt.

#![warn(missing_docs, missing_debug_implementations)]

pub use dispatch_protocol as protocol;

// Names the shared library so rustc links from it (see the `shared-rt` feature).
#[cfg(feature = "shared-rt")]
use dispatch_rt as _;

pub mod catalog;
pub mod cluster;
pub mod compaction;
pub mod concurrency;
#[cfg(feature = "remote")]
pub mod gate;
pub mod http;
pub mod mcp;
pub mod openapi;
pub mod plugins;
pub mod prompt;
pub mod provider;
pub mod pull;
pub mod queue;
#[cfg(feature = "remote")]
pub mod remote;
pub mod session;
pub mod store;
pub mod surface;
pub mod todo;
pub mod tool;
pub mod vision;
pub mod websocket;
pub mod workspace;
