//! Contract tests of the SQLite store on real database files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use dispatch_contracts::protocol::reconcile::INTERRUPTED;
use dispatch_contracts::protocol::store::MetaUpdate;
use dispatch_contracts::protocol::wire::{
    Chunk, ConversationStatus, ReasoningEffort, Role, StepMetrics, TurnMetrics, Usage,
};
use dispatch_plugin_store_sqlite::store::{Options, Store, StoreError, MIGRATOR};
use serde_json::json;

async fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(Options::new(dir.path().join("dispatch.db"))).await.unwrap()
}

async fn open_with_chunk_limit(dir: &tempfile::TempDir, max_chunk_bytes: usize) -> Store {
    let mut o = Options::new(dir.path().join("dispatch.db"));
    o.max_chunk_bytes = max_chunk_bytes;
    Store::open(o).await.unwrap()
}

fn text(s: &str) -> Chunk {
    Chunk::text(s)
}

#[tokio::test]
async fn seqs_are_one_based_gap_free_and_a_message_gets_consecutive_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    assert_eq!(s.append("c1", Role::User, Some("t1"), &[text("hi")]).await.unwrap(), vec![1]);
    assert_eq!(
        s.append("c1", Role::Assistant, Some("t1"), &[text("a"), text("b"), text("c")]).await.unwrap(),
        vec![2, 3, 4]
    );
    assert_eq!(
        s.append("c2", Role::User, None, &[text("other")]).await.unwrap(),
        vec![1],
        "per conversation"
    );
    let h = s.history("c1", None, None, None).await.unwrap();
    assert_eq!(h.chunks.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(h.latest_seq, 4);
    assert_eq!(h.chunks[0].role, Role::User);
    assert_eq!(h.chunks[2].chunk, text("b"));
}

#[tokio::test]
async fn history_windows_follow_the_wire_contract() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    for i in 1..=10 {
        s.append("w", Role::Assistant, None, &[text(&i.to_string())]).await.unwrap();
    }
    let seqs = |h: dispatch_contracts::protocol::store::History| {
        (h.chunks.iter().map(|c| c.seq).collect::<Vec<_>>(), h.latest_seq)
    };
    assert_eq!(seqs(s.history("w", Some(7), None, None).await.unwrap()), (vec![8, 9, 10], 10));
    assert_eq!(seqs(s.history("w", None, Some(4), None).await.unwrap()), (vec![1, 2, 3], 3));
    // limit = the newest k of the selection, ascending.
    assert_eq!(seqs(s.history("w", None, None, Some(3)).await.unwrap()), (vec![8, 9, 10], 10));
    assert_eq!(seqs(s.history("w", Some(2), Some(9), Some(2)).await.unwrap()), (vec![7, 8], 8));
    // Nothing newer: latestSeq is the requested sinceSeq.
    assert_eq!(seqs(s.history("w", Some(10), None, None).await.unwrap()), (vec![], 10));
    assert_eq!(seqs(s.history("w", Some(99), None, None).await.unwrap()), (vec![], 99));
    // Unknown conversation: empty, latestSeq 0.
    assert_eq!(seqs(s.history("nobody", None, None, None).await.unwrap()), (vec![], 0));
    assert!(s.messages("nobody").await.unwrap().is_empty());
    assert!(s.get("nobody").await.unwrap().is_none());
}

#[tokio::test]
async fn messages_are_regrouped_and_reconciled_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    s.append("m", Role::User, Some("t"), &[text("do it")]).await.unwrap();
    let call = |id: &str| Chunk::ToolCall {
        tool_call_id: id.into(),
        tool_name: "sh".into(),
        input: json!({}),
        step_id: Some("t#0".into()),
    };
    s.append("m", Role::Assistant, Some("t"), &[text("ok"), call("a"), call("b")]).await.unwrap();
    s.append(
        "m",
        Role::Tool,
        Some("t"),
        &[Chunk::ToolResult {
            tool_call_id: "a".into(),
            tool_name: "sh".into(),
            content: "done".into(),
            is_error: false,
            step_id: Some("t#0".into()),
        }],
    )
    .await
    .unwrap();
    let msgs = s.messages("m").await.unwrap();
    assert_eq!(msgs.len(), 4, "user, assistant, result a, synthesized result b");
    assert_eq!(msgs[1].chunks.len(), 3);
    assert!(
        matches!(&msgs[3].chunks[0], Chunk::ToolResult { tool_call_id, content, is_error: true, step_id: Some(s), .. }
        if tool_call_id == "b" && content == INTERRUPTED && s == "t#0")
    );
    // The raw history is not changed by reconciling.
    assert_eq!(s.history("m", None, None, None).await.unwrap().chunks.len(), 5);
}

