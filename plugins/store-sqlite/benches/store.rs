//! Store throughput against plain rusqlite on the same schema, same
//! pragmas (WAL, synchronous = NORMAL), same rows, same run.
//!
//! ```sh
//! cargo bench -p dispatch-plugin-store-sqlite --bench store
//! ```
//!
//! * appends of 1-chunk and of 20-chunk messages, from many concurrent
//!   writers (32 and 200 conversations, one task each) — the store's group
//!   commit at work — and from one sequential writer;
//! * the ceiling: rusqlite inserting the same rows (same conversations,
//!   same interleaving), 256 messages per transaction, prepared statements
//!   (and, for reference, at the store's batching and one transaction per
//!   message);
//! * reading a 10 000-chunk history: the store's `history` (rows + JSON
//!   parse) vs rusqlite selecting and parsing the same rows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatch_contracts::protocol::wire::{Chunk, Role, StoredChunk};
use dispatch_plugin_store_sqlite::store::{Options, Store, MIGRATOR};

const WRITERS: usize = 32;
const MANY_WRITERS: usize = 200;
const READS: usize = 21;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn chunk(i: usize) -> Chunk {
    Chunk::text(format!("chunk {i}: {}", "lorem ipsum dolor sit amet ".repeat(4)))
}

async fn store_concurrent(dir: &std::path::Path, writers: usize, messages: usize, per_message: usize) -> f64 {
    let store = Arc::new(Store::open(Options::new(dir.join(format!("conc-{writers}.db")))).await.unwrap());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let chunks: Vec<Chunk> = (0..per_message).map(chunk).collect();
            for _ in 0..messages / writers {
                store.append(&format!("conv-{w}"), Role::Assistant, Some("t"), &chunks).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rows = (messages / writers * writers * per_message) as f64;
    let rate = rows / started.elapsed().as_secs_f64();
    Arc::try_unwrap(store).ok().unwrap().close().await;
    rate
}

async fn store_sequential(dir: &std::path::Path, messages: usize, per_message: usize) -> f64 {
    let store = Store::open(Options::new(dir.join("seq.db"))).await.unwrap();
    let chunks: Vec<Chunk> = (0..per_message).map(chunk).collect();
    let started = Instant::now();
    for _ in 0..messages {
        store.append("seq", Role::Assistant, Some("t"), &chunks).await.unwrap();
    }
    let rate = (messages * per_message) as f64 / started.elapsed().as_secs_f64();
    store.close().await;
    rate
}

fn rusqlite_db(path: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.pragma_update(None, "foreign_keys", "ON").unwrap();
    for m in MIGRATOR.iter() {
        conn.execute_batch(&m.sql).unwrap();
    }
    conn
}

/// The same rows as the store writes — `convs` conversations written in
/// turn, as the store's concurrent writers do —, `batch` messages per
/// transaction.
fn rusqlite_append(
    path: &std::path::Path,
    convs: usize,
    messages: usize,
    per_message: usize,
    batch: usize,
) -> f64 {
    let mut conn = rusqlite_db(path);
    let encoded: Vec<String> = (0..per_message).map(|i| serde_json::to_string(&chunk(i)).unwrap()).collect();
    let started = Instant::now();
    let mut seq = vec![0i64; convs];
    let mut done = 0;
    while done < messages {
        let tx = conn.transaction().unwrap();
        {
            let mut conv = tx.prepare_cached("INSERT INTO conversations (id, created_at, last_activity_at) VALUES (?1, 1, 1) ON CONFLICT(id) DO NOTHING").unwrap();
            let mut ins = tx
                .prepare_cached("INSERT INTO chunks (conversation_id, seq, message_seq, role, turn_id, stored) VALUES (?1, ?2, ?3, 'assistant', 't', ?4)")
                .unwrap();
            for _ in 0..batch.min(messages - done) {
                let w = done % convs;
                let id = format!("conv-{w}");
                conv.execute([&id]).unwrap();
                let first = seq[w] + 1;
                for (k, c) in encoded.iter().enumerate() {
                    let seq = first + k as i64;
                    let stored = format!(r#"{{"seq":{seq},"role":"assistant","chunk":{c}}}"#);
                    ins.execute(rusqlite::params![id, seq, first, stored]).unwrap();
                }
                seq[w] += per_message as i64;
                done += 1;
            }
        }
        tx.commit().unwrap();
    }
    (messages * per_message) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("rows/s (medians of 3 runs each, alternating); machine: shared 2-core VM\n");
    for (messages, per_message) in [(20_000usize, 1usize), (2_000, 20)] {
        println!("{per_message}-chunk messages ({messages} messages):");
        for writers in [WRITERS, MANY_WRITERS] {
            let (mut store, mut ceil, mut same) = (vec![], vec![], vec![]);
            for _ in 0..3 {
                let d = tempfile::tempdir().unwrap();
                store.push(rt.block_on(store_concurrent(d.path(), writers, messages, per_message)));
                ceil.push(rusqlite_append(&d.path().join("ceil.db"), writers, messages, per_message, 256));
                same.push(rusqlite_append(
                    &d.path().join("same.db"),
                    writers,
                    messages,
                    per_message,
                    writers,
                ));
            }
            let (store, ceil, same) = (median(store), median(ceil), median(same));
            println!("  {writers} conversations, one concurrent writer each:");
            println!("    store (group commit):                      {store:>9.0} rows/s = {:.2} of the ceiling, {:.2} of rusqlite at equal batching", store / ceil, store / same);
            println!("    rusqlite, 256 messages per tx (ceiling):   {ceil:>9.0} rows/s");
            println!("    rusqlite, {writers} messages per tx:             {same:>9.0} rows/s");
        }
        let (mut seq, mut per_tx) = (vec![], vec![]);
        for _ in 0..3 {
            let d = tempfile::tempdir().unwrap();
            seq.push(rt.block_on(store_sequential(d.path(), messages / 4, per_message)));
            per_tx.push(rusqlite_append(&d.path().join("pertx.db"), 1, messages / 4, per_message, 1));
        }
        let (seq, per_tx) = (median(seq), median(per_tx));
        println!("  1 conversation, 1 sequential writer:");
        println!(
            "    store:                                     {seq:>9.0} rows/s = {:.2} of rusqlite",
            seq / per_tx
        );
        println!("    rusqlite, 1 transaction per message:       {per_tx:>9.0} rows/s\n");
    }

    // Reading a 10 000-chunk history.
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("read.db");
    let store = rt.block_on(Store::open(Options::new(&path))).unwrap();
    rt.block_on(async {
        let chunks: Vec<Chunk> = (0..100).map(chunk).collect();
        for _ in 0..100 {
            store.append("big", Role::Assistant, None, &chunks).await.unwrap();
        }
    });
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (mut a, mut b) = (vec![], vec![]);
    for _ in 0..READS {
        let t = Instant::now();
        let h = rt.block_on(store.history("big", None, None, None)).unwrap();
        a.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(h.chunks.len(), 10_000);
        let t = Instant::now();
        let mut stmt = conn
            .prepare_cached("SELECT stored FROM chunks WHERE conversation_id = 'big' ORDER BY seq")
            .unwrap();
        let rows: Vec<StoredChunk> = stmt
            .query_map([], |r| {
                let s: String = r.get(0)?;
                Ok(serde_json::from_str(&s).unwrap())
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        b.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(rows.len(), 10_000);
    }
    println!("read a 10 000-chunk history ({READS} reads, median):");
    println!("  store.history:             {:>7.2} ms", median(a));
    println!("  rusqlite select + parse:   {:>7.2} ms", median(b));
    rt.block_on(store.close());
    let _ = Duration::ZERO;
}
