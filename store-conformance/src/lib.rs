//! # dispatch-store-conformance — what every conversation store must do
//!
//! The `store` service (`dispatch_contracts::store`) is a contract several
//! plugins serve: `store-sqlite` on one host, `store-postgres` shared by
//! many, a third party's. This crate is that contract as checks, run over
//! the bus against a store activated in a [`TestHost`] — exactly what the
//! session, compaction and the routes see. A store author gets them all,
//! each its own named test, with one macro:
//!
//! ```ignore
//! // tests/conformance.rs of a store plugin
//! fn fresh() -> dispatch_store_conformance::Fresh {
//!     let mut host = dispatch_testkit::TestHost::new();
//!     host.activate::<my_store::MyStore>(serde_json::json!({"path": "…"})).unwrap();
//!     dispatch_store_conformance::Fresh::new(host)
//! }
//! dispatch_store_conformance::conformance_tests!(fresh);
//! ```
//!
//! Each check starts from an empty store (`fresh` is called once per
//! check) and says in its name what it guards. What a store needs beyond
//! the bus (crash safety of its own files or server, several processes
//! sharing it) it tests itself; the checks here hold for any store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

pub mod bench;

use std::any::Any;
use std::collections::HashMap;

use dispatch_abi::Error;
use dispatch_contracts::protocol::reconcile::INTERRUPTED;
use dispatch_contracts::protocol::store::{
    CompactRequest, Details, MetaUpdate, NewMessage, ThroughputList, TraceQuery, DEFAULT_TITLE_CHARS,
    SUMMARY_PREFIX,
};
use dispatch_contracts::protocol::trace::{
    ThroughputRow, ToolOutcome, TraceBody, TraceEvent, TracePage, MAX_PAGE,
};
use dispatch_contracts::protocol::wire::{
    ChatMessage, Chunk, ConversationStatus, FinishReason, ReasoningEffort, Role, StepMetrics, TurnMetrics,
    Usage,
};
use dispatch_contracts::store::{
    Appended, History, Listing, Messages, MetricsList, StoreLimits, StoreRequest, STORE,
};
pub use dispatch_testkit::TestHost;
use serde_json::{json, Value};

/// An empty store on a test host, and whatever must live as long as it (a
/// temporary directory, a database schema dropped when this is dropped).
pub struct Fresh {
    /// The host the store is active in.
    pub host: TestHost,
    keep: Vec<Box<dyn Any>>,
}

impl std::fmt::Debug for Fresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fresh").field("host", &self.host).finish_non_exhaustive()
    }
}

impl Fresh {
    /// A store active in `host`.
    pub fn new(host: TestHost) -> Self {
        Fresh { host, keep: Vec::new() }
    }

    /// Keep `guard` until the check ends (dropped after the host).
    #[must_use]
    pub fn keeping(mut self, guard: impl Any) -> Self {
        self.keep.push(Box::new(guard));
        self
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        // The store stops before its files or schema go.
        self.host.deactivate_all();
        while self.keep.pop().is_some() {}
    }
}

/// One test per check, each on a store from `$fresh()`.
#[macro_export]
macro_rules! conformance_tests {
    ($fresh:expr) => {
        $crate::conformance_tests!(@each $fresh;
            seqs_are_one_based_gap_free_and_per_conversation,
            history_windows_follow_the_wire_contract,
            messages_are_regrouped_and_reconciled_on_load,
            metadata_defaults_titles_and_updates_apply,
            list_filters_by_prefix_and_status_most_recent_first,
            turn_metrics_round_trip_in_append_order,
            bad_input_is_refused_precisely_and_nothing_is_half_written,
            a_steps_messages_append_together_or_not_at_all,
            concurrent_appends_leave_every_conversation_gap_free,
            compaction_archives_the_log_and_replaces_it_at_once,
            a_stale_or_malformed_compaction_is_refused_and_changes_nothing,
            values_round_trip_and_null_forgets,
            limits_are_told_and_kept,
            workspaces_are_kept_listed_and_counted,
            traces_page_in_order_filter_and_stay_stable_while_appended,
            throughput_sums_the_turns_of_a_period_by_model);
    };
    (@each $fresh:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let fresh: $crate::Fresh = ($fresh)();
                $crate::$check(&fresh.host);
            }
        )*
    };
}

// ---- helpers -------------------------------------------------------------

fn call(h: &TestHost, req: &StoreRequest) -> Result<Value, Error> {
    h.call(&STORE, req)
}

/// A request as a failure shows it: its head (a chunk may be megabytes).
fn shown(req: &StoreRequest) -> String {
    let all = format!("{req:?}");
    match all.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &all[..i]),
        None => all,
    }
}

fn ok<T: serde::de::DeserializeOwned>(h: &TestHost, req: &StoreRequest) -> T {
    let v = call(h, req).unwrap_or_else(|e| panic!("{} failed: {e}", shown(req)));
    serde_json::from_value(v).unwrap_or_else(|e| panic!("{} answered something else: {e}", shown(req)))
}

