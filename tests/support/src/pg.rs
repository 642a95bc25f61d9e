//! The test PostgreSQL server (`$DISPATCH_TEST_DATABASE_URL`, default the
//! machine's `postgres://postgres@127.0.0.1:5432/test`) and a schema of
//! its own for each test, so tests run in parallel and leave nothing.

/// The test server's URL.
pub fn url() -> String {
    std::env::var("DISPATCH_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Run `sql` with `psql` (the PostgreSQL client), failing the test with
/// what it said.
pub fn psql(sql: &str) {
    let out = std::process::Command::new("psql")
        .args([url().as_str(), "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output()
        .expect("psql runs (the PostgreSQL client; .ci/run installs it)");
    assert!(
        out.status.success(),
        "psql {sql:?} failed — is PostgreSQL running at {}? {}",
        url(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A schema for one test, dropped with everything in it at the end.
#[derive(Debug)]
pub struct Schema {
    /// `t_<uuid>`: a plain identifier.
    pub name: String,
}

impl Schema {
    /// A new name (the store creates the schema).
    pub fn new() -> Schema {
        Schema { name: format!("t_{}", uuid::Uuid::new_v4().simple()) }
    }

    /// Run SQL in this schema.
    pub fn sql(&self, sql: &str) {
        psql(&format!("SET search_path TO {}; {sql}", self.name));
    }
}

impl Default for Schema {
    fn default() -> Self {
        Schema::new()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        psql(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
    }
}

/// Rewrite the `plugins.toml` at `cfg` (written for the bundled plugins)
/// to use store-postgres on `schema` in place of store-sqlite, with
/// `extra` lines of its configuration.
pub fn use_postgres(cfg: &std::path::Path, schema: &Schema, extra: &str) {
    let toml = std::fs::read_to_string(cfg).unwrap().replace(
        "path = \"libdispatch_plugin_store_sqlite.so\"\n",
        &format!(
            "path = \"libdispatch_plugin_store_postgres.so\"\n[plugin.config]\nurl = {:?}\nschema = {:?}\n{extra}",
            url(),
            schema.name
        ),
    );
    std::fs::write(cfg, toml).unwrap();
}
