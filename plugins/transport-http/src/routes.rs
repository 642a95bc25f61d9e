//! The routes of `WIRE.md`, each a thin adapter onto a bus service.

use std::convert::Infallible;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use dispatch_abi::Host;
use dispatch_contracts::catalog::{CatalogRequest, CATALOG};
use dispatch_contracts::mcp::SERVERS as MCP_SERVERS;
use dispatch_contracts::plugins::PLUGINS;
use dispatch_contracts::prompt::{PromptRequest, PROMPT};
use dispatch_contracts::protocol::wire::{
    is_valid_conversation_id, ConversationStatus, ReasoningEffort, CONVERSATION_ID_RULE,
};
use dispatch_contracts::session::{
    self, ChatRequest, EventBatch, SessionRequest, Started, StatusInfo, WireVersion,
};
use dispatch_contracts::store::{Details, Listing, MetaUpdate, StoreRequest, STORE};
use futures::SinkExt as _;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{
    full, json, parse, percent_decode, query_get, query_number, query_pairs, read_body, Failure, Reply,
};

/// What every handler shares.
#[derive(Debug)]
pub struct App {
    /// The bus.
    pub host: Host,
    /// Largest request body.
    pub max_body: usize,
    /// Longest a client may take to send its body.
    pub body_timeout: std::time::Duration,
    /// The wire version of clients that do not ask.
    pub default_wire: WireVersion,
    /// The static frontend, when configured.
    pub web_dir: Option<PathBuf>,
    /// Starts the NDJSON pumps.
    pub runner: dispatch_abi::runtime::Runner,
    /// Routes contributed by plugins.
    pub contributed: crate::contributed::Routes,
}

fn ok(value: &impl serde::Serialize) -> Reply {
    Ok(json(StatusCode::OK, value))
}

/// A session answer, decoded straight into `T` (`Box<RawValue>` to pass it
/// on as is).
async fn call_session<T: serde::de::DeserializeOwned + 'static>(
    app: &App,
    request: SessionRequest,
) -> Result<T, Failure> {
    Ok(app.host.call(&session::answering::<T>(), &request).await?)
}

type Raw = Box<serde_json::value::RawValue>;

async fn call_store(app: &App, request: StoreRequest) -> Result<Value, Failure> {
    Ok(app.host.call(&STORE, &request).await?)
}

fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Failure> {
    serde_json::from_value(v).map_err(|e| {
        Failure::new(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            format!("a plugin answered an unexpected shape: {e}"),
        )
    })
}

/// A conversation id from the path: the store's charset, checked here so
/// a bad one is a `400` before anything is called.
fn conversation_id(raw: &str) -> Result<String, Failure> {
    let id = percent_decode(raw)?;
    if is_valid_conversation_id(&id) {
        Ok(id)
    } else {
        Err(Failure::bad_request(format!("invalid conversation id {id:?}: {CONVERSATION_ID_RULE}")))
    }
}

