//! # compaction — keep long conversations within their model's window
//!
//! WIRE.md's "Compaction": the old part of a conversation's history is
//! summarized by a model (one request, no tools), the whole log is kept in
//! a new archive conversation, and the conversation's own log becomes the
//! summary and the last messages — in one store transaction (the store's
//! `compact` op), so a crash leaves the old history or the new one, never a
//! mix. `conversation.compacted` tells the others (the session forgets
//! what it held; the WebSocket tells every client).
//!
//! By hand (`POST /conversations/:id/compact`) or automatically: when a
//! turn ends with its conversation settled and its last context size at or
//! over the conversation's threshold (`compact-percent`, default 85 % of
//! the model's context window, 0 = off).
//!
//! A *message* here is a run of one role's chunks. The kept part starts at
//! a message, and never at a tool result whose call would be summarized
//! away: the boundary moves earlier until it does not.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use dispatch_abi::runtime::{PluginRuntime, Runner};
use dispatch_abi::{Context, Error, Host, Plugin, PluginManifest};
use dispatch_contracts::catalog::{CatalogRequest, ModelList, Resolved, CATALOG};
use dispatch_contracts::compaction::{Compacted, CompactionRequest, InFlight, COMPACTED, COMPACTION};
use dispatch_contracts::http::{
    self, problem, HttpMethod, HttpRequest, HttpResponse, Problem, Route, RouteResult,
};
use dispatch_contracts::openapi::Operation;
use dispatch_contracts::protocol::store::{
    CompactRequest, Details, History, Messages, MetricsList, StoreRequest,
};
use dispatch_contracts::protocol::wire::{ConversationStatus, Role, StoredChunk, CONVERSATION_ID_PATTERN};
use dispatch_contracts::remote::{HostCaller, RemoteProvider};
use dispatch_contracts::session::{SessionRequest, StatusChanged, StatusInfo, SESSION, STATUS};
use dispatch_contracts::store::STORE;
use dispatch_kernel::protocol::BoxFuture;
use dispatch_kernel::provider::{Provider as _, ProviderEvent, ProviderOptions, StepRequest};
use dispatch_kernel::wire::{ChatMessage, Chunk};
use futures::StreamExt as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The threshold of a conversation that has none (percent of the window).
pub const DEFAULT_THRESHOLD: u64 = 85;
/// Messages kept by default.
pub const DEFAULT_KEEP: u64 = 10;
/// The store scope key of a conversation's threshold.
const THRESHOLD_KEY: &str = "compaction.threshold";
/// The summarizer's instruction, after the conversation's system prompt.
const INSTRUCTION: &str = "You are summarizing a conversation so that it can continue within a \
limited context. Write a concise summary that keeps every fact, decision, file path, open task \
and piece of code the conversation will need; leave out pleasantries. Answer with the summary only.";
/// The longest summary, in tokens (the original's bound).
const MAX_SUMMARY_TOKENS: u32 = 2000;
/// How much of a tool result the summarizer sees.
const RESULT_CHARS: usize = 200;

/// `[plugin.config]` of the compaction plugin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Automatic compaction after a turn (default on; a conversation's
    /// threshold 0 turns it off for that one).
    pub auto: bool,
    /// Messages kept by an automatic compaction (default 10).
    pub keep_last: u64,
    /// Worker threads of the plugin's runtime (default 1).
    pub workers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { auto: true, keep_last: DEFAULT_KEEP, workers: 1 }
    }
}

/// What compacting needs, shared by the routes and the automatic trigger.
struct Compactor {
    host: Host,
    /// Where a provider slot's release runs.
    runner: dispatch_abi::runtime::Runner,
    caller: Arc<HostCaller>,
    /// Conversations being compacted now: a second request is a `409`.
    running: Mutex<HashSet<String>>,
    keep_last: u64,
    /// Thresholds read so far (the store holds them; `PUT` updates both):
    /// asked at every tool-result boundary, so kept at hand.
    thresholds: Mutex<std::collections::HashMap<String, u64>>,
    /// The catalog's model info, and when it was read: listing asks every
    /// provider (an HTTP request to a server's `/models`), too much for
    /// every step.
    windows: Mutex<Option<(std::time::Instant, ModelList)>>,
}

/// How long the catalog's model info is kept.
const WINDOWS_KEPT: std::time::Duration = std::time::Duration::from_secs(60);

