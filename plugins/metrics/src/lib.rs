//! # metrics — Prometheus metrics at `GET /metrics`
//!
//! Counted from the bus, never threaded through the session: the turn
//! facts of `session.trace`, the message queue's changes, the WebSocket
//! transport's connection count, the host's plugin states and reloads.
//! Served on the HTTP transport's port behind its token rule (a scraper
//! sends `Authorization: Bearer <token>` when one is set), in the
//! OpenMetrics text format Prometheus reads.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `dispatch_turns_started_total` | counter | `model` |
//! | `dispatch_turns_ended_total` | counter | `model`, `reason` |
//! | `dispatch_turns_active` | gauge | — |
//! | `dispatch_steps_total` | counter | `model` |
//! | `dispatch_tokens_total` | counter | `model`, `kind` (`input`, `output`, `cache_read`, `cache_write`, `reasoning`) |
//! | `dispatch_provider_request_duration_seconds` | histogram | `model`, `outcome` |
//! | `dispatch_provider_ttft_seconds` | histogram | `model` |
//! | `dispatch_provider_retries_total` | counter | `model`, `cause` (the status, or `other`) |
//! | `dispatch_provider_errors_total` | counter | `model`, `status` |
//! | `dispatch_tool_call_duration_seconds` | histogram | `tool`, `outcome` |
//! | `dispatch_queued_messages` | gauge | — |
//! | `dispatch_websocket_connections` | gauge | — |
//! | `dispatch_plugin_state` | gauge (1) | `plugin`, `state` |
//! | `dispatch_plugin_reloads_total` | counter | `result` (`ok`, `failed`) |
//! | `dispatch_store_append_duration_seconds` | histogram | `outcome` |
//!
//! Label values are bounded: no conversation or turn ids; models, tools and
//! status codes past the first [`MAX_VALUES`] distinct values count as
//! `other`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use dispatch_abi::runtime::PluginRuntime;
use dispatch_abi::{Context, Error, Host, Plugin, PluginManifest};
use dispatch_contracts::http::{self, HttpMethod, HttpResponse, Problem, Route};
use dispatch_contracts::openapi::Operation;
use dispatch_contracts::plugins::{PluginList, ReloadReport, PLUGINS, RELOADED};
use dispatch_contracts::protocol::trace::{RequestOutcome, TraceBatch, TraceBody, TraceEvent};
use dispatch_contracts::protocol::wire::Usage;
use dispatch_contracts::queue::QueueState;
use dispatch_contracts::session::TRACE;
use dispatch_contracts::websocket::{Connections, CONNECTIONS};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::json;

/// The most distinct values a `model` or `tool` label takes; the rest are
/// `other`, so a misbehaving client cannot grow the series without bound.
pub const MAX_VALUES: usize = 256;

/// The most turns counted as running at once.
const MAX_ACTIVE: usize = 100_000;

/// What `GET /metrics` answers as its content type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    model: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    model: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    model: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    model: String,
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    model: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabels {
    tool: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppendLabel {
    outcome: &'static str,
}

/// Seconds, from a few ms (a tool reading a file) to minutes (a long
/// generation or a command).
fn latency() -> Histogram {
    Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0])
}