/// Route one request: a known path with the wrong method is `405`, an
/// unknown one the web directory (for `GET`) or `404`.
pub async fn route(app: Arc<App>, req: Request<Incoming>) -> Reply {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let allowed: &[Method] = match segments.as_slice() {
        ["health"] | ["models"] | ["conversations"] | ["extensions"] | ["system-prompt", "variables"] => {
            &[Method::GET]
        }
        ["chat"] => &[Method::POST],
        ["ws"] if method == Method::GET => return crate::ws::upgrade(app, req).await,
        ["conversations", _] | ["conversations", _, "metrics" | "status" | "last" | "mcp"] => &[Method::GET],
        ["conversations", _, "stop" | "close" | "open" | "queue"] => &[Method::POST],
        ["conversations", _, "queue", _] => &[Method::DELETE],
        ["conversations", _, "title"] => &[Method::PUT],
        ["conversations", _, "model" | "reasoning-effort"] | ["system-prompt"] => &[Method::GET, Method::PUT],
        ["conversations", _, "cwd"] => &[Method::GET, Method::PUT, Method::DELETE],
        _ => {
            // A route a plugin contributes.
            let _unrouted = match crate::contributed::serve(&app, req).await {
                Ok(reply) => return reply,
                Err(req) => req,
            };
            // The frontend's files, except under the API's own prefixes: an
            // API call this server lacks (a newer client's) gets a JSON 404,
            // not the single-page app's index.html.
            let api = matches!(
                segments.first(),
                Some(
                    &("conversations"
                        | "chat"
                        | "models"
                        | "system-prompt"
                        | "extensions"
                        | "health"
                        | "ws"
                        | "workspaces"
                        | "metrics"
                        | "images"
                        | "admin")
                )
            );
            if (method == Method::GET || method == Method::HEAD) && !api {
                if let Some(dir) = &app.web_dir {
                    return serve_static(dir, &path, method == Method::HEAD).await;
                }
            }
            return Err(Failure::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route for {method} {path}"),
            ));
        }
    };
    if !allowed.contains(&method) {
        let list: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        let mut r = Failure::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}; use {}", list.join(", ")),
        )
        .response();
        if let Ok(v) = HeaderValue::from_str(&format!("{}, OPTIONS", list.join(", "))) {
            r.headers_mut().insert(ALLOW, v);
        }
        return Ok(r);
    }
    let pairs = query_pairs(query.as_deref())?;
    let body = req.into_body();
    match (method, segments.as_slice()) {
        (_, ["health"]) => ok(&json!({"ok": true})),
        (_, ["models"]) => models(&app).await,
        (_, ["extensions"]) => {
            let list = app.host.call(&PLUGINS, &json!({})).await?;
            ok(&list)
        }
        (_, ["chat"]) => chat(&app, body, &pairs).await,
        (_, ["conversations"]) => list(&app, &pairs).await,
        (_, ["conversations", id]) => history(&app, &conversation_id(id)?, &pairs).await,
        (_, ["conversations", id, "metrics"]) => {
            let id = conversation_id(id)?;
            ok(&call_store(&app, StoreRequest::Metrics { conversation_id: id }).await?)
        }
        (_, ["conversations", id, "status"]) => {
            let id = conversation_id(id)?;
            let s: StatusInfo = call_session(&app, SessionRequest::Status { conversation_id: id }).await?;
            // The wire shape is `{conversationId, isActive, status}`.
            ok(&json!({"conversationId": s.conversation_id, "isActive": s.is_active, "status": s.status}))
        }
        (_, ["conversations", id, "last"]) => {
            let id = conversation_id(id)?;
            ok(&call_session::<Raw>(&app, SessionRequest::Last { conversation_id: id, wait_ms: None })
                .await?)
        }
        (_, ["conversations", id, "mcp"]) => mcp(&app, &conversation_id(id)?).await,
        (_, ["conversations", id, "stop"]) => {
            let id = conversation_id(id)?;
            ok(&call_session::<Raw>(&app, SessionRequest::Stop { conversation_id: id }).await?)
        }
        (_, ["conversations", id, "close"]) => {
            let id = conversation_id(id)?;
            ok(&call_session::<Raw>(&app, SessionRequest::Close { conversation_id: id }).await?)
        }
        (_, ["conversations", id, "open"]) => {
            let id = conversation_id(id)?;
            ok(&call_session::<Raw>(&app, SessionRequest::Open { conversation_id: id }).await?)
        }
        (_, ["conversations", id, "queue"]) => {
            let id = conversation_id(id)?;
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct QueueBody {
                text: String,
                #[serde(default)]
                workspace_id: Option<String>,
            }
            let b: QueueBody = parse(&read_body(body, app.max_body, app.body_timeout).await?)?;
            let request =
                SessionRequest::Queue { conversation_id: id, text: b.text, workspace_id: b.workspace_id };
            ok(&call_session::<Raw>(&app, request).await?)
        }
        (_, ["conversations", id, "queue", message]) => {
            let request = SessionRequest::Unqueue {
                conversation_id: conversation_id(id)?,
                message_id: percent_decode(message)?,
            };
            ok(&call_session::<Raw>(&app, request).await?)
        }
        (_, ["conversations", id, "title"]) => {
            let id = conversation_id(id)?;
            #[derive(Deserialize)]
            struct TitleBody {
                title: String,
            }
            let b: TitleBody = parse(&read_body(body, app.max_body, app.body_timeout).await?)?;
            let title = dispatch_contracts::protocol::wire::bounded_title(&b.title);
            if title.is_empty() {
                return Err(Failure::bad_request("the title is empty"));
            }
            let update = MetaUpdate {
                conversation_id: id.clone(),
                title: Some(title.clone()),
                ..MetaUpdate::default()
            };
            call_store(&app, StoreRequest::Update(update)).await?;
            ok(&json!({"conversationId": id, "title": title}))
        }
        (m, ["conversations", id, setting @ ("model" | "cwd" | "reasoning-effort")]) => {
            setting_route(&app, m, &conversation_id(id)?, setting, body).await
        }
        (Method::GET, ["system-prompt"]) => ok(&call_prompt(&app, PromptRequest::Get).await?),
        (_, ["system-prompt"]) => {
            #[derive(Deserialize)]
            struct TemplateBody {
                template: String,
            }
            let b: TemplateBody = parse(&read_body(body, app.max_body, app.body_timeout).await?)?;
            ok(&call_prompt(&app, PromptRequest::Set { template: b.template }).await?)
        }
        (_, ["system-prompt", "variables"]) => ok(&call_prompt(&app, PromptRequest::Variables).await?),
        // Every path with an `allowed` list is matched above.
        (m, _) => Err(Failure::new(StatusCode::NOT_FOUND, "not_found", format!("no route for {m} {path}"))),
    }
}

