//! One conversation streamed to many WebSocket watchers, on the release
//! build of the bundled plugins (`cargo build --release` first).
//!
//! Each round: W clients connect to the WebSocket and `chat.subscribe` one
//! conversation, then one NDJSON client starts a turn of D text deltas
//! (`POST /chat`, the scripted model) and reads it. Every receiver notes
//! when each event arrives. Two kinds of turn:
//!
//! * **burst** — the deltas with no delay (the whole turn is produced in a
//!   few milliseconds): **deliveries/s**, W × events over the time from the
//!   first event anywhere to the last delivery;
//! * **paced** — a delta every millisecond (faster than any model streams):
//!   **delivery lag**, per event and watcher, how long after the event's
//!   *first* arrival at any receiver (the NDJSON reader included) that
//!   watcher got it — the cost of fanning out — p50 / p99.
//!
//! Side by side, the same turns with the NDJSON reader alone: its events/s
//! and the turn's time from first event to `turn-sealed`. Medians over
//! rounds.
//!
//! `cargo bench -p dispatch-host --bench fanout [-- WATCHERS DELTAS ROUNDS]`
//! (defaults 100 2000 5).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use dispatch_test_support::bench::{
    free_port, median, percentile as pct, release_dir, spawn_release_serve as spawn,
};
use dispatch_test_support::{http_client, scripted_config};
use futures::StreamExt as _;
use tokio_tungstenite::tungstenite::Message;

/// Arrival times of a turn's events at one receiver, in order.
type Arrivals = Vec<Instant>;

