//! A test host with store-postgres on a schema of the test's own.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use dispatch_plugin_store_postgres::StorePostgres;
pub use dispatch_test_support::pg::{url, Schema};
use dispatch_testkit::TestHost;
use serde_json::Value;

/// A test host with store-postgres active on `schema`, `extra` merged
/// into its configuration.
pub fn host_on(schema: &Schema, extra: Value) -> TestHost {
    let mut config = serde_json::json!({"url": url(), "schema": schema.name});
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    let mut host = TestHost::new();
    host.activate::<StorePostgres>(config).expect("store-postgres activates");
    host
}
