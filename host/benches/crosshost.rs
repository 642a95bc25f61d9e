//! Cross-host event latency: two `dispatch serve` hosts on one PostgreSQL
//! (store-postgres), release build (`cargo build --release` first).
//!
//! Each round: a WebSocket watcher on host A and one on host B
//! `chat.subscribe` a conversation; an NDJSON client starts a turn on A.
//! Per event, *cross-host lag* = its arrival at B's watcher minus its
//! arrival at A's watcher — what relaying through `NOTIFY` adds. Two kinds
//! of turn: **paced** like a model (a delta every 20 ms) and **burst** (all
//! deltas at once). p50 / p99 over the events, median over rounds; and the
//! lag of `turn-sealed` (in a burst B's watcher may get the deltas merged,
//! as any late reader of a turn's log does, so only the end compares).
//!
//! `cargo bench -p dispatch-host --bench crosshost [-- DELTAS ROUNDS]`
//! (defaults 200 5). PostgreSQL: `$DISPATCH_TEST_DATABASE_URL`, default
//! the machine's; a schema of its own, dropped afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use dispatch_test_support::bench::{free_port, median, percentile as pct, release_dir, spawn_release_serve};
use dispatch_test_support::pg::{use_postgres, Schema};
use dispatch_test_support::{http_client, scripted_config};
use futures::StreamExt as _;
use tokio_tungstenite::tungstenite::Message;

/// A watcher's arrival times of a turn's events, and their types.
async fn watcher(ws: String, conversation: String) -> tokio::task::JoinHandle<(Vec<Instant>, Vec<String>)> {
    let (mut stream, _) = tokio_tungstenite::connect_async(ws.as_str()).await.unwrap();
    let sub = format!(r#"{{"type":"chat.subscribe","conversationId":"{conversation}"}}"#);
    futures::SinkExt::send(&mut stream, Message::Text(sub.into())).await.unwrap();
    tokio::spawn(async move {
        let (mut arrivals, mut kinds) = (Vec::new(), Vec::new());
        while let Some(m) = stream.next().await {
            let Message::Text(t) = m.unwrap() else { continue };
            if t.as_str().starts_with(r#"{"type":"chat.delta""#) {
                arrivals.push(Instant::now());
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                kinds.push(v["event"]["type"].as_str().unwrap_or_default().to_owned());
                if t.as_str().contains(r#""type":"turn-sealed""#) {
                    break;
                }
            }
        }
        (arrivals, kinds)
    })
}

/// Per-event lag p50 and p99 (NaN when B's watcher got the turn's deltas
/// merged), and the lag of `turn-sealed`, in ms.
async fn round(port_a: u16, ws_a: &str, ws_b: &str, id: &str, message: &str) -> (f64, f64, f64) {
    let on_a = watcher(ws_a.to_owned(), id.to_owned()).await;
    let on_b = watcher(ws_b.to_owned(), id.to_owned()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = format!(r#"{{"message": "{message}", "conversationId": "{id}"}}"#);
    let mut r = http_client::post_json(&format!("http://127.0.0.1:{port_a}/chat"), &body).await.unwrap();
    assert_eq!(r.status, 200);
    while r.next_chunk().await.is_some() {}
    let ((a, kinds_a), (b, kinds_b)) = (on_a.await.unwrap(), on_b.await.unwrap());
    // The turn's end, at each host's watcher.
    let sealed = (b[b.len() - 1].saturating_duration_since(a[a.len() - 1])).as_secs_f64() * 1e3;
    if kinds_a != kinds_b {
        // B's feed began after part of the turn was in (a burst): the
        // session's log hands a late reader consecutive deltas merged, as
        // on one host. Only the end compares.
        assert_eq!(kinds_b.last().map(String::as_str), Some("turn-sealed"));
        return (f64::NAN, f64::NAN, sealed);
    }
    let mut lags: Vec<f64> =
        a.iter().zip(&b).map(|(x, y)| y.saturating_duration_since(*x).as_secs_f64() * 1e3).collect();
    lags.sort_by(f64::total_cmp);
    (pct(&lags, 0.5), pct(&lags, 0.99), sealed)
}

fn host(dir: &std::path::Path, script: &std::path::Path, schema: &Schema) -> (u16, u16, std::process::Child) {
    let (port, ws_port) = (free_port(), free_port());
    let cfg = scripted_config(&release_dir(), dir, script, (port, ws_port), &[]);
    use_postgres(&cfg, schema, "");
    (port, ws_port, spawn_release_serve(&cfg))
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let deltas = args.first().copied().unwrap_or(200);
    let rounds = args.get(1).copied().unwrap_or(5);
    assert!(release_dir().join("dispatch").exists(), "build first: cargo build --release");
    let schema = Schema::new();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let script = dir_a.path().join("script.json");
    let text = "x".repeat(deltas);
    std::fs::write(
        &script,
        format!(
            r#"{{"replies": [
                {{"match": "^paced", "steps": [{{"text": "{text}", "chunkChars": 1, "delayMs": 20}}]}},
                {{"steps": [{{"text": "{text}", "chunkChars": 1}}]}}]}}"#
        ),
    )
    .unwrap();
    let (port_a, ws_a, mut a) = host(dir_a.path(), &script, &schema);
    let (port_b, ws_b, mut b) = host(dir_b.path(), &script, &schema);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    for port in [port_a, port_b] {
        rt.block_on(http_client::wait_ok(
            &format!("http://127.0.0.1:{port}/health"),
            Duration::from_secs(30),
        ));
    }
    let (ws_a, ws_b) = (format!("ws://127.0.0.1:{ws_a}"), format!("ws://127.0.0.1:{ws_b}"));
    rt.block_on(round(port_a, &ws_a, &ws_b, "warm-up", "burst"));
    let (mut paced, mut burst) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        paced.push(rt.block_on(round(port_a, &ws_a, &ws_b, &format!("paced-{r}"), "paced")));
        burst.push(rt.block_on(round(port_a, &ws_a, &ws_b, &format!("burst-{r}"), "burst")));
    }
    for c in [&mut a, &mut b] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let m = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| {
        let kept: Vec<f64> = v.iter().map(f).filter(|x| !x.is_nan()).collect();
        if kept.is_empty() {
            f64::NAN
        } else {
            median(kept)
        }
    };
    println!("cross-host lag (B's watcher minus A's), a turn of {deltas} deltas, median of {rounds} rounds:");
    println!(
        "  paced (a delta every 20 ms)  per event p50 / p99  {:>7.2} / {:.2} ms; turn-sealed {:.2} ms",
        m(&paced, |r| r.0),
        m(&paced, |r| r.1),
        m(&paced, |r| r.2)
    );
    println!(
        "  burst (no delay)             per event p50 / p99  {:>7.2} / {:.2} ms; turn-sealed {:.2} ms",
        m(&burst, |r| r.0),
        m(&burst, |r| r.1),
        m(&burst, |r| r.2)
    );
}