/// The MCP servers a conversation's turns can use: `{conversationId, cwd,
/// servers}`. Servers are the server's, not the conversation's (they are
/// configured for the whole server), so every conversation lists the same;
/// without the `mcp` plugin the list is empty.
async fn mcp(app: &App, id: &str) -> Reply {
    let cwd = details(app, id).await?.and_then(|d| d.cwd);
    let servers = match app.host.call(&MCP_SERVERS, &json!({})).await {
        Ok(list) => list.servers,
        Err(e) if e.code() == "not_found" => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    ok(&json!({"conversationId": id, "cwd": cwd, "servers": servers}))
}

async fn call_prompt(app: &App, request: PromptRequest) -> Result<Value, Failure> {
    app.host.call(&PROMPT, &request).await.map_err(|e| {
        if e.code() == "not_found" {
            Failure::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "no system-prompt plugin is loaded")
        } else {
            e.into()
        }
    })
}

async fn models(app: &App) -> Reply {
    match app.host.call(&CATALOG, &CatalogRequest::List).await {
        Ok(list) => ok(&list),
        Err(e) => Err(Failure::new(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            format!("the model catalog failed: {}", e.message()),
        )),
    }
}

async fn list(app: &App, pairs: &[(String, String)]) -> Reply {
    let prefix = query_get(pairs, "q").map(str::trim).filter(|q| !q.is_empty()).map(str::to_owned);
    let mut statuses = Vec::new();
    if let Some(s) = query_get(pairs, "status") {
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let status: ConversationStatus =
                serde_json::from_value(Value::String(part.to_owned())).map_err(|_| {
                    Failure::bad_request(format!(
                        "unknown status {part:?}; use active, queued, idle or closed"
                    ))
                })?;
            statuses.push(status);
        }
    }
    let workspace = query_get(pairs, "workspaceId").map(str::trim).filter(|w| !w.is_empty());
    let listing: Listing = decode(call_store(app, StoreRequest::List { prefix, status: None }).await?)?;
    let conversations: Vec<_> = listing
        .conversations
        .into_iter()
        .filter(|c| statuses.is_empty() || statuses.contains(&c.status))
        .filter(|c| workspace.is_none_or(|w| c.workspace_id == w))
        .collect();
    ok(&json!({ "conversations": conversations }))
}

