//! The `cache-warming` plugin end to end: `POST /chat/warm` against a real
//! OpenAI-compatible test server (what a warm sends, compared with the
//! next turn's request), and the per-conversation surface and timer over
//! the WebSocket.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use dispatch_test_support::mock_openai::*;
use dispatch_test_support::ws_client::WsClient;

use crate::http::{chat, get, post, product_config, product_config_with, rt, Server, LOOPBACK};

fn turn_reply(text: &str) -> Reply {
    Reply::sse(&[text_chunk(text), finish_chunk("stop"), usage_chunk(120, 3, Some(100))])
}

/// A warm sends what the next turn sends — the same system prompt, tools
/// and history — then the one-token probe, and answers the cache's share;
/// nothing of it is persisted.
#[test]
fn a_warm_sends_the_next_turns_prefix_and_reports_what_the_cache_served() {
    let server = MockServer::start(vec![
        turn_reply("First answer."),
        Reply::sse(&[text_chunk("."), finish_chunk("length"), usage_chunk(1000, 1, Some(875))]),
        turn_reply("Second answer."),
    ]);
    let openai = format!(
        "[[plugin.config.credentials]]\nname = \"mock\"\nbase_url = {:?}\nmodels = [\"m\"]\n",
        server.base_url()
    );
    let cfg = product_config_with(LOOPBACK, LOOPBACK, &[("libdispatch_plugin_provider_openai.so", openai)]);
    let s = Server::start(&cfg);
    let (a, _) = chat(&s.base, json!({"conversationId": "w", "message": "hello", "model": "mock/m"}));
    assert_eq!(a.status, 200, "{}", a.text);
    let before = get(&format!("{}/conversations/w", s.base)).body;

    let warm = post(&format!("{}/chat/warm", s.base), r#"{"conversationId": "w"}"#);
    assert_eq!(warm.status, 200, "{}", warm.text);
    assert_eq!(
        warm.body,
        json!({"inputTokens": 1000, "outputTokens": 1, "cacheReadTokens": 875, "cacheWriteTokens": 0,
               "cachePct": 88, "expectedCacheRate": 100})
    );
    assert_eq!(get(&format!("{}/conversations/w", s.base)).body, before, "a warm persists nothing");

    let (a, _) = chat(&s.base, json!({"conversationId": "w", "message": "and then?"}));
    assert_eq!(a.status, 200, "{}", a.text);
    let reqs = server.requests();
    let (probe, next) = (&reqs[1].body, &reqs[2].body);
    assert_eq!(probe["max_tokens"], 1, "{probe}");
    let pm = probe["messages"].as_array().unwrap();
    let nm = next["messages"].as_array().unwrap();
    assert_eq!(pm.len(), nm.len());
    assert_eq!(pm[..pm.len() - 1], nm[..nm.len() - 1], "the same prefix: system prompt and history");
    assert_eq!(pm.last().unwrap()["content"], "reply with just a .");
    assert_eq!(probe["tools"], next["tools"], "the same tools");
    assert_eq!(probe["model"], next["model"]);
}

#[test]
fn a_warm_is_refused_with_the_wire_messages() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let url = format!("{}/chat/warm", s.base);
    for body in ["{}", r#"{"conversationId": ""}"#, r#"{"conversationId": 5}"#, "[]"] {
        let a = post(&url, body);
        assert_eq!(a.status, 400, "{body}: {}", a.text);
        assert_eq!(a.body["error"], "Field 'conversationId' is required and must be a non-empty string");
    }
    // Regression (found by scripts/fuzz-api): a `model` that is not a
    // string was taken as absent, and the warm went ahead.
    let typed = post(&url, r#"{"conversationId": "w", "model": {"x": 1}}"#);
    assert_eq!((typed.status, typed.body["error"].as_str()), (400, Some("Field 'model' must be a string")));
    let none = post(&url, r#"{"conversationId": "never"}"#);
    assert_eq!((none.status, none.body["error"].as_str()), (409, Some("no history")), "{}", none.text);
    let (a, _) = chat(&s.base, json!({"conversationId": "w2", "message": "hello"}));
    assert_eq!(a.status, 200);
    let unknown = post(&url, r#"{"conversationId": "w2", "model": "nope/none"}"#);
    assert_eq!((unknown.status, unknown.body["error"].as_str()), (409, Some("unknown model: nope/none")));
    let base = s.base.clone();
    let slow =
        std::thread::spawn(move || chat(&base, json!({"conversationId": "w2", "message": "slow please"})));
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&format!("{}/conversations/w2/status", s.base)).body["isActive"] != true {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let busy = post(&url, r#"{"conversationId": "w2"}"#);
    assert_eq!((busy.status, busy.body["error"].as_str()), (409, Some("conversation is generating")));
    slow.join().unwrap();
    let ok = post(&url, r#"{"conversationId": "w2"}"#);
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert!(ok.body["inputTokens"].as_u64().unwrap() > 0, "the scripted model estimates: {}", ok.text);
}

/// The surface's fields by label (`toggle`/`number` by kind).
fn controls(spec: &Value) -> (bool, f64, Value) {
    let fields = spec["fields"].as_array().unwrap();
    let toggle = fields.iter().find(|f| f["kind"] == "toggle").map(|f| f["value"].as_bool().unwrap());
    let number = fields.iter().find(|f| f["kind"] == "number").map(|f| f["value"].as_f64().unwrap());
    let timer =
        fields.iter().find(|f| f["rendererId"] == "cache-warming-timer").map(|f| f["payload"].clone());
    (toggle.unwrap_or(false), number.unwrap_or(0.0), timer.unwrap_or(Value::Null))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The surface and its timer: off by default; toggled on, a warm is
/// scheduled one interval ahead and comes; a turn cancels the schedule and
/// its end re-arms it; closing the conversation switches warming off.
#[test]
fn the_surface_toggles_a_timer_that_warms_and_a_close_switches_it_off() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let (a, _) = chat(&s.base, json!({"conversationId": "timed", "message": "hello"}));
    assert_eq!(a.status, 200);
    let ws = s.ws();
    let base = s.base.clone();
    rt().block_on(async move {
        let mut c = WsClient::connect(&ws).await.unwrap();
        let catalog = c.next().await;
        let entry = catalog["catalog"].as_array().unwrap().iter().find(|e| e["id"] == "cache-warming").cloned();
        assert_eq!(entry.unwrap()["scope"], "conversation", "{catalog}");
        let is_update = |v: &Value| v["type"] == "update" && v["update"]["surfaceId"] == "cache-warming";

        c.send(&json!({"type": "subscribe", "surfaceId": "cache-warming"})).await;
        let draft = c.until(|v| v["type"] == "surface").await.pop().unwrap();
        assert_eq!(draft["spec"]["fields"], json!([{"kind": "stat", "label": "Status", "value": "No conversation focused"}]));

        c.send(&json!({"type": "subscribe", "surfaceId": "cache-warming", "conversationId": "timed"})).await;
        let fresh = c.until(|v| v["type"] == "surface").await.pop().unwrap();
        assert_eq!(fresh["conversationId"], "timed");
        let (on, interval, timer) = controls(&fresh["spec"]);
        assert_eq!((on, interval, timer), (false, 240.0, json!({"nextWarmAt": null, "lastWarmAt": null})));

        let invoke = |action: &str, payload: Option<Value>| {
            let mut m = json!({"type": "invoke", "surfaceId": "cache-warming", "actionId": action, "conversationId": "timed"});
            if let Some(p) = payload {
                m["payload"] = p;
            }
            m
        };
        c.send(&invoke("cache-warming/toggle", None)).await;
        let on = c.until(is_update).await.pop().unwrap();
        let (enabled, _, timer) = controls(&on["update"]["spec"]);
        assert!(enabled);
        assert!(timer["nextWarmAt"].as_u64().unwrap() > now_ms() + 200_000, "{timer}");

        c.send(&invoke("cache-warming/set-interval", Some(json!({"value": 1})))).await;
        let set = c.until(is_update).await.pop().unwrap();
        let (_, interval, timer) = controls(&set["update"]["spec"]);
        assert_eq!(interval, 1.0);
        let next = timer["nextWarmAt"].as_u64().unwrap();
        assert!(next > now_ms() - 100 && next <= now_ms() + 1100, "{timer}");

        // The timer warms, and arms itself again.
        let warmed = c.until(|v| is_update(v) && !v["update"]["spec"]["fields"][4]["payload"]["lastWarmAt"].is_null()).await.pop().unwrap();
        let spec = &warmed["update"]["spec"];
        assert_eq!(spec["fields"][2]["label"], "Last Cache %");
        assert_eq!(spec["fields"][2]["value"], "0%", "the scripted model reports no cache");
        assert!(spec["fields"][4]["payload"]["nextWarmAt"].as_u64().unwrap() > now_ms() - 100);

        // A turn cancels the schedule; its end re-arms it.
        c.send(&json!({"type": "chat.send", "conversationId": "timed", "message": "hello again"})).await;
        c.until(|v| is_update(v) && v["update"]["spec"]["fields"][4]["payload"]["nextWarmAt"].is_null()).await;
        c.until(|v| is_update(v) && v["update"]["spec"]["fields"][4]["payload"]["nextWarmAt"].is_u64()).await;

        // Closing the conversation switches warming off and clears the schedule.
        // (Plain HTTP from its own thread: this one drives the socket.)
        let url = format!("{base}/conversations/timed/close");
        let closed = std::thread::spawn(move || post(&url, "")).join().unwrap();
        assert_eq!(closed.status, 200);
        let off = c.until(|v| is_update(v) && v["update"]["spec"]["fields"][0]["value"] == false).await.pop().unwrap();
        assert!(off["update"]["spec"]["fields"][4]["payload"]["nextWarmAt"].is_null(), "{off}");
    });
}
