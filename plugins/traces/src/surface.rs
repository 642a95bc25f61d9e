//! The `traces` surface: each conversation's last turn as the frontend
//! already renders surfaces — `stat` fields for its figures and the
//! conversation's totals, and a `table` of its requests and tool calls.
//! Updated when a turn ends; the rows of a running turn are held here
//! until then (bounded).

use std::collections::HashMap;
use std::sync::Arc;

use dispatch_abi::Host;
use dispatch_contracts::protocol::trace::{TraceBody, TraceEvent};
use dispatch_contracts::protocol::wire::Usage;
use dispatch_contracts::store::{MetricsList, StoreRequest, STORE};
use dispatch_contracts::surface::{RegistryRequest, Scope, SurfaceField, SurfaceSpec, REGISTRY};
use serde_json::{json, Value};

/// The surface's id.
pub const SURFACE_ID: &str = "traces";
/// The most rows a turn's table shows (the first ones; the trace route has
/// them all).
const MAX_ROWS: usize = 50;

/// The registered surface and the running turns' rows.
pub struct Surface {
    token: Arc<str>,
    rows: HashMap<String, Vec<Value>>,
}

impl Surface {
    /// Register the surface; `None` (logged) without a surface registry.
    pub fn register(host: &Host) -> Option<Surface> {
        let request = RegistryRequest::Register {
            spec: spec(None, Vec::new(), None),
            scope: Some(Scope::Conversation),
            token: None,
            conversation_spec: None,
        };
        match host.call_blocking(&REGISTRY, &request) {
            Ok(r) => r.token.map(|t| Surface { token: Arc::from(t), rows: HashMap::new() }),
            Err(e) => {
                tracing::info!(error = %e, "no surface registry: the traces surface is not shown");
                None
            }
        }
    }

    /// Take in a batch of facts; a turn's end updates its conversation's
    /// surface.
    pub async fn see(&mut self, host: &Host, batch: &[TraceEvent]) {
        for t in batch {
            match &t.body {
                // A new turn: rows of one whose end never came go.
                TraceBody::Context { .. } => {
                    self.rows.remove(&t.conversation_id);
                }
                TraceBody::Request { .. } | TraceBody::Tool { .. } => {
                    let rows = self.rows.entry(t.conversation_id.clone()).or_default();
                    if rows.len() < MAX_ROWS {
                        rows.push(row(t));
                    }
                }
                TraceBody::Turn { .. } => {
                    let rows = self.rows.remove(&t.conversation_id).unwrap_or_default();
                    let totals = totals(host, &t.conversation_id).await;
                    let update = RegistryRequest::Update {
                        spec: spec(Some(t), rows, totals),
                        token: self.token.to_string(),
                        conversation_id: Some(t.conversation_id.clone()),
                    };
                    if let Err(e) = host.call(&REGISTRY, &update).await {
                        tracing::debug!(error = %e, "cannot update the traces surface");
                    }
                }
                _ => {}
            }
        }
    }
}

/// The conversation's usage over every turn the store has metrics of.
async fn totals(host: &Host, conversation_id: &str) -> Option<Usage> {
    let v = host
        .call(&STORE, &StoreRequest::Metrics { conversation_id: conversation_id.to_owned() })
        .await
        .ok()?;
    let list: MetricsList = crate::decode(v).ok()?;
    let sum = list.turns.iter().fold(Usage::default(), |a, t| a + t.usage);
    sum.is_reported().then_some(sum)
}

fn seconds(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "—".to_owned(), |r| format!("{}%", (r * 100.0).round()))
}

fn step_of(t: &TraceEvent) -> String {
    t.step_id.as_deref().and_then(|s| s.rsplit_once('#')).map_or_else(String::new, |(_, n)| format!("#{n}"))
}

/// A table row: step, what, outcome, time.
fn row(t: &TraceEvent) -> Value {
    match &t.body {
        TraceBody::Request { model, attempt, outcome, usage, .. } => {
            let what = match attempt {
                0 => format!("model {model}"),
                n => format!("model {model} (retry {n})"),
            };
            let tokens =
                usage.map(|u| format!(" · {} → {} tok", u.input_tokens, u.output_tokens)).unwrap_or_default();
            json!([step_of(t), what, outcome.as_str(), format!("{}{tokens}", seconds(t.duration_ms()))])
        }
        TraceBody::Tool { tool_name, outcome, .. } => {
            json!([step_of(t), format!("  {tool_name}"), outcome.as_str(), seconds(t.duration_ms())])
        }
        _ => json!([]),
    }
}

