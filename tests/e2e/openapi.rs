//! The HTTP API as a product: every route is a plugin's, and the server
//! describes them all in `GET /openapi.json` (and `dispatch openapi`).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::http::{get, product_config, send, Server, LOOPBACK};
use crate::support::*;

/// Every operation of WIRE.md's "HTTP endpoints" this server serves, and
/// the plugin that answers it.
const WIRE: &[(&str, &str, &str)] = &[
    ("GET", "/health", "transport-http"),
    ("GET", "/extensions", "transport-http"),
    ("GET", "/openapi.json", "transport-http"),
    ("GET", "/models", "models"),
    ("POST", "/chat", "session"),
    ("GET", "/conversations", "session"),
    ("GET", "/conversations/{id}", "session"),
    ("GET", "/conversations/{id}/metrics", "session"),
    ("GET", "/conversations/{id}/status", "session"),
    ("GET", "/conversations/{id}/last", "session"),
    ("POST", "/conversations/{id}/stop", "session"),
    ("POST", "/conversations/{id}/close", "session"),
    ("POST", "/conversations/{id}/open", "session"),
    ("POST", "/conversations/{id}/queue", "session"),
    ("DELETE", "/conversations/{id}/queue/{messageId}", "session"),
    ("PUT", "/conversations/{id}/title", "session"),
    ("GET", "/conversations/{id}/model", "session"),
    ("PUT", "/conversations/{id}/model", "session"),
    ("GET", "/conversations/{id}/cwd", "session"),
    ("PUT", "/conversations/{id}/cwd", "session"),
    ("DELETE", "/conversations/{id}/cwd", "session"),
    ("GET", "/conversations/{id}/reasoning-effort", "session"),
    ("PUT", "/conversations/{id}/reasoning-effort", "session"),
    ("GET", "/conversations/{id}/mcp", "mcp"),
    ("GET", "/conversations/{id}/lsp", "lsp"),
    ("GET", "/mcp/servers", "mcp"),
    ("POST", "/chat/warm", "cache-warming"),
    ("POST", "/conversations/{id}/compact", "compaction"),
    ("GET", "/conversations/{id}/compact-percent", "compaction"),
    ("PUT", "/conversations/{id}/compact-percent", "compaction"),
    ("GET", "/system-prompt", "system-prompt"),
    ("PUT", "/system-prompt", "system-prompt"),
    ("GET", "/system-prompt/variables", "system-prompt"),
    ("GET", "/settings/vision", "vision"),
    ("PUT", "/settings/vision", "vision"),
    ("GET", "/workspaces", "workspaces"),
    ("PUT", "/workspaces/{id}", "workspaces"),
    ("GET", "/workspaces/{id}", "workspaces"),
    ("DELETE", "/workspaces/{id}", "workspaces"),
    ("PUT", "/workspaces/{id}/title", "workspaces"),
    ("PUT", "/workspaces/{id}/default-cwd", "workspaces"),
    ("PUT", "/workspaces/{id}/default-computer", "workspaces"),
    ("PUT", "/workspaces/{id}/star", "workspaces"),
    ("DELETE", "/workspaces/{id}/star", "workspaces"),
    ("GET", "/workspaces/{id}/heartbeat", "heartbeat"),
    ("PUT", "/workspaces/{id}/heartbeat", "heartbeat"),
    ("GET", "/workspaces/{id}/heartbeat/runs", "heartbeat"),
    ("GET", "/workspaces/{id}/heartbeat/next-run", "heartbeat"),
    ("POST", "/workspaces/{id}/heartbeat/runs/{runId}/stop", "heartbeat"),
    ("GET", "/concurrency/limits", "provider-concurrency"),
    ("GET", "/concurrency/limits/{providerId}", "provider-concurrency"),
    ("PUT", "/concurrency/limits/{providerId}", "provider-concurrency"),
    ("DELETE", "/concurrency/limits/{providerId}", "provider-concurrency"),
    ("GET", "/concurrency/cooldown/{providerId}", "provider-concurrency"),
    ("PUT", "/concurrency/cooldown/{providerId}", "provider-concurrency"),
    ("GET", "/concurrency/status", "provider-concurrency"),
    ("GET", "/metrics/throughput", "traces"),
    ("GET", "/metrics", "metrics"),
    ("GET", "/conversations/{id}/traces", "traces"),
    ("GET", "/conversations/{id}/turns/{turnId}/context", "traces"),
];

