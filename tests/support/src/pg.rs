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

/// A PostgreSQL server of the test's own: a new cluster (`initdb`) in a
/// temporary directory on a free port, which the test may stop and start
/// again — what no test may do to the machine's shared server. Stopped
/// and deleted on drop. Running as root, the server runs as the
/// `postgres` user (PostgreSQL refuses root).
#[derive(Debug)]
pub struct Private {
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

fn pg_bindir() -> std::path::PathBuf {
    let configured = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    configured
        .filter(|d| d.join("initdb").exists())
        .or_else(|| {
            let mut found: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
                .ok()?
                .flatten()
                .map(|e| e.path().join("bin"))
                .filter(|d| d.join("initdb").exists())
                .collect();
            found.sort();
            found.pop()
        })
        .expect("PostgreSQL's server programs (initdb, pg_ctl; .ci/run installs them)")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

impl Private {
    /// A new cluster, started.
    pub fn start() -> Private {
        let dir = std::env::temp_dir().join(format!("dispatch-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let out = std::process::Command::new("chown").args(["postgres:postgres"]).arg(&dir).output();
            assert!(
                out.is_ok_and(|o| o.status.success()),
                "cannot give {} to the postgres user",
                dir.display()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let private = Private { dir, bin: pg_bindir(), port };
        let data = private.dir.join("data");
        private.run(
            "initdb",
            &["-A", "trust", "-U", "postgres", "--no-sync", "-D", &data.display().to_string()],
        );
        private.start_again();
        private
    }

    /// `program` from PostgreSQL's programs, as the user the server runs as.
    fn command(&self, program: &str) -> std::process::Command {
        let path = self.bin.join(program);
        let mut command = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            std::process::Command::new(path)
        };
        command.current_dir(&self.dir);
        command
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self.command(program).args(args).output().expect("PostgreSQL's programs run");
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Its URL (database `postgres`).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Start it (again), waiting until it accepts connections.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let (data, log) = (self.dir.join("data"), self.dir.join("log"));
        self.run(
            "pg_ctl",
            &[
                "-D",
                &data.display().to_string(),
                "-l",
                &log.display().to_string(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
    }

    /// Stop it: `fast` ends every session at once (what a restart by an
    /// operator does), waiting until it is down.
    pub fn stop(&self) {
        let data = self.dir.join("data");
        self.run("pg_ctl", &["-D", &data.display().to_string(), "-m", "fast", "-w", "stop"]);
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let _ = self.command("pg_ctl").args(["-D", &data, "-m", "immediate", "-w", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
