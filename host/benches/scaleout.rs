//! Turns spread over 1, 2 and 3 hosts on one PostgreSQL (store-postgres),
//! release build (`cargo build --release` first).
//!
//! For each host count: the hosts start on a fresh schema, then T turns
//! start at once, round-robin over the hosts (`POST /chat`, the scripted
//! model streaming D deltas at a model's pace, one every 20 ms), each on
//! a conversation of its own. Per turn: time to its first event and to
//! `turn-sealed`, from the moment all were sent; p50 / p99, and the wall
//! time of the whole batch. Every host, the database, the clients and
//! this program share the machine's cores: more hosts on one machine add
//! work, not capacity — the figures show what the cluster costs, not how
//! it scales across machines.
//!
//! `cargo bench -p dispatch-host --bench scaleout [-- TURNS DELTAS]`
//! (defaults 200 20).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use dispatch_test_support::bench::{free_port, percentile as pct, release_dir, spawn_release_serve};
use dispatch_test_support::pg::{use_postgres, Schema};
use dispatch_test_support::{http_client, scripted_config};

fn host(dir: &std::path::Path, script: &std::path::Path, schema: &Schema) -> (u16, std::process::Child) {
    let port = free_port();
    let cfg = scripted_config(&release_dir(), dir, script, (port, 0), &[]);
    use_postgres(&cfg, schema, "pool_size = 24\n");
    (port, spawn_release_serve(&cfg))
}

/// One turn: (first event, sealed), from `start`.
async fn turn(port: u16, id: String, start: Instant) -> (f64, f64) {
    let body = format!(r#"{{"message": "paced", "conversationId": "{id}"}}"#);
    let mut r = http_client::post_json(&format!("http://127.0.0.1:{port}/chat"), &body).await.unwrap();
    assert_eq!(r.status, 200, "turn {id}");
    let mut first = None;
    let mut text = Vec::new();
    while let Some(chunk) = r.next_chunk().await {
        first.get_or_insert_with(|| start.elapsed());
        text.extend_from_slice(&chunk);
    }
    assert!(String::from_utf8_lossy(&text).contains("\"turn-sealed\""), "turn {id} did not seal");
    (first.unwrap_or_default().as_secs_f64() * 1e3, start.elapsed().as_secs_f64() * 1e3)
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let turns = args.first().copied().unwrap_or(200);
    let deltas = args.get(1).copied().unwrap_or(20);
    assert!(release_dir().join("dispatch").exists(), "build first: cargo build --release");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!("{turns} turns at once ({deltas} deltas, one every 20 ms), round-robin over the hosts:");
    println!("{:>6} {:>22} {:>22} {:>10}", "hosts", "first event p50/p99", "sealed p50/p99", "wall");
    for hosts in 1..=3 {
        let schema = Schema::new();
        let dirs: Vec<tempfile::TempDir> = (0..hosts).map(|_| tempfile::tempdir().unwrap()).collect();
        let script = dirs[0].path().join("script.json");
        let text = "x".repeat(deltas);
        std::fs::write(
            &script,
            format!(
                r#"{{"replies": [{{"steps": [{{"text": "{text}", "chunkChars": 1, "delayMs": 20}}]}}]}}"#
            ),
        )
        .unwrap();
        let mut running: Vec<(u16, std::process::Child)> =
            dirs.iter().map(|d| host(d.path(), &script, &schema)).collect();
        for (port, _) in &running {
            rt.block_on(http_client::wait_ok(
                &format!("http://127.0.0.1:{port}/health"),
                Duration::from_secs(30),
            ));
        }
        let ports: Vec<u16> = running.iter().map(|(p, _)| *p).collect();
        let results: Vec<(f64, f64)> = rt.block_on(async {
            let start = Instant::now();
            let tasks: Vec<_> = (0..turns)
                .map(|i| tokio::spawn(turn(ports[i % ports.len()], format!("t{i}"), start)))
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        for (_, c) in &mut running {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        let mut first: Vec<f64> = results.iter().map(|r| r.0).collect();
        let mut sealed: Vec<f64> = results.iter().map(|r| r.1).collect();
        first.sort_by(f64::total_cmp);
        sealed.sort_by(f64::total_cmp);
        println!(
            "{hosts:>6} {:>10.1} / {:>7.1} ms {:>10.1} / {:>7.1} ms {:>7.0} ms",
            pct(&first, 0.5),
            pct(&first, 0.99),
            pct(&sealed, 0.5),
            pct(&sealed, 0.99),
            sealed.last().copied().unwrap_or(0.0)
        );
    }
}
