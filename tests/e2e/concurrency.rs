//! Provider concurrency's routes (WIRE.md "Provider concurrency") through
//! the real binary: limits and cooldowns set, read, removed and kept
//! across a restart, the status the frontend polls, and WIRE.md's
//! messages.

use serde_json::json;

use crate::http::{get, product_config, send, Server, LOOPBACK};

#[test]
fn limits_and_cooldowns_are_kept_and_shown_as_wire_md_says() {
    let cfg = product_config(LOOPBACK);
    let mut s = Server::start(&cfg);
    let url = |p: &str| format!("{}/concurrency{p}", s.base);
    assert_eq!(get(&url("/limits")).body, json!({"limits": []}));
    assert_eq!(get(&url("/status")).body, json!({"providers": []}));
    let none = get(&url("/limits/openrouter"));
    assert_eq!(
        (none.status, none.body["error"].as_str(), none.body["code"].as_str()),
        (404, Some("No concurrency limit configured for this provider"), Some("not_configured"))
    );
    let none = get(&url("/cooldown/openrouter"));
    assert_eq!(
        (none.status, none.body["error"].as_str()),
        (404, Some("No concurrency configuration for this provider"))
    );

    // A cooldown may come before a limit.
    let cooled = send("PUT", &url("/cooldown/openrouter"), Some(r#"{"cooldownMs": 1200}"#), &[]);
    assert_eq!(cooled.body, json!({"providerId": "openrouter", "cooldownMs": 1200}), "{}", cooled.text);
    assert_eq!(get(&url("/status")).body, json!({"providers": []}), "a cooldown alone is not a limit");
    let limited = send("PUT", &url("/limits/openrouter"), Some(r#"{"limit": 3}"#), &[]);
    assert_eq!(limited.body, json!({"providerId": "openrouter", "limit": 3}), "{}", limited.text);
    assert_eq!(send("PUT", &url("/limits/local"), Some(r#"{"limit": 2.0}"#), &[]).status, 200);
    assert_eq!(
        get(&url("/cooldown/local")).body,
        json!({"providerId": "local", "cooldownMs": 350}),
        "the default"
    );

    for (path, body, message) in [
        ("/limits/x", r#"{"limit": 0}"#, "Body must be { limit: <positive integer> }"),
        ("/limits/x", r#"{"limit": 1.5}"#, "Body must be { limit: <positive integer> }"),
        ("/limits/x", r#"{}"#, "Body must be { limit: <positive integer> }"),
        ("/cooldown/x", r#"{"cooldownMs": -1}"#, "Body must be { cooldownMs: <non-negative integer> }"),
        ("/cooldown/x", r#"{"cooldownMs": "5"}"#, "Body must be { cooldownMs: <non-negative integer> }"),
    ] {
        let refused = send("PUT", &url(path), Some(body), &[]);
        assert_eq!((refused.status, refused.body["error"].as_str()), (400, Some(message)), "{path} {body}");
    }

    // Kept across a restart.
    s.stop_with(15);
    let s = Server::start(&cfg);
    let url = |p: &str| format!("{}/concurrency{p}", s.base);
    assert_eq!(
        get(&url("/limits")).body,
        json!({"limits": [{"providerId": "local", "limit": 2}, {"providerId": "openrouter", "limit": 3}]})
    );
    let status = get(&url("/status")).body;
    assert_eq!(
        status["providers"][1],
        json!({"providerId": "openrouter", "limit": 3, "inFlight": 0, "queued": 0, "paused": false,
               "cooldownMs": 1200, "autoReduced": false})
    );

    // Removing a limit: the provider runs unlimited; a second removal is a 404.
    let removed = send("DELETE", &url("/limits/local"), None, &[]);
    assert_eq!(removed.body, json!({"ok": true, "providerId": "local"}));
    assert_eq!(send("DELETE", &url("/limits/local"), None, &[]).status, 404);
    assert_eq!(get(&url("/cooldown/local")).status, 404, "nothing is configured for it any more");
    assert_eq!(get(&url("/limits")).body["limits"].as_array().unwrap().len(), 1);
}

fn configure(s: &Server, provider: &str, limit: u64, cooldown_ms: u64) {
    let url = |p: &str| format!("{}/concurrency{p}/{provider}", s.base);
    assert_eq!(send("PUT", &url("/limits"), Some(&json!({"limit": limit}).to_string()), &[]).status, 200);
    assert_eq!(
        send("PUT", &url("/cooldown"), Some(&json!({"cooldownMs": cooldown_ms}).to_string()), &[]).status,
        200
    );
}

fn status_of(s: &Server, provider: &str) -> serde_json::Value {
    let all = get(&format!("{}/concurrency/status", s.base)).body;
    all["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["providerId"] == provider)
        .cloned()
        .unwrap_or_default()
}

fn poll(what: &str, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "{what}: not within 30 s");
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

/// A turn started at `at`, running on a thread: when each event arrived.
fn turn(
    base: &str,
    id: &str,
    message: &str,
    workspace: &str,
) -> std::thread::JoinHandle<Vec<(std::time::Instant, serde_json::Value)>> {
    let (base, body) =
        (base.to_owned(), json!({"conversationId": id, "message": message, "workspaceId": workspace}));
    std::thread::spawn(move || {
        let mut stream = crate::http::Stream::open(&base, &body);
        assert_eq!(stream.status, 200);
        std::iter::from_fn(|| stream.next()).map(|e| (std::time::Instant::now(), e)).collect()
    })
}

fn first(events: &[(std::time::Instant, serde_json::Value)], kind: &str) -> std::time::Instant {
    events
        .iter()
        .find(|(_, e)| e["type"] == kind)
        .map(|(t, _)| *t)
        .unwrap_or_else(|| panic!("no {kind}: {events:?}"))
}

/// Limit 1: of three conversations one runs, two wait (`queued` on the
/// WebSocket, counted in the status), then each runs in turn, a starred
/// workspace's first; a freed slot waits out the cooldown.
#[test]
fn a_limit_of_one_runs_one_turn_at_a_time_starred_first_after_the_cooldown() {
    use dispatch_test_support::ws_client::WsClient;
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    configure(&s, "scripted", 1, 600);
    assert_eq!(send("PUT", &format!("{}/workspaces/vip/star", s.base), Some(""), &[]).status, 200);
    let mut watcher = crate::http::rt().block_on(async {
        let mut c = WsClient::connect(&s.ws()).await.unwrap();
        assert_eq!(c.next().await["type"], "catalog");
        c
    });

    let holder = turn(&s.base, "holder", "slow please", "default");
    poll("the first turn holds the slot", || status_of(&s, "scripted")["inFlight"] == 1);
    let plain = turn(&s.base, "plain", "hello", "default");
    poll("the plain one waits", || status_of(&s, "scripted")["queued"] == 1);
    let vip = turn(&s.base, "vip-1", "hello", "vip");
    poll("both wait", || status_of(&s, "scripted")["queued"] == 2);
    let line = status_of(&s, "scripted");
    assert_eq!(
        (line["limit"].as_u64(), line["inFlight"].as_u64(), line["cooldownMs"].as_u64()),
        (Some(1), Some(1), Some(600))
    );

    let (holder, plain, vip) = (holder.join().unwrap(), plain.join().unwrap(), vip.join().unwrap());
    for events in [&holder, &plain, &vip] {
        assert_eq!(events.last().unwrap().1["type"], "turn-sealed", "{events:?}");
    }
    let sealed = first(&holder, "turn-sealed");
    let (vip_started, plain_started) = (first(&vip, "text-delta"), first(&plain, "text-delta"));
    assert!(vip_started < plain_started, "the starred workspace's turn went first");
    assert!(
        vip_started.duration_since(sealed) >= std::time::Duration::from_millis(450),
        "the slot was handed on after the 600 ms cooldown, not {:?}",
        vip_started.duration_since(sealed)
    );
    // Each waiting conversation was told `queued`, then `active`.
    let seen = crate::http::rt().block_on(async {
        let mut all = Vec::new();
        while let dispatch_test_support::ws_client::Read::Json(v) =
            watcher.read(std::time::Duration::from_millis(300)).await
        {
            all.push(v);
        }
        all
    });
    for id in ["plain", "vip-1"] {
        let statuses: Vec<&str> = seen
            .iter()
            .filter(|v| v["type"] == "conversation.statusChanged" && v["conversationId"] == id)
            .filter_map(|v| v["status"].as_str())
            .collect();
        let queued =
            statuses.iter().position(|s| *s == "queued").unwrap_or_else(|| panic!("{id}: {statuses:?}"));
        assert!(statuses[queued..].contains(&"active"), "{id}: {statuses:?}");
    }
    // The last slot is held for its cooldown, then free.
    poll("every slot free", || {
        let line = status_of(&s, "scripted");
        (line["inFlight"].as_u64(), line["queued"].as_u64()) == (Some(0), Some(0))
    });
}

/// Removing the limit lets a waiting turn go at once.
#[test]
fn removing_a_limit_releases_the_queue_at_once() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    configure(&s, "scripted", 1, 0);
    let holder = turn(&s.base, "holder", "slow please", "default");
    poll("the first turn holds the slot", || status_of(&s, "scripted")["inFlight"] == 1);
    let waiting = turn(&s.base, "waiting", "hello", "default");
    poll("one waits", || status_of(&s, "scripted")["queued"] == 1);
    assert_eq!(send("DELETE", &format!("{}/concurrency/limits/scripted", s.base), None, &[]).status, 200);
    let waiting = waiting.join().unwrap();
    let holder = holder.join().unwrap();
    assert!(
        first(&waiting, "turn-sealed") < first(&holder, "turn-sealed"),
        "it did not wait for the slow turn"
    );
}

/// A `429` from the provider pauses its queue and lowers its limit, kept
/// with a notice until an operator sets the limit again.
#[test]
fn a_429_pauses_the_provider_and_lowers_its_limit_until_restored() {
    use dispatch_test_support::mock_openai::*;
    let mock = MockServer::start(vec![Reply::json(429, json!({"error": {"message": "slow down"}}))]);
    let cfg = product_config(LOOPBACK);
    let url = mock.base_url();
    let s = Server::start_with(
        &cfg,
        &[("DISPATCH_BASE_URL", &url), ("DISPATCH_API_KEY", "sk-test"), ("DISPATCH_MODEL", "mock-model")],
    );
    configure(&s, "openai", 3, 0);
    let before =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut stream = crate::http::Stream::open(
        &s.base,
        &json!({"conversationId": "rl", "message": "hi", "model": "openai/mock-model"}),
    );
    assert_eq!(stream.status, 200);
    // (The pause comes first, so nothing starts meanwhile; the lowered
    // limit is kept in the store a moment later.)
    poll("the provider is paused and its limit lowered", || {
        let line = status_of(&s, "openai");
        line["paused"] == true && line["autoReduced"] == true
    });
    let line = status_of(&s, "openai");
    assert_eq!(
        (line["limit"].as_u64(), line["autoReduced"].as_bool(), line["autoReducedFrom"].as_u64()),
        (Some(2), Some(true), Some(3)),
        "{line}"
    );
    assert_eq!(
        line["notice"],
        "Concurrency limit auto-reduced to 2 after a 429 — restore manually when ready."
    );
    let until = line["pausedUntil"].as_u64().unwrap();
    assert!(until >= before + 29_000 && until <= before + 40_000, "paused for 30 s: {until} vs {before}");
    assert_eq!(get(&format!("{}/concurrency/limits/openai", s.base)).body["limit"], 2, "kept");
    // The turn's retry waits for the pause: stop it.
    assert_eq!(crate::http::post(&format!("{}/conversations/rl/stop", s.base), "").status, 200);
    let rest = stream.rest();
    assert_eq!(rest.last().unwrap()["type"], "turn-sealed", "{rest:?}");
    // Restored by hand.
    configure(&s, "openai", 3, 0);
    let line = status_of(&s, "openai");
    assert_eq!((line["limit"].as_u64(), line["autoReduced"].as_bool()), (Some(3), Some(false)), "{line}");
    assert!(line.get("notice").is_none(), "{line}");
}
