//! Turn traces through the real binary (the `traces` plugin on the
//! session's `session.trace` facts, kept by the SQLite store): a tool
//! turn's context, requests and calls; a failing tool, a retried request
//! and an aborted turn told apart; paging; a restart; throughput; and the
//! CLI's timeline.

use std::time::Duration;

use serde_json::{json, Value};

use crate::http::{chat, get, post, product_config, Server, LOOPBACK};
use crate::support::*;

/// Every trace of a conversation, a page of `limit` at a time.
fn all_traces(base: &str, id: &str, limit: u64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = get(&format!("{base}/conversations/{id}/traces?limit={limit}&cursor={cursor}"));
        assert_eq!(page.status, 200, "{}", page.text);
        out.extend(page.body["traces"].as_array().unwrap().iter().cloned());
        match page.body["nextCursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => return out,
        }
    }
}

fn kinds(traces: &[Value]) -> Vec<&str> {
    traces.iter().map(|t| t["kind"].as_str().unwrap()).collect()
}

fn chat_in(base: &str, id: &str, message: &str, cwd: &std::path::Path) {
    let (a, events) = chat(base, json!({"conversationId": id, "message": message, "cwd": cwd}));
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(events.last().unwrap()["type"], "turn-sealed");
}

/// The traces of a turn are written after it seals (a batch behind): wait
/// for its `turn` record.
fn wait_for_turn_end(base: &str, id: &str, turns: usize) -> Vec<Value> {
    for _ in 0..100 {
        let traces = all_traces(base, id, 200);
        if traces.iter().filter(|t| t["kind"] == "turn").count() >= turns {
            return traces;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the traces of {id} never showed {turns} ended turns");
}

#[test]
fn a_tool_turn_is_traced_end_to_end_and_kept_across_a_restart() {
    let cfg = product_config(LOOPBACK);
    let mut s = Server::start(&cfg);
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("notes.txt"), "hello").unwrap();

    // A tool turn.
    chat_in(&s.base, "tr-ok", "read the notes", work.path());
    let traces = wait_for_turn_end(&s.base, "tr-ok", 1);
    assert_eq!(kinds(&traces), ["context", "request", "tool", "request", "turn"], "{traces:#?}");
    let context = &traces[0];
    assert_eq!(context["model"], "scripted/demo");
    let offered: Vec<&str> =
        context["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(offered.contains(&"read_file") && offered.contains(&"run_shell"), "{offered:?}");
    let request = &traces[1];
    assert_eq!(
        (request["stepId"].as_str(), request["outcome"].as_str()),
        (Some(context["turnId"].as_str().unwrap()).map(|t| format!("{t}#0")).as_deref(), Some("ok"))
    );
    assert_eq!(request["usage"], json!({"inputTokens": 30, "outputTokens": 5}));
    assert_eq!(request["finish"], "tool-calls");
    let tool = &traces[2];
    assert_eq!(
        (tool["toolName"].as_str(), tool["plugin"].as_str(), tool["outcome"].as_str()),
        (Some("read_file"), Some("tool-read-file"), Some("ok")),
        "{tool}"
    );
    assert_eq!(tool["input"], json!({"path": "notes.txt"}));
    assert_eq!(tool["stepUsage"], json!({"inputTokens": 30, "outputTokens": 5}), "the step's usage");
    assert!(tool["output"].as_str().unwrap().contains("hello"), "{tool}");
    assert!(tool["endedAt"].as_u64() >= tool["startedAt"].as_u64());
    let turn = &traces[4];
    assert_eq!(
        (turn["reason"].as_str(), turn["steps"].as_u64(), turn["toolCalls"].as_u64()),
        (Some("stop"), Some(2), Some(1))
    );
    assert_eq!(turn["usage"], json!({"inputTokens": 90, "outputTokens": 11}));
    let ids: Vec<u64> = traces.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");

    // The context route.
    let turn_id = context["turnId"].as_str().unwrap();
    let ctx = get(&format!("{}/conversations/tr-ok/turns/{turn_id}/context", s.base));
    assert_eq!(ctx.status, 200, "{}", ctx.text);
    assert_eq!(ctx.body["tools"], context["tools"]);
    assert_eq!(ctx.body["systemPrompt"], context["systemPrompt"]);
    assert!(ctx.body["systemPrompt"].as_str().is_some_and(|p| !p.is_empty()), "the bundled prompt");
    let missing = get(&format!("{}/conversations/tr-ok/turns/nope/context", s.base));
    assert_eq!((missing.status, missing.body["code"].as_str()), (404, Some("not_found")));

    // A failing tool (no notes here), a retried request, an aborted turn.
    let empty = tempfile::tempdir().unwrap();
    chat_in(&s.base, "tr-bad", "read the notes", empty.path());
    chat_in(&s.base, "tr-bad", "flaky please", empty.path());
    let base = s.base.clone();
    let slow = std::thread::spawn(move || {
        chat(&base, json!({"conversationId": "tr-bad", "message": "slow please"}))
    });
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(post(&format!("{}/conversations/tr-bad/stop", s.base), "").status, 200);
    slow.join().unwrap();
    let traces = wait_for_turn_end(&s.base, "tr-bad", 3);
    let tool = traces.iter().find(|t| t["kind"] == "tool").unwrap();
    assert_eq!(tool["outcome"], "error", "{tool}");
    let requests: Vec<(&str, u64, Option<&str>)> = traces
        .iter()
        .filter(|t| t["kind"] == "request")
        .map(|t| (t["outcome"].as_str().unwrap(), t["attempt"].as_u64().unwrap(), t["status"].as_str()))
        .collect();
    assert_eq!(
        requests,
        [("ok", 0, None), ("ok", 0, None), ("retry", 0, Some("429")), ("ok", 1, None), ("aborted", 0, None)],
        "{traces:#?}"
    );
    let retry = traces.iter().find(|t| t["outcome"] == "retry").unwrap();
    assert_eq!(retry["error"], "HTTP 429: slow down");
    let reasons: Vec<&str> =
        traces.iter().filter(|t| t["kind"] == "turn").map(|t| t["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["stop", "stop", "aborted"]);

    // Paging: the same traces, whatever the page size; one turn's alone.
    let paged = all_traces(&s.base, "tr-bad", 2);
    assert_eq!(paged, traces);
    let one_turn =
        get(&format!("{}/conversations/tr-bad/traces?turnId={}", s.base, retry["turnId"].as_str().unwrap()));
    assert!(one_turn.body["traces"].as_array().unwrap().iter().all(|t| t["turnId"] == retry["turnId"]));
    assert_eq!(kinds(one_turn.body["traces"].as_array().unwrap()), ["context", "request", "request", "turn"]);
    for (query, fragment) in
        [("limit=0", "`limit`"), ("limit=201", "at most 200"), ("cursor=abc", "`cursor`")]
    {
        let refused = get(&format!("{}/conversations/tr-bad/traces?{query}", s.base));
        assert_eq!(refused.status, 400, "{query}");
        assert!(refused.body["error"].as_str().unwrap().contains(fragment), "{query}: {}", refused.text);
    }
    assert_eq!(get(&format!("{}/conversations/never-seen/traces", s.base)).status, 404);

    // Throughput: today's turns, by model.
    let today =
        String::from_utf8(std::process::Command::new("date").arg("+%F").output().unwrap().stdout).unwrap();
    let today = today.trim();
    let day = get(&format!("{}/metrics/throughput?period=day&date={today}", s.base));
    assert_eq!(day.status, 200, "{}", day.text);
    let model = &day.body["models"][0];
    assert_eq!(model["model"], "scripted/demo", "{}", day.text);
    // Exactly the ended turns that reported usage and generation time
    // (whether the aborted one got to report any depends on when it was
    // stopped): the retried `flaky` turn reported none.
    let ended: Vec<Value> = ["tr-ok", "tr-bad"]
        .iter()
        .flat_map(|c| all_traces(&s.base, c, 200))
        .filter(|t| t["kind"] == "turn" && t["usage"].is_object() && t["genMs"].as_u64() > Some(0))
        .collect();
    let tokens: u64 = ended.iter().map(|t| t["usage"]["outputTokens"].as_u64().unwrap()).sum();
    assert!(ended.len() >= 2, "both `read` turns at least: {ended:?}");
    assert_eq!(
        (model["turns"].as_u64(), model["totalOutputTokens"].as_u64()),
        (Some(ended.len() as u64), Some(tokens)),
        "{}",
        day.text
    );
    assert!(model["totalGenMs"].as_u64().unwrap() > 0);
    assert!(day.body["end"].as_u64().unwrap() > day.body["start"].as_u64().unwrap());
    for (query, message) in [
        ("period=year&date=2026-01-01", "query param 'period' must be one of: day, week, month"),
        ("period=day", "query param 'date' is required"),
        ("period=day&date=2026-02-30", "invalid day date \"2026-02-30\" (expected YYYY-MM-DD)"),
        ("period=month&date=2026-02-01", "invalid month date \"2026-02-01\" (expected YYYY-MM)"),
    ] {
        let refused = get(&format!("{}/metrics/throughput?{query}", s.base));
        assert_eq!((refused.status, refused.body["error"].as_str()), (400, Some(message)), "{query}");
    }

    // The CLI's timeline.
    let out = run(&["traces", "tr-ok", "--server", &s.base], &[], Duration::from_secs(30));
    let text = out.stdout.clone();
    assert!(out.status.success(), "{text} {}", out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[0].starts_with(&format!("turn {turn_id} · scripted/demo")), "{text}");
    assert!(lines[2].trim_start().starts_with("↳ read_file ok (tool-read-file)"), "{text}");
    assert!(lines[4].trim_start().starts_with("end stop · 2 steps · 1 tool call ·"), "{text}");
    let json_lines = run(&["traces", "tr-ok", "--json", "--server", &s.base], &[], Duration::from_secs(30));
    let parsed: Vec<Value> = json_lines.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(parsed, all_traces(&s.base, "tr-ok", 200));

    // Kept across a restart.
    s.stop_with(15);
    let s = Server::start(&cfg);
    assert_eq!(all_traces(&s.base, "tr-bad", 200), traces);
}
