//! Chat end to end: the real binary with the bundled plugins, driven over
//! real HTTP on 127.0.0.1 — the scripted model, the real tools, the real
//! SQLite store.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use dispatch_test_support::http_client;

use crate::support::*;

/// The test script: a reply per scenario, picked by the message's start.
pub const SCRIPT: &str = r#"{"replies": [
  {"match": "^Please summarize", "steps": [{"text": "Summary: the user read the notes, more than once."}]},
  {"match": "^read", "steps": [
    {"toolCalls": [{"name": "read_file", "input": {"path": "notes.txt"}}], "usage": {"inputTokens": 30, "outputTokens": 5}},
    {"text": "The notes say hello.", "usage": {"inputTokens": 60, "outputTokens": 6}}]},
  {"match": "^slow heartbeat", "steps": [
    {"text": "beat beat beat beat beat beat beat beat", "chunkChars": 4, "delayMs": 300}]},
  {"match": "^slow", "steps": [
    {"text": "one two three four five six seven eight nine ten eleven twelve", "chunkChars": 4, "delayMs": 150}]},
  {"match": "^shell started", "steps": [
    {"toolCalls": [{"name": "run_shell", "input": {"command": "echo started; sleep 1.5; echo slept"}}]},
    {"text": "Slept."}]},
  {"match": "^shell", "steps": [
    {"toolCalls": [{"name": "run_shell", "input": {"command": "sleep 1.5; echo slept"}}]},
    {"text": "Slept."}]},
  {"match": "^steer", "steps": [{"text": "Steered as asked."}]},
  {"match": "^where", "steps": [
    {"toolCalls": [{"name": "run_shell", "input": {"command": "pwd"}}]}, {"text": "There."}]},
  {"match": "^todo", "steps": [
    {"toolCalls": [{"name": "todo_write", "input": {"todos": [
      {"content": "read the notes", "status": "completed"},
      {"content": "answer", "status": "in_progress"}]}}]},
    {"text": "Planned."}]},
  {"match": "^count", "steps": [
    {"toolCalls": [{"name": "word_count", "input": {"text": "one two three"}}]},
    {"text": "Counted."}]},
  {"match": "^mcp echo", "steps": [
    {"toolCalls": [{"name": "everything__echo", "input": {"message": "hi from dispatch"}}]}, {"text": "Echoed."}]},
  {"match": "^mcp sum", "steps": [
    {"toolCalls": [{"name": "everything__get-sum", "input": {"a": 2, "b": 3}}]}, {"text": "Summed."}]},
  {"match": "^mcp env", "steps": [
    {"toolCalls": [{"name": "everything__get-env", "input": {}}]}, {"text": "Listed."}]},
  {"match": "^mcp progress", "steps": [
    {"toolCalls": [{"name": "everything__trigger-long-running-operation", "input": {"duration": 0.6, "steps": 3}}]},
    {"text": "Waited."}]},
  {"match": "^mcp read", "steps": [
    {"toolCalls": [{"name": "filesystem__read_text_file", "input": {"path": "notes.txt"}}]}, {"text": "Read."}]},
  {"match": "^mcp denied", "steps": [
    {"toolCalls": [{"name": "filesystem__read_text_file", "input": {"path": "/etc/hostname"}}]}, {"text": "Refused."}]},
  {"match": "^fx pid", "steps": [{"toolCalls": [{"name": "fx__pid", "input": {}}]}, {"text": "Pid."}]},
  {"match": "^fx fail", "steps": [
    {"toolCalls": [{"name": "fx__fail", "input": {"message": "no such widget"}}]}, {"text": "Failed."}]},
  {"match": "^fx progress", "steps": [
    {"toolCalls": [{"name": "fx__slow", "input": {"ms": 50, "steps": 3}}]}, {"text": "Progressed."}]},
  {"match": "^fx slow", "steps": [
    {"toolCalls": [{"name": "fx__slow", "input": {"ms": 30000, "steps": 1}}]}, {"text": "Slow."}]},
  {"match": "^fx crash", "steps": [{"toolCalls": [{"name": "fx__crash", "input": {}}]}, {"text": "Crashed."}]},
  {"match": "^fx freeze", "steps": [{"toolCalls": [{"name": "fx__freeze", "input": {}}]}, {"text": "Froze."}]},
  {"match": "^fx child", "steps": [{"toolCalls": [{"name": "fx__spawn_child", "input": {}}]}, {"text": "Spawned."}]},
  {"match": "^fx add", "steps": [{"toolCalls": [{"name": "fx__add_tool", "input": {}}]}, {"text": "Added."}]},
  {"match": "^fx extra", "steps": [{"toolCalls": [{"name": "fx__extra", "input": {}}]}, {"text": "Extra."}]},
  {"match": "^flaky", "steps": [
    {"error": {"status": 429, "message": "slow down"}},
    {"text": "Recovered."}]},
  {"steps": [{"text": "Hello from the script.", "usage": {"inputTokens": 10, "outputTokens": 4}}]}
]}"#;

/// A product configuration listening on a free port, with the test script.
pub fn product_config(http: &str) -> Written {
    product_config_ws(http, LOOPBACK)
}

/// The same, with the WebSocket transport's configuration too.
pub fn product_config_ws(http: &str, ws: &str) -> Written {
    product_config_with(http, ws, &[])
}

/// The same, with `overrides`' `[plugin.config]` bodies for some plugins
/// (by library file name).
pub fn product_config_with(http: &str, ws: &str, overrides: &[(&str, String)]) -> Written {
    product_config_on(http, ws, overrides, None)
}

/// The product with another store in place of store-sqlite: its library
/// and configuration.
pub fn product_config_on(
    http: &str,
    ws: &str,
    overrides: &[(&str, String)],
    store: Option<(&str, String)>,
) -> Written {
    let mut c = Config::new();
    let script = c.dir.path().join("script.json");
    // A long turn for the slow-client tests: 2000 deltas of 3000 bytes, about
    // one a millisecond — 6 MB, more than a stalled client's socket buffers
    // (the kernel lets a sender's grow to 4 MiB) and its queue hold.
    let flood = format!(
        r#"{{"replies": [{{"match": "^flood", "steps": [{{"text": "{}", "chunkChars": 3000, "delayMs": 1}}]}},"#,
        "y".repeat(2000 * 3000)
    );
    std::fs::write(&script, SCRIPT.replacen(r#"{"replies": ["#, &flood, 1)).unwrap();
    let work = c.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("notes.txt"), "hello from the notes").unwrap();
    for p in dispatch_test_support::BUNDLED_PLUGINS {
        if let (Some((library, config)), "libdispatch_plugin_store_sqlite.so") = (&store, *p) {
            c = c.plugin(library, config);
            continue;
        }
        if let Some((_, config)) = overrides.iter().find(|(name, _)| name == p) {
            c = c.plugin(p, config);
            continue;
        }
        let config = match *p {
            "libdispatch_plugin_provider_scripted.so" => {
                format!("script = {:?}", script.display().to_string())
            }
            "libdispatch_plugin_session.so" => {
                format!("default_cwd = {:?}\nretry_delays_ms = [50, 50]", work.display().to_string())
            }
            "libdispatch_plugin_transport_http.so" => http.to_owned(),
            // Its own port too: the OS picks one (`Server::ws` reads it).
            "libdispatch_plugin_transport_ws.so" => ws.to_owned(),
            // The flood turn's answer is one 6 MB text chunk.
            "libdispatch_plugin_store_sqlite.so" => "max_chunk_bytes = 16777216".to_owned(),
            _ => String::new(),
        };
        c = c.plugin(p, &config);
    }
    c.write()
}

/// The default: loopback on a port the OS picks.
pub const LOOPBACK: &str = "addr = [\"127.0.0.1:0\"]";

/// A running `dispatch serve`.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    log: Arc<Mutex<String>>,
    ws_line: Arc<Mutex<Option<String>>>,
}

impl Server {
    /// … with the OpenAI-compatible mock at `mock_url` as the default
    /// provider ([`MOCK_MODEL`]), and `extra` environment.
    pub fn start_on_mock(cfg: &Path, mock_url: &str, extra: &[(&str, &str)]) -> Server {
        let mut env = vec![
            ("DISPATCH_BASE_URL", mock_url),
            ("DISPATCH_API_KEY", "sk-test"),
            ("DISPATCH_MODEL", "mock-model"),
        ];
        env.extend_from_slice(extra);
        Server::start_with(cfg, &env)
    }

    /// Start `dispatch serve` on `cfg` and wait until it listens.
    pub fn start(cfg: &Path) -> Server {
        Server::start_with(cfg, &[])
    }

