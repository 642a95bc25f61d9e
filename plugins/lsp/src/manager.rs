//! The running servers: one per (server, where it is configured, project
//! root), started on first use — in the background, so a caller that
//! stops waiting (an edit's deadline, an aborted call) does not cancel the
//! start — shut down when idle, restarted after a crash with a back-off,
//! retried after a failed start once `retry_after` passed or at once when
//! its configuration changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dispatch_abi::runtime::Runner;
use futures::future::{BoxFuture, FutureExt as _, Shared};

use crate::client::Client;
use crate::config::Spec;
use crate::Settings;

/// Crash back-off: the first restart waits this after the crash, each next
/// one twice as long, up to `retry_after`.
const CRASH_BACKOFF: Duration = Duration::from_secs(1);
/// A server up this long before it crashed starts its back-off afresh.
const HEALTHY: Duration = Duration::from_secs(60);

/// An instance's key: the server's id, the file it is configured in, the
/// project root.
type Key = (String, &'static str, PathBuf);

/// A start under way, which any number of callers may wait for.
type Starting = Shared<BoxFuture<'static, Result<Arc<Client>, String>>>;

/// Where one instance is.
#[derive(Default)]
enum Slot {
    /// Never started, or shut down when idle.
    #[default]
    NotStarted,
    /// Being started (by a task of its own).
    Starting(Starting),
    /// Running.
    Running(Arc<Client>),
    /// Failed to start or crashed; not tried again before `retry_at`
    /// unless its configuration changes.
    Failed { error: String, spec: Box<Spec>, retry_at: Instant },
}

/// One (server, source, root).
struct Instance {
    slot: Mutex<Slot>,
    last_used: Mutex<Instant>,
    /// Crashes in a row without a healthy minute between.
    crashes: std::sync::atomic::AtomicU32,
}

impl Instance {
    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A server's state, as `/lsp` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Running.
    Connected,
    /// Being started.
    Starting,
    /// Failed; the message is prefixed `"<id> [from <source>]: "`.
    Error(String),
    /// Not running.
    NotStarted,
}

/// Whether `spec`'s program can be found (on `PATH`, or as a path).
pub fn installed(spec: &Spec) -> bool {
    let Some(program) = spec.command.first() else { return false };
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// `"<id> [from <source>]: <e>"`.
fn prefixed(spec: &Spec, e: &str) -> String {
    format!("{} [from {}]: {e}", spec.id, spec.source.as_str())
}

/// The servers of the plugin.
pub struct Manager {
    instances: Mutex<HashMap<Key, Arc<Instance>>>,
    settings: Settings,
    runner: Runner,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Manager {
    /// No servers yet; starts run on `runner`.
    pub fn new(settings: Settings, runner: Runner) -> Arc<Manager> {
        Arc::new(Manager { instances: Mutex::default(), settings, runner })
    }

    fn instance(&self, spec: &Spec, root: &Path) -> Arc<Instance> {
        let mut map = self.instances.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (spec.id.clone(), spec.source.as_str(), root.to_path_buf());
        Arc::clone(map.entry(key).or_insert_with(|| {
            Arc::new(Instance {
                slot: Mutex::default(),
                last_used: Mutex::new(Instant::now()),
                crashes: 0.into(),
            })
        }))
    }

    /// The running server for `spec` at `root`, started if need be. `use_`
    /// counts as use (keeps it from idling); a status poll does not.
    pub async fn client(&self, spec: &Spec, root: &Path, use_: bool) -> Result<Arc<Client>, String> {
        let instance = self.instance(spec, root);
        if use_ {
            *instance.last_used.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        }
        let starting = {
            let mut slot = instance.slot();
            let mut replaced = None;
            let existing = match &*slot {
                Slot::Running(client) if client.ended().is_none() && client.spec() == spec => {
                    return Ok(Arc::clone(client));
                }
                Slot::Running(client) if client.ended().is_none() => {
                    tracing::info!(server = %spec.id, root = %root.display(), "configuration changed; restarting");
                    replaced = Some(Arc::clone(client));
                    None
                }
                Slot::Running(client) => {
                    // It crashed: back off from when it did.
                    let ended = client
                        .ended()
                        .map(|e| (e.why, e.at))
                        .unwrap_or_else(|| (String::new(), Instant::now()));
                    let crashes = if client.uptime() >= HEALTHY {
                        instance.crashes.store(1, std::sync::atomic::Ordering::Relaxed);
                        1
                    } else {
                        instance.crashes.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
                    };
                    let wait = CRASH_BACKOFF
                        .saturating_mul(1 << (crashes - 1).min(16))
                        .min(self.settings.retry_after);
                    tracing::warn!(server = %spec.id, root = %root.display(), why = %ended.0, ?wait, "the language server ended; it restarts after a back-off");
                    client.kill_group();
                    let retry_at = ended.1 + wait;
                    let error = prefixed(spec, &format!("{} (restarting)", ended.0));
                    *slot = Slot::Failed {
                        error: error.clone(),
                        spec: Box::new(client.spec().clone()),
                        retry_at,
                    };
                    if Instant::now() < retry_at {
                        return Err(error);
                    }
                    None
                }
                // Someone is starting it: wait for that start.
                Slot::Starting(starting) => Some(starting.clone()),
                Slot::Failed { error, spec: failed, retry_at }
                    if **failed == *spec && Instant::now() < *retry_at =>
                {
                    return Err(error.clone());
                }
                Slot::Failed { .. } | Slot::NotStarted => None,
            };
            match existing {
                Some(starting) => starting,
                None => {
                    let starting =
                        self.start(Arc::clone(&instance), spec.clone(), root.to_path_buf(), replaced);
                    *slot = Slot::Starting(starting.clone());
                    starting
                }
            }
        };
        starting.await
    }

    /// Start `spec` at `root` on a task of its own (after shutting down
    /// the server it `replaces`), recording the outcome in `instance`.
    fn start(
        &self,
        instance: Arc<Instance>,
        spec: Spec,
        root: PathBuf,
        replaces: Option<Arc<Client>>,
    ) -> Starting {
        let (tx, rx) = futures::channel::oneshot::channel();
        let (timeout, retry_after, runner) =
            (self.settings.start_timeout, self.settings.retry_after, self.runner.clone());
        self.runner.spawn(async move {
            if let Some(old) = replaces {
                old.shutdown().await;
            }
            let started = Client::start(&spec, &root, timeout, &runner).await;
            let mut slot = instance.slot();
            let outcome = match started {
                Ok(client) => {
                    tracing::info!(server = %spec.id, root = %root.display(), pid = ?client.pid(), "language server started");
                    // A server just started is not idle.
                    *instance.last_used.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
                    *slot = Slot::Running(Arc::clone(&client));
                    Ok(client)
                }
                Err(e) => {
                    let error = prefixed(&spec, &e);
                    tracing::warn!(server = %spec.id, root = %root.display(), "{error}");
                    *slot = Slot::Failed { error: error.clone(), spec: Box::new(spec), retry_at: Instant::now() + retry_after };
                    Err(error)
                }
            };
            drop(slot);
            let _ = tx.send(outcome);
        });
        async move { rx.await.unwrap_or_else(|_| Err("the start was abandoned (the plugin is stopping)".into())) }
            .boxed()
            .shared()
    }

    /// The state of `spec` at `root`, without starting anything.
    pub fn state(&self, spec: &Spec, root: &Path) -> State {
        let instance = self.instance(spec, root);
        let slot = instance.slot();
        match &*slot {
            Slot::Running(c) => match c.ended() {
                None => State::Connected,
                Some(e) => State::Error(prefixed(spec, &format!("{} (restarting)", e.why))),
            },
            Slot::Starting(_) => State::Starting,
            Slot::Failed { error, .. } => State::Error(error.clone()),
            Slot::NotStarted => State::NotStarted,
        }
    }

    /// The running client of `spec` at `root`, if there is one.
    pub fn running(&self, spec: &Spec, root: &Path) -> Option<Arc<Client>> {
        let instance = self.instance(spec, root);
        let slot = instance.slot();
        match &*slot {
            Slot::Running(c) if c.ended().is_none() => Some(Arc::clone(c)),
            _ => None,
        }
    }

    /// Shut down the servers unused for `idle`.
    pub async fn reap(&self, idle: Duration) {
        let instances: Vec<(Key, Arc<Instance>)> = self
            .instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, i)| (k.clone(), Arc::clone(i)))
            .collect();
        for ((id, _, root), instance) in instances {
            let unused = instance.last_used.lock().unwrap_or_else(PoisonError::into_inner).elapsed();
            if unused < idle {
                continue;
            }
            let idle_client = {
                let mut slot = instance.slot();
                match std::mem::take(&mut *slot) {
                    Slot::Running(client) => Some(client),
                    other => {
                        *slot = other;
                        None
                    }
                }
            };
            if let Some(client) = idle_client {
                tracing::info!(server = %id, root = %root.display(), ?unused, "idle; shutting the language server down");
                client.shutdown().await;
            }
        }
    }

    /// Shut every server down (the plugin stops).
    pub async fn shutdown_all(&self) {
        let instances: Vec<Arc<Instance>> =
            self.instances.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        let clients: Vec<Arc<Client>> = instances
            .iter()
            .filter_map(|i| match std::mem::take(&mut *i.slot()) {
                Slot::Running(c) => Some(c),
                _ => None,
            })
            .collect();
        futures::future::join_all(clients.iter().map(|c| c.shutdown())).await;
    }
}
