//! Compacting a 10 000-chunk conversation: the store's work alone (the
//! summary is given, no model), side by side with reading the same
//! history once — the unit cost of touching those 10 000 chunks.
//!
//! ```sh
//! cargo bench -p dispatch-plugin-store-sqlite --bench compact
//! ```
//!
//! Each round builds a fresh conversation of 2 000 messages of 5 chunks
//! (user and assistant by turns), reads its whole history, then compacts
//! it keeping its last 10 messages: the archive copy (10 000 rows), the
//! live log's delete, the summary and the 50 kept rows, in one transaction.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use dispatch_contracts::protocol::store::CompactRequest;
use dispatch_contracts::protocol::wire::{Chunk, Role};
use dispatch_plugin_store_sqlite::store::{Options, Store};

const ROUNDS: usize = 7;
const MESSAGES: usize = 2000;
const PER_MESSAGE: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (reads, compacts) = rt.block_on(async {
        let store = Store::open(Options::new(dir.path().join("compact.db"))).await.unwrap();
        let chunks: Vec<Chunk> = (0..PER_MESSAGE)
            .map(|i| Chunk::text(format!("chunk {i}: {}", "lorem ipsum dolor sit amet ".repeat(4))))
            .collect();
        let (mut reads, mut compacts) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let id = format!("long-{round}");
            let mut first_of = Vec::with_capacity(MESSAGES);
            for m in 0..MESSAGES {
                let role = if m % 2 == 0 { Role::User } else { Role::Assistant };
                let seqs = store.append(&id, role, Some("t"), &chunks).await.unwrap();
                first_of.push(seqs[0]);
            }
            let latest = first_of[MESSAGES - 1] + PER_MESSAGE as u64 - 1;
            let started = Instant::now();
            let h = store.history(&id, None, None, None).await.unwrap();
            reads.push(started.elapsed().as_secs_f64() * 1e3);
            assert_eq!(h.chunks.len(), MESSAGES * PER_MESSAGE);
            let request = CompactRequest {
                conversation_id: id.clone(),
                archive_id: format!("archive-{round}"),
                summary: "A summary of the first 1990 messages.".into(),
                keep_from_seq: first_of[MESSAGES - 10],
                expect_latest_seq: latest,
            };
            let started = Instant::now();
            let now = store.compact(request).await.unwrap();
            compacts.push(started.elapsed().as_secs_f64() * 1e3);
            assert_eq!(now, 1 + 10 * PER_MESSAGE as u64);
        }
        store.close().await;
        (reads, compacts)
    });
    let (read, compact) = (median(reads), median(compacts));
    println!("{} chunks, median of {ROUNDS} rounds:", MESSAGES * PER_MESSAGE);
    println!("  read the whole history:  {read:8.1} ms");
    println!("  compact (keep the last 10 messages): {compact:8.1} ms  ({:.2}x the read)", compact / read);
}
