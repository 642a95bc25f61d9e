//! Workspaces (WIRE.md "Workspaces") through the real binary: every route's
//! shapes, codes and messages, parsed as the frontend's adapter reads them;
//! a conversation's workspace fixed at creation and moved by `PUT …/cwd`;
//! a turn's directory resolved against its workspace; a deleted workspace
//! closing its conversations, a running turn included.

use serde_json::{json, Value};

use crate::http::{chat, get, kinds, post, product_config, rt, send, Server, Stream, LOOPBACK};

fn put(url: &str, body: &str) -> crate::http::Answer {
    send("PUT", url, Some(body), &[])
}

fn delete(url: &str) -> crate::http::Answer {
    send("DELETE", url, None, &[])
}

/// The frontend's `Workspace` as its adapter reads it: every field there,
/// with its type.
fn assert_workspace(v: &Value) {
    assert!(v["id"].is_string() && v["title"].is_string(), "{v}");
    assert!(v["defaultCwd"].is_string() || v["defaultCwd"].is_null(), "{v}");
    assert!(v["defaultComputerId"].is_string() || v["defaultComputerId"].is_null(), "{v}");
    assert!(v["starred"].is_boolean() && v["createdAt"].is_u64() && v["lastActivityAt"].is_u64(), "{v}");
}

