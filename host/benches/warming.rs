//! What a cache warm costs the server, side by side with a plain turn's
//! first step, on a release build (`cargo build --release` first).
//!
//! One conversation gets 50 short scripted turns (a 100-message history);
//! then, alternating in blocks, `POST /chat/warm` on it and one-step
//! `POST /chat` turns on a twin conversation of the same length, each
//! timed and charged the server's CPU (`/proc/<pid>/task/*/schedstat`).
//! A warm does most of what a turn's first step does — resolve the model,
//! the tools, the system prompt, the history, one provider round trip —
//! but persists and streams nothing.
//!
//! `cargo bench -p dispatch-host --bench warming [-- N]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use dispatch_test_support::bench::{cpu_ns, free_port, median, release_dir, spawn_release_serve};
use dispatch_test_support::{http_client, scripted_config};

fn main() {
    let n = std::env::args().skip(1).find_map(|a| a.parse::<usize>().ok()).unwrap_or(300).max(20);
    assert!(release_dir().join("dispatch").exists(), "build first: cargo build --release");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.json");
    std::fs::write(&script, r#"{"replies": [{"steps": [{"text": "A short answer."}]}]}"#).unwrap();
    let port = free_port();
    let cfg = scripted_config(&release_dir(), dir.path(), &script, (port, 0), &[]);
    let mut child = spawn_release_serve(&cfg);
    let pid = child.id();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    rt.block_on(http_client::wait_ok(&format!("{base}/health"), Duration::from_secs(30)));
    let turn = |id: &str| {
        let body = format!(r#"{{"conversationId": "{id}", "message": "go on"}}"#);
        rt.block_on(async {
            let mut r = http_client::post_json(&format!("{base}/chat"), &body).await.unwrap();
            assert_eq!(r.status, 200);
            while r.next_chunk().await.is_some() {}
        })
    };
    for _ in 0..50 {
        turn("warm");
        turn("turns");
    }
    let warm = || {
        rt.block_on(async {
            let r = http_client::post_json(&format!("{base}/chat/warm"), r#"{"conversationId": "warm"}"#)
                .await
                .unwrap();
            assert_eq!(r.status, 200);
        })
    };
    let (mut warms, mut turns) = (Vec::new(), Vec::new());
    let (mut warm_cpu, mut turn_cpu) = (0u64, 0u64);
    for block in 0..n / 10 {
        let _ = block;
        let c = cpu_ns(pid);
        for _ in 0..10 {
            let t = Instant::now();
            warm();
            warms.push(t.elapsed().as_secs_f64() * 1e6);
        }
        warm_cpu += cpu_ns(pid) - c;
        let c = cpu_ns(pid);
        for _ in 0..10 {
            let t = Instant::now();
            turn("turns");
            turns.push(t.elapsed().as_secs_f64() * 1e6);
        }
        turn_cpu += cpu_ns(pid) - c;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let count = warms.len() as f64;
    let (w, t) = (warm_cpu as f64 / 1e3 / count, turn_cpu as f64 / 1e3 / count);
    println!("build: {}", release_dir().display());
    println!("POST /chat/warm:           median {:8.1} µs, server CPU {w:7.1} µs per call", median(warms));
    println!("POST /chat, one-step turn: median {:8.1} µs, server CPU {t:7.1} µs per turn", median(turns));
    println!("a warm costs {:.2}x a one-step turn's server CPU", w / t);
}
