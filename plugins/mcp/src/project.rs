//! A project's own MCP servers: `<cwd>/.dispatch/mcp.json`
//! (`{"servers": {"<id>": {"command", "args"?, "env"?}}}`), else
//! `<cwd>/opencode.json`'s `mcp` key (opencode's shape — `command` as one
//! array, `environment`, `enabled` — is read too). They start when a turn
//! first runs in that directory, are shared by every conversation there,
//! and are replaced when the file changes. A file that cannot be used is
//! reported in `GET /conversations/:id/mcp`, never fatal.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dispatch_abi::runtime::Runner;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::config::{self, Config, Launch, ServerConfig};
use crate::server::{self, Server, Tools};

/// A `command`: one string (with `args`), or the whole command line.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CommandLine {
    One(String),
    Argv(Vec<String>),
}

/// One server entry of a project file.
#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    command: Option<CommandLine>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// opencode's name for `env`.
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    disabled: bool,
}

/// What a project's files say.
#[derive(Debug, Default)]
pub struct Read {
    /// The file the servers come from.
    pub source: Option<&'static str>,
    /// Its servers.
    pub launches: Vec<Launch>,
    /// Why a file (or an entry) could not be used, with the file's name.
    pub problems: Vec<(&'static str, String)>,
    /// The files' text: a change replaces the project's servers.
    pub fingerprint: String,
}

/// Read `cwd`'s project servers, with `base`'s timeouts.
pub fn read(cwd: &Path, base: &Config) -> Read {
    let mut read = Read::default();
    for (file, key) in [(".dispatch/mcp.json", "servers"), ("opencode.json", "mcp")] {
        let path = cwd.join(file);
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        read.fingerprint.push_str(&text);
        let value: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                read.problems.push((file, format!("{file} is not valid JSON: {e}")));
                continue;
            }
        };
        let Some(entries) = value.get(key).and_then(Value::as_object) else { continue };
        let mut servers = BTreeMap::new();
        for (id, entry) in entries {
            let entry = match Entry::deserialize(entry) {
                Ok(e) => e,
                Err(e) => {
                    read.problems.push((file, format!("server `{id}` ({file}): {e}")));
                    continue;
                }
            };
            if entry.disabled || entry.enabled == Some(false) {
                continue;
            }
            if let Some(kind) =
                entry.kind.as_deref().filter(|k| !matches!(*k, "local" | "stdio" | "remote" | "http"))
            {
                read.problems.push((file, format!("server `{id}` ({file}): unknown type `{kind}`")));
                continue;
            }
            let (command, mut args) = match entry.command {
                Some(CommandLine::One(c)) => (Some(c), Vec::new()),
                Some(CommandLine::Argv(argv)) => match argv.split_first() {
                    Some((c, rest)) => (Some(c.clone()), rest.to_vec()),
                    None => (Some(String::new()), Vec::new()),
                },
                None => (None, Vec::new()),
            };
            args.extend(entry.args);
            let mut env = entry.environment;
            env.extend(entry.env);
            let stdio = command.is_some();
            servers.insert(
                id.clone(),
                ServerConfig {
                    command,
                    args,
                    env,
                    cwd: stdio.then(|| cwd.to_path_buf()),
                    url: entry.url,
                    headers: entry.headers,
                    call_timeout_ms: None,
                    disabled: false,
                },
            );
        }
        if servers.is_empty() {
            continue;
        }
        // Entry by entry, so one bad server does not take the others down.
        // `${NAME}` is not expanded: the file comes with the project, and
        // the host's environment holds its provider keys.
        for (id, server) in servers {
            let config =
                Config { servers: BTreeMap::from([(id, server)]), config_file: None, ..base.clone() };
            match config::compile(&config, None, &|_| None) {
                Ok(launches) => read.launches.extend(launches.into_iter().map(|l| Launch {
                    origin: file.to_owned(),
                    project: Some(cwd.to_path_buf()),
                    ..l
                })),
                Err(e) => {
                    let e = e.replace("([plugin.config.servers])", &format!("({file})"));
                    read.problems.extend(e.lines().map(|l| (file, l.to_owned())));
                }
            }
        }
        read.source = Some(file);
        return read;
    }
    read
}

