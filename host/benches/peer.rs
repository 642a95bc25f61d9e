//! Per-step overhead against a peer, side by side: the same agent task — N
//! model steps, each calling one trivial tool, then an answer — against the
//! same local OpenAI-compatible mock server, run through `POST /chat` on
//! `dispatch serve` (release build) and through the OpenAI Agents SDK for
//! Python, interleaved round by round. Also: the server's own CPU time per
//! step (user + sys from /proc) over a turn with a long history, beside the
//! same figures for two *floor* servers (`mod floor`: the task's unavoidable
//! I/O and JSON on one thread, nothing else; and the same plus one SQLite
//! commit per step, the persistence the session owes), turn by turn — what
//! no implementation can go below on the machine at hand.
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
fn switches(pid: u32) -> BTreeMap<String, (String, u64, u64)> {
    let mut by_tid = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let tid = task.file_name().to_string_lossy().into_owned();
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        let on_cpu = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
            .unwrap_or(0);
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
        by_tid.insert(tid, (name, n, on_cpu));
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
    dispatch_test_support::bench::write_plugins_toml(dir, &plugins)
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
    if let Some(mode @ ("floor-server" | "durable-floor-server")) = std::env::args().nth(1).as_deref() {
        floor::serve(mode == "durable-floor-server");
        return;
    }
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
    // switches happen — beside the floor server doing the same turn.
    let turns = args.get(3).copied().unwrap_or(10);
    let start_floor = |mode: &str| {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([mode, &port.to_string(), dir.path().to_str().unwrap()])
            .env("BASE_URL", mock.base_url())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        rt.block_on(http_client::wait_ok(
            &format!("http://127.0.0.1:{port}/health"),
            Duration::from_secs(30),
        ));
        (child, port)
    };
    let (mut floor, floor_port) = start_floor("floor-server");
    let (mut durable, durable_port) = start_floor("durable-floor-server");
    let mut ours = Cpu::default();
    let mut base = Cpu::default();
    let mut base_durable = Cpu::default();
    for turn in 0..turns {
        ours.turn(&rt, &mock, server.id(), port, cpu_steps, &format!("cpu-{turn}"));
        base.turn(&rt, &mock, floor.id(), floor_port, cpu_steps, &format!("floor-{turn}"));
        base_durable.turn(&rt, &mock, durable.id(), durable_port, cpu_steps, &format!("durable-{turn}"));
    }
    println!("server CPU over one turn of {cpu_steps} tool steps, median of {turns} interleaved turns:");
    println!("                                on CPU      user+sys ticks   wall        context switches");
    ours.print("dispatch serve (POST /chat)");
    base.print("floor (the same I/O only)");
    base_durable.print("floor + a commit per step");
    let ours_cpu = median(ours.cpu.clone());
    println!(
        "  ratio to each floor           {:>6.2}x     {:>6.2}x",
        ours_cpu / median(base.cpu.clone()),
        ours_cpu / median(base_durable.cpu.clone())
    );
    println!("dispatch serve, context switches and CPU per step by thread name (mean of the {turns} turns):");
    let mut rows: Vec<(String, (u64, u64))> = ours.by_thread.into_iter().filter(|(_, c)| c.0 > 0).collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1 .1));
    for (name, (count, on_cpu)) in rows {
        let per = |v: u64| v as f64 / turns as f64 / (cpu_steps + 1) as f64;
        println!("  {name:<20} {:>6.2} switches {:>7.3} ms", per(count), per(on_cpu) / 1e6);
    }
    for child in [&mut floor, &mut durable] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// Per-step figures of one server over the turns it ran.
#[derive(Default)]
struct Cpu {
    cpu: Vec<f64>,
    ticks: Vec<f64>,
    walls: Vec<f64>,
    hops: Vec<f64>,
    by_thread: BTreeMap<String, (u64, u64)>,
}

