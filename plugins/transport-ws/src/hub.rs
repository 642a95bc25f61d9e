//! The hub: every connected client, what each watches, and the fan-out.
//!
//! One lock guards it all; nothing under it awaits. Messages are
//! serialized once and shared ([`Utf8Bytes`] is reference counted), then
//! offered to each client's bounded queue without waiting: a client whose
//! queue is full is *kicked* (its connection closes, it reconnects and
//! re-subscribes) rather than slowing the turn or anyone else.
//!
//! # Chat feeds
//!
//! A conversation somebody watches has one *feed*: a task that reads each
//! of its turns from the session (the `events` pull, from the turn's first
//! event) and fans the events out. The feed keeps the running turn's
//! messages, so a client that subscribes mid-turn is replayed from the
//! `user-message` before it gets the live ones, in one ordered queue. Turns
//! reach the feed in order: from `chat.send`, from the session's `active`
//! status, or from a status probe when the first client subscribes. When
//! the last watcher leaves, the feed stops; the turn does not.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use dispatch_abi::runtime::Runner;
use dispatch_abi::{codes, Host};
use dispatch_contracts::session::{self, EventBatch, SessionRequest, StatusInfo, WireVersion};
use dispatch_contracts::surface::{RegistryRequest, REGISTRY};
use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A serialized server message, shared by every client it goes to.
pub type Frame = Utf8Bytes;

/// What a client's queue holds: messages that go out together — one
/// message, a batch of a turn's events read at once, or a late
/// subscriber's whole replay. The queue's bound counts these, so a replay
/// of thousands of events is one entry, not a reason to disconnect.
pub type Item = Arc<[Frame]>;

fn one(frame: Frame) -> Item {
    Arc::from(vec![frame])
}

/// Which surface instance a client watches: the surface and, for a
/// conversation-scoped one, the conversation.
pub type SurfaceKey = (String, Option<String>);

/// A client, as the hub sees it.
#[derive(Debug)]
struct Client {
    tx: mpsc::Sender<Item>,
    wire: WireVersion,
    /// Fired when the client fell too far behind.
    kick: Arc<Notify>,
    surfaces: HashSet<SurfaceKey>,
    chats: HashSet<String>,
}

/// A watched conversation.
#[derive(Debug)]
struct Watch {
    /// Distinguishes this watch from a later one of the same conversation,
    /// so a stale feed task stops instead of writing into it.
    generation: u64,
    clients: HashSet<u64>,
    /// The running turn's replay for a late subscriber, each message with
    /// whether wire 0.1 has its event type: the turn's first messages and
    /// its newest [`REPLAY_TAIL`] (see [`Replay`]).
    frames: Replay,
    /// Turns for the feed to read, in order.
    turns: mpsc::UnboundedSender<String>,
    /// Turns already handed to the feed (recent ones), to read each once.
    queued: VecDeque<String>,
}

#[derive(Debug, Default)]
struct State {
    clients: HashMap<u64, Client>,
    surfaces: HashMap<SurfaceKey, HashSet<u64>>,
    /// Changes seen per surface, so a subscription can tell whether one
    /// slipped in between reading the spec and registering.
    surface_changes: HashMap<String, u64>,
    watches: HashMap<String, Watch>,
}

/// What a new client gets from [`Hub::join`].
#[derive(Debug)]
pub struct Joined {
    /// Its id.
    pub id: u64,
    /// Its outgoing messages.
    pub rx: mpsc::Receiver<Item>,
    /// Fired when it is kicked for being too slow.
    pub kick: Arc<Notify>,
}

/// The shared state of the transport.
#[derive(Debug)]
pub struct Hub {
    host: Host,
    runner: Runner,
    state: Mutex<State>,
    next_id: AtomicU64,
    /// Messages a client may have waiting before it is kicked.
    max_queued: usize,
    /// Feeds in the middle of a turn, so shutdown can wait for the turns
    /// it aborted to seal before closing the sockets.
    reading: AtomicUsize,
    idle: Notify,
}

