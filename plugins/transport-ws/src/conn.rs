//! One client connection: its reader (client ops, in order) and its writer
//! (the client's queue, pings, the close frame).

use std::sync::Arc;
use std::time::Duration;

use dispatch_abi::{codes, Error};
use dispatch_contracts::protocol::wire::{is_valid_conversation_id, CONVERSATION_ID_RULE};
use dispatch_contracts::session::{self, ChatRequest, Queued, SessionRequest, Started, WireVersion};
use dispatch_contracts::surface::{RegistryRequest, SurfaceSpec, REGISTRY};
use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::hub::{message, Hub, Item, Joined, SurfaceKey, MAX_WATCHED};

/// Per-connection settings.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How often the server pings.
    pub ping_interval: Duration,
    /// Close a client that sent nothing (not even a pong) for this long.
    pub idle_timeout: Duration,
    /// Largest client message, for the close reason.
    pub max_message_bytes: usize,
    /// Queue bound, for the close reason.
    pub max_queued: usize,
}

/// How long the writer may take to deliver a close frame.
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// Serve one upgraded connection until either side ends it.
pub async fn serve<S>(hub: Arc<Hub>, ws: WebSocketStream<S>, wire: WireVersion, options: Options)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Joined { id, rx, kick } = hub.join(wire);
    if let Some(catalog) = hub.catalog_frame().await {
        hub.send_to(id, catalog);
    }
    let (sink, mut stream) = ws.split();
    let (close_tx, close_rx) = mpsc::unbounded_channel::<CloseFrame>();
    // Polled beside the reader in this task, not spawned: when the
    // connection's task is stopped (deactivation), the writer goes with it.
    let writer = write(sink, rx, close_rx, kick, options);
    let mut writer = std::pin::pin!(writer);
    let client = Client { hub: Arc::clone(&hub), id };

    let reader = async {
        loop {
            let next = match tokio::time::timeout(options.idle_timeout, stream.next()).await {
                Ok(n) => n,
                Err(_) => {
                    let reason = format!(
                        "nothing received for {} s (not even a pong)",
                        options.idle_timeout.as_secs()
                    );
                    let _ = close_tx.send(close(CloseCode::Away, &reason));
                    return;
                }
            };
            match next {
                None | Some(Ok(Message::Close(_))) => return,
                Some(Ok(Message::Text(text))) => client.handle(text.as_str()).await,
                Some(Ok(Message::Binary(_))) => {
                    client.error(None, "binary messages are not supported: send JSON as text");
                }
                // Pongs to our pings are sent by the protocol layer.
                Some(Ok(_)) => {}
                Some(Err(WsError::Capacity(e))) => {
                    let reason =
                        format!("message too big ({e}); at most {} bytes", options.max_message_bytes);
                    let _ = close_tx.send(close(CloseCode::Size, &reason));
                    return;
                }
                Some(Err(WsError::Protocol(e))) => {
                    let _ = close_tx.send(close(CloseCode::Protocol, &e.to_string()));
                    return;
                }
                Some(Err(WsError::Utf8(_))) => {
                    let _ = close_tx.send(close(CloseCode::Invalid, "a text message was not UTF-8"));
                    return;
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "connection read failed");
                    return;
                }
            }
        }
    };
    tokio::select! {
        () = reader => {
            drop(close_tx);
            // Let the writer send what is queued and the close frame.
            // (Past the deadline it is dropped, socket and all.)
            let _ = tokio::time::timeout(CLOSE_DEADLINE, &mut writer).await;
        }
        // Kicked, or the socket broke while writing: stop reading too.
        _ = &mut writer => {}
    }
    hub.leave(id);
}

fn close(code: CloseCode, reason: &str) -> CloseFrame {
    // A close reason is at most 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame { code, reason: reason[..end].to_owned().into() }
}

async fn write<S>(
    mut sink: futures::stream::SplitSink<WebSocketStream<S>, Message>,
    mut rx: mpsc::Receiver<Item>,
    mut close_rx: mpsc::UnboundedReceiver<CloseFrame>,
    kick: Arc<tokio::sync::Notify>,
    options: Options,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut ping = tokio::time::interval(options.ping_interval);
    ping.tick().await;
    let kicked = kick.notified();
    let mut kicked = std::pin::pin!(kicked);
    loop {
        let step = async {
            tokio::select! {
                item = rx.recv() => match item {
                    Some(item) => {
                        for frame in item.iter() {
                            sink.feed(Message::Text(frame.clone())).await?;
                        }
                        // Everything else already queued goes in the same flush.
                        while let Ok(item) = rx.try_recv() {
                            for frame in item.iter() {
                                sink.feed(Message::Text(frame.clone())).await?;
                            }
                        }
                        sink.flush().await.map(|()| true)
                    }
                    None => Ok(false),
                },
                c = close_rx.recv() => {
                    // What was queued before the end goes out first.
                    while let Ok(item) = rx.try_recv() {
                        for frame in item.iter() {
                            sink.feed(Message::Text(frame.clone())).await?;
                        }
                    }
                    match c {
                        Some(frame) => sink.send(Message::Close(Some(frame))).await?,
                        None => sink.close().await?,
                    }
                    Ok(false)
                }
                _ = ping.tick() => sink.send(Message::Ping(Default::default())).await.map(|()| true),
            }
        };
        tokio::select! {
            biased;
            () = kicked.as_mut() => {
                let reason = format!("too slow: {} messages unread; reconnect and subscribe again", options.max_queued);
                tracing::info!("a WebSocket client fell behind and was disconnected");
                let bye = sink.send(Message::Close(Some(close(CloseCode::Policy, &reason))));
                let _ = tokio::time::timeout(Duration::from_millis(250), bye).await;
                return;
            }
            r = step => match r {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "connection write failed");
                    return;
                }
            }
        }
    }
}

