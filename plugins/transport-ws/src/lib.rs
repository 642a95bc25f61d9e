//! # transport-ws — Dispatch's WebSocket
//!
//! One socket per client multiplexes surfaces (live panels plugins declare)
//! and chats, as `WIRE.md`'s WebSocket section specifies: the surface
//! catalog on connect and whenever it changes, `subscribe` / `unsubscribe`
//! / `invoke`, `chat.send` / `chat.subscribe` / `chat.unsubscribe` /
//! `chat.queue` / `chat.queue.cancel`, `chat.delta` with the very events of
//! the NDJSON stream (filtered by the connection's wire version), and the
//! `conversation.statusChanged` / `conversation.open` broadcasts.
//!
//! # Where clients connect
//!
//! Its own port (default 24205, IPv4 and IPv6 loopback) accepts the
//! upgrade on any path; a plain HTTP request there gets `426`. The HTTP
//! transport's `/ws` hands its upgraded connections over through the
//! `websocket` bus service (see `dispatch_contracts::websocket`), so both
//! doors lead to the same clients and state.
//!
//! # Access
//!
//! As HTTP: a non-loopback address needs a token (config `token` or
//! `$DISPATCH_TOKEN`), sent as `Authorization: Bearer <token>` or
//! `?token=` on the URL (browsers cannot set headers on a WebSocket), or an
//! explicit `allow_unauthenticated = true`, which logs a warning.
//!
//! # Slow clients
//!
//! Each client has a bounded queue (`max_queued_messages`, default 4096).
//! Messages are offered to it without waiting; a client whose queue is
//! full is disconnected (close code 1008, "too slow", when its socket has
//! room left for the close frame), so one stalled reader never delays a
//! turn or the other clients. Dropping messages instead would leave it a
//! silently broken transcript; disconnected, it reconnects, subscribes
//! again, is replayed the running turn from its start, and reads earlier
//! history over HTTP.

pub mod conn;
pub mod hub;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd as _, IntoRawFd as _};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dispatch_abi::runtime::{PluginRuntime, Runner};
use dispatch_abi::{codes, Context, Error, Host, Plugin, PluginManifest};
use dispatch_contracts::protocol::wire::ConversationStatus;
use dispatch_contracts::session::{OpenRequested, StatusChanged, WireVersion, OPEN, SESSION, STATUS};
use dispatch_contracts::surface::{RegistryRequest, SurfaceChanged, CHANGED, REGISTRY};
use dispatch_contracts::websocket::{Connections, Handshake, UpgradeRequest, CONNECTIONS, WEBSOCKET};
use dispatch_listen::Gate;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{watch, Notify};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::hub::{message, Hub};

/// The default port.
pub const DEFAULT_PORT: u16 = 24205;

/// `[plugin.config]` of the WebSocket transport.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Addresses to listen on (default: `$DISPATCH_WS_ADDR`, a comma
    /// separated list, else `127.0.0.1:24205` and `[::1]:24205`); an empty
    /// list serves only the HTTP transport's `/ws`.
    #[serde(default)]
    pub addr: Option<Vec<String>>,
    /// The access token (default `$DISPATCH_TOKEN`).
    #[serde(default)]
    pub token: Option<String>,
    /// Serve a non-loopback address without a token (logs a warning).
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Web pages (`Origin`s, e.g. `https://app.example`) that may open a
    /// socket besides this machine's own (`localhost`, loopback addresses,
    /// a page of the host the request names); `["*"]` for any. With a
    /// token configured any page may (the token is the check) — so without
    /// one a web site open in the user's browser cannot drive a local
    /// server. Clients that are not browsers send no `Origin`: always let in.
    #[serde(default)]
    pub allowed_origins: Option<Vec<String>>,
    /// Host names served besides `localhost`, IP addresses and this
    /// machine's name when no token is set (DNS rebinding).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// The wire version of clients that do not ask (`0.1` or `latest`, the
    /// default).
    #[serde(default)]
    pub default_wire: Option<String>,
    /// Largest client message in bytes (default 8 MiB: images travel inline).
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// Messages a client may leave unread before it is disconnected
    /// (default 4096).
    #[serde(default = "default_max_queued")]
    pub max_queued_messages: usize,
    /// How often the server pings each client (default 30 s); a client
    /// silent for three intervals is closed.
    #[serde(default = "default_ping")]
    pub ping_interval_ms: u64,
    /// How long a client may take to send its upgrade request (default 10 s).
    #[serde(default = "default_header_timeout")]
    pub header_timeout_ms: u64,
    /// How long shutdown waits for watched turns to seal (default 5 s).
    #[serde(default = "default_grace")]
    pub shutdown_grace_ms: u64,
    /// Worker threads (default 1).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Most WebSockets open at once, on both ports together (default
    /// 1024); one more is refused with `503` until another closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_max_connections() -> usize {
    1024
}