fn text(s: &str) -> Chunk {
    Chunk::text(s)
}

/// Append one message; the seqs.
pub fn append(h: &TestHost, id: &str, role: Role, chunks: Vec<Chunk>) -> Vec<u64> {
    let req = StoreRequest::Append { conversation_id: id.into(), role, turn_id: Some("t".into()), chunks };
    ok::<Appended>(h, &req).seqs
}

fn history(h: &TestHost, id: &str, since: Option<u64>, before: Option<u64>, limit: Option<u64>) -> History {
    ok(h, &StoreRequest::History { conversation_id: id.into(), since_seq: since, before_seq: before, limit })
}

fn seqs(h: &History) -> (Vec<u64>, u64) {
    (h.chunks.iter().map(|c| c.seq).collect(), h.latest_seq)
}

fn get(h: &TestHost, id: &str) -> Option<Details> {
    ok(h, &StoreRequest::Get { conversation_id: id.into() })
}

fn messages(h: &TestHost, id: &str) -> Vec<ChatMessage> {
    ok::<Messages>(h, &StoreRequest::Messages { conversation_id: id.into() }).messages
}

fn update(h: &TestHost, u: MetaUpdate) -> Details {
    ok(h, &StoreRequest::Update(u))
}

fn list(h: &TestHost, prefix: Option<&str>, status: Option<ConversationStatus>) -> Vec<String> {
    let l: Listing = ok(h, &StoreRequest::List { prefix: prefix.map(str::to_owned), status });
    l.conversations.into_iter().map(|c| c.id).collect()
}

fn shown_value(v: &Value) -> String {
    let all = v.to_string();
    all.chars().take(200).collect()
}

fn code(r: Result<Value, Error>) -> String {
    match r {
        Ok(v) => panic!("expected a refusal, got {}", shown_value(&v)),
        Err(e) => e.code().to_owned(),
    }
}

// ---- the checks ------------------------------------------------------------

/// Seqs start at 1 per conversation, have no gaps, and a message's chunks
/// get consecutive ones.
pub fn seqs_are_one_based_gap_free_and_per_conversation(h: &TestHost) {
    assert_eq!(append(h, "c1", Role::User, vec![text("hi")]), vec![1]);
    assert_eq!(append(h, "c1", Role::Assistant, vec![text("a"), text("b"), text("c")]), vec![2, 3, 4]);
    assert_eq!(append(h, "c2", Role::User, vec![text("other")]), vec![1], "per conversation");
    let all = history(h, "c1", None, None, None);
    assert_eq!(seqs(&all), (vec![1, 2, 3, 4], 4));
    assert_eq!(all.chunks[0].role, Role::User);
    assert_eq!(all.chunks[2].chunk, text("b"));
    assert_eq!(get(h, "c1").unwrap().latest_seq, 4);
}

/// `sinceSeq`, `beforeSeq` and `limit` select as WIRE.md says, and
/// `latestSeq` is the last returned (else `sinceSeq`, else 0).
pub fn history_windows_follow_the_wire_contract(h: &TestHost) {
    for i in 1..=10 {
        append(h, "w", Role::Assistant, vec![text(&i.to_string())]);
    }
    assert_eq!(seqs(&history(h, "w", Some(7), None, None)), (vec![8, 9, 10], 10));
    assert_eq!(seqs(&history(h, "w", None, Some(4), None)), (vec![1, 2, 3], 3));
    assert_eq!(seqs(&history(h, "w", None, None, Some(3))), (vec![8, 9, 10], 10), "the newest k, ascending");
    assert_eq!(seqs(&history(h, "w", Some(2), Some(9), Some(2))), (vec![7, 8], 8));
    assert_eq!(seqs(&history(h, "w", Some(10), None, None)), (vec![], 10));
    assert_eq!(seqs(&history(h, "w", Some(99), None, None)), (vec![], 99));
    assert_eq!(seqs(&history(h, "nobody", None, None, None)), (vec![], 0));
    assert!(messages(h, "nobody").is_empty());
    assert!(get(h, "nobody").is_none());
}

/// `messages` regroups chunks into the messages they were appended as,
/// and a tool call left without a result gets an interrupted one; the
/// stored log is not changed by it.
pub fn messages_are_regrouped_and_reconciled_on_load(h: &TestHost) {
    append(h, "m", Role::User, vec![text("do it")]);
    let call = |id: &str| Chunk::ToolCall {
        tool_call_id: id.into(),
        tool_name: "sh".into(),
        input: json!({}),
        step_id: Some("t#0".into()),
    };
    append(h, "m", Role::Assistant, vec![text("ok"), call("a"), call("b")]);
    let result = Chunk::ToolResult {
        tool_call_id: "a".into(),
        tool_name: "sh".into(),
        content: "done".into(),
        is_error: false,
        step_id: Some("t#0".into()),
    };
    append(h, "m", Role::Tool, vec![result]);
    // Two user messages in a row stay two messages.
    append(h, "m2", Role::User, vec![text("one")]);
    append(h, "m2", Role::User, vec![text("two")]);
    let msgs = messages(h, "m");
    assert_eq!(msgs.len(), 4, "user, assistant, result a, the synthesized result b: {msgs:?}");
    assert_eq!(msgs[1].chunks.len(), 3);
    assert!(
        matches!(&msgs[3].chunks[0], Chunk::ToolResult { tool_call_id, content, is_error: true, .. }
            if tool_call_id == "b" && content == INTERRUPTED),
        "{msgs:?}"
    );
    assert_eq!(history(h, "m", None, None, None).chunks.len(), 5, "reconciling stores nothing");
    assert_eq!(messages(h, "m2").len(), 2);
}

