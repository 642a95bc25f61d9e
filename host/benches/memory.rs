//! Memory that only grew (issue 31), measured on a release build of the
//! bundled plugins (`cargo build --release` first): the server's resident
//! set (`VmRSS`) before and after three loads, each on a fresh server.
//!
//! * **conversations** — N new conversations (default 3000), one short
//!   turn each, with the stock system prompt and a 60 KB `AGENTS.md` in the
//!   working directory: RSS after, and the system prompt's files on disk.
//! * **long turns** — T turns (default 5) of D text deltas each (default
//!   300 000), one after another, each read over NDJSON while a WebSocket
//!   client watches it: peak RSS (`VmHWM`) and RSS 2 s after each seal.
//! * **sockets** — S WebSockets (default 3000) opened 1000 at a time (the
//!   new build's `max_connections` default is 1024), each subscribed to a
//!   conversation, then closed: RSS with 1000 open and 2 s after the last
//!   closed.
//!
//! Point `DISPATCH_BENCH_RELEASE` at another build directory (an older
//! commit built with its own `CARGO_TARGET_DIR`) to measure it side by
//! side with the same loads.
//!
//! `cargo bench -p dispatch-host --bench memory [-- CONVERSATIONS DELTAS SOCKETS TURNS]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use dispatch_test_support::bench::{free_port, proc_kib, release_dir, spawn_release_serve};
use dispatch_test_support::{http_client, scripted_config};
use futures::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

struct Server {
    child: Child,
    port: u16,
    ws_port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(rt: &tokio::runtime::Runtime, script: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let agents: String = "Keep changes small and explain them. ".repeat(60 * 1024 / 37);
        std::fs::write(work.join("AGENTS.md"), agents).unwrap();
        let script_path = dir.path().join("script.json");
        std::fs::write(&script_path, script).unwrap();
        let (port, ws_port) = (free_port(), free_port());
        // The long turn is one 300 000-character text chunk.
        let store = ("libdispatch_plugin_store_sqlite.so", "max_chunk_bytes = 16777216".to_owned());
        let cfg = scripted_config(&release_dir(), &work, &script_path, (port, ws_port), &[store]);
        let child = spawn_release_serve(&cfg);
        rt.block_on(http_client::wait_ok(
            &format!("http://127.0.0.1:{port}/health"),
            Duration::from_secs(30),
        ));
        Server { child, port, ws_port, dir }
    }

    fn rss_mib(&self) -> f64 {
        proc_kib(self.child.id(), "VmRSS:") as f64 / 1024.0
    }

    fn hwm_mib(&self) -> f64 {
        proc_kib(self.child.id(), "VmHWM:") as f64 / 1024.0
    }

    /// Bytes under `<data_dir>/system-prompt`.
    fn prompt_files_mib(&self) -> f64 {
        fn size(p: &Path) -> u64 {
            match std::fs::read_dir(p) {
                Ok(entries) => entries.flatten().map(|e| size(&e.path())).sum(),
                Err(_) => std::fs::metadata(p).map_or(0, |m| m.len()),
            }
        }
        size(&self.dir.path().join("work/data/system-prompt")) as f64 / (1024.0 * 1024.0)
    }

    fn stop(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Read a whole NDJSON answer; the number of events.
async fn chat(port: u16, conversation: &str, message: &str) -> usize {
    let body = format!(r#"{{"message": "{message}", "conversationId": "{conversation}"}}"#);
    let mut r = http_client::post_json(&format!("http://127.0.0.1:{port}/chat"), &body).await.unwrap();
    assert_eq!(r.status, 200, "POST /chat");
    let mut events = 0;
    while let Some(chunk) = r.next_chunk().await {
        events += chunk.iter().filter(|b| **b == b'\n').count();
    }
    events
}

fn settle() {
    std::thread::sleep(Duration::from_secs(2));
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let conversations = args.first().copied().unwrap_or(3000);
    let deltas = args.get(1).copied().unwrap_or(300_000);
    let sockets = args.get(2).copied().unwrap_or(3000);
    let long_turns = args.get(3).copied().unwrap_or(5);
    assert!(release_dir().join("dispatch").exists(), "build first: cargo build --release");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!("build: {}", release_dir().display());

    // Conversations.
    let short = r#"{"replies": [{"steps": [{"text": "ok"}]}]}"#;
    let s = Server::start(&rt, short);
    let idle = s.rss_mib();
    rt.block_on(async {
        let mut tasks = futures::stream::iter(0..conversations)
            .map(|i| {
                let id = format!("c{i}");
                async move { chat(s.port, &id, "hello").await }
            })
            .buffer_unordered(4);
        while tasks.next().await.is_some() {}
    });
    settle();
    println!(
        "{conversations} conversations (60 KB AGENTS.md): RSS {idle:.1} -> {:.1} MiB; system-prompt files {:.1} MiB",
        s.rss_mib(),
        s.prompt_files_mib()
    );
    s.stop();

    // Long turns, watched.
    let text = "y".repeat(deltas);
    let long = format!(r#"{{"replies": [{{"steps": [{{"text": "{text}", "chunkChars": 1}}]}}]}}"#);
    let s = Server::start(&rt, &long);
    let idle = s.rss_mib();
    let mut after = Vec::new();
    let mut events = 0;
    for turn in 0..long_turns {
        events = rt.block_on(async {
            let (mut ws, _) =
                tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}", s.ws_port)).await.unwrap();
            let sub = format!(r#"{{"type":"chat.subscribe","conversationId":"long-{turn}"}}"#);
            ws.send(Message::Text(sub.into())).await.unwrap();
            let watcher = tokio::spawn(async move {
                while let Some(Ok(m)) = ws.next().await {
                    if let Message::Text(t) = m {
                        if t.as_str().contains(r#""type":"turn-sealed""#) {
                            break;
                        }
                    }
                }
                ws
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
            let events = chat(s.port, &format!("long-{turn}"), "go").await;
            drop(watcher.await.unwrap());
            events
        });
        settle();
        after.push(format!("{:.1}", s.rss_mib()));
    }
    println!(
        "{long_turns} turns of {deltas} deltas (the last read as {events} events), NDJSON + 1 WebSocket watcher: RSS {idle:.1} MiB, peak {:.1}, 2 s after each seal: {}",
        s.hwm_mib(),
        after.join(", ")
    );
    s.stop();

    // Sockets.
    let s = Server::start(&rt, short);
    let idle = s.rss_mib();
    let mut with_open = 0.0f64;
    let batch = 1000.min(sockets.max(1));
    let mut opened = 0;
    while opened < sockets {
        let n = batch.min(sockets - opened);
        let conns = rt.block_on(async {
            let mut conns = Vec::with_capacity(n);
            for i in 0..n {
                let url = format!("ws://127.0.0.1:{}", s.ws_port);
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
                let sub = format!(r#"{{"type":"chat.subscribe","conversationId":"s{}"}}"#, opened + i);
                ws.send(Message::Text(sub.into())).await.unwrap();
                conns.push(ws);
            }
            conns
        });
        std::thread::sleep(Duration::from_millis(300));
        with_open = with_open.max(s.rss_mib());
        rt.block_on(async {
            for mut ws in conns {
                let _ = ws.close(None).await;
            }
        });
        opened += n;
    }
    settle();
    println!(
        "{sockets} WebSockets, {batch} open at a time: RSS {idle:.1} MiB, {with_open:.1} with {batch} open, {:.1} 2 s after the last closed",
        s.rss_mib()
    );
    s.stop();
}
