//! The same store workload for every store, measured through the bus as
//! the session calls a store (each store's `benches/workload.rs` runs it;
//! `scripts/bench-stores` runs them side by side and prints the ratios).

use std::time::Instant;

use dispatch_abi::Host;
use dispatch_contracts::protocol::wire::{Chunk, Role};
use dispatch_contracts::store::{History, StoreRequest, STORE};
use dispatch_testkit::TestHost;

/// Runs of each measurement; the median is reported.
pub const RUNS: usize = 5;

fn chunk(i: usize) -> Chunk {
    Chunk::text(format!("chunk {i}: {}", "lorem ipsum dolor sit amet ".repeat(4)))
}

fn append(host: &Host, id: &str, chunks: &[Chunk]) {
    let req = StoreRequest::Append {
        conversation_id: id.to_owned(),
        role: Role::Assistant,
        turn_id: Some("t".into()),
        chunks: chunks.to_vec(),
    };
    futures::executor::block_on(host.call(&STORE, &req)).expect("an append");
}

/// Chunks appended per second by `writers` threads, each on its own
/// conversation (or all on one when `shared`), `messages` in all of
/// `per_message` chunks.
fn appends(
    h: &TestHost,
    tag: &str,
    writers: usize,
    shared: bool,
    messages: usize,
    per_message: usize,
) -> f64 {
    let chunks: Vec<Chunk> = (0..per_message).map(chunk).collect();
    let started = Instant::now();
    std::thread::scope(|s| {
        for w in 0..writers {
            let (host, chunks) = (h.host().clone(), &chunks);
            let id = if shared { format!("{tag}-shared") } else { format!("{tag}-{w}") };
            s.spawn(move || {
                for _ in 0..messages / writers {
                    append(&host, &id, chunks);
                }
            });
        }
    });
    (messages / writers * writers * per_message) as f64 / started.elapsed().as_secs_f64()
}

fn history_ms(h: &TestHost, id: &str) -> f64 {
    let req =
        StoreRequest::History { conversation_id: id.into(), since_seq: None, before_seq: None, limit: None };
    let started = Instant::now();
    let v = h.call(&STORE, &req).expect("a history");
    let history: History = serde_json::from_value(v).expect("a history");
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(history.chunks.len(), 10_000);
    ms
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The workload's measurements on the store active in `h`, by name:
/// appends from 200 writers (1- and 20-chunk messages), one writer, and
/// 8 writers on one conversation (chunks/s); a 10 000-chunk history read
/// (ms). Medians of [`RUNS`].
pub fn measure(h: &TestHost) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let cases: [(&str, usize, bool, usize, usize); 4] = [
        ("200 writers, 1-chunk messages (chunks/s)", 200, false, 4000, 1),
        ("200 writers, 20-chunk messages (chunks/s)", 200, false, 800, 20),
        ("1 writer, 1-chunk messages (chunks/s)", 1, false, 1000, 1),
        ("8 writers on one conversation (chunks/s)", 8, true, 2000, 1),
    ];
    for (name, writers, shared, messages, per) in cases {
        let rates: Vec<f64> = (0..RUNS)
            .map(|r| appends(h, &format!("w{r}-{writers}-{per}"), writers, shared, messages, per))
            .collect();
        out.push((name.to_owned(), median(rates)));
    }
    let chunks: Vec<Chunk> = (0..20).map(chunk).collect();
    for _ in 0..500 {
        append(h.host(), "long", &chunks);
    }
    out.push((
        "history of 10 000 chunks (ms)".to_owned(),
        median((0..RUNS).map(|_| history_ms(h, "long")).collect()),
    ));
    out
}

/// Print `measure`'s results as `name<TAB>value` lines (what
/// `scripts/bench-stores` reads).
pub fn print(results: &[(String, f64)]) {
    for (name, value) in results {
        println!("{name}\t{value:.1}");
    }
}
