//! Per-step overhead against a peer, side by side: the same agent task — N
//! model steps, each calling one trivial tool, then an answer — against the
//! same local OpenAI-compatible mock server, run through `POST /chat` on
//! `dispatch serve` (release build) and through the OpenAI Agents SDK for
//! Python, interleaved round by round. Also: the server's own CPU time per
//! step (user + sys from /proc) over a turn with a long history.
//!
//! `cargo build --release && cargo bench -p dispatch-host --bench peer [-- STEPS ROUNDS CPU_STEPS TURNS]`
//! (defaults 35 7 100 10). The SDK is installed from PyPI into
//! `target/bench-venv` on first use (`$DISPATCH_BENCH_PYTHON` overrides the
//! interpreter). `$DISPATCH_BENCH_RELEASE` measures another build directory
//! (e.g. one built with a different profile) instead of `target/release`;
//! `$DISPATCH_BENCH_HOST` adds `[host]` keys (`;`-separated), e.g.
//! `worker_threads = 1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dispatch_test_support::bench::{median, release_dir};
use dispatch_test_support::http_client;
use dispatch_test_support::mock_openai::{finish_chunk, text_chunk, MockServer, Reply};
use serde_json::json;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("DISPATCH_BENCH_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = root().join("target/bench-venv");
    let py = venv.join("bin/python");
    if !py.exists() {
        eprintln!("installing openai-agents into {} ...", venv.display());
        assert!(Command::new("python3").args(["-m", "venv"]).arg(&venv).status().unwrap().success());
        let ok = Command::new(&py).args(["-m", "pip", "install", "-q", "openai-agents"]).status().unwrap();
        assert!(ok.success(), "pip install openai-agents failed");
    }
    py
}

/// One model step that calls `read_file`, as streamed chunks.
fn tool_step(i: usize) -> Reply {
    Reply::sse(&[
        json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "mock-model",
               "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [{"index": 0,
               "id": format!("call_{i}"), "type": "function",
               "function": {"name": "read_file", "arguments": "{\"path\":\"f.txt\"}"}}]},
               "finish_reason": null}]}),
        finish_chunk("tool_calls"),
    ])
}

fn push_task(mock: &MockServer, steps: usize) {
    for i in 0..steps {
        mock.push(tool_step(i));
    }
    mock.push(Reply::sse(&[text_chunk("done"), finish_chunk("stop")]));
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted from after the command name.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// On-CPU time of every thread of a process, in seconds, from
/// `/proc/<pid>/task/*/schedstat` (nanoseconds, where `stat` counts 10 ms
/// ticks — too coarse for a turn that uses ~70 ms).
fn cpu_precise(pid: u32) -> f64 {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else { continue };
        ns += stat.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    ns as f64 / 1e9
}

/// Context switches (voluntary + not) of every thread of a process, by
/// thread id, with its name: each is a thread handing work to another, the
/// cost a step pays per hop. By id, so a delta is taken per thread (a
/// thread that exits between two readings — an idle blocking-pool thread —
/// drops out instead of making a name's total go down).
fn switches(pid: u32) -> BTreeMap<String, (String, u64)> {
    let mut by_tid = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let tid = task.file_name().to_string_lossy().into_owned();
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        let mut name = String::new();
        let mut n = 0;
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("Name:") {
                name = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:") {
                n += v.trim().parse::<u64>().unwrap();
            } else if let Some(v) = line.strip_prefix("nonvoluntary_ctxt_switches:") {
                n += v.trim().parse::<u64>().unwrap();
            }
        }
        by_tid.insert(tid, (name, n));
    }
    by_tid
}