/// `(METHOD, path, plugin)` of every operation of a document.
fn operations(doc: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let plugin =
                op["x-dispatch-plugin"].as_str().unwrap_or_else(|| panic!("{method} {path}: no plugin"));
            out.insert((method.to_uppercase(), path.clone(), plugin.to_owned()));
        }
    }
    out
}

/// Every `$ref` in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get("$ref") {
                out.push(r.clone());
            }
            o.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn the_openapi_document_describes_every_wire_endpoint_with_the_plugin_that_serves_it() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let a = get(&format!("{}/openapi.json", s.base));
    assert_eq!(a.status, 200, "{}", a.text);
    let doc = a.body;
    assert_eq!(doc["openapi"], "3.1.0");
    let want: BTreeSet<(String, String, String)> =
        WIRE.iter().map(|(m, p, o)| (m.to_string(), p.to_string(), o.to_string())).collect();
    assert_eq!(operations(&doc), want);

    // Every operation answers something described, and every error is the
    // shared `Error` shape; every reference resolves.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.keys().any(|k| k.starts_with('2')), "{method} {path}: no success answer");
            for (status, r) in responses.iter().filter(|(k, _)| k.starts_with('4') || k.starts_with('5')) {
                assert_eq!(
                    r["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Error",
                    "{method} {path} {status}"
                );
            }
            for param in path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            {
                let declared = op["parameters"].as_array().is_some_and(|ps| {
                    ps.iter().any(|p| p["name"] == param && p["in"] == "path" && p["required"] == true)
                });
                assert!(declared, "{method} {path}: path parameter {param} not declared");
            }
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 20, "{all:?}");
    for r in all {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{r}"));
        assert!(doc["components"]["schemas"][name].is_object(), "{r} does not resolve");
    }
    // Generated from the types: the history's chunks are the tagged chunk
    // union, the chat stream's lines the event union.
    let chunk = &doc["components"]["schemas"]["Chunk"];
    let kinds: Vec<&str> = chunk["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["properties"]["type"]["const"].as_str())
        .collect();
    assert!(kinds.contains(&"text") && kinds.contains(&"tool-call"), "{kinds:?}");
    let chat = &doc["paths"]["/chat"]["post"];
    assert_eq!(
        chat["responses"]["200"]["content"]["application/x-ndjson"]["itemSchema"]["$ref"],
        "#/components/schemas/AgentEvent"
    );
    assert_eq!(
        chat["requestBody"]["content"]["application/json"]["schema"]["required"],
        serde_json::json!(["message"])
    );

    // `dispatch openapi` prints the same document for the configuration,
    // without a server (the running one keeps its ports).
    let out = run(&["openapi", "--config", cfg.to_str().unwrap()], &[], Duration::from_secs(60));
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let printed: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(printed, doc);
}

