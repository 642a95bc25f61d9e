//! The limiter's own cost per provider request: a slot taken and given
//! back (acquire, release, free, pump), uncontended and with 200 requests
//! waiting, side by side with the floor of any bookkeeping (a map insert
//! and remove per request) — the limiter absent.
//!
//! ```sh
//! cargo bench -p dispatch-plugin-provider-concurrency --bench limiter
//! ```
//!
//! Medians of 9 rounds of 100 000 requests; the bus round trips a request
//! also makes (acquire, release) are the bus's own cost (BENCHMARKS.md,
//! "bus").

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use dispatch_plugin_provider_concurrency::limiter::{Grant, Limiter};

const ROUNDS: usize = 9;
const REQUESTS: u64 = 100_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// ns per request of `f` run REQUESTS times, median of ROUNDS.
fn measure(mut f: impl FnMut(u64)) -> f64 {
    let rounds = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for i in 0..REQUESTS {
                f(i);
            }
            start.elapsed().as_nanos() as f64 / REQUESTS as f64
        })
        .collect();
    median(rounds)
}

fn main() {
    let mut floor: HashMap<u64, (String, u64)> = HashMap::new();
    let absent = measure(|i| {
        floor.insert(i, ("p".to_owned(), i));
        black_box(floor.remove(&i));
    });

    let mut l = Limiter::default();
    let uncontended = measure(|i| {
        let Grant::Now(t) = l.acquire("p", 4, false, i, i) else { panic!("queued without contention") };
        let p = l.release(black_box(t)).unwrap();
        l.free(&p);
        l.pump(&p, Some(4), i);
    });

    // 200 waiting behind a full provider (limit 1, its slot held): each
    // request queues, then the held slot is handed to the best of 201 and
    // given back, so the queue stays 200 long.
    let mut l = Limiter::default();
    let Grant::Now(mut held) = l.acquire("p", 1, false, 0, 0) else { panic!() };
    let mut receivers = Vec::new();
    for n in 0..200 {
        match l.acquire("p", 1, n % 7 == 0, n, 0) {
            Grant::Queued(_, rx) => receivers.push(rx),
            Grant::Now(_) => panic!("granted past the limit"),
        }
    }
    let mut next = 200;
    let contended = measure(|i| {
        next += 1;
        let Grant::Queued(_, rx) = l.acquire("p", 1, false, next, i) else {
            panic!("granted past the limit")
        };
        black_box(rx);
        let p = l.release(held).unwrap();
        l.free(&p);
        l.pump(&p, Some(1), i);
        held = l.held_ticket("p").unwrap();
    });

    println!("limiter cost per provider request (median of {ROUNDS} × {REQUESTS}):");
    println!("  absent (a map insert + remove):      {absent:8.1} ns   1.00×");
    println!("  uncontended (limit 4, none waiting): {uncontended:8.1} ns   {:.2}×", uncontended / absent);
    println!("  200 waiting (limit 1):               {contended:8.1} ns   {:.2}×", contended / absent);
}
