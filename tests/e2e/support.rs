//! Helpers: locate the binary and libraries, write configurations, run the
//! host with a deadline so a hang fails the test instead of stalling it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `dispatch` binary cargo built for this test run.
pub fn dispatch_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dispatch"))
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The cargo profile directory the test binary lives in (target/debug).
pub fn profile_dir() -> PathBuf {
    // target/debug/deps/e2e-<hash>
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_owned()
}

/// The path of a built plugin library, or a panic explaining how to build it.
pub fn lib(file: &str) -> PathBuf {
    let p = profile_dir().join(file);
    assert!(
        p.exists(),
        "{} is missing: build the plugins first with `cargo build --workspace` (scripts/test does)",
        p.display()
    );
    p
}

/// A plugins.toml under construction, in its own temporary directory.
pub struct Config {
    pub dir: tempfile::TempDir,
    host: String,
    plugins: String,
}

impl Config {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let host = format!("plugin_dir = {:?}\ndata_dir = \"data\"\n", profile_dir().display().to_string());
        Config { dir, host, plugins: String::new() }
    }

    /// Add a `[host]` line.
    pub fn host_line(mut self, line: &str) -> Self {
        self.host.push_str(line);
        self.host.push('\n');
        self
    }

    /// Add a required plugin with an optional `[plugin.config]` body.
    pub fn plugin(self, path: &str, config: &str) -> Self {
        self.entry(path, true, config)
    }

    /// Add a plugin with `required = false`.
    pub fn optional(self, path: &str, config: &str) -> Self {
        self.entry(path, false, config)
    }

    pub fn entry(mut self, path: &str, required: bool, config: &str) -> Self {
        self.plugins.push_str(&format!("\n[[plugin]]\npath = {path:?}\nrequired = {required}\n"));
        if !config.is_empty() {
            self.plugins.push_str("[plugin.config]\n");
            self.plugins.push_str(config);
            self.plugins.push('\n');
        }
        self
    }

    /// Add raw TOML at the end.
    pub fn raw(mut self, text: &str) -> Self {
        self.plugins.push_str(text);
        self
    }

    /// Write the file; the result derefs to its path and keeps the
    /// directory alive.
    pub fn write(self) -> Written {
        let path = self.dir.path().join("plugins.toml");
        std::fs::write(&path, format!("[host]\n{}{}", self.host, self.plugins)).unwrap();
        Written { _dir: self.dir, path }
    }
}

/// A written configuration and the directory it lives in.
pub struct Written {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl std::ops::Deref for Written {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

/// What a finished run printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
}

/// Keep the developer's environment from reaching a `dispatch` the tests
/// start: every variable the host or a bundled plugin reads (a test sets
/// what it needs after this).
pub fn hermetic(cmd: &mut Command) -> &mut Command {
    for var in [
        "RUST_LOG",
        "NO_COLOR",
        "DISPATCH_API_KEY",
        "DISPATCH_BASE_URL",
        "DISPATCH_CWD",
        "DISPATCH_DATA_DIR",
        "DISPATCH_HTTP_ADDR",
        "DISPATCH_LOG_FORMAT",
        "DISPATCH_MCP_CONFIG",
        "DISPATCH_MODEL",
        "DISPATCH_SCRIPT",
        "DISPATCH_SERVER",
        "DISPATCH_TOKEN",
        "DISPATCH_WEB_DIR",
        "DISPATCH_WS_ADDR",
    ] {
        cmd.env_remove(var);
    }
    // The otel plugin reads the OpenTelemetry SDK's standard variables.
    for (var, _) in std::env::vars_os() {
        if var.to_str().is_some_and(|v| v.starts_with("OTEL_")) {
            cmd.env_remove(var);
        }
    }
    cmd
}

/// Run `dispatch ARGS` with the given environment, failing the test if it
/// does not finish within `limit`.
pub fn run(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let mut cmd = Command::new(dispatch_bin());
    hermetic(cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    wait(child, limit, &format!("dispatch {}", args.join(" ")))
}

/// Wait for `child` with a deadline, collecting its output.
pub fn wait(mut child: Child, limit: Duration, what: &str) -> Output {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                p.read_to_string(&mut s).unwrap();
            }
            s
        })
    }
    let t_out = drain(child.stdout.take());
    let t_err = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("`{what}` hung: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: t_out.join().unwrap(), stderr: t_err.join().unwrap() }
}

/// `dispatch plugins --json` on a config: the exit code, the plugin rows by
/// id, and the whole output.
pub fn plugins_json(config: &Path, env: &[(&str, &str)]) -> (Output, Vec<Value>) {
    let out = run(&["plugins", "--config", config.to_str().unwrap(), "--json"], env, Duration::from_secs(60));
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", out.stdout, out.stderr));
    let rows = v["plugins"].as_array().unwrap().clone();
    (out, rows)
}

/// The row of plugin `id` (or of the file whose stem is `id`).
pub fn row<'a>(rows: &'a [Value], id: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no row for `{id}` in {}", serde_json::to_string_pretty(rows).unwrap()))
}

/// Assert a row's state and that its error contains every fragment.
pub fn assert_row(rows: &[Value], id: &str, state: &str, fragments: &[&str]) {
    let r = row(rows, id);
    assert_eq!(r["state"], state, "state of `{id}`: {r}");
    let err = r["error"].as_str().unwrap_or("");
    for f in fragments {
        assert!(err.contains(f), "error of `{id}` should contain {f:?}; it is {err:?}");
    }
}

/// `dispatch call` with pairs; answers the output and the JSON lines.
pub fn call(config: &Path, pairs: &[(&str, &str)], env: &[(&str, &str)]) -> (Output, Vec<Value>) {
    let mut args = vec!["call", "--config", config.to_str().unwrap()];
    for (svc, body) in pairs {
        args.push(svc);
        args.push(body);
    }
    let out = run(&args, env, Duration::from_secs(60));
    let lines = out
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("line {l:?} is not JSON: {e}; stderr: {}", out.stderr))
        })
        .collect();
    (out, lines)
}

/// SHA-256 of a file, hex.
/// Write `text` to `path`, creating its directories.
pub fn write_creating(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

pub fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}
