//! The WebSocket end to end: the real binary with the bundled plugins and a
//! real WebSocket client (tokio-tungstenite) on 127.0.0.1 — surfaces,
//! chats, fan-out to many clients, slow clients, bad frames, access.

use std::time::Duration;

use dispatch_test_support::http_client;
use dispatch_test_support::ws_client::{CloseCode, Message, Read, WsClient};
use futures::future::join_all;
use serde_json::{json, Value};

use crate::http::{chat, kinds, post, product_config, product_config_ws, rt, Server, Stream, LOOPBACK};

/// Connect and read the catalog every connection starts with.
async fn connect(url: &str) -> (WsClient, Value) {
    let mut c = WsClient::connect(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
    let catalog = c.next().await;
    assert_eq!(catalog["type"], "catalog", "{catalog}");
    (c, catalog)
}

fn is_update(v: &Value, surface: &str) -> bool {
    v["type"] == "update" && v["update"]["surfaceId"] == surface
}

/// Events compared across transports: ids and timings differ per turn.
fn shape(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .map(|e| {
            let mut e = e.clone();
            if let Some(o) = e.as_object_mut() {
                for k in [
                    "conversationId",
                    "turnId",
                    "stepId",
                    "toolCallId",
                    "durationMs",
                    "ttftMs",
                    "decodeMs",
                    "genTotalMs",
                ] {
                    o.remove(k);
                }
            }
            e
        })
        .collect()
}

#[test]
fn the_catalog_comes_on_connect_and_a_task_list_updates_its_conversations_watchers() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    rt().block_on(async {
        let (mut c, catalog) = connect(&s.ws()).await;
        let entries = catalog["catalog"].as_array().unwrap();
        let scope = |id: &str| entries.iter().find(|e| e["id"] == id).map(|e| e["scope"].clone());
        assert_eq!(scope("loaded-extensions"), Some(json!("global")), "{catalog}");
        assert_eq!(scope("todo"), Some(json!("conversation")), "{catalog}");
        assert_eq!(scope("message-queue"), Some(json!("conversation")), "{catalog}");

        c.send(&json!({"type": "subscribe", "surfaceId": "loaded-extensions"})).await;
        // (Updates may come first: plugins were still reporting their state.)
        let spec = c.until(|v| v["type"] == "surface").await.pop().unwrap();
        assert_eq!(spec["spec"]["title"], "Loaded Extensions");
        assert!(spec.get("conversationId").is_none(), "{spec}");
        assert!(spec["spec"]["fields"][1]["payload"]["rows"].is_array(), "{spec}");
        let ws_active = |spec: &Value| {
            spec["fields"][1]["payload"]["rows"]
                .as_array()
                .is_some_and(|rows| rows.iter().any(|r| r[0] == "transport-ws" && r[2] == "active"))
        };
        if !ws_active(&spec["spec"]) {
            // The socket accepts just before transport-ws itself reports
            // `active` (its activation returns after it listens): the row
            // then arrives as an update.
            c.until(|v| is_update(v, "loaded-extensions") && ws_active(&v["update"]["spec"])).await;
        }

        c.send(&json!({"type": "subscribe", "surfaceId": "todo", "conversationId": "t1"})).await;
        let todo = c.until(|v| v["type"] == "surface").await.pop().unwrap();
        assert_eq!(todo["type"], "surface");
        assert_eq!(todo["conversationId"], "t1");
        assert_eq!(todo["spec"]["fields"][0]["payload"], json!({"todos": []}));

        // The model writes a task list: the watcher of that conversation's
        // instance gets it.
        c.send(&json!({"type": "chat.send", "conversationId": "t1", "message": "todo: plan it"})).await;
        let seen = c.until(|v| is_update(v, "todo")).await;
        let update = &seen.last().unwrap()["update"];
        assert_eq!(update["conversationId"], "t1");
        assert_eq!(
            update["spec"]["fields"][0],
            json!({"kind": "custom", "rendererId": "todo", "payload": {"todos": [
                {"content": "read the notes", "status": "completed"},
                {"content": "answer", "status": "in_progress"}
            ]}})
        );
        // Another conversation's list is not this one's.
        c.send(&json!({"type": "subscribe", "surfaceId": "todo", "conversationId": "t2"})).await;
        let other = c.until(|v| v["type"] == "surface").await;
        assert_eq!(other.last().unwrap()["spec"]["fields"][0]["payload"], json!({"todos": []}));

        c.send(&json!({"type": "subscribe", "surfaceId": "nope"})).await;
        let err = c.until(|v| v["type"] == "error").await;
        assert_eq!(
            err.last().unwrap(),
            &json!({"type": "error", "surfaceId": "nope", "message": "Unknown surface: nope"})
        );
    });
}

