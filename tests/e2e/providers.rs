//! Model providers through the real host: the catalog, the scripted
//! provider, and `dispatch turn` running the kernel turn loop against a
//! provider plugin over the bus.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const MODELS: &str = "libdispatch_plugin_models.so";
const SCRIPTED: &str = "libdispatch_plugin_provider_scripted.so";

/// Run `dispatch turn` and parse its NDJSON.
pub fn turn(cfg: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (Output, Vec<Value>) {
    let mut all = vec!["turn", "--config", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run(&all, env, Duration::from_secs(60));
    let events = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{}", out.stderr)))
        .collect();
    (out, events)
}

pub fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn script(dir: &std::path::Path, text: &str) -> String {
    let p = dir.join("script.json");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn the_bundled_script_plays_a_turn_that_calls_a_tool_then_answers() {
    let cfg = Config::new().plugin(MODELS, "").plugin(SCRIPTED, "").write();
    let (out, events) = turn(&cfg, &["what is this project?"], &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let t = types(&events);
    assert_eq!(t.first(), Some(&"user-message"));
    assert_eq!(t[1], "turn-start");
    assert_eq!(&t[t.len() - 2..], ["done", "turn-sealed"]);
    assert!(t.contains(&"reasoning-delta") && t.contains(&"tool-call") && t.contains(&"tool-result"));
    let call = events.iter().find(|e| e["type"] == "tool-call").unwrap();
    assert_eq!(call["toolName"], "read_file");
    assert!(call["stepId"].as_str().unwrap().ends_with("#0"));
    let done = &events[events.len() - 2];
    assert_eq!(done["reason"], "stop");
    assert_eq!(done["usage"]["inputTokens"], 520);
    assert_eq!(done["contextSize"], 445);
}

#[test]
fn the_catalog_lists_models_and_refuses_unknown_ones_clearly() {
    let cfg = Config::new().plugin(MODELS, "").plugin(SCRIPTED, "").write();
    let (_, lines) = call(&cfg, &[("models", r#"{"op":"list"}"#)], &[]);
    assert_eq!(
        lines[0],
        serde_json::json!({"models": ["scripted/demo"], "modelInfo": {"scripted/demo": {"contextWindow": 128000}}})
    );

    let (out, events) = turn(&cfg, &["--model", "nope/x", "hi"], &[]);
    assert_eq!(out.code(), 1);
    assert!(events.is_empty());
    assert!(
        out.stderr.contains("unknown credential `nope` in model `nope/x`; configured credentials: scripted"),
        "{}",
        out.stderr
    );
    let (out, _) = turn(&cfg, &["--model", "scripted/other", "hi"], &[]);
    assert!(out.stderr.contains("unknown model `other` for credential `scripted`"), "{}", out.stderr);
}

#[test]
fn a_scripted_error_is_retried_with_a_provider_retry_event() {
    let c = Config::new();
    let s = script(
        c.dir.path(),
        r#"{"replies": [{"steps": [
            {"error": {"status": 429, "message": "overloaded"}},
            {"text": "made it", "chunkChars": 3}
        ]}]}"#,
    );
    let cfg = c.plugin(MODELS, "").plugin(SCRIPTED, &format!("script = {s:?}")).write();
    let (out, events) = turn(&cfg, &["go"], &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let retry = events.iter().find(|e| e["type"] == "provider-retry").expect("a provider-retry event");
    assert_eq!(retry["attempt"], 0);
    assert_eq!(retry["code"], "429");
    assert_eq!(retry["message"], "HTTP 429: overloaded");
    let text: String =
        events.iter().filter(|e| e["type"] == "text-delta").map(|e| e["delta"].as_str().unwrap()).collect();
    assert_eq!(text, "made it");
    let deltas = events.iter().filter(|e| e["type"] == "text-delta").count();
    assert_eq!(deltas, 3, "chunkChars = 3");
}

#[test]
fn a_fatal_scripted_error_ends_the_turn_with_error_then_done() {
    let c = Config::new();
    let s = script(
        c.dir.path(),
        r#"{"replies": [{"steps": [{"error": {"status": 400, "message": "bad request"}}]}]}"#,
    );
    let cfg = c.plugin(MODELS, "").plugin(SCRIPTED, &format!("script = {s:?}")).write();
    let (out, events) = turn(&cfg, &["go"], &[]);
    assert_eq!(out.code(), 1);
    let t = types(&events);
    assert!(!t.contains(&"provider-retry"));
    let err = events.iter().find(|e| e["type"] == "error").unwrap();
    assert_eq!(err["message"], "HTTP 400: bad request");
    assert_eq!(err["code"], "400");
    assert_eq!(events[events.len() - 2]["reason"], "error");
}

#[test]
fn the_script_comes_from_dispatch_script_and_replies_are_picked_by_match() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        r#"{"replies": [
            {"match": "(?i)weather", "steps": [{"text": "sunny"}]},
            {"steps": [{"text": "fallback"}]}
        ]}"#,
    );
    let cfg = Config::new().plugin(MODELS, "").plugin(SCRIPTED, "").write();
    let text = |events: &[Value]| -> String {
        events.iter().filter(|e| e["type"] == "text-delta").map(|e| e["delta"].as_str().unwrap()).collect()
    };
    let (_, events) = turn(&cfg, &["How is the WEATHER?"], &[("DISPATCH_SCRIPT", &s)]);
    assert_eq!(text(&events), "sunny");
    let (_, events) = turn(&cfg, &["anything else"], &[("DISPATCH_SCRIPT", &s)]);
    assert_eq!(text(&events), "fallback");
}