#[tokio::test]
async fn metadata_title_defaults_to_the_first_user_message_and_updates_apply() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    let long = format!("Please   refactor\nthe {} module", "very ".repeat(20));
    s.append("meta", Role::User, None, &[text(&long)]).await.unwrap();
    s.append("meta", Role::User, None, &[text("second message")]).await.unwrap();
    let d = s.get("meta").await.unwrap().unwrap();
    assert!(d.meta.title.starts_with("Please refactor the very"), "{}", d.meta.title);
    assert!(d.meta.title.ends_with('…') && d.meta.title.chars().count() == 61, "{}", d.meta.title);
    assert_eq!(d.meta.status, ConversationStatus::Idle);
    assert_eq!(d.meta.workspace_id, "default");
    assert!(d.meta.created_at > 0 && d.meta.last_activity_at >= d.meta.created_at);
    assert_eq!(d.latest_seq, 2);

    let d = s
        .update(MetaUpdate {
            conversation_id: "meta".into(),
            title: Some("Renamed".into()),
            status: Some(ConversationStatus::Active),
            cwd: Some(Some("/tmp/work".into())),
            model: Some(Some("scripted/demo".into())),
            reasoning_effort: Some(Some(ReasoningEffort::Xhigh)),
            workspace_id: Some("ws1".into()),
            system_prompt: Some(Some("be brief".into())),
        })
        .await
        .unwrap();
    assert_eq!(d.meta.title, "Renamed");
    assert_eq!(
        (d.cwd.as_deref(), d.model.as_deref(), d.reasoning_effort),
        (Some("/tmp/work"), Some("scripted/demo"), Some(ReasoningEffort::Xhigh))
    );
    assert_eq!(d.system_prompt.as_deref(), Some("be brief"));
    // null clears; absent leaves alone.
    let d = s
        .update(MetaUpdate { conversation_id: "meta".into(), cwd: Some(None), ..MetaUpdate::default() })
        .await
        .unwrap();
    assert_eq!(d.cwd, None);
    assert_eq!(d.model.as_deref(), Some("scripted/demo"));
    // Updating an unknown conversation creates it.
    let d = s
        .update(MetaUpdate {
            conversation_id: "fresh".into(),
            title: Some("New".into()),
            ..MetaUpdate::default()
        })
        .await
        .unwrap();
    assert_eq!((d.meta.title.as_str(), d.latest_seq), ("New", 0));
}

#[tokio::test]
async fn list_filters_by_prefix_and_status_most_recent_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    for id in ["proj-a", "proj-b", "other"] {
        s.append(id, Role::User, None, &[text(id)]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    s.update(MetaUpdate {
        conversation_id: "proj-a".into(),
        status: Some(ConversationStatus::Closed),
        ..MetaUpdate::default()
    })
    .await
    .unwrap();
    let ids = |v: Vec<dispatch_contracts::protocol::wire::ConversationMeta>| {
        v.into_iter().map(|m| m.id).collect::<Vec<_>>()
    };
    assert_eq!(ids(s.list(None, None).await.unwrap()), ["other", "proj-b", "proj-a"]);
    assert_eq!(ids(s.list(Some("proj-"), None).await.unwrap()), ["proj-b", "proj-a"]);
    assert_eq!(ids(s.list(Some("proj-"), Some(ConversationStatus::Closed)).await.unwrap()), ["proj-a"]);
    assert_eq!(
        ids(s.list(Some("%"), None).await.unwrap()),
        Vec::<String>::new(),
        "prefix is literal, not a LIKE pattern"
    );
}

#[tokio::test]
async fn turn_metrics_round_trip_in_append_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    let m = |t: &str, n: u64| TurnMetrics {
        turn_id: t.into(),
        usage: Usage { input_tokens: n, output_tokens: 1, ..Usage::default() },
        duration_ms: Some(5),
        steps: vec![StepMetrics {
            step_id: format!("{t}#0"),
            usage: Usage::default(),
            ttft_ms: Some(1),
            decode_ms: Some(2),
            gen_total_ms: Some(3),
        }],
        context_size: Some(n + 1),
    };
    s.append_metrics("mx", &m("t1", 10)).await.unwrap();
    s.append_metrics("mx", &m("t2", 20)).await.unwrap();
    assert_eq!(s.metrics("mx").await.unwrap(), vec![m("t1", 10), m("t2", 20)]);
    assert!(s.metrics("none").await.unwrap().is_empty());
}