/// A conversation's defaults, its title from the first user message, and
/// updates: absent leaves alone, `null` clears, an unknown id is created.
pub fn metadata_defaults_titles_and_updates_apply(h: &TestHost) {
    let long = format!("Please   refactor\nthe {} module", "very ".repeat(20));
    append(h, "meta", Role::Assistant, vec![text("not a title")]);
    append(h, "meta", Role::User, vec![text(&long)]);
    append(h, "meta", Role::User, vec![text("second message")]);
    let d = get(h, "meta").unwrap();
    assert!(d.meta.title.starts_with("Please refactor the very"), "{}", d.meta.title);
    assert!(d.meta.title.ends_with('…'), "{}", d.meta.title);
    assert_eq!(d.meta.title.chars().count(), DEFAULT_TITLE_CHARS + 1, "{}", d.meta.title);
    assert_eq!((d.meta.status, d.meta.workspace_id.as_str()), (ConversationStatus::Idle, "default"));
    assert!(d.meta.created_at > 0 && d.meta.last_activity_at >= d.meta.created_at);
    assert_eq!(d.latest_seq, 3);

    let d = update(
        h,
        MetaUpdate {
            conversation_id: "meta".into(),
            title: Some("Renamed".into()),
            status: Some(ConversationStatus::Active),
            cwd: Some(Some("/tmp/work".into())),
            model: Some(Some("scripted/demo".into())),
            reasoning_effort: Some(Some(ReasoningEffort::Xhigh)),
            workspace_id: Some("ws1".into()),
            system_prompt: Some(Some("be brief".into())),
        },
    );
    assert_eq!((d.meta.title.as_str(), d.meta.status), ("Renamed", ConversationStatus::Active));
    assert_eq!(
        (d.cwd.as_deref(), d.model.as_deref(), d.reasoning_effort),
        (Some("/tmp/work"), Some("scripted/demo"), Some(ReasoningEffort::Xhigh))
    );
    assert_eq!((d.meta.workspace_id.as_str(), d.system_prompt.as_deref()), ("ws1", Some("be brief")));
    assert_eq!(d.latest_seq, 3);
    let d =
        update(h, MetaUpdate { conversation_id: "meta".into(), cwd: Some(None), ..MetaUpdate::default() });
    assert_eq!(d.cwd, None, "null clears");
    assert_eq!(d.model.as_deref(), Some("scripted/demo"), "absent leaves alone");
    // A later user message does not replace a title.
    append(h, "meta", Role::User, vec![text("third")]);
    assert_eq!(get(h, "meta").unwrap().meta.title, "Renamed");
    let d = update(
        h,
        MetaUpdate { conversation_id: "fresh".into(), title: Some("New".into()), ..MetaUpdate::default() },
    );
    assert_eq!((d.meta.title.as_str(), d.latest_seq, d.meta.status), ("New", 0, ConversationStatus::Idle));
    // A title given before the first message is kept.
    append(h, "fresh", Role::User, vec![text("hello")]);
    assert_eq!(get(h, "fresh").unwrap().meta.title, "New");
}