/// When this many sockets were open at once and all have closed, freed
/// memory is returned to the system.
const TRIM_AFTER_SOCKETS: usize = 64;

/// Each connection's initial read buffer. tungstenite's default (128 KiB,
/// allocated at the upgrade) made every idle socket cost ~130 KB; the
/// buffer grows when a larger message arrives.
const READ_BUFFER_BYTES: usize = 8 * 1024;

fn default_max_message() -> usize {
    8 * 1024 * 1024
}
fn default_max_queued() -> usize {
    4096
}
fn default_ping() -> u64 {
    30_000
}
fn default_header_timeout() -> u64 {
    10_000
}
fn default_workers() -> usize {
    1
}
fn default_grace() -> u64 {
    5_000
}

fn config_error(message: String) -> Error {
    Error::new(codes::INVALID_CONFIG, message)
}

/// Why an upgrade request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable code.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Refusal { status, code, message: message.into() }
    }

    fn response(&self) -> Response<Full<Bytes>> {
        let body = json!({"error": self.message, "code": self.code}).to_string();
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = self.status;
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    }
}

/// Check a WebSocket upgrade request (RFC 6455 §4.2.1), the page it comes
/// from, and the `wire` query parameter; answers the
/// `Sec-WebSocket-Accept` value and the wire version of the connection.
pub fn check_upgrade<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    query: Option<&str>,
    default_wire: WireVersion,
    gate: &Gate,
) -> Result<(String, WireVersion), Refusal> {
    if let Err(r) = gate.check(header("origin"), header("host")) {
        return Err(Refusal::new(StatusCode::FORBIDDEN, r.code, r.message));
    }
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(Refusal::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this is a WebSocket endpoint: connect with `Upgrade: websocket`",
        ));
    }
    if header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(Refusal::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "only WebSocket version 13 is spoken (`Sec-WebSocket-Version: 13`)",
        ));
    }
    let Some(key) = header("sec-websocket-key").map(str::trim).filter(|k| !k.is_empty()) else {
        return Err(Refusal::new(StatusCode::BAD_REQUEST, "invalid_input", "missing `Sec-WebSocket-Key`"));
    };
    let mut wire = default_wire;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k == "wire" {
            wire = WireVersion::parse(&v).ok_or_else(|| {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_input",
                    format!("unknown wire version {v:?} (known: 0.1, latest)"),
                )
            })?;
        }
    }
    Ok((derive_accept_key(key.as_bytes()), wire))
}

/// The `token` query parameter, decoded.
fn query_token(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned())
}

/// `401` unless `token` is unset or the request carries it.
fn check_token(token: Option<&str>, req: &Request<Incoming>) -> Result<(), Refusal> {
    let Some(token) = token else { return Ok(()) };
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|v| v.trim().to_owned());
    match header.or_else(|| query_token(req.uri().query())) {
        Some(given) if dispatch_listen::constant_time_eq(given.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(Refusal::new(StatusCode::UNAUTHORIZED, "unauthorized", "the access token is wrong")),
        None => Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this server needs an access token: send `Authorization: Bearer <token>` or `?token=<token>`",
        )),
    }
}