#[test]
fn a_malformed_script_is_refused_at_activation_with_line_and_reason() {
    let c = Config::new();
    let s = script(c.dir.path(), "{\"replies\": [\n  {\"steps\": [{\"txet\": \"typo\"}]}\n]}");
    let cfg = c.plugin(MODELS, "").plugin(SCRIPTED, &format!("script = {s:?}")).write();
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 1);
    assert_row(&rows, "provider-scripted", "failed", &["malformed script", "unknown field `txet`", "line 2"]);
    assert_row(&rows, "models", "active", &[]);
}

/// `script = "/dev/zero"` grew memory without bound in a thread the host
/// had abandoned (while it reported "serving"), and a FIFO blocked
/// activation: a script must be a regular file.
#[test]
fn a_script_that_is_not_a_regular_file_fails_activation_at_once() {
    let c = Config::new();
    let fifo = c.dir.path().join("script.fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for path in ["/dev/zero", fifo.to_str().unwrap()] {
        let cfg = Config::new().plugin(MODELS, "").plugin(SCRIPTED, &format!("script = {path:?}")).write();
        let (out, rows) = plugins_json(&cfg, &[]);
        assert_eq!(out.code(), 1, "{}", out.stderr);
        assert_row(&rows, "provider-scripted", "failed", &["cannot read script", "not a regular file"]);
    }
}