/// The traces plugin's per-conversation surface: what the frontend shows
/// of a turn without knowing traces exist (`stat` fields and a `table`).
#[test]
fn a_conversations_trace_surface_shows_its_last_turn() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    rt().block_on(async {
        let (mut c, catalog) = connect(&s.ws()).await;
        let entry = catalog["catalog"].as_array().unwrap().iter().find(|e| e["id"] == "traces").cloned();
        assert_eq!(
            entry.map(|e| (e["scope"].clone(), e["title"].clone())),
            Some((json!("conversation"), json!("Trace")))
        );
        c.send(&json!({"type": "subscribe", "surfaceId": "traces", "conversationId": "tr-ws"})).await;
        let first = c.until(|v| v["type"] == "surface").await.pop().unwrap();
        assert_eq!(first["spec"]["fields"][0], json!({"kind": "stat", "label": "Last turn", "value": "—"}));
        c.send(&json!({"type": "chat.send", "conversationId": "tr-ws", "message": "read the notes"})).await;
        let seen = c.until(|v| is_update(v, "traces")).await;
        let spec = &seen.last().unwrap()["update"]["spec"];
        let last = spec["fields"][0]["value"].as_str().unwrap();
        assert!(last.contains("2 steps · 1 tool call · stop"), "{spec}");
        assert_eq!(spec["fields"][2]["value"], "90 in · 11 out", "{spec}");
        let rows = spec["fields"][4]["payload"]["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 3, "two requests and a tool call: {spec}");
        assert_eq!(rows[1][1], "  read_file", "{spec}");
        assert_eq!(rows[0][2], "ok", "{spec}");
    });
}

#[test]
fn chat_send_streams_the_http_events_and_a_late_subscriber_gets_the_whole_turn_then_the_next() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let (_, over_http) = chat(&s.base, json!({"conversationId": "h1", "message": "read the notes"}));
    rt().block_on(async {
        let (mut a, _) = connect(&s.ws()).await;
        a.send(&json!({"type": "chat.send", "conversationId": "w1", "message": "read the notes"})).await;
        let over_ws = a.turn().await;
        assert_eq!(kinds(&over_ws), kinds(&over_http));
        assert_eq!(shape(&over_ws), shape(&over_http));
        assert!(over_ws.iter().all(|e| e["conversationId"] == "w1"), "{over_ws:?}");

        // A second client joins a running turn: replayed from its first event.
        a.send(&json!({"type": "chat.send", "conversationId": "w2", "message": "slow please"})).await;
        let head = a.until(|v| v["event"]["type"] == "text-delta").await;
        let (mut b, _) = connect(&s.ws()).await;
        b.send(&json!({"type": "chat.subscribe", "conversationId": "w2"})).await;
        let mut seen_by_a: Vec<Value> =
            head.into_iter().filter(|v| v["type"] == "chat.delta").map(|v| v["event"].clone()).collect();
        seen_by_a.extend(a.turn().await);
        let seen_by_b = b.turn().await;
        assert_eq!(seen_by_b.first().unwrap()["type"], "user-message");
        assert_eq!(seen_by_b, seen_by_a, "the late subscriber saw another turn");

        // The subscription stays for the next turn; subscribing again does
        // not replay it twice.
        a.send(&json!({"type": "chat.send", "conversationId": "w2", "message": "slow again"})).await;
        a.until(|v| v["event"]["type"] == "text-delta").await;
        b.send(&json!({"type": "chat.subscribe", "conversationId": "w2"})).await;
        let next = b.turn().await;
        assert_eq!(kinds(&next).iter().filter(|k| **k == "user-message").count(), 1, "{next:?}");
        assert_eq!(next[0]["text"], "slow again");

        // Unsubscribed: the next turn is not sent (and not aborted).
        b.send(&json!({"type": "chat.unsubscribe", "conversationId": "w2"})).await;
        a.turn().await;
        a.send(&json!({"type": "chat.send", "conversationId": "w2", "message": "hi"})).await;
        assert_eq!(a.turn().await.last().unwrap()["type"], "turn-sealed");
        match b.read(Duration::from_millis(300)).await {
            Read::Timeout => {}
            Read::Json(v) => assert_ne!(v["type"], "chat.delta", "sent after unsubscribe: {v}"),
            Read::Closed(c) => panic!("closed: {c:?}"),
        }
    });
}

