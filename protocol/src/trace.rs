//! Turn telemetry: what each turn offered the model, every provider request
//! and every tool call, as facts the session publishes on the
//! `session.trace` event (key in `dispatch-contracts`) and the store keeps.
//!
//! The session publishes facts, never counters: the plugins that turn them
//! into something (the `traces` plugin persisting and serving them,
//! `metrics` aggregating them for Prometheus, `otel` exporting spans)
//! subscribe, so a feature of telemetry never grows a branch in the
//! session.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::provider::ToolSpec;
use crate::wire::{FinishReason, Usage};

/// The most bytes of a tool's input (its JSON) or output a trace keeps;
/// the full size is noted beside what is kept.
pub const MAX_TRACE_TEXT: usize = 16 * 1024;

/// The most traces one page answers.
pub const MAX_PAGE: u64 = 200;

/// What one `session.trace` event carries: the facts of a turn gathered
/// for up to 100 ms (its requests, tool calls, writes), so subscribers of
/// a turn of fast steps wake a few times, not once a fact. In order; a
/// turn's `context` comes first in the first batch and its `turn` last in
/// the last.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TraceBatch {
    /// The facts, oldest first.
    pub facts: Vec<TraceEvent>,
}

/// One fact about a turn: a record of the `session.trace` event, and,
/// with an id, a stored trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TraceEvent {
    /// The conversation.
    pub conversation_id: String,
    /// The turn.
    pub turn_id: String,
    /// The step (`<turnId>#<index>`) of a request or a tool call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
    /// When it began, epoch ms.
    pub started_at: u64,
    /// When it ended, epoch ms (`startedAt` for an instant).
    pub ended_at: u64,
    /// What it was.
    #[serde(flatten)]
    pub body: TraceBody,
}

impl TraceEvent {
    /// `endedAt - startedAt`.
    pub fn duration_ms(&self) -> u64 {
        self.ended_at.saturating_sub(self.started_at)
    }

    /// The `kind` tag.
    pub fn kind(&self) -> &'static str {
        self.body.kind()
    }
}

/// What a [`TraceEvent`] records, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "camelCase", rename_all_fields = "camelCase")]
#[non_exhaustive]
pub enum TraceBody {
    /// What the turn offered the model, after every filter: the system
    /// prompt and the tools. First of a turn.
    Context {
        /// The model, `<credential>/<model>`.
        model: String,
        /// The final system prompt (`None`: the turn had none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        system_prompt: Option<String>,
        /// The tools as the model saw them.
        tools: Vec<ToolSpec>,
    },
    /// One provider request (one attempt of a step).
    Request {
        /// The model.
        model: String,
        /// 0 for the first attempt of the step, then one per retry.
        attempt: u32,
        /// How it ended.
        outcome: RequestOutcome,
        /// Request start to the first token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttft_ms: Option<u64>,
        /// First token to the end of the stream.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        decode_ms: Option<u64>,
        /// What the provider counted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
        /// The model's finish reason, when it finished.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        finish: Option<FinishReason>,
        /// The provider's status code, when it failed with one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
        /// Why it failed (or was retried).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// The wait before the retry it caused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_delay_ms: Option<u64>,
    },
    /// One tool call.
    Tool {
        /// The model's id for the call.
        tool_call_id: String,
        /// The tool.
        tool_name: String,
        /// The plugin that serves it, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plugin: Option<String>,
        /// The input; a string of its first [`MAX_TRACE_TEXT`] bytes of
        /// JSON when longer.
        input: Value,
        /// The input's JSON size in bytes.
        input_bytes: u64,
        /// The result's first [`MAX_TRACE_TEXT`] bytes.
        output: String,
        /// The result's whole size in bytes.
        output_bytes: u64,
        /// How it ended.
        outcome: ToolOutcome,
        /// The model usage of the step that asked for it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step_usage: Option<Usage>,
    },
    /// The turn, once it ended.
    Turn {
        /// The model.
        model: String,
        /// Why it ended.
        reason: FinishReason,
        /// Summed over its steps.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
        /// `cacheReadTokens / inputTokens` over the turn, `[0, 1]`, when
        /// the provider reported its cache.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_hit_rate: Option<f64>,
        /// Model steps.
        steps: u32,
        /// Tool calls.
        tool_calls: u32,
        /// Summed stream time of its steps (first byte wait included, tools
        /// excluded): what throughput divides by.
        gen_ms: u64,
        /// The final step's input + output tokens.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        context_size: Option<u64>,
    },
    /// A step's messages were written to the store (published, not
    /// stored: the store's append latency, for metrics).
    Append {
        /// How many messages.
        messages: u32,
        /// Whether the write landed.
        ok: bool,
    },
}

