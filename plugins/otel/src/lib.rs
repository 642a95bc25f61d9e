//! # otel — turns as OpenTelemetry traces, over OTLP
//!
//! Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and `OTEL_SDK_DISABLED`
//! is not `true`: then the plugin does not even subscribe, so it costs
//! nothing. On, each turn's facts (`session.trace`) become one trace when
//! the turn ends:
//!
//! ```text
//! invoke_agent dispatch            the turn
//! ├── step #0                      one model round-trip
//! │   ├── chat <model>             each provider request (each attempt)
//! │   └── execute_tool <tool>      each tool call
//! └── step #1 …
//! ```
//!
//! with the OpenTelemetry GenAI semantic conventions' attributes where they
//! exist (`gen_ai.operation.name`, `gen_ai.request.model`,
//! `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`,
//! `gen_ai.response.finish_reasons`, `gen_ai.tool.name`,
//! `gen_ai.tool.call.id`, `gen_ai.conversation.id`, `error.type`) and
//! `dispatch.*` ones for the rest. The facts carry their own times, so the
//! spans are built with them after the fact — which is why this uses the
//! `opentelemetry` API directly rather than `tracing-opentelemetry`, whose
//! spans time the code that runs them (here, the subscriber).
//!
//! Export is OTLP over HTTP with protobuf, configured by the standard
//! variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `…_HEADERS`, `…_TIMEOUT`,
//! `…_COMPRESSION`, `OTEL_SERVICE_NAME` — `dispatch` by default —,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*` for batching), by the SDK's
//! batch processor on a thread of its own; requests go out on this
//! plugin's runtime.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dispatch_abi::runtime::{PluginRuntime, Runner};
use dispatch_abi::{Context as PluginContext, Error, Plugin, PluginManifest};
use dispatch_contracts::protocol::trace::{RequestOutcome, ToolOutcome, TraceBatch, TraceBody, TraceEvent};
use dispatch_contracts::protocol::wire::{FinishReason, Usage};
use dispatch_contracts::session::TRACE;
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::WithHttpConfig as _;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

/// The most facts kept for one running turn (the rest are left out of its
/// trace), and the most turns running at once whose facts are kept.
const MAX_FACTS: usize = 10_000;
const MAX_TURNS: usize = 1_024;

/// Whether the environment asks for OTLP export.
pub fn enabled(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The exporter's HTTP client: reqwest on the plugin's runtime, awaited
/// from the SDK's export thread (which has no runtime of its own).
#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    runner: Runner,
}

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let http = self.http.clone();
        let request = reqwest::Request::try_from(request)?;
        self.runner
            .run(async move {
                let answer = http.execute(request).await.map_err(|e| Error::msg(e.to_string()))?;
                let mut response = Response::builder().status(answer.status().as_u16());
                for (name, value) in answer.headers() {
                    response = response.header(name.as_str(), value.as_bytes());
                }
                let body = answer.bytes().await.map_err(|e| Error::msg(e.to_string()))?;
                response.body(body).map_err(|e| Error::msg(e.to_string()))
            })
            .await
            .map_err(|e| Box::new(e) as HttpError)
    }
}

fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn usage_attributes(u: &Usage, out: &mut Vec<KeyValue>) {
    out.push(KeyValue::new("gen_ai.usage.input_tokens", count(u.input_tokens)));
    out.push(KeyValue::new("gen_ai.usage.output_tokens", count(u.output_tokens)));
    if let Some(n) = u.cache_read_tokens {
        out.push(KeyValue::new("gen_ai.usage.cache_read.input_tokens", count(n)));
    }
    if let Some(n) = u.cache_write_tokens {
        out.push(KeyValue::new("gen_ai.usage.cache_creation.input_tokens", count(n)));
    }
    if let Some(n) = u.reasoning_tokens {
        out.push(KeyValue::new("gen_ai.usage.reasoning.output_tokens", count(n)));
    }
}

fn finish_reasons(r: &FinishReason) -> KeyValue {
    KeyValue::new(
        "gen_ai.response.finish_reasons",
        Value::Array(Array::String(vec![StringValue::from(r.as_str().to_owned())])),
    )
}