/// How long a handshake ticket stays valid.
const TICKET_LIFETIME: Duration = Duration::from_secs(10);

/// What the plugin's tasks share.
#[derive(Debug)]
struct Shared {
    hub: Arc<Hub>,
    host: Host,
    runner: Runner,
    token: Option<String>,
    default_wire: WireVersion,
    gate: Gate,
    ws_config: WebSocketConfig,
    options: conn::Options,
    /// Handshakes answered for another listener, waiting for `adopt`.
    tickets: Mutex<HashMap<String, (WireVersion, Instant)>>,
    /// Open connections, for shutdown and `max_connections`.
    open: AtomicUsize,
    /// The most open at once since they were last all closed.
    peak: AtomicUsize,
    max_connections: usize,
    closed: Notify,
    announcing: Mutex<()>,
}

impl Shared {
    /// Serve an upgraded connection, counting it as open until it ends.
    fn spawn_connection<S>(self: &Arc<Self>, ws: WebSocketStream<S>, wire: WireVersion)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::clone(self);
        let open = shared.open.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak.fetch_max(open, Ordering::SeqCst);
        shared.announce();
        self.runner.spawn(async move {
            conn::serve(Arc::clone(&shared.hub), ws, wire, shared.options).await;
            let left = shared.open.fetch_sub(1, Ordering::SeqCst) - 1;
            shared.announce();
            // The last of many sockets closed: what they held (buffers,
            // queues) is free but kept by glibc's malloc; hand it back.
            if left == 0 && shared.peak.swap(0, Ordering::SeqCst) >= TRIM_AFTER_SOCKETS {
                dispatch_abi::runtime::give_memory_back();
            }
            shared.closed.notify_waiters();
        });
    }

    /// Tell subscribers (metrics) how many are open: read and published
    /// under a lock, so the last announcement carries the last count even
    /// when sockets open and close at once.
    fn announce(&self) {
        let _order = self.announcing.lock().unwrap_or_else(PoisonError::into_inner);
        let open = self.open.load(Ordering::SeqCst) as u64;
        let _ = self.host.publish(&CONNECTIONS, &Connections { open });
    }

    /// `503` when `max_connections` sockets are open already.
    fn check_room(&self) -> Result<(), Refusal> {
        let open = self.open.load(Ordering::SeqCst);
        if open < self.max_connections {
            return Ok(());
        }
        Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            format!("{open} WebSockets are open, the most this server takes (transport-ws `max_connections`); try again later"),
        ))
    }

    /// The `websocket` service: handshakes and adoptions for other
    /// listeners.
    fn upgrade_service(self: &Arc<Self>, request: UpgradeRequest) -> Result<serde_json::Value, Error> {
        match request {
            UpgradeRequest::Handshake { headers, query } => {
                self.check_room().map_err(|r| Error::new(r.code, r.message))?;
                let header = |name: &str| {
                    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
                };
                // The refusal's own code (`origin_forbidden`,
                // `host_forbidden`, `upgrade_required`, …): the HTTP
                // transport answers it with the matching status.
                let (accept, wire) = check_upgrade(header, query.as_deref(), self.default_wire, &self.gate)
                    .map_err(|r| Error::new(r.code, r.message))?;
                let ticket = uuid::Uuid::new_v4().to_string();
                let mut tickets = self.tickets.lock().unwrap_or_else(PoisonError::into_inner);
                tickets.retain(|_, (_, at)| at.elapsed() < TICKET_LIFETIME);
                tickets.insert(ticket.clone(), (wire, Instant::now()));
                Ok(json!(Handshake { accept, ticket }))
            }
            UpgradeRequest::Adopt { ticket, fd, buffered } => {
                // Ours from here on, whatever happens: wrapping it first means
                // an early return closes it.
                let std_stream = adopt_fd(fd)?;
                let wire = {
                    let mut tickets = self.tickets.lock().unwrap_or_else(PoisonError::into_inner);
                    match tickets.remove(&ticket) {
                        Some((wire, at)) if at.elapsed() < TICKET_LIFETIME => wire,
                        _ => {
                            return Err(Error::new(
                                codes::FORBIDDEN,
                                "adopt: unknown or expired ticket (handshake first, adopt within 10 s)",
                            ))
                        }
                    }
                };
                std_stream.set_nonblocking(true).map_err(|e| Error::new("io", format!("adopt: {e}")))?;
                let shared = Arc::clone(self);
                let config = self.ws_config;
                let handle = self.runner.clone();
                handle.spawn(async move {
                    let stream = match tokio::net::TcpStream::from_std(std_stream) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot adopt a WebSocket connection");
                            return;
                        }
                    };
                    let ws =
                        WebSocketStream::from_partially_read(stream, buffered, Role::Server, Some(config))
                            .await;
                    shared.spawn_connection(ws, wire);
                });
                Ok(json!({}))
            }
            other => Err(Error::new(codes::UNSUPPORTED, format!("websocket: unsupported request {other:?}"))),
        }
    }
}