#[test]
fn the_workspace_routes_answer_as_wire_md_says() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let url = |p: &str| format!("{}{p}", s.base);

    // `default` is always there, synthesized.
    let list = get(&url("/workspaces"));
    assert_eq!(list.status, 200, "{}", list.text);
    let all = list.body["workspaces"].as_array().unwrap();
    assert_eq!(all.len(), 1, "{}", list.text);
    assert_eq!(
        all[0],
        json!({"id": "default", "title": "default", "defaultCwd": null, "defaultComputerId": null,
               "starred": false, "createdAt": 0, "lastActivityAt": 0, "conversationCount": 0})
    );
    assert_eq!(get(&url("/workspaces/default")).body["id"], "default");
    let missing = get(&url("/workspaces/nowhere"));
    assert_eq!((missing.status, missing.body["error"].as_str()), (404, Some("Workspace not found")));

    // Create on miss, with the body; an existing one unchanged.
    let made = put(&url("/workspaces/team-a"), r#"{"title": "Team A", "defaultCwd": "/srv/a"}"#);
    assert_eq!(made.status, 200, "{}", made.text);
    assert_workspace(&made.body);
    assert_eq!(
        (made.body["title"].as_str(), made.body["defaultCwd"].as_str()),
        (Some("Team A"), Some("/srv/a"))
    );
    let again = put(&url("/workspaces/team-a"), r#"{"title": "ignored"}"#);
    assert_eq!(again.body, made.body, "an existing workspace is answered unchanged");
    // A body that is not JSON is the transport's 400 before any route
    // (ours: the original read it as `{}`; the frontend always sends `{}`).
    let bare = put(&url("/workspaces/bare"), "not json at all");
    assert_eq!((bare.status, bare.body["code"].as_str()), (400, Some("bad_request")), "{}", bare.text);
    assert_eq!(get(&url("/workspaces/bare")).status, 404, "nothing was created");
    let empty = put(&url("/workspaces/empty"), "{}");
    assert_eq!((empty.status, empty.body["title"].as_str()), (200, Some("empty")));

    // Bad slugs: WIRE.md's message, everywhere a slug is taken.
    let rule = "Workspace id must be a valid slug (lowercase alphanumeric + hyphens, 1–40 chars)";
    for path in
        ["/workspaces/Bad_Slug", "/workspaces/-x/title", "/workspaces/x-/star", "/workspaces/UP/default-cwd"]
    {
        let bad = put(&url(path), r#"{"title": "t", "defaultCwd": "/x"}"#);
        assert_eq!(
            (bad.status, bad.body["error"].as_str(), bad.body["code"].as_str()),
            (400, Some(rule), Some("invalid_slug")),
            "{path}: {}",
            bad.text
        );
    }

    // Title: trimmed, required.
    let titled = put(&url("/workspaces/team-a/title"), r#"{"title": "  Alpha  "}"#);
    assert_eq!(titled.body["title"], "Alpha", "{}", titled.text);
    for body in [r#"{"title": "   "}"#, r#"{"title": 5}"#, "{}"] {
        let refused = put(&url("/workspaces/team-a/title"), body);
        assert_eq!(refused.status, 400, "{body}");
        assert_eq!(refused.body["error"], "Field 'title' is required and must be a non-empty string");
    }
    let refused = put(&url("/workspaces/team-a/title"), "[1]");
    assert_eq!(
        (refused.status, refused.body["error"].as_str()),
        (400, Some("Request body must be a JSON object"))
    );
    // Created by a field route too.
    assert_eq!(put(&url("/workspaces/by-title/title"), r#"{"title": "B"}"#).body["id"], "by-title");

    // Default directory and computer: a string sets, anything else clears.
    assert_eq!(
        put(&url("/workspaces/team-a/default-cwd"), r#"{"defaultCwd": "/srv/b"}"#).body["defaultCwd"],
        "/srv/b"
    );
    for clear in [r#"{"defaultCwd": null}"#, r#"{"defaultCwd": 3}"#, "{}", r#"{"defaultCwd": ""}"#] {
        assert_eq!(
            put(&url("/workspaces/team-a/default-cwd"), clear).body["defaultCwd"],
            Value::Null,
            "{clear}"
        );
    }
    let computer = put(&url("/workspaces/team-a/default-computer"), r#"{"computerId": "build-box"}"#);
    assert_eq!(computer.body["defaultComputerId"], "build-box");
    assert_eq!(put(&url("/workspaces/team-a/default-computer"), "{}").body["defaultComputerId"], Value::Null);

    // Star.
    assert_eq!(put(&url("/workspaces/team-a/star"), "").body["starred"], true);
    assert_eq!(delete(&url("/workspaces/team-a/star")).body["starred"], false);

    // Delete: `default` refused, an unknown one zero, a known one gone.
    let refused = delete(&url("/workspaces/default"));
    assert_eq!(
        (refused.status, refused.body["error"].as_str(), refused.body["code"].as_str()),
        (409, Some("The \"default\" workspace cannot be deleted"), Some("default_workspace"))
    );
    assert_eq!(delete(&url("/workspaces/never")).body, json!({"workspaceId": "never", "closedCount": 0}));
    assert_eq!(delete(&url("/workspaces/empty")).body, json!({"workspaceId": "empty", "closedCount": 0}));
    assert_eq!(get(&url("/workspaces/empty")).status, 404);

    // The list: counts, most recently active first.
    let (answer, _) =
        chat(&s.base, json!({"conversationId": "in-a", "message": "hello", "workspaceId": "team-a"}));
    assert_eq!(answer.status, 200, "{}", answer.text);
    let list = get(&url("/workspaces")).body;
    let first = &list["workspaces"][0];
    assert_eq!(
        (first["id"].as_str(), first["conversationCount"].as_u64()),
        (Some("team-a"), Some(1)),
        "{list}"
    );
    assert!(first["lastActivityAt"].as_u64().unwrap() > 0);
    for w in list["workspaces"].as_array().unwrap() {
        assert_workspace(w);
    }
}

fn tool_output(events: &[Value]) -> String {
    let r = events.iter().find(|e| e["type"] == "tool-result").unwrap_or_else(|| panic!("{events:?}"));
    r["output"].as_str().or(r["result"].as_str()).unwrap_or(&r.to_string()).to_owned()
}

/// A conversation's workspace is fixed when it is created and moved by
/// `PUT …/cwd`; its turns run in the directory WIRE.md resolves (absolute,
/// relative to the workspace's, or the workspace's).
#[test]
fn a_conversations_directory_follows_its_workspace() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let url = |p: &str| format!("{}{p}", s.base);
    let root = tempfile::tempdir().unwrap();
    let (ws_dir, abs) = (root.path().join("ws"), root.path().join("abs"));
    std::fs::create_dir_all(ws_dir.join("sub")).unwrap();
    std::fs::create_dir_all(&abs).unwrap();
    let body = json!({"defaultCwd": ws_dir.display().to_string()}).to_string();
    assert_eq!(put(&url("/workspaces/proj/default-cwd"), &body).status, 200);

    // Created in `proj`: runs in the workspace's directory.
    let (answer, events) =
        chat(&s.base, json!({"conversationId": "c1", "message": "where am i", "workspaceId": "proj"}));
    assert_eq!(answer.status, 200, "{}", answer.text);
    let canonical = |p: &std::path::Path| std::fs::canonicalize(p).unwrap().display().to_string();
    assert!(tool_output(&events).contains(&canonical(&ws_dir)), "{events:?}");
    // A later workspaceId is ignored; a relative cwd follows the workspace.
    let (_, events) = chat(
        &s.base,
        json!({"conversationId": "c1", "message": "where now", "cwd": "sub", "workspaceId": "other"}),
    );
    assert!(tool_output(&events).contains(&canonical(&ws_dir.join("sub"))), "{events:?}");
    assert_eq!(get(&url("/conversations/c1/cwd")).body["cwd"], "sub", "kept as sent");
    assert_eq!(get(&url("/workspaces/other")).status, 404, "an ignored workspaceId creates nothing");

    // Moving: to a new workspace (created), with an absolute directory.
    let moved = put(
        &url("/conversations/c1/cwd"),
        &json!({"cwd": abs.display().to_string(), "workspaceId": "moved"}).to_string(),
    );
    assert_eq!(moved.status, 200, "{}", moved.text);
    assert_eq!(moved.body, json!({"conversationId": "c1", "cwd": abs.display().to_string()}));
    let list = get(&url("/conversations")).body;
    let c1 = list["conversations"].as_array().unwrap().iter().find(|c| c["id"] == "c1").unwrap().clone();
    assert_eq!(c1["workspaceId"], "moved", "{list}");
    assert_eq!(get(&url("/workspaces/moved")).body["title"], "moved");
    let (_, events) = chat(&s.base, json!({"conversationId": "c1", "message": "where else"}));
    assert!(tool_output(&events).contains(&canonical(&abs)), "{events:?}");
    // A draft id moved before its first message is listed.
    assert_eq!(
        put(&url("/conversations/draft-1/cwd"), r#"{"cwd": "/tmp", "workspaceId": "proj"}"#).status,
        200
    );
    let idle = get(&url("/conversations?status=idle")).body;
    assert!(
        idle["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == "draft-1" && c["workspaceId"] == "proj"),
        "{idle}"
    );

    // Refusals, with WIRE.md's messages.
    for (body, message) in [
        (r#"{"cwd": ""}"#, "Field 'cwd' is required and must be a non-empty string"),
        (r#"{"workspaceId": "proj"}"#, "Field 'cwd' is required and must be a non-empty string"),
        (r#"{"cwd": "/tmp", "workspaceId": "Not A Slug"}"#, "Invalid workspaceId"),
        (r#"{"cwd": "/tmp", "workspaceId": 7}"#, "Invalid workspaceId"),
    ] {
        let refused = put(&url("/conversations/c1/cwd"), body);
        assert_eq!((refused.status, refused.body["error"].as_str()), (400, Some(message)), "{body}");
    }
    let (refused, _) =
        chat(&s.base, json!({"conversationId": "c9", "message": "hi", "workspaceId": "Bad Slug"}));
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert!(refused.body["error"].as_str().unwrap().contains("Invalid workspaceId"), "{}", refused.text);
    assert_eq!(get(&url("/conversations/c9/status")).status, 404, "a refused first message creates nothing");
}

/// Deleting a workspace closes each of its conversations as `POST …/close`
/// does — a running turn aborted and sealed — moves them to `default`, and
/// tells WebSocket clients `closed` in `default`.
#[test]
fn deleting_a_workspace_closes_its_conversations_and_aborts_a_running_turn() {
    use dispatch_test_support::ws_client::WsClient;
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let url = |p: &str| format!("{}{p}", s.base);
    let (answer, _) =
        chat(&s.base, json!({"conversationId": "idle-one", "message": "hello", "workspaceId": "doomed"}));
    assert_eq!(answer.status, 200, "{}", answer.text);
    rt().block_on(async {
        let mut watcher = WsClient::connect(&s.ws()).await.unwrap();
        assert_eq!(watcher.next().await["type"], "catalog");
        let base = s.base.clone();
        let stream = tokio::task::spawn_blocking(move || {
            let mut stream = Stream::open(
                &base,
                &json!({"conversationId": "busy", "message": "slow please", "workspaceId": "doomed"}),
            );
            stream.until("text-delta");
            stream
        })
        .await
        .unwrap();
        let u = url("/workspaces/doomed");
        let deleted = tokio::task::spawn_blocking(move || delete(&u)).await.unwrap();
        assert_eq!(deleted.status, 200, "{}", deleted.text);
        assert_eq!(deleted.body, json!({"workspaceId": "doomed", "closedCount": 2}));
        let mut stream = stream;
        let rest = tokio::task::spawn_blocking(move || stream.rest()).await.unwrap();
        assert_eq!(kinds(&rest).last(), Some(&"turn-sealed"), "the running turn was aborted: {rest:?}");
        let closed = |v: &Value, id: &str| {
            v["type"] == "conversation.statusChanged" && v["conversationId"] == id && v["status"] == "closed"
        };
        let seen = watcher.until(|v| closed(v, "busy")).await;
        assert_eq!(seen.last().unwrap()["workspaceId"], "default", "{seen:?}");
    });
    for id in ["idle-one", "busy"] {
        let status = get(&url(&format!("/conversations/{id}/status")));
        assert_eq!(status.body["status"], "closed", "{id}: {}", status.text);
    }
    let list = get(&url("/conversations")).body;
    for c in list["conversations"].as_array().unwrap() {
        assert_eq!(c["workspaceId"], "default", "{list}");
    }
    assert_eq!(get(&url("/workspaces/doomed")).status, 404);
    let _ = post(&url("/conversations/busy/stop"), "");
}