/// `list` is most recently active first, filtered by a literal prefix and
/// a status.
pub fn list_filters_by_prefix_and_status_most_recent_first(h: &TestHost) {
    for id in ["proj-a", "proj-b", "other"] {
        append(h, id, Role::User, vec![text(id)]);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    update(
        h,
        MetaUpdate {
            conversation_id: "proj-a".into(),
            status: Some(ConversationStatus::Closed),
            ..MetaUpdate::default()
        },
    );
    assert_eq!(list(h, None, None), ["other", "proj-b", "proj-a"]);
    assert_eq!(list(h, Some("proj-"), None), ["proj-b", "proj-a"]);
    assert_eq!(list(h, Some("proj-"), Some(ConversationStatus::Closed)), ["proj-a"]);
    assert_eq!(list(h, None, Some(ConversationStatus::Active)), Vec::<String>::new());
    assert_eq!(list(h, Some("%"), None), Vec::<String>::new(), "a prefix is literal, not a pattern");
    assert_eq!(list(h, Some("proj_"), None), Vec::<String>::new(), "a prefix is literal, not a pattern");
}

fn metrics_of(turn: &str, n: u64) -> TurnMetrics {
    TurnMetrics {
        turn_id: turn.into(),
        usage: Usage { input_tokens: n, output_tokens: 1, ..Usage::default() },
        duration_ms: Some(5),
        steps: vec![StepMetrics {
            step_id: format!("{turn}#0"),
            usage: Usage::default(),
            ttft_ms: Some(1),
            decode_ms: Some(2),
            gen_total_ms: Some(3),
        }],
        context_size: Some(n + 1),
    }
}

/// Turn metrics come back as they were recorded, in order.
pub fn turn_metrics_round_trip_in_append_order(h: &TestHost) {
    for (t, n) in [("t1", 10), ("t2", 20), ("t3", 30)] {
        let _: Value =
            ok(h, &StoreRequest::AppendMetrics { conversation_id: "mx".into(), metrics: metrics_of(t, n) });
    }
    let got: MetricsList = ok(h, &StoreRequest::Metrics { conversation_id: "mx".into() });
    assert_eq!(got.turns, vec![metrics_of("t1", 10), metrics_of("t2", 20), metrics_of("t3", 30)]);
    let none: MetricsList = ok(h, &StoreRequest::Metrics { conversation_id: "none".into() });
    assert!(none.turns.is_empty());
}

/// Bad ids, empty messages and oversized chunks are `invalid_payload`,
/// and a refused append leaves nothing: the next one takes seq 1.
pub fn bad_input_is_refused_precisely_and_nothing_is_half_written(h: &TestHost) {
    let limits: StoreLimits = ok(h, &StoreRequest::Limits);
    for bad in ["", "has space", "../etc", "a/b", &"x".repeat(129)] {
        let req = StoreRequest::Append {
            conversation_id: bad.into(),
            role: Role::User,
            turn_id: None,
            chunks: vec![text("x")],
        };
        assert_eq!(code(call(h, &req)), "invalid_payload", "{bad:?}");
        assert_eq!(
            code(call(
                h,
                &StoreRequest::History {
                    conversation_id: bad.into(),
                    since_seq: None,
                    before_seq: None,
                    limit: None,
                }
            )),
            "invalid_payload",
            "{bad:?}"
        );
    }
    let too_big = "y".repeat(usize::try_from(limits.max_chunk_bytes).unwrap());
    let req = StoreRequest::Append {
        conversation_id: "ok".into(),
        role: Role::User,
        turn_id: None,
        chunks: vec![text("fine"), text(&too_big)],
    };
    let e = call(h, &req).unwrap_err();
    assert_eq!(e.code(), "invalid_payload", "{e}");
    assert!(e.message().starts_with("chunk #1 is "), "the message names the chunk: {e}");
    let empty = StoreRequest::Append {
        conversation_id: "ok".into(),
        role: Role::User,
        turn_id: None,
        chunks: vec![],
    };
    assert_eq!(code(call(h, &empty)), "invalid_payload");
    assert!(get(h, "ok").is_none(), "a refused message leaves no conversation");
    assert_eq!(append(h, "ok", Role::User, vec![text("fine")]), vec![1]);
}

/// A step's messages land together (consecutive seqs, each its own
/// message) or not at all.
pub fn a_steps_messages_append_together_or_not_at_all(h: &TestHost) {
    let limits: StoreLimits = ok(h, &StoreRequest::Limits);
    assert_eq!(append(h, "c", Role::User, vec![text("hi")]), vec![1]);
    let step = |tool: Vec<Chunk>| StoreRequest::AppendMessages {
        conversation_id: "c".into(),
        turn_id: Some("t".into()),
        messages: vec![
            NewMessage { role: Role::Assistant, chunks: vec![text("a"), text("b")] },
            NewMessage { role: Role::Tool, chunks: tool },
        ],
    };
    assert_eq!(ok::<Appended>(h, &step(vec![text("result")])).seqs, vec![2, 3, 4]);
    let roles: Vec<Role> = messages(h, "c").iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::User, Role::Assistant, Role::Tool]);
    let big = "y".repeat(usize::try_from(limits.max_chunk_bytes).unwrap());
    assert_eq!(code(call(h, &step(vec![text(&big)]))), "invalid_payload");
    assert_eq!(code(call(h, &step(vec![]))), "invalid_payload");
    let none = StoreRequest::AppendMessages { conversation_id: "c".into(), turn_id: None, messages: vec![] };
    assert_eq!(code(call(h, &none)), "invalid_payload");
    assert_eq!(history(h, "c", None, None, None).latest_seq, 4, "nothing of a refused step landed");
    assert_eq!(append(h, "c", Role::User, vec![text("next")]), vec![5]);
}

