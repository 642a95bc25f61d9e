//! A turn's event log: every event from `user-message` to `turn-sealed`,
//! serialized once, read by any number of watchers at their own pace.
//!
//! # Memory
//!
//! A long answer is hundreds of thousands of deltas, each a small JSON
//! object: kept one by one, a 300 000-delta turn held 240–410 MB. So only
//! the newest [`HOT`] events are kept as they were sent; older adjacent
//! deltas of one kind are merged into one text with the end of each delta
//! recorded (4 bytes a delta), and a reader whose cursor falls inside a
//! merged run gets the rest of that text as one delta. Readers that keep
//! up see every event as it was sent; one that falls behind gets the same
//! text in fewer, larger deltas — what a delta means (append this text)
//! is unchanged. A sealed log is merged whole.

use std::sync::{Mutex, MutexGuard, PoisonError};

use dispatch_contracts::session::{EventBatch, WireVersion};
use dispatch_kernel::wire::AgentEvent;
use serde_json::value::RawValue;
use tokio::sync::Notify;

/// How many of the newest events are kept as sent.
pub const HOT: usize = 1024;

enum Entry {
    /// One event as serialized.
    One { kind: &'static str, json: Box<RawValue> },
    /// Adjacent deltas of one kind: their text, and where each ended in it.
    Merged { kind: &'static str, text: String, ends: Vec<u32> },
}

impl Entry {
    fn events(&self) -> u64 {
        match self {
            Entry::One { .. } => 1,
            Entry::Merged { ends, .. } => ends.len() as u64,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Entry::One { kind, .. } | Entry::Merged { kind, .. } => kind,
        }
    }
}

fn is_delta(kind: &str) -> bool {
    kind == "text-delta" || kind == "reasoning-delta"
}

#[derive(Default)]
struct State {
    entries: Vec<Entry>,
    /// The index (cursor) of each entry's first event.
    starts: Vec<u64>,
    /// Events pushed.
    total: u64,
    /// Entries before this one are merged already.
    merged_upto: usize,
    sealed: bool,
}

impl State {
    /// Merge the adjacent deltas among the entries before `upto`.
    fn merge(&mut self, upto: usize) {
        let upto = upto.min(self.entries.len());
        if upto <= self.merged_upto {
            return;
        }
        let tail = self.entries.split_off(upto);
        let middle = self.entries.split_off(self.merged_upto);
        for entry in middle {
            let delta = match &entry {
                Entry::One { kind, json } if is_delta(kind) => {
                    #[derive(serde::Deserialize)]
                    struct Delta {
                        delta: String,
                    }
                    serde_json::from_str::<Delta>(json.get()).ok().map(|d| (*kind, d.delta))
                }
                _ => None,
            };
            match (delta, self.entries.last_mut()) {
                (Some((kind, delta)), Some(Entry::Merged { kind: k, text, ends }))
                    if *k == kind && text.len() + delta.len() <= u32::MAX as usize =>
                {
                    text.push_str(&delta);
                    // Within u32: checked just above.
                    ends.push(u32::try_from(text.len()).unwrap_or(u32::MAX));
                }
                (Some((kind, delta)), _) => {
                    let end = u32::try_from(delta.len()).unwrap_or(u32::MAX);
                    self.entries.push(Entry::Merged { kind, text: delta, ends: vec![end] });
                }
                (None, _) => self.entries.push(entry),
            }
        }
        self.merged_upto = self.entries.len();
        self.entries.extend(tail);
        let mut at = 0;
        self.starts.clear();
        for e in &self.entries {
            self.starts.push(at);
            at += e.events();
        }
    }
}

/// One turn's events.
pub struct TurnLog {
    /// The turn.
    pub turn_id: String,
    conversation_id: String,
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
    pub fn new(conversation_id: String, turn_id: String) -> Self {
        TurnLog { turn_id, conversation_id, state: Mutex::new(State::default()), news: Notify::new() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a push, a merge or a read: never left
        // half-done (a merge moves entries without anything that can panic).
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
            let at = s.total;
            s.entries.push(Entry::One { kind: static_kind(kind), json });
            s.starts.push(at);
            s.total += 1;
            if s.sealed {
                let n = s.entries.len();
                s.merge(n);
                s.entries.shrink_to_fit();
                s.starts.shrink_to_fit();
            } else if s.entries.len() - s.merged_upto > 2 * HOT {
                let upto = s.entries.len() - HOT;
                s.merge(upto);
            }
        }
        self.news.notify_waiters();
    }

    /// The turn never ran (it failed before its first event): the log is
    /// closed without a `turn-sealed`, and waiters wake.
    pub fn abandon(&self) {
        self.lock().sealed = true;
        self.news.notify_waiters();
    }

    /// Whether `turn-sealed` is in (or the turn was abandoned).
    pub fn is_sealed(&self) -> bool {
        self.lock().sealed
    }

    /// Events pushed so far, and the entries that hold them (for tests and
    /// benchmarks).
    pub fn size(&self) -> (u64, usize) {
        let s = self.lock();
        (s.total, s.entries.len())
    }

    /// The delta event carrying `text`.
    fn delta(&self, kind: &str, text: &str) -> Option<Box<RawValue>> {
        let (conversation_id, turn_id, delta) =
            (self.conversation_id.clone(), self.turn_id.clone(), text.to_owned());
        let event = if kind == "text-delta" {
            AgentEvent::TextDelta { conversation_id, turn_id, delta }
        } else {
            AgentEvent::ReasoningDelta { conversation_id, turn_id, delta }
        };
        serde_json::value::to_raw_value(&event).ok()
    }

    /// Events from `from` on, for a client at `wire`, or `None` when there
    /// are none yet and the turn is still running.
    fn take(&self, from: u64, wire: WireVersion) -> Option<EventBatch> {
        let s = self.lock();
        if from >= s.total && !s.sealed {
            return None;
        }
        let from = from.min(s.total);
        let mut events = Vec::new();
        // The entry holding event `from`, if any.
        let first = s.starts.partition_point(|&at| at <= from).saturating_sub(1);
        for (i, entry) in s.entries.iter().enumerate().skip(first) {
            let start = s.starts[i];
            if start + entry.events() <= from || !wire.includes(entry.kind()) {
                continue;
            }
            let json = match entry {
                Entry::One { json, .. } => Some(json.clone()),
                Entry::Merged { kind, text, ends } => {
                    // Within this run: the deltas before `from` were read.
                    let skip = usize::try_from(from.saturating_sub(start)).unwrap_or(usize::MAX);
                    let offset = skip.checked_sub(1).and_then(|k| ends.get(k)).map_or(0, |&e| e as usize);
                    self.delta(kind, text.get(offset..).unwrap_or(""))
                }
            };
            events.extend(json);
        }
        Some(EventBatch { events, next: s.total, sealed: s.sealed })
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
        let log = std::sync::Arc::new(TurnLog::new("c".into(), "t".into()));
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
        let log = TurnLog::new("c".into(), "t".into());
        let batch = log.read(0, WireVersion::Latest, std::future::ready(())).await;
        assert!(batch.events.is_empty() && !batch.sealed && batch.next == 0);
        assert!(!log.sealed(std::future::ready(())).await);
    }

    fn delta(text: &str) -> Box<RawValue> {
        raw(&format!(r#"{{"type":"text-delta","conversationId":"c","turnId":"t","delta":"{text}"}}"#))
    }

    fn texts(batch: &EventBatch) -> String {
        batch
            .events
            .iter()
            .map(|e| serde_json::from_str::<serde_json::Value>(e.get()).unwrap())
            .filter(|v| v["type"] == "text-delta")
            .map(|v| v["delta"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Regression (issue 31): every delta was kept as its own JSON object
    /// (300 000 deltas: 240–410 MB). Old deltas are merged; every reader,
    /// wherever its cursor stands, still reads exactly the text it has not
    /// read yet.
    #[tokio::test]
    async fn old_deltas_are_merged_and_every_cursor_still_reads_the_exact_rest() {
        let log = TurnLog::new("c".into(), "t".into());
        log.push("user-message", raw(r#"{"type":"user-message","text":"hi"}"#));
        let n = 5 * HOT;
        let mut whole = String::new();
        for i in 0..n {
            let piece = format!("{}.", i % 10);
            whole.push_str(&piece);
            log.push("text-delta", delta(&piece));
            if i == n / 2 {
                log.push("tool-call", raw(r#"{"type":"tool-call","toolCallId":"x"}"#));
            }
        }
        let (events, entries) = log.size();
        assert_eq!(events as usize, n + 2);
        assert!(entries <= 2 * HOT + 4, "{entries} entries for {events} events");
        // From every cursor: the text after it, and the other events once.
        let mut expected = String::new();
        let all_pieces: Vec<String> = (0..n).map(|i| format!("{}.", i % 10)).collect();
        for from in [0u64, 1, 2, 3, 700, (n / 2) as u64, (n / 2 + 2) as u64, (n - HOT) as u64, (n + 1) as u64]
        {
            let batch = log.read(from, WireVersion::Latest, std::future::ready(())).await;
            // Events 1..=n/2+1 are deltas, then the tool call, then the rest.
            let from: u64 = from;
            expected.clear();
            for (i, p) in all_pieces.iter().enumerate() {
                let index = if i <= n / 2 { i as u64 + 1 } else { i as u64 + 2 };
                if index >= from {
                    expected.push_str(p);
                }
            }
            assert_eq!(texts(&batch), expected, "from {from}");
            let calls = batch.events.iter().filter(|e| e.get().contains("tool-call")).count();
            // The tool call is event n/2 + 2 (after the user message and
            // the first n/2 + 1 deltas).
            assert_eq!(calls, usize::from(from <= (n / 2 + 2) as u64), "from {from}");
            assert_eq!(batch.next, (n + 2) as u64);
        }
        // Sealed: merged whole, still the same text from the start.
        log.push("turn-sealed", raw(r#"{"type":"turn-sealed"}"#));
        let (_, entries) = log.size();
        assert!(entries <= 6, "{entries} entries after the seal");
        let batch = log.read(0, WireVersion::Latest, std::future::pending()).await;
        assert_eq!(texts(&batch), whole);
        let first: serde_json::Value = serde_json::from_str(batch.events[1].get()).unwrap();
        assert_eq!((first["conversationId"].as_str(), first["turnId"].as_str()), (Some("c"), Some("t")));
        assert!(batch.sealed);
    }
}