async fn history(app: &App, id: &str, pairs: &[(String, String)]) -> Reply {
    let since_seq = query_number(pairs, "sinceSeq", 0)?;
    let before_seq = query_number(pairs, "beforeSeq", 1)?;
    let limit = query_number(pairs, "limit", 1)?;
    let request = StoreRequest::History { conversation_id: id.to_owned(), since_seq, before_seq, limit };
    ok(&call_store(app, request).await?)
}

async fn details(app: &App, id: &str) -> Result<Option<Details>, Failure> {
    decode(call_store(app, StoreRequest::Get { conversation_id: id.to_owned() }).await?)
}

/// `GET`/`PUT` (`DELETE` for cwd) of the sticky model, cwd and effort.
async fn setting_route(app: &App, method: Method, id: &str, setting: &str, body: Incoming) -> Reply {
    let mut update = MetaUpdate { conversation_id: id.to_owned(), ..MetaUpdate::default() };
    let answer = match (method, setting) {
        (Method::GET, _) => {
            let d = details(app, id).await?;
            let value = match setting {
                "model" => json!(d.and_then(|d| d.model)),
                "cwd" => json!(d.and_then(|d| d.cwd)),
                _ => json!(d.and_then(|d| d.reasoning_effort)),
            };
            return ok(&setting_answer(id, setting, value));
        }
        (Method::DELETE, _) => {
            update.cwd = Some(None);
            Value::Null
        }
        (_, "model") => {
            // `null` clears, as `""` does, but the field must be there: a
            // body without it is a mistake, not a request to clear.
            #[derive(Deserialize)]
            struct ModelBody {
                #[serde(deserialize_with = "present")]
                model: Option<String>,
            }
            let b: ModelBody = parse(&read_body(body, app.max_body, app.body_timeout).await?)?;
            let model = b.model.map(|m| m.trim().to_owned()).filter(|m| !m.is_empty());
            if let Some(m) = &model {
                // A model no provider serves would be accepted here and then
                // refuse every turn of the conversation (its queue stalled):
                // refuse it now, as `POST /chat` does.
                let resolve = CatalogRequest::Resolve { model: Some(m.clone()) };
                match app.host.call(&CATALOG, &resolve).await {
                    Ok(_) => {}
                    Err(e) if e.code() == "not_found" => {
                        return Err(Failure::new(StatusCode::BAD_REQUEST, "unknown_model", e.message()))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            update.model = Some(model.clone());
            json!(model)
        }
        (_, "cwd") => {
            #[derive(Deserialize)]
            struct CwdBody {
                cwd: String,
            }
            let b: CwdBody = parse(&read_body(body, app.max_body, app.body_timeout).await?)?;
            let cwd = b.cwd.trim().to_owned();
            if cwd.is_empty() {
                return Err(Failure::bad_request("`cwd` is empty; DELETE clears it"));
            }
            update.cwd = Some(Some(cwd.clone()));
            json!(cwd)
        }
        _ => {
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct EffortBody {
                reasoning_effort: ReasoningEffort,
            }
            let b: EffortBody = parse(&read_body(body, app.max_body, app.body_timeout).await?)?;
            update.reasoning_effort = Some(Some(b.reasoning_effort));
            json!(b.reasoning_effort)
        }
    };
    call_store(app, StoreRequest::Update(update)).await?;
    ok(&setting_answer(id, setting, answer))
}

/// An `Option` field that must be present (`null` allowed): without a
/// `#[serde(default)]`, serde reports it missing instead of taking `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)
}

fn setting_answer(id: &str, setting: &str, value: Value) -> Value {
    let key = if setting == "reasoning-effort" { "reasoningEffort" } else { setting };
    let mut o = serde_json::Map::new();
    o.insert("conversationId".into(), json!(id));
    o.insert(key.into(), value);
    Value::Object(o)
}

/// `POST /chat`: start the turn, then stream its events as NDJSON.
async fn chat(app: &Arc<App>, body: Incoming, pairs: &[(String, String)]) -> Reply {
    let wire = match query_get(pairs, "wire") {
        Some(w) => WireVersion::parse(w)
            .ok_or_else(|| Failure::bad_request(format!("unknown wire version {w:?}")))?,
        None => app.default_wire,
    };
    let request: ChatRequest = parse(&read_body(body, app.max_body, app.body_timeout).await?)?;
    let started: Started = call_session(app, SessionRequest::Chat { request }).await?;
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
    let host = app.host.clone();
    let Started { conversation_id, turn_id } = started;
    let header = HeaderValue::from_str(&conversation_id).ok();
    let wire_name = match wire {
        WireVersion::V0_1 => "0.1",
        _ => "latest",
    };
    app.runner.spawn(async move {
        let mut from = 0u64;
        loop {
            let request = SessionRequest::Events {
                conversation_id: conversation_id.clone(),
                turn_id: turn_id.clone(),
                from,
                wire: Some(wire_name.to_owned()),
                wait_ms: None,
            };
            let batch: EventBatch = match host.call(&session::answering::<EventBatch>(), &request).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, conversation = %conversation_id, "the event stream broke off");
                    return;
                }
            };
            if !batch.events.is_empty() {
                let mut chunk = Vec::with_capacity(batch.events.iter().map(|e| e.get().len() + 1).sum());
                for e in &batch.events {
                    chunk.extend_from_slice(e.get().as_bytes());
                    chunk.push(b'\n');
                }
                // The client left: the turn goes on, we stop reading it.
                if tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.is_err() {
                    return;
                }
            }
            if batch.sealed {
                return;
            }
            from = batch.next;
        }
    });
    let mut response = Response::new(StreamBody::new(rx).boxed());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(h) = header {
        headers.insert("x-conversation-id", h);
    }
    Ok(response)
}

