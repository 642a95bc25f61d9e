//! OpenTelemetry export through the real binary: with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set, a scripted tool-calling turn (with a
//! retried request) arrives at an OTLP receiver — started here, decoding
//! with the official protobuf definitions (tests/otlp/receiver.py) — as a
//! span tree with GenAI attributes; without it, nothing is exported.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::{chat, product_config, Server, LOOPBACK};
use crate::support::repo_root;

struct Receiver {
    child: Child,
    port: u16,
    spans: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start() -> Receiver {
        let python = repo_root().join("tests/otlp/.venv/bin/python");
        assert!(
            python.exists(),
            "the OTLP receiver's Python is missing: `python3 -m venv tests/otlp/.venv && tests/otlp/.venv/bin/pip \
             install -r tests/otlp/requirements.txt` (scripts/test does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let spans = dir.path().join("spans.jsonl");
        let mut child = Command::new(python)
            .arg(repo_root().join("tests/otlp/receiver.py"))
            .arg(&spans)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let port = first.trim().parse().unwrap_or_else(|_| panic!("the receiver said {first:?}"));
        Receiver { child, port, spans, _dir: dir }
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.spans)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Wait until `n` spans arrived.
    fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if spans.len() >= n || Instant::now() > deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

#[test]
fn a_tool_turn_arrives_at_an_otlp_receiver_as_a_span_tree() {
    let receiver = Receiver::start();
    let cfg = product_config(LOOPBACK);
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let s = Server::start_with(
        &cfg,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("notes.txt"), "hello").unwrap();
    let (a, events) =
        chat(&s.base, json!({"conversationId": "otel-1", "message": "read the notes", "cwd": work.path()}));
    assert_eq!(a.status, 200, "{}", a.text);
    let turn_id = events[0]["turnId"].as_str().unwrap().to_owned();

    // turn + 2 steps + 2 requests + 1 tool call.
    let spans = receiver.wait_for(6);
    assert_eq!(spans.len(), 6, "{spans:#?}\n{}", s.log());
    let by_name = |name: &str| spans.iter().filter(|s| s["name"] == name).collect::<Vec<_>>();
    let root = by_name("invoke_agent dispatch");
    assert_eq!(root.len(), 1);
    let root = root[0];
    assert_eq!(root["parentSpanId"], "", "the turn is the root");
    assert_eq!(root["service"], "dispatch");
    assert_eq!(attr(root, "gen_ai.operation.name"), "invoke_agent");
    assert_eq!(attr(root, "gen_ai.conversation.id"), "otel-1");
    assert_eq!(attr(root, "dispatch.turn.id"), turn_id.as_str());
    assert_eq!(attr(root, "gen_ai.usage.input_tokens"), 90);
    assert_eq!(attr(root, "gen_ai.usage.output_tokens"), 11);
    assert!(spans.iter().all(|s| s["traceId"] == root["traceId"]), "one trace");

    let steps: Vec<&Value> =
        spans.iter().filter(|s| s["name"].as_str().unwrap().starts_with("step #")).collect();
    assert_eq!(steps.len(), 2);
    assert!(steps.iter().all(|s| s["parentSpanId"] == root["spanId"]));
    let step0 = steps.iter().find(|s| s["name"] == "step #0").unwrap();
    let step1 = steps.iter().find(|s| s["name"] == "step #1").unwrap();

    let chats = by_name("chat scripted/demo");
    assert_eq!(chats.len(), 2);
    let first = chats.iter().find(|c| c["parentSpanId"] == step0["spanId"]).expect("a request under step #0");
    assert_eq!(first["kind"], 3, "SPAN_KIND_CLIENT");
    assert_eq!(attr(first, "gen_ai.operation.name"), "chat");
    assert_eq!(attr(first, "gen_ai.request.model"), "scripted/demo");
    assert_eq!(attr(first, "gen_ai.usage.input_tokens"), 30);
    assert_eq!(attr(first, "gen_ai.usage.output_tokens"), 5);
    assert_eq!(attr(first, "gen_ai.response.finish_reasons"), &json!(["tool-calls"]));
    assert!(chats.iter().any(|c| c["parentSpanId"] == step1["spanId"]));

    let tool = by_name("execute_tool read_file");
    assert_eq!(tool.len(), 1);
    let tool = tool[0];
    assert_eq!(tool["parentSpanId"], step0["spanId"], "the tool call under its step");
    assert_eq!(attr(tool, "gen_ai.tool.name"), "read_file");
    assert_eq!(attr(tool, "dispatch.tool.plugin"), "tool-read-file");
    assert_eq!(attr(tool, "dispatch.tool.outcome"), "ok");
    for s in &spans {
        assert!(s["end"].as_u64() >= s["start"].as_u64(), "{s}");
        assert!(
            s["start"].as_u64() >= root["start"].as_u64() && s["end"].as_u64() <= root["end"].as_u64(),
            "{s}"
        );
    }

    // A retried request: both attempts, the first an error with its status.
    let (a, _) =
        chat(&s.base, json!({"conversationId": "otel-1", "message": "flaky please", "cwd": work.path()}));
    assert_eq!(a.status, 200);
    let spans = receiver.wait_for(10);
    let retried: Vec<&Value> = spans
        .iter()
        .filter(|s| s["name"] == "chat scripted/demo" && attr(s, "dispatch.request.attempt").is_number())
        .collect();
    let failed =
        retried.iter().find(|s| attr(s, "dispatch.request.outcome") == "retry").expect("the failed attempt");
    assert_eq!(failed["status"], 2, "STATUS_CODE_ERROR");
    assert_eq!(attr(failed, "error.type"), "429");
    assert!(retried
        .iter()
        .any(|s| attr(s, "dispatch.request.attempt") == 1 && attr(s, "dispatch.request.outcome") == "ok"));
}

#[test]
fn without_an_endpoint_nothing_is_exported() {
    let receiver = Receiver::start();
    let cfg = product_config(LOOPBACK);
    // The receiver's address in a variable the SDK does not read for traces.
    let unrelated = format!("http://127.0.0.1:{}", receiver.port);
    let s = Server::start_with(&cfg, &[("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", &unrelated)]);
    let (a, _) = chat(&s.base, json!({"conversationId": "otel-off", "message": "hi"}));
    assert_eq!(a.status, 200);
    std::thread::sleep(Duration::from_millis(800));
    assert!(receiver.spans().is_empty());
    assert!(!s.log().contains("exporting turns over OTLP"), "{}", s.log());
}