fn too_many(what: &str) -> String {
    format!("this connection already watches {MAX_WATCHED} {what}: unsubscribe from some first")
}

/// A surface op's fields.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SurfaceOp {
    surface_id: String,
    #[serde(default)]
    conversation_id: Option<String>,
    #[serde(default)]
    action_id: Option<String>,
    #[serde(default)]
    payload: Value,
}

/// A chat op's fields (other than `chat.send`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChatOp {
    conversation_id: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    workspace_id: Option<String>,
}

struct Client {
    hub: Arc<Hub>,
    id: u64,
}

impl Client {
    fn send(&self, value: &Value) {
        self.hub.send_to(self.id, message(value));
    }

    fn error(&self, surface_id: Option<&str>, text: &str) {
        let mut v = json!({"type": "error", "message": text});
        if let Some(s) = surface_id {
            v["surfaceId"] = json!(s);
        }
        self.send(&v);
    }

    fn chat_error(&self, conversation_id: Option<&str>, text: &str) {
        let mut v = json!({"type": "chat.error", "message": text});
        if let Some(c) = conversation_id {
            v["conversationId"] = json!(c);
        }
        self.send(&v);
    }

    /// One client message. Every malformed one is answered; none closes
    /// the socket.
    async fn handle(&self, text: &str) {
        let Ok(value) = serde_json::from_str::<Value>(text) else {
            return self.error(None, "Invalid JSON");
        };
        let Some(kind) = value.get("type").and_then(Value::as_str).map(str::to_owned) else {
            return self.error(None, "a message must be a JSON object with a string `type`");
        };
        match kind.as_str() {
            "subscribe" | "unsubscribe" | "invoke" => {
                let surface_id = value.get("surfaceId").and_then(Value::as_str).map(str::to_owned);
                match serde_json::from_value::<SurfaceOp>(value) {
                    Ok(op) => self.surface_op(&kind, op).await,
                    Err(e) => self.error(surface_id.as_deref(), &format!("{kind}: {e}")),
                }
            }
            "chat.send" => {
                let conversation = value.get("conversationId").and_then(Value::as_str).map(str::to_owned);
                match serde_json::from_value::<ChatRequest>(value) {
                    Ok(request) => self.chat_send(request).await,
                    Err(e) => self.chat_error(conversation.as_deref(), &format!("chat.send: {e}")),
                }
            }
            "chat.subscribe" | "chat.unsubscribe" | "chat.queue" | "chat.queue.cancel" => {
                let conversation = value.get("conversationId").and_then(Value::as_str).map(str::to_owned);
                match serde_json::from_value::<ChatOp>(value) {
                    Ok(op) if !is_valid_conversation_id(&op.conversation_id) => {
                        let shown: String = op.conversation_id.chars().take(64).collect();
                        self.chat_error(
                            None,
                            &format!("{kind}: invalid conversationId {shown:?}: {CONVERSATION_ID_RULE}"),
                        );
                    }
                    Ok(op) => self.chat_op(&kind, op).await,
                    Err(e) => self.chat_error(conversation.as_deref(), &format!("{kind}: {e}")),
                }
            }
            other => self.error(None, &format!("Unknown message type: {other}")),
        }
    }

    async fn surface_op(&self, kind: &str, op: SurfaceOp) {
        let SurfaceOp { surface_id, conversation_id, action_id, payload } = op;
        let host = self.hub.host();
        match kind {
            "subscribe" => {
                let key = (surface_id.clone(), conversation_id.clone());
                if !self.hub.may_watch(self.id, true) {
                    return self.error(Some(&surface_id), &too_many("surface instances"));
                }
                let version = self.hub.surface_version(&surface_id);
                let Some(spec) = self.read_surface(&key).await else { return };
                let mut reply = json!({"type": "surface", "spec": spec});
                if let Some(c) = &conversation_id {
                    reply["conversationId"] = json!(c);
                }
                if self.hub.watch_surface(self.id, key.clone(), message(&reply), version) {
                    // A change slipped in before we were listening: send it.
                    if let Some(spec) = self.read_surface(&key).await {
                        let mut update = json!({"surfaceId": surface_id, "spec": spec});
                        if let Some(c) = conversation_id {
                            update["conversationId"] = json!(c);
                        }
                        self.send(&json!({"type": "update", "update": update}));
                    }
                }
            }
            "unsubscribe" => self.hub.unwatch_surface(self.id, &(surface_id, conversation_id)),
            _ => {
                let Some(action_id) = action_id else {
                    return self.error(Some(&surface_id), "invoke: missing field `actionId`");
                };
                let request = RegistryRequest::Invoke {
                    surface_id: surface_id.clone(),
                    action_id,
                    payload,
                    conversation_id,
                };
                if let Err(e) = host.call(&REGISTRY, &request).await {
                    self.surface_error(&surface_id, &e);
                }
            }
        }
    }