    /// … with extra environment.
    pub fn start_with(cfg: &Path, env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(dispatch_bin());
        hermetic(
            cmd.args(["serve", "--config", cfg.to_str().unwrap()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        );
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = Arc::clone(&log);
        let ws_line = Arc::new(Mutex::new(None));
        let ws_sink = Arc::clone(&ws_line);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("WebSocket listening") {
                    *ws_sink.lock().unwrap() = Some(line.clone());
                }
                if line.contains("HTTP listening") {
                    let _ = tx.send(line.clone());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not start listening; its log:\n{}", log.lock().unwrap());
            }
        };
        let port = port_in(&line);
        // Listening is not yet serving: a server that exits during the rest
        // of its start-up must fail here, with its log, not as a refused
        // connection somewhere later in the test.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the server exited ({status}) after it started listening; its log:\n{}",
                    log.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the server stopped accepting on {port}; its log:\n{}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child: Some(child), base: format!("http://127.0.0.1:{port}"), log, ws_line }
    }

    /// `ws://127.0.0.1:<port>` of the WebSocket transport's own port.
    pub fn ws(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(line) = self.ws_line.lock().unwrap().as_deref() {
                return format!("ws://127.0.0.1:{}", port_in(line));
            }
            assert!(Instant::now() < deadline, "the WebSocket did not start listening; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The server's pid.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().unwrap().id()).unwrap()
    }

    /// Send `signal`, wait for the exit (bounded); the exit status.
    pub fn stop_with(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        unsafe_kill(i32::try_from(child.id()).unwrap(), signal);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the server did not exit after signal {signal}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The port of the first IPv4 address in a "… listening" log line.
fn port_in(line: &str) -> u16 {
    line.split("127.0.0.1:")
        .nth(1)
        .or_else(|| line.split("0.0.0.0:").nth(1))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

fn unsafe_kill(pid: i32, signal: i32) {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success());
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
    })
}

/// An answer: status, headers and JSON (or `Null` for a non-JSON body).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Value,
    pub text: String,
}

/// Send a request and read the whole answer.
pub fn send(method: &str, url: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Answer {
    rt().block_on(async {
        let mut all = headers.to_vec();
        if body.is_some() && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            all.push(("content-type", "application/json"));
        }
        let fut = http_client::send(method, url, &all, body.map(str::as_bytes));
        let resp = tokio::time::timeout(Duration::from_secs(60), fut)
            .await
            .unwrap_or_else(|_| panic!("{method} {url}: no answer within 60 s"))
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status;
        let headers = resp.headers.clone();
        let text = resp.text().await;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer { status, headers, body, text }
    })
}

pub fn get(url: &str) -> Answer {
    send("GET", url, None, &[])
}

pub fn post(url: &str, body: &str) -> Answer {
    send("POST", url, Some(body), &[])
}

/// The events of a whole NDJSON answer.
pub fn lines(a: &Answer) -> Vec<Value> {
    a.text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// An NDJSON stream read event by event.
pub struct Stream {
    resp: http_client::Response,
    buf: Vec<u8>,
    pub status: u16,
    pub conversation_id: String,
}

impl Stream {
    /// `POST /chat` without waiting for the turn.
    pub fn open(base: &str, body: &Value) -> Stream {
        rt().block_on(async {
            let resp = http_client::post_json(&format!("{base}/chat"), &body.to_string()).await.unwrap();
            let status = resp.status;
            let conversation_id = resp.header("x-conversation-id").unwrap_or_default().to_owned();
            Stream { resp, buf: Vec::new(), status, conversation_id }
        })
    }

    /// The next event, or `None` at the end of the stream.
    pub fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(serde_json::from_slice(&line[..line.len() - 1]).unwrap());
            }
            let chunk = rt().block_on(self.resp.next_chunk());
            match chunk {
                Some(c) => self.buf.extend_from_slice(&c),
                None => return None,
            }
        }
    }

    /// Events until one of type `kind` (included).
    pub fn until(&mut self, kind: &str) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(e) = self.next() {
            let done = e["type"] == kind;
            out.push(e);
            if done {
                return out;
            }
        }
        panic!("the stream ended before a `{kind}` event: {out:?}");
    }

    /// Every remaining event.
    pub fn rest(&mut self) -> Vec<Value> {
        std::iter::from_fn(|| self.next()).collect()
    }
}

/// Send a chat and read the whole stream.
pub fn chat(base: &str, body: Value) -> (Answer, Vec<Value>) {
    let a = post(&format!("{base}/chat"), &body.to_string());
    let events = if a.status == 200 { lines(&a) } else { Vec::new() };
    (a, events)
}

/// The mock model (`dispatch_test_support::mock_openai`), as a chat names
/// it once [`Server::start_on_mock`] configured it.
pub const MOCK_MODEL: &str = "openai/mock-model";

/// A turn of `conversation` in `cwd` with the mock model, which must seal.
pub fn say_in(base: &str, conversation: &str, cwd: &Path, message: &str) -> Vec<Value> {
    let body = json!({"conversationId": conversation, "message": message, "model": MOCK_MODEL,
        "cwd": cwd.display().to_string()});
    let (a, events) = chat(base, body);
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(events.last().unwrap()["type"], "turn-sealed", "{events:?}");
    events
}

/// The only tool result of a turn.
pub fn result_of(events: &[Value]) -> &Value {
    let results: Vec<&Value> = events.iter().filter(|e| e["type"] == "tool-result").collect();
    assert_eq!(results.len(), 1, "{events:?}");
    results[0]
}

pub fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

pub fn text_of(events: &[Value]) -> String {
    events.iter().filter(|e| e["type"] == "text-delta").map(|e| e["delta"].as_str().unwrap()).collect()
}

fn work_dir(cfg: &Path) -> PathBuf {
    cfg.parent().unwrap().join("work")
}

/// Seqs are 1-based, gap-free and ascending.
fn assert_gap_free(chunks: &[Value]) {
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c["seq"], i as u64 + 1, "seq {i}: {chunks:?}");
    }
}

#[test]
fn a_text_turn_streams_its_events_in_order_and_is_persisted() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    assert_eq!(get(&format!("{}/health", s.base)).body, json!({"ok": true}));
    let (a, events) = chat(&s.base, json!({"message": "  hi there  "}));
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.headers["content-type"], "application/x-ndjson");
    let id = a.headers["x-conversation-id"].to_str().unwrap().to_owned();
    assert!(!id.is_empty());
    let k = kinds(&events);
    assert_eq!(k[..2], ["user-message", "turn-start"]);
    assert_eq!(k[k.len() - 2..], ["done", "turn-sealed"]);
    assert!(k.contains(&"usage") && k.contains(&"step-complete"));
    assert_eq!(events[0]["text"], "hi there", "the message is trimmed");
    assert!(events.iter().all(|e| e["conversationId"] == id.as_str()));
    let turn = events[0]["turnId"].as_str().unwrap();
    assert!(events.iter().all(|e| e["turnId"] == turn));
    assert!(events.iter().all(|e| e.get("seq").is_none()), "live events carry no seq");
    assert_eq!(text_of(&events), "Hello from the script.");
    assert_eq!(events[events.len() - 2]["reason"], "stop");

    let h = get(&format!("{}/conversations/{id}", s.base)).body;
    let chunks = h["chunks"].as_array().unwrap();
    assert_gap_free(chunks);
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[0]["role"], "user");
    assert_eq!(chunks[1]["chunk"], json!({"type": "text", "text": "Hello from the script."}));
    assert_eq!(h["latestSeq"], 2);

    let list = get(&format!("{}/conversations", s.base)).body;
    let convs = list["conversations"].as_array().unwrap();
    assert_eq!(convs.len(), 1);
    assert_eq!(convs[0]["id"], id.as_str());
    assert_eq!(convs[0]["status"], "idle");
    assert_eq!(convs[0]["title"], "hi there");
    assert_eq!(convs[0]["workspaceId"], "default");

    let status = get(&format!("{}/conversations/{id}/status", s.base)).body;
    assert_eq!(status, json!({"conversationId": id, "isActive": false, "status": "idle"}));
    let last = get(&format!("{}/conversations/{id}/last", s.base)).body;
    assert_eq!(last["content"], "Hello from the script.");
    let metrics = get(&format!("{}/conversations/{id}/metrics", s.base)).body;
    let turns = metrics["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0]["turnId"], turn);
    assert_eq!(turns[0]["usage"], json!({"inputTokens": 10, "outputTokens": 4}));
    assert_eq!(turns[0]["steps"][0]["stepId"], format!("{turn}#0"));
}