/// One turn's facts as a trace: the turn span, a span per step, and under
/// each step its requests and tool calls.
pub fn export(tracer: &SdkTracer, facts: &[TraceEvent]) {
    let Some(end) = facts.iter().rev().find(|f| matches!(f.body, TraceBody::Turn { .. })) else { return };
    let TraceBody::Turn { model, reason, usage, cache_hit_rate, steps, tool_calls, .. } = &end.body else {
        return;
    };
    let started = facts.first().map_or(end.started_at, |f| f.started_at.min(end.started_at));
    let mut attributes = vec![
        KeyValue::new("gen_ai.operation.name", "invoke_agent"),
        KeyValue::new("gen_ai.agent.name", "dispatch"),
        KeyValue::new("gen_ai.conversation.id", end.conversation_id.clone()),
        KeyValue::new("gen_ai.request.model", model.clone()),
        KeyValue::new("dispatch.turn.id", end.turn_id.clone()),
        KeyValue::new("dispatch.turn.reason", reason.as_str().to_owned()),
        KeyValue::new("dispatch.turn.steps", i64::from(*steps)),
        KeyValue::new("dispatch.turn.tool_calls", i64::from(*tool_calls)),
    ];
    if let Some(u) = usage {
        usage_attributes(u, &mut attributes);
    }
    if let Some(rate) = cache_hit_rate {
        attributes.push(KeyValue::new("dispatch.turn.cache_hit_rate", *rate));
    }
    let mut root = tracer
        .span_builder("invoke_agent dispatch")
        .with_kind(SpanKind::Internal)
        .with_start_time(time(started))
        .with_attributes(attributes)
        .start(tracer);
    if matches!(reason, FinishReason::Error) {
        root.set_status(Status::error("the turn ended in an error"));
    }
    let turn = Context::new().with_span(root);

    // The facts of each step, in step order.
    let mut by_step: BTreeMap<u64, Vec<&TraceEvent>> = BTreeMap::new();
    for f in facts {
        let index = f.step_id.as_deref().and_then(|s| s.rsplit_once('#')).and_then(|(_, n)| n.parse().ok());
        if let (Some(i), TraceBody::Request { .. } | TraceBody::Tool { .. }) = (index, &f.body) {
            by_step.entry(i).or_default().push(f);
        }
    }
    for (index, step_facts) in by_step {
        let from = step_facts.iter().map(|f| f.started_at).min().unwrap_or(started);
        let to = step_facts.iter().map(|f| f.ended_at).max().unwrap_or(from);
        let span = tracer
            .span_builder(format!("step #{index}"))
            .with_kind(SpanKind::Internal)
            .with_start_time(time(from))
            .with_attributes(vec![KeyValue::new("dispatch.step.index", count(index))])
            .start_with_context(tracer, &turn);
        let step = turn.with_span(span);
        for f in step_facts {
            child(tracer, &step, f);
        }
        step.span().end_with_timestamp(time(to));
    }
    turn.span().end_with_timestamp(time(end.ended_at.max(started)));
}

/// A request's or a tool call's span, under its step.
fn child(tracer: &SdkTracer, step: &Context, f: &TraceEvent) {
    let (name, kind, mut attributes, error) = match &f.body {
        TraceBody::Request { model, attempt, outcome, ttft_ms, usage, finish, status, error, .. } => {
            let mut a = vec![
                KeyValue::new("gen_ai.operation.name", "chat"),
                KeyValue::new("gen_ai.request.model", model.clone()),
                KeyValue::new("dispatch.request.attempt", i64::from(*attempt)),
                KeyValue::new("dispatch.request.outcome", outcome.as_str()),
            ];
            if let Some(u) = usage {
                usage_attributes(u, &mut a);
            }
            if let Some(r) = finish {
                a.push(finish_reasons(r));
            }
            if let Some(t) = ttft_ms {
                a.push(KeyValue::new("dispatch.request.ttft_ms", count(*t)));
            }
            let failed = match outcome {
                RequestOutcome::Ok => None,
                RequestOutcome::Aborted => Some(("aborted".to_owned(), "the turn was stopped".to_owned())),
                _ => Some((
                    status.clone().unwrap_or_else(|| "provider_error".to_owned()),
                    error.clone().unwrap_or_default(),
                )),
            };
            (format!("chat {model}"), SpanKind::Client, a, failed)
        }
        TraceBody::Tool { tool_call_id, tool_name, plugin, outcome, output_bytes, .. } => {
            let mut a = vec![
                KeyValue::new("gen_ai.operation.name", "execute_tool"),
                KeyValue::new("gen_ai.tool.name", tool_name.clone()),
                KeyValue::new("gen_ai.tool.call.id", tool_call_id.clone()),
                KeyValue::new("dispatch.tool.outcome", outcome.as_str()),
                KeyValue::new("dispatch.tool.output_bytes", count(*output_bytes)),
            ];
            if let Some(p) = plugin {
                a.push(KeyValue::new("dispatch.tool.plugin", p.clone()));
            }
            let failed = (*outcome != ToolOutcome::Ok)
                .then(|| (outcome.as_str().to_owned(), format!("the tool call ended: {}", outcome.as_str())));
            (format!("execute_tool {tool_name}"), SpanKind::Internal, a, failed)
        }
        _ => return,
    };
    if let Some((kind, _)) = &error {
        attributes.push(KeyValue::new("error.type", kind.clone()));
    }
    let mut span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_start_time(time(f.started_at))
        .with_attributes(attributes)
        .start_with_context(tracer, step);
    if let Some((_, message)) = error {
        span.set_status(Status::error(message));
    }
    span.end_with_timestamp(time(f.ended_at.max(f.started_at)));
}

