//! Tool call overhead: the same calls (a) on the tool in process and (b)
//! through the host — `RemoteTool`, the bus, the tool plugin's `.so`, its
//! runtime and the start/next protocol. Interleaved rounds; medians per
//! call and the difference.
//!
//! ```sh
//! cargo build --release --workspace && cargo bench -p dispatch-host --bench tools
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Instant;

use dispatch_host::turn::BusCaller;
use dispatch_kernel::runtime::AbortSignal;
use dispatch_kernel::tool::{Tool, ToolContext};
use dispatch_kernel::toolbus::RemoteTool;
use dispatch_test_support::bench::median;
use serde_json::{json, Value};

const ROUNDS: usize = 15;

fn ctx(cwd: &std::path::Path) -> ToolContext {
    ToolContext {
        tool_call_id: "c".into(),
        conversation_id: "bench".into(),
        cwd: Some(cwd.to_path_buf()),
        abort: AbortSignal::new(),
        output: Arc::new(|_, _| {}),
    }
}

fn main() {
    let release = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_owned();
    assert!(
        release.join("libdispatch_plugin_tool_read_file.so").exists(),
        "build the release plugins first: cargo build --release --workspace"
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let text: String = (1..=200).map(|i| format!("fn line_{i}() {{ println!(\"{i}\"); }}\n")).collect();
    std::fs::write(work.join("src.rs"), &text).unwrap();
    let sup = common::start_with(
        &rt,
        dir.path(),
        &release,
        &[
            ("libdispatch_plugin_tool_read_file.so".into(), ""),
            ("libdispatch_plugin_tool_shell.so".into(), ""),
        ],
    );
    let caller = Arc::new(BusCaller(sup.shared()));
    let remote_read = rt.block_on(RemoteTool::connect(Arc::clone(&caller), "tool.read_file", None)).unwrap();
    let remote_shell = rt.block_on(RemoteTool::connect(Arc::clone(&caller), "tool.run_shell", None)).unwrap();
    let local_read = dispatch_tools::read_file::ReadFile::default();
    let local_shell = dispatch_tools::shell::Shell::default();

    let cases: [(&str, &dyn Tool, &dyn Tool, Value, usize); 2] = [
        ("read_file, 200-line file", &local_read, &remote_read, json!({"path": "src.rs"}), 200),
        ("run_shell `true`", &local_shell, &remote_shell, json!({"command": "true"}), 20),
    ];
    println!("µs per call (median of {ROUNDS} interleaved rounds); machine: shared 2-core VM\n");
    for (name, local, remote, input, calls) in cases {
        let time = |tool: &dyn Tool| {
            let t = Instant::now();
            for _ in 0..calls {
                let out = rt.block_on(tool.execute(input.clone(), ctx(&work))).unwrap();
                assert!(!out.is_error, "{}", out.content);
            }
            t.elapsed().as_secs_f64() * 1e6 / calls as f64
        };
        time(local);
        time(remote);
        let (mut a, mut b) = (vec![], vec![]);
        for _ in 0..ROUNDS {
            a.push(time(local));
            b.push(time(remote));
        }
        let (a, b) = (median(a), median(b));
        println!("{name}:");
        println!("  in process:        {a:>9.1} µs");
        println!("  through the host:  {b:>9.1} µs  ({:+.1} µs, {:.2}x)", b - a, b / a);
    }
    rt.block_on(sup.shutdown());
}