/// Many writers at once — on many conversations, and several on one —
/// leave each conversation with exactly seqs 1..n, every acknowledged
/// append stored, and each message's seqs consecutive.
pub fn concurrent_appends_leave_every_conversation_gap_free(h: &TestHost) {
    let host = h.host().clone();
    let mut per_conv: HashMap<String, Vec<u64>> = HashMap::new();
    std::thread::scope(|s| {
        let mut workers = Vec::new();
        // 20 conversations with one writer; "hot" with eight.
        for w in 0..28 {
            let host = host.clone();
            workers.push(s.spawn(move || {
                let id = if w < 20 { format!("conv-{w}") } else { "hot".to_owned() };
                let mut got = Vec::new();
                for i in 0..15 {
                    let n = 1 + (i + w) % 3;
                    let chunks = (0..n).map(|k| text(&format!("{w}-{i}-{k}"))).collect();
                    let req = StoreRequest::Append {
                        conversation_id: id.clone(),
                        role: Role::Assistant,
                        turn_id: None,
                        chunks,
                    };
                    let v = futures::executor::block_on(host.call(&STORE, &req)).unwrap();
                    got.push(serde_json::from_value::<Appended>(v).unwrap().seqs);
                }
                (id, got)
            }));
        }
        for w in workers {
            let (id, got) = w.join().unwrap();
            for s in got {
                assert!(s.windows(2).all(|p| p[1] == p[0] + 1), "a message's seqs are consecutive: {s:?}");
                per_conv.entry(id.clone()).or_default().extend(s);
            }
        }
    });
    assert_eq!(per_conv.len(), 21);
    for (id, mut acked) in per_conv {
        acked.sort_unstable();
        let n = acked.len() as u64;
        assert_eq!(acked, (1..=n).collect::<Vec<_>>(), "{id}: every seq handed out once");
        let stored = history(h, &id, None, None, None);
        assert_eq!(seqs(&stored), ((1..=n).collect(), n), "{id}: every acknowledged append stored");
    }
}

fn compaction(id: &str, archive: &str, keep_from: u64, expect: u64) -> StoreRequest {
    StoreRequest::Compact(CompactRequest {
        conversation_id: id.into(),
        archive_id: archive.into(),
        summary: "they talked".into(),
        keep_from_seq: keep_from,
        expect_latest_seq: expect,
    })
}

/// Compaction copies the whole log to the archive, then the live log is
/// the summary (seq 1) and the kept messages renumbered from 2; the
/// conversation names its archive, and appends go on from the new end.
pub fn compaction_archives_the_log_and_replaces_it_at_once(h: &TestHost) {
    append(h, "long", Role::User, vec![text("first")]);
    append(h, "long", Role::Assistant, vec![text("one"), text("two")]);
    append(h, "long", Role::User, vec![text("second")]);
    append(h, "long", Role::Assistant, vec![text("three")]);
    update(
        h,
        MetaUpdate {
            conversation_id: "long".into(),
            model: Some(Some("x/y".into())),
            ..MetaUpdate::default()
        },
    );
    let before = history(h, "long", None, None, None);
    let answer = ok::<Value>(h, &compaction("long", "long-archive", 4, 5));
    assert_eq!(answer["latestSeq"], 3, "{answer}");
    let archive = history(h, "long-archive", None, None, None);
    assert_eq!(archive.chunks, before.chunks, "the archive holds the whole old log");
    let live = history(h, "long", None, None, None);
    assert_eq!(seqs(&live), (vec![1, 2, 3], 3));
    assert_eq!(live.chunks[0].role, Role::System);
    assert_eq!(live.chunks[0].chunk, text(&format!("{SUMMARY_PREFIX}they talked")));
    assert_eq!((live.chunks[1].role, &live.chunks[1].chunk), (Role::User, &text("second")));
    assert_eq!(live.chunks[2].chunk, text("three"));
    let d = get(h, "long").unwrap();
    assert_eq!((d.meta.compacted_from.as_deref(), d.latest_seq), (Some("long-archive"), 3));
    assert_eq!(d.model.as_deref(), Some("x/y"), "settings stay");
    let a = get(h, "long-archive").unwrap();
    assert_eq!(a.meta.status, ConversationStatus::Closed);
    assert_eq!(a.latest_seq, 5);
    assert_eq!(messages(h, "long").len(), 3, "summary, user, assistant");
    assert_eq!(append(h, "long", Role::User, vec![text("go on")]), vec![4]);
}