/// A watcher: connect, subscribe, then note each `chat.delta` until
/// `turn-sealed`. Answers once subscribed (the first future) and the
/// arrivals (the join handle).
async fn watcher(ws: String, conversation: String) -> tokio::task::JoinHandle<Arrivals> {
    let (mut stream, _) = tokio_tungstenite::connect_async(ws.as_str()).await.unwrap();
    let sub = format!(r#"{{"type":"chat.subscribe","conversationId":"{conversation}"}}"#);
    futures::SinkExt::send(&mut stream, Message::Text(sub.into())).await.unwrap();
    tokio::spawn(async move {
        let mut arrivals = Vec::new();
        while let Some(m) = stream.next().await {
            let Message::Text(t) = m.unwrap() else { continue };
            let t = t.as_str();
            if t.starts_with(r#"{"type":"chat.delta""#) {
                arrivals.push(Instant::now());
                if t.contains(r#""type":"turn-sealed""#) {
                    break;
                }
            }
        }
        arrivals
    })
}

/// The NDJSON client: start the turn and note each event's arrival.
async fn ndjson(port: u16, conversation: &str, message: &str) -> Arrivals {
    let body = format!(r#"{{"message": "{message}", "conversationId": "{conversation}"}}"#);
    let mut r = http_client::post_json(&format!("http://127.0.0.1:{port}/chat"), &body).await.unwrap();
    assert_eq!(r.status, 200);
    let mut arrivals = Vec::new();
    while let Some(chunk) = r.next_chunk().await {
        let now = Instant::now();
        arrivals.extend(std::iter::repeat_n(now, chunk.iter().filter(|b| **b == b'\n').count()));
    }
    arrivals
}

struct Round {
    deliveries_per_s: f64,
    lag_p50: f64,
    lag_p99: f64,
    turn_ms: f64,
    ndjson_events_per_s: f64,
}

async fn round(port: u16, ws: &str, watchers: usize, id: &str, message: &str) -> Round {
    let mut handles = Vec::new();
    for _ in 0..watchers {
        handles.push(watcher(ws.to_owned(), id.to_owned()).await);
    }
    // Let the subscriptions land before the turn starts (a late one would
    // be replayed, which is not what is measured here).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reference = ndjson(port, id, message).await;
    let mut all = vec![reference.clone()];
    for h in handles {
        all.push(h.await.unwrap());
    }
    let events = reference.len();
    assert!(all.iter().all(|a| a.len() == events), "a watcher missed events");
    let first = all.iter().map(|a| a[0]).min().unwrap();
    let last = all[1..].iter().map(|a| a[events - 1]).max().unwrap_or(first);
    let mut lags = Vec::with_capacity(watchers * events);
    for i in 0..events {
        let earliest = all.iter().map(|a| a[i]).min().unwrap();
        lags.extend(all[1..].iter().map(|a| (a[i] - earliest).as_secs_f64() * 1e3));
    }
    lags.sort_by(f64::total_cmp);
    let turn = (reference[events - 1] - reference[0]).as_secs_f64();
    Round {
        deliveries_per_s: (watchers * events) as f64 / (last - first).as_secs_f64().max(1e-9),
        lag_p50: if lags.is_empty() { 0.0 } else { pct(&lags, 0.5) },
        lag_p99: if lags.is_empty() { 0.0 } else { pct(&lags, 0.99) },
        turn_ms: turn * 1e3,
        ndjson_events_per_s: events as f64 / turn.max(1e-9),
    }
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let watchers = args.first().copied().unwrap_or(100);
    let deltas = args.get(1).copied().unwrap_or(2000);
    let rounds = args.get(2).copied().unwrap_or(5);
    assert!(release_dir().join("dispatch").exists(), "build first: cargo build --release");

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.json");
    let text = "x".repeat(deltas);
    std::fs::write(
        &script,
        format!(
            r#"{{"replies": [
                {{"match": "^paced", "steps": [{{"text": "{text}", "chunkChars": 1, "delayMs": 1}}]}},
                {{"steps": [{{"text": "{text}", "chunkChars": 1}}]}}]}}"#
        ),
    )
    .unwrap();
    let (port, ws_port) = (free_port(), free_port());
    let cfg = scripted_config(&release_dir(), dir.path(), &script, (port, ws_port), &[]);
    let mut child = spawn(&cfg);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(http_client::wait_ok(&format!("http://127.0.0.1:{port}/health"), Duration::from_secs(30)));
    let ws = format!("ws://127.0.0.1:{ws_port}");

    rt.block_on(round(port, &ws, 4, "warm-up", "burst"));
    let (mut fan, mut alone, mut paced, mut paced_alone) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        fan.push(rt.block_on(round(port, &ws, watchers, &format!("fan-{r}"), "burst")));
        alone.push(rt.block_on(round(port, &ws, 0, &format!("alone-{r}"), "burst")));
        paced.push(rt.block_on(round(port, &ws, watchers, &format!("paced-{r}"), "paced")));
        paced_alone.push(rt.block_on(round(port, &ws, 0, &format!("paced-alone-{r}"), "paced")));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let m = |v: &[Round], f: fn(&Round) -> f64| median(v.iter().map(f).collect());
    println!(
        "one turn of {deltas} deltas ({} events), {watchers} WebSocket watchers + 1 NDJSON reader, median of {rounds} rounds:",
        deltas + 7
    );
    println!("burst (no delay between deltas):");
    println!("  WebSocket deliveries/s            {:>10.0}", m(&fan, |r| r.deliveries_per_s));
    println!(
        "  delivery lag p50 / p99            {:>8.2} / {:.2} ms",
        m(&fan, |r| r.lag_p50),
        m(&fan, |r| r.lag_p99)
    );
    println!(
        "  turn, first event -> sealed       {:>8.1} ms (NDJSON reader alone: {:.1} ms)",
        m(&fan, |r| r.turn_ms),
        m(&alone, |r| r.turn_ms)
    );
    println!(
        "  NDJSON reader's events/s          {:>10.0} (alone: {:.0})",
        m(&fan, |r| r.ndjson_events_per_s),
        m(&alone, |r| r.ndjson_events_per_s)
    );
    println!("paced (a delta every millisecond):");
    println!(
        "  delivery lag p50 / p99            {:>8.2} / {:.2} ms",
        m(&paced, |r| r.lag_p50),
        m(&paced, |r| r.lag_p99)
    );
    println!(
        "  turn, first event -> sealed       {:>8.1} ms (NDJSON reader alone: {:.1} ms)",
        m(&paced, |r| r.turn_ms),
        m(&paced_alone, |r| r.turn_ms)
    );
}