#[test]
fn chat_queue_steers_the_turn_and_the_queue_surface_shows_and_cancels_messages() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    rt().block_on(async {
        let (mut c, _) = connect(&s.ws()).await;
        c.send(&json!({"type": "subscribe", "surfaceId": "message-queue", "conversationId": "q"})).await;
        assert_eq!(c.next().await["spec"]["fields"][0]["payload"], json!({"messages": []}));
        c.send(&json!({"type": "chat.send", "conversationId": "q", "message": "shell time"})).await;
        c.until(|v| v["event"]["type"] == "tool-call").await;

        let queued = |v: &Value| v["update"]["spec"]["fields"][0]["payload"]["messages"].as_array().cloned();
        c.send(&json!({"type": "chat.queue", "conversationId": "q", "text": "steer: first"})).await;
        c.send(&json!({"type": "chat.queue", "conversationId": "q", "text": "steer: second"})).await;
        c.send(&json!({"type": "chat.queue", "conversationId": "q", "text": "steer: third"})).await;
        let mut all =
            c.until(|v| is_update(v, "message-queue") && queued(v).is_some_and(|m| m.len() == 3)).await;
        let waiting = queued(all.last().unwrap()).unwrap();
        assert_eq!(all.last().unwrap()["update"]["conversationId"], "q");
        // Withdraw one through the surface's action, one through the chat op.
        let (second, third) = (waiting[1]["id"].clone(), waiting[2]["id"].clone());
        c.send(&json!({"type": "invoke", "surfaceId": "message-queue", "actionId": "cancel",
            "payload": {"messageId": second}, "conversationId": "q"}))
            .await;
        c.send(&json!({"type": "chat.queue.cancel", "conversationId": "q", "messageId": third})).await;
        all.extend(
            c.until(|v| is_update(v, "message-queue") && queued(v).is_some_and(|m| m.len() == 1)).await,
        );
        all.extend(c.until(|v| v["event"]["type"] == "turn-sealed").await);

        let steering: Vec<&Value> = all.iter().filter(|v| v["event"]["type"] == "steering").collect();
        assert_eq!(steering.len(), 1, "{all:?}");
        assert_eq!(steering[0]["event"]["text"], "steer: first");
        // Drained into the turn: the queue is empty again.
        assert!(all.iter().any(|v| is_update(v, "message-queue") && queued(v).is_some_and(|m| m.is_empty())));
        assert!(!all.iter().any(|v| v["type"] == "error" || v["type"] == "chat.error"), "{all:?}");

        // Invoking is fire-and-forget for the surface's owner, but a
        // surface that does not exist is reported.
        c.send(&json!({"type": "invoke", "surfaceId": "nope", "actionId": "x"})).await;
        let err = c.until(|v| v["type"] == "error").await;
        assert_eq!(
            err.last().unwrap(),
            &json!({"type": "error", "surfaceId": "nope", "message": "Unknown surface: nope"})
        );
    });
}