/// A WIRE.md path whose plugin is not loaded answers `503 unavailable`
/// naming the feature (WIRE.md's rule), not a `404` that reads as a typo;
/// a path WIRE.md does not have is still a `404`.
#[test]
fn a_wire_path_whose_plugin_is_absent_answers_503_naming_the_feature() {
    let cfg = Config::new()
        .plugin("libdispatch_plugin_models.so", "")
        .plugin("libdispatch_plugin_provider_scripted.so", "")
        .plugin("libdispatch_plugin_store_sqlite.so", "")
        .plugin("libdispatch_plugin_session.so", "")
        .plugin("libdispatch_plugin_transport_http.so", LOOPBACK)
        .write();
    let s = Server::start(&cfg);
    let url = |p: &str| format!("{}{p}", s.base);
    for (path, feature) in [
        ("/system-prompt", "System prompt service"),
        ("/system-prompt/variables", "System prompt service"),
        ("/conversations/c1/mcp", "MCP service"),
        ("/conversations/c1/lsp", "LSP service"),
        ("/settings/vision", "Vision settings"),
    ] {
        let a = get(&url(path));
        assert_eq!((a.status, a.body["code"].as_str()), (503, Some("unavailable")), "{path}: {}", a.text);
        assert!(a.body["error"].as_str().unwrap().starts_with(feature), "{path}: {}", a.text);
    }
    let put = send("PUT", &url("/system-prompt"), Some(r#"{"template": "x"}"#), &[]);
    assert_eq!(put.status, 503, "{}", put.text);
    // Without workspaces, heartbeat and provider-concurrency: WIRE.md's
    // reads answer "nothing there", the rest 503 with its exact texts.
    assert_eq!(get(&url("/workspaces")).status, 503);
    assert_eq!(get(&url("/workspaces/w/heartbeat")).body["intervalMinutes"], 30);
    assert_eq!(get(&url("/workspaces/w/heartbeat/runs")).body, serde_json::json!({"runs": []}));
    assert_eq!(get(&url("/workspaces/w/heartbeat/next-run")).body, serde_json::json!({"nextRunAt": null}));
    assert_eq!(get(&url("/concurrency/limits")).body, serde_json::json!({"limits": []}));
    assert_eq!(get(&url("/concurrency/status")).body, serde_json::json!({"providers": []}));
    for (method, path, message) in [
        ("PUT", "/workspaces/w/heartbeat", "Heartbeat service not available"),
        ("POST", "/workspaces/w/heartbeat/runs/r/stop", "Heartbeat service not available"),
        ("PUT", "/concurrency/limits/p", "Concurrency service not available"),
        ("GET", "/concurrency/cooldown/p", "Concurrency service not available"),
    ] {
        let a = send(method, &url(path), Some("{}"), &[]);
        assert_eq!((a.status, a.body["error"].as_str()), (503, Some(message)), "{method} {path}");
    }
    // Turns run unlimited: no concurrency service to ask.
    let (answer, events) = crate::http::chat(&s.base, serde_json::json!({"message": "hi"}));
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(events.last().unwrap()["type"], "turn-sealed");
    // The session's routes are there.
    assert_eq!(get(&url("/conversations")).status, 200);
    let bogus = get(&url("/conversations/c1/bogus"));
    assert_eq!((bogus.status, bogus.body["code"].as_str()), (404, Some("not_found")), "{}", bogus.text);
    // And the document lists only what is served.
    let doc = get(&url("/openapi.json")).body;
    assert!(doc["paths"]["/system-prompt"].is_null() && doc["paths"]["/conversations/{id}/mcp"].is_null());
    assert!(doc["paths"]["/chat"]["post"].is_object());
}

/// A burst of requests in a server's first moment all find their routes.
/// (The table of contributed routes was once marked fresh before it was
/// read, and requests racing that first read answered 503; the timing it
/// needs shows under load — `reload::a_plugin_file_overwritten…` caught
/// it — and this burst is the plain case of the same promise.)
#[test]
fn a_burst_of_first_requests_all_find_their_routes() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let go = std::sync::Arc::new(std::sync::Barrier::new(16));
    let workers: Vec<_> = (0..16)
        .map(|n| {
            let url = format!("{}/conversations/race-{n}/status", s.base);
            let go = std::sync::Arc::clone(&go);
            std::thread::spawn(move || {
                go.wait();
                get(&url)
            })
        })
        .collect();
    for w in workers {
        let a = w.join().unwrap();
        // An unknown conversation: the session's own 404, not the
        // transport's 503 for a missing plugin.
        assert_eq!((a.status, a.body["code"].as_str()), (404, Some("not_found")), "{}", a.text);
    }
}