impl TraceBody {
    /// The `kind` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            TraceBody::Context { .. } => "context",
            TraceBody::Request { .. } => "request",
            TraceBody::Tool { .. } => "tool",
            TraceBody::Turn { .. } => "turn",
            TraceBody::Append { .. } => "append",
        }
    }
}

/// How a provider request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum RequestOutcome {
    /// The stream finished.
    Ok,
    /// It failed and is retried.
    Retry,
    /// It failed for good.
    Error,
    /// The turn was stopped during it.
    Aborted,
}

impl RequestOutcome {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestOutcome::Ok => "ok",
            RequestOutcome::Retry => "retry",
            RequestOutcome::Error => "error",
            RequestOutcome::Aborted => "aborted",
        }
    }
}

/// How a tool call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum ToolOutcome {
    /// A result the model reads as success.
    Ok,
    /// An error result (the tool failed, refused its input, is unknown).
    Error,
    /// The turn was stopped before it finished (or before it ran).
    Aborted,
    /// The tool gave up on its own time limit.
    Timeout,
}

impl ToolOutcome {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolOutcome::Ok => "ok",
            ToolOutcome::Error => "error",
            ToolOutcome::Aborted => "aborted",
            ToolOutcome::Timeout => "timeout",
        }
    }
}

/// A stored trace: its cursor and the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Trace {
    /// Its place in the store's order (the cursor that pages after it).
    pub id: u64,
    /// `endedAt - startedAt`.
    pub duration_ms: u64,
    /// The record.
    #[serde(flatten)]
    pub event: TraceEvent,
}

/// One page of a conversation's traces — the
/// `GET /conversations/:id/traces` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TracePage {
    /// Oldest first.
    pub traces: Vec<Trace>,
    /// Pass as `cursor` for the next page; `null` on the last page (a
    /// running turn may still add traces after it: ask again with the last
    /// id seen).
    pub next_cursor: Option<String>,
}

impl Trace {
    /// A stored row: its id and the record's JSON.
    pub fn from_stored(id: u64, body: &str) -> Result<Trace, serde_json::Error> {
        let event: TraceEvent = serde_json::from_str(body)?;
        Ok(Trace { id, duration_ms: event.duration_ms(), event })
    }
}

impl TracePage {
    /// The page of stored rows `(id, JSON)` read for `limit` (up to
    /// `limit + 1` of them): what both stores answer.
    pub fn from_rows<'a>(
        rows: impl IntoIterator<Item = (i64, &'a str)>,
        limit: u64,
    ) -> Result<TracePage, serde_json::Error> {
        let traces = rows
            .into_iter()
            .map(|(id, body)| Trace::from_stored(u64::try_from(id).unwrap_or(0), body))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TracePage::of(traces, limit))
    }

    /// The page of a query for `limit` that read up to `limit + 1` rows:
    /// a row past the limit means there is a next page.
    pub fn of(mut rows: Vec<Trace>, limit: u64) -> TracePage {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = more.then(|| rows.last().map(|t| t.id.to_string())).flatten();
        TracePage { traces: rows, next_cursor }
    }
}

