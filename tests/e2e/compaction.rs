//! The `compaction` plugin end to end: the real binary, the scripted model
//! (it answers a summary request with its `^Please summarize` reply), the
//! real SQLite store, the WebSocket broadcast.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use dispatch_test_support::ws_client::WsClient;

use crate::http::{chat, get, post, product_config, product_config_with, rt, send, Server, LOOPBACK};

fn say(s: &Server, id: &str, message: &str) {
    let (a, events) = chat(&s.base, json!({"conversationId": id, "message": message}));
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(events.last().unwrap()["type"], "turn-sealed", "{events:?}");
}

fn history(s: &Server, id: &str) -> Vec<Value> {
    let a = get(&format!("{}/conversations/{id}", s.base));
    assert_eq!(a.status, 200, "{}", a.text);
    a.body["chunks"].as_array().unwrap().clone()
}

fn meta(s: &Server, id: &str) -> Value {
    let a = get(&format!("{}/conversations?q={id}", s.base));
    a.body["conversations"].as_array().unwrap().iter().find(|c| c["id"] == id).cloned().unwrap_or(Value::Null)
}

/// Every tool result has its call earlier in the same history.
fn results_have_calls(chunks: &[Value]) {
    for (i, c) in chunks.iter().enumerate() {
        if c["chunk"]["type"] == "tool-result" {
            let id = &c["chunk"]["toolCallId"];
            assert!(
                chunks[..i]
                    .iter()
                    .any(|p| p["chunk"]["type"] == "tool-call" && &p["chunk"]["toolCallId"] == id),
                "a kept tool result lacks its call: {c}"
            );
        }
    }
}

