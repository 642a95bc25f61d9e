//! What routing a request through a plugin's contributed route costs, on a
//! release build of the bundled plugins (`cargo build --release` first).
//!
//! Three request kinds, one after another, a new connection each,
//! each N times (default 3000) after a warm-up:
//!
//! * `GET /health` — answered by the transport itself (no bus call): the
//!   floor of a request;
//! * `GET /conversations/c/status` — the session's route: since issue 39 a
//!   contributed route (table lookup, one bus call to the route service,
//!   which calls the session in-process); before, the transport matched the
//!   path and called the `session` service itself;
//! * `POST /chat` — a one-step scripted turn, streamed to its end: the chat
//!   path, whose events now come through the route's `pull` op.
//!
//! Prints each median latency in µs, and the server's CPU time per
//! request (every thread's, from `/proc/<pid>/task/*/schedstat`): on a
//! shared, noisy machine the latency of two builds differs by more from
//! run to run than routing can cost, while CPU time per request is steady
//! enough to compare. Point `DISPATCH_BENCH_RELEASE` at another
//! build directory (an older commit's `target/release`) to measure the
//! direct routing side by side.
//!
//! `cargo bench -p dispatch-host --bench routing [-- N]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use dispatch_test_support::bench::{cpu_ns, free_port, median, release_dir, spawn_release_serve};
use dispatch_test_support::{http_client, scripted_config};

fn main() {
    let n = std::env::args().skip(1).find_map(|a| a.parse::<usize>().ok()).unwrap_or(3000).max(100);
    assert!(release_dir().join("dispatch").exists(), "build first: cargo build --release");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.json");
    std::fs::write(&script, r#"{"replies": [{"steps": [{"text": "Done."}]}]}"#).unwrap();
    let port = free_port();
    let cfg = scripted_config(&release_dir(), dir.path(), &script, (port, 0), &[]);
    let mut child = spawn_release_serve(&cfg);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    rt.block_on(http_client::wait_ok(&format!("{base}/health"), Duration::from_secs(30)));

    let pid = child.id();
    let timed_get = |url: String, expect: u16| {
        let cpu_before = cpu_ns(pid);
        let median = rt.block_on(async {
            let mut times = Vec::with_capacity(n);
            for i in 0..n + n / 10 {
                let started = Instant::now();
                let r = http_client::send("GET", &url, &[], None).await.unwrap();
                assert_eq!(r.status, expect, "{url}");
                if i >= n / 10 {
                    times.push(started.elapsed().as_secs_f64() * 1e6);
                }
            }
            median(times)
        });
        (median, (cpu_ns(pid) - cpu_before) as f64 / 1e3 / (n + n / 10) as f64)
    };
    let health = timed_get(format!("{base}/health"), 200);
    // An unknown conversation: the session answers 404 after its lookup.
    let status = timed_get(format!("{base}/conversations/c/status"), 404);
    let variables = timed_get(format!("{base}/system-prompt/variables"), 200);
    let history = timed_get(format!("{base}/conversations/c?limit=5"), 200);
    let turns = n / 5;
    let cpu_before = cpu_ns(pid);
    let chat = rt.block_on(async {
        let mut times = Vec::with_capacity(turns);
        for i in 0..turns + turns / 10 {
            let body = format!(r#"{{"conversationId": "r{i}", "message": "go"}}"#);
            let started = Instant::now();
            let mut r = http_client::post_json(&format!("{base}/chat"), &body).await.unwrap();
            assert_eq!(r.status, 200);
            while r.next_chunk().await.is_some() {}
            if i >= turns / 10 {
                times.push(started.elapsed().as_secs_f64() * 1e6);
            }
        }
        median(times)
    });
    let chat_cpu = (cpu_ns(pid) - cpu_before) as f64 / 1e3 / (turns + turns / 10) as f64;
    child.kill().unwrap();
    child.wait().unwrap();
    println!("build: {}", release_dir().display());
    let line = |what: &str, (lat, cpu): (f64, f64), count: usize| {
        println!("{what:42} median {lat:8.1} µs, server CPU {cpu:7.1} µs per request, over {count}");
    };
    line("GET /health (the transport's own)", health, n);
    line("GET /conversations/c/status (session)", status, n);
    line("GET /system-prompt/variables", variables, n);
    line("GET /conversations/c (store)", history, n);
    line("POST /chat, a one-step turn to its end", (chat, chat_cpu), turns);
}