impl Cpu {
    /// One turn of `steps` tool steps through `POST /chat` on `port`,
    /// served by process `pid`.
    fn turn(
        &mut self,
        rt: &tokio::runtime::Runtime,
        mock: &MockServer,
        pid: u32,
        port: u16,
        steps: usize,
        id: &str,
    ) {
        let n = (steps + 1) as f64;
        push_task(mock, steps);
        let before = (cpu_precise(pid), cpu_seconds(pid));
        let switched = switches(pid);
        let wall = rt.block_on(dispatch_run(port, id));
        self.cpu.push((cpu_precise(pid) - before.0) * 1e3 / n);
        self.ticks.push((cpu_seconds(pid) - before.1) * 1e3 / n);
        self.walls.push(wall.as_secs_f64() * 1e3 / n);
        let mut total = 0;
        for (tid, (name, count, on_cpu)) in &switches(pid) {
            let before = switched.get(tid);
            let d = count.saturating_sub(before.map_or(0, |b| b.1));
            total += d;
            let e = self.by_thread.entry(name.clone()).or_default();
            e.0 += d;
            e.1 += on_cpu.saturating_sub(before.map_or(0, |b| b.2));
        }
        self.hops.push(total as f64 / n);
    }

    fn print(&self, name: &str) {
        println!(
            "  {name:<28} {:>6.3} ms   {:>6.3} ms        {:>6.2} ms   {:>5.1}   per step",
            median(self.cpu.clone()),
            median(self.ticks.clone()),
            median(self.walls.clone()),
            median(self.hops.clone())
        );
    }
}

