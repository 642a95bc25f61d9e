//! What observability costs a step, side by side: the same agent task — a
//! turn of STEPS model steps, each calling `read_file`, against a local
//! OpenAI-compatible mock — on four `dispatch serve` processes run at once
//! and used in turn, round by round:
//!
//! * **off**: the plugins of the peer bench (models, provider-openai,
//!   store-sqlite, tool-read-file, session, transport-http) and surfaces;
//! * **metrics**, **traces**: the same with one of them;
//! * **traces + metrics**: the same with `traces` and `metrics`;
//! * **+ otel, no endpoint**: and `otel` loaded with no OTLP endpoint;
//! * **+ otel exporting**: `otel` exporting to a local OTLP sink.
//!
//! Each figure is the server's on-CPU time per step (every thread, from
//! `/proc/<pid>/task/*/schedstat`); ratios are against "off", the median
//! of the per-round ratios. The session publishes its `session.trace` facts
//! in every configuration, so "off" includes that (what subscribers do
//! with them is the difference).
//!
//! `cargo build --release --workspace && cargo bench -p dispatch-host --bench telemetry [-- STEPS ROUNDS]`
//! (defaults 100 9).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dispatch_test_support::bench::{cpu_ns, free_port, median, release_dir};
use dispatch_test_support::http_client;
use dispatch_test_support::mock_openai::{finish_chunk, text_chunk, MockServer, Reply};
use serde_json::json;

/// One model step that calls `read_file`, as streamed chunks with usage.
fn tool_step(i: usize) -> Reply {
    Reply::sse(&[
        json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "mock-model",
               "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [{"index": 0,
               "id": format!("call_{i}"), "type": "function",
               "function": {"name": "read_file", "arguments": "{\"path\":\"f.txt\"}"}}]},
               "finish_reason": null}]}),
        json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "mock-model",
               "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
               "usage": {"prompt_tokens": 1000 + i, "completion_tokens": 12,
                         "prompt_tokens_details": {"cached_tokens": 900}}}),
    ])
}

fn config(dir: &Path, port: u16, extra: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("f.txt"), "ok").unwrap();
    let mut plugins = vec![
        ("libdispatch_plugin_surfaces.so".to_owned(), String::new()),
        ("libdispatch_plugin_models.so".to_owned(), String::new()),
        ("libdispatch_plugin_provider_openai.so".to_owned(), String::new()),
        ("libdispatch_plugin_store_sqlite.so".to_owned(), String::new()),
        ("libdispatch_plugin_tool_read_file.so".to_owned(), String::new()),
        (
            "libdispatch_plugin_session.so".to_owned(),
            format!("default_cwd = {:?}", dir.display().to_string()),
        ),
    ];
    for e in extra {
        plugins.push(((*e).to_owned(), String::new()));
    }
    plugins
        .push(("libdispatch_plugin_transport_http.so".to_owned(), format!("addr = [\"127.0.0.1:{port}\"]")));
    dispatch_test_support::bench::write_plugins_toml(dir, &plugins)
}

/// An OTLP/HTTP sink: answers every request `200` with an empty protobuf
/// body, on a thread per connection.
fn otlp_sink() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if out.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

struct Server {
    label: &'static str,
    child: Child,
    port: u16,
    per_step: Vec<f64>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let steps = args.first().copied().unwrap_or(100);
    let rounds = args.get(1).copied().unwrap_or(9);
    let mock = MockServer::start(Vec::new());
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("http://127.0.0.1:{}", otlp_sink());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let setups: [(&'static str, &[&str], Option<&str>); 6] = [
        ("off", &[], None),
        ("metrics", &["libdispatch_plugin_metrics.so"], None),
        ("traces", &["libdispatch_plugin_traces.so"], None),
        ("traces + metrics", &["libdispatch_plugin_traces.so", "libdispatch_plugin_metrics.so"], None),
        (
            "+ otel, no endpoint",
            &["libdispatch_plugin_traces.so", "libdispatch_plugin_metrics.so", "libdispatch_plugin_otel.so"],
            None,
        ),
        (
            "+ otel exporting",
            &["libdispatch_plugin_traces.so", "libdispatch_plugin_metrics.so", "libdispatch_plugin_otel.so"],
            Some(sink.as_str()),
        ),
    ];
    let mut servers: Vec<Server> = setups
        .iter()
        .enumerate()
        .map(|(i, (label, extra, endpoint))| {
            let port = free_port();
            let cfg = config(&dir.path().join(format!("s{i}")), port, extra);
            let mut cmd = Command::new(release_dir().join("dispatch"));
            cmd.args(["serve", "--config", cfg.to_str().unwrap()])
                .env("DISPATCH_BASE_URL", mock.base_url())
                .env("DISPATCH_API_KEY", "bench")
                .env("DISPATCH_MODEL", "mock-model")
                .env("RUST_LOG", "warn")
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            if let Some(e) = endpoint {
                cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", e);
            }
            let child = cmd.spawn().unwrap();
            rt.block_on(http_client::wait_ok(
                &format!("http://127.0.0.1:{port}/health"),
                Duration::from_secs(30),
            ));
            Server { label, child, port, per_step: Vec::new() }
        })
        .collect();

    let turn = |s: &Server, name: &str| -> f64 {
        for i in 0..steps {
            mock.push(tool_step(i));
        }
        mock.push(Reply::sse(&[text_chunk("done"), finish_chunk("stop")]));
        let before = cpu_ns(s.child.id());
        rt.block_on(async {
            let body =
                json!({"conversationId": name, "message": "go", "model": "openai/mock-model"}).to_string();
            let mut r =
                http_client::post_json(&format!("http://127.0.0.1:{}/chat", s.port), &body).await.unwrap();
            assert_eq!(r.status, 200);
            let mut last = Vec::new();
            while let Some(c) = r.next_chunk().await {
                last = c.to_vec();
            }
            assert!(String::from_utf8_lossy(&last).contains("turn-sealed"));
        });
        // The subscribers (the traces writer, the exporter) finish after
        // the stream: let them, so their work lands in this turn.
        std::thread::sleep(Duration::from_millis(300));
        (cpu_ns(s.child.id()) - before) as f64 / 1e3 / (steps + 1) as f64
    };
    // One warm-up turn each.
    for s in &servers {
        turn(s, "warm-up");
    }
    let n = servers.len();
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); n];
    for round in 0..rounds {
        let mut this = vec![0.0; n];
        for k in 0..n {
            // A different server first each round.
            let i = (round + k) % n;
            this[i] = turn(&servers[i], &format!("r{round}"));
        }
        for i in 0..n {
            servers[i].per_step.push(this[i]);
            ratios[i].push(this[i] / this[0]);
        }
    }
    println!("server CPU per step, {rounds} rounds of one {steps}-step turn each (median):");
    for (s, r) in servers.iter_mut().zip(ratios) {
        println!("  {:<22} {:>8.1} µs   {:>5.3}× off", s.label, median(s.per_step.clone()), median(r));
    }
}