#[tokio::test]
async fn bad_input_is_refused_precisely_and_nothing_is_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with_chunk_limit(&dir, 100).await;
    for bad in ["", "has space", "../etc", &"x".repeat(129)] {
        assert!(
            matches!(s.append(bad, Role::User, None, &[text("x")]).await, Err(StoreError::InvalidId(_))),
            "{bad:?}"
        );
    }
    let e = s.append("ok", Role::User, None, &[text("fine"), text(&"y".repeat(200))]).await.unwrap_err();
    assert!(matches!(e, StoreError::ChunkTooLarge { index: 1, limit: 100, .. }), "{e}");
    assert_eq!(e.to_string(), "chunk #1 is 225 bytes, over the limit of 100 bytes");
    assert_eq!(s.append("ok", Role::User, None, &[]).await.unwrap_err(), StoreError::EmptyMessage);
    // The refused message left nothing behind; the next append starts at 1.
    assert!(s.get("ok").await.unwrap().is_none());
    assert_eq!(s.append("ok", Role::User, None, &[text("fine")]).await.unwrap(), vec![1]);
}

/// A model step (its assistant message and tool results) lands in one
/// transaction: consecutive seqs across the messages, each message its own
/// `message_seq`; one bad message refuses the whole step.
#[tokio::test]
async fn a_steps_messages_append_together_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with_chunk_limit(&dir, 100).await;
    assert_eq!(s.append("c", Role::User, Some("t"), &[text("hi")]).await.unwrap(), vec![1]);
    let assistant = [text("a"), text("b")];
    let tool = [text("result")];
    let step: [(Role, &[Chunk]); 2] = [(Role::Assistant, &assistant), (Role::Tool, &tool)];
    assert_eq!(s.append_messages("c", Some("t"), &step).await.unwrap(), vec![2, 3, 4]);
    let messages = s.messages("c").await.unwrap();
    assert_eq!(
        messages.iter().map(|m| m.role).collect::<Vec<_>>(),
        [Role::User, Role::Assistant, Role::Tool]
    );

    let big = [text(&"y".repeat(200))];
    let bad: [(Role, &[Chunk]); 2] = [(Role::Assistant, &assistant), (Role::Tool, &big)];
    let e = s.append_messages("c", Some("t"), &bad).await.unwrap_err();
    assert!(matches!(e, StoreError::ChunkTooLarge { index: 0, .. }), "{e}");
    let empty: [(Role, &[Chunk]); 2] = [(Role::Assistant, &assistant), (Role::Tool, &[])];
    assert_eq!(s.append_messages("c", Some("t"), &empty).await.unwrap_err(), StoreError::EmptyMessage);
    assert_eq!(s.append_messages("c", Some("t"), &[]).await.unwrap_err(), StoreError::EmptyMessage);
    // Nothing of the refused steps landed.
    assert_eq!(s.history("c", None, None, None).await.unwrap().latest_seq, 4);
    assert_eq!(s.append("c", Role::User, Some("t2"), &[text("next")]).await.unwrap(), vec![5]);
}

#[tokio::test]
async fn a_file_that_is_not_a_database_fails_to_open_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dispatch.db");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    let e = Store::open(Options::new(&path)).await.err().unwrap();
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("cannot open the database {}", path.display())), "{msg}");
    assert!(msg.contains("not a database"), "{msg}");
}

