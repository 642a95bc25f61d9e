//! Test helper for the crash-safety test: opens the store at ARGV[1] and
//! appends messages of 1–5 chunks to a few conversations, concurrently and
//! forever, printing `ack <conversation> <first seq> <count>` after each
//! acknowledged append. Chunk texts are `p<pid> w<writer> m<message> c<k>`,
//! so the test can tell a whole message from a partial one. The test
//! SIGKILLs it at a random moment.

use std::io::Write as _;
use std::sync::Arc;

use dispatch_contracts::protocol::wire::{Chunk, Role};
use dispatch_plugin_store_sqlite::store::{Options, Store};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: store-append-loop DB_PATH");
        std::process::exit(2);
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(2);
        }
    };
    rt.block_on(async move {
        let store = match Store::open(Options::new(path)).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        };
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for w in 0..6u64 {
            let (store, out) = (Arc::clone(&store), Arc::clone(&out));
            tasks.push(tokio::spawn(async move {
                let conv = format!("crash-{}", w % 3);
                let mut i = 0u64;
                loop {
                    i += 1;
                    let n = 1 + ((i * 7 + w) % 5) as usize;
                    let pid = std::process::id();
                    let chunks: Vec<Chunk> = (0..n)
                        .map(|k| Chunk::text(format!("p{pid} w{w} m{i} c{k} {}", "x".repeat(50))))
                        .collect();
                    match store.append(&conv, Role::Assistant, Some("t"), &chunks).await {
                        Ok(seqs) => {
                            if let Ok(mut o) = out.lock() {
                                let _ = writeln!(o, "ack {conv} {} {}", seqs[0], seqs.len());
                                let _ = o.flush();
                            }
                        }
                        Err(e) => {
                            eprintln!("append failed: {e}");
                            std::process::exit(1);
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}