#[test]
fn a_compaction_archives_the_whole_history_and_restarts_the_conversation_with_its_summary() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let ws = s.ws();
    for _ in 0..3 {
        say(&s, "long", "read the notes");
    }
    let before = history(&s, "long");
    let title = meta(&s, "long")["title"].clone();
    // Three turns of user, assistant (call), tool (result), assistant:
    // twelve messages. Keeping two would start at a tool result, so the
    // boundary moves one message earlier, to its call: three kept.
    let broadcast = rt().spawn(async move {
        let mut c = WsClient::connect(&ws).await.unwrap();
        c.until(|v| v["type"] == "conversation.compacted").await.pop().unwrap()
    });
    std::thread::sleep(Duration::from_millis(200));
    let a = post(&format!("{}/conversations/long/compact", s.base), r#"{"keepLastN": 2}"#);
    assert_eq!(a.status, 200, "{}", a.text);
    let archive = a.body["newConversationId"].as_str().unwrap().to_owned();
    assert_eq!(a.body["conversationId"], "long");
    assert_eq!((a.body["messagesSummarized"].as_u64(), a.body["messagesKept"].as_u64()), (Some(9), Some(3)));

    // The archive holds the old log exactly, closed, titled after it.
    assert_eq!(history(&s, &archive), before);
    let archived = meta(&s, &archive);
    assert_eq!(archived["status"], "closed");
    assert_eq!(archived["title"], json!(format!("Archive: {}", title.as_str().unwrap())));

    // The live log: the summary at seq 1, then the kept messages, seqs 1..n.
    let after = history(&s, "long");
    assert_eq!(after[0]["role"], "system");
    let summary = after[0]["chunk"]["text"].as_str().unwrap();
    assert!(
        summary.starts_with("The following is a summary of the previous conversation:\n\nSummary:"),
        "{summary}"
    );
    let seqs: Vec<u64> = after.iter().map(|c| c["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=after.len() as u64).collect::<Vec<_>>());
    assert_eq!(after[1]["role"], "assistant", "the kept part starts at the call, not its result");
    results_have_calls(&after);
    let kept: Vec<&Value> = before.iter().rev().take(after.len() - 1).collect();
    let kept_chunks: Vec<&Value> = kept.iter().rev().map(|c| &c["chunk"]).collect();
    assert_eq!(after[1..].iter().map(|c| &c["chunk"]).collect::<Vec<_>>(), kept_chunks);
    assert_eq!(meta(&s, "long")["compactedFrom"], json!(archive));

    // Every WebSocket client heard of it.
    let heard = rt().block_on(broadcast).unwrap();
    assert_eq!(heard["conversationId"], "long");
    assert_eq!(heard["newConversationId"], json!(archive));

    // The conversation goes on from the summary: the model sees it first.
    say(&s, "long", "read the notes");
    let next = history(&s, "long");
    assert_eq!(next[0], after[0]);
    assert!(next.len() > after.len());
    let seqs: Vec<u64> = next.iter().map(|c| c["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=next.len() as u64).collect::<Vec<_>>());

    // A second compaction chains: the new archive names the first.
    let again = post(&format!("{}/conversations/long/compact", s.base), r#"{"keepLastN": 1}"#);
    assert_eq!(again.status, 200, "{}", again.text);
    let second = again.body["newConversationId"].as_str().unwrap();
    assert_eq!(meta(&s, second)["compactedFrom"], json!(archive));
}

#[test]
fn a_compaction_is_refused_while_a_turn_runs_for_an_unknown_or_short_conversation() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let url = |p: &str| format!("{}{p}", s.base);
    let unknown = post(&url("/conversations/nobody/compact"), "");
    assert_eq!((unknown.status, unknown.body["code"].as_str()), (404, Some("not_found")), "{}", unknown.text);
    say(&s, "short", "hello");
    let short = post(&url("/conversations/short/compact"), "{}");
    assert_eq!(short.status, 409, "{}", short.text);
    assert_eq!(short.body["error"], "conversation too short to compact");
    let model = post(&url("/conversations/short/compact"), r#"{"keepLastN": 1, "modelName": "nope/none"}"#);
    assert_eq!(
        (model.status, model.body["error"].as_str()),
        (409, Some("unknown model: nope/none")),
        "{}",
        model.text
    );

    // While a turn runs: 409, and the history is untouched.
    let base = s.base.clone();
    let slow =
        std::thread::spawn(move || chat(&base, json!({"conversationId": "short", "message": "slow please"})));
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&url("/conversations/short/status")).body["isActive"] != true {
        assert!(Instant::now() < deadline, "the slow turn never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let busy = post(&url("/conversations/short/compact"), r#"{"keepLastN": 1}"#);
    assert_eq!(
        (busy.status, busy.body["error"].as_str()),
        (409, Some("conversation is generating")),
        "{}",
        busy.text
    );
    slow.join().unwrap();

    // The threshold: 85 until set; 0–100, floored.
    let t = get(&url("/conversations/short/compact-percent"));
    assert_eq!(t.body, json!({"conversationId": "short", "threshold": 85}));
    let put = send("PUT", &url("/conversations/short/compact-percent"), Some(r#"{"threshold": 42.7}"#), &[]);
    assert_eq!(put.body, json!({"conversationId": "short", "threshold": 42}), "{}", put.text);
    assert_eq!(get(&url("/conversations/short/compact-percent")).body["threshold"], 42);
    for bad in [r#"{"threshold": 101}"#, r#"{"threshold": -1}"#, r#"{"threshold": "x"}"#, "[1]"] {
        let a = send("PUT", &url("/conversations/short/compact-percent"), Some(bad), &[]);
        assert_eq!(a.status, 400, "{bad}: {}", a.text);
    }
    assert_eq!(get(&url("/conversations/short/compact-percent")).body["threshold"], 42);
}

/// With a small context window, a turn that ends past the threshold gets
/// its conversation compacted on its own (the scripted model estimates its
/// tokens from the characters it is sent).
#[test]
fn a_conversation_past_its_threshold_is_compacted_after_its_turn() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.json");
    std::fs::write(
        &script,
        json!({"contextWindow": 400, "replies": [
            {"match": "^Please summarize", "steps": [{"text": "Summary: a long chat."}]},
            {"steps": [{"text": "A reply of some length, to make the context grow a little with every turn."}]}
        ]})
        .to_string(),
    )
    .unwrap();
    let scripted = format!("script = {:?}", script.display().to_string());
    let cfg =
        product_config_with(LOOPBACK, LOOPBACK, &[("libdispatch_plugin_provider_scripted.so", scripted)]);
    let s = Server::start(&cfg);
    // Off for one conversation, on (85 %) for the other.
    let off = send(
        "PUT",
        &format!("{}/conversations/off/compact-percent", s.base),
        Some(r#"{"threshold": 0}"#),
        &[],
    );
    assert_eq!(off.status, 200, "{}", off.text);
    let mut compacted = false;
    for i in 0..40 {
        say(&s, "auto", &format!("message number {i}, with a few words in it"));
        say(&s, "off", &format!("message number {i}, with a few words in it"));
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if history(&s, "auto")[0]["role"] == "system" {
                compacted = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if compacted {
            break;
        }
    }
    assert!(compacted, "never compacted; log:\n{}", s.log());
    let metrics = get(&format!("{}/conversations/auto/metrics", s.base)).body;
    let sizes: Vec<u64> =
        metrics["turns"].as_array().unwrap().iter().map(|t| t["contextSize"].as_u64().unwrap_or(0)).collect();
    assert!(sizes.iter().all(|n| *n > 0), "every turn has a context size: {sizes:?}");
    assert!(sizes.last().unwrap() >= &340, "compacted past 85 % of 400: {sizes:?}");
    assert!(meta(&s, "auto")["compactedFrom"].is_string());
    assert_ne!(history(&s, "off")[0]["role"], "system", "threshold 0: never compacted");
    // It goes on.
    say(&s, "auto", "and after the compaction?");
}

/// SIGKILL at any moment of a compaction leaves the old history or the new
/// one, never a mix: the archive is whole whenever the live log changed.
#[test]
fn a_kill_during_compaction_leaves_the_old_history_or_the_new_one() {
    let cfg = product_config(LOOPBACK);
    for round in 0..4u64 {
        let mut s = Server::start(&cfg);
        let id = format!("kill-{round}");
        for _ in 0..4 {
            say(&s, &id, "read the notes");
        }
        let before = history(&s, &id);
        let base = s.base.clone();
        let path = format!("/conversations/{id}/compact");
        let compact = std::thread::spawn(move || {
            send("POST", &format!("{base}{path}"), Some(r#"{"keepLastN": 2}"#), &[])
        });
        std::thread::sleep(Duration::from_millis(round * 3));
        s.stop_with(9);
        let _ = compact.join();
        let s = Server::start(&cfg);
        let after = history(&s, &id);
        if after == before {
            continue;
        }
        assert_eq!(
            after[0]["role"], "system",
            "round {round}: neither the old log nor a compacted one: {after:?}"
        );
        let archive = meta(&s, &id)["compactedFrom"].as_str().unwrap().to_owned();
        assert_eq!(history(&s, &archive), before, "round {round}: the archive is not the whole old log");
        let seqs: Vec<u64> = after.iter().map(|c| c["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=after.len() as u64).collect::<Vec<_>>());
    }
}

/// `dispatch compact ID [--keep N] [--model M]`: the CLI asks the server,
/// says what happened, and a refusal is the server's message and a
/// failing exit.
#[test]
fn the_cli_compacts_a_conversation_and_reports_a_refusal() {
    use crate::support::run;
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    for _ in 0..2 {
        say(&s, "cli-compact", "read the notes");
    }
    let limit = Duration::from_secs(60);
    let out = run(&["compact", "cli-comp", "--keep", "1", "--server", &s.base], &[], limit);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("compacted cli-compact:") && out.stdout.contains("summarized"),
        "{}",
        out.stdout
    );
    assert_eq!(history(&s, "cli-compact")[0]["role"], "system");
    let refused = run(&["compact", "cli-compact", "--keep", "50", "--server", &s.base], &[], limit);
    assert_ne!(refused.code(), 0);
    assert!(refused.stderr.contains("conversation too short to compact"), "{}", refused.stderr);
}

/// The summary request a real OpenAI-compatible server receives: no
/// tools, a bounded answer (`max_tokens` 2000), the conversation's system
/// prompt then the summarizer's instruction, the transcript as the user's
/// message. A provider failure is a `502` with its message, and changes
/// nothing.
#[test]
fn the_summary_request_is_bounded_and_has_no_tools_and_a_provider_failure_is_a_502() {
    use dispatch_test_support::mock_openai::*;
    let server = MockServer::start(vec![
        Reply::sse(&[text_chunk("Summary from the mock."), finish_chunk("stop"), usage_chunk(50, 5, None)]),
        Reply::json(500, json!({"error": {"message": "the mock is down"}})),
    ]);
    let openai = format!(
        "[[plugin.config.credentials]]\nname = \"mock\"\nbase_url = {:?}\nmodels = [\"m\"]\n",
        server.base_url()
    );
    let cfg = product_config_with(LOOPBACK, LOOPBACK, &[("libdispatch_plugin_provider_openai.so", openai)]);
    let s = Server::start(&cfg);
    for _ in 0..2 {
        say(&s, "bounded", "read the notes");
    }
    let url = format!("{}/conversations/bounded/compact", s.base);
    let a = post(&url, r#"{"keepLastN": 1, "modelName": "mock/m"}"#);
    assert_eq!(a.status, 200, "{}", a.text);
    let reqs = server.requests();
    let body = &reqs[0].body;
    assert_eq!(body["model"], "m");
    assert_eq!(body["max_tokens"], 2000, "{body}");
    assert!(body.get("tools").is_none(), "{body}");
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "system");
    assert!(messages[0]["content"].as_str().unwrap().ends_with("Answer with the summary only."), "{body}");
    let user = messages[1]["content"]
        .as_str()
        .unwrap_or_else(|| messages[1]["content"][0]["text"].as_str().unwrap());
    assert!(
        user.starts_with("Please summarize the following conversation:\n\nuser: read the notes"),
        "{user}"
    );
    assert!(
        user.contains("assistant: [tool: read_file]\n\ntool: [tool result: ")
            && user.contains("hello from the notes"),
        "{user}"
    );
    assert!(history(&s, "bounded")[0]["chunk"]["text"].as_str().unwrap().ends_with("Summary from the mock."));

    say(&s, "bounded", "read the notes");
    let before = history(&s, "bounded");
    let failed = post(&url, r#"{"keepLastN": 1, "modelName": "mock/m"}"#);
    assert_eq!(
        (failed.status, failed.body["code"].as_str()),
        (502, Some("provider_error")),
        "{}",
        failed.text
    );
    assert!(failed.body["error"].as_str().unwrap().contains("the mock is down"), "{}", failed.text);
    assert_eq!(history(&s, "bounded"), before);
}

/// Past the threshold at a tool-result boundary, the stored history is
/// compacted while the turn runs; the turn goes on with the compacted
/// history and seals as usual, what it appends landing after the summary.
#[test]
fn a_turn_past_the_threshold_at_a_tool_boundary_goes_on_with_the_compacted_history() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.json");
    let read = json!({"toolCalls": [{"name": "read_file", "input": {"path": "notes.txt"}}]});
    std::fs::write(
        &script,
        json!({"contextWindow": 100, "replies": [
            {"match": "^Please summarize", "steps": [{"text": "Summary: work in progress."}]},
            {"match": "^work", "steps": [read, read, read, read, {"text": "All read."}]},
            {"steps": [{"text": "Noted."}]}
        ]})
        .to_string(),
    )
    .unwrap();
    let scripted = format!("script = {:?}", script.display().to_string());
    let cfg =
        product_config_with(LOOPBACK, LOOPBACK, &[("libdispatch_plugin_provider_scripted.so", scripted)]);
    let s = Server::start(&cfg);
    let percent = |t: u64| {
        let body = json!({"threshold": t}).to_string();
        let a = send("PUT", &format!("{}/conversations/mid/compact-percent", s.base), Some(&body), &[]);
        assert_eq!(a.status, 200, "{}", a.text);
    };
    percent(0);
    for i in 0..3 {
        say(&s, "mid", &format!("note {i}"));
    }
    assert_ne!(history(&s, "mid")[0]["role"], "system", "off: not compacted after those turns");
    percent(85);
    let (a, events) = chat(&s.base, json!({"conversationId": "mid", "message": "work through the notes"}));
    assert_eq!(a.status, 200, "{}", a.text);
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds.last(), Some(&"turn-sealed"), "{kinds:?}");
    let done = events.iter().find(|e| e["type"] == "done").unwrap();
    assert_eq!(done["reason"], "stop", "{done}");
    assert_eq!(kinds.iter().filter(|k| **k == "tool-result").count(), 4, "the turn did all its steps");
    assert!(
        s.log().contains("over the threshold mid-turn: compacting"),
        "not compacted mid-turn:\n{}",
        s.log()
    );

    let after = history(&s, "mid");
    assert_eq!(after[0]["role"], "system", "{after:?}");
    assert!(after[0]["chunk"]["text"].as_str().unwrap().ends_with("Summary: work in progress."));
    let seqs: Vec<u64> = after.iter().map(|c| c["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=after.len() as u64).collect::<Vec<_>>());
    results_have_calls(&after);
    assert_eq!(
        after.last().unwrap()["chunk"]["text"],
        "All read.",
        "the turn's end landed after the summary"
    );
    let archive = meta(&s, "mid")["compactedFrom"].as_str().unwrap().to_owned();
    let archived = history(&s, &archive);
    assert!(archived.iter().any(|c| c["chunk"]["text"] == "work through the notes"), "{archived:?}");
    // And the conversation goes on.
    say(&s, "mid", "note 4");
}