/// One project's running servers.
pub struct Project {
    /// What its files said when it was started.
    pub read: Read,
    /// Its servers.
    pub servers: Vec<Arc<Server>>,
    shutdown: watch::Sender<bool>,
    started: tokio::sync::OnceCell<()>,
    /// A turn began starting them.
    starting: std::sync::atomic::AtomicBool,
    /// Their supervisors, for deactivation.
    supervisors: Mutex<Vec<futures::future::BoxFuture<'static, Result<(), dispatch_abi::Error>>>>,
}

impl Project {
    fn new(read: Read, servers: Vec<Arc<Server>>) -> Arc<Project> {
        Arc::new(Project {
            read,
            servers,
            shutdown: watch::channel(false).0,
            started: Default::default(),
            starting: false.into(),
            supervisors: Mutex::default(),
        })
    }
}

impl std::fmt::Debug for Project {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Project").field("servers", &self.servers).finish_non_exhaustive()
    }
}

/// Every project's servers, by directory.
pub struct Projects {
    /// The projects with servers a turn asked for (a directory without
    /// any is not kept).
    map: Mutex<HashMap<PathBuf, Arc<Project>>>,
    base: Config,
    tools: Arc<dyn Tools>,
    runner: Runner,
}

impl std::fmt::Debug for Projects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projects").finish_non_exhaustive()
    }
}