/// A compaction against a changed log, of an unknown conversation, into a
/// taken archive id, or keeping from the middle of a message is refused,
/// and the store is as it was.
pub fn a_stale_or_malformed_compaction_is_refused_and_changes_nothing(h: &TestHost) {
    append(h, "c", Role::User, vec![text("a")]);
    append(h, "c", Role::Assistant, vec![text("b"), text("c")]);
    append(h, "other", Role::User, vec![text("x")]);
    let before = history(h, "c", None, None, None);
    assert_eq!(code(call(h, &compaction("c", "arch", 2, 2))), "conflict", "stale expectLatestSeq");
    assert_eq!(code(call(h, &compaction("c", "other", 2, 3))), "conflict", "the archive id is taken");
    assert_eq!(code(call(h, &compaction("c", "arch", 3, 3))), "invalid_payload", "mid-message");
    assert_eq!(code(call(h, &compaction("c", "arch", 9, 3))), "invalid_payload", "past the end");
    assert_eq!(code(call(h, &compaction("c", "arch", 0, 3))), "invalid_payload");
    assert_eq!(code(call(h, &compaction("ghost", "arch", 1, 0))), "not_found");
    assert_eq!(code(call(h, &compaction("c", "bad id", 2, 3))), "invalid_payload");
    assert_eq!(history(h, "c", None, None, None).chunks, before.chunks);
    assert!(get(h, "arch").is_none(), "no archive left behind");
    assert_eq!(get(h, "c").unwrap().meta.compacted_from, None);
    assert_eq!(history(h, "other", None, None, None).chunks.len(), 1);
}

/// Plugins' values: any JSON back as it was put, per scope and key; `null`
/// forgets; unknown reads `null`.
pub fn values_round_trip_and_null_forgets(h: &TestHost) {
    let put = |scope: &str, key: &str, value: Value| {
        let _: Value = ok(h, &StoreRequest::PutValue { scope: scope.into(), key: key.into(), value });
    };
    let read = |scope: &str, key: &str| {
        ok::<Value>(h, &StoreRequest::GetValue { scope: scope.into(), key: key.into() })
    };
    assert_eq!(read("s", "k"), Value::Null);
    put("s", "k", json!({"enabled": true, "intervalMs": 240000, "list": [1, "two", null]}));
    put("s", "k2", json!(85));
    put("other", "k", json!("text with 'quotes' and \"more\""));
    assert_eq!(read("s", "k"), json!({"enabled": true, "intervalMs": 240000, "list": [1, "two", null]}));
    assert_eq!(read("s", "k2"), json!(85));
    assert_eq!(read("other", "k"), json!("text with 'quotes' and \"more\""));
    put("s", "k2", json!(0));
    assert_eq!(read("s", "k2"), json!(0), "a value is replaced");
    put("s", "k", Value::Null);
    assert_eq!(read("s", "k"), Value::Null, "null forgets");
    assert_eq!(read("s", "k2"), json!(0));
}

/// `limits` says what the store takes, and a chunk at the text limit is
/// taken while an image may be larger.
pub fn limits_are_told_and_kept(h: &TestHost) {
    let limits: StoreLimits = ok(h, &StoreRequest::Limits);
    assert!(
        limits.max_chunk_bytes >= 1024 && limits.max_image_chunk_bytes >= limits.max_chunk_bytes,
        "{limits:?}"
    );
    // `{"type":"text","text":""}` is 25 bytes around the text.
    let fits = "z".repeat(usize::try_from(limits.max_chunk_bytes).unwrap() - 25);
    assert_eq!(append(h, "l", Role::User, vec![text(&fits)]), vec![1]);
    assert_eq!(history(h, "l", None, None, None).chunks[0].chunk, text(&fits));
    if limits.max_image_chunk_bytes > limits.max_chunk_bytes + 100 {
        let url =
            format!("data:image/png;base64,{}", "A".repeat(usize::try_from(limits.max_chunk_bytes).unwrap()));
        let image = Chunk::Image { url: url.clone(), mime_type: Some("image/png".into()) };
        assert_eq!(append(h, "l", Role::User, vec![image.clone()]), vec![2], "images have their own limit");
        assert_eq!(history(h, "l", Some(1), None, None).chunks[0].chunk, image);
    }
}