#[test]
fn the_default_configuration_runs_offline() {
    // The repository's own plugins.toml, pointed at this build.
    let text = std::fs::read_to_string(repo_root().join("plugins.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("plugins.toml");
    let text = text.replace(
        "plugin_dir = \"target/release\"",
        &format!("plugin_dir = {:?}", profile_dir().display().to_string()),
    );
    std::fs::write(&cfg, text).unwrap();
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(rows.iter().all(|r| r["state"] == "active"), "{rows:?}");
    let (out, events) = turn(&cfg, &["hello"], &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let text: String =
        events.iter().filter(|e| e["type"] == "text-delta").map(|e| e["delta"].as_str().unwrap()).collect();
    assert!(text.contains("scripted demo model"), "{text}");
}

const OPENAI: &str = "libdispatch_plugin_provider_openai.so";

#[test]
fn the_openai_provider_plugin_streams_a_turn_and_honours_retry_after() {
    use dispatch_test_support::mock_openai::*;
    let server = MockServer::start(vec![
        Reply::json(429, serde_json::json!({"error": {"message": "slow down"}})).header("Retry-After", "2"),
        Reply::sse(&[
            text_chunk("Hello from "),
            text_chunk("the mock"),
            finish_chunk("stop"),
            usage_chunk(9, 4, Some(5)),
        ]),
    ]);
    let cfg = Config::new().plugin(MODELS, "").plugin(OPENAI, "").write();
    let env = [
        ("DISPATCH_BASE_URL", server.base_url()),
        ("DISPATCH_API_KEY", "sk-e2e-very-secret".to_owned()),
        ("DISPATCH_MODEL", "mock-model".to_owned()),
        ("RUST_LOG", "debug".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (out, events) = turn(&cfg, &["hi"], &env);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let retry = events.iter().find(|e| e["type"] == "provider-retry").expect("provider-retry");
    // The default first wait is 1 s: 2000 can only come from the server's
    // header, carried across the bus from the provider plugin.
    assert_eq!(retry["delayMs"], 2000, "Retry-After: 2 stretches the first 1 s wait to 2 s");
    assert_eq!(retry["code"], "429");
    assert_eq!(retry["message"], "HTTP 429: slow down");
    let text: String =
        events.iter().filter(|e| e["type"] == "text-delta").map(|e| e["delta"].as_str().unwrap()).collect();
    assert_eq!(text, "Hello from the mock");
    let usage = events.iter().find(|e| e["type"] == "usage").unwrap();
    assert_eq!(
        usage["usage"],
        serde_json::json!({"inputTokens": 9, "outputTokens": 4, "cacheReadTokens": 5})
    );
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].body["model"], "mock-model");
    assert_eq!(reqs[1].header("authorization"), Some("Bearer sk-e2e-very-secret"));
    assert!(!out.stderr.contains("sk-e2e-very-secret"), "the API key leaked into the log");
    assert!(out.stderr.contains("credential configured"), "{}", out.stderr);
}

#[test]
fn named_credentials_from_config_and_the_catalog_lists_them() {
    use dispatch_test_support::mock_openai::*;
    let server = MockServer::start(vec![Reply::json(
        200,
        serde_json::json!({"data": [{"id": "served-a"}, {"id": "served-b"}]}),
    )]);
    let config = format!(
        "[[plugin.config.credentials]]\nname = \"local\"\nbase_url = {:?}\napi_key_env = \"LOCAL_KEY\"\n\
         [plugin.config.credentials.context_windows]\n\"served-a\" = 8192\n\
         [[plugin.config.credentials]]\nname = \"fixed\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodels = [\"f1\"]\n",
        server.base_url()
    );
    let cfg = Config::new().plugin(MODELS, "").plugin(OPENAI, &config).write();
    let (out, lines) = call(&cfg, &[("models", r#"{"op":"list"}"#)], &[("LOCAL_KEY", "k")]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(
        lines[0],
        serde_json::json!({"models": ["fixed/f1", "local/served-a", "local/served-b"], "modelInfo": {"local/served-a": {"contextWindow": 8192}}})
    );
    // A missing key variable is a clear activation error.
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 1);
    assert_row(&rows, "provider-openai", "failed", &["`LOCAL_KEY`", "not set"]);
}

/// `GET /models`' `modelInfo` (the catalog's `list`): a model's context
/// window and image input from the server's `/models` where it says
/// (OpenRouter's `context_length` and `architecture`, vLLM's
/// `max_model_len`), from the configuration where it does not, and image
/// input by the documented name list last; a credential with
/// `images = false` has no vision model.
#[test]
fn model_info_comes_from_the_endpoint_then_the_config_then_the_name() {
    use dispatch_test_support::mock_openai::*;
    let listing = serde_json::json!({"data": [
        {"id": "big", "context_length": 200000, "architecture": {"input_modalities": ["text", "image"]}},
        {"id": "small", "max_model_len": 4096},
        {"id": "gpt-4o"},
        {"id": "plain"}
    ]});
    let server = MockServer::start(vec![Reply::json(200, listing.clone()), Reply::json(200, listing)]);
    let config = format!(
        "[[plugin.config.credentials]]\nname = \"local\"\nbase_url = {url:?}\n\
         [plugin.config.credentials.context_windows]\n\"gpt-4o\" = 128000\nbig = 1\n\
         [[plugin.config.credentials]]\nname = \"textonly\"\nbase_url = {url:?}\nimages = false\n",
        url = server.base_url()
    );
    let cfg = Config::new().plugin(MODELS, "").plugin(OPENAI, &config).write();
    let (out, lines) = call(&cfg, &[("models", r#"{"op":"list"}"#)], &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let info = &lines[0]["modelInfo"];
    assert_eq!(info["local/big"], serde_json::json!({"contextWindow": 200000, "vision": true}));
    assert_eq!(info["local/small"], serde_json::json!({"contextWindow": 4096}));
    assert_eq!(info["local/gpt-4o"], serde_json::json!({"contextWindow": 128000, "vision": true}));
    assert!(info["local/plain"].is_null(), "{info}");
    assert!(info["textonly/big"]["vision"].is_null() && info["textonly/gpt-4o"].is_null(), "{info}");
    assert_eq!(info["textonly/big"]["contextWindow"], 200000);
}
