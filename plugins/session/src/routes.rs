//! The session's HTTP routes (WIRE.md "HTTP endpoints"): `POST /chat` and
//! the conversation routes, contributed to `transport-http` through
//! `dispatch_contracts::http`. They live here, beside the turns they start
//! and read, so the transport knows no route of its own beyond its
//! transport concerns.

use std::sync::Arc;

use dispatch_abi::{Error, Host};
use dispatch_contracts::catalog::{CatalogRequest, CATALOG};
use dispatch_contracts::http::{
    problem, HttpMethod, HttpRequest, HttpResponse, Problem, Route, RouteResult, StreamBatch,
};
use dispatch_contracts::openapi::Operation;
use dispatch_contracts::protocol::session::{
    Aborted, ChatRequest, ConversationRef, EventBatch, LastAnswer, Queued, SessionRequest, Started,
    StatusInfo, Unqueued, WireVersion,
};
use dispatch_contracts::protocol::store::{Details, History, Listing, MetaUpdate, MetricsList, StoreRequest};
use dispatch_contracts::protocol::wire::{
    bounded_title, AgentEvent, ConversationStatus, ReasoningEffort, CONVERSATION_ID_PATTERN,
};
use dispatch_contracts::store::STORE;
use dispatch_contracts::workspace::is_valid_slug;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::Session;

/// What every handler holds.
#[derive(Debug, Clone)]
struct Ctx {
    session: Arc<Session>,
    host: Host,
}

impl Ctx {
    /// A session answer, decoded into `T`.
    async fn session<T: serde::de::DeserializeOwned>(&self, request: SessionRequest) -> Result<T, Problem> {
        let raw = Arc::clone(&self.session).handle(request).await.map_err(problem)?;
        serde_json::from_str(raw.get()).map_err(unexpected)
    }

    async fn store<T: serde::de::DeserializeOwned>(&self, request: StoreRequest) -> Result<T, Problem> {
        let v: Value = self.host.call(&STORE, &request).await.map_err(problem)?;
        serde_json::from_value(v).map_err(unexpected)
    }

    async fn details(&self, id: &str) -> Result<Option<Details>, Problem> {
        self.store(StoreRequest::Get { conversation_id: id.to_owned() }).await
    }
}

fn unexpected(e: serde_json::Error) -> Problem {
    Problem::new(502, "bad_gateway", format!("a plugin answered an unexpected shape: {e}"))
}

/// The conversation id of the path, checked.
fn conversation_id(req: &HttpRequest) -> Result<String, Problem> {
    req.conversation_id("id")
}

