//! Routing: the transport's own paths, the routes plugins contribute, the
//! web frontend's files.

use std::convert::Infallible;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use dispatch_abi::{codes, Host};
use dispatch_contracts::cluster::{ClusterRequest, Member, CLUSTER};
use dispatch_contracts::http::HttpMethod;
use dispatch_contracts::plugins::PLUGINS;
use dispatch_contracts::protocol::heartbeat::HeartbeatConfig;
use dispatch_contracts::session::WireVersion;
use dispatch_contracts::store::{StoreRequest, STORE};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::http::{full, json, percent_decode, Failure, Reply};

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

/// Which host this is: its cluster id when it shares a store with other
/// hosts, else `<hostname>:<pid>`.
async fn answering_host(host: &Host) -> String {
    if let Ok(v) = host.call(&CLUSTER, &ClusterRequest::Whoami).await {
        if let Ok(m) = serde_json::from_value::<Member>(v) {
            return m.host_id;
        }
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}", name.trim(), std::process::id())
}

/// How long `/health` waits for the store.
const HEALTH_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// `GET /health`: `{"ok": true}` when the host can serve — its store
/// answers (a host that cannot reach its database is not ready: a load
/// balancer should send elsewhere) — else `503 {"ok": false, "error",
/// "code": "unavailable"}` (the error shape every route shares).
/// A store that does not know `ping`, or no store at all, counts as ready.
async fn health(host: &Host) -> Reply {
    let ping = host.call(&STORE, &StoreRequest::Ping);
    let problem = match tokio::time::timeout(HEALTH_WAIT, ping).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) if e.code() == codes::UNSUPPORTED || e.code() == codes::NOT_FOUND => None,
        Ok(Err(e)) => Some(format!("the store is not ready: {}", e.message())),
        Err(_) => Some(format!("the store did not answer within {} s", HEALTH_WAIT.as_secs())),
    };
    match problem {
        None => ok(&json!({"ok": true})),
        Some(error) => Ok(json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"ok": false, "error": error, "code": codes::UNAVAILABLE}),
        )),
    }
}

/// First path segments of the API: a path under one of them that no
/// route answers is a JSON `404`, never the web frontend's `index.html`
/// (an API call this server lacks — a newer client's — must not look like
/// a page).
const API_PREFIXES: &[&str] = &[
    "conversations",
    "mcp",
    "chat",
    "models",
    "system-prompt",
    "extensions",
    "health",
    "ws",
    "workspaces",
    "metrics",
    "images",
    "admin",
    "settings",
    "concurrency",
    "openapi.json",
];

/// Route one request: the transport's own paths (`/health`,
/// `/extensions`, `/openapi.json`, `/ws`), then the routes plugins
/// contribute, then — for a WIRE.md path whose plugin is not loaded — a
/// `503` naming it, then the web directory (for `GET`), else `404`.
pub async fn route(app: Arc<App>, req: Request<Incoming>) -> Reply {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let own = match segments.as_slice() {
        ["ws"] if method == Method::GET => return crate::ws::upgrade(app, req).await,
        ["health"] | ["extensions"] | ["openapi.json"] => true,
        _ => false,
    };
    if own {
        if method != Method::GET {
            return Ok(not_allowed(&method, &path, &[HttpMethod::Get]));
        }
        return match segments.as_slice() {
            ["health"] => health(&app.host).await,
            ["extensions"] => {
                let mut list = app.host.call(&PLUGINS, &json!({})).await?;
                list.host = Some(answering_host(&app.host).await);
                ok(&list)
            }
            _ => ok(&crate::contributed::openapi(&app).await),
        };
    }
    let req = match crate::contributed::serve(&app, req).await {
        Ok(reply) => return reply,
        Err(req) => req,
    };
    // Without the heartbeat plugin, WIRE.md has its reads answer "nothing
    // scheduled" (the frontend shows the defaults) and its writes `503`.
    if method == Method::GET {
        match segments.as_slice() {
            ["workspaces", _, "heartbeat"] => return ok(&HeartbeatConfig::default()),
            ["workspaces", _, "heartbeat", "runs"] => return ok(&json!({"runs": []})),
            ["workspaces", _, "heartbeat", "next-run"] => return ok(&json!({"nextRunAt": null})),
            // Without provider-concurrency every provider runs unlimited.
            ["concurrency", "limits"] => return ok(&json!({"limits": []})),
            ["concurrency", "status"] => return ok(&json!({"providers": []})),
            _ => {}
        }
    }
    if let Some(feature) = absent_feature(&segments) {
        return Err(Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{feature} not available"),
        ));
    }
    let api = segments.first().is_some_and(|first| API_PREFIXES.contains(first));
    if (method == Method::GET || method == Method::HEAD) && !api {
        if let Some(dir) = &app.web_dir {
            return serve_static(dir, &path, method == Method::HEAD).await;
        }
    }
    drop(req);
    Err(Failure::new(StatusCode::NOT_FOUND, "not_found", format!("no route for {method} {path}")))
}

/// A `405` listing what `path` allows.
pub fn not_allowed(method: &Method, path: &str, allowed: &[HttpMethod]) -> Response<crate::http::Body> {
    let list: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
    let mut r = Failure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {path}; use {}", list.join(", ")),
    )
    .response();
    if let Ok(v) = HeaderValue::from_str(&format!("{}, OPTIONS", list.join(", "))) {
        r.headers_mut().insert(ALLOW, v);
    }
    r
}

/// The feature behind a path of WIRE.md that no loaded plugin answers:
/// WIRE.md answers `503 unavailable` for a feature whose plugin is not
/// loaded, and only the transport is there to say so. This names paths,
/// not behaviour: each feature's routes are its plugin's.
fn absent_feature(segments: &[&str]) -> Option<&'static str> {
    Some(match segments {
        ["models"] => "Model catalog",
        ["system-prompt"] | ["system-prompt", "variables"] => "System prompt service",
        ["conversations", _, "mcp"] | ["mcp", "servers"] => "MCP service",
        ["conversations", _, "lsp"] => "LSP service",
        ["conversations", _, "compact" | "compact-percent"] => "Compaction service",
        ["chat"] | ["conversations"] => "Session service",
        ["chat", "warm"] => "Warm service",
        ["settings", "vision"] => "Vision settings",
        ["metrics", "throughput"] => "Throughput",
        ["metrics"] => "Metrics",
        ["conversations", _, "traces"] | ["conversations", _, "turns", _, "context"] => "Traces",
        ["concurrency", "limits" | "cooldown", _] => "Concurrency service",
        ["workspaces", _, "heartbeat"] | ["workspaces", _, "heartbeat", "runs", _, "stop"] => {
            "Heartbeat service"
        }
        ["workspaces"]
        | ["workspaces", _]
        | ["workspaces", _, "title" | "default-cwd" | "default-computer" | "star"] => "Workspaces",
        ["conversations", _]
        | ["conversations", _, "metrics" | "status" | "last" | "stop" | "close" | "open" | "queue" | "title"]
        | ["conversations", _, "model" | "cwd" | "reasoning-effort"]
        | ["conversations", _, "queue", _] => "Session service",
        _ => return None,
    })
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