/// Surface instances, and conversations, one client may watch: each costs
/// the server a little memory (and a conversation a feed task), so a
/// client looping over ids must not grow it without bound.
pub const MAX_WATCHED: usize = 1024;

/// Turns a feed remembers having read, so a late duplicate is skipped.
const REMEMBERED_TURNS: usize = 8;

/// How many of a running turn's newest messages a late subscriber's
/// replay keeps as they were sent; older ones are kept compact (see
/// [`Replay`]).
pub const REPLAY_TAIL: usize = 4096;

/// How many of a turn's first messages a replay keeps as sent
/// (`user-message`, `turn-start`).
const REPLAY_HEAD: usize = 2;

/// A running turn's replay for a late subscriber: its first messages and
/// its newest [`REPLAY_TAIL`] as sent; everything between complete but
/// compact — adjacent text and reasoning deltas merged into one (the
/// session merges its own log the same way), other messages kept. A turn
/// of 300 000 deltas held ~1 KB per delta here as a second full copy; it
/// now holds its text.
#[derive(Debug, Default)]
struct Replay {
    head: Vec<(Frame, bool)>,
    middle: Vec<(Frame, bool)>,
    /// The delta run being merged, rendered when a replay is asked for.
    run: Option<DeltaRun>,
    tail: VecDeque<(Frame, bool)>,
}

/// Adjacent deltas of one kind, merged.
#[derive(Debug)]
struct DeltaRun {
    kind: String,
    conversation_id: String,
    turn_id: String,
    text: String,
}

