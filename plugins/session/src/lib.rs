//! # session — the orchestrator
//!
//! Turns a user message into an agent turn that is persisted, observable
//! and stoppable. For each turn it resolves
//!
//! * the **model**: the request's, else the conversation's sticky one, else
//!   the catalog's default (`models` service);
//! * the **working directory**: the request's, else the conversation's,
//!   else the session's `default_cwd` (it must be a directory);
//! * the **reasoning effort**: the request's, else the conversation's;
//! * the **tools**: every `tool.*` service of an active plugin, then the
//!   `session.tools` filter hook (which may narrow or extend the list);
//! * the **system prompt**: the `session.system-prompt` filter hook (the
//!   `system-prompt` plugin renders the template there);
//! * the **history**: the store's, reconciled;
//!
//! and runs the kernel's turn loop against the provider and tools on the
//! bus. Problems known before the turn starts (unknown model, unusable
//! directory, a turn already running) are refused; nothing is half-started.
//!
//! # Persistence and events
//!
//! The user message is appended when the turn starts, each step's messages
//! when the step completes, the metrics after the turn; `turn-sealed` is
//! emitted only after all of it is written. A crash mid-turn loses at most
//! the step in flight; the next turn's history is reconciled (a dangling
//! tool call gets an error result).
//!
//! Every event goes into the turn's [`log::TurnLog`] (read by transports
//! with the `events` op — a late reader is replayed from the start) and is
//! published on `session.event`; status changes on `session.status`.
//!
//! # Queue, stop, shutdown
//!
//! One turn per conversation. Messages queued while it runs (the
//! `message-queue` plugin holds them) are drained at the next tool-result
//! boundary (`steering`); what is still queued when the turn ends starts
//! the next turn. `stop` and `close` abort the turn, which seals with
//! `reason: "aborted"`. When the host shuts down, running turns are aborted
//! and sealed before the session deactivates.

pub mod log;
mod offered;
mod routes;
mod turns;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dispatch_abi::runtime::PluginRuntime;
use dispatch_abi::{Context, Error, Host, Plugin, PluginManifest};
use dispatch_contracts::plugins::PLUGIN_STATE;
use dispatch_contracts::session::{SessionRequest, SESSION};
use serde::Deserialize;

pub use turns::Session;

/// `[plugin.config]` of the session.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The working directory of conversations that have none (default:
    /// `$DISPATCH_CWD`, else the host's current directory).
    #[serde(default)]
    pub default_cwd: Option<PathBuf>,
    /// Worker threads of the session's runtime (default 1: a turn is
    /// mostly hand-offs between plugins, and every extra worker adds
    /// thread wake-ups to each of them — see BENCHMARKS.md).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Most model steps per turn (0 = unlimited, the default).
    #[serde(default)]
    pub max_steps: u32,
    /// Most tool calls run at once when they may run in parallel (default 4).
    #[serde(default = "default_parallel")]
    pub max_parallel_tools: usize,
    /// Waits before each retry of a retryable provider error, in ms
    /// (default 1000, 2000, 4000, 8000, 16000).
    #[serde(default)]
    pub retry_delays_ms: Option<Vec<u64>>,
    /// How long shutdown waits for aborted turns to seal (default 5000 ms).
    #[serde(default = "default_drain_ms")]
    pub shutdown_drain_ms: u64,
}

fn default_workers() -> usize {
    1
}
fn default_parallel() -> usize {
    4
}
fn default_drain_ms() -> u64 {
    5000
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_cwd: None,
            workers: default_workers(),
            max_steps: 0,
            max_parallel_tools: default_parallel(),
            retry_delays_ms: None,
            shutdown_drain_ms: default_drain_ms(),
        }
    }
}

/// The plugin.
#[derive(Debug)]
pub struct SessionPlugin {
    session: Arc<Session>,
    runtime: PluginRuntime,
    drain: Duration,
}

