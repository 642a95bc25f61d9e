//! # message-queue — messages waiting for a running turn
//!
//! While a conversation's turn runs, what the user sends next waits here:
//! the session drains it at the turn's next tool-result boundary (the model
//! reads it as a `steering` message) or, when the turn ends first, starts a
//! new turn with it. The queue only holds — in memory, per conversation,
//! oldest first — and announces every change on `message-queue.changed`
//! (the Message Queue surface listens). A restart empties it: these are
//! seconds-old messages aimed at a turn that a restart ends anyway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use dispatch_abi::{Context, Error, Host, Plugin, PluginManifest};
use dispatch_contracts::queue::{Cancelled, QueueRequest, QueueState, QueuedMessage, CHANGED, QUEUE};
use serde_json::Value;

/// Most messages waiting in one conversation: a client looping on
/// `/queue` must not grow the host without bound.
pub const MAX_QUEUED: usize = 256;
/// Longest queued message, in bytes.
pub const MAX_TEXT_BYTES: usize = 1024 * 1024;

/// The queues, by conversation.
#[derive(Debug, Default)]
pub struct Queues {
    by_conversation: Mutex<HashMap<String, Vec<QueuedMessage>>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Queues {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<QueuedMessage>>> {
        // Nothing here can panic half-way through a change.
        self.by_conversation.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answer one request; `Some(state)` when the queue changed.
    pub fn handle(&self, request: QueueRequest) -> Result<(Value, Option<QueueState>), Error> {
        let mut all = self.lock();
        let state =
            |id: &str, messages: Vec<QueuedMessage>| QueueState { conversation_id: id.into(), messages };
        Ok(match request {
            QueueRequest::Push { conversation_id, text } => {
                let text = text.trim();
                if text.is_empty() {
                    return Err(Error::new("invalid_input", "a queued message cannot be empty"));
                }
                if text.len() > MAX_TEXT_BYTES {
                    return Err(Error::new(
                        "invalid_input",
                        format!(
                            "a queued message is at most {MAX_TEXT_BYTES} bytes; this one is {}",
                            text.len()
                        ),
                    ));
                }
                let queue = all.entry(conversation_id.clone()).or_default();
                if queue.len() >= MAX_QUEUED {
                    return Err(Error::new(
                        "conflict",
                        format!("{MAX_QUEUED} messages are already waiting in this conversation"),
                    ));
                }
                queue.push(QueuedMessage {
                    id: uuid::Uuid::new_v4().to_string(),
                    text: text.to_owned(),
                    queued_at: now_ms(),
                });
                let s = state(&conversation_id, queue.clone());
                (to_value(&s)?, Some(s))
            }
            QueueRequest::Cancel { conversation_id, message_id } => {
                let queue = all.entry(conversation_id.clone()).or_default();
                let before = queue.len();
                queue.retain(|m| m.id != message_id);
                let cancelled = queue.len() != before;
                let s = state(&conversation_id, queue.clone());
                if queue.is_empty() {
                    all.remove(&conversation_id);
                }
                (to_value(&Cancelled { cancelled, state: s.clone() })?, cancelled.then_some(s))
            }
            QueueRequest::List { conversation_id } => {
                let messages = all.get(&conversation_id).cloned().unwrap_or_default();
                (to_value(&state(&conversation_id, messages))?, None)
            }
            QueueRequest::Drain { conversation_id } => {
                let taken = all.remove(&conversation_id).unwrap_or_default();
                let changed = (!taken.is_empty()).then(|| state(&conversation_id, Vec::new()));
                (to_value(&state(&conversation_id, taken))?, changed)
            }
            _ => return Err(Error::new("unsupported", "this message-queue does not know that op")),
        })
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::new("plugin", e.to_string()))
}

/// The plugin.
#[derive(Debug)]
pub struct MessageQueue;

impl Plugin for MessageQueue {
    fn manifest() -> PluginManifest {
        PluginManifest::new("message-queue", env!("CARGO_PKG_VERSION"))
            .description("Holds messages sent while a turn runs until the session drains them")
            .provides("service", QUEUE.name())
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let host: Host = ctx.host().clone();
        let queues = Arc::new(Queues::default());
        let publisher = host.clone();
        host.provide_sync(&QUEUE, move |request| {
            let (answer, changed) = queues.handle(request)?;
            if let Some(state) = changed {
                if let Err(e) = publisher.publish(&CHANGED, &state) {
                    // The change happened; only the announcement failed.
                    tracing::warn!(error = %e, "cannot announce a queue change");
                }
            }
            Ok(answer)
        })?;
        Ok(MessageQueue)
    }
}

dispatch_abi::export_plugin!(MessageQueue);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use dispatch_testkit::TestHost;
    use std::sync::Mutex as StdMutex;

    fn push(host: &TestHost, conversation: &str, text: &str) -> Result<QueueState, Error> {
        let v = host
            .call(&QUEUE, &QueueRequest::Push { conversation_id: conversation.into(), text: text.into() })?;
        Ok(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn messages_wait_in_order_drain_at_once_and_announce_changes() {
        let mut host = TestHost::new();
        host.activate::<MessageQueue>(Value::Null).unwrap();
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        host.host()
            .subscribe_sync(&CHANGED, move |s: QueueState| {
                sink.lock().unwrap().push(s.messages.len());
                Ok(())
            })
            .unwrap();
        push(&host, "c", " first ").unwrap();
        let state = push(&host, "c", "second").unwrap();
        assert_eq!(state.messages.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["first", "second"]);
        assert_ne!(state.messages[0].id, state.messages[1].id);
        assert!(push(&host, "other", "x").is_ok(), "queues are per conversation");

        let cancel =
            QueueRequest::Cancel { conversation_id: "c".into(), message_id: state.messages[0].id.clone() };
        let c: Cancelled = serde_json::from_value(host.call(&QUEUE, &cancel).unwrap()).unwrap();
        assert!(c.cancelled);
        let again: Cancelled = serde_json::from_value(host.call(&QUEUE, &cancel).unwrap()).unwrap();
        assert!(!again.cancelled, "a message is cancelled once");

        let drained: QueueState = serde_json::from_value(
            host.call(&QUEUE, &QueueRequest::Drain { conversation_id: "c".into() }).unwrap(),
        )
        .unwrap();
        assert_eq!(drained.messages.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["second"]);
        let left: QueueState = serde_json::from_value(
            host.call(&QUEUE, &QueueRequest::List { conversation_id: "c".into() }).unwrap(),
        )
        .unwrap();
        assert!(left.messages.is_empty());
        assert!(host.settle(std::time::Duration::from_secs(2)));
        // push, push, push (other), cancel, drain: five changes; the
        // failed second cancel and the list announce nothing.
        assert_eq!(*seen.lock().unwrap(), [1, 2, 1, 1, 0]);
    }

    #[test]
    fn empty_oversized_and_runaway_queues_are_refused() {
        let mut host = TestHost::new();
        host.activate::<MessageQueue>(Value::Null).unwrap();
        assert_eq!(push(&host, "c", "   ").unwrap_err().code(), "invalid_input");
        assert_eq!(push(&host, "c", &"x".repeat(MAX_TEXT_BYTES + 1)).unwrap_err().code(), "invalid_input");
        for i in 0..MAX_QUEUED {
            push(&host, "c", &format!("m{i}")).unwrap();
        }
        assert_eq!(push(&host, "c", "one more").unwrap_err().code(), "conflict");
    }
}