/// A fact as a span needs it: without the bodies a trace keeps (a tool's
/// input and output, the system prompt, the tools' schemas), which spans
/// do not carry.
fn light(mut fact: TraceEvent) -> TraceEvent {
    match &mut fact.body {
        TraceBody::Tool { input, output, .. } => {
            *input = serde_json::Value::Null;
            output.clear();
        }
        TraceBody::Context { system_prompt, tools, .. } => {
            *system_prompt = None;
            tools.clear();
        }
        _ => {}
    }
    fact
}

/// A running turn: (conversation, turn) → (when it was first seen, its
/// facts so far).
type Running = HashMap<(String, String), (u64, Vec<TraceEvent>)>;

/// Running turns' facts until their end, and a counter ordering them.
#[derive(Default)]
struct Turns(Mutex<(u64, Running)>);

impl Turns {
    /// Keep `fact`; at a turn's end, its facts.
    fn take_in(&self, fact: TraceEvent) -> Option<Vec<TraceEvent>> {
        if matches!(fact.body, TraceBody::Append { .. }) {
            return None;
        }
        let key = (fact.conversation_id.clone(), fact.turn_id.clone());
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (next, turns) = &mut *guard;
        if matches!(fact.body, TraceBody::Turn { .. }) {
            let mut facts = turns.remove(&key).map(|(_, f)| f).unwrap_or_default();
            facts.push(fact);
            return Some(facts);
        }
        if !turns.contains_key(&key) && turns.len() >= MAX_TURNS {
            // Turns whose end never came (their host process died and
            // another took over): forget the oldest.
            if let Some(oldest) = turns.iter().min_by_key(|(_, (n, _))| *n).map(|(k, _)| k.clone()) {
                turns.remove(&oldest);
            }
        }
        *next += 1;
        let (_, facts) = turns.entry(key).or_insert_with(|| (*next, Vec::new()));
        if facts.len() < MAX_FACTS {
            facts.push(light(fact));
        }
        None
    }
}

/// The plugin.
pub struct Otel {
    on: Option<(PluginRuntime, SdkTracerProvider)>,
}

impl std::fmt::Debug for Otel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Otel").field("on", &self.on.is_some()).finish()
    }
}

impl Plugin for Otel {
    fn manifest() -> PluginManifest {
        PluginManifest::new("otel", env!("CARGO_PKG_VERSION")).description(
            "OpenTelemetry: each turn a trace over OTLP, when OTEL_EXPORTER_OTLP_ENDPOINT is set",
        )
    }

    fn activate(ctx: PluginContext) -> Result<Self, Error> {
        if !enabled(|name| std::env::var(name).ok()) {
            tracing::debug!("OTLP export is off (OTEL_EXPORTER_OTLP_ENDPOINT is not set)");
            return Ok(Otel { on: None });
        }
        let runtime = PluginRuntime::new("otel", 1)?;
        // reqwest is built without a default TLS provider and panics
        // without one; this plugin links its own copy of rustls, so this
        // touches nobody else in the process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| Error::msg(format!("cannot build the OTLP HTTP client: {e}")))?;
        let client = Client { http, runner: runtime.runner() };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .build()
            .map_err(|e| {
                Error::msg(format!("cannot configure the OTLP exporter from OTEL_* variables: {e}"))
            })?;
        let mut resource = Resource::builder();
        if std::env::var("OTEL_SERVICE_NAME").is_err() {
            resource = resource.with_service_name("dispatch");
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("dispatch");
        let turns = Arc::new(Turns::default());
        ctx.host().subscribe_sync(&TRACE, move |batch: TraceBatch| {
            for fact in batch.facts {
                if let Some(facts) = turns.take_in(fact) {
                    export(&tracer, &facts);
                }
            }
            Ok(())
        })?;
        tracing::info!("exporting turns over OTLP");
        Ok(Otel { on: Some((runtime, provider)) })
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        if let Some((mut runtime, provider)) = self.on.take() {
            // What is batched goes out before the runtime that sends it stops.
            if let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
                tracing::warn!(error = %e, "the last spans could not be exported");
            }
            runtime.shutdown(Duration::from_secs(5));
        }
        Ok(())
    }
}

dispatch_abi::export_plugin!(Otel);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_is_off_unless_an_endpoint_is_set_and_not_disabled() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        assert!(!enabled(env(&[])));
        assert!(!enabled(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(enabled(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")])));
        assert!(enabled(env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c/v1/traces")])));
        assert!(!enabled(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_SDK_DISABLED", "TRUE")])));
    }
}
