//! The stores' shared workload (`dispatch_store_conformance::bench`) on
//! store-postgres; `scripts/bench-stores` runs it beside store-sqlite's.
//!
//! ```sh
//! cargo bench -p dispatch-plugin-store-postgres --bench workload
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use dispatch_plugin_store_postgres::StorePostgres;
use dispatch_test_support::pg::{url, Schema};
use dispatch_testkit::TestHost;

fn main() {
    let schema = Schema::new();
    let mut host = TestHost::new();
    host.activate::<StorePostgres>(serde_json::json!({"url": url(), "schema": schema.name, "pool_size": 32}))
        .unwrap();
    let results = dispatch_store_conformance::bench::measure(&host);
    drop(host);
    dispatch_store_conformance::bench::print(&results);
}
