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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use abi_stable::std_types::RVec;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dispatch_abi::ffi::ServiceHandlerBox;
use dispatch_host::config::Plan;
use dispatch_host::supervisor::{Settings, State, Supervisor};
use futures::FutureExt as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A ~1 KB request, the kind a tool call or a store append carries.
#[derive(Serialize, Deserialize, Clone)]
struct Request {
    conversation_id: String,
    turn_id: String,
    role: String,
    chunks: Vec<Chunk>,
}
#[derive(Serialize, Deserialize, Clone)]
struct Chunk {
    kind: String,
    text: String,
}

fn request_1kb() -> Request {
    let req = Request {
        conversation_id: "c-0123456789".into(),
        turn_id: "t-9876543210".into(),
        role: "assistant".into(),
        chunks: (0..8)
            .map(|i| Chunk { kind: "text".into(), text: format!("{i}: {}", "lorem ipsum ".repeat(9)) })
            .collect(),
    };
    let len = serde_json::to_vec(&req).unwrap().len();
    assert!((900..1300).contains(&len), "request is {len} bytes");
    req
}

/// The in-process baseline: the same echo service (parse the JSON, write
/// it back) behind a `dyn` trait object.
trait Echo: Send + Sync {
    fn call(&self, request: Vec<u8>) -> Result<Vec<u8>, String>;
}
struct LocalEcho;
impl Echo for LocalEcho {
    fn call(&self, request: Vec<u8>) -> Result<Vec<u8>, String> {
        let v: Value = serde_json::from_slice(&request).map_err(|e| e.to_string())?;
        serde_json::to_vec(&v).map_err(|e| e.to_string())
    }
}

fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_owned();
    assert!(
        dir.join("libfx_many.so").exists(),
        "{} has no libfx_many.so: run `cargo build --release --workspace` first",
        dir.display()
    );
    dir
}

/// Copies of libfx_many.so in `dir` with ids fx-many-01.., one per file.
fn many_copies(dir: &Path, n: usize) -> Vec<String> {
    let original = std::fs::read(release_dir().join("libfx_many.so")).unwrap();
    let needle = b"fx-many-00";
    let at = original.windows(needle.len()).position(|w| w == needle).expect("id literal in the library");
    (1..=n)
        .map(|i| {
            let mut bytes = original.clone();
            bytes[at..at + needle.len()].copy_from_slice(format!("fx-many-{i:02}").as_bytes());
            let name = format!("libfx_many_{i:02}.so");
            std::fs::write(dir.join(&name), bytes).unwrap();
            name
        })
        .collect()
}

fn start(rt: &tokio::runtime::Runtime, dir: &Path, plugins: &[(String, &str)]) -> Supervisor {
    let mut toml = format!("[host]\nplugin_dir = {:?}\ndata_dir = \"data\"\n", dir.display().to_string());
    for (file, config) in plugins {
        toml.push_str(&format!("[[plugin]]\npath = {file:?}\n{config}\n"));
    }
    let cfg = dir.join("plugins.toml");
    std::fs::write(&cfg, toml).unwrap();
    let plan = Plan::load(&cfg).unwrap();
    let settings = Settings {
        activate_timeout: Duration::from_secs(30),
        deactivate_timeout: Duration::from_secs(5),
        log_filter: "warn".into(),
    };
    let sup = rt.block_on(Supervisor::start(plan, settings));
    for r in sup.reports_snapshot() {
        assert_eq!(r.state, State::Active, "{} failed: {:?}", r.id, r.error);
    }
    sup
}

fn call_ready(handler: &ServiceHandlerBox, bytes: Vec<u8>) -> Vec<u8> {
    handler
        .call(RVec::from(bytes))
        .now_or_never()
        .expect("a sync service is ready at once")
        .unwrap()
        .into_vec()
}

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
            let out = futures::executor::block_on(fut).unwrap().into_vec();
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
