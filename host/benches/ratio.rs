//! The cross-ABI service call against the in-process `dyn` call, measured
//! *interleaved*: on a shared, noisy machine two benchmarks run one after the
//! other can see different machines. Here each round times a block of
//! in-process calls and then a block of FFI calls; we report the median
//! ns/call of each and the median of the per-round ratios.
//!
//! ```sh
//! cargo build --release --workspace && cargo bench -p dispatch-host --bench ratio
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::*;
use dispatch_test_support::bench::median;

const ROUNDS: usize = 31;
const CALLS: usize = 20_000;

fn time_block(mut f: impl FnMut()) -> f64 {
    let started = Instant::now();
    for _ in 0..CALLS {
        f();
    }
    started.elapsed().as_nanos() as f64 / CALLS as f64
}

fn compare(label: &str, mut local: impl FnMut(), mut ffi: impl FnMut()) {
    // Warm up both.
    time_block(&mut local);
    time_block(&mut ffi);
    let (mut a, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let x = time_block(&mut local);
        let y = time_block(&mut ffi);
        a.push(x);
        b.push(y);
        r.push(y / x);
    }
    let (ma, mb) = (median(a), median(b));
    println!(
        "{label:<34} in-process {ma:>9.1} ns  ffi {mb:>9.1} ns  ratio {:>5.2}x  overhead {:>7.1} ns",
        median(r),
        mb - ma
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = many_copies(dir.path(), 1);
    let sup = start(&rt, dir.path(), &[(files[0].clone(), "")]);
    let bus = sup.bus();
    let local: Arc<dyn Echo> = Arc::new(LocalEcho);
    let req = request_1kb();

    println!("{ROUNDS} interleaved rounds of {CALLS} calls each; medians");
    compare(
        "1 KB JSON request/response",
        || {
            let out = local.call(serde_json::to_vec(&req).unwrap()).unwrap();
            std::hint::black_box(serde_json::from_slice::<Request>(&out).unwrap());
        },
        || {
            let h = bus.service("fx-many-01.echo", 1).unwrap();
            let out = call_ready(&h, serde_json::to_vec(&req).unwrap());
            std::hint::black_box(serde_json::from_slice::<Request>(&out).unwrap());
        },
    );
    compare(
        "ready call, `null` payload",
        || {
            std::hint::black_box(local.call(b"null".to_vec()).unwrap());
        },
        || {
            let h = bus.service("fx-many-01.echo", 1).unwrap();
            std::hint::black_box(call_ready(&h, b"null".to_vec()));
        },
    );
    let cached = bus.service("fx-many-01.echo", 1).unwrap();
    compare(
        "ready call, handler already bound",
        || {
            std::hint::black_box(local.call(b"null".to_vec()).unwrap());
        },
        || {
            std::hint::black_box(call_ready(&cached, b"null".to_vec()));
        },
    );
    rt.block_on(sup.shutdown());
}
