//! The plugin's routes (the table in the crate docs).

use dispatch_abi::runtime::Runner;
use dispatch_abi::{codes, Host};
use dispatch_contracts::http::{problem, HttpMethod, HttpRequest, HttpResponse, Problem, Route};
use dispatch_contracts::openapi::Operation;
use dispatch_contracts::protocol::provider::ToolSpec;
use dispatch_contracts::protocol::store::{Details, ThroughputList, TraceQuery};
use dispatch_contracts::protocol::trace::{TraceBody, TracePage, MAX_PAGE};
use dispatch_contracts::protocol::wire::CONVERSATION_ID_PATTERN;
use dispatch_contracts::store::{StoreRequest, STORE};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{json, Value};

use crate::period::{Period, BAD_PERIOD};

/// A page when `limit` is left out.
const DEFAULT_PAGE: u64 = 100;

/// `GET /conversations/:id/turns/:turnId/context`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct TurnContext {
    conversation_id: String,
    turn_id: String,
    /// When the turn started, epoch ms.
    started_at: u64,
    /// The model, `<credential>/<model>`.
    model: String,
    /// The final system prompt, after every filter; `null` when the turn
    /// had none.
    system_prompt: Option<String>,
    /// The tools as the model saw them.
    tools: Vec<ToolSpec>,
}

/// `GET /metrics/throughput` (WIRE.md "Throughput").
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct Throughput {
    period: String,
    date: String,
    /// Epoch ms, inclusive (0 without a store).
    start: u64,
    /// Epoch ms, exclusive (0 without a store).
    end: u64,
    /// Fastest first, ties by name.
    models: Vec<ModelThroughput>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ModelThroughput {
    model: String,
    /// `totalOutputTokens / totalGenMs × 1000`, to 2 decimals.
    tokens_per_second: f64,
    total_output_tokens: u64,
    total_gen_ms: u64,
    turns: u64,
}

/// Per-model sums as WIRE.md shapes them: tokens per second, fastest
/// first, ties by name.
fn rank(rows: ThroughputList) -> Vec<ModelThroughput> {
    let mut models: Vec<ModelThroughput> = rows
        .models
        .into_iter()
        .filter(|r| r.gen_ms > 0)
        .map(|r| ModelThroughput {
            tokens_per_second: (r.output_tokens as f64 / r.gen_ms as f64 * 1000.0 * 100.0).round() / 100.0,
            model: r.model,
            total_output_tokens: r.output_tokens,
            total_gen_ms: r.gen_ms,
            turns: r.turns,
        })
        .collect();
    models.sort_by(|a, b| {
        b.tokens_per_second.total_cmp(&a.tokens_per_second).then_with(|| a.model.cmp(&b.model))
    });
    models
}

async fn store<T: serde::de::DeserializeOwned>(host: &Host, req: StoreRequest) -> Result<T, Problem> {
    let v = host.call(&STORE, &req).await.map_err(problem)?;
    crate::decode(v).map_err(|e| Problem::new(500, "internal", e))
}

async fn traces(host: Host, req: HttpRequest) -> Result<HttpResponse, Problem> {
    let conversation_id = req.conversation_id("id")?;
    let limit = match req.query_number("limit", 1)? {
        None => DEFAULT_PAGE,
        Some(n) if n <= MAX_PAGE => n,
        Some(n) => return Err(Problem::bad_request(format!("`limit` must be at most {MAX_PAGE}; got {n}"))),
    };
    let after = match req.query("cursor").map(str::trim).filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(c.parse::<u64>().map_err(|_| {
            Problem::bad_request(format!("`cursor` must be a `nextCursor` this route answered; got {c:?}"))
        })?),
    };
    let turn_id = req.query("turnId").map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned);
    let query = TraceQuery { conversation_id: conversation_id.clone(), turn_id, kind: None, after, limit };
    let page: TracePage = store(&host, StoreRequest::Traces(query)).await?;
    if page.traces.is_empty() && after.is_none() {
        let known: Option<Details> = store(&host, StoreRequest::Get { conversation_id }).await?;
        if known.is_none() {
            return Err(Problem::new(404, "not_found", "Conversation not found"));
        }
    }
    Ok(HttpResponse::ok(&page))
}

async fn context(host: Host, req: HttpRequest) -> Result<HttpResponse, Problem> {
    let conversation_id = req.conversation_id("id")?;
    let turn_id = req.param("turnId").unwrap_or_default().to_owned();
    let query = TraceQuery {
        conversation_id: conversation_id.clone(),
        turn_id: Some(turn_id.clone()),
        kind: Some("context".into()),
        after: None,
        limit: 1,
    };
    let page: TracePage = store(&host, StoreRequest::Traces(query)).await?;
    let found = page.traces.into_iter().next().and_then(|t| match t.event.body {
        TraceBody::Context { model, system_prompt, tools } => Some(TurnContext {
            conversation_id: conversation_id.clone(),
            turn_id: turn_id.clone(),
            started_at: t.event.started_at,
            model,
            system_prompt,
            tools,
        }),
        _ => None,
    });
    found
        .map(|c| HttpResponse::ok(&c))
        .ok_or_else(|| Problem::new(404, "not_found", "No context was recorded for this turn"))
}

