//! The stores' shared workload (`dispatch_store_conformance::bench`) on
//! store-sqlite; `scripts/bench-stores` runs it beside store-postgres's.
//!
//! ```sh
//! cargo bench -p dispatch-plugin-store-sqlite --bench workload
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use dispatch_plugin_store_sqlite::StoreSqlite;
use dispatch_testkit::TestHost;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = TestHost::new();
    host.activate::<StoreSqlite>(serde_json::json!({"path": dir.path().join("bench.db")})).unwrap();
    let results = dispatch_store_conformance::bench::measure(&host);
    drop(host);
    dispatch_store_conformance::bench::print(&results);
}
