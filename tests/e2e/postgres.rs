//! Several `dispatch serve` hosts on one PostgreSQL database
//! (store-postgres): the real binaries, the real server, a schema per test.

use serde_json::{json, Value};

use dispatch_test_support::pg::{url, Schema};

use crate::http::{chat, get, product_config_on, text_of, Server, LOOPBACK};

fn host_config(schema: &Schema) -> crate::support::Written {
    let store = format!("url = {:?}\nschema = {:?}\nmax_chunk_bytes = 16777216", url(), schema.name);
    product_config_on(LOOPBACK, LOOPBACK, &[], Some(("libdispatch_plugin_store_postgres.so", store)))
}

fn chunks(s: &Server, id: &str) -> Vec<Value> {
    let a = get(&format!("{}/conversations/{id}", s.base));
    assert_eq!(a.status, 200, "{}", a.text);
    a.body["chunks"].as_array().unwrap().clone()
}

/// A conversation started on one host is read and continued on the other:
/// one log, seqs continuing, the list and metadata the same on both; a
/// host killed with SIGKILL loses nothing it acknowledged.
#[test]
fn two_hosts_on_one_database_serve_the_same_conversations() {
    let schema = Schema::new();
    let (cfg_a, cfg_b) = (host_config(&schema), host_config(&schema));
    let mut a = Server::start(&cfg_a);
    let b = Server::start(&cfg_b);
    let (answer, events) = chat(&a.base, json!({"conversationId": "shared", "message": "hello"}));
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(!text_of(&events).is_empty(), "{events:?}");
    let on_a = chunks(&a, "shared");
    assert_eq!(chunks(&b, "shared"), on_a, "host B reads host A's turn");

    let (answer, _) = chat(&b.base, json!({"conversationId": "shared", "message": "and again"}));
    assert_eq!(answer.status, 200, "{}", answer.text);
    let all = chunks(&a, "shared");
    assert!(all.len() > on_a.len(), "host A reads host B's turn");
    for (i, c) in all.iter().enumerate() {
        assert_eq!(c["seq"], i as u64 + 1, "one gap-free log: {all:?}");
    }
    let list = |s: &Server| get(&format!("{}/conversations", s.base)).body["conversations"].clone();
    assert_eq!(list(&a), list(&b));
    assert_eq!(list(&a)[0]["title"], "hello");

    // SIGKILL: what A acknowledged is there for B.
    let (answer, _) = chat(&a.base, json!({"conversationId": "last", "message": "remember this"}));
    assert_eq!(answer.status, 200);
    let acknowledged = chunks(&a, "last");
    a.stop_with(9);
    assert_eq!(chunks(&b, "last"), acknowledged);
    // The `store` dependency of the session is satisfied by store-postgres.
    let ext = get(&format!("{}/extensions", b.base)).body;
    let active =
        |id: &str| ext["plugins"].as_array().unwrap().iter().any(|e| e["id"] == id && e["state"] == "active");
    assert!(active("store-postgres") && active("session") && !active("store-sqlite"), "{ext}");
}