#[test]
fn a_tool_calling_turn_reads_a_file_in_the_cwd_and_pairs_every_call_with_its_result() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let (a, events) = chat(&s.base, json!({"message": "read the notes"}));
    assert_eq!(a.status, 200, "{}", a.text);
    let k = kinds(&events);
    let call = k
        .iter()
        .position(|t| *t == "tool-call")
        .unwrap_or_else(|| panic!("no tool call: {events:?}\n{}", s.log()));
    let result =
        k.iter().position(|t| *t == "tool-result").unwrap_or_else(|| panic!("no tool result: {events:?}"));
    assert!(call < result);
    assert_eq!(events[call]["toolName"], "read_file");
    assert_eq!(events[call]["toolCallId"], events[result]["toolCallId"]);
    assert_eq!(events[result]["isError"], false);
    assert!(
        events[result]["content"].as_str().unwrap().contains("hello from the notes"),
        "{}",
        events[result]
    );
    let turn = events[0]["turnId"].as_str().unwrap();
    assert_eq!(events[call]["stepId"], format!("{turn}#0"));
    assert_eq!(k.iter().filter(|t| **t == "step-complete").count(), 2);
    assert_eq!(text_of(&events), "The notes say hello.");
    let done = &events[events.len() - 2];
    assert_eq!(done["usage"], json!({"inputTokens": 90, "outputTokens": 11}));
    assert_eq!(done["contextSize"], 66);

    let id = a.headers["x-conversation-id"].to_str().unwrap();
    let chunks = get(&format!("{}/conversations/{id}", s.base)).body["chunks"].as_array().unwrap().clone();
    assert_gap_free(&chunks);
    let types: Vec<(&str, &str)> =
        chunks.iter().map(|c| (c["role"].as_str().unwrap(), c["chunk"]["type"].as_str().unwrap())).collect();
    assert_eq!(
        types,
        [("user", "text"), ("assistant", "tool-call"), ("tool", "tool-result"), ("assistant", "text")]
    );
    // Windows: the newest `limit` of `sinceSeq < seq < beforeSeq`.
    let w = get(&format!("{}/conversations/{id}?sinceSeq=1&beforeSeq=4&limit=1", s.base)).body;
    assert_eq!(w["chunks"].as_array().unwrap().len(), 1);
    assert_eq!(w["chunks"][0]["seq"], 3);
    assert_eq!(w["latestSeq"], 3);
    let none = get(&format!("{}/conversations/{id}?sinceSeq=4", s.base)).body;
    assert_eq!(none, json!({"chunks": [], "latestSeq": 4}));
    let unknown = get(&format!("{}/conversations/never-seen?sinceSeq=7", s.base)).body;
    assert_eq!(unknown, json!({"chunks": [], "latestSeq": 7}));
}

/// The bundled plugins share the host's tokio, so they run their tasks on
/// the host's runtime: after a turn that used the provider, a tool, the
/// store and both transports' listeners, no thread of the server belongs to
/// a runtime of a plugin's own (those are named `<plugin>-rt`).
#[test]
fn bundled_plugins_run_on_the_hosts_runtime_not_runtimes_of_their_own() {
    let cfg = product_config(LOOPBACK);
    let mut s = Server::start(&cfg);
    let (a, events) = chat(&s.base, json!({"message": "read the notes"}));
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(kinds(&events).contains(&"tool-result"), "{events:?}");
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", s.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect();
    assert!(names.iter().any(|n| n == "dispatch"), "{names:?}");
    // (A thread's name is cut to 15 bytes: `transport-http-rt` reads `transport-http-`.)
    let own =
        |n: &str| n.ends_with("-rt") || ["transport-", "provider-", "tool-"].iter().any(|p| n.starts_with(p));
    assert!(!names.iter().any(|n| own(n)), "a plugin started its own runtime: {names:?}");

    // Stopping waits for each plugin's tasks (deactivation runs on a
    // blocking thread, where the wait is allowed): a clean exit, no warning.
    assert!(s.stop_with(15).success(), "SIGTERM is a clean stop: {}", s.log());
    let log = s.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
}

