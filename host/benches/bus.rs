//! Bus benchmarks: a service call across the ABI against the same call on
//! an in-process trait object, event fan-out to four other libraries, and
//! loading + activating twenty plugins.
//!
//! Needs the release plugin libraries:
//!
//! ```sh
//! cargo build --release --workspace && cargo bench -p dispatch-host --bench bus
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use abi_stable::std_types::RVec;
use common::*;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn service_calls(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = many_copies(dir.path(), 1);
    let sup = start(&rt, dir.path(), &[(files[0].clone(), "[plugin.config]\nruntime = true")]);
    let bus = sup.bus();
    // Every FFI call below looks its service up on the bus first, as a
    // caller does: the lookup is part of the cost.
    let sync = || bus.service("fx-many-01.echo", 1).unwrap();
    let asynch = || bus.service("fx-many-01.echo-async", 1).unwrap();
    let local: Arc<dyn Echo> = Arc::new(LocalEcho);

    let req = request_1kb();
    let mut g = c.benchmark_group("service_call_1kb_json");
    g.throughput(Throughput::Elements(1));
    g.bench_function("in_process_dyn", |b| {
        b.iter(|| {
            let bytes = serde_json::to_vec(&req).unwrap();
            let out = local.call(bytes).unwrap();
            serde_json::from_slice::<Request>(&out).unwrap()
        })
    });
    g.bench_function("ffi_sync", |b| {
        b.iter(|| {
            let out = call_ready(&sync(), serde_json::to_vec(&req).unwrap());
            serde_json::from_slice::<Request>(&out).unwrap()
        })
    });
    g.bench_function("ffi_async_plugin_runtime", |b| {
        b.iter(|| {
            let fut = asynch().call(RVec::from(serde_json::to_vec(&req).unwrap()));
            let out = futures::executor::block_on(fut).unwrap();
            serde_json::from_slice::<Request>(&out).unwrap()
        })
    });
    g.finish();

    // The bare cost of crossing: a `null` request, no JSON to speak of.
    let mut g = c.benchmark_group("ready_call_overhead");
    g.bench_function("in_process_dyn", |b| b.iter(|| local.call(b"null".to_vec()).unwrap()));
    g.bench_function("ffi_sync", |b| b.iter(|| call_ready(&sync(), b"null".to_vec())));
    g.finish();
    rt.block_on(sup.shutdown());
}

fn events(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = many_copies(dir.path(), 4);
    let sup = start(&rt, dir.path(), &files.iter().map(|f| (f.clone(), "")).collect::<Vec<_>>());
    let counters: Vec<_> =
        (1..=4).map(|i| sup.bus().service(&format!("fx-many-{i:02}.count"), 1).unwrap()).collect();
    let payload = serde_json::to_vec(&serde_json::json!({"type": "text-delta", "delta": "hello"})).unwrap();
    let batch = 1000u64;
    let mut g = c.benchmark_group("event_fanout_4_libraries");
    g.throughput(Throughput::Elements(batch));
    g.sample_size(20);
    g.bench_function(BenchmarkId::new("publish_and_deliver", batch), |b| {
        b.iter_custom(|iters| {
            let target: Vec<u64> = counters
                .iter()
                .map(|h| serde_json::from_slice(&call_ready(h, b"null".to_vec())).unwrap())
                .collect();
            let started = Instant::now();
            for _ in 0..iters * batch {
                sup.bus().publish("bench", "fx.bench", 1, payload.clone()).unwrap();
            }
            // Done when every subscriber has counted every event.
            while sup.bus().events_in_flight() > 0 {
                std::hint::spin_loop();
            }
            let elapsed = started.elapsed();
            for (h, before) in counters.iter().zip(target) {
                let now: u64 = serde_json::from_slice(&call_ready(h, b"null".to_vec())).unwrap();
                assert_eq!(now, before + iters * batch);
            }
            elapsed
        })
    });
    g.finish();
    rt.block_on(sup.shutdown());
}

fn load_activate(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut g = c.benchmark_group("load_and_activate");
    g.sample_size(10);
    g.bench_function("20_plugins", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Fresh files every time: a library already loaded would
                // only be looked up, not loaded.
                let dir = tempfile::tempdir().unwrap();
                let files = many_copies(dir.path(), 20);
                let started = Instant::now();
                let sup = start(&rt, dir.path(), &files.into_iter().map(|f| (f, "")).collect::<Vec<_>>());
                total += started.elapsed();
                rt.block_on(sup.shutdown());
                // Libraries are never unloaded; keep the files for the process's life.
                std::mem::forget(dir);
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, service_calls, events, load_activate);
criterion_main!(benches);
