//! Heartbeat (WIRE.md "Heartbeat") through the real binary, with a
//! "minute" of milliseconds (`minute_ms`): the routes' shapes and messages,
//! runs that fire with the configured prompts, model and directory, a busy
//! workspace skipped, a run stopped, runs found running after a crash, and
//! a deleted workspace's heartbeat disabled.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::{chat, get, post, product_config_with, send, Server, Stream, LOOPBACK};

fn put(url: &str, body: &str) -> crate::http::Answer {
    send("PUT", url, Some(body), &[])
}

/// The product with a heartbeat minute of `minute_ms`.
fn config(minute_ms: u64) -> crate::support::Written {
    product_config_with(
        LOOPBACK,
        LOOPBACK,
        &[("libdispatch_plugin_heartbeat.so", format!("minute_ms = {minute_ms}"))],
    )
}

fn runs(s: &Server, ws: &str) -> Vec<Value> {
    let a = get(&format!("{}/workspaces/{ws}/heartbeat/runs", s.base));
    assert_eq!(a.status, 200, "{}", a.text);
    a.body["runs"].as_array().unwrap().clone()
}

fn poll(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(30), "{what}: not within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_heartbeat_routes_answer_as_wire_md_says() {
    let cfg = config(60_000);
    let s = Server::start(&cfg);
    let url = |p: &str| format!("{}/workspaces/team{p}", s.base);
    let defaults = json!({"enabled": false, "inactiveOnly": true, "systemPrompt": "", "taskPrompt": "",
        "intervalMinutes": 30, "model": "", "reasoningEffort": null});
    assert_eq!(get(&url("/heartbeat")).body, defaults);
    assert_eq!(get(&url("/heartbeat/runs")).body, json!({"runs": []}));
    assert_eq!(get(&url("/heartbeat/next-run")).body, json!({"nextRunAt": null}));

    for (body, message) in [
        (r#"{"enabled": "yes"}"#, "Field 'enabled' must be a boolean"),
        (r#"{"intervalMinutes": "5"}"#, "Field 'intervalMinutes' must be a finite number"),
        (r#"{"model": 4}"#, "Field 'model' must be a string"),
        (
            r#"{"reasoningEffort": "huge"}"#,
            "Field 'reasoningEffort' must be one of: low, medium, high, xhigh, max, or null",
        ),
        ("[1]", "Request body must be a JSON object"),
    ] {
        let refused = put(&url("/heartbeat"), body);
        assert_eq!((refused.status, refused.body["error"].as_str()), (400, Some(message)), "{body}");
    }
    // Partial: merged; disabled stays unscheduled.
    let merged = put(
        &url("/heartbeat"),
        r#"{"taskPrompt": "check", "intervalMinutes": 2.7, "reasoningEffort": "low"}"#,
    );
    assert_eq!(merged.status, 200, "{}", merged.text);
    assert_eq!(
        (merged.body["taskPrompt"].as_str(), merged.body["intervalMinutes"].as_u64()),
        (Some("check"), Some(2))
    );
    assert_eq!(merged.body["reasoningEffort"], "low");
    assert_eq!(get(&url("/heartbeat")).body, merged.body, "kept");
    assert_eq!(get(&url("/heartbeat/next-run")).body, json!({"nextRunAt": null}));
    // Enabled: the next fire an interval (two minutes) from now, ISO-8601.
    put(&url("/heartbeat"), r#"{"enabled": true}"#);
    let next = get(&url("/heartbeat/next-run")).body["nextRunAt"].as_str().unwrap().to_owned();
    assert!(next.ends_with('Z') && next.len() == 24, "{next}");
    let missing = post(&url("/heartbeat/runs/nope/stop"), "");
    assert_eq!((missing.status, missing.body["error"].as_str()), (404, Some("Heartbeat run not found")));

    // A deleted workspace's heartbeat is disabled.
    put(&format!("{}/workspaces/team", s.base), "{}");
    assert_eq!(send("DELETE", &format!("{}/workspaces/team", s.base), None, &[]).status, 200);
    // (The deletion is announced as an event: the heartbeat hears it at once, not in the same call.)
    poll("the deleted workspace's heartbeat is disabled", || {
        get(&url("/heartbeat")).body["enabled"] == false
    });
    assert_eq!(get(&url("/heartbeat/next-run")).body, json!({"nextRunAt": null}));
}

/// A run: a new conversation in workspace `heartbeat`, opened by the task
/// prompt (its variables resolved), with the configured system prompt and
/// model, in the workspace's directory; the next fires an interval after
/// the run's end.
#[test]
fn a_heartbeat_runs_with_its_prompts_model_and_directory_and_fires_again() {
    use dispatch_test_support::mock_openai::*;
    let replies = (0..6).map(|_| Reply::sse(&[text_chunk("All quiet."), finish_chunk("stop")])).collect();
    let mock = MockServer::start(replies);
    let cfg = config(100);
    let url = mock.base_url();
    let s = Server::start_with(
        &cfg,
        &[("DISPATCH_BASE_URL", &url), ("DISPATCH_API_KEY", "sk-test"), ("DISPATCH_MODEL", "mock-model")],
    );
    let dir = tempfile::tempdir().unwrap();
    let body = json!({"defaultCwd": dir.path().display().to_string()}).to_string();
    assert_eq!(put(&format!("{}/workspaces/ops/default-cwd", s.base), &body).status, 200);
    let hb = json!({"enabled": true, "intervalMinutes": 1, "model": "openai/mock-model",
        "systemPrompt": "You watch over ops on [system:os].", "taskPrompt": "Check the build of [system:date]."});
    assert_eq!(put(&format!("{}/workspaces/ops/heartbeat", s.base), &hb.to_string()).status, 200);

    poll("two runs completed", || runs(&s, "ops").iter().filter(|r| r["status"] == "completed").count() >= 2);
    assert_eq!(put(&format!("{}/workspaces/ops/heartbeat", s.base), r#"{"enabled": false}"#).status, 200);
    let all = runs(&s, "ops");
    let first = all.last().unwrap();
    assert!(first["triggeredAt"].as_str().unwrap().ends_with('Z'), "{first}");
    assert!(all[0]["triggeredAt"].as_str() >= all[1]["triggeredAt"].as_str(), "newest first: {all:?}");
    let conversation = first["conversationId"].as_str().unwrap();
    let list = get(&format!("{}/conversations", s.base)).body;
    let meta =
        list["conversations"].as_array().unwrap().iter().find(|c| c["id"] == conversation).unwrap().clone();
    assert_eq!(meta["workspaceId"], "heartbeat", "{meta}");
    assert_eq!(get(&format!("{}/workspaces/heartbeat", s.base)).status, 200, "created");

    let request = &mock.requests()[0].body;
    assert_eq!(request["model"], "mock-model");
    let system = request["messages"][0]["content"].as_str().unwrap();
    assert!(system.starts_with("You watch over ops on ") && !system.contains("[system:os]"), "{system}");
    let task = request["messages"][1]["content"].to_string();
    assert!(task.contains("Check the build of 20") && !task.contains("[system:date]"), "{task}");
    let cwd = get(&format!("{}/conversations/{conversation}/cwd", s.base)).body;
    assert_eq!(cwd["cwd"], dir.path().display().to_string());
    // Disabled: nothing more fires.
    std::thread::sleep(Duration::from_millis(400));
    let settled = runs(&s, "ops").len();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(runs(&s, "ops").len(), settled, "a disabled heartbeat does not fire");
}

/// `inactiveOnly`: no run while a conversation of the workspace is active;
/// a run stopped by a client is `stopped` and its turn aborted.
#[test]
fn a_busy_workspace_is_skipped_and_a_run_can_be_stopped() {
    let cfg = config(100);
    let s = Server::start(&cfg);
    let mut stream = Stream::open(
        &s.base,
        &json!({"conversationId": "busy-1", "message": "slow please", "workspaceId": "busy"}),
    );
    stream.until("text-delta");
    let hb = json!({"enabled": true, "intervalMinutes": 1, "taskPrompt": "slow heartbeat"});
    assert_eq!(put(&format!("{}/workspaces/busy/heartbeat", s.base), &hb.to_string()).status, 200);
    std::thread::sleep(Duration::from_millis(700));
    assert!(runs(&s, "busy").is_empty(), "fired while the workspace was busy: {:?}", runs(&s, "busy"));
    stream.rest();

    poll("a run starts once the workspace is idle", || !runs(&s, "busy").is_empty());
    let run = runs(&s, "busy")[0].clone();
    assert_eq!(run["status"], "running", "{run}");
    assert_eq!(
        get(&format!("{}/workspaces/busy/heartbeat/next-run", s.base)).body["nextRunAt"],
        Value::Null,
        "none while a run is in flight"
    );
    let stop = format!("{}/workspaces/busy/heartbeat/runs/{}/stop", s.base, run["id"].as_str().unwrap());
    let stopped = post(&stop, "");
    assert_eq!((stopped.status, &stopped.body), (200, &json!({"ok": true})), "{}", stopped.text);
    let now = runs(&s, "busy");
    let same = now.iter().find(|r| r["id"] == run["id"]).unwrap();
    assert_eq!(same["status"], "stopped");
    let status = get(&format!("{}/conversations/{}/status", s.base, run["conversationId"].as_str().unwrap()));
    assert_eq!(status.body["isActive"], false, "the run's turn was aborted: {}", status.text);
    assert_eq!(post(&stop, "").body, json!({"ok": true}), "stopping a finished run is a no-op");
    put(&format!("{}/workspaces/busy/heartbeat", s.base), r#"{"enabled": false}"#);
}

/// After a crash, a run left `running` is `stopped`, and the enabled
/// heartbeat fires again without anyone touching it.
#[test]
fn after_a_crash_running_runs_are_stopped_and_the_heartbeat_is_armed_again() {
    let cfg = config(150);
    let mut s = Server::start(&cfg);
    let hb = json!({"enabled": true, "intervalMinutes": 1, "taskPrompt": "slow heartbeat"});
    assert_eq!(put(&format!("{}/workspaces/night/heartbeat", s.base), &hb.to_string()).status, 200);
    poll("a run in flight", || runs(&s, "night").first().is_some_and(|r| r["status"] == "running"));
    let crashed = runs(&s, "night")[0]["id"].clone();
    s.stop_with(9);

    let s = Server::start(&cfg);
    let after = runs(&s, "night");
    let old = after.iter().find(|r| r["id"] == crashed).unwrap();
    assert_eq!(old["status"], "stopped", "{after:?}");
    poll("a new run after the restart", || runs(&s, "night").iter().any(|r| r["id"] != crashed));
    put(&format!("{}/workspaces/night/heartbeat", s.base), r#"{"enabled": false}"#);
    let (a, _) = chat(&s.base, json!({"message": "hi"}));
    assert_eq!(a.status, 200, "the server serves on: {}", a.text);
}