#[test]
fn settings_are_sticky_per_conversation() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("notes.txt"), "notes from elsewhere").unwrap();
    let cwd = other.path().canonicalize().unwrap().display().to_string();
    let (a, _) = chat(
        &s.base,
        json!({"conversationId": "sticky-1", "message": "hi", "cwd": cwd, "model": "scripted/demo",
               "reasoningEffort": "low"}),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let base = format!("{}/conversations/sticky-1", s.base);
    assert_eq!(get(&format!("{base}/cwd")).body, json!({"conversationId": "sticky-1", "cwd": cwd}));
    assert_eq!(
        get(&format!("{base}/model")).body,
        json!({"conversationId": "sticky-1", "model": "scripted/demo"})
    );
    assert_eq!(get(&format!("{base}/reasoning-effort")).body["reasoningEffort"], "low");
    // The next turn, with no cwd in the request, reads in the sticky one.
    let (_, events) = chat(&s.base, json!({"conversationId": "sticky-1", "message": "read them"}));
    let result = events.iter().find(|e| e["type"] == "tool-result").unwrap();
    assert!(result["content"].as_str().unwrap().contains("notes from elsewhere"), "{result}");

    let put = send("PUT", &format!("{base}/reasoning-effort"), Some(r#"{"reasoningEffort":"max"}"#), &[]);
    assert_eq!(put.body, json!({"conversationId": "sticky-1", "reasoningEffort": "max"}));
    for bad in [r#"{"reasoningEffort":null}"#, r#"{"reasoningEffort":"extreme"}"#, "{}"] {
        let a = send("PUT", &format!("{base}/reasoning-effort"), Some(bad), &[]);
        assert_eq!(a.status, 400, "{bad}: {}", a.text);
    }
    let cleared = send("PUT", &format!("{base}/model"), Some(r#"{"model":""}"#), &[]);
    assert_eq!(cleared.body, json!({"conversationId": "sticky-1", "model": null}));
    assert_eq!(send("DELETE", &format!("{base}/cwd"), None, &[]).body["cwd"], Value::Null);
    let t = send("PUT", &format!("{base}/title"), Some(r#"{"title":"  My chat "}"#), &[]);
    assert_eq!(t.body, json!({"conversationId": "sticky-1", "title": "My chat"}));
    assert_eq!(send("PUT", &format!("{base}/title"), Some(r#"{"title":"   "}"#), &[]).status, 400);
    let list = get(&format!("{}/conversations?q=sticky", s.base)).body;
    assert_eq!(list["conversations"][0]["title"], "My chat");
    // A model the catalog does not serve is refused when it is set
    // (regression, issue 31: it was stored, then refused every turn and
    // stalled the conversation's queue), and nothing changes.
    send("PUT", &format!("{base}/model"), Some(r#"{"model":"scripted/demo"}"#), &[]);
    let refused = send("PUT", &format!("{base}/model"), Some(r#"{"model":"nowhere/x"}"#), &[]);
    assert_eq!(
        (refused.status, refused.body["code"].as_str()),
        (400, Some("unknown_model")),
        "{}",
        refused.text
    );
    assert_eq!(get(&format!("{base}/model")).body["model"], "scripted/demo");
    let (a, _) = chat(&s.base, json!({"conversationId": "sticky-1", "message": "hi"}));
    assert_eq!(a.status, 200);
    // A model asked for with a turn is refused before the turn, as ever.
    let (a, _) = chat(&s.base, json!({"conversationId": "sticky-1", "message": "hi", "model": "nowhere/x"}));
    assert_eq!((a.status, a.body["code"].as_str()), (400, Some("unknown_model")));
}

#[test]
fn a_second_chat_while_a_turn_runs_is_refused_and_stop_seals_it_as_aborted() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let mut stream = Stream::open(&s.base, &json!({"conversationId": "busy", "message": "slow please"}));
    assert_eq!(stream.status, 200);
    stream.until("text-delta");
    let (second, _) = chat(&s.base, json!({"conversationId": "busy", "message": "me too"}));
    assert_eq!(second.status, 409, "{}", second.text);
    assert_eq!(second.body["code"], "conflict");
    let status = get(&format!("{}/conversations/busy/status", s.base)).body;
    assert_eq!(status["isActive"], true);
    assert_eq!(status["status"], "active");

    let stop = post(&format!("{}/conversations/busy/stop", s.base), "");
    assert_eq!(stop.body, json!({"conversationId": "busy", "abortedTurn": true}));
    let rest = stream.rest();
    let k = kinds(&rest);
    assert_eq!(k[k.len() - 2..], ["done", "turn-sealed"]);
    assert_eq!(rest[rest.len() - 2]["reason"], "aborted");
    assert_eq!(post(&format!("{}/conversations/busy/stop", s.base), "").body["abortedTurn"], false);

    // Usable again at once.
    let (again, events) = chat(&s.base, json!({"conversationId": "busy", "message": "hi"}));
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(text_of(&events), "Hello from the script.");
    let chunks = get(&format!("{}/conversations/busy", s.base)).body["chunks"].as_array().unwrap().clone();
    assert_gap_free(&chunks);
}

#[test]
fn a_client_that_disconnects_does_not_abort_the_turn() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let mut stream = Stream::open(&s.base, &json!({"conversationId": "gone", "message": "slow please"}));
    assert_eq!(stream.conversation_id, "gone");
    stream.until("text-delta");
    drop(stream);
    // `last` waits for the turn to seal, then answers its text.
    let last = get(&format!("{}/conversations/gone/last", s.base)).body;
    assert_eq!(last["content"], "one two three four five six seven eight nine ten eleven twelve");
    assert!(last["turnId"].is_string(), "{last}");
}

#[test]
fn queued_messages_steer_the_running_turn_start_idle_turns_and_can_be_cancelled() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let base = format!("{}/conversations/q1", s.base);
    // Idle: queueing starts a turn.
    let q = post(&format!("{base}/queue"), r#"{"text":"hi"}"#);
    assert_eq!(q.body, json!({"conversationId": "q1", "startedTurn": true, "queue": []}));
    let last = get(&format!("{base}/last")).body;
    assert_eq!(last["content"], "Hello from the script.");

    // Running: the message waits, then is steered in at the tool boundary.
    let mut stream = Stream::open(&s.base, &json!({"conversationId": "q1", "message": "shell time"}));
    stream.until("tool-call");
    let q = post(&format!("{base}/queue"), r#"{"text":"steer: also this"}"#);
    assert_eq!(q.body["startedTurn"], false, "{}", q.text);
    assert_eq!(q.body["queue"][0]["text"], "steer: also this");
    let extra = post(&format!("{base}/queue"), r#"{"text":"never mind"}"#);
    let id = extra.body["queue"][1]["id"].as_str().unwrap().to_owned();
    let cancelled = send("DELETE", &format!("{base}/queue/{id}"), None, &[]);
    assert_eq!(cancelled.body["cancelled"], true, "{}", cancelled.text);
    assert_eq!(cancelled.body["queue"].as_array().unwrap().len(), 1);
    let again = send("DELETE", &format!("{base}/queue/{id}"), None, &[]);
    assert_eq!(again.body["cancelled"], false);
    let rest = stream.rest();
    let steering = rest.iter().find(|e| e["type"] == "steering").expect("a steering event");
    assert_eq!(steering["text"], "steer: also this");
    assert_eq!(text_of(&rest), "Steered as asked.");
    let chunks = get(&base).body["chunks"].as_array().unwrap().clone();
    assert_gap_free(&chunks);
    assert!(chunks.iter().any(|c| c["role"] == "user" && c["chunk"]["text"] == "steer: also this"));
    assert_eq!(post(&format!("{base}/queue"), r#"{"text":"  "}"#).status, 400);
}

#[test]
fn a_retryable_provider_error_is_retried_and_the_turn_succeeds() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let (_, events) = chat(&s.base, json!({"message": "flaky model"}));
    let k = kinds(&events);
    let retry = events.iter().find(|e| e["type"] == "provider-retry").expect("provider-retry");
    assert_eq!(retry["attempt"], 0);
    assert_eq!(retry["delayMs"], 50);
    assert!(k.iter().position(|t| *t == "provider-retry") < k.iter().position(|t| *t == "text-delta"));
    assert_eq!(text_of(&events), "Recovered.");
    assert!(!k.contains(&"error"));
    // Wire 0.1 leaves out what it does not know; the rest is the same.
    let old = post(&format!("{}/chat?wire=0.1", s.base), &json!({"message": "flaky model"}).to_string());
    let old_k: Vec<String> = lines(&old).iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect();
    for newer in ["user-message", "step-complete", "provider-retry", "steering"] {
        assert!(!old_k.iter().any(|k| k == newer), "{newer} in a 0.1 stream: {old_k:?}");
    }
    assert_eq!(old_k.first().map(String::as_str), Some("turn-start"));
    assert_eq!(old_k.last().map(String::as_str), Some("turn-sealed"));
    assert_eq!(post(&format!("{}/chat?wire=banana", s.base), r#"{"message":"hi"}"#).status, 400);
}

#[test]
fn a_turn_against_a_local_openai_compatible_server() {
    use dispatch_test_support::mock_openai::*;
    let mock = MockServer::start(vec![Reply::sse(&[
        text_chunk("Hello from "),
        text_chunk("the mock"),
        finish_chunk("stop"),
        usage_chunk(9, 4, None),
    ])]);
    let cfg = product_config(LOOPBACK);
    let url = mock.base_url();
    let s = Server::start_with(
        &cfg,
        &[("DISPATCH_BASE_URL", &url), ("DISPATCH_API_KEY", "sk-test"), ("DISPATCH_MODEL", "mock-model")],
    );
    let models = get(&format!("{}/models", s.base)).body;
    assert!(models["models"].as_array().unwrap().iter().any(|m| m == "openai/mock-model"), "{models}");
    let (a, events) = chat(&s.base, json!({"message": "hi", "model": "openai/mock-model"}));
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(text_of(&events), "Hello from the mock");
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].body["model"], "mock-model");
    // The system prompt (rendered from the default template) goes first.
    assert_eq!(reqs[0].body["messages"][0]["role"], "system");
    let system = reqs[0].body["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains(&work_dir(&cfg).canonicalize().unwrap().display().to_string()), "{system}");
    // Every bundled tool is offered.
    let tools: Vec<&str> = reqs[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    for t in ["read_file", "write_file", "edit_file", "run_shell"] {
        assert!(tools.contains(&t), "{t} not offered: {tools:?}");
    }
}

/// Regression guard for provider contexts: a step sends the provider only
/// its new messages, and the provider must still put the whole history in
/// every request to the model — the same as converting it from scratch.
#[test]
fn every_step_of_a_long_turn_sends_the_model_the_whole_history() {
    use dispatch_test_support::mock_openai::*;
    let call = |i: usize| {
        Reply::sse(&[
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": format!("call_{i}"),
                "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"notes.txt\"}"}}]},
                "finish_reason": null}]}),
            finish_chunk("tool_calls"),
        ])
    };
    let mut replies: Vec<Reply> = (0..3).map(call).collect();
    replies.push(Reply::sse(&[text_chunk("read thrice"), finish_chunk("stop")]));
    replies.push(Reply::sse(&[text_chunk("again"), finish_chunk("stop")]));
    let mock = MockServer::start(replies);
    let cfg = product_config(LOOPBACK);
    let url = mock.base_url();
    let s = Server::start_with(
        &cfg,
        &[("DISPATCH_BASE_URL", &url), ("DISPATCH_API_KEY", "sk-test"), ("DISPATCH_MODEL", "mock-model")],
    );
    let body = json!({"conversationId": "ctx", "message": "read it", "model": "openai/mock-model"});
    let (_, events) = chat(&s.base, body);
    assert_eq!(text_of(&events), "read thrice");
    let (_, events) =
        chat(&s.base, json!({"conversationId": "ctx", "message": "more", "model": "openai/mock-model"}));
    assert_eq!(text_of(&events), "again");
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 5);
    let messages: Vec<Vec<Value>> =
        reqs.iter().map(|r| r.body["messages"].as_array().unwrap().clone()).collect();
    // system + user, then each step adds the call and its result.
    let lens: Vec<usize> = messages.iter().map(Vec::len).collect();
    assert_eq!(lens, vec![2, 4, 6, 8, 10]);
    for k in 1..4 {
        assert_eq!(messages[k][..messages[k - 1].len()], messages[k - 1][..], "step {k} changed the history");
        let n = messages[k].len();
        assert_eq!(messages[k][n - 2]["tool_calls"][0]["id"], format!("call_{}", k - 1));
        assert_eq!(messages[k][n - 1]["role"], "tool");
        assert!(messages[k][n - 1]["content"].as_str().unwrap().contains("hello from the notes"));
    }
    // The next turn (a new context) starts from the stored history.
    assert_eq!(messages[4][..8], messages[3][..8]);
    assert_eq!(messages[4][8]["content"], "read thrice");
    assert_eq!(messages[4][9]["content"], "more");
    // Every request offers the tools.
    assert!(reqs.iter().all(|r| r.body["tools"].as_array().is_some_and(|t| !t.is_empty())));
}

#[test]
fn the_system_prompt_template_is_editable_and_a_conversation_keeps_its_prompt() {
    use dispatch_test_support::mock_openai::*;
    let reply = || Reply::sse(&[text_chunk("ok"), finish_chunk("stop")]);
    let mock = MockServer::start(vec![reply(), reply(), reply()]);
    let cfg = product_config(LOOPBACK);
    let url = mock.base_url();
    let s = Server::start_with(
        &cfg,
        &[("DISPATCH_BASE_URL", &url), ("DISPATCH_API_KEY", "sk-test"), ("DISPATCH_MODEL", "mock-model")],
    );
    let vars = get(&format!("{}/system-prompt/variables", s.base)).body;
    let names: Vec<String> = vars["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| format!("{}:{}", v["type"].as_str().unwrap(), v["name"].as_str().unwrap()))
        .collect();
    for n in ["system:date", "prompt:cwd", "prompt:model", "prompt:tools", "file:<path>"] {
        assert!(names.iter().any(|x| x == n), "{n} missing: {names:?}");
    }
    let put = send(
        "PUT",
        &format!("{}/system-prompt", s.base),
        Some(r#"{"template":"Model [prompt:model]. [if file:notes.txt]Notes: [file:notes.txt][endif]"}"#),
        &[],
    );
    assert_eq!(put.status, 200, "{}", put.text);
    assert!(get(&format!("{}/system-prompt", s.base)).body["template"]
        .as_str()
        .unwrap()
        .starts_with("Model"));
    let body = json!({"conversationId": "p1", "message": "hi", "model": "openai/mock-model"});
    chat(&s.base, body.clone());
    send("PUT", &format!("{}/system-prompt", s.base), Some(r#"{"template":"Changed."}"#), &[]);
    chat(&s.base, body);
    chat(&s.base, json!({"conversationId": "p2", "message": "hi", "model": "openai/mock-model"}));
    let prompts: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r.body["messages"][0]["content"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(prompts[0], "Model openai/mock-model. Notes: hello from the notes");
    assert_eq!(prompts[1], prompts[0], "a conversation keeps the prompt it started with");
    assert_eq!(prompts[2], "Changed.");
    assert_eq!(send("PUT", &format!("{}/system-prompt", s.base), Some(r#"{"template":5}"#), &[]).status, 400);
}

#[test]
fn malformed_requests_get_a_json_4xx_and_the_server_carries_on() {
    let cfg = product_config("addr = [\"127.0.0.1:0\"]\nmax_body_bytes = 4096");
    let s = Server::start(&cfg);
    let b = &s.base;
    let huge = format!(r#"{{"message":"{}"}}"#, "x".repeat(10_000));
    let cases: Vec<(&str, String, Option<String>, u16)> = vec![
        ("POST", format!("{b}/chat"), Some("{not json".into()), 400),
        ("POST", format!("{b}/chat"), Some("[1,2]".into()), 400),
        ("POST", format!("{b}/chat"), Some(r#"{"message": 5}"#.into()), 400),
        ("POST", format!("{b}/chat"), Some(r#"{"msg": "hi"}"#.into()), 400),
        ("POST", format!("{b}/chat"), Some(r#"{"message": "   "}"#.into()), 400),
        ("POST", format!("{b}/chat"), Some(r#"{"message": "hi", "reasoningEffort": "extreme"}"#.into()), 400),
        ("POST", format!("{b}/chat"), Some(r#"{"message": "hi", "cwd": "/no/such/dir"}"#.into()), 400),
        ("POST", format!("{b}/chat"), Some(r#"{"message": "hi", "conversationId": "../etc"}"#.into()), 400),
        ("POST", format!("{b}/chat"), Some(String::new()), 400),
        ("POST", format!("{b}/chat"), Some(huge), 413),
        ("GET", format!("{b}/conversations/x?limit=0"), None, 400),
        ("GET", format!("{b}/conversations/x?limit=abc"), None, 400),
        ("GET", format!("{b}/conversations/x?beforeSeq=-1"), None, 400),
        ("GET", format!("{b}/conversations/x?sinceSeq=1.5"), None, 400),
        ("GET", format!("{b}/conversations?status=sleeping"), None, 400),
        ("GET", format!("{b}/conversations/nobody/status"), None, 404),
        ("GET", format!("{b}/no/such/route"), None, 404),
        ("DELETE", format!("{b}/chat"), None, 405),
        ("GET", format!("{b}/chat"), None, 405),
        ("PUT", format!("{b}/conversations/x/title"), Some(r#"{"title": 3}"#.into()), 400),
        ("PUT", format!("{b}/conversations/x/cwd"), Some(r#"{"cwd": ""}"#.into()), 400),
        ("PUT", format!("{b}/conversations/x/model"), Some(r#"{"model": 7}"#.into()), 400),
        // A body without the field is not a request to clear it.
        ("PUT", format!("{b}/conversations/x/model"), Some("{}".into()), 400),
    ];
    for (method, url, body, status) in cases {
        let a = send(method, &url, body.as_deref(), &[]);
        assert_eq!(a.status, status, "{method} {url} {body:?}: {}", a.text);
        assert!(
            a.body["error"].is_string() && a.body["code"].is_string(),
            "{method} {url}: not a JSON error: {}",
            a.text
        );
    }
    // An empty number is the parameter left out, as the original reads it.
    let empty = get(&format!("{b}/conversations/x?sinceSeq=&limit=&beforeSeq="));
    assert_eq!((empty.status, &empty.body["latestSeq"]), (200, &json!(0)), "{}", empty.text);
    // A declared length over the limit is refused before the body is
    // sent: `Expect: 100-continue` gets the 413, not a go-ahead.
    let head = format!(
        "POST /chat HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         content-length: 99999999\r\nexpect: 100-continue\r\n\r\n",
        b.trim_start_matches("http://")
    );
    let answer = raw_exchange(b, head.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    // Still serving, with CORS on errors and a preflight on any route.
    assert_eq!(get(&format!("{b}/health")).status, 200);
    let pre =
        send("OPTIONS", &format!("{b}/conversations/x/title"), None, &[("origin", "http://localhost:5173")]);
    assert_eq!(pre.status, 204);
    assert_eq!(pre.headers["access-control-allow-origin"], "http://localhost:5173");
    assert!(pre.headers["access-control-allow-methods"].to_str().unwrap().contains("DELETE"));
    let (a, _) = chat(b, json!({"message": "hi"}));
    assert_eq!(a.headers["access-control-expose-headers"], "X-Conversation-Id");
}

/// Send `bytes` on a fresh connection to `base` and read what comes back
/// until the server closes or goes quiet for a second.
fn raw_exchange(base: &str, bytes: &[u8]) -> String {
    use std::io::{Read as _, Write as _};
    let mut sock = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    sock.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// `dispatch turn` runs beside the session: pointed at the running
/// server's own configuration, it starts neither transport nor the store,
/// so it takes none of the server's ports or its database. It used to
/// start them all: with the server up, its HTTP transport could not
/// listen and its store found the database locked — both logged as errors
/// around a turn that still worked.
#[test]
fn a_one_shot_turn_beside_a_running_server_takes_neither_its_port_nor_its_store() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = product_config(&format!("addr = [\"127.0.0.1:{port}\"]"));
    let s = Server::start(&cfg);
    let (out, events) = crate::providers::turn(&cfg, &["hello"], &[("RUST_LOG", "info")]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(kinds(&events).last(), Some(&"turn-sealed"), "{}", out.stderr);
    assert_eq!(text_of(&events), "Hello from the script.");
    for bad in ["ERROR", "WARN", "listening", "store open", "already in use"] {
        assert!(!out.stderr.contains(bad), "`dispatch turn` logged {bad:?}:\n{}", out.stderr);
    }
    // The server never saw it.
    let list = get(&format!("{}/conversations", s.base));
    assert_eq!(list.body["conversations"], json!([]), "{}", list.text);
}

#[test]
fn a_non_loopback_bind_needs_a_token() {
    // Without a token (or the explicit opt-out) the transport refuses to start.
    let open = product_config("addr = [\"0.0.0.0:0\"]");
    let out = run(&["serve", "--config", open.to_str().unwrap()], &[], Duration::from_secs(60));
    assert_ne!(out.code(), 0);
    assert!(out.stderr.contains("not a loopback address"), "{}", out.stderr);

    let cfg = product_config("addr = [\"0.0.0.0:0\"]\ntoken = \"s3cret-token\"");
    let s = Server::start(&cfg);
    let health = format!("{}/health", s.base);
    let none = get(&health);
    assert_eq!(none.status, 401);
    assert_eq!(none.body["code"], "unauthorized");
    assert_eq!(send("GET", &health, None, &[("authorization", "Bearer wrong")]).status, 401);
    assert_eq!(send("GET", &health, None, &[("authorization", "Bearer s3cret-token")]).status, 200);
    // The scheme is case-insensitive (RFC 9110): `bearer` was a 401.
    assert_eq!(send("GET", &health, None, &[("authorization", "bearer s3cret-token")]).status, 200);
    // With a token, the token is the gate: any page and any host name may
    // send with it.
    let from_anywhere = send(
        "GET",
        &health,
        None,
        &[
            ("authorization", "Bearer s3cret-token"),
            ("origin", "https://app.example"),
            ("host", "dispatch.example"),
        ],
    );
    assert_eq!(from_anywhere.status, 200, "{}", from_anywhere.text);
    // Preflights carry no credentials; they are answered.
    assert_eq!(send("OPTIONS", &health, None, &[]).status, 204);

    let optout = product_config("addr = [\"0.0.0.0:0\"]\nallow_unauthenticated = true");
    let s = Server::start(&optout);
    assert_eq!(get(&format!("{}/health", s.base)).status, 200);
    assert!(s.log().contains("WITHOUT authentication"), "{}", s.log());
}

#[test]
fn conversations_survive_a_restart_and_a_sigkill_mid_turn() {
    let cfg = product_config(LOOPBACK);
    let mut s = Server::start(&cfg);
    let (a, _) = chat(&s.base, json!({"conversationId": "keep", "message": "read the notes"}));
    assert_eq!(a.status, 200);
    assert!(s.stop_with(15).success(), "SIGTERM is a clean stop");

    let mut s = Server::start(&cfg);
    let h = get(&format!("{}/conversations/keep", s.base)).body;
    assert_eq!(h["latestSeq"], 4, "{h}");
    // Killed mid-turn, after some text streamed.
    let mut stream = Stream::open(&s.base, &json!({"conversationId": "keep", "message": "slow please"}));
    stream.until("text-delta");
    s.stop_with(9);
    drop(stream);

    let s = Server::start(&cfg);
    let h = get(&format!("{}/conversations/keep", s.base)).body;
    let chunks = h["chunks"].as_array().unwrap();
    assert_gap_free(chunks);
    assert!(chunks.iter().any(|c| c["chunk"]["text"] == "slow please"), "the user message was saved at once");
    let status = get(&format!("{}/conversations/keep/status", s.base)).body;
    assert_eq!(status["status"], "idle", "nothing runs after a crash: {status}");
    let (a, events) = chat(&s.base, json!({"conversationId": "keep", "message": "hi"}));
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(text_of(&events), "Hello from the script.");
}

#[test]
fn sigterm_aborts_running_turns_and_seals_them_before_exit() {
    let cfg = product_config(LOOPBACK);
    let mut s = Server::start(&cfg);
    let mut stream = Stream::open(&s.base, &json!({"conversationId": "term", "message": "slow please"}));
    stream.until("text-delta");
    let pid = s.pid();
    unsafe_kill(pid, 15);
    let rest = stream.rest();
    let k = kinds(&rest);
    assert_eq!(k[k.len() - 2..], ["done", "turn-sealed"], "{rest:?}");
    assert_eq!(rest[rest.len() - 2]["reason"], "aborted");
    let status = s.stop_with(0);
    assert!(status.success(), "{status:?}\n{}", s.log());

    let s = Server::start(&cfg);
    let h = get(&format!("{}/conversations/term", s.base)).body;
    assert_gap_free(h["chunks"].as_array().unwrap());
    let metrics = get(&format!("{}/conversations/term/metrics", s.base)).body;
    assert_eq!(metrics["turns"].as_array().unwrap().len(), 1, "the aborted turn's metrics were saved");
}

#[test]
fn close_open_filters_extensions_and_the_static_web_directory() {
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("index.html"), "<html>app</html>").unwrap();
    std::fs::write(web.path().join("app.js"), "console.log(1)").unwrap();
    // A symlink leading out of the directory is not followed (it was).
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), "SECRET OUTSIDE").unwrap();
    std::os::unix::fs::symlink(outside.path(), web.path().join("leak.txt")).unwrap();
    // A large file is streamed with its length (it was read whole).
    std::fs::write(web.path().join("big.bin"), vec![7u8; 3 * 1024 * 1024 + 5]).unwrap();
    let http = format!(
        "addr = [\"127.0.0.1:0\"]\nweb_dir = {:?}\ncors_origins = [\"http://ui.example\"]",
        web.path().display().to_string()
    );
    let cfg = product_config(&http);
    let s = Server::start(&cfg);
    chat(&s.base, json!({"conversationId": "c-open", "message": "hi", "workspaceId": "ws1"}));
    chat(&s.base, json!({"conversationId": "c-closed", "message": "hi"}));
    let closed = post(&format!("{}/conversations/c-closed/close", s.base), "");
    assert_eq!(closed.body, json!({"conversationId": "c-closed", "abortedTurn": false}));
    let status = get(&format!("{}/conversations/c-closed/status", s.base)).body;
    assert_eq!(status["status"], "closed");
    let ids = |q: &str| -> Vec<String> {
        get(&format!("{}/conversations{q}", s.base)).body["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids("?status=closed"), ["c-closed"]);
    assert_eq!(ids("?status=idle,closed").len(), 2);
    assert_eq!(ids("?workspaceId=ws1"), ["c-open"]);
    assert_eq!(ids("?q=c-o"), ["c-open"]);
    // A closed conversation takes a new message and is idle again after it.
    chat(&s.base, json!({"conversationId": "c-closed", "message": "back"}));
    assert_eq!(get(&format!("{}/conversations/c-closed/status", s.base)).body["status"], "idle");

    // Closing a running turn aborts it; the conversation ends `closed`.
    let mut stream = Stream::open(&s.base, &json!({"conversationId": "c-run", "message": "slow please"}));
    stream.until("text-delta");
    let closed = post(&format!("{}/conversations/c-run/close", s.base), "");
    assert_eq!(closed.body["abortedTurn"], true);
    let rest = stream.rest();
    assert_eq!(rest[rest.len() - 2]["reason"], "aborted");
    assert_eq!(get(&format!("{}/conversations/c-run/status", s.base)).body["status"], "closed");

    let opened = post(&format!("{}/conversations/c-open/open", s.base), "");
    assert_eq!(opened.body, json!({"conversationId": "c-open"}));

    let ext = get(&format!("{}/extensions", s.base)).body;
    let session = ext["plugins"].as_array().unwrap().iter().find(|p| p["id"] == "session").unwrap();
    assert_eq!(session["state"], "active");

    // Listed origins are echoed, others get no allow-origin.
    let ok = send("GET", &format!("{}/health", s.base), None, &[("origin", "http://ui.example")]);
    assert_eq!(ok.headers["access-control-allow-origin"], "http://ui.example");
    let other = send("GET", &format!("{}/health", s.base), None, &[("origin", "http://evil.example")]);
    assert!(other.headers.get("access-control-allow-origin").is_none());

    // Unmatched GETs serve the web directory, falling back to index.html;
    // nothing outside it is reachable.
    let js = get(&format!("{}/app.js", s.base));
    assert_eq!((js.status, js.text.as_str()), (200, "console.log(1)"));
    assert_eq!(js.headers["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(get(&format!("{}/some/client/route", s.base)).text, "<html>app</html>");
    assert_eq!(get(&format!("{}/%2e%2e/plugins.toml", s.base)).text, "<html>app</html>");
    let leak = get(&format!("{}/leak.txt", s.base));
    assert_eq!(leak.text, "<html>app</html>", "a symlink out of web_dir was followed");
    let big = get(&format!("{}/big.bin", s.base));
    assert_eq!(big.headers["content-length"], (3 * 1024 * 1024 + 5).to_string());
    assert_eq!(big.text.len(), 3 * 1024 * 1024 + 5);
    let head = send("HEAD", &format!("{}/app.js", s.base), None, &[]);
    assert_eq!((head.status, head.text.as_str()), (200, ""));
    // API routes still win, and a POST to an unknown path is still a JSON 404.
    assert_eq!(get(&format!("{}/health", s.base)).body, json!({"ok": true}));
    assert_eq!(post(&format!("{}/nowhere", s.base), "{}").status, 404);
    // An API call this server does not have is a JSON 404, not the app's
    // index.html (one whose plugin is not loaded: openapi.rs).
    let none = get(&format!("{}/conversations/c1/nothing-here", s.base));
    assert_eq!((none.status, none.body["code"].as_str()), (404, Some("not_found")), "{}", none.text);
}

/// Regression (issue 31, HIGH): with no token, a page the user's browser
/// opens could drive the server — a "simple" `text/plain` POST needs no
/// preflight — and read every conversation (`*` CORS), and any `Host` was
/// served (DNS rebinding). Every request here is shaped as a browser sends it.
#[test]
fn a_web_page_of_another_site_can_neither_drive_nor_read_a_local_server() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let b = &s.base;
    let port = b.rsplit(':').next().unwrap().to_owned();
    let evil = [("origin", "https://evil.example")];
    let plain = ("content-type", "text/plain;charset=UTF-8");
    let body = r#"{"conversationId": "x-evil", "message": "hello", "cwd": "/"}"#;

    // A page's fetch POST without preflight: refused before anything runs.
    let r = send("POST", &format!("{b}/chat"), Some(body), &[evil[0], plain]);
    assert_eq!((r.status, r.body["code"].as_str()), (403, Some("origin_forbidden")), "{}", r.text);
    assert!(r.headers.get("access-control-allow-origin").is_none());
    // The same body as JSON from that page (after a preflight) is refused too.
    assert_eq!(send("POST", &format!("{b}/chat"), Some(body), &evil).status, 403);
    // The preflight itself does not let it through.
    let pre =
        send("OPTIONS", &format!("{b}/chat"), None, &[evil[0], ("access-control-request-method", "POST")]);
    assert!(pre.headers.get("access-control-allow-origin").is_none(), "{pre:?}");
    // Not JSON, from no page at all (curl -d): 415, nothing started.
    let r = send("POST", &format!("{b}/chat"), Some(body), &[plain]);
    assert_eq!((r.status, r.body["code"].as_str()), (415, Some("unsupported_media_type")), "{}", r.text);
    assert_eq!(
        get(&format!("{b}/conversations/x-evil/status")).status,
        404,
        "a refused request started a turn"
    );

    // Every other state-changing route is closed to it: the template, a reload.
    let before = get(&format!("{b}/system-prompt")).body;
    let put =
        send("PUT", &format!("{b}/system-prompt"), Some(r#"{"template":"[file:x]"}"#), &[evil[0], plain]);
    assert_eq!(put.status, 403);
    assert_eq!(get(&format!("{b}/system-prompt")).body, before);
    assert_eq!(send("POST", &format!("{b}/admin/plugins/reload"), None, &evil).status, 403);

    // Reads: a foreign page gets neither the answer nor a CORS grant.
    chat(b, json!({"conversationId": "mine", "message": "hi"}));
    let read = send("GET", &format!("{b}/conversations"), None, &evil);
    assert_eq!(read.status, 403);
    assert!(!read.text.contains("mine") && read.headers.get("access-control-allow-origin").is_none());

    // DNS rebinding: the page's own name resolving to 127.0.0.1 makes its
    // requests same-origin; the Host it names is refused.
    let rebound = format!("rebind.evil.example:{port}");
    let r = send("GET", &format!("{b}/conversations"), None, &[("host", &rebound)]);
    assert_eq!((r.status, r.body["code"].as_str()), (403, Some("host_forbidden")), "{}", r.text);
    // A second Host does not slip past a check of the first.
    let local_host = format!("localhost:{port}");
    let r = send("GET", &format!("{b}/conversations"), None, &[("host", &local_host), ("host", &rebound)]);
    assert_eq!(r.status, 403, "{}", r.text);
    let origin = format!("http://{rebound}");
    let r = send("POST", &format!("{b}/chat"), Some(body), &[("host", &rebound), ("origin", &origin)]);
    assert_eq!(r.status, 403);

    // This machine's pages and clients that are not browsers are served, and
    // an allowed page is granted its own origin — never `*`.
    let local = [("origin", "http://localhost:5173")];
    let ok = send("GET", &format!("{b}/conversations"), None, &local);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.headers["access-control-allow-origin"], "http://localhost:5173");
    let host = format!("localhost:{port}");
    assert_eq!(send("GET", &format!("{b}/health"), None, &[("host", &host)]).status, 200);
    let (a, events) = chat(b, json!({"conversationId": "from-local", "message": "hi"}));
    assert_eq!(a.status, 200);
    assert_eq!(kinds(&events).last(), Some(&"turn-sealed"));
    let r = send("POST", &format!("{b}/conversations/from-local/queue"), Some(r#"{"text":"more"}"#), &local);
    assert_eq!(r.status, 200, "{}", r.text);
    // A bodyless POST (the frontend's close) needs no content type.
    let url = format!("{b}/conversations/from-local/close");
    let close = rt().block_on(http_client::send("POST", &url, &local, None)).unwrap();
    assert_eq!(close.status, 200);
}

/// Regression (issue 31, HIGH): `[file:…]` read beneath whatever working
/// directory a request chose — `cwd: "/"` put any file of the machine in
/// front of the model. It reads only beneath the session's own default
/// directory (the plugin's `file_roots` by default).
#[test]
fn the_prompts_file_variable_reads_nothing_outside_its_roots_whatever_cwd_a_request_names() {
    use dispatch_test_support::mock_openai::*;
    let reply = || Reply::sse(&[text_chunk("ok"), finish_chunk("stop")]);
    let mock = MockServer::start(vec![reply(), reply(), reply()]);
    let cfg = product_config(LOOPBACK);
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("notes.txt"), "PRIVATE KEY MATERIAL").unwrap();
    let url = mock.base_url();
    let s = Server::start_with(
        &cfg,
        &[("DISPATCH_BASE_URL", &url), ("DISPATCH_API_KEY", "sk-test"), ("DISPATCH_MODEL", "mock-model")],
    );
    let template = r#"{"template":"Notes: [file:notes.txt] Host: [file:etc/hostname]"}"#;
    assert_eq!(send("PUT", &format!("{}/system-prompt", s.base), Some(template), &[]).status, 200);
    let turn = |id: &str, cwd: Option<&str>| {
        let mut body = json!({"conversationId": id, "message": "hi", "model": "openai/mock-model"});
        if let Some(c) = cwd {
            body["cwd"] = json!(c);
        }
        let (a, _) = chat(&s.base, body);
        assert_eq!(a.status, 200, "{}", a.text);
    };
    turn("in-root", None);
    turn("outside", Some(elsewhere.path().to_str().unwrap()));
    turn("slash", Some("/"));
    let prompts: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r.body["messages"][0]["content"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(prompts[0], "Notes: hello from the notes Host: ");
    assert_eq!(prompts[1], "Notes:  Host: ", "a directory outside the roots was read");
    assert_eq!(prompts[2], "Notes:  Host: ", "cwd / widened the template's reach");
}

/// Regression (issue 31): `stop` answered `abortedTurn: true` while the
/// turn was still winding down, and a message sent at once got `409` for
/// 6–13 ms (30 of 40 immediate retries). `stop` now answers once the turn
/// has sealed.
#[test]
fn a_message_sent_as_soon_as_stop_answers_is_never_refused() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    for round in 0..10 {
        let id = format!("stop-{round}");
        let mut stream = Stream::open(&s.base, &json!({"conversationId": id, "message": "slow please"}));
        stream.until("text-delta");
        let stop = post(&format!("{}/conversations/{id}/stop", s.base), "");
        assert_eq!(stop.body["abortedTurn"], true);
        let again = send(
            "POST",
            &format!("{}/chat", s.base),
            Some(&json!({"conversationId": id, "message": "hi"}).to_string()),
            &[],
        );
        assert_eq!(again.status, 200, "round {round}: {}", again.text);
        drop(stream);
    }
}

/// Regression (issue 31): a queued text over the store's chunk limit was
/// accepted with `200` and then sat in the queue forever; it is refused
/// when sent (`413`), over HTTP and the WebSocket alike, and one within the
/// limit is carried into the next turn.
#[test]
fn a_message_the_store_cannot_keep_is_refused_when_it_is_sent_not_lost_later() {
    let cfg = product_config_with(
        LOOPBACK,
        LOOPBACK,
        &[("libdispatch_plugin_store_sqlite.so", "max_chunk_bytes = 65536".to_owned())],
    );
    let s = Server::start(&cfg);
    let big = "x".repeat(100_000);
    // Sent as a turn: refused before the turn starts.
    let (a, _) = chat(&s.base, json!({"conversationId": "q-big", "message": big}));
    assert_eq!((a.status, a.body["code"].as_str()), (413, Some("payload_too_large")), "{}", a.text);
    // Queued behind a running turn: refused too, and nothing waits.
    let mut stream = Stream::open(&s.base, &json!({"conversationId": "q-big", "message": "slow please"}));
    stream.until("text-delta");
    let queued = send(
        "POST",
        &format!("{}/conversations/q-big/queue", s.base),
        Some(&json!({"text": big}).to_string()),
        &[],
    );
    assert_eq!(queued.status, 413, "{}", queued.text);
    let ok = send(
        "POST",
        &format!("{}/conversations/q-big/queue", s.base),
        Some(&json!({"text": "y".repeat(40_000)}).to_string()),
        &[],
    );
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.body["queue"].as_array().unwrap().len(), 1);
    drop(stream);
    // The one that fits reaches the history (steered or carried), whole.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let chunks = get(&format!("{}/conversations/q-big", s.base)).body["chunks"].clone();
        let kept =
            chunks.as_array().unwrap().iter().any(|c| {
                c["role"] == "user" && c["chunk"]["text"].as_str().is_some_and(|t| t.len() == 40_000)
            });
        if kept {
            break;
        }
        assert!(Instant::now() < deadline, "the queued message never reached the history: {chunks}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut ws = rt().block_on(dispatch_test_support::ws_client::WsClient::connect(&s.ws())).unwrap();
    rt().block_on(async {
        ws.send(&json!({"type": "chat.queue", "conversationId": "q-big", "text": big})).await;
        let errors = ws.until(|m| m["type"] == "chat.error").await;
        let error = errors.last().unwrap();
        assert!(error["message"].as_str().unwrap().contains("over the store's limit"), "{error}");
    });
}

/// Regression (issue 31): a 1.5 MB image was refused ("chunk over the
/// limit") though request bodies of 8 MiB carry images; an image close to
/// the body limit is stored and read back whole.
#[test]
fn an_image_near_the_body_limit_is_kept_whole() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let data = format!("data:image/png;base64,{}", "A".repeat(7 * 1024 * 1024));
    let body = json!({"conversationId": "img", "message": "look", "images": [{"url": data, "mimeType": "image/png"}]});
    let (a, events) = chat(&s.base, body);
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(kinds(&events).last(), Some(&"turn-sealed"));
    assert!(!events.iter().any(|e| e["type"] == "error"), "{events:?}");
    let chunks = get(&format!("{}/conversations/img", s.base)).body["chunks"].clone();
    let image =
        chunks.as_array().unwrap().iter().find(|c| c["chunk"]["type"] == "image").expect("an image chunk");
    assert_eq!(image["chunk"]["url"].as_str().unwrap().len(), data.len());
}

/// Regression (issue 31): `PUT …/title` took any size (7 MiB titles made
/// a 36.7 MB conversation list); a title is cut to 200 characters.
#[test]
fn a_title_is_bounded() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    chat(&s.base, json!({"conversationId": "t-long", "message": "hi"}));
    let long = "t".repeat(1024 * 1024);
    let r = send(
        "PUT",
        &format!("{}/conversations/t-long/title", s.base),
        Some(&json!({"title": long}).to_string()),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let title = r.body["title"].as_str().unwrap().to_owned();
    assert_eq!(title.chars().count(), 201, "200 characters and an ellipsis");
    let list = get(&format!("{}/conversations", s.base));
    assert!(list.text.len() < 4096, "{} bytes", list.text.len());
    assert_eq!(list.body["conversations"][0]["title"], title.as_str());
}

/// Regression (issue 31): a reload that removes `transport-http`, asked
/// through its own endpoint, hung 5 s and answered nothing: it answers
/// (`202`) as the transport stops, and the rest of the server goes on.
#[test]
fn a_reload_that_removes_the_http_transport_answers_before_it_goes() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let ws = s.ws();
    let text = std::fs::read_to_string(&*cfg).unwrap();
    let without: String = {
        let blocks: Vec<&str> = text.split("\n[[plugin]]").collect();
        let mut out = blocks[0].to_owned();
        for b in &blocks[1..] {
            if !b.contains("libdispatch_plugin_transport_http.so") {
                out.push_str("\n[[plugin]]");
                out.push_str(b);
            }
        }
        out
    };
    assert!(!without.contains("transport_http"));
    std::fs::write(&*cfg, without).unwrap();
    let started = Instant::now();
    let r = post(&format!("{}/admin/plugins/reload", s.base), "");
    assert_eq!(r.status, 202, "{}", r.text);
    assert!(started.elapsed() < Duration::from_secs(4), "answered after {:?}", started.elapsed());
    assert_eq!(r.body["reloading"], true);
    // The server is still up: its WebSocket answers.
    let mut client = rt().block_on(dispatch_test_support::ws_client::WsClient::connect(&ws)).unwrap();
    let first = rt().block_on(client.next());
    assert_eq!(first["type"], "catalog", "{first}");
}

/// A turn's history comes from the session's memory when nothing was
/// written since the last turn sealed (issue 31: every turn read the whole
/// history back from the store). What the model is sent must be exactly
/// what a read from the store gives — checked across a restart, which
/// starts from the store.
#[test]
fn the_history_kept_between_turns_is_exactly_the_stored_history() {
    use dispatch_test_support::mock_openai::*;
    let call = Reply::sse(&[
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_a",
            "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"notes.txt\"}"}}]},
            "finish_reason": null}]}),
        finish_chunk("tool_calls"),
    ]);
    let replies = vec![
        call,
        Reply::sse(&[text_chunk("read it"), finish_chunk("stop")]),
        Reply::sse(&[text_chunk("second"), finish_chunk("stop")]),
        Reply::sse(&[text_chunk("third"), finish_chunk("stop")]),
    ];
    let mock = MockServer::start(replies);
    let cfg = product_config(LOOPBACK);
    let url = mock.base_url();
    let env = [
        ("DISPATCH_BASE_URL", url.as_str()),
        ("DISPATCH_API_KEY", "sk-test"),
        ("DISPATCH_MODEL", "mock-model"),
    ];
    let turn = |s: &Server, message: &str| {
        let body = json!({"conversationId": "kept", "message": message, "model": "openai/mock-model"});
        let (a, events) = chat(&s.base, body);
        assert_eq!(a.status, 200, "{}", a.text);
        text_of(&events)
    };
    let mut s = Server::start_with(&cfg, &env);
    assert_eq!(turn(&s, "first"), "read it");
    assert_eq!(turn(&s, "and then"), "second");
    s.stop_with(libc::SIGTERM);
    let s = Server::start_with(&cfg, &env);
    assert_eq!(turn(&s, "after a restart"), "third");
    let messages: Vec<Vec<Value>> =
        mock.requests().iter().map(|r| r.body["messages"].as_array().unwrap().clone()).collect();
    assert_eq!(messages.len(), 4);
    // Turn 2 (from memory) and turn 3 (from the store) agree on everything
    // turn 2 was sent.
    let second = &messages[2];
    let third = &messages[3];
    assert_eq!(third[..second.len()], second[..], "the kept history differs from the stored one");
    assert_eq!(third[second.len()]["content"], "second");
    assert_eq!(third[second.len() + 1]["content"], "after a restart");
}

/// Model aliases (issue 31: a newcomer's first message, sent with the web
/// frontend's built-in default model, was refused). An alias answers a
/// name no provider serves with a configured model and is listed as one;
/// it never shadows a model a provider serves; any other unknown name is
/// still a 400.
#[test]
fn a_model_alias_answers_a_name_no_provider_serves_and_shadows_none() {
    use dispatch_test_support::mock_openai::*;
    let mock = MockServer::start(vec![Reply::sse(&[text_chunk("from the mock"), finish_chunk("stop")])]);
    let models = "[plugin.config.aliases]\n\"opencode/deepseek-v4-flash\" = \"default\"\n\"fast/one\" = \"scripted/demo\"\n";
    let openai = format!(
        "[[plugin.config.credentials]]\nname = \"fast\"\nbase_url = \"{}\"\nmodels = [\"one\"]\n",
        mock.base_url()
    );
    let cfg = product_config_with(
        LOOPBACK,
        LOOPBACK,
        &[
            ("libdispatch_plugin_models.so", models.to_owned()),
            ("libdispatch_plugin_provider_openai.so", openai),
        ],
    );
    let s = Server::start(&cfg);
    let list = get(&format!("{}/models", s.base)).body;
    let names: Vec<&str> = list["models"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert!(names.contains(&"opencode/deepseek-v4-flash") && names.contains(&"fast/one"), "{list}");
    assert_eq!(list["modelInfo"]["opencode/deepseek-v4-flash"]["aliasOf"], "scripted/demo", "{list}");
    assert!(
        list["modelInfo"]["fast/one"].get("aliasOf").is_none(),
        "a served model listed as an alias: {list}"
    );

    let (a, events) = chat(&s.base, json!({"message": "hi", "model": "opencode/deepseek-v4-flash"}));
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(text_of(&events), "Hello from the script.");
    let (a, events) = chat(&s.base, json!({"message": "hi", "model": "fast/one"}));
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(text_of(&events), "from the mock", "the alias shadowed a served model");
    let (a, _) = chat(&s.base, json!({"message": "hi", "model": "opencode/other"}));
    assert_eq!((a.status, a.body["code"].as_str()), (400, Some("unknown_model")), "{}", a.text);
}