impl DeltaRun {
    fn frame(&self) -> Frame {
        let event = serde_json::json!({
            "type": self.kind,
            "conversationId": self.conversation_id,
            "turnId": self.turn_id,
            "delta": self.text,
        });
        Frame::from(format!(r#"{{"type":"chat.delta","event":{event}}}"#))
    }
}

impl Replay {
    fn push(&mut self, frame: (Frame, bool)) {
        if self.head.len() < REPLAY_HEAD {
            self.head.push(frame);
            return;
        }
        if self.tail.len() == REPLAY_TAIL {
            if let Some(old) = self.tail.pop_front() {
                self.absorb(old);
            }
        }
        self.tail.push_back(frame);
    }

    /// Keep an old message compactly: a delta joins the run, anything else
    /// ends it.
    fn absorb(&mut self, (frame, in_v0_1): (Frame, bool)) {
        #[derive(serde::Deserialize)]
        struct Message {
            event: Event,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Event {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            conversation_id: String,
            #[serde(default)]
            turn_id: String,
            delta: Option<String>,
        }
        let delta = serde_json::from_str::<Message>(frame.as_str())
            .ok()
            .filter(|m| m.event.kind == "text-delta" || m.event.kind == "reasoning-delta")
            .and_then(|m| m.event.delta.clone().map(|d| (m.event, d)));
        match (delta, &mut self.run) {
            (Some((event, delta)), Some(run)) if run.kind == event.kind => run.text.push_str(&delta),
            (Some((event, delta)), _) => {
                self.flush();
                self.run = Some(DeltaRun {
                    kind: event.kind,
                    conversation_id: event.conversation_id,
                    turn_id: event.turn_id,
                    text: delta,
                });
            }
            (None, _) => {
                self.flush();
                self.middle.push((frame, in_v0_1));
            }
        }
    }

    fn flush(&mut self) {
        if let Some(run) = self.run.take() {
            // Deltas are in every wire version.
            self.middle.push((run.frame(), true));
        }
    }

    /// The whole replay, in order.
    fn frames(&self) -> Vec<(Frame, bool)> {
        let mut out = self.head.clone();
        out.extend(self.middle.iter().cloned());
        if let Some(run) = &self.run {
            out.push((run.frame(), true));
        }
        out.extend(self.tail.iter().cloned());
        out
    }

    fn clear(&mut self) {
        *self = Replay::default();
    }
}

impl Hub {
    /// A hub that reads turns through `host` and runs feeds on `runner`.
    pub fn new(host: Host, runner: Runner, max_queued: usize) -> Arc<Self> {
        Arc::new(Hub {
            host,
            runner,
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
            max_queued: max_queued.max(1),
            reading: AtomicUsize::new(0),
            idle: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bus, for the connection handlers.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Connected clients.
    pub fn clients(&self) -> usize {
        self.lock().clients.len()
    }

    /// Register a client.
    pub fn join(&self, wire: WireVersion) -> Joined {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.max_queued);
        let kick = Arc::new(Notify::new());
        let client =
            Client { tx, wire, kick: Arc::clone(&kick), surfaces: HashSet::new(), chats: HashSet::new() };
        self.lock().clients.insert(id, client);
        Joined { id, rx, kick }
    }

    /// Forget a client and everything it watched. Feeds nobody watches any
    /// more stop.
    pub fn leave(&self, id: u64) {
        let mut state = self.lock();
        let Some(client) = state.clients.remove(&id) else { return };
        for key in client.surfaces {
            remove_from(&mut state.surfaces, &key, id);
        }
        for conversation in client.chats {
            drop_watcher(&mut state, &conversation, id);
        }
    }

    /// Queue `frame` for one client.
    pub fn send_to(&self, id: u64, frame: Frame) {
        let state = self.lock();
        if let Some(c) = state.clients.get(&id) {
            offer(c, one(frame));
        }
    }

    /// Queue `frame` for every client.
    pub fn broadcast(&self, frame: &Frame) {
        let item = one(frame.clone());
        let state = self.lock();
        for c in state.clients.values() {
            offer(c, Arc::clone(&item));
        }
    }

    /// Whether the client may watch one more surface instance (`surface`)
    /// or conversation.
    pub fn may_watch(&self, id: u64, surface: bool) -> bool {
        let state = self.lock();
        state.clients.get(&id).is_some_and(|c| {
            if surface {
                c.surfaces.len() < MAX_WATCHED
            } else {
                c.chats.len() < MAX_WATCHED
            }
        })
    }

    // ---- surfaces ------------------------------------------------------

    /// How many changes of `surface` this hub has seen.
    pub fn surface_version(&self, surface: &str) -> u64 {
        self.lock().surface_changes.get(surface).copied().unwrap_or(0)
    }

    /// Count a change of `surface` (before its update goes out).
    pub fn surface_changed(&self, surface: &str) {
        *self.lock().surface_changes.entry(surface.to_owned()).or_default() += 1;
    }

    /// Watch a surface instance and queue `reply` (its spec, read when the
    /// surface was at `version`) in the same step, so no update can
    /// overtake it. Answers whether the surface changed since `version`:
    /// the caller then sends the current spec as an update.
    pub fn watch_surface(&self, id: u64, key: SurfaceKey, reply: Frame, version: u64) -> bool {
        let mut state = self.lock();
        let changed = state.surface_changes.get(&key.0).copied().unwrap_or(0) != version;
        let Some(client) = state.clients.get_mut(&id) else { return false };
        offer(client, one(reply));
        if client.surfaces.insert(key.clone()) {
            state.surfaces.entry(key).or_default().insert(id);
        }
        changed
    }

    /// Stop watching a surface instance.
    pub fn unwatch_surface(&self, id: u64, key: &SurfaceKey) {
        let mut state = self.lock();
        if let Some(client) = state.clients.get_mut(&id) {
            client.surfaces.remove(key);
        }
        remove_from(&mut state.surfaces, key, id);
    }

    /// Send `frame` to the watchers of `key`.
    pub fn to_surface_watchers(&self, key: &SurfaceKey, frame: &Frame) {
        let state = self.lock();
        let Some(ids) = state.surfaces.get(key) else { return };
        let item = one(frame.clone());
        for id in ids {
            if let Some(c) = state.clients.get(id) {
                offer(c, Arc::clone(&item));
            }
        }
    }

    /// The conversations whose instance of `surface` somebody watches.
    pub fn surface_conversations(&self, surface: &str) -> Vec<String> {
        let state = self.lock();
        state
            .surfaces
            .keys()
            .filter(|(s, c)| s == surface && c.is_some())
            .filter_map(|(_, c)| c.clone())
            .collect()
    }

    // ---- chats ---------------------------------------------------------

    /// Watch a conversation's turns. A client that already does gets
    /// nothing new (no second replay); otherwise it is replayed the
    /// running turn so far. Answers whether the conversation had no watch
    /// before (the caller then probes for a running turn).
    pub fn watch_chat(self: &Arc<Self>, id: u64, conversation: &str) -> bool {
        let mut state = self.lock();
        let Some(client) = state.clients.get_mut(&id) else { return false };
        if !client.chats.insert(conversation.to_owned()) {
            return false;
        }
        let created = !state.watches.contains_key(conversation);
        if created {
            let (turns, rx) = mpsc::unbounded_channel();
            let generation = self.next_id.fetch_add(1, Ordering::Relaxed);
            let watch = Watch {
                generation,
                clients: HashSet::new(),
                frames: Replay::default(),
                turns,
                queued: VecDeque::new(),
            };
            state.watches.insert(conversation.to_owned(), watch);
            self.runner.spawn(feed(Arc::clone(self), conversation.to_owned(), generation, rx));
        }
        let State { clients, watches, .. } = &mut *state;
        if let (Some(watch), Some(client)) = (watches.get_mut(conversation), clients.get(&id)) {
            watch.clients.insert(id);
            // The running turn so far, as one queue entry.
            let replay: Vec<Frame> = watch
                .frames
                .frames()
                .into_iter()
                .filter(|(_, in_v0_1)| *in_v0_1 || client.wire == WireVersion::Latest)
                .map(|(f, _)| f)
                .collect();
            if !replay.is_empty() {
                offer(client, Arc::from(replay));
            }
        }
        created
    }

    /// Stop watching a conversation (its turn goes on).
    pub fn unwatch_chat(&self, id: u64, conversation: &str) {
        let mut state = self.lock();
        if let Some(client) = state.clients.get_mut(&id) {
            client.chats.remove(conversation);
        }
        drop_watcher(&mut state, conversation, id);
    }

    /// Whether somebody watches the conversation.
    pub fn is_watched(&self, conversation: &str) -> bool {
        self.lock().watches.contains_key(conversation)
    }

    /// A turn of a watched conversation started: hand it to the feed
    /// (once).
    pub fn turn_started(&self, conversation: &str, turn: &str) {
        let mut state = self.lock();
        let Some(watch) = state.watches.get_mut(conversation) else { return };
        if watch.queued.iter().any(|t| t == turn) {
            return;
        }
        if watch.queued.len() == REMEMBERED_TURNS {
            watch.queued.pop_front();
        }
        watch.queued.push_back(turn.to_owned());
        let _ = watch.turns.send(turn.to_owned());
    }

    /// Ask the session whether the conversation runs a turn, and feed it if
    /// so (a client subscribed, or the status says a turn started).
    /// `started`: the session just said a turn started there, so its turn
    /// is fed even if it sealed before the answer (a turn that fails at
    /// once); otherwise only a running turn is.
    pub fn probe(self: &Arc<Self>, conversation: String, started: bool) {
        let hub = Arc::clone(self);
        self.runner.spawn(async move {
            let request = SessionRequest::Status { conversation_id: conversation.clone() };
            match hub.host.call(&session::answering::<StatusInfo>(), &request).await {
                Ok(StatusInfo { is_active, turn_id: Some(turn), .. }) if is_active || started => {
                    hub.turn_started(&conversation, &turn);
                }
                Ok(_) => {}
                Err(e) if e.code() == codes::NOT_FOUND => {}
                Err(e) => tracing::warn!(error = %e, %conversation, "cannot ask the session for a conversation's status"),
            }
        });
    }

    /// Hand a batch of a turn's events to the watchers. False when the
    /// watch is gone (the feed stops).
    fn fan_out(&self, conversation: &str, generation: u64, events: &[Box<RawValue>], sealed: bool) -> bool {
        let mut state = self.lock();
        let State { clients, watches, .. } = &mut *state;
        let Some(watch) = watches.get_mut(conversation).filter(|w| w.generation == generation) else {
            return false;
        };
        // The batch, serialized once per wire version, one queue entry each.
        let (mut latest, mut old) = (Vec::with_capacity(events.len()), Vec::with_capacity(events.len()));
        for event in events {
            let in_v0_1 = WireVersion::V0_1.includes(event_type(event.get()));
            let frame = Frame::from(format!(r#"{{"type":"chat.delta","event":{}}}"#, event.get()));
            if in_v0_1 {
                old.push(frame.clone());
            }
            latest.push(frame.clone());
            watch.frames.push((frame, in_v0_1));
        }
        let (latest, old): (Item, Item) = (Arc::from(latest), Arc::from(old));
        for id in &watch.clients {
            if let Some(c) = clients.get(id) {
                let item = if c.wire == WireVersion::Latest { &latest } else { &old };
                if !item.is_empty() {
                    offer(c, Arc::clone(item));
                }
            }
        }
        if sealed {
            // Nothing to replay once the turn is over: history is read over HTTP.
            watch.frames.clear();
        }
        true
    }

    /// A new turn begins on the feed: drop the last one's replay.
    fn begin_turn(&self, conversation: &str, generation: u64) -> bool {
        let mut state = self.lock();
        match state.watches.get_mut(conversation).filter(|w| w.generation == generation) {
            Some(w) => {
                w.frames.clear();
                true
            }
            None => false,
        }
    }

    /// Wait until no feed is in the middle of a turn (the session seals
    /// the turns it aborts at shutdown, and watchers should see that).
    pub async fn turns_delivered(&self) {
        loop {
            let idle = self.idle.notified();
            let mut idle = std::pin::pin!(idle);
            idle.as_mut().enable();
            if self.reading.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// The registry's catalog as a `catalog` message.
    pub async fn catalog_frame(&self) -> Option<Frame> {
        match self.host.call(&REGISTRY, &RegistryRequest::Catalog).await {
            Ok(r) => Some(message(&json!({"type": "catalog", "catalog": r.catalog.unwrap_or_default()}))),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the surface catalog");
                None
            }
        }
    }
}

/// Offer a message to a client's queue; a full queue kicks the client.
fn offer(client: &Client, item: Item) {
    if let Err(mpsc::error::TrySendError::Full(_)) = client.tx.try_send(item) {
        client.kick.notify_one();
    }
}

fn remove_from(map: &mut HashMap<SurfaceKey, HashSet<u64>>, key: &SurfaceKey, id: u64) {
    if let Some(ids) = map.get_mut(key) {
        ids.remove(&id);
        if ids.is_empty() {
            map.remove(key);
        }
    }
}

fn drop_watcher(state: &mut State, conversation: &str, id: u64) {
    if let Some(watch) = state.watches.get_mut(conversation) {
        watch.clients.remove(&id);
        if watch.clients.is_empty() {
            // Dropping the watch closes the feed's turn channel.
            state.watches.remove(conversation);
        }
    }
}

/// Serialize a server message.
pub fn message(value: &serde_json::Value) -> Frame {
    Frame::from(value.to_string())
}

/// An event's `type`, read without parsing the event: the session writes
/// it first (`{"type":"…"`); anything else is parsed.
fn event_type(json: &str) -> &str {
    if let Some(rest) = json.strip_prefix(r#"{"type":""#) {
        if let Some(end) = rest.find('"') {
            return &rest[..end];
        }
    }
    #[derive(serde::Deserialize)]
    struct Tagged<'a> {
        #[serde(rename = "type", borrow)]
        kind: &'a str,
    }
    serde_json::from_str::<Tagged<'_>>(json).map(|t| t.kind).unwrap_or("")
}

/// Read each turn handed to this watch, in order, until the watch goes.
async fn feed(
    hub: Arc<Hub>,
    conversation: String,
    generation: u64,
    mut turns: mpsc::UnboundedReceiver<String>,
) {
    while let Some(turn) = turns.recv().await {
        if !hub.begin_turn(&conversation, generation) {
            return;
        }
        hub.reading.fetch_add(1, Ordering::SeqCst);
        let finished = read_turn(&hub, &conversation, generation, &turn).await;
        hub.reading.fetch_sub(1, Ordering::SeqCst);
        hub.idle.notify_waiters();
        if !finished {
            return;
        }
    }
}

/// Read one turn to its end and fan it out; false when the watch went away.
async fn read_turn(hub: &Hub, conversation: &str, generation: u64, turn: &str) -> bool {
    let mut from = 0;
    loop {
        let request = SessionRequest::Events {
            conversation_id: conversation.to_owned(),
            turn_id: turn.to_owned(),
            from,
            wire: None,
            wait_ms: None,
        };
        let batch = match hub.host.call(&session::answering::<EventBatch>(), &request).await {
            Ok(b) => b,
            // The turn's log is gone (sealed long ago): nothing to read.
            Err(e) if e.code() == codes::NOT_FOUND => return true,
            Err(e) => {
                tracing::warn!(error = %e, %conversation, %turn, "cannot read a turn's events; its watchers miss the rest");
                return true;
            }
        };
        if !hub.fan_out(conversation, generation, &batch.events, batch.sealed) {
            return false;
        }
        if batch.sealed {
            return true;
        }
        from = batch.next;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn frame(event: &str) -> (Frame, bool) {
        (Frame::from(format!(r#"{{"type":"chat.delta","event":{event}}}"#)), true)
    }

    /// Regression (issue 31): the replay kept every message of a running
    /// turn (~1 KB a delta); older deltas are merged, and the replay still
    /// carries the whole text and every other message, in order.
    #[test]
    fn a_long_turns_replay_is_complete_and_compact() {
        let mut r = Replay::default();
        r.push(frame(r#"{"type":"user-message","text":"hi"}"#));
        r.push(frame(r#"{"type":"turn-start"}"#));
        let delta = |t: &str| {
            frame(&format!(r#"{{"type":"text-delta","conversationId":"c","turnId":"t","delta":"{t}"}}"#))
        };
        let mut whole = String::new();
        for i in 0..3 * REPLAY_TAIL {
            let piece = format!("{}", i % 10);
            whole.push_str(&piece);
            r.push(delta(&piece));
            if i == REPLAY_TAIL {
                r.push(frame(r#"{"type":"tool-call","toolCallId":"x"}"#));
            }
        }
        let frames = r.frames();
        assert!(frames.len() <= REPLAY_TAIL + 8, "{} frames", frames.len());
        let events: Vec<serde_json::Value> = frames
            .iter()
            .map(|(f, _)| serde_json::from_str::<serde_json::Value>(f.as_str()).unwrap()["event"].clone())
            .collect();
        assert_eq!(events[0]["type"], "user-message");
        assert_eq!(events[1]["type"], "turn-start");
        let text: String = events.iter().filter_map(|e| e["delta"].as_str()).collect();
        assert_eq!(text, whole);
        assert_eq!(events.iter().filter(|e| e["type"] == "tool-call").count(), 1);
        let merged = events.iter().find(|e| e["delta"].as_str().is_some_and(|d| d.len() > 1)).unwrap();
        assert_eq!((merged["conversationId"].as_str(), merged["turnId"].as_str()), (Some("c"), Some("t")));
    }

    #[test]
    fn event_types_are_read_from_the_prefix_or_parsed() {
        assert_eq!(event_type(r#"{"type":"text-delta","delta":"x"}"#), "text-delta");
        assert_eq!(event_type(r#"{ "delta": "x", "type": "steering" }"#), "steering");
        assert_eq!(event_type("not json"), "");
    }
}