/// Workspaces: `default` always there (synthesized until persisted), one
/// created on miss (explicitly, or by a conversation naming it), fields
/// set and cleared, `createOnly` leaving an existing one alone, counts and
/// activity from its conversations, bad slugs refused, `default`
/// undeletable, a deleted one gone.
pub fn workspaces_are_kept_listed_and_counted(h: &TestHost) {
    use dispatch_contracts::protocol::workspace::{Workspace, WorkspaceList, WorkspaceUpdate};
    let list = || ok::<WorkspaceList>(h, &StoreRequest::Workspaces).workspaces;
    let one = |id: &str| ok::<Option<Workspace>>(h, &StoreRequest::GetWorkspace { id: id.into() });
    let put = |u: WorkspaceUpdate| ok::<Workspace>(h, &StoreRequest::PutWorkspace(u));

    let first = list();
    assert_eq!(first.len(), 1, "a new store lists `default` alone: {first:?}");
    assert_eq!(first[0].workspace, Workspace::synthesized("default"));
    assert_eq!(first[0].conversation_count, 0);
    assert_eq!(one("default"), Some(Workspace::synthesized("default")));
    assert_eq!(one("nowhere"), None);

    let made = put(WorkspaceUpdate {
        id: "team-a".into(),
        title: Some("Team A".into()),
        default_cwd: Some(Some("/srv/a".into())),
        ..WorkspaceUpdate::default()
    });
    assert_eq!((made.title.as_str(), made.default_cwd.as_deref()), ("Team A", Some("/srv/a")));
    assert!(made.created_at > 0 && !made.starred && made.default_computer_id.is_none(), "{made:?}");
    // createOnly: an existing workspace is answered as it is.
    let same = put(WorkspaceUpdate {
        id: "team-a".into(),
        create_only: true,
        title: Some("x".into()),
        ..Default::default()
    });
    assert_eq!(same, made);
    let created = put(WorkspaceUpdate { id: "fresh".into(), create_only: true, ..Default::default() });
    assert_eq!((created.title.as_str(), created.default_cwd.as_ref()), ("fresh", None));
    // Set, star, clear.
    let changed = put(WorkspaceUpdate {
        id: "team-a".into(),
        default_computer_id: Some(Some("build-box".into())),
        starred: Some(true),
        default_cwd: Some(None),
        ..Default::default()
    });
    assert_eq!(changed.default_computer_id.as_deref(), Some("build-box"));
    assert!(changed.starred && changed.default_cwd.is_none() && changed.title == "Team A", "{changed:?}");

    // A conversation naming a workspace creates it; counts and activity
    // come from the conversations.
    update(
        h,
        MetaUpdate {
            conversation_id: "w1".into(),
            workspace_id: Some("team-b".into()),
            ..Default::default()
        },
    );
    update(
        h,
        MetaUpdate {
            conversation_id: "w2".into(),
            workspace_id: Some("team-a".into()),
            ..Default::default()
        },
    );
    append(h, "w3", Role::User, vec![text("in default")]);
    let team_b = one("team-b").expect("created by the conversation naming it");
    assert_eq!(team_b.title, "team-b");
    let listed = list();
    let count = |id: &str| listed.iter().find(|w| w.workspace.id == id).map(|w| w.conversation_count);
    assert_eq!(
        (count("team-a"), count("team-b"), count("default"), count("fresh")),
        (Some(1), Some(1), Some(1), Some(0))
    );
    let w3 = get(h, "w3").expect("w3");
    let default = listed.iter().find(|w| w.workspace.id == "default").unwrap();
    assert!(default.workspace.last_activity_at >= w3.meta.last_activity_at, "{default:?}");
    for pair in listed.windows(2) {
        assert!(
            pair[0].workspace.last_activity_at >= pair[1].workspace.last_activity_at,
            "most recent first: {listed:?}"
        );
    }

    // Refusals.
    for bad in ["", "Team", "-a", "a_b", &"x".repeat(41)] {
        let req = StoreRequest::PutWorkspace(WorkspaceUpdate { id: bad.into(), ..Default::default() });
        assert_eq!(code(call(h, &req)), "invalid_payload", "{bad:?}");
    }
    let bad_move = MetaUpdate {
        conversation_id: "w1".into(),
        workspace_id: Some("No Slug".into()),
        ..Default::default()
    };
    assert_eq!(code(call(h, &StoreRequest::Update(bad_move))), "invalid_payload");
    assert_eq!(get(h, "w1").unwrap().meta.workspace_id, "team-b", "a refused move changes nothing");
    assert_eq!(code(call(h, &StoreRequest::DeleteWorkspace { id: "default".into() })), "conflict");

    // Delete: gone (its conversations are the caller's to move first).
    let deleted = ok::<Value>(h, &StoreRequest::DeleteWorkspace { id: "fresh".into() });
    assert_eq!(deleted, json!({"deleted": true}));
    assert_eq!(one("fresh"), None);
    assert_eq!(
        ok::<Value>(h, &StoreRequest::DeleteWorkspace { id: "fresh".into() }),
        json!({"deleted": false})
    );
}

fn trace(conv: &str, turn: &str, at: u64, body: TraceBody) -> TraceEvent {
    TraceEvent {
        conversation_id: conv.into(),
        turn_id: turn.into(),
        step_id: None,
        started_at: at,
        ended_at: at + 5,
        body,
    }
}

fn tool_trace(conv: &str, turn: &str, at: u64, n: u64) -> TraceEvent {
    trace(
        conv,
        turn,
        at,
        TraceBody::Tool {
            tool_call_id: format!("call-{n}"),
            tool_name: "run_shell".into(),
            plugin: Some("tool-shell".into()),
            input: json!({"command": "ls"}),
            input_bytes: 16,
            output: "ok".into(),
            output_bytes: 2,
            outcome: ToolOutcome::Ok,
            step_usage: None,
        },
    )
}

fn turn_trace(conv: &str, turn: &str, model: &str, ended: u64, output: u64, gen_ms: u64) -> TraceEvent {
    TraceEvent {
        ended_at: ended,
        ..trace(
            conv,
            turn,
            ended.saturating_sub(gen_ms),
            TraceBody::Turn {
                model: model.into(),
                reason: FinishReason::Stop,
                usage: Some(Usage { input_tokens: 10, output_tokens: output, ..Usage::default() }),
                cache_hit_rate: None,
                steps: 1,
                tool_calls: 0,
                gen_ms,
                context_size: None,
            },
        )
    }
}

