//! # transport-http — Dispatch's HTTP API
//!
//! The HTTP/1.1 server (hyper 1.x) of every route the plugins contribute
//! (`dispatch_contracts::http`): the session's `POST /chat` (an NDJSON
//! stream: one JSON object per line, written as produced) and
//! conversation routes, the catalog's, the system prompt's, the MCP
//! status, a third-party plugin's own. It owns no route of WIRE.md beyond
//! its transport concerns — `/health`, `/extensions`, `/openapi.json`
//! (assembled from the routes' own descriptions), the WebSocket upgrade at
//! `/ws`, the web directory — and applies the shared rules once, to all.
//!
//! # Listening and access
//!
//! Port 24203 on IPv4 *and* IPv6 loopback by default, so `localhost` works
//! whichever it resolves to. Binding anything else needs a token (config
//! `token` or `$DISPATCH_TOKEN`; every request then carries
//! `Authorization: Bearer <token>`), or an explicit
//! `allow_unauthenticated = true`, which logs a warning. With a token set,
//! it is required on every address.
//!
//! # Robustness
//!
//! Bodies are capped (`413`), headers must arrive within a deadline,
//! reading a body has one too, every error is a JSON `{error, code}`, and
//! a client that disconnects from a stream leaves its turn running. On
//! shutdown the listeners close, open connections finish what they are
//! sending (streams end as the session seals the aborted turns) within a
//! grace period, then the rest are dropped.

pub mod contributed;
pub mod http;
pub mod routes;
pub mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dispatch_abi::runtime::PluginRuntime;
use dispatch_abi::{Context, Error, Host, Plugin, PluginManifest};
use dispatch_contracts::session::{WireVersion, SESSION};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::sync::{watch, Notify};

use crate::http::{full, Body, Failure};
use crate::routes::App;

/// The default port.
pub const DEFAULT_PORT: u16 = 24203;

/// `[plugin.config]` of the HTTP transport.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Addresses to listen on (default: `$DISPATCH_HTTP_ADDR`, a comma
    /// separated list, else `127.0.0.1:24203` and `[::1]:24203`).
    #[serde(default)]
    pub addr: Option<Vec<String>>,
    /// The access token (default `$DISPATCH_TOKEN`).
    #[serde(default)]
    pub token: Option<String>,
    /// Serve a non-loopback address without a token (logs a warning).
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Web pages (`Origin`s, e.g. `https://app.example`) that may use the
    /// API and read its answers besides this machine's own (`localhost`,
    /// loopback addresses, the page served from `web_dir`); `["*"]` for
    /// any. Without a token a page of any other origin is refused (`403`).
    #[serde(default)]
    pub cors_origins: Option<Vec<String>>,
    /// Host names this server answers to besides `localhost`, IP addresses
    /// and this machine's name, when no token is set (a request naming
    /// another host is refused: DNS rebinding).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// A directory served for unmatched `GET`s, with `index.html` as the
    /// fallback (default `$DISPATCH_WEB_DIR`).
    #[serde(default)]
    pub web_dir: Option<PathBuf>,
    /// Largest request body in bytes (default 8 MiB: images travel inline).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// How long a client may take to send its request headers (default 10 s).
    #[serde(default = "default_header_timeout")]
    pub header_timeout_ms: u64,
    /// How long a client may take to send its body (default 30 s).
    #[serde(default = "default_body_timeout")]
    pub body_timeout_ms: u64,
    /// How long shutdown waits for open responses (default 5 s).
    #[serde(default = "default_grace")]
    pub shutdown_grace_ms: u64,
    /// The wire version of clients that do not ask (`0.1` or `latest`, the
    /// default).
    #[serde(default)]
    pub default_wire: Option<String>,
    /// Worker threads (default 1; more only help when many clients
    /// stream at once on a many-core machine).
    #[serde(default = "default_workers")]
    pub workers: usize,
}