#[tokio::test]
async fn an_unwritable_directory_fails_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    // A path *under a regular file* can never be created, even as root.
    let e = Store::open(Options::new(blocker.join("sub/dispatch.db"))).await.err().unwrap();
    assert!(e.to_string().contains("cannot create"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_conversations_appended_concurrently_have_exactly_one_to_n() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(&dir).await);
    let mut tasks = Vec::new();
    // 50 conversations; 3 writers on each of the first 10.
    for c in 0..50 {
        let writers = if c < 10 { 3 } else { 1 };
        for w in 0..writers {
            let s = Arc::clone(&s);
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..20 {
                    let n = 1 + (i + w) % 3;
                    let chunks: Vec<Chunk> = (0..n).map(|k| text(&format!("{w}-{i}-{k}"))).collect();
                    got.push(s.append(&format!("conv-{c}"), Role::Assistant, None, &chunks).await.unwrap());
                }
                (c, got)
            }));
        }
    }
    let mut per_conv: HashMap<usize, Vec<u64>> = HashMap::new();
    for t in tasks {
        let (c, got) = t.await.unwrap();
        for seqs in got {
            assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "a message's seqs are consecutive: {seqs:?}");
            per_conv.entry(c).or_default().extend(seqs);
        }
    }
    for c in 0..50 {
        let mut acked = per_conv.remove(&c).unwrap();
        acked.sort_unstable();
        let n = acked.len() as u64;
        assert_eq!(acked, (1..=n).collect::<Vec<_>>(), "conversation {c}");
        let stored: Vec<u64> = s
            .history(&format!("conv-{c}"), None, None, None)
            .await
            .unwrap()
            .chunks
            .iter()
            .map(|x| x.seq)
            .collect();
        assert_eq!(stored, (1..=n).collect::<Vec<_>>());
    }
    assert_eq!(s.integrity_check().await.unwrap(), "ok");
}

#[tokio::test]
async fn a_database_created_by_the_first_schema_version_opens_and_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dispatch.db");
    // Build a version-1 database with only the first migration, as the
    // first release would have left it, with data in it.
    {
        let first_only = dir.path().join("v1");
        std::fs::create_dir_all(&first_only).unwrap();
        let first = MIGRATOR.iter().next().unwrap();
        std::fs::write(
            first_only.join(format!("{}_{}.sql", first.version, first.description.replace(' ', "_"))),
            first.sql.as_ref(),
        )
        .unwrap();
        let v1 = sqlx::migrate::Migrator::new(first_only.as_path()).await.unwrap();
        use sqlx::Connection as _;
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        v1.run(&mut conn).await.unwrap();
        sqlx::query("INSERT INTO conversations (id, created_at, last_activity_at, title, last_seq) VALUES ('old', 1, 2, 'Old', 1)")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("INSERT INTO chunks (conversation_id, seq, message_seq, role, stored) VALUES ('old', 1, 1, 'user', '{\"seq\":1,\"role\":\"user\",\"chunk\":{\"type\":\"text\",\"text\":\"from v1\"}}')")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    assert!(MIGRATOR.iter().count() >= 2, "this test needs a later migration to apply");
    let s = Store::open(Options::new(&path)).await.unwrap();
    let h = s.history("old", None, None, None).await.unwrap();
    assert_eq!(h.chunks[0].chunk, text("from v1"));
    assert_eq!(s.get("old").await.unwrap().unwrap().system_prompt, None, "the v2 column exists");
    s.append_metrics(
        "old",
        &TurnMetrics {
            turn_id: "t".into(),
            usage: Usage::default(),
            duration_ms: None,
            steps: vec![],
            context_size: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(s.append("old", Role::Assistant, None, &[text("after")]).await.unwrap(), vec![2]);
}

/// Schema 5 gives the workspaces conversations already named a row each
/// (only slugs: nothing else is addressable), so an upgraded server's
/// home page lists them.
#[tokio::test]
async fn an_upgrade_to_workspaces_lists_the_workspaces_conversations_were_in() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dispatch.db");
    {
        let first_four = dir.path().join("v4");
        std::fs::create_dir_all(&first_four).unwrap();
        for m in MIGRATOR.iter().take(4) {
            let name = format!("{}_{}.sql", m.version, m.description.replace(' ', "_"));
            std::fs::write(first_four.join(name), m.sql.as_ref()).unwrap();
        }
        let v4 = sqlx::migrate::Migrator::new(first_four.as_path()).await.unwrap();
        use sqlx::Connection as _;
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        v4.run(&mut conn).await.unwrap();
        for (id, ws, at) in
            [("a1", "team-a", 10), ("a2", "team-a", 30), ("d1", "default", 20), ("x1", "Not A Slug", 40)]
        {
            sqlx::query("INSERT INTO conversations (id, created_at, last_activity_at, title, workspace_id) VALUES (?1, ?2, ?2, 't', ?3)")
                .bind(id)
                .bind(at)
                .bind(ws)
                .execute(&mut conn)
                .await
                .unwrap();
        }
        conn.close().await.unwrap();
    }
    let s = Store::open(Options::new(&path)).await.unwrap();
    let listed: Vec<(String, u64, u64)> = s
        .workspaces()
        .await
        .unwrap()
        .into_iter()
        .map(|w| (w.workspace.id, w.conversation_count, w.workspace.last_activity_at))
        .collect();
    assert_eq!(listed, vec![("team-a".to_owned(), 2, 30), ("default".to_owned(), 1, 20)]);
    let team = s.workspace("team-a").await.unwrap().unwrap();
    assert_eq!((team.title.as_str(), team.created_at), ("team-a", 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_fails_in_the_database_fails_alone_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dispatch.db");
    let s = Store::open(Options::new(&path)).await.unwrap();
    // A trigger makes the database itself refuse one conversation's second
    // chunk, after its first chunk of the same message was inserted.
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(
        "CREATE TRIGGER poison BEFORE INSERT ON chunks \
         WHEN NEW.conversation_id = 'poison' AND NEW.seq > 1 BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
    )
    .unwrap();
    drop(db);
    // Many writers at once, so the poisoned message shares a transaction
    // with good ones.
    let s = Arc::new(s);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let id = if i == 7 { "poison".to_owned() } else { format!("good-{i}") };
            (id.clone(), s.append(&id, Role::User, None, &[text("a"), text("b")]).await)
        }));
    }
    for t in tasks {
        let (id, result) = t.await.unwrap();
        if id == "poison" {
            let e = result.unwrap_err();
            assert!(e.to_string().contains("poisoned"), "{e}");
        } else {
            assert_eq!(result.unwrap(), vec![1, 2], "{id}");
        }
    }
    // Neither half of the poisoned message, nor its seq counter, remains.
    assert_eq!(s.history("poison", None, None, None).await.unwrap().chunks, vec![]);
    assert!(s.get("poison").await.unwrap().is_none());
    // A message that passes the trigger takes seq 1: no gap was left.
    assert_eq!(s.append("poison", Role::User, None, &[text("one")]).await.unwrap(), vec![1]);
    assert_eq!(s.integrity_check().await.unwrap(), "ok");
}