/// The answer of `POST /conversations/:id/compact`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct CompactAnswer {
    conversation_id: String,
    /// The archive holding the whole old history.
    new_conversation_id: String,
    messages_summarized: u64,
    messages_kept: u64,
}

/// The optional body of `POST /conversations/:id/compact`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CompactBody {
    /// Messages to keep after the summary (default 10; floored).
    #[serde(default)]
    keep_last_n: Option<f64>,
    /// The model that summarizes (default: the conversation's).
    #[serde(default)]
    model_name: Option<String>,
}

/// `GET`/`PUT /conversations/:id/compact-percent`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ThresholdAnswer {
    conversation_id: String,
    /// Percent of the model's context window at which the conversation is
    /// compacted automatically; 0: never.
    threshold: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct ThresholdBody {
    /// 0 to 100 (floored); 0 turns automatic compaction off.
    #[schemars(range(min = 0, max = 100))]
    threshold: f64,
}

/// A run of one role's chunks: what the summary counts as a message.
struct Group<'a> {
    role: Role,
    first_seq: u64,
    chunks: Vec<&'a StoredChunk>,
}

fn groups(chunks: &[StoredChunk]) -> Vec<Group<'_>> {
    let mut out: Vec<Group<'_>> = Vec::new();
    for c in chunks {
        match out.last_mut() {
            Some(g) if g.role == c.role => g.chunks.push(c),
            _ => out.push(Group { role: c.role, first_seq: c.seq, chunks: vec![c] }),
        }
    }
    out
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
        Role::System => "system",
    }
}

