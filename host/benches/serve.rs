//! `dispatch serve` as a client sees it, on the release build of the bundled
//! plugins (`cargo build --release` first):
//!
//! * **streams**: N concurrent `POST /chat` against the scripted model with
//!   no delays, each turn streaming D text deltas — events/s delivered,
//!   p50/p99 time to the first event and to `turn-sealed`, the server's
//!   peak RSS;
//! * **start-up**: process start → `/health` answers, and RSS once idle.
//!
//! `cargo bench -p dispatch-host --bench serve [-- STREAMS DELTAS ROUNDS]`
//! (defaults 200 200 5). Medians over rounds; the machine is noisy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dispatch_test_support::bench::{
    free_port, median, percentile as pct, proc_kib as mem_kib, release_dir, spawn_release_serve as spawn,
};
use dispatch_test_support::{http_client, scripted_config};

fn write_config(dir: &Path, port: u16, deltas: usize) -> PathBuf {
    let script = dir.join("script.json");
    let text = "x".repeat(deltas);
    std::fs::write(
        &script,
        format!(r#"{{"replies": [{{"steps": [{{"text": "{text}", "chunkChars": 1, "usage": {{"inputTokens": 1, "outputTokens": 1}}}}]}}]}}"#),
    )
    .unwrap();
    scripted_config(&release_dir(), dir, &script, (port, 0), &[])
}

async fn health(port: u16) -> Duration {
    http_client::wait_ok(&format!("http://127.0.0.1:{port}/health"), Duration::from_secs(30)).await
}

struct Round {
    events_per_s: f64,
    first_p50: f64,
    first_p99: f64,
    sealed_p50: f64,
    sealed_p99: f64,
}

async fn one_stream(port: u16, i: usize) -> (Duration, Duration, usize) {
    let start = Instant::now();
    let body =
        format!(r#"{{"message": "go", "conversationId": "bench-{i}-{}"}}"#, start.elapsed().as_nanos());
    let mut r = http_client::post_json(&format!("http://127.0.0.1:{port}/chat"), &body).await.unwrap();
    assert_eq!(r.status, 200);
    let mut first = None;
    let mut events = 0usize;
    let mut tail = Vec::new();
    while let Some(chunk) = r.next_chunk().await {
        first.get_or_insert_with(|| start.elapsed());
        events += chunk.iter().filter(|b| **b == b'\n').count();
        tail = chunk.to_vec();
    }
    assert!(String::from_utf8_lossy(&tail).contains("turn-sealed"));
    (first.unwrap(), start.elapsed(), events)
}

async fn streams_round(port: u16, n: usize) -> Round {
    let start = Instant::now();
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(one_stream(port, i))).collect();
    let mut firsts = Vec::new();
    let mut sealed = Vec::new();
    let mut events = 0;
    for t in tasks {
        let (f, s, e) = t.await.unwrap();
        firsts.push(f.as_secs_f64() * 1e3);
        sealed.push(s.as_secs_f64() * 1e3);
        events += e;
    }
    let wall = start.elapsed().as_secs_f64();
    firsts.sort_by(f64::total_cmp);
    sealed.sort_by(f64::total_cmp);
    Round {
        events_per_s: events as f64 / wall,
        first_p50: pct(&firsts, 0.5),
        first_p99: pct(&firsts, 0.99),
        sealed_p50: pct(&sealed, 0.5),
        sealed_p99: pct(&sealed, 0.99),
    }
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let streams = args.first().copied().unwrap_or(200);
    let deltas = args.get(1).copied().unwrap_or(200);
    let rounds = args.get(2).copied().unwrap_or(5);
    assert!(release_dir().join("dispatch").exists(), "build first: cargo build --release");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();

    // Start-up and idle RSS.
    let mut starts = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..rounds.max(5) {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = write_config(dir.path(), port, deltas);
        let mut child = spawn(&cfg);
        let took = rt.block_on(health(port));
        starts.push(took.as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(500));
        idle.push(mem_kib(child.id(), "VmRSS:") as f64 / 1024.0);
        child.kill().unwrap();
        child.wait().unwrap();
    }
    println!(
        "start-up (spawn -> /health 200): median {:.1} ms over {} starts",
        median(starts),
        rounds.max(5)
    );
    println!("idle RSS after start-up:         median {:.1} MiB", median(idle));

    // Concurrent streams.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), port, deltas);
    let mut child = spawn(&cfg);
    rt.block_on(health(port));
    rt.block_on(streams_round(port, 8)); // warm-up
    let mut results = Vec::new();
    for _ in 0..rounds {
        results.push(rt.block_on(streams_round(port, streams)));
    }
    let peak = mem_kib(child.id(), "VmHWM:") as f64 / 1024.0;
    child.kill().unwrap();
    child.wait().unwrap();
    let m = |f: fn(&Round) -> f64| median(results.iter().map(f).collect());
    println!(
        "{streams} concurrent POST /chat x {deltas} deltas ({} events each), median of {rounds} rounds:",
        deltas + 7
    );
    println!("  events delivered/s       {:>10.0}", m(|r| r.events_per_s));
    println!("  first event  p50 / p99   {:>8.1} / {:.1} ms", m(|r| r.first_p50), m(|r| r.first_p99));
    println!("  turn-sealed  p50 / p99   {:>8.1} / {:.1} ms", m(|r| r.sealed_p50), m(|r| r.sealed_p99));
    println!("  server peak RSS          {peak:>8.1} MiB");
}