/// Take ownership of a descriptor handed over the bus, after checking that
/// it is a stream socket (a wrong number must not make us close, say, the
/// store's database file).
fn adopt_fd(fd: i32) -> Result<std::net::TcpStream, Error> {
    if fd < 0 {
        return Err(Error::new(codes::INVALID_PAYLOAD, format!("adopt: {fd} is not a file descriptor")));
    }
    // SAFETY: the `adopt` contract transfers ownership of `fd` to this
    // plugin, in this process; nobody else closes or uses it after the call.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    match stream.peer_addr() {
        Ok(_) => Ok(stream),
        // Not a socket at all: give the descriptor back instead of closing
        // someone else's file.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => {
            let _ = stream.into_raw_fd();
            Err(Error::new(codes::INVALID_PAYLOAD, format!("adopt: descriptor {fd} is not a socket")))
        }
        // A socket whose client already left: ours, so closed here.
        Err(e) => Err(Error::new(codes::INVALID_PAYLOAD, format!("adopt: the connection is gone ({e})"))),
    }
}

/// The plugin.
#[derive(Debug)]
pub struct TransportWs {
    runtime: PluginRuntime,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    grace: Duration,
    /// The addresses actually bound (port 0 resolved).
    pub bound: Vec<SocketAddr>,
}

impl Plugin for TransportWs {
    fn manifest() -> PluginManifest {
        PluginManifest::new("transport-ws", env!("CARGO_PKG_VERSION"))
            .description("The WebSocket: surfaces and live chats on one socket")
            .depends_on("session")
            .depends_on("surfaces")
            .provides("transport", "websocket")
            .provides("service", WEBSOCKET.name())
            .provides("event", CONNECTIONS.name())
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let config: Config = ctx.config()?;
        let host: Host = ctx.host().clone();
        host.require(&SESSION)?;
        host.require(&REGISTRY)?;
        let access = dispatch_listen::access(&dispatch_listen::Spec {
            plugin: "transport-ws",
            serves: "the WebSocket",
            addr: config.addr.clone(),
            env_var: "DISPATCH_WS_ADDR",
            default_port: DEFAULT_PORT,
            allow_none: true,
            token: config.token.clone(),
            allow_unauthenticated: config.allow_unauthenticated,
        })?;
        let token = access.token.clone();
        let default_wire = match config.default_wire.as_deref() {
            None => WireVersion::Latest,
            Some(w) => WireVersion::parse(w)
                .ok_or_else(|| config_error(format!("transport-ws: unknown default_wire {w:?}")))?,
        };
        if config.ping_interval_ms == 0 || config.max_message_bytes == 0 || config.max_queued_messages == 0 {
            return Err(config_error(
                "transport-ws: ping_interval_ms, max_message_bytes and max_queued_messages must be positive"
                    .into(),
            ));
        }

        let runtime = PluginRuntime::new("transport-ws", config.workers)?;
        let listeners = dispatch_listen::bind(&runtime, "transport-ws", &access)?;
        let bound: Vec<SocketAddr> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();

        let ping_interval = Duration::from_millis(config.ping_interval_ms);
        let options = conn::Options {
            ping_interval,
            idle_timeout: ping_interval * 3,
            max_message_bytes: config.max_message_bytes,
            max_queued: config.max_queued_messages,
        };
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(config.max_message_bytes))
            .max_frame_size(Some(config.max_message_bytes))
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(0);
        let hub = Hub::new(host.clone(), runtime.runner(), config.max_queued_messages);
        let shared = Arc::new(Shared {
            hub: Arc::clone(&hub),
            host: host.clone(),
            runner: runtime.runner(),
            gate: Gate::new(token.is_some(), config.allowed_origins.as_deref(), &config.allowed_hosts),
            token,
            default_wire,
            ws_config,
            options,
            tickets: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            max_connections: config.max_connections.max(1),
            closed: Notify::new(),
            announcing: Mutex::new(()),
        });