impl Projects {
    /// No project loaded yet.
    pub fn new(base: Config, tools: Arc<dyn Tools>, runner: Runner) -> Arc<Projects> {
        Arc::new(Projects { map: Mutex::default(), base, tools, runner })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Arc<Project>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The project of `cwd` as it is configured now, loaded (replacing one
    /// whose files changed) but not started.
    fn current(&self, cwd: &Path) -> Arc<Project> {
        let read = read(cwd, &self.base);
        let mut map = self.lock();
        if let Some(p) = map.get(cwd) {
            if p.read.fingerprint == read.fingerprint {
                return Arc::clone(p);
            }
        }
        let start_timeout = Duration::from_millis(self.base.start_timeout_ms);
        let servers = read
            .launches
            .iter()
            // Never given up on: a failing project server is retried in
            // the background (backing off to every 30 s) for as long as
            // its project's file names it.
            .map(|l| Server::new(l.clone(), start_timeout, u32::MAX, self.runner.clone()))
            .collect();
        let project = Project::new(read, servers);
        let old = if project.servers.is_empty() {
            map.remove(cwd)
        } else {
            map.insert(cwd.to_path_buf(), Arc::clone(&project))
        };
        if let Some(old) = old {
            tracing::info!(project = %cwd.display(), "the project's MCP configuration changed; its servers are replaced");
            self.stop(&old);
        }
        project
    }

    /// Stop `project`'s servers and withdraw their tools.
    fn stop(&self, project: &Project) {
        let _ = project.shutdown.send(true);
        for s in &project.servers {
            s.kill_group();
            self.tools.publish(s, Vec::new());
        }
    }

    /// The project of `cwd`, its servers started (the first call waits for
    /// their first start, at most the start timeout; a server that fails
    /// goes on retrying in the background, its tools left out meanwhile).
    pub async fn for_turn(&self, cwd: &Path) -> Arc<Project> {
        let project = self.current(cwd);
        project
            .started
            .get_or_init(|| async {
                project.starting.store(true, std::sync::atomic::Ordering::Release);
                let mut firsts = Vec::new();
                for s in &project.servers {
                    let (first, started) = tokio::sync::oneshot::channel();
                    let supervise = server::supervise(
                        Arc::clone(s),
                        Arc::clone(&self.tools),
                        project.shutdown.subscribe(),
                        first,
                    );
                    let running = Box::pin(self.runner.run(async move {
                        supervise.await;
                        Ok(())
                    }));
                    project.supervisors.lock().unwrap_or_else(PoisonError::into_inner).push(running);
                    firsts.push(started);
                }
                let deadline = Duration::from_millis(self.base.start_timeout_ms) + Duration::from_millis(500);
                let _ = tokio::time::timeout(deadline, futures::future::join_all(firsts)).await;
            })
            .await;
        project
    }

    /// The project of `cwd` if a turn started it (or is starting it) and
    /// its files did not change since; else what its files say, not
    /// started.
    pub fn peek(&self, cwd: &Path) -> Arc<Project> {
        let read = read(cwd, &self.base);
        if let Some(p) = self.lock().get(cwd) {
            if p.read.fingerprint == read.fingerprint && p.starting.load(std::sync::atomic::Ordering::Acquire)
            {
                return Arc::clone(p);
            }
        }
        Project::new(read, Vec::new())
    }

    /// Stop every project's servers, waiting for them at most `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let projects: Vec<Arc<Project>> = self.lock().values().cloned().collect();
        for p in &projects {
            let _ = p.shutdown.send(true);
        }
        let supervisors: Vec<_> = projects
            .iter()
            .flat_map(|p| std::mem::take(&mut *p.supervisors.lock().unwrap_or_else(PoisonError::into_inner)))
            .collect();
        let _ = tokio::time::timeout(grace, futures::future::join_all(supervisors)).await;
        for p in &projects {
            for s in &p.servers {
                s.kill_group();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_project_file_wins_and_opencodes_shape_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path();
        assert!(read(cwd, &Config::default()).launches.is_empty());
        std::fs::write(
            cwd.join("opencode.json"),
            r#"{"mcp": {"od": {"type": "local", "command": ["npx", "-y", "srv"], "environment": {"A": "1"}},
                        "off": {"command": ["x"], "enabled": false}}}"#,
        )
        .unwrap();
        let r = read(cwd, &Config::default());
        assert_eq!(r.source, Some("opencode.json"));
        assert_eq!(r.launches.len(), 1);
        assert_eq!(r.launches[0].origin, "opencode.json");
        match &r.launches[0].transport {
            config::Transport::Stdio { command, args, env, cwd: dir } => {
                assert_eq!(
                    (command.as_str(), args.as_slice()),
                    ("npx", &["-y".to_owned(), "srv".to_owned()][..])
                );
                assert_eq!(env, &[("A".to_owned(), "1".to_owned())]);
                assert_eq!(dir.as_deref(), Some(cwd));
            }
            other => panic!("{other:?}"),
        }
        std::fs::create_dir(cwd.join(".dispatch")).unwrap();
        std::fs::write(cwd.join(".dispatch/mcp.json"), "{broken").unwrap();
        let r = read(cwd, &Config::default());
        assert_eq!(r.source, Some("opencode.json"), "a broken file falls through");
        assert_eq!(r.problems.len(), 1);
        assert!(r.problems[0].1.starts_with(".dispatch/mcp.json is not valid JSON"), "{:?}", r.problems);
        std::fs::write(
            cwd.join(".dispatch/mcp.json"),
            r#"{"servers": {"p": {"command": "srv", "args": ["--x"]}}}"#,
        )
        .unwrap();
        let r = read(cwd, &Config::default());
        assert_eq!((r.source, r.launches.len()), (Some(".dispatch/mcp.json"), 1));
        assert_eq!(r.launches[0].project.as_deref(), Some(cwd));
        std::fs::write(cwd.join(".dispatch/mcp.json"), r#"{"servers": {"p": {"command": ""}}}"#).unwrap();
        let r = read(cwd, &Config::default());
        assert!(r.launches.is_empty());
        assert!(
            r.problems[0].1.contains("server `p` (.dispatch/mcp.json): `command` is empty"),
            "{:?}",
            r.problems
        );
    }
}