/// Seconds for a store write: sub-millisecond to a second.
fn store_latency() -> Histogram {
    Histogram::new([0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0])
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The first [`MAX_VALUES`] distinct names, then `other`.
#[derive(Default)]
struct Bounded(Mutex<HashSet<String>>);

impl Bounded {
    fn label(&self, name: &str) -> String {
        let mut seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(name) {
            return name.to_owned();
        }
        if seen.len() < MAX_VALUES {
            seen.insert(name.to_owned());
            return name.to_owned();
        }
        "other".to_owned()
    }
}

/// Every metric, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    turns_started: Family<ModelLabel, Counter>,
    turns_ended: Family<ReasonLabels, Counter>,
    turns_active: Gauge,
    steps: Family<ModelLabel, Counter>,
    tokens: Family<TokenLabels, Counter>,
    request_duration: Histograms<OutcomeLabels>,
    ttft: Histograms<ModelLabel>,
    retries: Family<CauseLabels, Counter>,
    provider_errors: Family<StatusLabels, Counter>,
    tool_duration: Histograms<ToolLabels>,
    queued: Gauge,
    queues: Mutex<HashMap<String, i64>>,
    websockets: Gauge,
    plugin_state: Family<PluginLabels, Gauge>,
    reloads: Family<ResultLabel, Counter>,
    store_append: Histograms<AppendLabel>,
    models: Bounded,
    tools: Bounded,
    /// Providers' status codes (`cause`, `status` labels).
    statuses: Bounded,
    /// The turns running now (conversation, turn): their count is
    /// `turns_active`, which cannot drift when a turn's end never comes
    /// (its host plugin reloaded mid-turn) or the plugin starts mid-turn.
    active: Mutex<HashSet<(String, String)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("dispatch");
        let m = Metrics {
            turns_started: Family::default(),
            turns_ended: Family::default(),
            turns_active: Gauge::default(),
            steps: Family::default(),
            tokens: Family::default(),
            request_duration: Family::new_with_constructor(latency),
            ttft: Family::new_with_constructor(latency),
            retries: Family::default(),
            provider_errors: Family::default(),
            tool_duration: Family::new_with_constructor(latency),
            queued: Gauge::default(),
            queues: Mutex::default(),
            websockets: Gauge::default(),
            plugin_state: Family::default(),
            reloads: Family::default(),
            store_append: Family::new_with_constructor(store_latency),
            models: Bounded::default(),
            tools: Bounded::default(),
            statuses: Bounded::default(),
            active: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register("turns_started", "Turns started", m.turns_started.clone());
        registry.register("turns_ended", "Turns ended, by why", m.turns_ended.clone());
        registry.register("turns_active", "Turns running now", m.turns_active.clone());
        registry.register("steps", "Model steps of ended turns", m.steps.clone());
        registry.register("tokens", "Tokens the provider counted, by kind", m.tokens.clone());
        registry.register(
            "provider_request_duration_seconds",
            "Provider requests (each attempt), start to end of stream",
            m.request_duration.clone(),
        );
        registry.register("provider_ttft_seconds", "Provider requests' time to first token", m.ttft.clone());
        registry.register("provider_retries", "Provider requests retried, by cause", m.retries.clone());
        registry.register(
            "provider_errors",
            "Provider requests failed for good, by status",
            m.provider_errors.clone(),
        );
        registry.register(
            "tool_call_duration_seconds",
            "Tool calls, by tool and outcome",
            m.tool_duration.clone(),
        );
        registry.register("queued_messages", "Messages waiting in conversations' queues", m.queued.clone());
        registry.register("websocket_connections", "Open WebSocket connections", m.websockets.clone());
        registry.register("plugin_state", "1 for each plugin's current state", m.plugin_state.clone());
        registry.register("plugin_reloads", "Reloads of the plugin set, by result", m.reloads.clone());
        registry.register(
            "store_append_duration_seconds",
            "Writes of a step's messages to the store",
            m.store_append.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Count one turn fact.
    pub fn see(&self, t: &TraceEvent) {
        let seconds = t.duration_ms() as f64 / 1000.0;
        match &t.body {
            TraceBody::Context { model, .. } => {
                self.turns_started.get_or_create(&ModelLabel { model: self.models.label(model) }).inc();
                self.set_active(t, true);
            }
            TraceBody::Request { model, outcome, ttft_ms, usage, status, .. } => {
                let model = self.models.label(model);
                let outcome_name = outcome.as_str();
                self.request_duration
                    .get_or_create(&OutcomeLabels { model: model.clone(), outcome: outcome_name })
                    .observe(seconds);
                if let Some(ms) = ttft_ms {
                    self.ttft
                        .get_or_create(&ModelLabel { model: model.clone() })
                        .observe(*ms as f64 / 1000.0);
                }
                if let Some(u) = usage {
                    self.count_tokens(&model, u);
                }
                let status = status.as_deref().map_or_else(|| "other".to_owned(), |s| self.statuses.label(s));
                match outcome {
                    RequestOutcome::Retry => {
                        self.retries.get_or_create(&CauseLabels { model, cause: status }).inc();
                    }
                    RequestOutcome::Error => {
                        self.provider_errors.get_or_create(&StatusLabels { model, status }).inc();
                    }
                    _ => {}
                }
            }
            TraceBody::Tool { tool_name, outcome, .. } => {
                self.tool_duration
                    .get_or_create(&ToolLabels {
                        tool: self.tools.label(tool_name),
                        outcome: outcome.as_str(),
                    })
                    .observe(seconds);
            }
            TraceBody::Turn { model, reason, steps, .. } => {
                let model = self.models.label(model);
                self.turns_ended
                    .get_or_create(&ReasonLabels { model: model.clone(), reason: reason.as_str().to_owned() })
                    .inc();
                self.steps.get_or_create(&ModelLabel { model }).inc_by(u64::from(*steps));
                self.set_active(t, false);
            }
            TraceBody::Append { ok, .. } => {
                let outcome = if *ok { "ok" } else { "error" };
                self.store_append.get_or_create(&AppendLabel { outcome }).observe(seconds);
            }
            _ => {}
        }
    }

    /// A turn started or ended. Past [`MAX_ACTIVE`] running turns (ends
    /// that never came) the set starts over rather than grow.
    fn set_active(&self, t: &TraceEvent, on: bool) {
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (t.conversation_id.clone(), t.turn_id.clone());
        if on {
            if active.len() >= MAX_ACTIVE {
                active.clear();
            }
            active.insert(key);
        } else {
            active.remove(&key);
        }
        self.turns_active.set(i64::try_from(active.len()).unwrap_or(i64::MAX));
    }

    fn count_tokens(&self, model: &str, u: &Usage) {
        let kinds = [
            ("input", Some(u.input_tokens)),
            ("output", Some(u.output_tokens)),
            ("cache_read", u.cache_read_tokens),
            ("cache_write", u.cache_write_tokens),
            ("reasoning", u.reasoning_tokens),
        ];
        for (kind, n) in kinds {
            if let Some(n) = n {
                self.tokens.get_or_create(&TokenLabels { model: model.to_owned(), kind }).inc_by(n);
            }
        }
    }

    /// A conversation's queue changed.
    pub fn queue(&self, state: &QueueState) {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let n = i64::try_from(state.messages.len()).unwrap_or(i64::MAX);
        if n == 0 {
            queues.remove(&state.conversation_id);
        } else {
            queues.insert(state.conversation_id.clone(), n);
        }
        self.queued.set(queues.values().sum());
    }

    /// The WebSocket transport's count.
    pub fn websockets(&self, c: Connections) {
        self.websockets.set(i64::try_from(c.open).unwrap_or(i64::MAX));
    }

    /// A reload finished.
    pub fn reloaded(&self, report: &ReloadReport) {
        let result = if report.failed.is_empty() { "ok" } else { "failed" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// The plugins' states now (read at each scrape: never stale).
    pub fn plugins(&self, list: &PluginList) {
        self.plugin_state.clear();
        for p in &list.plugins {
            self.plugin_state
                .get_or_create(&PluginLabels { plugin: p.id.clone(), state: p.state.as_str().to_owned() })
                .set(1);
        }
    }

    /// The exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The plugin.
pub struct MetricsPlugin {
    runtime: Option<PluginRuntime>,
}

impl std::fmt::Debug for MetricsPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsPlugin").finish_non_exhaustive()
    }
}

async fn scrape(host: Host, metrics: Arc<Metrics>) -> Result<HttpResponse, Problem> {
    if let Ok(list) = host.call(&PLUGINS, &json!({})).await {
        metrics.plugins(&list);
    }
    let text = metrics
        .encode()
        .map_err(|e| Problem::new(500, "internal", format!("cannot encode the metrics: {e}")))?;
    Ok(HttpResponse::text(200, CONTENT_TYPE, text))
}

impl Plugin for MetricsPlugin {
    fn manifest() -> PluginManifest {
        http::declare_routes(
            PluginManifest::new("metrics", env!("CARGO_PKG_VERSION"))
                .description("Prometheus metrics at GET /metrics, counted from the bus"),
        )
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let host = ctx.host().clone();
        let metrics = Arc::new(Metrics::new());
        let m = Arc::clone(&metrics);
        host.subscribe_sync(&TRACE, move |batch: TraceBatch| {
            batch.facts.iter().for_each(|t| m.see(t));
            Ok(())
        })?;
        let m = Arc::clone(&metrics);
        host.subscribe_sync(&dispatch_contracts::queue::CHANGED, move |state: QueueState| {
            m.queue(&state);
            Ok(())
        })?;
        let m = Arc::clone(&metrics);
        host.subscribe_sync(&CONNECTIONS, move |c: Connections| {
            m.websockets(c);
            Ok(())
        })?;
        let m = Arc::clone(&metrics);
        host.subscribe_sync(&RELOADED, move |r: ReloadReport| {
            m.reloaded(&r);
            Ok(())
        })?;
        let runtime = PluginRuntime::new("metrics", 1)?;
        let h = host.clone();
        let route = Route::on_runtime(&runtime.runner(), HttpMethod::Get, "/metrics", move |_req| {
            scrape(h.clone(), Arc::clone(&metrics))
        })
        .operation(
            Operation::new("Prometheus metrics")
                .id("getMetrics")
                .tag("metrics")
                .description(
                    "Turns, steps, tokens, provider latency and errors, tool calls, queues, WebSockets, plugin \
                     states, reloads and store latency, in the OpenMetrics text format. Behind the same token \
                     rule as every route.",
                )
                .returns_text(200, CONTENT_TYPE, "The exposition"),
        );
        http::serve_all(&host, vec![route])?;
        Ok(MetricsPlugin { runtime: Some(runtime) })
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        if let Some(mut r) = self.runtime.take() {
            r.shutdown(std::time::Duration::from_secs(5));
        }
        Ok(())
    }
}

dispatch_abi::export_plugin!(MetricsPlugin);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use dispatch_contracts::protocol::trace::ToolOutcome;
    use dispatch_contracts::protocol::wire::FinishReason;

    fn fact(start: u64, end: u64, body: TraceBody) -> TraceEvent {
        TraceEvent {
            conversation_id: "secret-conversation".into(),
            turn_id: "t".into(),
            step_id: None,
            started_at: start,
            ended_at: end,
            body,
        }
    }

    #[test]
    fn a_turns_facts_become_counters_and_histograms_without_ids() {
        let m = Metrics::new();
        m.see(&fact(0, 0, TraceBody::Context { model: "x/m".into(), system_prompt: None, tools: vec![] }));
        m.see(&fact(
            0,
            1500,
            TraceBody::Request {
                model: "x/m".into(),
                attempt: 0,
                outcome: RequestOutcome::Retry,
                ttft_ms: None,
                decode_ms: None,
                usage: None,
                finish: None,
                status: Some("429".into()),
                error: Some("slow down".into()),
                retry_delay_ms: Some(1000),
            },
        ));
        m.see(&fact(
            0,
            2000,
            TraceBody::Request {
                model: "x/m".into(),
                attempt: 1,
                outcome: RequestOutcome::Ok,
                ttft_ms: Some(300),
                decode_ms: Some(1700),
                usage: Some(Usage {
                    input_tokens: 100,
                    output_tokens: 20,
                    cache_read_tokens: Some(80),
                    ..Usage::default()
                }),
                finish: None,
                status: None,
                error: None,
                retry_delay_ms: None,
            },
        ));
        m.see(&fact(
            0,
            35,
            TraceBody::Tool {
                tool_call_id: "k".into(),
                tool_name: "run_shell".into(),
                plugin: None,
                input: json!({}),
                input_bytes: 2,
                output: String::new(),
                output_bytes: 0,
                outcome: ToolOutcome::Timeout,
                step_usage: None,
            },
        ));
        m.see(&fact(
            0,
            2100,
            TraceBody::Turn {
                model: "x/m".into(),
                reason: FinishReason::Stop,
                usage: None,
                cache_hit_rate: None,
                steps: 2,
                tool_calls: 1,
                gen_ms: 2000,
                context_size: None,
            },
        ));
        let text = m.encode().unwrap();
        for line in [
            "dispatch_turns_started_total{model=\"x/m\"} 1",
            "dispatch_turns_ended_total{model=\"x/m\",reason=\"stop\"} 1",
            "dispatch_turns_active 0",
            "dispatch_steps_total{model=\"x/m\"} 2",
            "dispatch_tokens_total{model=\"x/m\",kind=\"cache_read\"} 80",
            "dispatch_provider_retries_total{model=\"x/m\",cause=\"429\"} 1",
            "dispatch_provider_request_duration_seconds_count{model=\"x/m\",outcome=\"ok\"} 1",
            "dispatch_provider_ttft_seconds_sum{model=\"x/m\"} 0.3",
            "dispatch_tool_call_duration_seconds_count{tool=\"run_shell\",outcome=\"timeout\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("secret-conversation"), "no ids as labels");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn label_values_are_bounded() {
        let m = Metrics::new();
        for i in 0..MAX_VALUES + 10 {
            m.see(&fact(
                0,
                0,
                TraceBody::Context { model: format!("m{i}"), system_prompt: None, tools: vec![] },
            ));
        }
        let text = m.encode().unwrap();
        let series = text.lines().filter(|l| l.starts_with("dispatch_turns_started_total{")).count();
        assert_eq!(series, MAX_VALUES + 1, "the first {MAX_VALUES} and `other`");
        assert!(text.contains("dispatch_turns_started_total{model=\"other\"} 10"));
    }

    #[test]
    fn queues_sum_across_conversations_and_forget_empty_ones() {
        let m = Metrics::new();
        let state = |c: &str, n: usize| -> QueueState {
            serde_json::from_value(json!({"conversationId": c, "messages": (0..n).map(|i| json!({"id": format!("{i}"), "text": "x", "queuedAt": 0})).collect::<Vec<_>>()})).unwrap()
        };
        m.queue(&state("a", 2));
        m.queue(&state("b", 3));
        m.queue(&state("a", 0));
        assert!(m.encode().unwrap().lines().any(|l| l == "dispatch_queued_messages 3"));
    }
}
