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
//! Prints each median in µs. Point `DISPATCH_BENCH_RELEASE` at another
//! build directory (an older commit's `target/release`) to measure the
//! direct routing side by side.
//!
//! `cargo bench -p dispatch-host --bench routing [-- N]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use dispatch_test_support::bench::{free_port, median, release_dir, spawn_release_serve};
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

    let timed_get = |url: String, expect: u16| {
        rt.block_on(async {
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
        })
    };
    let health = timed_get(format!("{base}/health"), 200);
    // An unknown conversation: the session answers 404 after its lookup.
    let status = timed_get(format!("{base}/conversations/c/status"), 404);
    let turns = n / 5;
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
    child.kill().unwrap();
    child.wait().unwrap();
    println!("build: {}", release_dir().display());
    println!("GET /health (the transport's own):        median {health:8.1} µs over {n}");
    println!("GET /conversations/c/status (session):    median {status:8.1} µs over {n}");
    println!("POST /chat, a one-step turn to its end:   median {chat:8.1} µs over {turns}");
}
