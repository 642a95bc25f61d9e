//! Crash safety: a child process appending in a loop is killed with SIGKILL
//! at a random moment, many times over the same database. After each kill
//! the database reopens with gap-free seqs, no partial message, every
//! acknowledged append present, and `PRAGMA integrity_check` = ok.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dispatch_contracts::protocol::wire::Chunk;
use dispatch_plugin_store_sqlite::store::{Options, Store};

const KILLS: usize = 25;

/// A small xorshift PRNG seeded from the clock (the seed is printed so a
/// failure can be replayed).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_acknowledged_and_leaves_no_partial_message() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1);
    println!("CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    // Everything ever acknowledged, per conversation: (first seq, count).
    let mut acked: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    let mut total_acks = 0;

    for round in 0..KILLS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_store-append-loop"))
            .arg(&db)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Let it get going (at least one ack), then kill at a random moment.
        let first = rx.recv_timeout(Duration::from_secs(20)).expect("the child never acknowledged an append");
        let mut lines = vec![first];
        let wait = Duration::from_millis(rng.next() % 120);
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(1)) {
                lines.push(l);
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        for l in lines {
            let parts: Vec<&str> = l.split(' ').collect();
            assert_eq!(parts[0], "ack", "unexpected child output {l:?}");
            acked
                .entry(parts[1].to_owned())
                .or_default()
                .push((parts[2].parse().unwrap(), parts[3].parse().unwrap()));
            total_acks += 1;
        }

        // Reopen and check.
        let store = Store::open(Options::new(&db)).await.unwrap();
        assert_eq!(store.integrity_check().await.unwrap(), "ok", "round {round}");
        for conv in ["crash-0", "crash-1", "crash-2"] {
            let history = store.history(conv, None, None, None).await.unwrap();
            let seqs: Vec<u64> = history.chunks.iter().map(|c| c.seq).collect();
            assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "round {round}: {conv} has gaps");
            // Every acknowledged message is there, whole.
            let by_seq: HashMap<u64, &Chunk> = history.chunks.iter().map(|c| (c.seq, &c.chunk)).collect();
            for (first, count) in acked.get(conv).into_iter().flatten() {
                for s in *first..first + count {
                    assert!(by_seq.contains_key(&s), "round {round}: acknowledged {conv} seq {s} is missing");
                }
            }
            // No partial message: group by message and check each has all
            // the chunks its writer sent (the text says `c<k>` of `m<i>`).
            let mut per_message: HashMap<(String, String, String), Vec<usize>> = HashMap::new();
            for c in &history.chunks {
                let Chunk::Text { text } = &c.chunk else { panic!("unexpected chunk") };
                let mut it = text.split(' ');
                let (p, w, m, k) =
                    (it.next().unwrap(), it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
                per_message.entry((p.into(), w.into(), m.into())).or_default().push(k[1..].parse().unwrap());
            }
            for ((_, w, m), ks) in per_message {
                let wi: u64 = w[1..].parse().unwrap();
                let mi: u64 = m[1..].parse().unwrap();
                let expected = 1 + ((mi * 7 + wi) % 5) as usize;
                assert_eq!(
                    ks,
                    (0..expected).collect::<Vec<_>>(),
                    "round {round}: message {w} {m} of {conv} is partial"
                );
            }
        }
        store.close().await;
    }
    assert!(total_acks > KILLS, "the children made progress ({total_acks} acknowledged appends)");
    println!("{KILLS} kills, {total_acks} acknowledged appends verified");
}
