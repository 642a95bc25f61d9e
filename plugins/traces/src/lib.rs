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
//! conversation's traces get increasing ids: facts wait up to 200 ms for
//! more (a turn's end is written at once), so a turn of many steps costs a
//! store transaction every 200 ms, not one per step.

pub mod period;
mod routes;
mod surface;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dispatch_abi::runtime::PluginRuntime;
use dispatch_abi::{Context, Error, Host, Plugin, PluginManifest};
use dispatch_contracts::http;
use dispatch_contracts::protocol::trace::{TraceBatch, TraceEvent};
use dispatch_contracts::session::TRACE;
use dispatch_contracts::store::{StoreRequest, STORE};
use serde_json::Value;
use tokio::sync::{watch, Notify};

/// The most facts waiting for the store; past it new ones are dropped (and
/// counted in the log) rather than memory growing without bound while the
/// store is down.
const QUEUE: usize = 16_384;
/// The most facts one store write carries.
const BATCH: usize = 512;
/// How long facts wait for more before they are written, unless a turn
/// ends first: a step's facts then share a transaction with the next
/// steps' instead of costing one each (BENCHMARKS.md, "Observability").
const LINGER: Duration = Duration::from_millis(200);

/// The plugin.
pub struct Traces {
    runtime: Option<PluginRuntime>,
    stop: watch::Sender<bool>,
    /// Told when the writer has written what was waiting, on stop.
    written: std::sync::mpsc::Receiver<()>,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces").finish_non_exhaustive()
    }
}

/// Facts waiting for the writer. The subscriber wakes the writer only
/// when the inbox was empty or a turn ended, so a busy turn costs one
/// wake-up per linger, not one per step.
#[derive(Default)]
struct Inbox {
    facts: Mutex<Vec<TraceEvent>>,
    wake: Notify,
    dropped: AtomicU64,
}

impl Inbox {
    fn take_in(&self, batch: TraceBatch) {
        let ends = ends_turn(&batch.facts);
        let was_empty = {
            let mut facts = self.facts.lock().unwrap_or_else(PoisonError::into_inner);
            let was_empty = facts.is_empty();
            if facts.len() + batch.facts.len() > QUEUE {
                let n = batch.facts.len() as u64;
                let before = self.dropped.fetch_add(n, Ordering::Relaxed);
                // Logged when the count passes a power of two.
                if (before + n).checked_ilog2() != before.checked_ilog2() {
                    tracing::warn!(
                        dropped = before + n,
                        "the store is behind; turn traces are being dropped"
                    );
                }
                return;
            }
            facts.extend(batch.facts);
            was_empty
        };
        if was_empty || ends {
            self.wake.notify_one();
        }
    }

    fn take(&self) -> Vec<TraceEvent> {
        std::mem::take(&mut *self.facts.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn has_turn_end(&self) -> bool {
        self.facts.lock().unwrap_or_else(PoisonError::into_inner).iter().any(|t| t.kind() == "turn")
    }
}

/// Keeps facts, a batch at a time, until told to stop; then writes what
/// is still waiting and returns.
async fn writer(
    host: Host,
    inbox: Arc<Inbox>,
    mut stop: watch::Receiver<bool>,
    surface: Option<surface::Surface>,
    done: std::sync::mpsc::Sender<()>,
) {
    let mut surface = surface;
    loop {
        tokio::select! {
            () = inbox.wake.notified() => {}
            _ = stop.changed() => break,
        }
        // More of the turn is coming: let it gather (a turn's end cuts the
        // wait short).
        if !inbox.has_turn_end() {
            tokio::select! {
                () = tokio::time::sleep(LINGER) => {}
                () = inbox.wake.notified() => {}
                _ = stop.changed() => {}
            }
        }
        if *stop.borrow() {
            break;
        }
        let mut facts = inbox.take();
        while !facts.is_empty() {
            let rest = facts.split_off(facts.len().min(BATCH));
            write(&host, &mut facts, surface.as_mut()).await;
            facts = rest;
        }
    }
    // Stopping: what already came is kept (`deactivate` waits for this).
    let mut rest = inbox.take();
    while !rest.is_empty() {
        let more = rest.split_off(rest.len().min(BATCH));
        write(&host, &mut rest, None).await;
        rest = more;
    }
    let _ = done.send(());
}

/// Whether the batch's last fact ends a turn (then it is written at once:
/// a client reading a turn's traces after it sealed finds them).
fn ends_turn(batch: &[TraceEvent]) -> bool {
    batch.last().is_some_and(|t| t.kind() == "turn")
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
        let inbox = Arc::new(Inbox::default());
        let (stop, stopped) = watch::channel(false);
        let sink = Arc::clone(&inbox);
        host.subscribe_sync(&TRACE, move |batch: TraceBatch| {
            sink.take_in(batch);
            Ok(())
        })?;
        let surface = surface::Surface::register(&host);
        let (done, written) = std::sync::mpsc::channel();
        runtime.runner().spawn(writer(host.clone(), inbox, stopped, surface, done));
        http::serve_all(&host, routes::routes(&host, &runtime.runner()))?;
        Ok(Traces { runtime: Some(runtime), stop, written })
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        // The writer keeps what is waiting before the runtime stops (the
        // store outlives this plugin: session, then store, deactivate after).
        if self.written.recv_timeout(Duration::from_secs(5)).is_err() {
            tracing::warn!("the last turn traces could not be written before stopping");
        }
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
