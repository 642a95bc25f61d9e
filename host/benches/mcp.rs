//! One trivial tool — count the words of a short text — called three ways,
//! interleaved round by round:
//!
//! * **native**: the word-count example plugin (`tool::serve`), through the
//!   host as a turn calls it (`RemoteTool`, the bus, the plugin's runtime,
//!   start/next);
//! * **MCP bridge**: the same tool in the rmcp fixture server, through the
//!   `mcp` plugin (the same host path, then `tools/call` over stdio to a
//!   child process and back);
//! * **bare rmcp**: the fixture's tool called by an rmcp client directly
//!   (what an MCP stdio round trip costs anywhere; the peers' figure is
//!   ~0.17 ms for rmcp).
//!
//! ```sh
//! cargo build --release --workspace && cargo bench -p dispatch-host --bench mcp
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use dispatch_host::turn::BusCaller;
use dispatch_kernel::runtime::AbortSignal;
use dispatch_kernel::tool::{Tool, ToolContext};
use dispatch_kernel::toolbus::RemoteTool;
use dispatch_test_support::bench::{median, release_dir, repo_root};
use rmcp::model::CallToolRequestParams;
use rmcp::ServiceExt as _;
use serde_json::json;

const ROUNDS: usize = 15;
const CALLS: usize = 200;
const TEXT: &str = "the quick brown fox\njumps over the lazy dog";
const ANSWER: &str = "9 words, 2 lines, 43 characters";

fn ctx() -> ToolContext {
    ToolContext {
        tool_call_id: "c".into(),
        conversation_id: "bench".into(),
        cwd: None,
        abort: AbortSignal::new(),
        output: Arc::new(|_, _| {}),
    }
}

/// Build the word-count example (its own workspace) in release; its library.
fn word_count(root: &Path) -> std::path::PathBuf {
    let target = root.join("target/external");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(root.join("examples/word-count/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap();
    assert!(status.success(), "building the word-count example failed");
    target.join("release/libword_count.so")
}

fn main() {
    let release = release_dir();
    let fixture = release.join("mcp-fixture");
    assert!(
        fixture.exists() && release.join("libdispatch_plugin_mcp.so").exists(),
        "build the release workspace first: cargo build --release --workspace"
    );
    let native_lib = word_count(&repo_root());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mcp_config = format!("[plugin.config.servers.fx]\ncommand = {:?}\n", fixture.display().to_string());
    let sup = common::start_with(
        &rt,
        dir.path(),
        &release,
        &[(native_lib.display().to_string(), ""), ("libdispatch_plugin_mcp.so".into(), mcp_config.as_str())],
    );
    let caller = Arc::new(BusCaller(sup.shared()));
    let native = rt.block_on(RemoteTool::connect(Arc::clone(&caller), "tool.word_count", None)).unwrap();
    let bridged = rt.block_on(RemoteTool::connect(Arc::clone(&caller), "tool.fx__word_count", None)).unwrap();
    let bare = rt.block_on(async {
        let transport =
            rmcp::transport::TokioChildProcess::new(tokio::process::Command::new(&fixture)).unwrap();
        ().serve(transport).await.unwrap()
    });

    let input = json!({"text": TEXT});
    let through = |tool: &dyn Tool| {
        let t = Instant::now();
        for _ in 0..CALLS {
            let out = rt.block_on(tool.execute(input.clone(), ctx())).unwrap();
            assert_eq!(out.content, ANSWER);
        }
        t.elapsed().as_secs_f64() * 1e6 / CALLS as f64
    };
    let args = input.as_object().unwrap().clone();
    let direct = || {
        let t = Instant::now();
        for _ in 0..CALLS {
            let params = CallToolRequestParams::new("word_count").with_arguments(args.clone());
            let out = rt.block_on(bare.call_tool(params)).unwrap();
            let text = serde_json::to_value(&out).unwrap()["content"][0]["text"].as_str().unwrap().to_owned();
            assert_eq!(text, ANSWER);
        }
        t.elapsed().as_secs_f64() * 1e6 / CALLS as f64
    };
    // Warm-up, then interleaved rounds.
    through(&native);
    through(&bridged);
    direct();
    let (mut n, mut b, mut d) = (vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        n.push(through(&native));
        b.push(through(&bridged));
        d.push(direct());
    }
    let (n, b, d) = (median(n), median(b), median(d));
    println!("µs per call, median of {ROUNDS} interleaved rounds of {CALLS} calls; shared 2-core VM\n");
    println!("  native tool plugin, through the host:  {n:>8.1}");
    println!("  MCP tool, through the host + bridge:    {b:>8.1}  ({:.2}x native)", b / n);
    println!("  bare rmcp client → the same server:     {d:>8.1}");
    println!("  the bridge's own cost (bridge − bare):  {:>8.1}", b - d);
    rt.block_on(async {
        let _ = bare.cancel().await;
    });
    rt.block_on(sup.shutdown());
}