/// A model's generation over a period: the store's throughput
/// aggregation, one row per model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThroughputRow {
    /// The model.
    pub model: String,
    /// Summed output tokens.
    pub output_tokens: u64,
    /// Summed generation time.
    pub gen_ms: u64,
    /// Turns counted.
    pub turns: u64,
}

/// The columns a store indexes a trace by, beside its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceColumns {
    /// [`TraceEvent::kind`].
    pub kind: &'static str,
    /// A `turn`'s model (throughput groups by it).
    pub model: Option<String>,
    /// A `turn`'s output tokens (`None` when its provider reported no
    /// usage: throughput leaves it out).
    pub output_tokens: Option<u64>,
    /// A `turn`'s generation time.
    pub gen_ms: Option<u64>,
}

impl TraceEvent {
    /// What a store keeps in columns of its own.
    pub fn columns(&self) -> TraceColumns {
        match &self.body {
            TraceBody::Turn { model, usage, gen_ms, .. } => TraceColumns {
                kind: self.kind(),
                model: Some(model.clone()),
                output_tokens: usage.map(|u| u.output_tokens),
                gen_ms: Some(*gen_ms),
            },
            _ => TraceColumns { kind: self.kind(), model: None, output_tokens: None, gen_ms: None },
        }
    }

    /// Whether a store keeps it (`append` records are for live
    /// subscribers only).
    pub fn is_kept(&self) -> bool {
        !matches!(self.body, TraceBody::Append { .. })
    }
}

/// `text` cut to at most `max` bytes on a character boundary, and its
/// whole length in bytes.
pub fn bounded(text: &str, max: usize) -> (String, u64) {
    let whole = text.len() as u64;
    if text.len() <= max {
        return (text.to_owned(), whole);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_owned(), whole)
}

/// A tool input as a trace keeps it: the value itself when its JSON fits
/// [`MAX_TRACE_TEXT`], else a string of its first bytes; and its size.
pub fn bounded_input(input: &Value) -> (Value, u64) {
    let text = input.to_string();
    if text.len() <= MAX_TRACE_TEXT {
        let size = text.len() as u64;
        return (input.clone(), size);
    }
    let (kept, size) = bounded(&text, MAX_TRACE_TEXT);
    (Value::String(kept), size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bounding_keeps_whole_characters_and_notes_the_size() {
        let (kept, size) = bounded("héllo", 2);
        assert_eq!((kept.as_str(), size), ("h", 6));
        let (kept, size) = bounded("abc", 10);
        assert_eq!((kept.as_str(), size), ("abc", 3));
        let big = json!({"text": "x".repeat(MAX_TRACE_TEXT)});
        let (kept, size) = bounded_input(&big);
        assert!(kept.as_str().is_some_and(|s| s.len() == MAX_TRACE_TEXT));
        assert_eq!(size, big.to_string().len() as u64);
    }

    #[test]
    fn a_trace_is_flat_json_tagged_by_kind() {
        let t = Trace {
            id: 7,
            duration_ms: 5,
            event: TraceEvent {
                conversation_id: "c".into(),
                turn_id: "t".into(),
                step_id: Some("t#0".into()),
                started_at: 10,
                ended_at: 15,
                body: TraceBody::Tool {
                    tool_call_id: "k".into(),
                    tool_name: "run_shell".into(),
                    plugin: Some("tool-shell".into()),
                    input: json!({"command": "ls"}),
                    input_bytes: 16,
                    output: "a".into(),
                    output_bytes: 1,
                    outcome: ToolOutcome::Timeout,
                    step_usage: None,
                },
            },
        };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["kind"], "tool");
        assert_eq!(v["outcome"], "timeout");
        assert_eq!(v["stepId"], "t#0");
        assert_eq!(serde_json::from_value::<Trace>(v).unwrap(), t);
    }
}