impl Plugin for SessionPlugin {
    fn manifest() -> PluginManifest {
        dispatch_contracts::http::declare_routes(
            PluginManifest::new(dispatch_contracts::session::PLUGIN_ID, env!("CARGO_PKG_VERSION"))
                .description("Runs agent turns: resolves model, tools and prompt, persists, streams, queues")
                // The store must outlive the session: turns seal into it on
                // shutdown (deactivation runs in reverse activation order).
                .depends_on(dispatch_contracts::store::STORE.name())
                .depends_on("models")
                .provides("service", SESSION.name()),
        )
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let config: Config = ctx.config()?;
        let host: Host = ctx.host().clone();
        let default_cwd = match config.default_cwd.clone() {
            Some(d) => Some(d),
            None => {
                std::env::var_os("DISPATCH_CWD").map(PathBuf::from).or_else(|| std::env::current_dir().ok())
            }
        };
        let runtime = PluginRuntime::new("session", config.workers)?;
        let drain = Duration::from_millis(config.shutdown_drain_ms);
        let session = Session::new(host.clone(), runtime.runner(), config, default_cwd);

        // Conversations left `active` by a crash are idle now.
        match futures::executor::block_on(session.recover()) {
            Ok(0) => {}
            Ok(n) => tracing::info!(conversations = n, "marked conversations interrupted by a crash idle"),
            Err(e) => tracing::warn!(error = %e, "cannot check for conversations interrupted by a crash"),
        }
        let s = Arc::clone(&session);
        let key = dispatch_contracts::session::answering::<Box<serde_json::value::RawValue>>();
        host.provide(&key, move |request: SessionRequest| Arc::clone(&s).handle(request))?;
        // Its HTTP routes: `POST /chat` and the conversation routes.
        dispatch_contracts::http::serve_all(&host, routes::routes(Arc::clone(&session), host.clone()))?;
        // Tools come and go with their plugins: forget what we knew.
        let s = Arc::clone(&session);
        host.subscribe_sync(&PLUGIN_STATE, move |_| {
            s.forget_tools();
            Ok(())
        })?;
        // ... and a plugin whose tools change while it runs (MCP) says so.
        let s = Arc::clone(&session);
        host.subscribe_sync(&dispatch_contracts::tool::CHANGED, move |_| {
            s.forget_tools();
            Ok(())
        })?;
        // A compacted conversation's history restarted: what we hold of it
        // is stale.
        let s = Arc::clone(&session);
        host.subscribe_sync(&dispatch_contracts::compaction::COMPACTED, move |c| {
            s.forget_history(&c.conversation_id);
            Ok(())
        })?;
        // A stop or close another host forwarded for a turn running here.
        let s = Arc::clone(&session);
        host.subscribe_sync(&dispatch_contracts::cluster::FORWARDED, move |f| {
            s.forwarded(f);
            Ok(())
        })?;
        // The turns other hosts run, as their events arrive relayed.
        let s = Arc::clone(&session);
        host.subscribe_sync(&dispatch_contracts::cluster::REMOTE_EVENT, move |e| {
            s.remote_event(&e);
            Ok(())
        })?;
        let s = Arc::clone(&session);
        host.subscribe_sync(&dispatch_contracts::cluster::RELAYED_STATUS, move |c| {
            s.relayed_status(c);
            Ok(())
        })?;
        // On shutdown, stop the turns first so they seal while the store
        // and the tools are still there.
        let s = Arc::clone(&session);
        let signal = host.shutdown_signal();
        runtime.runner().spawn(async move {
            signal.await;
            s.begin_shutdown();
        });
        Ok(SessionPlugin { session, runtime, drain })
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        self.session.begin_shutdown();
        let session = Arc::clone(&self.session);
        let drain = self.drain;
        let sealed = self.runtime.handle().block_on(async move { session.wait_idle(drain).await });
        if !sealed {
            tracing::warn!(
                "some turns did not seal within {} ms of the shutdown; their last step may be lost",
                drain.as_millis()
            );
        }
        self.runtime.shutdown(Duration::from_secs(2));
        Ok(())
    }
}

dispatch_abi::export_plugin!(SessionPlugin);