fn default_max_body() -> usize {
    8 * 1024 * 1024
}
fn default_header_timeout() -> u64 {
    10_000
}
fn default_body_timeout() -> u64 {
    30_000
}
fn default_grace() -> u64 {
    5_000
}
fn default_workers() -> usize {
    1
}

fn config_error(message: String) -> Error {
    Error::new("invalid_config", message)
}

/// The plugin.
#[derive(Debug)]
pub struct TransportHttp {
    runtime: PluginRuntime,
    stop: watch::Sender<bool>,
    open: Arc<AtomicUsize>,
    closed: Arc<Notify>,
    grace: Duration,
    /// The addresses actually bound (port 0 resolved).
    pub bound: Vec<SocketAddr>,
}

struct Server {
    app: Arc<App>,
    token: Option<String>,
    gate: dispatch_listen::Gate,
    /// Flips when the transport stops (shutdown, or a reload removing or
    /// replacing it).
    stopping: watch::Receiver<bool>,
}

impl Server {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Body>, std::convert::Infallible> {
        let origin = req.headers().get(ORIGIN).cloned();
        // Two `Host`s (RFC 9112 says 400) must not let the second slip
        // past a check of the first: anything but exactly one is no name
        // this server is known by.
        let mut hosts = req.headers().get_all(HOST).iter();
        let host = match (hosts.next(), hosts.next()) {
            (Some(h), None) => Some(h.to_str().unwrap_or("(not text)").to_owned()),
            (None, _) => None,
            (Some(_), Some(_)) => Some("(more than one Host header)".to_owned()),
        };
        // An `Origin` that is not text is nobody's page of this machine.
        let origin_text = origin.as_ref().map(|o| o.to_str().unwrap_or("(not text)"));
        let mut response = if let Some(f) = self.refuse_page(origin_text, host.as_deref()) {
            f.response()
        } else if req.method() == Method::OPTIONS {
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        } else if let Some(f) = self.refuse(&req).or_else(|| refuse_body_type(&req)) {
            f.response()
        } else if req.uri().path() == "/admin/plugins/reload" {
            self.reload(&req, peer).await.unwrap_or_else(|f| f.response())
        } else {
            let method = req.method().clone();
            let path = req.uri().path().to_owned();
            match routes::route(Arc::clone(&self.app), req).await {
                Ok(r) => r,
                Err(f) => {
                    if f.status.is_server_error() {
                        tracing::warn!(%method, %path, status = f.status.as_u16(), error = %f.message, "request failed");
                    }
                    f.response()
                }
            }
        };
        let trusted = origin
            .as_ref()
            .zip(origin_text)
            .filter(|(_, text)| self.gate.origin_trusted(text, host.as_deref()))
            .map(|(o, _)| o);
        http::cors(trusted, response.headers_mut());
        Ok(response)
    }

    /// `403` for a browser's request this server must not serve without a
    /// token: one naming a host it is not known by (DNS rebinding), or one
    /// from a page of another site — whatever its method: a foreign page
    /// may neither start anything nor read anything. Checked before the
    /// body is read.
    fn refuse_page(&self, origin: Option<&str>, host: Option<&str>) -> Option<Failure> {
        self.gate.check(origin, host).err().map(|r| Failure::new(StatusCode::FORBIDDEN, r.code, r.message))
    }