/// The surface for a conversation whose last turn ended as `turn` says.
fn spec(turn: Option<&TraceEvent>, rows: Vec<Value>, totals: Option<Usage>) -> SurfaceSpec {
    let dash = || "—".to_owned();
    let (last, cache) = match turn.map(|t| (t, &t.body)) {
        Some((t, TraceBody::Turn { steps, tool_calls, cache_hit_rate, reason, .. })) => (
            format!(
                "{} · {steps} step{} · {tool_calls} tool call{} · {}",
                seconds(t.duration_ms()),
                if *steps == 1 { "" } else { "s" },
                if *tool_calls == 1 { "" } else { "s" },
                reason.as_str()
            ),
            percent(*cache_hit_rate),
        ),
        _ => (dash(), dash()),
    };
    let (tokens, conversation_cache) = match totals {
        Some(u) => (format!("{} in · {} out", u.input_tokens, u.output_tokens), percent(u.cache_hit_rate())),
        None => (dash(), dash()),
    };
    SurfaceSpec {
        id: SURFACE_ID.into(),
        region: "side".into(),
        title: "Trace".into(),
        fields: vec![
            SurfaceField::Stat { label: "Last turn".into(), value: last },
            SurfaceField::Stat { label: "Cache hit (last turn)".into(), value: cache },
            SurfaceField::Stat { label: "Tokens (conversation)".into(), value: tokens },
            SurfaceField::Stat { label: "Cache hit (conversation)".into(), value: conversation_cache },
            SurfaceField::Custom {
                renderer_id: "table".into(),
                payload: json!({"columns": ["Step", "Call", "Outcome", "Time"], "rows": rows}),
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use dispatch_contracts::protocol::trace::{RequestOutcome, ToolOutcome};
    use dispatch_contracts::protocol::wire::FinishReason;

    fn event(step: Option<&str>, start: u64, end: u64, body: TraceBody) -> TraceEvent {
        TraceEvent {
            conversation_id: "c".into(),
            turn_id: "t".into(),
            step_id: step.map(str::to_owned),
            started_at: start,
            ended_at: end,
            body,
        }
    }

    #[test]
    fn the_last_turn_reads_as_stats_and_a_table() {
        let request = event(
            Some("t#0"),
            0,
            1500,
            TraceBody::Request {
                model: "m".into(),
                attempt: 1,
                outcome: RequestOutcome::Ok,
                ttft_ms: None,
                decode_ms: None,
                usage: Some(Usage { input_tokens: 10, output_tokens: 2, ..Usage::default() }),
                finish: None,
                status: None,
                error: None,
                retry_delay_ms: None,
            },
        );
        let tool = event(
            Some("t#0"),
            1500,
            1535,
            TraceBody::Tool {
                tool_call_id: "k".into(),
                tool_name: "run_shell".into(),
                plugin: None,
                input: json!({}),
                input_bytes: 2,
                output: String::new(),
                output_bytes: 0,
                outcome: ToolOutcome::Error,
                step_usage: None,
            },
        );
        let turn = event(
            None,
            0,
            2000,
            TraceBody::Turn {
                model: "m".into(),
                reason: FinishReason::Stop,
                usage: None,
                cache_hit_rate: Some(0.874),
                steps: 2,
                tool_calls: 1,
                gen_ms: 1500,
                context_size: None,
            },
        );
        let totals =
            Usage { input_tokens: 100, output_tokens: 5, cache_read_tokens: Some(50), ..Usage::default() };
        let v =
            serde_json::to_value(spec(Some(&turn), vec![row(&request), row(&tool)], Some(totals))).unwrap();
        assert_eq!(v["fields"][0]["value"], "2.0 s · 2 steps · 1 tool call · stop");
        assert_eq!(v["fields"][1]["value"], "87%");
        assert_eq!(v["fields"][2]["value"], "100 in · 5 out");
        assert_eq!(v["fields"][3]["value"], "50%");
        assert_eq!(
            v["fields"][4]["payload"]["rows"],
            json!([
                ["#0", "model m (retry 1)", "ok", "1.5 s · 10 → 2 tok"],
                ["#0", "  run_shell", "error", "35 ms"]
            ])
        );
        let empty = serde_json::to_value(spec(None, Vec::new(), None)).unwrap();
        assert_eq!(empty["fields"][0]["value"], "—");
    }
}
