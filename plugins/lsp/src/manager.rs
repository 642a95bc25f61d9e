//! The running servers: one per (server, root), started on first use,
//! shut down when idle, restarted after a crash with a back-off, retried
//! after a failed start once `retry_after` passed or its configuration
//! changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::config::Spec;
use crate::Settings;

/// Crash back-off: the first restart waits this, each next one twice as
/// long, up to `retry_after`.
const CRASH_BACKOFF: Duration = Duration::from_secs(1);
/// A server up this long before it crashed starts its back-off afresh.
const HEALTHY: Duration = Duration::from_secs(60);

/// Whether `spec`'s program can be found (on `PATH`, or as a path).
pub fn installed(spec: &Spec) -> bool {
    let Some(program) = spec.command.first() else { return false };
    if program.contains('/') {
        return std::path::Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Where one instance is.
#[derive(Debug, Default)]
enum Slot {
    /// Never started, or shut down when idle.
    #[default]
    NotStarted,
    /// Running.
    Running(Arc<Client>),
    /// Failed to start or crashed; not tried again before `retry_at`
    /// unless its configuration changes.
    Failed { error: String, spec: Box<Spec>, retry_at: Instant },
}

/// One (server, root).
#[derive(Debug)]
struct Instance {
    slot: tokio::sync::Mutex<Slot>,
    /// Being started now (what status shows while another call waits).
    starting: std::sync::atomic::AtomicBool,
    last_used: Mutex<Instant>,
    /// Crashes in a row without a healthy minute between.
    crashes: std::sync::atomic::AtomicU32,
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

/// The servers of the plugin.
#[derive(Debug)]
pub struct Manager {
    instances: Mutex<HashMap<(String, PathBuf), Arc<Instance>>>,
    settings: Settings,
}

impl Manager {
    /// No servers yet.
    pub fn new(settings: Settings) -> Arc<Manager> {
        Arc::new(Manager { instances: Mutex::default(), settings })
    }

    fn instance(&self, spec: &Spec, root: &Path) -> Arc<Instance> {
        let mut map = self.instances.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry((spec.id.clone(), root.to_path_buf())).or_insert_with(|| {
            Arc::new(Instance {
                slot: tokio::sync::Mutex::default(),
                starting: false.into(),
                last_used: Mutex::new(Instant::now()),
                crashes: 0.into(),
            })
        }))
    }

    /// The running server for `spec` at `root`, started if need be.
    pub async fn client(&self, spec: &Spec, root: &Path) -> Result<Arc<Client>, String> {
        let instance = self.instance(spec, root);
        *instance.last_used.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        let mut slot = instance.slot.lock().await;
        let prefix = |e: &str| format!("{} [from {}]: {e}", spec.id, spec.source.as_str());
        match &*slot {
            Slot::Running(client) if client.ended().is_none() && client.spec() == spec => {
                return Ok(Arc::clone(client));
            }
            Slot::Running(client) if client.ended().is_none() => {
                // Its configuration changed: the new one replaces it.
                tracing::info!(server = %spec.id, root = %root.display(), "configuration changed; restarting");
                client.shutdown().await;
            }
            Slot::Running(client) => {
                // It crashed: back off before the next start.
                let why = client.ended().unwrap_or_default();
                let crashes = if client.uptime() >= HEALTHY {
                    instance.crashes.store(1, std::sync::atomic::Ordering::Relaxed);
                    1
                } else {
                    instance.crashes.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
                };
                let wait =
                    CRASH_BACKOFF.saturating_mul(1 << (crashes - 1).min(16)).min(self.settings.retry_after);
                tracing::warn!(server = %spec.id, root = %root.display(), %why, ?wait, "the language server ended; it restarts after a back-off");
                client.kill_group();
                let error = prefix(&format!("{why} (restarting)"));
                *slot = Slot::Failed {
                    error: error.clone(),
                    spec: Box::new(client.spec().clone()),
                    retry_at: Instant::now() + wait,
                };
                if !wait.is_zero() {
                    return Err(error);
                }
            }
            Slot::Failed { error, spec: failed, retry_at }
                if **failed == *spec && Instant::now() < *retry_at =>
            {
                return Err(error.clone());
            }
            Slot::Failed { .. } | Slot::NotStarted => {}
        }
        instance.starting.store(true, std::sync::atomic::Ordering::Relaxed);
        let started = Client::start(spec, root, self.settings.start_timeout).await;
        instance.starting.store(false, std::sync::atomic::Ordering::Relaxed);
        match started {
            Ok(client) => {
                tracing::info!(server = %spec.id, root = %root.display(), pid = ?client.pid(), "language server started");
                *slot = Slot::Running(Arc::clone(&client));
                Ok(client)
            }
            Err(e) => {
                let error = prefix(&e);
                tracing::warn!(server = %spec.id, root = %root.display(), "{error}");
                *slot = Slot::Failed {
                    error: error.clone(),
                    spec: Box::new(spec.clone()),
                    retry_at: Instant::now() + self.settings.retry_after,
                };
                Err(error)
            }
        }
    }

    /// The state of `spec` at `root`, without starting anything.
    pub fn state(&self, spec: &Spec, root: &Path) -> State {
        let instance = self.instance(spec, root);
        if instance.starting.load(std::sync::atomic::Ordering::Relaxed) {
            return State::Starting;
        }
        let Ok(slot) = instance.slot.try_lock() else { return State::Starting };
        match &*slot {
            Slot::Running(c) if c.ended().is_none() => State::Connected,
            Slot::Running(c) => State::Error(format!(
                "{} [from {}]: {}",
                spec.id,
                spec.source.as_str(),
                c.ended().unwrap_or_default()
            )),
            Slot::Failed { error, .. } => State::Error(error.clone()),
            Slot::NotStarted => State::NotStarted,
        }
    }

    /// The running client of `spec` at `root`, if there is one.
    pub fn running(&self, spec: &Spec, root: &Path) -> Option<Arc<Client>> {
        let instance = self.instance(spec, root);
        let slot = instance.slot.try_lock().ok()?;
        match &*slot {
            Slot::Running(c) if c.ended().is_none() => Some(Arc::clone(c)),
            _ => None,
        }
    }

    /// Shut down the servers unused for `idle`.
    pub async fn reap(&self, idle: Duration) {
        let instances: Vec<(String, PathBuf, Arc<Instance>)> = self
            .instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|((id, root), i)| (id.clone(), root.clone(), Arc::clone(i)))
            .collect();
        for (id, root, instance) in instances {
            let unused = instance.last_used.lock().unwrap_or_else(PoisonError::into_inner).elapsed();
            if unused < idle {
                continue;
            }
            let Ok(mut slot) = instance.slot.try_lock() else { continue };
            if let Slot::Running(client) = &*slot {
                tracing::info!(server = %id, root = %root.display(), ?unused, "idle; shutting the language server down");
                client.shutdown().await;
                *slot = Slot::NotStarted;
            }
        }
    }

    /// Shut every server down (the plugin stops).
    pub async fn shutdown_all(&self) {
        let instances: Vec<Arc<Instance>> =
            self.instances.lock().unwrap_or_else(PoisonError::into_inner).drain().map(|(_, i)| i).collect();
        let closing = instances.into_iter().map(|instance| async move {
            let mut slot = instance.slot.lock().await;
            if let Slot::Running(client) = std::mem::take(&mut *slot) {
                client.shutdown().await;
            }
        });
        futures::future::join_all(closing).await;
    }
}
