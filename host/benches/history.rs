//! A long conversation's turns, on a release build of the bundled plugins
//! (`cargo build --release` first): N turns (default 2000) one after
//! another in one conversation, each a short scripted answer, timed from
//! `POST /chat` to the end of its stream. A turn used to read the whole
//! history back from the store, so turns grew slower as the conversation
//! grew (issue 31: 12 → 83 ms over 2000 turns); the session now keeps it.
//! Prints the median of the first and the last 100 turns.
//!
//! Point `DISPATCH_BENCH_RELEASE` at another build directory to measure it
//! side by side.
//!
//! `cargo bench -p dispatch-host --bench history [-- TURNS]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use dispatch_test_support::bench::{free_port, median, release_dir, spawn_release_serve};
use dispatch_test_support::{http_client, scripted_config};

fn main() {
    let turns = std::env::args().skip(1).find_map(|a| a.parse::<usize>().ok()).unwrap_or(2000).max(200);
    assert!(release_dir().join("dispatch").exists(), "build first: cargo build --release");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.json");
    std::fs::write(&script, r#"{"replies": [{"steps": [{"text": "A short answer of a few words."}]}]}"#)
        .unwrap();
    let port = free_port();
    let cfg = scripted_config(&release_dir(), dir.path(), &script, (port, 0), &[]);
    let mut child = spawn_release_serve(&cfg);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(http_client::wait_ok(&format!("http://127.0.0.1:{port}/health"), Duration::from_secs(30)));
    let url = format!("http://127.0.0.1:{port}/chat");
    let body = r#"{"conversationId": "long", "message": "go on, a few words more"}"#;
    let times: Vec<f64> = rt.block_on(async {
        let mut times = Vec::with_capacity(turns);
        for _ in 0..turns {
            let started = Instant::now();
            let mut r = http_client::post_json(&url, body).await.unwrap();
            assert_eq!(r.status, 200);
            while r.next_chunk().await.is_some() {}
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
        times
    });
    child.kill().unwrap();
    child.wait().unwrap();
    println!("build: {}", release_dir().display());
    println!(
        "{turns} turns in one conversation: median turn {:.2} ms over the first 100, {:.2} ms over the last 100",
        median(times[..100].to_vec()),
        median(times[turns - 100..].to_vec())
    );
}
