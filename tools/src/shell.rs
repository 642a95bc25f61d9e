//! `run_shell`: a command through the shell, in the working directory,
//! with its output streamed while it runs.
//!
//! The command runs in a process group of its own. When it times out or
//! the turn is aborted, the whole group gets SIGKILL and the call returns
//! at once — without waiting for the pipes to close, so a grandchild that
//! holds them (`sleep 100 &`) cannot hold the turn. When the command ends
//! by itself, the group is killed too, after a short grace for the pipes
//! to drain: background jobs do not outlive the call, and nothing is left
//! behind in the process table.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use dispatch_protocol::abort::AbortSignal;
use dispatch_protocol::tool::{OutputSink, Tool, ToolContext, ToolError, ToolOutput};
use dispatch_protocol::wire::OutputStream;
use dispatch_protocol::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt as _;

use crate::input::parse;

/// Settings, from `[plugin.config]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The shell, run as `<shell> -c <command>`.
    pub shell: PathBuf,
    /// Timeout when the call gives none.
    pub default_timeout_ms: u64,
    /// Largest timeout a call may ask for.
    pub max_timeout_ms: u64,
    /// Most output kept for the result (head and tail; the middle is
    /// dropped with a note). Streaming stops at the same amount.
    pub max_output_bytes: usize,
    /// After the command exits, how long to wait for its pipes to close
    /// (a background child may hold them) before returning.
    pub drain_ms: u64,
    /// Variables copied from the host's environment into the command's, on
    /// top of [`BASE_ENV`]. Nothing else of the host's environment is
    /// passed: the model reads whatever the command prints.
    pub env_passthrough: Vec<String>,
    /// Variables set to fixed values in the command's environment.
    pub env: std::collections::BTreeMap<String, String>,
}

/// What a command's environment starts from: the host's values of these,
/// where set (the list every process the plugins start shares).
pub use dispatch_protocol::secrets::{base_env, BASE_ENV};

/// Whether a variable name looks like a credential: such names are refused
/// in [`Config::env_passthrough`] and [`Config::env`]. (The one definition,
/// shared with the host, which hides these from `/proc/<pid>/environ`.)
pub use dispatch_protocol::secrets::looks_like_a_secret;

