//! The store conformance suite (`dispatch-store-conformance`) against
//! store-postgres on the real PostgreSQL server, each check in a schema of
//! its own (dropped afterwards), so checks run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use dispatch_store_conformance::Fresh;

fn fresh() -> Fresh {
    let schema = support::Schema::new();
    let host = support::host_on(&schema, serde_json::json!({}));
    Fresh::new(host).keeping(schema)
}

dispatch_store_conformance::conformance_tests!(fresh);