#[test]
fn a_hundred_clients_watching_one_conversation_get_every_event_in_order() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let ws = s.ws();
    rt().block_on(async {
        let mut clients = Vec::new();
        for _ in 0..100 {
            let (mut c, _) = connect(&ws).await;
            c.send(&json!({"type": "chat.subscribe", "conversationId": "many"})).await;
            clients.push(c);
        }
        // The reference: the same turn read as NDJSON.
        let base = s.base.clone();
        let reference = tokio::task::spawn_blocking(move || {
            let mut stream =
                Stream::open(&base, &json!({"conversationId": "many", "message": "slow please"}));
            stream.rest()
        });
        let seen = join_all(clients.iter_mut().map(WsClient::turn)).await;
        let reference = reference.await.unwrap();
        assert_eq!(reference.last().unwrap()["type"], "turn-sealed");
        for (i, events) in seen.iter().enumerate() {
            assert_eq!(events, &reference, "client {i} saw something else");
        }
    });
}

#[test]
fn a_client_that_stops_reading_is_disconnected_and_delays_nobody() {
    let cfg = product_config_ws(LOOPBACK, "addr = [\"127.0.0.1:0\"]\nmax_queued_messages = 256");
    let s = Server::start(&cfg);
    rt().block_on(async {
        let url = s.ws();
        // Reads nothing from here on, with a small receive window.
        let mut stalled = WsClient::connect_small_buffer(&url).await.unwrap();
        stalled.send(&json!({"type": "chat.subscribe", "conversationId": "flood"})).await;
        let (mut reader, _) = connect(&url).await;
        reader.send(&json!({"type": "chat.send", "conversationId": "flood", "message": "flood"})).await;
        let events = reader.turn().await;
        let text: String = events
            .iter()
            .filter(|e| e["type"] == "text-delta")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(text.len(), 2000 * 3000, "the reading client missed deltas");

        // The stalled one gets what fit, then the connection closes.
        let mut got = 0;
        let close = loop {
            match stalled.read(Duration::from_secs(30)).await {
                Read::Json(_) => got += 1,
                Read::Closed(frame) => break frame,
                Read::Timeout => panic!("the stalled client was never disconnected (read {got})"),
            }
        };
        // The close frame queues behind what the full socket holds: it
        // arrives only if there was room for it.
        if let Some(close) = close {
            assert_eq!(close.code, CloseCode::Policy);
            assert!(close.reason.as_str().contains("too slow"), "{close:?}");
        }
        assert!(got < 2000, "it read the whole turn ({got}): nothing was dropped");
        assert!(s.log().contains("fell behind"), "{}", s.log());

        // It may come back and watch again.
        let (mut again, _) = connect(&url).await;
        again.send(&json!({"type": "chat.subscribe", "conversationId": "flood"})).await;
        reader.send(&json!({"type": "chat.send", "conversationId": "flood", "message": "hi"})).await;
        assert_eq!(again.turn().await[0]["text"], "hi");
    });
}

#[test]
fn wire_0_1_clients_get_no_event_types_newer_than_it() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    rt().block_on(async {
        let (mut old, _) = connect(&format!("{}/?wire=0.1", s.ws())).await;
        let (mut new, _) = connect(&s.ws()).await;
        new.send(&json!({"type": "chat.subscribe", "conversationId": "v"})).await;
        old.send(&json!({"type": "chat.send", "conversationId": "v", "message": "shell time"})).await;
        let head = old.until(|v| v["event"]["type"] == "tool-call").await;
        old.send(&json!({"type": "chat.queue", "conversationId": "v", "text": "steer: now"})).await;
        let mut old_events: Vec<Value> =
            head.into_iter().filter(|v| v["type"] == "chat.delta").map(|v| v["event"].clone()).collect();
        old_events.extend(old.turn().await);
        let new_events = new.turn().await;
        // A retried provider error: `provider-retry` for the new client only.
        old.send(&json!({"type": "chat.send", "conversationId": "v", "message": "flaky"})).await;
        old_events.extend(old.turn().await);
        let new_events: Vec<Value> = new_events.into_iter().chain(new.turn().await).collect();

        let newer = ["user-message", "step-complete", "provider-retry", "steering"];
        for k in newer {
            assert!(kinds(&new_events).contains(&k), "the latest wire lacks {k}: {:?}", kinds(&new_events));
        }
        let expected: Vec<Value> =
            new_events.into_iter().filter(|e| !newer.contains(&e["type"].as_str().unwrap())).collect();
        assert_eq!(old_events, expected);
    });
}

