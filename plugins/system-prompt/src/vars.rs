//! The variables a template may use, and where their values come from.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dispatch_contracts::prompt::Variable;
use dispatch_contracts::protocol::secrets::base_env;
use dispatch_contracts::session::PromptContext;

use crate::template::Lookup;

/// Largest file a `file:` variable inlines.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;
/// Longest a `git` variable may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(2);

/// Every variable, for `GET /system-prompt/variables`.
pub fn catalog() -> Vec<Variable> {
    let v = |kind: &str, name: &str, description: &str| Variable {
        kind: kind.into(),
        name: name.into(),
        description: description.into(),
        dynamic: false,
    };
    vec![
        v("system", "time", "Current time, ISO 8601 (UTC)"),
        v("system", "date", "Current date (YYYY-MM-DD, UTC)"),
        v("system", "os", "Operating system (distribution name on Linux)"),
        v("system", "hostname", "Machine hostname"),
        v("prompt", "cwd", "The conversation's working directory"),
        v("prompt", "model", "The model, <credential>/<model>"),
        v("prompt", "conversation_id", "The conversation's id"),
        v("prompt", "tools", "The tools on offer, one per line: name — description"),
        v("git", "branch", "Current git branch of the working directory"),
        v("git", "status", "Short git status of the working directory"),
        Variable {
            kind: "file".into(),
            name: "<path>".into(),
            description: "Contents of a file inside the working directory (relative path, at most 64 KiB; \
                          only when the directory lies beneath the plugin's file_roots)"
                .into(),
            dynamic: true,
        },
    ]
}

/// Values for one rendering.
#[derive(Debug)]
pub struct Vars<'a> {
    ctx: &'a PromptContext,
    now: SystemTime,
    roots: &'a [PathBuf],
}

impl<'a> Vars<'a> {
    /// Values for `ctx`, at the current time; `file:` reads only when the
    /// working directory lies beneath one of `roots` (canonical paths).
    pub fn new(ctx: &'a PromptContext, roots: &'a [PathBuf]) -> Self {
        Vars { ctx, now: SystemTime::now(), roots }
    }

    fn cwd(&self) -> Option<PathBuf> {
        self.ctx.cwd.as_ref().map(PathBuf::from)
    }
}

impl Lookup for Vars<'_> {
    fn get(&mut self, kind: &str, name: &str) -> Option<String> {
        match (kind, name) {
            ("system", "time") => Some(iso_time(self.now)),
            ("system", "date") => Some(iso_time(self.now)[..10].to_owned()),
            ("system", "os") => Some(os_name()),
            ("system", "hostname") => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty()),
            ("prompt", "cwd") => self.ctx.cwd.clone(),
            ("prompt", "model") => Some(self.ctx.model.clone()),
            ("prompt", "conversation_id") => Some(self.ctx.conversation_id.clone()),
            ("prompt", "tools") => (!self.ctx.tools.is_empty()).then(|| {
                self.ctx
                    .tools
                    .iter()
                    .map(|t| format!("{} — {}", t.name, first_line(&t.description)))
                    .collect::<Vec<_>>()
                    .join("\n")
            }),
            ("git", "branch") => git(&self.cwd()?, &["rev-parse", "--abbrev-ref", "HEAD"]),
            ("git", "status") => git(&self.cwd()?, &["status", "--short"]),
            ("file", path) => read_inside(&self.cwd()?, path, self.roots),
            _ => None,
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn iso_time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn os_name() -> String {
    let pretty = std::fs::read_to_string("/etc/os-release").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
            .filter(|v| !v.is_empty())
    });
    match pretty {
        Some(p) => format!("{} ({p})", std::env::consts::OS),
        None => std::env::consts::OS.to_owned(),
    }
}

/// Run git in `dir`; its trimmed output, or nothing when it fails or hangs.
/// With only [`base_env`] of the host's environment (the host's
/// credentials must not reach a process whose environment any process of
/// the same user can read) and no `core.fsmonitor` (a command the
/// repository's own configuration, which the model can write, would have
/// `git status` run).
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let mut child = Command::new("git")
        .env_clear()
        .envs(base_env())
        .env("GIT_TERMINAL_PROMPT", "0")
        .args(["-c", "core.fsmonitor=false", "-C"])
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) if started.elapsed() > GIT_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    let mut out = String::new();
    child.stdout.take()?.take(MAX_FILE_BYTES).read_to_string(&mut out).ok()?;
    let out = out.trim().to_owned();
    (!out.is_empty()).then_some(out)
}