impl Config {
    /// Refuse an environment that would hand the model a credential.
    pub fn validate(&self) -> Result<(), String> {
        let names = self.env_passthrough.iter().chain(self.env.keys());
        let secret: Vec<&str> = names.map(String::as_str).filter(|n| looks_like_a_secret(n)).collect();
        if secret.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "refusing to pass {} to shell commands: a command's output goes to the model, and these \
                 look like credentials",
                secret.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
            ))
        }
    }

    /// The command's environment: [`BASE_ENV`] and `env_passthrough` from
    /// `host_env`, then `env`.
    pub fn command_env(
        &self,
        host_env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Vec<(String, std::ffi::OsString)> {
        let mut out = Vec::new();
        for name in BASE_ENV.iter().copied().chain(self.env_passthrough.iter().map(String::as_str)) {
            if looks_like_a_secret(name) {
                continue;
            }
            if let Some(v) = host_env(name) {
                out.push((name.to_owned(), v));
            }
        }
        for (k, v) in &self.env {
            if !looks_like_a_secret(k) {
                out.push((k.clone(), v.into()));
            }
        }
        out
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            shell: PathBuf::from("/bin/sh"),
            default_timeout_ms: 120_000,
            max_timeout_ms: 600_000,
            max_output_bytes: 64 * 1024,
            drain_ms: 200,
            env_passthrough: Vec::new(),
            env: Default::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Input {
    command: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// The `run_shell` tool.
#[derive(Debug, Default)]
pub struct Shell {
    config: Config,
}

/// The output kept for the result: the first half of the cap and the
/// last half, with a count of what was dropped between.
struct Capture {
    cap: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    dropped: usize,
    streamed: usize,
}

impl Capture {
    fn new(cap: usize) -> Self {
        Capture { cap, head: Vec::new(), tail: VecDeque::new(), dropped: 0, streamed: 0 }
    }

    fn push(&mut self, bytes: &[u8]) {
        let head_room = (self.cap / 2).saturating_sub(self.head.len());
        let (to_head, rest) = bytes.split_at(head_room.min(bytes.len()));
        self.head.extend_from_slice(to_head);
        self.tail.extend(rest);
        let tail_cap = self.cap - self.cap / 2;
        if self.tail.len() > tail_cap {
            let extra = self.tail.len() - tail_cap;
            self.tail.drain(..extra);
            self.dropped += extra;
        }
    }

    fn text(&self) -> String {
        let mut out = String::from_utf8_lossy(&self.head).into_owned();
        if self.dropped > 0 {
            out.push_str(&format!("\n[… {} bytes of output omitted …]\n", self.dropped));
        }
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        out.push_str(&String::from_utf8_lossy(&tail));
        out
    }
}

/// Splits a byte stream into UTF-8 text without cutting a character in
/// two: an incomplete sequence at the end of a read waits for the next.
#[derive(Default)]
struct Utf8Carry(Vec<u8>);

impl Utf8Carry {
    fn feed(&mut self, bytes: &[u8]) -> String {
        self.0.extend_from_slice(bytes);
        let keep = match std::str::from_utf8(&self.0) {
            Ok(_) => 0,
            Err(e) if e.error_len().is_none() => self.0.len() - e.valid_up_to(),
            Err(_) => 0,
        };
        let rest = self.0.split_off(self.0.len() - keep);
        let text = String::from_utf8_lossy(&self.0).into_owned();
        self.0 = rest;
        text
    }
}

/// How the command ended.
enum End {
    Exited(ExitStatus),
    TimedOut(u64),
    Aborted,
}

fn kill_group(pgid: Option<u32>) {
    if let Some(pid) = pgid.and_then(|p| i32::try_from(p).ok()) {
        // ESRCH (the group is already gone) is fine.
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// The environment variable that marks every process of one call: its
/// descendants inherit it whatever process group or session they move to.
pub const RUN_MARKER: &str = "DISPATCH_TOOL_RUN";

/// A marker no other call of this process shares.
fn new_marker() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// SIGKILL every process whose environment carries `RUN_MARKER=marker`:
/// the ones that left the call's process group (`setsid`, `setpgid`) too.
/// Repeats while it finds any, since a dying process may have forked.
fn sweep(marker: &str) {
    let needle = format!("{RUN_MARKER}={marker}\0").into_bytes();
    let me = std::process::id();
    for _ in 0..10 {
        let mut found = false;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if pid as u32 == me {
                continue;
            }
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
            if environ.windows(needle.len()).any(|w| w == needle.as_slice()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                found = true;
            }
        }
        if !found {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kill everything a call started: its process group, then whatever left
/// the group but still carries the call's marker.
fn kill_call(pgid: Option<u32>, marker: &str) {
    kill_group(pgid);
    sweep(marker);
}

impl Shell {
    /// With these settings.
    pub fn new(config: Config) -> Self {
        Shell { config }
    }

    /// Run one call. Must be polled inside a tokio runtime (it spawns a
    /// child process and uses timers).
    pub async fn run(
        &self,
        input: Value,
        cwd: Option<&Path>,
        abort: AbortSignal,
        output: OutputSink,
    ) -> Result<ToolOutput, ToolError> {
        let input: Input = parse(input)?;
        if input.command.trim().is_empty() {
            return Err(ToolError::InvalidInput("`command` is empty".into()));
        }
        let timeout_ms = match input.timeout_ms {
            Some(0) => return Err(ToolError::InvalidInput("`timeoutMs` must be at least 1".into())),
            Some(t) if t > self.config.max_timeout_ms => {
                return Err(ToolError::InvalidInput(format!(
                    "`timeoutMs` {t} is over the limit of {} ms",
                    self.config.max_timeout_ms
                )))
            }
            Some(t) => t,
            None => self.config.default_timeout_ms,
        };
        let dir = match cwd {
            Some(d) => d.to_path_buf(),
            None => std::env::current_dir()
                .map_err(|e| ToolError::Failed(format!("no working directory: {e}")))?,
        };
        if !dir.is_dir() {
            return Err(ToolError::Failed(format!("the working directory {} does not exist", dir.display())));
        }
        let marker = new_marker();
        let mut command = tokio::process::Command::new(&self.config.shell);
        command
            .arg("-c")
            .arg(&input.command)
            .current_dir(&dir)
            .env_clear()
            .envs(self.config.command_env(|name| std::env::var_os(name)))
            .env(RUN_MARKER, &marker)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: the closure only calls prctl(2), which is async-signal-
        // safe, between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // The shell dies with the thread that started it: if the
                // host is killed outright, no cleanup code runs.
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| ToolError::Failed(format!("cannot start {}: {e}", self.config.shell.display())))?;
        let pgid = child.id();
        // Killed however this function is left (a dropped future
        // included): nothing the call started may outlive it.
        struct CallGuard(Option<u32>, String);
        impl Drop for CallGuard {
            fn drop(&mut self) {
                kill_call(self.0, &self.1);
            }
        }
        let _guard = CallGuard(pgid, marker.clone());
        let (mut stdout, mut stderr) = match (child.stdout.take(), child.stderr.take()) {
            (Some(o), Some(e)) => (o, e),
            _ => return Err(ToolError::Failed("the child's pipes are missing".into())),
        };
        let mut capture = Capture::new(self.config.max_output_bytes);
        let (mut carry_out, mut carry_err) = (Utf8Carry::default(), Utf8Carry::default());
        let (mut buf_out, mut buf_err) = (vec![0u8; 8192], vec![0u8; 8192]);
        let (mut out_open, mut err_open) = (true, true);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        let mut status: Option<ExitStatus> = None;
        let mut drain_until = deadline;
        let aborted = abort.aborted();
        tokio::pin!(aborted);
        let max = self.config.max_output_bytes;
        let emit = |bytes: &[u8], carry: &mut Utf8Carry, stream: OutputStream, capture: &mut Capture| {
            capture.push(bytes);
            if capture.streamed < max {
                let room = max - capture.streamed;
                let part = &bytes[..bytes.len().min(room)];
                capture.streamed += part.len();
                let text = carry.feed(part);
                if !text.is_empty() {
                    output(&text, stream);
                }
                if capture.streamed >= max {
                    output(&format!("\n[streaming stopped at {max} bytes]\n"), OutputStream::Stderr);
                }
            }
        };
        let end = loop {
            if status.is_some() && !out_open && !err_open {
                break End::Exited(status.unwrap_or_default());
            }
            tokio::select! {
                n = stdout.read(&mut buf_out), if out_open => match n {
                    Ok(0) | Err(_) => out_open = false,
                    Ok(n) => emit(&buf_out[..n], &mut carry_out, OutputStream::Stdout, &mut capture),
                },
                n = stderr.read(&mut buf_err), if err_open => match n {
                    Ok(0) | Err(_) => err_open = false,
                    Ok(n) => emit(&buf_err[..n], &mut carry_err, OutputStream::Stderr, &mut capture),
                },
                s = child.wait(), if status.is_none() => match s {
                    Ok(s) => {
                        status = Some(s);
                        drain_until = (tokio::time::Instant::now() + Duration::from_millis(self.config.drain_ms)).min(deadline);
                    }
                    Err(e) => return Err(ToolError::Failed(format!("cannot wait for the command: {e}"))),
                },
                () = tokio::time::sleep_until(drain_until), if status.is_some() => {
                    // Exited, but something still holds a pipe.
                    break End::Exited(status.unwrap_or_default());
                }
                () = tokio::time::sleep_until(deadline), if status.is_none() => break End::TimedOut(timeout_ms),
                () = &mut aborted => break End::Aborted,
            }
        };
        kill_call(pgid, &marker);
        if status.is_none() {
            // Reap the shell (SIGKILL is immediate) so no zombie is left;
            // bounded, in case it is stuck in uninterruptible sleep.
            let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
        }
        let mut content = capture.text();
        if !content.is_empty() && !content.ends_with('\n') {
            content.push('\n');
        }
        let (note, is_error) = match end {
            End::Exited(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                (Some(0), _) => ("[exit code 0]".to_owned(), false),
                (Some(c), _) => (format!("[exit code {c}]"), true),
                (None, Some(sig)) => (format!("[killed by signal {sig}]"), true),
                (None, None) => ("[ended]".to_owned(), true),
            },
            End::TimedOut(ms) => {
                (format!("[timed out after {ms} ms; the command's process group was killed]"), true)
            }
            End::Aborted => ("[aborted; the command's process group was killed]".to_owned(), true),
        };
        content.push_str(&note);
        Ok(if matches!(end, End::TimedOut(_)) {
            ToolOutput::timed_out(content)
        } else {
            ToolOutput::new(content, is_error)
        })
    }
}

impl Shell {
    /// The name the model calls it by.
    pub const NAME: &'static str = "run_shell";
}

impl Tool for Shell {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn description(&self) -> &str {
        "Run a shell command (`sh -c`) in the working directory and return its combined output and \
         exit code. Output is streamed while it runs. Stdin is closed, so interactive commands fail. \
         Commands are killed (with every process they started) after `timeoutMs` (default 120000). \
         Very long output is cut in the middle. Background processes do not outlive the call."
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The command line, run by sh -c"},
                "timeoutMs": {"type": "integer", "minimum": 1, "maximum": self.config.max_timeout_ms,
                              "description": format!("Kill the command after this many milliseconds; default {}", self.config.default_timeout_ms)}
            },
            "required": ["command"],
            "additionalProperties": false
        })
    }

    fn execute(&self, input: Value, ctx: ToolContext) -> BoxFuture<Result<ToolOutput, ToolError>> {
        let shell = Shell { config: self.config.clone() };
        Box::pin(async move { shell.run(input, ctx.cwd.as_deref(), ctx.abort, ctx.output).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_head_and_tail() {
        let mut c = Capture::new(10);
        c.push(b"0123456789abcdefghij");
        assert_eq!(c.text(), "01234\n[… 10 bytes of output omitted …]\nfghij");
        let mut small = Capture::new(10);
        small.push(b"abc");
        assert_eq!(small.text(), "abc");
    }

    #[test]
    fn utf8_carry_never_splits_a_character() {
        let mut c = Utf8Carry::default();
        let e = "é".as_bytes();
        assert_eq!(c.feed(&[b'a', e[0]]), "a");
        assert_eq!(c.feed(&[e[1], b'b']), "éb");
    }
}