    /// A surface instance's current spec; answers the client an error
    /// when there is none.
    async fn read_surface(&self, key: &SurfaceKey) -> Option<SurfaceSpec> {
        let (surface_id, conversation_id) = key;
        let request =
            RegistryRequest::Get { surface_id: surface_id.clone(), conversation_id: conversation_id.clone() };
        match self.hub.host().call(&REGISTRY, &request).await {
            Ok(answer) => {
                if answer.spec.is_none() {
                    self.error(Some(surface_id), &format!("Unknown surface: {surface_id}"));
                }
                answer.spec
            }
            Err(e) => {
                self.surface_error(surface_id, &e);
                None
            }
        }
    }

    fn surface_error(&self, surface_id: &str, e: &Error) {
        if e.code() == codes::NOT_FOUND {
            self.error(Some(surface_id), &format!("Unknown surface: {surface_id}"));
        } else {
            self.error(Some(surface_id), e.message());
        }
    }

    async fn chat_send(&self, mut request: ChatRequest) {
        // The sender watches the conversation before the turn starts, so
        // it sees the turn from its first event; a new one gets its id here.
        let minted = request.conversation_id.as_deref().is_none_or(str::is_empty);
        let conversation = match request.conversation_id.as_deref() {
            Some(c) if !c.is_empty() => c.to_owned(),
            _ => uuid::Uuid::new_v4().to_string(),
        };
        if !is_valid_conversation_id(&conversation) {
            let shown: String = conversation.chars().take(64).collect();
            return self.chat_error(
                None,
                &format!("chat.send: invalid conversationId {shown:?}: {CONVERSATION_ID_RULE}"),
            );
        }
        request.conversation_id = Some(conversation.clone());
        if !self.hub.may_watch(self.id, false) {
            return self.chat_error(Some(&conversation), &too_many("conversations"));
        }
        let created = self.hub.watch_chat(self.id, &conversation);
        match self.hub.host().call(&session::answering::<Started>(), &SessionRequest::Chat { request }).await
        {
            Ok(started) => self.hub.turn_started(&started.conversation_id, &started.turn_id),
            Err(e) => {
                if minted {
                    // Nobody else knows this id: nothing to watch.
                    self.hub.unwatch_chat(self.id, &conversation);
                } else if created {
                    // Something else may be running there: watch it.
                    self.hub.probe(conversation.clone(), false);
                }
                self.chat_error(Some(&conversation), e.message());
            }
        }
    }

    async fn chat_op(&self, kind: &str, op: ChatOp) {
        let ChatOp { conversation_id, text, message_id, workspace_id } = op;
        let host = self.hub.host();
        match kind {
            "chat.subscribe" => {
                if !self.hub.may_watch(self.id, false) {
                    return self.chat_error(Some(&conversation_id), &too_many("conversations"));
                }
                if self.hub.watch_chat(self.id, &conversation_id) {
                    self.hub.probe(conversation_id, false);
                }
            }
            "chat.unsubscribe" => self.hub.unwatch_chat(self.id, &conversation_id),
            "chat.queue" => {
                let Some(text) = text else {
                    return self.chat_error(Some(&conversation_id), "chat.queue: missing field `text`");
                };
                // It may start a turn its sender then watches: within the
                // same cap on watched conversations as chat.send.
                if !self.hub.may_watch(self.id, false) {
                    return self.chat_error(Some(&conversation_id), &too_many("conversations"));
                }
                let request =
                    SessionRequest::Queue { conversation_id: conversation_id.clone(), text, workspace_id };
                match host.call(&session::answering::<Queued>(), &request).await {
                    // A new turn: its sender watches it, as with chat.send.
                    Ok(q) if q.started_turn => {
                        if self.hub.watch_chat(self.id, &conversation_id) {
                            self.hub.probe(conversation_id, true);
                        }
                    }
                    // Queued: the message-queue surface shows it.
                    Ok(_) => {}
                    Err(e) => self.chat_error(Some(&conversation_id), e.message()),
                }
            }
            _ => {
                let Some(message_id) = message_id.filter(|m| !m.is_empty()) else {
                    return self
                        .chat_error(Some(&conversation_id), "chat.queue.cancel: missing field `messageId`");
                };
                let request =
                    SessionRequest::Unqueue { conversation_id: conversation_id.clone(), message_id };
                if let Err(e) = host.call(&session::SESSION, &request).await {
                    self.chat_error(Some(&conversation_id), e.message());
                }
            }
        }
    }
}