/// A file inside `cwd` (no absolute paths, no escaping through `..` or a
/// symlink), at most [`MAX_FILE_BYTES`] — and only when `cwd` itself lies
/// beneath one of `roots`: a request may name any working directory (`/`
/// included), so the directory alone bounds nothing.
fn read_inside(cwd: &Path, rel: &str, roots: &[PathBuf]) -> Option<String> {
    if Path::new(rel).is_absolute() {
        return None;
    }
    let root = std::fs::canonicalize(cwd).ok()?;
    if !roots.iter().any(|r| root.starts_with(r)) {
        tracing::debug!(cwd = %root.display(), "file: variable skipped: the working directory is outside file_roots");
        return None;
    }
    let path = std::fs::canonicalize(root.join(rel)).ok()?;
    if !path.starts_with(&root) || !path.is_file() {
        return None;
    }
    let mut text = String::new();
    std::fs::File::open(&path).ok()?.take(MAX_FILE_BYTES).read_to_string(&mut text).ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso_time(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(iso_time(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(iso_time(UNIX_EPOCH + Duration::from_secs(1_795_000_000)), "2026-11-18T11:06:40Z");
    }

    /// A repository the model can write decides what git runs: its
    /// `core.fsmonitor` must not run, and whatever does run (an alias
    /// here) must not get the host's credentials.
    #[test]
    fn git_runs_without_the_repositorys_fsmonitor_or_the_hosts_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let ok = Command::new("git").arg("-C").arg(dir.path()).args(args).status().unwrap().success();
            assert!(ok, "git {args:?}");
        };
        run(&["init", "-q"]);
        let marker = dir.path().join("fsmonitor-ran");
        let hook = dir.path().join("hook.sh");
        std::fs::write(&hook, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        run(&["config", "core.fsmonitor", hook.to_str().unwrap()]);
        run(&["config", "alias.envdump", "!env"]);
        std::fs::write(dir.path().join("new.txt"), "x").unwrap();
        // (The only test here touching the environment.)
        std::env::set_var("DISPATCH_VARS_TEST_API_KEY", "sk-vars-test");
        let status = git(dir.path(), &["status", "--short"]).unwrap();
        assert!(status.contains("new.txt"), "{status}");
        assert!(!marker.exists(), "the repository's core.fsmonitor ran");
        let env = git(dir.path(), &["envdump"]).unwrap();
        assert!(env.contains("PATH="), "{env}");
        assert!(!env.contains("sk-vars-test"), "a credential reached git: {env}");
    }

    #[test]
    fn files_stay_inside_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        let roots = [std::fs::canonicalize(dir.path()).unwrap()];
        std::fs::write(dir.path().join("AGENTS.md"), "be brief").unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(outside.path(), "secret").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        assert_eq!(read_inside(dir.path(), "AGENTS.md", &roots).as_deref(), Some("be brief"));
        assert_eq!(read_inside(dir.path(), "link", &roots), None);
        assert_eq!(read_inside(dir.path(), outside.path().to_str().unwrap(), &roots), None);
        assert_eq!(read_inside(dir.path(), "../x", &roots), None);
        assert_eq!(read_inside(dir.path(), "missing", &roots), None);
    }

    /// A request chooses its working directory: `/` must not widen what a
    /// template reads to the whole machine.
    #[test]
    fn a_working_directory_outside_the_roots_reads_nothing() {
        let root = tempfile::tempdir().unwrap();
        let roots = [std::fs::canonicalize(root.path()).unwrap()];
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("key"), "private").unwrap();
        assert_eq!(read_inside(elsewhere.path(), "key", &roots), None);
        assert_eq!(read_inside(Path::new("/"), "etc/hostname", &roots), None);
        assert_eq!(read_inside(Path::new("/"), "etc/hostname", &[]), None);
        std::fs::create_dir(root.path().join("sub")).unwrap();
        std::fs::write(root.path().join("sub/AGENTS.md"), "sub").unwrap();
        assert_eq!(read_inside(&root.path().join("sub"), "AGENTS.md", &roots).as_deref(), Some("sub"));
    }
}
