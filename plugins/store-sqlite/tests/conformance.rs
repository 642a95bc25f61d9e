//! The store conformance suite (`dispatch-store-conformance`) against
//! store-sqlite, each check on a new database file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use dispatch_plugin_store_sqlite::StoreSqlite;
use dispatch_store_conformance::{Fresh, TestHost};

fn fresh() -> Fresh {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut host = TestHost::new();
    host.activate::<StoreSqlite>(serde_json::json!({"path": dir.path().join("dispatch.db")}))
        .expect("store-sqlite activates");
    Fresh::new(host).keeping(dir)
}

dispatch_store_conformance::conformance_tests!(fresh);