/// The summarizer's view of the old messages: `<role>: <text>` each, tool
/// calls as `[tool: <name>]`, results as their first 200 characters;
/// thinking, images and errors left out.
fn transcript(old: &[Group<'_>]) -> String {
    let mut parts = Vec::new();
    for g in old {
        let mut text = Vec::new();
        for c in &g.chunks {
            match &c.chunk {
                Chunk::Text { text: t } => text.push(t.clone()),
                Chunk::ToolCall { tool_name, .. } => text.push(format!("[tool: {tool_name}]")),
                Chunk::ToolResult { content, .. } => {
                    let head: String = content.chars().take(RESULT_CHARS).collect();
                    text.push(format!("[tool result: {head}]"));
                }
                _ => {}
            }
        }
        if !text.is_empty() {
            parts.push(format!("{}: {}", role_name(g.role), text.join("\n")));
        }
    }
    format!("Please summarize the following conversation:\n\n{}", parts.join("\n\n"))
}

impl Compactor {
    async fn store<T: serde::de::DeserializeOwned>(&self, request: StoreRequest) -> Result<T, Problem> {
        let v: Value = self.host.call(&STORE, &request).await.map_err(problem)?;
        serde_json::from_value(v)
            .map_err(|e| Problem::new(502, "bad_gateway", format!("the store answered: {e}")))
    }

    async fn catalog<T: serde::de::DeserializeOwned>(&self, request: CatalogRequest) -> Result<T, Error> {
        let v = self.host.call(&CATALOG, &request).await?;
        serde_json::from_value(v).map_err(|e| Error::new("plugin", format!("the catalog answered: {e}")))
    }

    async fn threshold(&self, id: &str) -> Result<u64, Problem> {
        if let Some(t) = self.thresholds.lock().unwrap_or_else(PoisonError::into_inner).get(id) {
            return Ok(*t);
        }
        let v: Value = self
            .store(StoreRequest::GetValue { scope: id.to_owned(), key: THRESHOLD_KEY.to_owned() })
            .await?;
        let t = v.as_u64().unwrap_or(DEFAULT_THRESHOLD);
        let mut known = self.thresholds.lock().unwrap_or_else(PoisonError::into_inner);
        // Bounded: an entry is cheap to read again.
        if known.len() >= 4096 {
            known.clear();
        }
        known.insert(id.to_owned(), t);
        Ok(t)
    }

    /// `model`'s context window, from the catalog's model info (read at
    /// most once a minute).
    async fn window(&self, model: &str) -> Result<Option<u64>, Problem> {
        let fresh = self
            .windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < WINDOWS_KEPT)
            .map(|(_, list)| list.model_info.get(model).and_then(|i| i.context_window));
        if let Some(w) = fresh {
            return Ok(w);
        }
        let list: ModelList = self.catalog(CatalogRequest::List).await.map_err(problem)?;
        let w = list.model_info.get(model).and_then(|i| i.context_window);
        *self.windows.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((std::time::Instant::now(), list));
        Ok(w)
    }

    /// Whether what is already known (the threshold, a fresh window) says
    /// `context` is under the threshold — no store or catalog call.
    fn surely_under(&self, id: &str, model: &str, context: u64) -> bool {
        let Some(threshold) = self.thresholds.lock().unwrap_or_else(PoisonError::into_inner).get(id).copied()
        else {
            return false;
        };
        if threshold == 0 || context == 0 {
            return true;
        }
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        match windows.as_ref().filter(|(at, _)| at.elapsed() < WINDOWS_KEPT) {
            Some((_, list)) => match list.model_info.get(model).and_then(|i| i.context_window) {
                Some(window) => context < window * threshold / 100,
                None => true,
            },
            None => false,
        }
    }

    /// Whether `context` tokens on `model` are past `id`'s threshold.
    async fn over_threshold(&self, id: &str, model: &str, context: u64) -> Result<bool, Problem> {
        let threshold = self.threshold(id).await?;
        if threshold == 0 || context == 0 {
            return Ok(false);
        }
        let Some(window) = self.window(model).await? else { return Ok(false) };
        Ok(context >= window * threshold / 100)
    }

    /// At a running turn's tool-result boundary: compact when past the
    /// threshold, and answer the history the turn goes on with.
    async fn in_flight(
        &self,
        id: &str,
        model: &str,
        context: u64,
    ) -> Result<Option<Vec<ChatMessage>>, Problem> {
        if !self.over_threshold(id, model, context).await? {
            return Ok(None);
        }
        tracing::info!(conversation = %id, context, "over the threshold mid-turn: compacting");
        self.compact(id, self.keep_last, Some(model.to_owned()), true).await?;
        let messages: Messages =
            self.store(StoreRequest::Messages { conversation_id: id.to_owned() }).await?;
        Ok(Some(messages.messages))
    }

    /// Compact `id`, keeping its last `keep` messages, summarized by
    /// `model` (else the conversation's, else the default).
    /// (`during_turn`: asked by the running turn itself, which is no
    /// reason to refuse.)
    async fn compact(
        &self,
        id: &str,
        keep: u64,
        model: Option<String>,
        during_turn: bool,
    ) -> Result<CompactAnswer, Problem> {
        {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            if !running.insert(id.to_owned()) {
                return Err(Problem::new(
                    409,
                    "conversation_active",
                    "conversation is already being compacted",
                ));
            }
        }
        let result = self.compact_now(id, keep, model, during_turn).await;
        self.running.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
        result
    }

    async fn compact_now(
        &self,
        id: &str,
        keep: u64,
        model: Option<String>,
        during_turn: bool,
    ) -> Result<CompactAnswer, Problem> {
        let details: Option<Details> =
            self.store(StoreRequest::Get { conversation_id: id.to_owned() }).await?;
        let Some(details) = details else {
            return Err(Problem::new(404, "not_found", format!("no conversation {id:?}")));
        };
        let status: Result<StatusInfo, Error> = self
            .host
            .call(&SESSION, &SessionRequest::Status { conversation_id: id.to_owned() })
            .await
            .and_then(|v| serde_json::from_value(v).map_err(|e| Error::new("plugin", e.to_string())));
        if !during_turn && status.is_ok_and(|s| s.is_active) {
            return Err(Problem::new(409, "conversation_active", "conversation is generating"));
        }
        let history: History = self
            .store(StoreRequest::History {
                conversation_id: id.to_owned(),
                since_seq: None,
                before_seq: None,
                limit: None,
            })
            .await?;
        let all = groups(&history.chunks);
        let n = all.len() as u64;
        if n <= keep {
            return Err(Problem::new(409, "too_short", "conversation too short to compact"));
        }
        // Never keep a tool result whose call would be summarized away.
        let mut boundary = (n - keep) as usize;
        while boundary > 0 && all[boundary].role == Role::Tool {
            boundary -= 1;
        }
        if boundary == 0 {
            return Err(Problem::new(409, "too_short", "conversation too short to compact"));
        }
        let model = model.or(details.model.clone());
        let resolved: Resolved = match self.catalog(CatalogRequest::Resolve { model: model.clone() }).await {
            Ok(r) => r,
            Err(e) if e.code() == "not_found" => {
                let name = model.unwrap_or_else(|| "(default)".to_owned());
                return Err(Problem::new(409, "unknown_model", format!("unknown model: {name}")));
            }
            Err(e) => return Err(problem(e)),
        };
        let summary = self
            .summarize(
                &resolved,
                details.system_prompt.as_deref(),
                &all[..boundary],
                id,
                &details.meta.workspace_id,
            )
            .await?;
        let archive_id = uuid::Uuid::new_v4().to_string();
        let request = CompactRequest {
            conversation_id: id.to_owned(),
            archive_id: archive_id.clone(),
            summary,
            keep_from_seq: all[boundary].first_seq,
            expect_latest_seq: history.latest_seq,
        };
        match self.host.call(&STORE, &StoreRequest::Compact(request)).await {
            Ok(_) => {}
            // Appended to since it was read: a turn started.
            Err(e) if e.code() == "conflict" => {
                return Err(Problem::new(409, "conversation_active", "conversation is generating"))
            }
            Err(e) => return Err(problem(e)),
        }
        let notice = Compacted {
            conversation_id: id.to_owned(),
            new_conversation_id: archive_id.clone(),
            messages_summarized: boundary as u64,
            messages_kept: n - boundary as u64,
        };
        if let Err(e) = self.host.publish(&COMPACTED, &notice) {
            tracing::warn!(error = %e, conversation = %id, "cannot announce a compaction");
        }
        tracing::info!(conversation = %id, archive = %archive_id, summarized = boundary, kept = n - boundary as u64, "compacted");
        Ok(CompactAnswer {
            conversation_id: id.to_owned(),
            new_conversation_id: archive_id,
            messages_summarized: notice.messages_summarized,
            messages_kept: notice.messages_kept,
        })
    }

    /// One provider request, no tools: the summary of `old`.
    async fn summarize(
        &self,
        resolved: &Resolved,
        prompt: Option<&str>,
        old: &[Group<'_>],
        conversation_id: &str,
        workspace_id: &str,
    ) -> Result<String, Problem> {
        // A summary generates tokens: it takes a slot of its provider like
        // a turn's step (announcing nothing: the turn, if any, does).
        let runner = self.runner.clone();
        let provider = dispatch_contracts::gate::Gated::new(
            RemoteProvider::new(Arc::clone(&self.caller), resolved, None),
            self.host.clone(),
            Arc::new(move |f| runner.spawn(f)),
            &resolved.model,
            conversation_id,
            workspace_id,
            Arc::new(|_| {}),
        );
        let system = match prompt {
            Some(p) if !p.trim().is_empty() => format!("{p}\n\n{INSTRUCTION}"),
            _ => INSTRUCTION.to_owned(),
        };
        let options = ProviderOptions {
            model: Some(resolved.model.clone()),
            system_prompt: Some(system),
            reasoning_effort: None,
            max_output_tokens: Some(MAX_SUMMARY_TOKENS),
        };
        let messages = vec![ChatMessage { role: Role::User, chunks: vec![Chunk::text(transcript(old))] }];
        let request = StepRequest { messages: &messages, tools: &[], options: &options };
        let mut stream = provider.stream(request);
        let mut text = String::new();
        while let Some(event) = stream.next().await {
            match event {
                Ok(ProviderEvent::TextDelta(d)) => text.push_str(&d),
                Ok(ProviderEvent::Finish(_)) => break,
                Ok(_) => {}
                Err(e) => return Err(Problem::new(502, "provider_error", e.message)),
            }
        }
        let text = text.trim().to_owned();
        if text.is_empty() {
            return Err(Problem::new(409, "empty_summary", "model produced empty summary"));
        }
        Ok(text)
    }

    /// After a turn: compact when the conversation's last context size is
    /// at or over its threshold of the model's window. Quietly nothing when
    /// the threshold is 0, the window is unknown, or no turn was measured.
    async fn after_turn(&self, id: &str) -> Result<(), Problem> {
        let metrics: MetricsList =
            self.store(StoreRequest::Metrics { conversation_id: id.to_owned() }).await?;
        let Some(context) = metrics.turns.last().and_then(|t| t.context_size).filter(|c| *c > 0) else {
            return Ok(());
        };
        // The turn's model: the conversation's, else the default.
        let details: Option<Details> =
            self.store(StoreRequest::Get { conversation_id: id.to_owned() }).await?;
        let asked = details.and_then(|d| d.model);
        let Ok(resolved) = self.catalog::<Resolved>(CatalogRequest::Resolve { model: asked }).await else {
            return Ok(());
        };
        if !self.over_threshold(id, &resolved.model, context).await? {
            return Ok(());
        }
        tracing::info!(conversation = %id, context, "over the threshold: compacting");
        self.compact(id, self.keep_last, Some(resolved.model), false).await.map(|_| ())
    }
}

fn conversation_id(req: &HttpRequest) -> Result<String, Problem> {
    req.conversation_id("id")
}

fn id_op(summary: &str, op_id: &str) -> Operation {
    Operation::new(summary)
        .id(op_id)
        .tag("compaction")
        .path_param_with(
            "id",
            "The conversation's id",
            json!({"type": "string", "pattern": CONVERSATION_ID_PATTERN}),
        )
        .error(400, &["bad_request"])
}

fn routes(c: &Arc<Compactor>, runner: &Runner) -> Vec<Route> {
    let (c1, r1) = (Arc::clone(c), runner.clone());
    let compact = Route::new(HttpMethod::Post, "/conversations/{id}/compact", move |req| {
        let c = Arc::clone(&c1);
        // On our runtime: the summary request needs tokio.
        let answer = r1.run(async move {
            let answer: RouteResult = async {
                let id = conversation_id(&req)?;
                // Absent or not an object: the defaults (as the original).
                let body: CompactBody = req
                    .body
                    .as_ref()
                    .filter(|b| b.is_object())
                    .and_then(|b| CompactBody::deserialize(b).ok())
                    .unwrap_or_default();
                let keep = body
                    .keep_last_n
                    .filter(|k| k.is_finite() && *k >= 1.0)
                    .map_or(DEFAULT_KEEP, |k| k as u64);
                let model = body.model_name.map(|m| m.trim().to_owned()).filter(|m| !m.is_empty());
                Ok(HttpResponse::ok(&c.compact(&id, keep, model, false).await?))
            }
            .await;
            Ok::<_, Error>(answer)
        });
        async move { answer.await.unwrap_or_else(|e| Err(problem(e))) }
    })
    .operation(
        id_op(
            "Summarize the old part of a conversation and archive its whole history",
            "compactConversation",
        )
        // Any body is taken (WIRE.md: an absent or invalid body, or field,
        // means the defaults), so the document constrains none: a schema
        // here would call valid what the server rightly accepts "invalid".
        .body_with(
            json!({
                "description": "Optional `{keepLastN?: number, modelName?: string}`; an absent or invalid body, or field, takes the defaults (10; the conversation's model)",
                "examples": [{"keepLastN": 10}, {"keepLastN": 4, "modelName": "openrouter/deepseek/deepseek-chat"}]
            }),
            false,
        )
        .returns::<CompactAnswer>(200, "The archive's id and what was summarized and kept")
        .error(404, &["not_found"])
        .error(409, &["conversation_active", "too_short", "unknown_model", "empty_summary"])
        .error(502, &["provider_error"]),
    );
    let c2 = Arc::clone(c);
    let get = Route::new(HttpMethod::Get, "/conversations/{id}/compact-percent", move |req| {
        let c = Arc::clone(&c2);
        async move {
            let id = conversation_id(&req)?;
            let threshold = c.threshold(&id).await?;
            Ok(HttpResponse::ok(&ThresholdAnswer { conversation_id: id, threshold }))
        }
    })
    .operation(
        id_op("Read the conversation's automatic compaction threshold", "getCompactPercent")
            .returns::<ThresholdAnswer>(200, "The threshold (85 when never set)"),
    );
    let c3 = Arc::clone(c);
    let put = Route::new(HttpMethod::Put, "/conversations/{id}/compact-percent", move |req| {
        let c = Arc::clone(&c3);
        async move {
            let id = conversation_id(&req)?;
            let b: ThresholdBody = req.body_as()?;
            if !b.threshold.is_finite() || b.threshold < 0.0 || b.threshold > 100.0 {
                return Err(Problem::bad_request("threshold must be a non-negative number of at most 100"));
            }
            let threshold = b.threshold.floor() as u64;
            let put = StoreRequest::PutValue {
                scope: id.clone(),
                key: THRESHOLD_KEY.to_owned(),
                value: json!(threshold),
            };
            c.store::<Value>(put).await?;
            c.thresholds.lock().unwrap_or_else(PoisonError::into_inner).insert(id.clone(), threshold);
            Ok(HttpResponse::ok(&ThresholdAnswer { conversation_id: id, threshold }))
        }
    })
    .operation(
        id_op("Set the conversation's automatic compaction threshold", "setCompactPercent")
            .body::<ThresholdBody>()
            .returns::<ThresholdAnswer>(200, "The threshold kept"),
    );
    vec![compact, get, put]
}

/// The plugin.
#[derive(Debug)]
pub struct CompactionPlugin {
    runtime: PluginRuntime,
}

impl Plugin for CompactionPlugin {
    fn manifest() -> PluginManifest {
        http::declare_routes(
            PluginManifest::new("compaction", env!("CARGO_PKG_VERSION"))
                .description("Summarizes the old part of long conversations and archives their history")
                .depends_on(STORE.name())
                .depends_on("models")
                .depends_on("session")
                .provides("service", COMPACTION.name()),
        )
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let config: Config = ctx.config()?;
        let host = ctx.host().clone();
        let runtime = PluginRuntime::new("compaction", config.workers.max(1))?;
        let compactor = Arc::new(Compactor {
            host: host.clone(),
            runner: runtime.runner(),
            caller: Arc::new(HostCaller(host.clone())),
            running: Mutex::default(),
            keep_last: config.keep_last.max(1),
            thresholds: Mutex::default(),
            windows: Mutex::default(),
        });
        http::serve_all(&host, routes(&compactor, &runtime.runner()))?;
        let (c, runner) = (Arc::clone(&compactor), runtime.runner());
        host.provide(&COMPACTION, move |request: CompactionRequest| -> BoxFuture<Result<InFlight, Error>> {
            // Asked at every tool-result boundary of every turn: answered
            // on the spot when what is known says "not yet".
            if let CompactionRequest::InFlight { conversation_id, model, context_size } = &request {
                if c.surely_under(conversation_id, model, *context_size) {
                    return Box::pin(std::future::ready(Ok(InFlight::default())));
                }
            }
            let c = Arc::clone(&c);
            Box::pin(runner.run(async move {
                match request {
                    CompactionRequest::InFlight { conversation_id, model, context_size } => {
                        let history = match c.in_flight(&conversation_id, &model, context_size).await {
                            Ok(h) => h,
                            // The turn goes on uncompacted.
                            Err(p) => {
                                tracing::warn!(conversation = %conversation_id, error = %p, "compaction mid-turn failed");
                                None
                            }
                        };
                        Ok(InFlight { history })
                    }
                    other => Err(Error::new("unsupported", format!("the compaction service does not know {other:?}"))),
                }
            }))
        })?;
        if config.auto {
            let (c, runner) = (Arc::clone(&compactor), runtime.runner());
            host.subscribe_sync(&STATUS, move |s: StatusChanged| {
                // A turn ended and nothing carried on: the conversation
                // settled.
                if s.status == ConversationStatus::Idle {
                    let c = Arc::clone(&c);
                    runner.spawn(async move {
                        if let Err(p) = c.after_turn(&s.conversation_id).await {
                            if p.status != 409 {
                                tracing::warn!(conversation = %s.conversation_id, error = %p, "automatic compaction failed");
                            }
                        }
                    });
                }
                Ok(())
            })?;
        }
        Ok(CompactionPlugin { runtime })
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        self.runtime.shutdown(std::time::Duration::from_secs(2));
        Ok(())
    }
}

dispatch_abi::export_plugin!(CompactionPlugin);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn chunk(seq: u64, role: Role, chunk: Chunk) -> StoredChunk {
        StoredChunk { seq, role, chunk }
    }

    #[test]
    fn the_transcript_names_roles_tools_and_the_head_of_results() {
        let chunks = vec![
            chunk(1, Role::User, Chunk::text("read it")),
            chunk(2, Role::Assistant, Chunk::Thinking { text: "hmm".into() }),
            chunk(
                3,
                Role::Assistant,
                Chunk::ToolCall {
                    tool_call_id: "c".into(),
                    tool_name: "read_file".into(),
                    input: json!({}),
                    step_id: None,
                },
            ),
            chunk(
                4,
                Role::Tool,
                Chunk::ToolResult {
                    tool_call_id: "c".into(),
                    tool_name: "read_file".into(),
                    content: "x".repeat(500),
                    is_error: false,
                    step_id: None,
                },
            ),
        ];
        let g = groups(&chunks);
        assert_eq!(g.len(), 3);
        assert_eq!(g[2].first_seq, 4);
        let t = transcript(&g);
        assert!(t.starts_with("Please summarize the following conversation:\n\nuser: read it\n\nassistant: [tool: read_file]"), "{t}");
        assert!(t.contains(&format!("tool: [tool result: {}]", "x".repeat(200))), "{t}");
        assert!(!t.contains("hmm") && !t.contains(&"x".repeat(201)));
    }
}