        subscribe_broadcasts(&host, &hub, &runtime.runner())?;
        let s = Arc::clone(&shared);
        host.provide_sync(&WEBSOCKET, move |request| s.upgrade_service(request))?;

        let (stop, stopped) = watch::channel(false);
        let header_timeout = Duration::from_millis(config.header_timeout_ms);
        for listener in listeners {
            runtime.runner().spawn(accept_loop(
                listener,
                Arc::clone(&shared),
                stopped.clone(),
                header_timeout,
            ));
        }
        let signal = host.shutdown_signal();
        let stopper = stop.clone();
        runtime.runner().spawn(async move {
            signal.await;
            let _ = stopper.send(true);
        });
        tracing::info!(addresses = %bound.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "), "WebSocket listening");
        let grace = Duration::from_millis(config.shutdown_grace_ms);
        Ok(TransportWs { runtime, shared, stop, grace, bound })
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        let open = self.shared.open.load(Ordering::SeqCst);
        if open > 0 {
            tracing::info!(open, "closing WebSocket connections");
            // The session aborts running turns at shutdown and seals them:
            // let their watchers see that, then give the writers a moment
            // to send it.
            let hub = Arc::clone(&self.shared.hub);
            let grace = self.grace;
            let delivered = self.runtime.handle().block_on(async move {
                let done = tokio::time::timeout(grace, hub.turns_delivered()).await.is_ok();
                tokio::time::sleep(Duration::from_millis(100)).await;
                done
            });
            if !delivered {
                tracing::warn!("watched turns still running after the shutdown grace period; closing anyway");
            }
        }
        // Dropping the runtime drops every connection: clients see the
        // socket close and reconnect to the next server.
        self.runtime.shutdown(Duration::from_millis(500));
        Ok(())
    }
}

/// What every client hears: catalog changes, surface updates to their
/// watchers, conversation status and open requests.
fn subscribe_broadcasts(host: &Host, hub: &Arc<Hub>, runner: &Runner) -> Result<(), Error> {
    let (h, r) = (Arc::clone(hub), runner.clone());
    host.subscribe(&CHANGED, move |changed: SurfaceChanged| {
        let hub = Arc::clone(&h);
        r.run(async move {
            surface_changed(&hub, changed).await;
            Ok(())
        })
    })?;
    // A status change here, or relayed from another host sharing the
    // store: told to every client, and a watched conversation's new turn
    // is fed to its watchers.
    for key in [&STATUS, &dispatch_contracts::cluster::REMOTE_STATUS] {
        let h = Arc::clone(hub);
        host.subscribe_sync(key, move |changed: StatusChanged| {
            let StatusChanged { conversation_id, workspace_id, status } = changed;
            h.broadcast(&message(&json!({
                "type": "conversation.statusChanged",
                "conversationId": conversation_id,
                "workspaceId": workspace_id,
                "status": status,
            })));
            if status == ConversationStatus::Active && h.is_watched(&conversation_id) {
                h.probe(conversation_id, true);
            }
            Ok(())
        })?;
    }
    let h = Arc::clone(hub);
    host.subscribe_sync(&OPEN, move |open: OpenRequested| {
        h.broadcast(&message(&json!({
            "type": "conversation.open",
            "conversationId": open.conversation_id,
            "workspaceId": open.workspace_id,
        })));
        Ok(())
    })?;
    // A compaction restarted a conversation's seqs: clients drop their copy.
    let h = Arc::clone(hub);
    host.subscribe_sync(
        &dispatch_contracts::compaction::COMPACTED,
        move |c: dispatch_contracts::compaction::Compacted| {
            h.broadcast(&message(&json!({
                "type": "conversation.compacted",
                "conversationId": c.conversation_id,
                "newConversationId": c.new_conversation_id,
                "messagesSummarized": c.messages_summarized,
                "messagesKept": c.messages_kept,
            })));
            Ok(())
        },
    )?;
    Ok(())
}