fn append_traces(h: &TestHost, traces: Vec<TraceEvent>) {
    let _: Value = ok(h, &StoreRequest::AppendTraces { traces });
}

fn page(h: &TestHost, conv: &str, turn: Option<&str>, after: Option<u64>, limit: u64) -> TracePage {
    ok(
        h,
        &StoreRequest::Traces(TraceQuery {
            conversation_id: conv.into(),
            turn_id: turn.map(str::to_owned),
            kind: None,
            after,
            limit,
        }),
    )
}

/// A conversation's traces come back oldest first, a page at a time; a
/// page's cursor continues exactly after it even while more are appended;
/// turn and kind filters apply; `append` records are not kept; a trace
/// does not create or touch its conversation.
pub fn traces_page_in_order_filter_and_stay_stable_while_appended(h: &TestHost) {
    let first: Vec<TraceEvent> = (0..5).map(|n| tool_trace("tr1", "t1", 100 + n, n)).collect();
    append_traces(h, first.clone());
    append_traces(h, vec![tool_trace("other", "t9", 100, 99)]);
    append_traces(h, vec![trace("tr1", "t1", 200, TraceBody::Append { messages: 2, ok: true })]);
    assert_eq!(get(h, "tr1"), None, "traces are not conversation activity");

    let p1 = page(h, "tr1", None, None, 2);
    assert_eq!(p1.traces.iter().map(|t| t.event.clone()).collect::<Vec<_>>(), first[..2]);
    assert_eq!(p1.traces[0].duration_ms, 5);
    let cursor: u64 = p1.next_cursor.as_deref().expect("more pages").parse().expect("numeric cursor");
    // A turn appends between two page reads.
    let second: Vec<TraceEvent> = (5..8).map(|n| tool_trace("tr1", "t2", 300 + n, n)).collect();
    append_traces(h, second.clone());
    let mut seen: Vec<TraceEvent> = p1.traces.into_iter().map(|t| t.event).collect();
    let mut after = Some(cursor);
    while let Some(a) = after {
        let p = page(h, "tr1", None, Some(a), 2);
        seen.extend(p.traces.iter().map(|t| t.event.clone()));
        after = p.next_cursor.map(|c| c.parse().unwrap());
    }
    let all: Vec<TraceEvent> = first.iter().chain(&second).cloned().collect();
    assert_eq!(seen, all, "every trace once, in order, no `append` record");

    let t2 = page(h, "tr1", Some("t2"), None, 200);
    assert_eq!(t2.traces.len(), 3);
    assert_eq!(t2.next_cursor, None);
    let tools_only: TracePage = ok(
        h,
        &StoreRequest::Traces(TraceQuery {
            conversation_id: "tr1".into(),
            turn_id: None,
            kind: Some("turn".into()),
            after: None,
            limit: 10,
        }),
    );
    assert!(tools_only.traces.is_empty());
    for limit in [0, MAX_PAGE + 1] {
        let bad = StoreRequest::Traces(TraceQuery {
            conversation_id: "tr1".into(),
            turn_id: None,
            kind: None,
            after: None,
            limit,
        });
        assert_eq!(code(call(h, &bad)), "invalid_payload", "limit {limit}");
    }
}

/// Throughput sums the `turn` traces that ended in `[start, end)` per
/// model, leaving out turns without generation time or reported usage.
pub fn throughput_sums_the_turns_of_a_period_by_model(h: &TestHost) {
    append_traces(
        h,
        vec![
            turn_trace("tp1", "a", "x/fast", 1_000, 100, 1_000),
            turn_trace("tp1", "b", "x/fast", 1_500, 300, 1_000),
            turn_trace("tp2", "c", "x/slow", 1_999, 10, 2_000),
            turn_trace("tp2", "d", "x/slow", 2_000, 10, 2_000),
            turn_trace("tp2", "e", "x/idle", 1_200, 0, 0),
            tool_trace("tp2", "c", 1_100, 1),
            // No usage reported: its time would only lower the rate.
            {
                let mut silent = turn_trace("tp2", "f", "x/fast", 1_300, 0, 500);
                if let TraceBody::Turn { usage, .. } = &mut silent.body {
                    *usage = None;
                }
                silent
            },
        ],
    );
    let list: ThroughputList = ok(h, &StoreRequest::Throughput { start: 1_000, end: 2_000 });
    assert_eq!(
        list.models,
        vec![
            ThroughputRow { model: "x/fast".into(), output_tokens: 400, gen_ms: 2_000, turns: 2 },
            ThroughputRow { model: "x/slow".into(), output_tokens: 10, gen_ms: 2_000, turns: 1 },
        ]
    );
    let none: ThroughputList = ok(h, &StoreRequest::Throughput { start: 5_000, end: 6_000 });
    assert!(none.models.is_empty());
}