#[test]
fn malformed_binary_huge_and_unknown_messages_are_answered_and_the_server_carries_on() {
    let cfg = product_config_ws(LOOPBACK, "addr = [\"127.0.0.1:0\"]\nmax_message_bytes = 65536");
    let s = Server::start(&cfg);
    rt().block_on(async {
        let (mut c, _) = connect(&s.ws()).await;
        let cases: &[(&str, &str, &str)] = &[
            ("{", "error", "Invalid JSON"),
            ("[1, 2]", "error", "string `type`"),
            (r#"{"type": "explode"}"#, "error", "Unknown message type: explode"),
            (r#"{"type": "subscribe"}"#, "error", "surfaceId"),
            (r#"{"type": "invoke", "surfaceId": "loaded-extensions"}"#, "error", "actionId"),
            (r#"{"type": "chat.send", "message": 5}"#, "chat.error", "chat.send"),
            (r#"{"type": "chat.send", "conversationId": "m", "message": "   "}"#, "chat.error", "empty"),
            (
                r#"{"type": "chat.send", "message": "x", "reasoningEffort": "extreme"}"#,
                "chat.error",
                "extreme",
            ),
            (r#"{"type": "chat.send", "message": "x", "model": "nope/nope"}"#, "chat.error", "nope"),
            (
                r#"{"type": "chat.send", "conversationId": "bad id!", "message": "x"}"#,
                "chat.error",
                "bad id!",
            ),
            (r#"{"type": "chat.subscribe"}"#, "chat.error", "conversationId"),
            (r#"{"type": "chat.queue", "conversationId": "m"}"#, "chat.error", "text"),
            (r#"{"type": "chat.queue.cancel", "conversationId": "m"}"#, "chat.error", "messageId"),
        ];
        for (sent, kind, needle) in cases {
            c.send_raw(Message::Text((*sent).into())).await.unwrap();
            let answer = c.next().await;
            assert_eq!(answer["type"], *kind, "{sent} -> {answer}");
            assert!(answer["message"].as_str().unwrap().contains(needle), "{sent} -> {answer}");
        }
        // The conversation named is echoed.
        c.send(&json!({"type": "chat.send", "conversationId": "m", "message": ""})).await;
        assert_eq!(c.next().await["conversationId"], "m");

        // A second send while a turn runs is refused; the turn goes on.
        c.send(&json!({"type": "chat.send", "conversationId": "busy", "message": "slow please"})).await;
        c.until(|v| v["event"]["type"] == "turn-start").await;
        c.send(&json!({"type": "chat.send", "conversationId": "busy", "message": "again"})).await;
        let refused = c.until(|v| v["type"] == "chat.error").await;
        assert_eq!(refused.last().unwrap()["conversationId"], "busy");
        assert_eq!(c.turn().await.last().unwrap()["type"], "turn-sealed");

        // A connection watches at most 1024 conversations.
        let (mut e, _) = connect(&s.ws()).await;
        for i in 0..1024 {
            e.send(&json!({"type": "chat.subscribe", "conversationId": format!("many-{i}")})).await;
        }
        e.send(&json!({"type": "chat.subscribe", "conversationId": "one-too-many"})).await;
        let refused = e.until(|v| v["type"] == "chat.error").await;
        assert_eq!(refused.last().unwrap()["conversationId"], "one-too-many");
        assert!(refused.last().unwrap()["message"].as_str().unwrap().contains("1024"), "{refused:?}");
        // Regression (issue 31): chat.queue started (and watched) a turn
        // past the cap; it is refused the same way, and starts nothing.
        e.send(&json!({"type": "chat.queue", "conversationId": "queued-too-many", "text": "hi"})).await;
        let refused = e.until(|v| v["type"] == "chat.error").await;
        assert_eq!(refused.last().unwrap()["conversationId"], "queued-too-many");
        assert!(refused.last().unwrap()["message"].as_str().unwrap().contains("1024"), "{refused:?}");
        e.close().await;
        let url = format!("{}/conversations/queued-too-many/status", s.base);
        let status = dispatch_test_support::http_client::send("GET", &url, &[], None).await.unwrap();
        assert_eq!(status.status, 404, "a refused chat.queue started a turn");

        c.send_raw(Message::Binary(vec![1u8, 2, 3].into())).await.unwrap();
        // The busy conversation's `idle` status may still be on its way:
        // its broadcast is not ordered with the turn's events.
        let answer = c.until(|v| v["type"] != "conversation.statusChanged").await.pop().unwrap();
        assert_eq!(answer["type"], "error");
        assert!(answer["message"].as_str().unwrap().contains("binary"), "{answer}");

        // Still open and useful.
        c.send(&json!({"type": "subscribe", "surfaceId": "loaded-extensions"})).await;
        c.until(|v| v["type"] == "surface").await;

        // Too big: closed with 1009, the server unharmed.
        let huge = format!(r#"{{"type": "chat.send", "message": "{}"}}"#, "z".repeat(100_000));
        let _ = c.send_raw(Message::Text(huge.into())).await;
        match c.read(Duration::from_secs(10)).await {
            Read::Closed(Some(frame)) => assert_eq!(frame.code, CloseCode::Size, "{frame:?}"),
            other => panic!("expected a 1009 close, got {other:?}"),
        }
        let (mut d, _) = connect(&s.ws()).await;
        d.send(&json!({"type": "chat.send", "conversationId": "after", "message": "hi"})).await;
        assert_eq!(d.turn().await.last().unwrap()["type"], "turn-sealed");
    });
}

#[test]
fn both_doors_lead_to_the_same_clients_and_follow_the_access_rules() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let ws_http = s.ws().replace("ws://", "http://");
    rt().block_on(async {
        // A plain request to the WebSocket port.
        let plain = http_client::send("GET", &format!("{ws_http}/"), &[], None).await.unwrap();
        assert_eq!(plain.status, 426);
        let body: Value = serde_json::from_str(&plain.text().await).unwrap();
        assert_eq!(body["code"], "upgrade_required");
        // `/ws` on the HTTP port without an upgrade.
        let plain = http_client::send("GET", &format!("{}/ws", s.base), &[], None).await.unwrap();
        assert_eq!(plain.status, 426);

        // A web page from elsewhere may not drive a local server without a
        // token; one served from this machine may.
        for url in [s.ws(), format!("{}/ws", s.base.replace("http://", "ws://"))] {
            let refused =
                WsClient::connect_with(&url, &[("origin", "https://evil.example")]).await.unwrap_err();
            assert!(refused.contains("403"), "{url}: {refused}");
            let mut ok = WsClient::connect_with(&url, &[("origin", "http://localhost:5173")]).await.unwrap();
            assert_eq!(ok.next().await["type"], "catalog");
        }

        // Through the HTTP port: the same hub (broadcasts reach both).
        let (mut via_http, catalog) = connect(&format!("{}/ws", s.base.replace("http://", "ws://"))).await;
        assert!(!catalog["catalog"].as_array().unwrap().is_empty());
        let (mut via_ws, _) = connect(&s.ws()).await;
        via_http.send(&json!({"type": "chat.send", "conversationId": "door", "message": "hi"})).await;
        assert_eq!(via_http.turn().await.last().unwrap()["type"], "turn-sealed");
        // Status changes are broadcast to everyone, watcher or not.
        let statuses = via_ws
            .until(|v| {
                v["type"] == "conversation.statusChanged"
                    && v["status"] == "idle"
                    && v["conversationId"] == "door"
            })
            .await;
        assert!(statuses.iter().any(|v| v["status"] == "active"), "{statuses:?}");
        assert_eq!(statuses.last().unwrap()["workspaceId"], "default");
        // An open request too.
        let base = s.base.clone();
        tokio::task::spawn_blocking(move || post(&format!("{base}/conversations/door/open"), ""))
            .await
            .unwrap();
        let open = via_ws.until(|v| v["type"] == "conversation.open").await;
        assert_eq!(
            open.last().unwrap(),
            &json!({"type": "conversation.open", "conversationId": "door", "workspaceId": "default"})
        );
        let open = via_http.until(|v| v["type"] == "conversation.open").await;
        assert_eq!(open.last().unwrap()["conversationId"], "door");
    });
    drop(s);

    // With a token: header or `?token=`, on both doors.
    let cfg = product_config(LOOPBACK);
    let s = Server::start_with(&cfg, &[("DISPATCH_TOKEN", "s3cret")]);
    let ws_door = format!("{}/ws", s.base.replace("http://", "ws://"));
    rt().block_on(async {
        for url in [format!("{}/", s.ws()), ws_door.clone()] {
            let refused = WsClient::connect(&url).await.unwrap_err();
            assert!(refused.contains("401"), "{url}: {refused}");
            assert!(WsClient::connect(&format!("{url}?token=wrong")).await.is_err());
            connect(&format!("{url}?token=s3cret")).await;
            let mut c = WsClient::connect_with(&url, &[("authorization", "Bearer s3cret")]).await.unwrap();
            assert_eq!(c.next().await["type"], "catalog");
        }
    });
}

#[test]
fn sigterm_seals_the_watched_turn_for_websocket_clients_before_the_socket_closes() {
    let cfg = product_config(LOOPBACK);
    let mut s = Server::start(&cfg);
    rt().block_on(async {
        let (mut c, _) = connect(&s.ws()).await;
        c.send(&json!({"type": "chat.send", "conversationId": "term", "message": "slow please"})).await;
        c.until(|v| v["event"]["type"] == "text-delta").await;
        let killed = std::process::Command::new("kill").args(["-15", &s.pid().to_string()]).status().unwrap();
        assert!(killed.success());
        let rest = c.turn().await;
        let k = kinds(&rest);
        assert_eq!(k[k.len() - 2..], ["done", "turn-sealed"], "{rest:?}");
        assert_eq!(rest[rest.len() - 2]["reason"], "aborted");
        // Then the server goes away.
        loop {
            match c.read(Duration::from_secs(30)).await {
                Read::Closed(_) => break,
                Read::Json(_) => {}
                Read::Timeout => panic!("the socket stayed open after shutdown"),
            }
        }
    });
    let status = s.stop_with(0);
    assert!(status.success(), "{status:?}\n{}", s.log());
}

/// Regression (issue 31): every WebSocket cost ~130 KB and nothing
/// bounded how many were open. `max_connections` does, on both doors: one
/// more is refused with `503` until another closes.
#[test]
fn sockets_beyond_max_connections_are_refused_until_one_closes() {
    let cfg = product_config_ws(LOOPBACK, "addr = [\"127.0.0.1:0\"]\nmax_connections = 2");
    let s = Server::start(&cfg);
    rt().block_on(async {
        let (a, _) = connect(&s.ws()).await;
        let (_b, _) = connect(&s.ws()).await;
        let refused = WsClient::connect(&s.ws()).await.unwrap_err();
        assert!(refused.contains("503"), "{refused}");
        let door = format!("{}/ws", s.base.replace("http://", "ws://"));
        let refused = WsClient::connect(&door).await.unwrap_err();
        assert!(refused.contains("503"), "{refused}");
        a.close().await;
        // The count drops when the server sees the close.
        let mut opened = None;
        for _ in 0..100 {
            if let Ok(c) = WsClient::connect(&s.ws()).await {
                opened = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(opened.is_some(), "a place freed by a close was never given again");
    });
}
