//! # traces — what happened in each turn, kept and queryable
//!
//! The session publishes every turn's facts on `session.trace` (what the
//! turn offered the model, each provider request, each tool call, its
//! end); this plugin keeps them in the store — whichever store is loaded,
//! through the store contract — and answers:
//!
//! | route | does |
//! |---|---|
//! | `GET /conversations/:id/traces?turnId=&cursor=&limit=` | a page of the conversation's traces, oldest first (`limit` ≤ 200) |
//! | `GET /conversations/:id/turns/:turnId/context` | the system prompt and tools the turn offered the model |
//! | `GET /metrics/throughput?period=&date=` | output tokens per second of generation, by model, over a day, week or month (WIRE.md "Throughput") |
//!
//! It also shows each conversation's last turn on a surface (`traces`): a
//! `stat` per figure and a `table` of its requests and tool calls, which
//! the frontend renders as it renders any surface.
//!
//! Writes are batched by one task, in the order the events came, so a
//! conversation's traces get increasing ids; a burst costs one store
//! transaction, not one per fact.

pub mod period;
mod routes;
mod surface;

use std::time::Duration;

use dispatch_abi::runtime::PluginRuntime;
use dispatch_abi::{Context, Error, Host, Plugin, PluginManifest};
use dispatch_contracts::http;
use dispatch_contracts::protocol::trace::TraceEvent;
use dispatch_contracts::session::TRACE;
use dispatch_contracts::store::{StoreRequest, STORE};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

/// The most facts waiting for the store; past it new ones are dropped (and
/// counted in the log) rather than memory growing without bound while the
/// store is down.
const QUEUE: usize = 16_384;
/// The most facts one store write carries.
const BATCH: usize = 512;

/// The plugin.
pub struct Traces {
    runtime: Option<PluginRuntime>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces").finish_non_exhaustive()
    }
}

/// Keeps facts, a batch at a time, until told to stop; then writes what
/// is still queued and returns.
async fn writer(
    host: Host,
    mut rx: mpsc::Receiver<TraceEvent>,
    mut stop: watch::Receiver<bool>,
    surface: Option<surface::Surface>,
) {
    let mut surface = surface;
    loop {
        let first = tokio::select! {
            next = rx.recv() => next,
            _ = stop.changed() => None,
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(t) => batch.push(t),
                Err(_) => break,
            }
        }
        write(&host, &mut batch, surface.as_mut()).await;
    }
    // Stopping: what already came is kept.
    let mut rest = Vec::new();
    while let Ok(t) = rx.try_recv() {
        rest.push(t);
    }
    if !rest.is_empty() {
        write(&host, &mut rest, None).await;
    }
}

async fn write(host: &Host, batch: &mut Vec<TraceEvent>, surface: Option<&mut surface::Surface>) {
    if let Some(s) = surface {
        s.see(host, batch).await;
    }
    let traces: Vec<TraceEvent> = batch.drain(..).filter(TraceEvent::is_kept).collect();
    if traces.is_empty() {
        return;
    }
    let n = traces.len();
    if let Err(e) = host.call(&STORE, &StoreRequest::AppendTraces { traces }).await {
        tracing::warn!(error = %e, traces = n, "cannot keep turn traces; they are lost");
    }
}

impl Plugin for Traces {
    fn manifest() -> PluginManifest {
        http::declare_routes(
            PluginManifest::new("traces", env!("CARGO_PKG_VERSION"))
                .description("Turn traces kept in the store, their routes, throughput and a surface")
                .depends_on("session")
                .provides("surface", surface::SURFACE_ID),
        )
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let host = ctx.host().clone();
        let runtime = PluginRuntime::new("traces", 1)?;
        let (tx, rx) = mpsc::channel::<TraceEvent>(QUEUE);
        let (stop, stopped) = watch::channel(false);
        let dropped = std::sync::atomic::AtomicU64::new(0);
        host.subscribe_sync(&TRACE, move |event: TraceEvent| {
            if tx.try_send(event).is_err() {
                let n = dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(dropped = n, "the store is behind; turn traces are being dropped");
                }
            }
            Ok(())
        })?;
        let surface = surface::Surface::register(&host);
        runtime.runner().spawn(writer(host.clone(), rx, stopped, surface));
        http::serve_all(&host, routes::routes(&host, &runtime.runner()))?;
        Ok(Traces { runtime: Some(runtime), stop })
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        if let Some(mut r) = self.runtime.take() {
            r.shutdown(Duration::from_secs(5));
        }
        Ok(())
    }
}

/// Decode a store answer.
fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| format!("the store answered something unexpected: {e}"))
}

dispatch_abi::export_plugin!(Traces);
