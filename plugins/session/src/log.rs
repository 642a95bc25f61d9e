//! A turn's event log: every event from `user-message` to `turn-sealed`,
//! serialized once, read by any number of watchers at their own pace.

use std::sync::{Mutex, MutexGuard, PoisonError};

use dispatch_contracts::session::{EventBatch, WireVersion};
use serde_json::value::RawValue;
use tokio::sync::Notify;

struct Logged {
    kind: &'static str,
    json: Box<RawValue>,
}

#[derive(Default)]
struct State {
    events: Vec<Logged>,
    sealed: bool,
}

/// One turn's events.
pub struct TurnLog {
    /// The turn.
    pub turn_id: String,
    state: Mutex<State>,
    news: Notify,
}

impl std::fmt::Debug for TurnLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnLog").field("turn_id", &self.turn_id).finish_non_exhaustive()
    }
}

/// The event kinds a log may hold, as `'static` names (so a log entry does
/// not carry a `String` for its kind).
fn static_kind(kind: &str) -> &'static str {
    const KINDS: [&str; 15] = [
        "user-message",
        "turn-start",
        "text-delta",
        "reasoning-delta",
        "tool-call",
        "tool-output",
        "tool-result",
        "usage",
        "step-complete",
        "provider-retry",
        "steering",
        "error",
        "done",
        "turn-sealed",
        "status",
    ];
    KINDS.into_iter().find(|k| *k == kind).unwrap_or("unknown")
}

impl TurnLog {
    /// An empty log.
    pub fn new(turn_id: String) -> Self {
        TurnLog { turn_id, state: Mutex::new(State::default()), news: Notify::new() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a push or a read: never left half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Append one event (`kind` = its `type`); `turn-sealed` seals the log.
    pub fn push(&self, kind: &str, json: Box<RawValue>) {
        {
            let mut s = self.lock();
            if s.sealed {
                return;
            }
            s.sealed = kind == "turn-sealed";
            s.events.push(Logged { kind: static_kind(kind), json });
        }
        self.news.notify_waiters();
    }

    /// Whether `turn-sealed` is in.
    pub fn is_sealed(&self) -> bool {
        self.lock().sealed
    }

    /// Events from `from` on, for a client at `wire`, or `None` when there
    /// are none yet and the turn is still running.
    fn take(&self, from: u64, wire: WireVersion) -> Option<EventBatch> {
        let s = self.lock();
        let len = s.events.len() as u64;
        if from >= len && !s.sealed {
            return None;
        }
        let start = usize::try_from(from.min(len)).unwrap_or(usize::MAX);
        let events =
            s.events[start..].iter().filter(|e| wire.includes(e.kind)).map(|e| e.json.clone()).collect();
        Some(EventBatch { events, next: len, sealed: s.sealed })
    }

    /// Events from `from` on, waiting for some (or for the seal) at most
    /// until `deadline` fires; an empty batch when it does.
    pub async fn read(
        &self,
        from: u64,
        wire: WireVersion,
        deadline: impl std::future::Future<Output = ()>,
    ) -> EventBatch {
        let mut deadline = std::pin::pin!(deadline);
        loop {
            let notified = self.news.notified();
            let mut notified = std::pin::pin!(notified);
            // Register before looking, so an event pushed in between wakes us.
            notified.as_mut().enable();
            if let Some(batch) = self.take(from, wire) {
                return batch;
            }
            tokio::select! {
                () = notified => {}
                () = &mut deadline => return EventBatch { events: Vec::new(), next: from, sealed: false },
            }
        }
    }

    /// Wait until the turn is sealed or `deadline` fires; `true` if sealed.
    pub async fn sealed(&self, deadline: impl std::future::Future<Output = ()>) -> bool {
        let mut deadline = std::pin::pin!(deadline);
        loop {
            let notified = self.news.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.is_sealed() {
                return true;
            }
            tokio::select! {
                () = notified => {}
                () = &mut deadline => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[tokio::test]
    async fn readers_wait_for_news_and_see_everything_once() {
        let log = std::sync::Arc::new(TurnLog::new("t".into()));
        log.push("user-message", raw(r#"{"type":"user-message"}"#));
        let first = log.read(0, WireVersion::Latest, std::future::pending()).await;
        assert_eq!((first.events.len(), first.next, first.sealed), (1, 1, false));
        let l2 = std::sync::Arc::clone(&log);
        let waiter =
            tokio::spawn(async move { l2.read(1, WireVersion::Latest, std::future::pending()).await });
        tokio::task::yield_now().await;
        log.push("text-delta", raw(r#"{"type":"text-delta"}"#));
        let batch = waiter.await.unwrap();
        assert_eq!((batch.events.len(), batch.next), (1, 2));
        log.push("steering", raw(r#"{"type":"steering"}"#));
        log.push("turn-sealed", raw(r#"{"type":"turn-sealed"}"#));
        // 0.1 does not know `steering`; the cursor still moves past it.
        let last = log.read(2, WireVersion::V0_1, std::future::pending()).await;
        let kinds: Vec<&str> = last.events.iter().map(|e| e.get()).collect();
        assert_eq!(kinds, [r#"{"type":"turn-sealed"}"#]);
        assert_eq!((last.next, last.sealed), (4, true));
        let after = log.read(4, WireVersion::Latest, std::future::pending()).await;
        assert!(after.sealed && after.events.is_empty());
    }

    #[tokio::test]
    async fn a_deadline_ends_the_wait_with_nothing() {
        let log = TurnLog::new("t".into());
        let batch = log.read(0, WireVersion::Latest, std::future::ready(())).await;
        assert!(batch.events.is_empty() && !batch.sealed && batch.next == 0);
        assert!(!log.sealed(std::future::ready(())).await);
    }
}