async fn surface_changed(hub: &Arc<Hub>, changed: SurfaceChanged) {
    let SurfaceChanged { surface_id, spec, catalog_changed, conversation_id, .. } = changed;
    hub.surface_changed(&surface_id);
    if catalog_changed {
        if let Some(frame) = hub.catalog_frame().await {
            hub.broadcast(&frame);
        }
    }
    let Some(spec) = spec else { return };
    let update = |spec: &dispatch_contracts::surface::SurfaceSpec, conversation: Option<&str>| {
        let mut u = json!({"surfaceId": surface_id, "spec": spec});
        if let Some(c) = conversation {
            u["conversationId"] = json!(c);
        }
        message(&json!({"type": "update", "update": u}))
    };
    hub.to_surface_watchers(
        &(surface_id.clone(), conversation_id.clone()),
        &update(&spec, conversation_id.as_deref()),
    );
    if conversation_id.is_none() {
        // The default of a conversation-scoped surface changed: each watched
        // conversation shows it unless it has its own, so ask for each.
        for c in hub.surface_conversations(&surface_id) {
            let request =
                RegistryRequest::Get { surface_id: surface_id.clone(), conversation_id: Some(c.clone()) };
            if let Ok(answer) = hub.host().call(&REGISTRY, &request).await {
                if let Some(spec) = answer.spec {
                    hub.to_surface_watchers(&(surface_id.clone(), Some(c.clone())), &update(&spec, Some(&c)));
                }
            }
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    header_timeout: Duration,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            stop = stopped.wait_for(|s| *s) => { drop(stop); return }
        };
        let (stream, _) = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let runner = shared.runner.clone();
        runner.spawn(async move {
            let s = Arc::clone(&shared);
            let service = service_fn(move |req| {
                let s = Arc::clone(&s);
                async move { Ok::<_, std::convert::Infallible>(upgrade(&s, req)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upgrade connection ended with an error");
            }
        });
    }
}

/// Answer a request on the WebSocket port: `101` and a served connection,
/// or the refusal.
fn upgrade(shared: &Arc<Shared>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Err(r) = check_token(shared.token.as_deref(), &req) {
        return r.response();
    }
    // Two `Host`s must not let the second slip past a check of the first.
    if req.headers().get_all(hyper::header::HOST).iter().count() > 1 {
        return Refusal::new(StatusCode::FORBIDDEN, "host_forbidden", "more than one Host header").response();
    }
    if let Err(r) = shared.check_room() {
        return r.response();
    }
    let headers = req.headers();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (accept, wire) = match check_upgrade(header, req.uri().query(), shared.default_wire, &shared.gate) {
        Ok(a) => a,
        Err(r) => return r.response(),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let s = Arc::clone(shared);
    shared.runner.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(s.ws_config))
                        .await;
                s.spawn_connection(ws, wire);
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    r
}

dispatch_abi::export_plugin!(TransportWs);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers<'a>(list: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |name| list.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    }

    fn local() -> Gate {
        Gate::new(false, None, &[])
    }

    const UPGRADE_HEADERS: [(&str, &str); 4] = [
        ("Upgrade", "websocket"),
        ("Connection", "keep-alive, Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn the_accept_key_is_rfc_6455s_and_the_wire_comes_from_the_query() {
        let (accept, wire) =
            check_upgrade(headers(&UPGRADE_HEADERS), None, WireVersion::Latest, &local()).unwrap();
        // The worked example of RFC 6455 §1.3.
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(wire, WireVersion::Latest);
        let (_, wire) =
            check_upgrade(headers(&UPGRADE_HEADERS), Some("token=x&wire=0.1"), WireVersion::Latest, &local())
                .unwrap();
        assert_eq!(wire, WireVersion::V0_1);
        let bad = check_upgrade(headers(&UPGRADE_HEADERS), Some("wire=9"), WireVersion::Latest, &local())
            .unwrap_err();
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn only_pages_from_this_machine_may_connect_by_default() {
        let from = |origin: &'static str| {
            let mut h = UPGRADE_HEADERS.to_vec();
            h.push(("Origin", origin));
            h
        };
        for ok in
            ["http://localhost:5173", "http://127.0.0.1:24203", "http://[::1]:24203", "https://LOCALHOST"]
        {
            let h = from(ok);
            assert!(check_upgrade(headers(&h), None, WireVersion::Latest, &local()).is_ok(), "{ok}");
        }
        let h = from("https://evil.example");
        let refused = check_upgrade(headers(&h), None, WireVersion::Latest, &local()).unwrap_err();
        assert_eq!((refused.status, refused.code), (StatusCode::FORBIDDEN, "origin_forbidden"));
        // DNS rebinding: a page whose own name resolves to 127.0.0.1.
        let mut h = UPGRADE_HEADERS.to_vec();
        h.push(("Host", "rebind.evil.example:24205"));
        let refused = check_upgrade(headers(&h), None, WireVersion::Latest, &local()).unwrap_err();
        assert_eq!((refused.status, refused.code), (StatusCode::FORBIDDEN, "host_forbidden"));
        // The page served from the HTTP port, opened by this machine's address.
        let mut h = from("http://192.168.7.7:24203");
        h.push(("Host", "192.168.7.7:24205"));
        assert!(check_upgrade(headers(&h), None, WireVersion::Latest, &local()).is_ok());
        let h = from("http://localhost.evil.example");
        assert!(check_upgrade(headers(&h), None, WireVersion::Latest, &local()).is_err());
        let listed = Gate::new(false, Some(&["https://evil.example".into()]), &[]);
        assert!(
            check_upgrade(headers(&from("https://evil.example")), None, WireVersion::Latest, &listed).is_ok()
        );
        assert!(check_upgrade(
            headers(&from("https://x.example")),
            None,
            WireVersion::Latest,
            &Gate::new(false, Some(&["*".into()]), &[])
        )
        .is_ok());
    }

    #[test]
    fn a_plain_request_is_told_to_upgrade() {
        let r = check_upgrade(headers(&[("Host", "localhost")]), None, WireVersion::Latest, &local())
            .unwrap_err();
        assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED);
        let old =
            [UPGRADE_HEADERS[0], UPGRADE_HEADERS[1], ("Sec-WebSocket-Version", "8"), UPGRADE_HEADERS[3]];
        assert_eq!(
            check_upgrade(headers(&old), None, WireVersion::Latest, &local()).unwrap_err().code,
            "upgrade_required"
        );
    }

    #[test]
    fn adopting_a_descriptor_that_is_not_a_socket_leaves_it_open() {
        let file = tempfile_like();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        assert!(adopt_fd(fd).is_err());
        // Still ours: writing through it works.
        use std::io::Write as _;
        (&file).write_all(b"still open").unwrap();
        assert!(adopt_fd(-1).is_err());
    }

    fn tempfile_like() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("dispatch-ws-test-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let _ = std::fs::remove_file(&path);
        f
    }
}