/// The wire shape of `GET /conversations/:id/status`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct StatusBody {
    conversation_id: String,
    is_active: bool,
    status: ConversationStatus,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct QueueBody {
    /// The message.
    #[schemars(pattern(r"\S"))]
    text: String,
    /// The workspace of a conversation this creates.
    #[serde(default)]
    workspace_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct TitleBody {
    /// The title (non-empty after trimming).
    #[schemars(pattern(r"\S"))]
    title: String,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct TitleAnswer {
    conversation_id: String,
    title: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct ModelBody {
    /// `<credential>/<model>`; `null` or `""` clears. Must be present.
    #[serde(deserialize_with = "present")]
    #[schemars(required, schema_with = "nullable_string")]
    model: Option<String>,
}

fn nullable_string(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": ["string", "null"]})
}

/// An `Option` field that must be present (`null` allowed): without a
/// `#[serde(default)]`, serde reports it missing instead of taking `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ModelAnswer {
    conversation_id: String,
    model: Option<String>,
}

/// `PUT …/cwd`'s body, for the OpenAPI document (the handler reads the
/// fields itself, to answer WIRE.md's messages).
#[derive(Debug, JsonSchema)]
#[allow(dead_code)]
#[schemars(rename_all = "camelCase")]
struct CwdBody {
    /// The working directory, kept as sent: a relative one is taken from
    /// the workspace's `defaultCwd` (DELETE clears it).
    #[schemars(pattern(r"\S"))]
    cwd: String,
    /// Move the conversation to this workspace (created if missing).
    #[schemars(pattern(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$"))]
    workspace_id: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct CwdAnswer {
    conversation_id: String,
    cwd: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct EffortBody {
    reasoning_effort: ReasoningEffort,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct EffortAnswer {
    conversation_id: String,
    /// `null`: the default (`high`).
    reasoning_effort: Option<ReasoningEffort>,
}

/// What `POST /chat` hands the transport to pull the turn's events with.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChatStream {
    conversation_id: String,
    turn_id: String,
    wire: String,
}

const ID: &str = "The conversation's id (1-128 of A-Z a-z 0-9 . _ - : @)";

/// `?status=`: a comma-separated list of statuses (blanks between commas
/// are skipped).
const STATUS_LIST: &str = r"^\s*((active|queued|idle|closed)\s*)?(,\s*((active|queued|idle|closed)\s*)?)*$";
const TAG: &str = "conversations";

fn op(summary: &str, id: &str) -> Operation {
    Operation::new(summary).id(id).tag(TAG)
}

fn conv_op(summary: &str, id: &str) -> Operation {
    op(summary, id)
        .path_param_with("id", ID, json!({"type": "string", "pattern": CONVERSATION_ID_PATTERN}))
        .error(400, &["bad_request"])
}

/// Every route of the session.
pub fn routes(session: Arc<Session>, host: Host) -> Vec<Route> {
    let ctx = Ctx { session, host };
    let mut routes = Vec::new();
    let mut add =
        |method: HttpMethod,
         path: &str,
         operation: Operation,
         handler: fn(Ctx, HttpRequest) -> dispatch_contracts::protocol::BoxFuture<RouteResult>| {
            let c = ctx.clone();
            routes.push(Route::new(method, path, move |req| handler(c.clone(), req)).operation(operation));
        };
    use HttpMethod::{Delete, Get, Post, Put};

    add(
        Get,
        "/conversations",
        op("List conversations, newest activity first", "listConversations")
            .query::<String>("q", "Only ids starting with this")
            .query_with(
                "status",
                "Only these statuses, comma separated: active, queued, idle, closed",
                json!({"type": "string", "pattern": STATUS_LIST}),
            )
            .query::<String>("workspaceId", "Only this workspace's")
            .returns::<Listing>(200, "The conversations")
            .error(400, &["bad_request"]),
        |c, req| Box::pin(async move { list(&c, &req).await }),
    );
    add(
        Get,
        "/conversations/{id}",
        conv_op("Read a window of a conversation's history", "getHistory")
            .query_number("sinceSeq", "Only chunks after this seq", 0)
            .query_number("beforeSeq", "Only chunks before this seq", 1)
            .query_number("limit", "The newest this many of the selection", 1)
            .returns::<History>(200, "The chunks, ascending, and the latest seq"),
        |c, req| {
            Box::pin(async move {
                let id = conversation_id(&req)?;
                let request = StoreRequest::History {
                    conversation_id: id,
                    since_seq: req.query_number("sinceSeq", 0)?,
                    before_seq: req.query_number("beforeSeq", 1)?,
                    limit: req.query_number("limit", 1)?,
                };
                Ok(HttpResponse::ok(&c.store::<Value>(request).await?))
            })
        },
    );
    add(
        Get,
        "/conversations/{id}/metrics",
        conv_op("Read a conversation's per-turn metrics", "getMetrics")
            .returns::<MetricsList>(200, "Each turn's metrics, in order"),
        |c, req| {
            Box::pin(async move {
                let id = conversation_id(&req)?;
                Ok(HttpResponse::ok(&c.store::<Value>(StoreRequest::Metrics { conversation_id: id }).await?))
            })
        },
    );
    add(
        Get,
        "/conversations/{id}/status",
        conv_op("Read whether a conversation is running a turn", "getStatus")
            .returns::<StatusBody>(200, "Its status")
            .error(404, &["not_found"]),
        |c, req| {
            Box::pin(async move {
                let id = conversation_id(&req)?;
                let s: StatusInfo = c.session(SessionRequest::Status { conversation_id: id }).await?;
                Ok(HttpResponse::ok(&StatusBody {
                    conversation_id: s.conversation_id,
                    is_active: s.is_active,
                    status: s.status,
                }))
            })
        },
    );
    add(
        Get,
        "/conversations/{id}/last",
        conv_op("Read the last assistant text (waits up to 60 s for a running turn)", "getLast")
            .returns::<LastAnswer>(200, "The last assistant text"),
        |c, req| {
            Box::pin(async move {
                let id = conversation_id(&req)?;
                let r = SessionRequest::Last { conversation_id: id, wait_ms: None };
                Ok(HttpResponse::ok(&c.session::<Value>(r).await?))
            })
        },
    );
    add(
        Post,
        "/conversations/{id}/stop",
        conv_op("Abort the running turn", "stopTurn").returns::<Aborted>(200, "Whether a turn was aborted"),
        |c, req| {
            Box::pin(async move {
                let id = conversation_id(&req)?;
                Ok(HttpResponse::ok(&c.session::<Value>(SessionRequest::Stop { conversation_id: id }).await?))
            })
        },
    );
    add(
        Post,
        "/conversations/{id}/close",
        conv_op("Abort the running turn and mark the conversation closed", "closeConversation")
            .returns::<Aborted>(200, "Whether a turn was aborted"),
        |c, req| {
            Box::pin(async move {
                let id = conversation_id(&req)?;
                Ok(HttpResponse::ok(
                    &c.session::<Value>(SessionRequest::Close { conversation_id: id }).await?,
                ))
            })
        },
    );
    add(
        Post,
        "/conversations/{id}/open",
        conv_op("Ask the frontends to open the conversation", "openConversation")
            .returns::<ConversationRef>(200, "The conversation"),
        |c, req| {
            Box::pin(async move {
                let id = conversation_id(&req)?;
                Ok(HttpResponse::ok(&c.session::<Value>(SessionRequest::Open { conversation_id: id }).await?))
            })
        },
    );
    add(
        Post,
        "/conversations/{id}/queue",
        conv_op("Queue a message for the running turn (starts one when idle)", "queueMessage")
            .body::<QueueBody>()
            .returns::<Queued>(200, "Whether a turn started, and the queue")
            .error(413, &["payload_too_large"])
            .error(409, &["conflict"]),
        |c, req| {
            Box::pin(async move {
                let id = conversation_id(&req)?;
                let b: QueueBody = req.body_as()?;
                let r =
                    SessionRequest::Queue { conversation_id: id, text: b.text, workspace_id: b.workspace_id };
                Ok(HttpResponse::ok(&c.session::<Value>(r).await?))
            })
        },
    );
    add(
        Delete,
        "/conversations/{id}/queue/{messageId}",
        conv_op("Cancel a queued message", "unqueueMessage")
            .path_param("messageId", "The queued message's id")
            .returns::<Unqueued>(200, "Whether it was cancelled, and the queue"),
        |c, req| {
            Box::pin(async move {
                let r = SessionRequest::Unqueue {
                    conversation_id: conversation_id(&req)?,
                    message_id: req.param("messageId").unwrap_or_default().to_owned(),
                };
                Ok(HttpResponse::ok(&c.session::<Value>(r).await?))
            })
        },
    );
    add(
        Put,
        "/conversations/{id}/title",
        conv_op("Rename a conversation", "setTitle")
            .body::<TitleBody>()
            .returns::<TitleAnswer>(200, "The title kept"),
        |c, req| {
            Box::pin(async move {
                let id = conversation_id(&req)?;
                let b: TitleBody = req.body_as()?;
                let title = bounded_title(&b.title);
                if title.is_empty() {
                    return Err(Problem::bad_request("the title is empty"));
                }
                let update = MetaUpdate {
                    conversation_id: id.clone(),
                    title: Some(title.clone()),
                    ..MetaUpdate::default()
                };
                c.store::<Value>(StoreRequest::Update(update)).await?;
                Ok(HttpResponse::ok(&TitleAnswer { conversation_id: id, title }))
            })
        },
    );
    add(
        Get,
        "/conversations/{id}/model",
        conv_op("Read the conversation's model", "getModel")
            .returns::<ModelAnswer>(200, "Its model (null: the default)"),
        |c, req| {
            Box::pin(async move {
                let id = conversation_id(&req)?;
                let model = c.details(&id).await?.and_then(|d| d.model);
                Ok(HttpResponse::ok(&ModelAnswer { conversation_id: id, model }))
            })
        },
    );
    add(
        Put,
        "/conversations/{id}/model",
        conv_op("Set the conversation's model", "setModel")
            .body::<ModelBody>()
            .returns::<ModelAnswer>(200, "The model kept")
            .error(400, &["unknown_model"]),
        |c, req| Box::pin(async move { set_model(&c, &req).await }),
    );
    add(
        Get,
        "/conversations/{id}/cwd",
        conv_op("Read the conversation's working directory", "getCwd")
            .returns::<CwdAnswer>(200, "Its directory"),
        |c, req| {
            Box::pin(async move {
                let id = conversation_id(&req)?;
                let cwd = c.details(&id).await?.and_then(|d| d.cwd);
                Ok(HttpResponse::ok(&CwdAnswer { conversation_id: id, cwd }))
            })
        },
    );
    add(
        Put,
        "/conversations/{id}/cwd",
        conv_op("Set the conversation's working directory, or move it to a workspace", "setCwd")
            .body::<CwdBody>()
            .returns::<CwdAnswer>(200, "The directory kept, as sent")
            .error(400, &["invalid_body", "invalid_slug"]),
        |c, req| {
            Box::pin(async move {
                let id = conversation_id(&req)?;
                let body = req.body.as_ref().and_then(Value::as_object);
                let field = |name: &str| body.and_then(|b| b.get(name));
                let cwd = field("cwd").and_then(Value::as_str).map(str::trim).filter(|c| !c.is_empty());
                let Some(cwd) = cwd.map(str::to_owned) else {
                    return Err(Problem::new(
                        400,
                        "invalid_body",
                        "Field 'cwd' is required and must be a non-empty string",
                    ));
                };
                // With a workspace: the conversation moves there (both are
                // created if missing; the store does it in one update).
                let workspace_id = match field("workspaceId") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(w)) if is_valid_slug(w) => Some(w.clone()),
                    Some(_) => return Err(Problem::new(400, "invalid_slug", "Invalid workspaceId")),
                };
                let update = MetaUpdate {
                    conversation_id: id.clone(),
                    cwd: Some(Some(cwd.clone())),
                    workspace_id,
                    ..MetaUpdate::default()
                };
                c.store::<Value>(StoreRequest::Update(update)).await?;
                Ok(HttpResponse::ok(&CwdAnswer { conversation_id: id, cwd: Some(cwd) }))
            })
        },
    );
    add(
        Delete,
        "/conversations/{id}/cwd",
        conv_op("Clear the conversation's working directory", "clearCwd")
            .returns::<CwdAnswer>(200, "Cleared"),
        |c, req| {
            Box::pin(async move {
                let id = conversation_id(&req)?;
                let update =
                    MetaUpdate { conversation_id: id.clone(), cwd: Some(None), ..MetaUpdate::default() };
                c.store::<Value>(StoreRequest::Update(update)).await?;
                Ok(HttpResponse::ok(&CwdAnswer { conversation_id: id, cwd: None }))
            })
        },
    );
    add(
        Get,
        "/conversations/{id}/reasoning-effort",
        conv_op("Read the conversation's reasoning effort", "getReasoningEffort")
            .returns::<EffortAnswer>(200, "Its effort (null: the default, high)"),
        |c, req| {
            Box::pin(async move {
                let id = conversation_id(&req)?;
                let reasoning_effort = c.details(&id).await?.and_then(|d| d.reasoning_effort);
                Ok(HttpResponse::ok(&EffortAnswer { conversation_id: id, reasoning_effort }))
            })
        },
    );
    add(
        Put,
        "/conversations/{id}/reasoning-effort",
        conv_op("Set the conversation's reasoning effort", "setReasoningEffort")
            .body::<EffortBody>()
            .returns::<EffortAnswer>(200, "The effort kept"),
        |c, req| {
            Box::pin(async move {
                let id = conversation_id(&req)?;
                let b: EffortBody = req.body_as()?;
                let update = MetaUpdate {
                    conversation_id: id.clone(),
                    reasoning_effort: Some(Some(b.reasoning_effort)),
                    ..MetaUpdate::default()
                };
                c.store::<Value>(StoreRequest::Update(update)).await?;
                Ok(HttpResponse::ok(&EffortAnswer {
                    conversation_id: id,
                    reasoning_effort: Some(b.reasoning_effort),
                }))
            })
        },
    );

    let (c, p) = (ctx.clone(), ctx);
    routes.push(
        Route::new(HttpMethod::Post, "/chat", move |req| {
            let c = c.clone();
            async move { chat(&c, &req).await }
        })
        .streaming(move |stream, from| {
            let p = p.clone();
            async move { pull(&p, stream, from).await }
        })
        .operation(
            Operation::new("Start a turn and stream its events")
                .id("chat")
                .tag("chat")
                .description("One `AgentEvent` JSON per line, flushed as produced; the stream ends after `turn-sealed`. A client that leaves does not abort the turn.")
                .query_with(
                    "wire",
                    "The event format: `latest` (default), or a version: `0.1` (and older) leaves out the newer event types, any newer one is `latest`",
                    json!({"type": "string", "pattern": "^\\s*(latest|[0-9]+\\.[0-9]+)\\s*$"}),
                )
                .body::<ChatRequest>()
                .returns_ndjson::<AgentEvent>("The turn's events, one per line")
                .response_header(200, "X-Conversation-Id", "The conversation (minted when the request had none)")
                .error(400, &["bad_request", "unknown_model", "invalid_input"])
                .error(409, &["conflict"])
                .error(413, &["payload_too_large"]),
        ),
    );
    routes
}

async fn list(c: &Ctx, req: &HttpRequest) -> RouteResult {
    let prefix = req.query("q").map(str::trim).filter(|q| !q.is_empty()).map(str::to_owned);
    let mut statuses = Vec::new();
    if let Some(s) = req.query("status") {
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let status: ConversationStatus =
                serde_json::from_value(Value::String(part.to_owned())).map_err(|_| {
                    Problem::bad_request(format!(
                        "unknown status {part:?}; use active, queued, idle or closed"
                    ))
                })?;
            statuses.push(status);
        }
    }
    let workspace = req.query("workspaceId").map(str::trim).filter(|w| !w.is_empty());
    let listing: Listing = c.store(StoreRequest::List { prefix, status: None }).await?;
    let conversations: Vec<_> = listing
        .conversations
        .into_iter()
        .filter(|m| statuses.is_empty() || statuses.contains(&m.status))
        .filter(|m| workspace.is_none_or(|w| m.workspace_id == w))
        .collect();
    Ok(HttpResponse::ok(&Listing { conversations }))
}

async fn set_model(c: &Ctx, req: &HttpRequest) -> RouteResult {
    let id = conversation_id(req)?;
    let b: ModelBody = req.body_as()?;
    let model = b.model.map(|m| m.trim().to_owned()).filter(|m| !m.is_empty());
    if let Some(m) = &model {
        // A model no provider serves would be accepted here and then refuse
        // every turn of the conversation (its queue stalled): refuse it
        // now, as `POST /chat` does.
        let resolve = CatalogRequest::Resolve { model: Some(m.clone()) };
        match c.host.call(&CATALOG, &resolve).await {
            Ok(_) => {}
            Err(e) if e.code() == "not_found" => return Err(Problem::new(400, "unknown_model", e.message())),
            Err(e) => return Err(problem(e)),
        }
    }
    let update =
        MetaUpdate { conversation_id: id.clone(), model: Some(model.clone()), ..MetaUpdate::default() };
    c.store::<Value>(StoreRequest::Update(update)).await?;
    Ok(HttpResponse::ok(&ModelAnswer { conversation_id: id, model }))
}

async fn chat(c: &Ctx, req: &HttpRequest) -> RouteResult {
    let wire = match req.query("wire") {
        Some(w) => WireVersion::parse(w)
            .ok_or_else(|| Problem::bad_request(format!("unknown wire version {w:?}")))?,
        None => WireVersion::default(),
    };
    let request: ChatRequest = req.body_as()?;
    let started: Started = c.session(SessionRequest::Chat { request }).await?;
    let wire = match wire {
        WireVersion::V0_1 => "0.1",
        _ => "latest",
    };
    let stream = ChatStream {
        conversation_id: started.conversation_id.clone(),
        turn_id: started.turn_id,
        wire: wire.to_owned(),
    };
    let stream = serde_json::to_value(&stream).map_err(|e| Problem::new(500, "internal", e.to_string()))?;
    Ok(HttpResponse::ndjson(stream).header("x-conversation-id", &started.conversation_id))
}

async fn pull(c: &Ctx, stream: Value, from: u64) -> Result<StreamBatch, Error> {
    let s: ChatStream = serde_json::from_value(stream)
        .map_err(|e| Error::new(dispatch_abi::codes::INVALID_PAYLOAD, format!("not a chat stream: {e}")))?;
    let request = SessionRequest::Events {
        conversation_id: s.conversation_id,
        turn_id: s.turn_id,
        from,
        wire: Some(s.wire),
        wait_ms: None,
    };
    let raw = Arc::clone(&c.session).handle(request).await?;
    let batch: EventBatch = serde_json::from_str(raw.get())
        .map_err(|e| Error::new(dispatch_abi::codes::INVALID_PAYLOAD, format!("an event batch: {e}")))?;
    Ok(StreamBatch { lines: batch.events, next: batch.next, ended: batch.sealed })
}