/// How much of a web file is read at a time: files are streamed, never
/// read whole (four concurrent GETs of a 512 MB file held 2.1 GB).
const STATIC_CHUNK: usize = 64 * 1024;

/// A file of the web directory, else its `index.html` (a single-page app),
/// streamed. A path that resolves outside the directory — through a
/// symlink — is not served (the app's index is, as for any unknown path).
async fn serve_static(dir: &Path, path: &str, head: bool) -> Reply {
    let decoded = percent_decode(path)?;
    let rel = Path::new(decoded.trim_start_matches('/'));
    let clean = rel.components().all(|c| matches!(c, Component::Normal(_)));
    let root = tokio::fs::canonicalize(dir).await.map_err(|e| {
        Failure::new(StatusCode::NOT_FOUND, "not_found", format!("the web directory is not usable ({e})"))
    })?;
    let inside = |candidate: PathBuf| {
        let root = root.clone();
        async move {
            let real = tokio::fs::canonicalize(&candidate).await.ok()?;
            let meta = tokio::fs::metadata(&real).await.ok()?;
            (real.starts_with(&root) && meta.is_file()).then_some((real, meta.len()))
        }
    };
    let wanted = if clean && !rel.as_os_str().is_empty() { inside(root.join(rel)).await } else { None };
    let (file, len) = match wanted {
        Some(found) => found,
        None => inside(root.join("index.html")).await.ok_or_else(|| {
            Failure::new(StatusCode::NOT_FOUND, "not_found", "the web directory has no index.html")
        })?,
    };
    let opened = tokio::fs::File::open(&file).await.map_err(|e| {
        Failure::new(StatusCode::NOT_FOUND, "not_found", format!("no such file in the web directory ({e})"))
    })?;
    let body = if head {
        full(Bytes::new())
    } else {
        use tokio::io::AsyncReadExt as _;
        // No more than the length announced, should the file grow meanwhile.
        let chunks = futures::stream::unfold(Some(opened.take(len)), |file| async move {
            let mut file = file?;
            let mut buf = vec![0u8; STATIC_CHUNK];
            match file.read(&mut buf).await {
                Ok(0) | Err(_) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, Infallible>(Frame::data(Bytes::from(buf))), Some(file)))
                }
            }
        });
        StreamBody::new(chunks).boxed()
    };
    let mut r = Response::new(body);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(mime(&file)));
    r.headers_mut().insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(r)
}

fn mime(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "wasm" => "application/wasm",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}