async fn throughput(host: Host, req: HttpRequest) -> Result<HttpResponse, Problem> {
    let period =
        req.query("period").and_then(Period::parse).ok_or_else(|| Problem::bad_request(BAD_PERIOD))?;
    let date = req
        .query("date")
        .filter(|d| !d.is_empty())
        .ok_or_else(|| Problem::bad_request("query param 'date' is required"))?
        .to_owned();
    let (start, end) = period.range(&date).map_err(Problem::bad_request)?;
    let name = req.query("period").unwrap_or_default().to_owned();
    let answer = match host.call(&STORE, &StoreRequest::Throughput { start, end }).await {
        Ok(v) => {
            let rows: ThroughputList =
                crate::decode(v).map_err(|e| Problem::new(502, "aggregation_failed", e))?;
            Throughput { period: name, date, start, end, models: rank(rows) }
        }
        // No store: nothing was recorded (WIRE.md).
        Err(e) if e.code() == codes::NOT_FOUND => {
            Throughput { period: name, date, start: 0, end: 0, models: vec![] }
        }
        Err(e) => {
            return Err(Problem::new(
                502,
                "aggregation_failed",
                format!("cannot aggregate throughput: {}", e.message()),
            ))
        }
    };
    Ok(HttpResponse::ok(&answer))
}

/// A route whose handler runs on the plugin's runtime with the host.
fn route<F, Fut>(host: &Host, runner: &Runner, path: &str, handler: F) -> Route
where
    F: Fn(Host, HttpRequest) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<HttpResponse, Problem>> + Send + 'static,
{
    let host = host.clone();
    Route::on_runtime(runner, HttpMethod::Get, path, move |req| handler(host.clone(), req))
}

fn conversation(o: Operation) -> Operation {
    o.path_param_with(
        "id",
        "The conversation's id (1-128 of A-Z a-z 0-9 . _ - : @)",
        json!({"type": "string", "pattern": CONVERSATION_ID_PATTERN}),
    )
}

/// Every route of the plugin.
pub fn routes(host: &Host, runner: &Runner) -> Vec<Route> {
    let blank = |v: Value| json!({"anyOf": [v, {"type": "string", "pattern": "^\\s*$"}]});
    vec![
        route(host, runner, "/conversations/{id}/traces", traces).operation(
            conversation(Operation::new("Read a page of a conversation's turn traces").id("getTraces").tag("traces"))
                .description(
                    "Oldest first: each turn's context, provider requests (one per attempt), tool calls and end. \
                     Pass `nextCursor` back as `cursor` for the next page; ids only grow, so paging while a \
                     turn runs neither skips nor repeats a trace.",
                )
                .query_with("turnId", "Only this turn's traces", json!({"type": "string"}))
                .query_with(
                    "cursor",
                    "A `nextCursor` from an earlier page",
                    blank(json!({"type": "string", "pattern": "^\\s*[0-9]{1,19}\\s*$"})),
                )
                .query_with(
                    "limit",
                    "At most this many (default 100)",
                    blank(json!({"type": "integer", "minimum": 1, "maximum": MAX_PAGE})),
                )
                .returns::<TracePage>(200, "A page of traces")
                .error(400, &["bad_request"])
                .error(404, &["not_found"]),
        ),
        route(host, runner, "/conversations/{id}/turns/{turnId}/context", context).operation(
            conversation(
                Operation::new("Read what a turn offered the model: its system prompt and tools")
                    .id("getTurnContext")
                    .tag("traces"),
            )
            .path_param("turnId", "The turn's id")
            .returns::<TurnContext>(200, "The final system prompt (after every filter) and the tool list")
            .error(400, &["bad_request"])
            .error(404, &["not_found"]),
        ),
        route(host, runner, "/metrics/throughput", throughput).operation(
            Operation::new("Output tokens per second of generation, by model, over a period")
                .id("getThroughput")
                .tag("traces")
                .description(
                    "Periods in the server's local time zone: a day, the ISO week (Monday to Sunday) \
                     containing a day, or a month. Every sealed turn with a model is counted.",
                )
                .query_required("period", "day, week or month", json!({"type": "string", "enum": ["day", "week", "month"]}))
                .query_required(
                    "date",
                    "YYYY-MM-DD (day, week) or YYYY-MM (month)",
                    json!({"type": "string", "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01]))?$"}),
                )
                .returns::<Throughput>(200, "Per-model throughput, fastest first")
                .error(400, &["bad_request"])
                .error(502, &["aggregation_failed"]),
        ),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use dispatch_contracts::protocol::trace::ThroughputRow;

    #[test]
    fn throughput_ranks_fastest_first_then_by_name_rounded_to_hundredths() {
        let row = |m: &str, o, g| ThroughputRow { model: m.into(), output_tokens: o, gen_ms: g, turns: 1 };
        let ranked = rank(ThroughputList {
            models: vec![row("b", 100, 3000), row("a", 100, 3000), row("c", 1000, 3000), row("z", 5, 0)],
        });
        let got: Vec<(&str, f64)> = ranked.iter().map(|m| (m.model.as_str(), m.tokens_per_second)).collect();
        assert_eq!(got, [("c", 333.33), ("a", 33.33), ("b", 33.33)]);
    }
}
