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
//! * the ceiling: rusqlite inserting the same rows, 256 messages per
//!   transaction, one prepared statement (and, for reference, one
//!   transaction per message);
//! * reading a 10 000-chunk history: the store's `history` (rows + JSON
//!   parse) vs rusqlite selecting and parsing the same rows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatch_kernel::wire::{Chunk, Role, StoredChunk};
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
    for m in MIGRATOR.iter() {
        conn.execute_batch(&m.sql).unwrap();
    }
    conn
}

/// The same rows as the store writes, `batch` messages per transaction.
fn rusqlite_append(path: &std::path::Path, messages: usize, per_message: usize, batch: usize) -> f64 {
    let mut conn = rusqlite_db(path);
    let encoded: Vec<String> = (0..per_message).map(|i| serde_json::to_string(&chunk(i)).unwrap()).collect();
    let started = Instant::now();
    let mut seq = vec![0i64; WRITERS];
    let mut done = 0;
    while done < messages {
        let tx = conn.transaction().unwrap();
        {
            let mut conv = tx.prepare_cached("INSERT INTO conversations (id, created_at, last_activity_at) VALUES (?1, 1, 1) ON CONFLICT(id) DO NOTHING").unwrap();
            let mut bump = tx
                .prepare_cached(
                    "UPDATE conversations SET last_seq = last_seq + ?1, last_activity_at = 2 WHERE id = ?2",
                )
                .unwrap();
            let mut ins = tx
                .prepare_cached("INSERT INTO chunks (conversation_id, seq, message_seq, role, turn_id, stored) VALUES (?1, ?2, ?3, 'assistant', 't', ?4)")
                .unwrap();
            for _ in 0..batch.min(messages - done) {
                let w = done % WRITERS;
                let id = format!("conv-{w}");
                conv.execute([&id]).unwrap();
                bump.execute(rusqlite::params![per_message as i64, id]).unwrap();
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

/// The store's own statement shapes (one upsert for the batch's
/// conversations, one multi-row insert), `batch` messages per transaction,
/// through rusqlite: separates the cost of the SQL from the cost of the driver.
fn rusqlite_store_shape(path: &std::path::Path, messages: usize, per_message: usize, batch: usize) -> f64 {
    let mut conn = rusqlite_db(path);
    let encoded: Vec<String> = (0..per_message).map(|i| serde_json::to_string(&chunk(i)).unwrap()).collect();
    let started = Instant::now();
    let mut seq = vec![0i64; WRITERS];
    let mut done = 0;
    while done < messages {
        let n = batch.min(messages - done);
        let tx = conn.transaction().unwrap();
        let mut conv_args: Vec<rusqlite::types::Value> = Vec::new();
        let mut row_args: Vec<rusqlite::types::Value> = Vec::new();
        let mut convs = 0;
        for k in 0..n {
            let w = (done + k) % WRITERS;
            let id = format!("conv-{w}");
            let first = seq[w] + 1;
            for (j, c) in encoded.iter().enumerate() {
                let s = first + j as i64;
                row_args.extend([
                    id.clone().into(),
                    s.into(),
                    first.into(),
                    "assistant".to_owned().into(),
                    "t".to_owned().into(),
                    format!(r#"{{"seq":{s},"role":"assistant","chunk":{c}}}"#).into(),
                ]);
            }
            seq[w] += per_message as i64;
            if k < WRITERS {
                convs += 1;
                conv_args.extend([id.into(), 1i64.into(), 1i64.into(), seq[w].into(), String::new().into()]);
            }
        }
        let up = format!(
            "INSERT INTO conversations (id, created_at, last_activity_at, last_seq, title) VALUES {} ON CONFLICT(id) DO UPDATE SET last_seq = excluded.last_seq, last_activity_at = excluded.last_activity_at, title = CASE WHEN conversations.title = '' THEN excluded.title ELSE conversations.title END",
            vec!["(?, ?, ?, ?, ?)"; convs].join(", ")
        );
        tx.execute(&up, rusqlite::params_from_iter(conv_args)).unwrap();
        let ins = format!(
            "INSERT INTO chunks (conversation_id, seq, message_seq, role, turn_id, stored) VALUES {}",
            vec!["(?, ?, ?, ?, ?, ?)"; n * per_message].join(", ")
        );
        tx.execute(&ins, rusqlite::params_from_iter(row_args)).unwrap();
        tx.commit().unwrap();
        done += n;
    }
    (messages * per_message) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("rows/s (medians of 3 runs each, alternating); machine: shared 2-core VM\n");
    for (messages, per_message) in [(20_000usize, 1usize), (2_000, 20)] {
        let (mut conc, mut many, mut seq, mut ceil, mut per_tx, mut shape, mut same_batch) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..3 {
            let d = tempfile::tempdir().unwrap();
            conc.push(rt.block_on(store_concurrent(d.path(), WRITERS, messages, per_message)));
            many.push(rt.block_on(store_concurrent(d.path(), MANY_WRITERS, messages, per_message)));
            ceil.push(rusqlite_append(&d.path().join("ceil.db"), messages, per_message, 256));
            seq.push(rt.block_on(store_sequential(d.path(), messages / 4, per_message)));
            per_tx.push(rusqlite_append(&d.path().join("pertx.db"), messages / 4, per_message, 1));
            shape.push(rusqlite_store_shape(&d.path().join("shape.db"), messages, per_message, WRITERS));
            same_batch.push(rusqlite_append(&d.path().join("same.db"), messages, per_message, WRITERS));
        }
        let (conc, many, seq, ceil, per_tx) =
            (median(conc), median(many), median(seq), median(ceil), median(per_tx));
        println!("{per_message}-chunk messages ({messages} messages):");
        println!("  store, {WRITERS} concurrent writers (group commit): {conc:>10.0} rows/s  = {:.2} of the ceiling", conc / ceil);
        println!("  store, {MANY_WRITERS} concurrent writers (group commit): {many:>9.0} rows/s  = {:.2} of the ceiling", many / ceil);
        println!("  store, 1 sequential writer:                    {seq:>10.0} rows/s");
        println!("  rusqlite, 256 messages per transaction (ceiling): {ceil:>8.0} rows/s");
        println!("  rusqlite, 1 transaction per message:           {per_tx:>10.0} rows/s");
        let same = median(same_batch);
        println!("  rusqlite, {WRITERS} messages per transaction:          {same:>10.0} rows/s  (the store's 32 writers = {:.2} of it)", conc / same);
        println!(
            "  rusqlite, the store's statements, {WRITERS} messages per transaction: {:>8.0} rows/s\n",
            median(shape)
        );
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
