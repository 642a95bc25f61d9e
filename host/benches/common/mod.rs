//! Helpers shared by the benchmarks.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use abi_stable::std_types::RVec;
use dispatch_abi::ffi::ServiceHandlerBox;
use dispatch_host::config::Plan;
use dispatch_host::supervisor::{Settings, State, Supervisor};
use futures::FutureExt as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A ~1 KB request, the kind a tool call or a store append carries.
#[derive(Serialize, Deserialize, Clone)]
pub struct Request {
    pub conversation_id: String,
    pub turn_id: String,
    pub role: String,
    pub chunks: Vec<Chunk>,
}
#[derive(Serialize, Deserialize, Clone)]
pub struct Chunk {
    pub kind: String,
    pub text: String,
}

pub fn request_1kb() -> Request {
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
pub trait Echo: Send + Sync {
    fn call(&self, request: Vec<u8>) -> Result<Vec<u8>, String>;
}
pub struct LocalEcho;
impl Echo for LocalEcho {
    fn call(&self, request: Vec<u8>) -> Result<Vec<u8>, String> {
        let v: Value = serde_json::from_slice(&request).map_err(|e| e.to_string())?;
        serde_json::to_vec(&v).map_err(|e| e.to_string())
    }
}

pub fn release_dir() -> PathBuf {
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
pub fn many_copies(dir: &Path, n: usize) -> Vec<String> {
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

/// Start the host on `plugins` (file, `[plugin.config]`-level TOML) copied
/// into or living in `dir`.
pub fn start(rt: &tokio::runtime::Runtime, dir: &Path, plugins: &[(String, &str)]) -> Supervisor {
    start_with(rt, dir, dir, plugins)
}

/// Start the host with its `plugins.toml` in `config_dir` and the
/// libraries read from `plugin_dir`; every plugin must come up active.
pub fn start_with(
    rt: &tokio::runtime::Runtime,
    config_dir: &Path,
    plugin_dir: &Path,
    plugins: &[(String, &str)],
) -> Supervisor {
    let mut toml = dispatch_test_support::host_table(plugin_dir);
    for (file, config) in plugins {
        toml.push_str(&format!("[[plugin]]\npath = {file:?}\n{config}\n"));
    }
    let cfg = config_dir.join("plugins.toml");
    std::fs::write(&cfg, toml).unwrap();
    let plan = Plan::load(&cfg).unwrap();
    let settings = Settings {
        activate_timeout: Duration::from_secs(30),
        deactivate_timeout: Duration::from_secs(5),
        log_filter: "warn".into(),
        leave_out: None,
        stop: None,
    };
    let sup = rt.block_on(Supervisor::start(plan, settings));
    for r in sup.reports_snapshot() {
        assert_eq!(r.state, State::Active, "{} failed: {:?}", r.id, r.error);
    }
    sup
}

pub fn call_ready(handler: &ServiceHandlerBox, bytes: Vec<u8>) -> Vec<u8> {
    handler
        .call(RVec::from(bytes))
        .now_or_never()
        .expect("a sync service is ready at once")
        .unwrap()
        .into_vec()
}