/// A second process appending beside a running one made 970 of 1000
/// appends fail (each writer caches the last seq). One writer per
/// database: the second is refused at open, naming the holder.
#[tokio::test]
async fn a_second_writer_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(&dir).await;
    let second = Store::open(Options::new(dir.path().join("dispatch.db"))).await;
    let e = second.err().expect("a second writer must be refused").to_string();
    assert!(e.contains("already in use by another process"), "{e}");
    assert!(e.contains(&format!("(pid {})", std::process::id())), "{e}");
    first.close().await;
    // Free again once the first is closed.
    open(&dir).await.close().await;
}

#[tokio::test]
async fn a_database_from_a_newer_schema_is_refused_naming_the_migration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dispatch.db");
    let s = Store::open(Options::new(&path)).await.unwrap();
    s.append("c", Role::User, None, &[text("hi")]).await.unwrap();
    s.close().await;
    // What a later version would have left: one migration more.
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (999, 'from the future', 1, x'00', 0)",
        [],
    )
    .unwrap();
    drop(db);
    let err = Store::open(Options::new(&path)).await.err().expect("a newer database must be refused");
    assert!(err.to_string().contains("999"), "{err}");
    // Refusing changed nothing.
    let db = rusqlite::Connection::open(&path).unwrap();
    let n: i64 = db.query_row("SELECT COUNT(*) FROM chunks", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1);
}

/// Regression (issue 31): the database, its WAL and the directory were
/// world-readable (0644 / 0755): the conversations are the user's.
#[tokio::test]
async fn a_new_database_and_its_files_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dispatch.db");
    let store = Store::open(Options::new(path.clone())).await.unwrap();
    store.append("c1", Role::User, None, &[text("private")]).await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("sub")), 0o700);
    assert_eq!(mode(&path), 0o600);
    let wal = dir.path().join("sub/dispatch.db-wal");
    assert!(wal.exists(), "WAL mode writes a -wal file");
    assert_eq!(mode(&wal), 0o600);
    assert_eq!(mode(&dir.path().join("sub/dispatch.db.lock")), 0o600);
}