/// The floor: the least any agent server must do for this task, in a
/// process of its own — per step, POST the whole history as JSON to the
/// model (reqwest, as the OpenAI provider), parse the streamed reply, read
/// the file inline, write the events as NDJSON to the client over a
/// hand-written HTTP/1.1 response, on one thread. No store, no bus, no
/// plugins, no checks. Dispatch's CPU over this floor's is what its
/// structure costs on this machine; the floor itself is mostly the kernel's
/// (loopback TCP and waking the other processes).
///
/// The *durable* floor (`durable-floor-server`) adds the one duty the issue
/// requires beyond I/O: each step's messages committed to SQLite when the
/// step completes (WAL, `synchronous = NORMAL`, as the store), in one
/// transaction per step on the same thread with cached statements, the user
/// message committed when the turn starts and the answer at its end — the
/// least a server that loses at most the step in flight can spend. It even
/// takes `locking_mode = EXCLUSIVE` (no shared-memory index, no file locks
/// per transaction; ~15 µs less per commit here), which the store cannot:
/// its readers, and an operator's `sqlite3`, share the file.
mod floor {
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};

    use serde_json::{json, Value};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// The durable floor's log: one connection, used only between awaits.
    #[derive(Clone)]
    struct Log(Arc<Mutex<rusqlite::Connection>>);

    impl Log {
        fn open(path: &std::path::Path) -> Log {
            let db = rusqlite::Connection::open(path).unwrap();
            db.execute_batch(
                "PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
                 CREATE TABLE IF NOT EXISTS chunks (conversation_id TEXT NOT NULL, seq INTEGER NOT NULL,
                     stored TEXT NOT NULL, PRIMARY KEY (conversation_id, seq)) WITHOUT ROWID;",
            )
            .unwrap();
            Log(Arc::new(Mutex::new(db)))
        }

        /// Commit `messages` after the conversation's `seq`, in one transaction.
        fn commit(&self, conversation: &str, seq: &mut i64, messages: &[&Value]) {
            let db = self.0.lock().unwrap();
            db.prepare_cached("BEGIN IMMEDIATE").unwrap().execute([]).unwrap();
            let mut insert = db
                .prepare_cached("INSERT INTO chunks (conversation_id, seq, stored) VALUES (?1, ?2, ?3)")
                .unwrap();
            for m in messages {
                *seq += 1;
                insert.execute(rusqlite::params![conversation, *seq, m.to_string()]).unwrap();
            }
            db.prepare_cached("COMMIT").unwrap().execute([]).unwrap();
        }
    }

    pub fn serve(durable: bool) {
        let mut args = std::env::args().skip(2);
        let port: u16 = args.next().unwrap().parse().unwrap();
        let dir = PathBuf::from(args.next().unwrap());
        let base = std::env::var("BASE_URL").unwrap();
        let log = durable.then(|| Log::open(&dir.join("durable-floor.db")));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
            let client = reqwest::Client::new();
            loop {
                let (sock, _) = listener.accept().await.unwrap();
                sock.set_nodelay(true).unwrap();
                let (client, base, dir, log) = (client.clone(), base.clone(), dir.clone(), log.clone());
                tokio::spawn(async move {
                    let _ = connection(sock, &client, &base, &dir, log.as_ref()).await;
                });
            }
        });
    }

    async fn connection(
        mut sock: TcpStream,
        client: &reqwest::Client,
        base: &str,
        dir: &std::path::Path,
        log: Option<&Log>,
    ) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let n = sock.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while buf.len() < head_end + len {
                let n = sock.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body: Value = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
            buf.drain(..head_end + len);
            if head.starts_with("get /health") {
                sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await?;
                continue;
            }
            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n")
                .await?;
            let conversation = body["conversationId"].as_str().unwrap_or("");
            let log = log.map(|l| (l, conversation));
            turn(&mut sock, client, base, dir, log, body["message"].as_str().unwrap_or("")).await?;
            sock.write_all(b"0\r\n\r\n").await?;
        }
    }

    async fn send_event(sock: &mut TcpStream, events: &[Value]) -> std::io::Result<()> {
        let mut lines = String::new();
        for e in events {
            lines.push_str(&e.to_string());
            lines.push('\n');
        }
        sock.write_all(format!("{:X}\r\n{lines}\r\n", lines.len()).as_bytes()).await
    }

    async fn turn(
        sock: &mut TcpStream,
        client: &reqwest::Client,
        base: &str,
        dir: &std::path::Path,
        log: Option<(&Log, &str)>,
        message: &str,
    ) -> std::io::Result<()> {
        let mut seq = 0;
        let mut commit = |messages: &[&Value]| {
            if let Some((log, conversation)) = log {
                log.commit(conversation, &mut seq, messages);
            }
        };
        commit(&[&json!({"role": "user", "content": message})]);
        let tools = json!([{"type": "function", "function": {"name": "read_file", "description": "Read a file.",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}]);
        // The history as JSON, each message encoded once: every step sends
        // all of it again, but need not encode it again.
        let mut history = format!(
            "{},{}",
            json!({"role": "system", "content": "You are an agent."}),
            json!({"role": "user", "content": message})
        );
        for step in 0.. {
            let body =
                format!(r#"{{"model":"mock-model","stream":true,"tools":{tools},"messages":[{history}]}}"#);
            let mut reply = client
                .post(format!("{base}/chat/completions"))
                .bearer_auth("bench")
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map_err(std::io::Error::other)?;
            let (mut text, mut call, mut pending) =
                (String::new(), None::<(String, String, String)>, Vec::new());
            while let Some(bytes) = reply.chunk().await.map_err(std::io::Error::other)? {
                pending.extend_from_slice(&bytes);
                while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    let Some(data) = line.strip_prefix(b"data: ") else { continue };
                    let Ok(v) = serde_json::from_slice::<Value>(data) else { continue };
                    let delta = &v["choices"][0]["delta"];
                    if let Some(t) = delta["content"].as_str() {
                        text.push_str(t);
                    }
                    if let Some(c) = delta["tool_calls"].get(0) {
                        let f = &c["function"];
                        call = Some((
                            c["id"].as_str().unwrap_or("").to_owned(),
                            f["name"].as_str().unwrap_or("").to_owned(),
                            f["arguments"].as_str().unwrap_or("").to_owned(),
                        ));
                    }
                }
            }
            let Some((id, name, arguments)) = call else {
                commit(&[&json!({"role": "assistant", "content": text})]);
                send_event(
                    sock,
                    &[json!({"type": "text", "text": text}), json!({"type": "turn-sealed", "step": step})],
                )
                .await?;
                return Ok(());
            };
            send_event(
                sock,
                &[
                    json!({"type": "tool-call", "id": id, "name": name, "input": arguments}),
                    json!({"type": "step-complete", "step": step}),
                ],
            )
            .await?;
            let path: Value = serde_json::from_str(&arguments).unwrap_or(Value::Null);
            let output =
                std::fs::read_to_string(dir.join(path["path"].as_str().unwrap_or(""))).unwrap_or_default();
            send_event(sock, &[json!({"type": "tool-result", "id": id, "output": output})]).await?;
            let call = json!({"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function",
                "function": {"name": name, "arguments": arguments}}]});
            let result = json!({"role": "tool", "tool_call_id": id, "content": output});
            commit(&[&call, &result]);
            history.push_str(&format!(",{call},{result}"));
        }
        Ok(())
    }
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