    /// `POST /admin/plugins/reload`: the host re-reads its configuration
    /// and drop-in directory and applies the difference; answers the
    /// reload's report. With a token configured the token was checked
    /// already; without one, only a loopback client may ask.
    async fn reload(&self, req: &Request<Incoming>, peer: SocketAddr) -> Result<Response<Body>, Failure> {
        if req.method() != Method::POST {
            return Err(Failure::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use POST"));
        }
        if self.token.is_none() && !peer.ip().is_loopback() && !peer.ip().to_canonical().is_loopback() {
            return Err(Failure::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "reloading plugins from another machine needs an access token (`token` or $DISPATCH_TOKEN)",
            ));
        }
        // A reload that stops this very transport cannot answer with its
        // report: the report is ready only once the transport has stopped,
        // and stopping waits for this connection. Answer when the stop
        // begins instead — before the transport goes — and say where the
        // outcome is.
        let mut stopping = self.stopping.clone();
        let reload = self.app.host.call(&dispatch_contracts::plugins::RELOAD, &serde_json::json!({}));
        tokio::select! {
            report = reload => Ok(http::json(StatusCode::OK, &report?)),
            _ = stopping.wait_for(|s| *s) => Ok(http::json(
                StatusCode::ACCEPTED,
                &serde_json::json!({
                    "reloading": true,
                    "message": "this reload stops or replaces the HTTP transport that was asked: the reload goes on \
                                without it; its outcome is in the server's log, and `dispatch plugins --server` \
                                (or GET /extensions) shows the plugins once an HTTP transport listens again",
                }),
            )),
        }
    }

    /// `401` when a token is required and missing or wrong.
    fn refuse(&self, req: &Request<Incoming>) -> Option<Failure> {
        let token = self.token.as_deref()?;
        let header = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
            // The scheme is case-insensitive (RFC 9110 §11.1).
            let (scheme, rest) = v.trim_start().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim().to_owned())
        });
        // Browsers cannot set headers on a WebSocket: `/ws` also takes `?token=`.
        let given =
            header.or_else(|| (req.uri().path() == "/ws").then(|| query_token(req.uri().query())).flatten());
        match given {
            Some(g) if dispatch_listen::constant_time_eq(g.as_bytes(), token.as_bytes()) => None,
            Some(_) => {
                Some(Failure::new(StatusCode::UNAUTHORIZED, "unauthorized", "the access token is wrong"))
            }
            None => Some(Failure::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this server needs an access token: send `Authorization: Bearer <token>`",
            )),
        }
    }
}

/// `415` for a request body that is not sent as JSON: a page can post
/// `text/plain` or a form to another site without asking first, but not
/// `application/json`. A request without a body (the frontend's `close`)
/// needs no type.
fn refuse_body_type(req: &Request<Incoming>) -> Option<Failure> {
    use hyper::body::Body as _;
    let has_body = !req.body().is_end_stream();
    if !has_body
        || matches!(*req.method(), Method::GET | Method::HEAD)
        || http::is_json_type(req.headers().get(CONTENT_TYPE))
    {
        return None;
    }
    let given = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("none");
    Some(Failure::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "send the request body as JSON (`Content-Type: application/json`); this one's type is {given}"
        ),
    ))
}

/// The `token` query parameter, decoded.
fn query_token(query: Option<&str>) -> Option<String> {
    http::query_pairs(query).ok()?.into_iter().find(|(k, _)| k == "token").map(|(_, v)| v)
}

