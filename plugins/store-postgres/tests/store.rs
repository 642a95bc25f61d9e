//! What store-postgres promises beyond the conformance suite: several
//! hosts on one database, a clear refusal of a database it cannot use.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;

use dispatch_contracts::protocol::wire::{Chunk, Role};
use dispatch_contracts::store::{Appended, History, StoreRequest, STORE};
use dispatch_plugin_store_postgres::StorePostgres;
use dispatch_testkit::TestHost;
use serde_json::json;

fn append(host: &dispatch_abi::Host, id: &str, n: usize) -> Vec<u64> {
    let chunks = (0..n).map(|k| Chunk::text(format!("chunk {k}"))).collect();
    let req =
        StoreRequest::Append { conversation_id: id.into(), role: Role::Assistant, turn_id: None, chunks };
    let v = futures::executor::block_on(host.call(&STORE, &req)).unwrap();
    serde_json::from_value::<Appended>(v).unwrap().seqs
}

/// Three hosts (three stores with pools of their own) appending to the same
/// conversations at once hand out every seq exactly once, with no gaps,
/// and each host reads what the others wrote.
#[test]
fn three_hosts_appending_to_one_conversation_leave_it_gap_free() {
    let schema = support::Schema::new();
    let hosts: Vec<TestHost> = (0..3).map(|_| support::host_on(&schema, json!({"pool_size": 4}))).collect();
    let mut acked: HashMap<String, Vec<u64>> = HashMap::new();
    std::thread::scope(|s| {
        let mut writers = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            for w in 0..4 {
                let host = h.host().clone();
                writers.push(s.spawn(move || {
                    let id = if w % 2 == 0 { "shared".to_owned() } else { format!("own-{i}") };
                    let got: Vec<Vec<u64>> = (0..25).map(|k| append(&host, &id, 1 + (k + w) % 3)).collect();
                    (id, got)
                }));
            }
        }
        for w in writers {
            let (id, got) = w.join().unwrap();
            for seqs in got {
                assert!(seqs.windows(2).all(|p| p[1] == p[0] + 1), "{seqs:?}");
                acked.entry(id.clone()).or_default().extend(seqs);
            }
        }
    });
    for (id, mut seqs) in acked {
        seqs.sort_unstable();
        let n = seqs.len() as u64;
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "{id}");
        // Every host reads the whole log.
        for h in &hosts {
            let req = StoreRequest::History {
                conversation_id: id.clone(),
                since_seq: None,
                before_seq: None,
                limit: None,
            };
            let history: History = serde_json::from_value(h.call(&STORE, &req).unwrap()).unwrap();
            assert_eq!(history.latest_seq, n, "{id}");
            assert_eq!(history.chunks.len() as u64, n, "{id}");
        }
    }
}

/// A database whose schema is newer than this build (a later version ran
/// there) is refused at start, naming the migration, and left as it is.
#[test]
fn a_database_from_a_newer_schema_is_refused_naming_the_migration() {
    let schema = support::Schema::new();
    {
        let h = support::host_on(&schema, json!({}));
        append(h.host(), "c", 1);
    }
    schema.sql(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (999, 'from the future', true, '\\x00', 0)",
    );
    let mut h = TestHost::new();
    let e = h.activate::<StorePostgres>(json!({"url": support::url(), "schema": schema.name})).unwrap_err();
    assert_eq!(e.code(), "invalid_config", "{e}");
    let known = dispatch_plugin_store_postgres::store::MIGRATOR.iter().map(|m| m.version).max().unwrap();
    assert!(e.message().contains(&format!("schema is version 999, newer than this build's {known}")), "{e}");
    schema.sql("DELETE FROM _sqlx_migrations WHERE version = 999");
    let h = support::host_on(&schema, json!({}));
    assert_eq!(append(h.host(), "c", 1), vec![2], "refusing changed nothing");
}

/// No server at the address, or no URL at all: activation fails at once
/// with a message naming what is wrong (and never the password).
#[test]
fn a_database_that_cannot_be_reached_fails_activation_with_a_clear_message() {
    let mut h = TestHost::new();
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = format!("postgres://dispatch:hunter2@127.0.0.1:{port}/nowhere");
    let e = h.activate::<StorePostgres>(json!({"url": url, "connect_timeout_ms": 2000})).unwrap_err();
    let msg = e.message().to_owned();
    assert!(
        msg.starts_with(&format!(
            "cannot open the database postgres://dispatch:***@127.0.0.1:{port}/nowhere"
        )),
        "{msg}"
    );
    assert!(!msg.contains("hunter2"), "{msg}");
    let e = h.activate::<StorePostgres>(json!({"schema": "x"}));
    if std::env::var_os(dispatch_plugin_store_postgres::URL_VARIABLE).is_none() {
        let e = e.unwrap_err();
        assert!(e.message().contains("DISPATCH_DATABASE_URL"), "{e}");
    }
    let bad = h.activate::<StorePostgres>(json!({"url": support::url(), "schema": "no-dashes"})).unwrap_err();
    assert!(bad.message().contains("not a plain name"), "{bad}");
}

/// Regression (found by the cross-host benchmark): two hosts starting at
/// once on a new schema raced on `CREATE SCHEMA IF NOT EXISTS`, and one
/// failed with a duplicate key. Both start now, and migrate once.
#[test]
fn hosts_starting_together_on_a_new_schema_all_start() {
    let schema = support::Schema::new();
    let hosts: Vec<TestHost> = std::thread::scope(|s| {
        let starting: Vec<_> = (0..4).map(|_| s.spawn(|| support::host_on(&schema, json!({})))).collect();
        starting.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(append(hosts[0].host(), "c", 1), vec![1]);
    assert_eq!(append(hosts[3].host(), "c", 1), vec![2]);
}