fn config(dir: &Path, port: u16) -> PathBuf {
    std::fs::write(dir.join("f.txt"), "ok").unwrap();
    let plugins = [
        ("libdispatch_plugin_models.so", String::new()),
        ("libdispatch_plugin_provider_openai.so", String::new()),
        ("libdispatch_plugin_store_sqlite.so", String::new()),
        ("libdispatch_plugin_tool_read_file.so", String::new()),
        ("libdispatch_plugin_session.so", format!("default_cwd = {:?}", dir.display().to_string())),
        ("libdispatch_plugin_transport_http.so", format!("addr = [\"127.0.0.1:{port}\"]")),
    ];
    let mut toml =
        format!("[host]\nplugin_dir = {:?}\ndata_dir = \"data\"\n", release_dir().display().to_string());
    // Extra `[host]` keys to compare settings, e.g. "worker_threads = 1".
    if let Ok(extra) = std::env::var("DISPATCH_BENCH_HOST") {
        toml.push_str(&extra.replace(';', "\n"));
        toml.push('\n');
    }
    for (p, c) in plugins {
        toml.push_str(&format!("\n[[plugin]]\npath = {p:?}\n"));
        if !c.is_empty() {
            toml.push_str(&format!("[plugin.config]\n{c}\n"));
        }
    }
    let path = dir.join("plugins.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

async fn dispatch_run(port: u16, conversation: &str) -> Duration {
    let body =
        json!({"conversationId": conversation, "message": "go", "model": "openai/mock-model"}).to_string();
    let start = Instant::now();
    let mut r = http_client::post_json(&format!("http://127.0.0.1:{port}/chat"), &body).await.unwrap();
    assert_eq!(r.status, 200);
    let mut last = Vec::new();
    while let Some(c) = r.next_chunk().await {
        last = c.to_vec();
    }
    let took = start.elapsed();
    let tail = String::from_utf8_lossy(&last);
    assert!(tail.contains("turn-sealed"), "{tail}");
    took
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let steps = args.first().copied().unwrap_or(35);
    let rounds = args.get(1).copied().unwrap_or(7);
    let cpu_steps = args.get(2).copied().unwrap_or(100);
    let mock = MockServer::start(Vec::new());
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = config(dir.path(), port);
    let mut server = Command::new(release_dir().join("dispatch"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env("DISPATCH_BASE_URL", mock.base_url())
        .env("DISPATCH_API_KEY", "bench")
        .env("DISPATCH_MODEL", "mock-model")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(http_client::wait_ok(&format!("http://127.0.0.1:{port}/health"), Duration::from_secs(30)));

    // ROUNDS = 0: the server's CPU figures only (no Python peer).
    if rounds > 0 {
        compare_with_peer(&rt, &mock, port, steps, rounds);
    }

    // CPU of the server per step over a long history: TURNS turns of
    // CPU_STEPS steps (the median turn reported), and where its context
    // switches happen.
    let turns = args.get(3).copied().unwrap_or(10);
    let n = (cpu_steps + 1) as f64;
    let mut cpu = Vec::new();
    let mut ticks = Vec::new();
    let mut walls = Vec::new();
    let mut hops = Vec::new();
    let mut by_thread: BTreeMap<String, u64> = BTreeMap::new();
    for turn in 0..turns {
        push_task(&mock, cpu_steps);
        let before = (cpu_precise(server.id()), cpu_seconds(server.id()));
        let switched = switches(server.id());
        let wall = rt.block_on(dispatch_run(port, &format!("cpu-{turn}")));
        cpu.push((cpu_precise(server.id()) - before.0) * 1e3 / n);
        ticks.push((cpu_seconds(server.id()) - before.1) * 1e3 / n);
        walls.push(wall.as_secs_f64() * 1e3 / n);
        let after = switches(server.id());
        let mut total = 0;
        for (tid, (name, count)) in &after {
            let d = count.saturating_sub(switched.get(tid).map_or(0, |b| b.1));
            total += d;
            *by_thread.entry(name.clone()).or_default() += d;
        }
        hops.push(total as f64 / n);
    }
    println!(
        "server CPU over one turn of {cpu_steps} tool steps, median of {turns} turns: {:.3} ms per step on CPU \
         (user+sys ticks: {:.3} ms; wall {:.2} ms per step; {:.1} context switches per step)",
        median(cpu),
        median(ticks),
        median(walls),
        median(hops)
    );
    println!("context switches per step by thread (mean of the {turns} turns):");
    let mut rows: Vec<(String, u64)> = by_thread.into_iter().filter(|(_, c)| *c > 0).collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    for (name, count) in rows {
        println!("  {name:<20} {:>6.2}", count as f64 / turns as f64 / n);
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// The same task through `POST /chat` and through the OpenAI Agents SDK,
/// interleaved round by round (round 0 warms both up); prints the medians.
fn compare_with_peer(
    rt: &tokio::runtime::Runtime,
    mock: &MockServer,
    port: u16,
    steps: usize,
    rounds: usize,
) {
    let py = python();
    let script = root().join("host/benches/peer_agents.py");
    let mut ours = Vec::new();
    let mut peer = Vec::new();
    let (mut ours_mock, mut peer_mock) = (Vec::new(), Vec::new());
    let per_step = |d: Duration| d.as_secs_f64() * 1e3 / (steps + 1) as f64;
    for round in 0..=rounds {
        push_task(mock, steps);
        let busy = mock.busy();
        let d = rt.block_on(dispatch_run(port, &format!("peer-{round}")));
        let d_mock = mock.busy() - busy;
        push_task(mock, steps);
        let busy = mock.busy();
        let out = Command::new(&py)
            .arg(&script)
            .arg(steps.to_string())
            .env("BASE_URL", mock.base_url())
            .output()
            .unwrap();
        assert!(out.status.success(), "the peer failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["final"], "done", "{v}");
        let p_mock = mock.busy() - busy;
        let p = v["seconds"].as_f64().unwrap();
        // Round 0 warms both up.
        if round > 0 {
            ours.push(per_step(d));
            peer.push(p * 1e3 / (steps + 1) as f64);
            ours_mock.push(per_step(d_mock));
            peer_mock.push(per_step(p_mock));
        }
    }
    let (o, p) = (median(ours), median(peer));
    let (om, pm) = (median(ours_mock), median(peer_mock));
    println!("{steps} tool steps + 1 answer per run, median of {rounds} interleaved rounds:");
    println!("                                mock included   mock's own time   without the mock");
    println!(
        "  dispatch serve (POST /chat)   {o:>8.3} ms      {om:>8.3} ms      {:>8.3} ms per step",
        o - om
    );
    println!(
        "  openai-agents (Python)        {p:>8.3} ms      {pm:>8.3} ms      {:>8.3} ms per step",
        p - pm
    );
    println!(
        "  ratio                         {:>8.1}x                         {:>8.1}x",
        p / o,
        (p - pm) / (o - om)
    );
}