impl Plugin for TransportHttp {
    fn manifest() -> PluginManifest {
        PluginManifest::new("transport-http", env!("CARGO_PKG_VERSION"))
            .description("The HTTP API: serves the routes plugins contribute, and their OpenAPI document")
            .depends_on("session")
            .provides("transport", "http")
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let config: Config = ctx.config()?;
        let host: Host = ctx.host().clone();
        host.require(&SESSION)?;
        let access = dispatch_listen::access(&dispatch_listen::Spec {
            plugin: "transport-http",
            serves: "HTTP",
            addr: config.addr.clone(),
            env_var: "DISPATCH_HTTP_ADDR",
            default_port: DEFAULT_PORT,
            allow_none: false,
            token: config.token.clone(),
            allow_unauthenticated: config.allow_unauthenticated,
        })?;
        let default_wire = match config.default_wire.as_deref() {
            None => WireVersion::Latest,
            Some(w) => WireVersion::parse(w)
                .ok_or_else(|| config_error(format!("transport-http: unknown default_wire {w:?}")))?,
        };
        let gate = dispatch_listen::Gate::new(
            access.token.is_some(),
            config.cors_origins.as_deref(),
            &config.allowed_hosts,
        );
        let web_dir =
            config.web_dir.clone().or_else(|| std::env::var_os("DISPATCH_WEB_DIR").map(PathBuf::from));
        if let Some(d) = &web_dir {
            if !d.join("index.html").is_file() {
                return Err(config_error(format!(
                    "transport-http: web_dir {} has no index.html",
                    d.display()
                )));
            }
        }

        // Bind now, so a taken port fails activation with a clear message.
        let runtime = PluginRuntime::new("transport-http", config.workers)?;
        let listeners = dispatch_listen::bind(&runtime, "transport-http", &access)?;
        let bound: Vec<SocketAddr> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
        let app = Arc::new(App {
            host,
            max_body: config.max_body_bytes,
            body_timeout: Duration::from_millis(config.body_timeout_ms),
            default_wire,
            web_dir,
            runner: runtime.runner(),
            contributed: contributed::Routes::default(),
        });
        // A plugin that comes or goes may bring or take routes.
        let watching = Arc::clone(&app);
        ctx.host().subscribe_sync(
            &dispatch_contracts::plugins::PLUGIN_STATE,
            move |_: dispatch_contracts::plugins::PluginReport| {
                watching.contributed.invalidate();
                Ok(())
            },
        )?;
        let (stop, stopped) = watch::channel(false);
        let server = Arc::new(Server { app, token: access.token, gate, stopping: stopped.clone() });
        let open = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(Notify::new());
        let header_timeout = Duration::from_millis(config.header_timeout_ms);
        for listener in listeners {
            runtime.runner().spawn(accept_loop(
                listener,
                Arc::clone(&server),
                stopped.clone(),
                Arc::clone(&open),
                Arc::clone(&closed),
                header_timeout,
            ));
        }
        // The host's shutdown begins before deactivation: stop taking
        // connections at once.
        let signal = ctx.host().shutdown_signal();
        let stopper = stop.clone();
        runtime.runner().spawn(async move {
            signal.await;
            let _ = stopper.send(true);
        });
        tracing::info!(addresses = %bound.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "), "HTTP listening");
        Ok(TransportHttp {
            runtime,
            stop,
            open,
            closed,
            grace: Duration::from_millis(config.shutdown_grace_ms),
            bound,
        })
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        let open = Arc::clone(&self.open);
        let closed = Arc::clone(&self.closed);
        let grace = self.grace;
        let drained = self.runtime.handle().block_on(async move {
            tokio::time::timeout(grace, async {
                loop {
                    let notified = closed.notified();
                    let mut notified = std::pin::pin!(notified);
                    notified.as_mut().enable();
                    if open.load(Ordering::SeqCst) == 0 {
                        return;
                    }
                    notified.await;
                }
            })
            .await
            .is_ok()
        });
        if !drained {
            tracing::warn!(
                open = self.open.load(Ordering::SeqCst),
                "connections still open after the shutdown grace period; closing them"
            );
        }
        self.runtime.shutdown(Duration::from_millis(500));
        Ok(())
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    server: Arc<Server>,
    mut stopped: watch::Receiver<bool>,
    open: Arc<AtomicUsize>,
    closed: Arc<Notify>,
    header_timeout: Duration,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            stop = stopped.wait_for(|s| *s) => { drop(stop); return }
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: back off, do not spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let server = Arc::clone(&server);
        let mut stopped = stopped.clone();
        let open = Arc::clone(&open);
        let closed = Arc::clone(&closed);
        open.fetch_add(1, Ordering::SeqCst);
        let runner = server.app.runner.clone();
        runner.spawn(async move {
            let service = service_fn(move |req| Arc::clone(&server).handle(req, peer));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let stop = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = stop => {
                    // Finish the response in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            open.fetch_sub(1, Ordering::SeqCst);
            closed.notify_waiters();
        });
    }
}

dispatch_abi::export_plugin!(TransportHttp);
