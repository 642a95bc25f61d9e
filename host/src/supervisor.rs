//! Start-up and shut-down: load every planned library, order the plugins by
//! their dependencies, activate them one by one, and deactivate them in
//! reverse. Every outcome lands in a [`PluginReport`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RString, RVec};
use async_ffi::FutureExt as _;
use dispatch_abi::ffi::{BytesFuture, PluginInstanceBox, PluginModRef, ServiceHandler, ServiceHandler_TO};
pub use dispatch_contracts::plugins::{PluginList, PluginReport, Provided, State, HOST_ID};
use dispatch_contracts::plugins::{PLUGINS, PLUGIN_STATE};
use dispatch_kernel::graph::{self, GraphError, Node};
use tokio::sync::watch;

use crate::config::Plan;
use crate::loader;
use dispatch_bus::hostapi::{HostBus, PluginHost, Shared};

/// How long start-up waits for lifecycle events to be delivered.
const SETTLE_LIMIT: Duration = Duration::from_secs(2);

/// Timeouts and paths the supervisor needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Per-plugin activation deadline.
    pub activate_timeout: Duration,
    /// Per-plugin deactivation deadline.
    pub deactivate_timeout: Duration,
    /// Handed to plugins as their log filter.
    pub log_filter: String,
}

/// The running set of plugins.
pub struct Supervisor {
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    reports: Arc<Mutex<Vec<PluginReport>>>,
    active: Vec<(usize, PluginInstanceBox)>,
    settings: Settings,
}

struct PluginsService(Arc<Mutex<Vec<PluginReport>>>);
impl ServiceHandler for PluginsService {
    fn call(&self, _request: RVec<u8>) -> BytesFuture {
        let reports = self.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let body = serde_json::to_vec(&PluginList { plugins: reports }).unwrap_or_default();
        std::future::ready(RResult::ROk(RVec::from(body))).into_ffi()
    }
}

fn file_stem(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    stem.strip_prefix("lib").map(str::to_owned).unwrap_or(stem)
}

impl Supervisor {
    /// Load, order and activate everything in `plan`. Never fails as a whole:
    /// every problem is recorded in the reports and logged.
    pub async fn start(plan: Plan, settings: Settings) -> Supervisor {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let handle = tokio::runtime::Handle::current();
        let bus: HostBus = HostBus::new(Arc::new(move |fut| {
            handle.spawn(fut);
        }));
        let shared = Arc::new(Shared {
            bus,
            log: Arc::new(crate::logging::plugin_record),
            log_filter: settings.log_filter.clone(),
            data_root: plan.data_dir.clone(),
            shutdown: shutdown_rx,
        });
        let reports = Arc::new(Mutex::new(Vec::new()));
        let host_service = ServiceHandler_TO::from_value(PluginsService(Arc::clone(&reports)), TD_Opaque);
        // The bus is empty: the host's own name cannot be taken yet.
        let _ = shared.bus.provide(HOST_ID, PLUGINS.name(), PLUGINS.version(), host_service);

        let mut sup = Supervisor { shared, shutdown_tx, reports, active: Vec::new(), settings };
        sup.run(plan).await;
        sup
    }

    async fn run(&mut self, plan: Plan) {
        let mut modules: Vec<Option<PluginModRef>> = Vec::new();
        let mut configs = Vec::new();
        let mut files: Vec<(std::path::PathBuf, bool)> = Vec::new();
        let (by_id, searched) = (plan.by_id, plan.searched);
        for p in plan.plugins {
            files.push((p.path.clone(), p.drop_in));
            let file = p.path.display().to_string();
            let mut report = PluginReport {
                id: file_stem(&p.path),
                version: None,
                file,
                order: None,
                state: State::Pending,
                error: None,
                required: p.required,
                description: String::new(),
                depends_on: Vec::new(),
                provides: Vec::new(),
                activate_ms: None,
            };
            let module = match p.problem {
                Some(problem) => {
                    report.state = State::Failed;
                    report.error = Some(problem);
                    None
                }
                None => match loader::load(&p.path, p.sha256.as_deref()) {
                    Ok(loaded) => {
                        let m = loaded.manifest;
                        report.id = m.id.into_string();
                        report.version = Some(m.version.into_string());
                        report.description = m.description.into_string();
                        report.depends_on = m.depends_on.into_iter().map(RString::into_string).collect();
                        report.provides = m
                            .provides
                            .into_iter()
                            .map(|c| Provided { kind: c.kind.into_string(), name: c.name.into_string() })
                            .collect();
                        Some(loaded.module)
                    }
                    Err(e) => {
                        report.state = State::Failed;
                        report.error = Some(e.to_string());
                        None
                    }
                },
            };
            modules.push(module);
            configs.push(p.config_json);
            self.reports().push(report);
        }

        self.apply_id_entries(by_id, &searched, &files, &mut modules, &mut configs);

        // Order what loaded; graph problems fail the plugin they belong to.
        let loaded: Vec<usize> = (0..modules.len()).filter(|&i| modules[i].is_some()).collect();
        let nodes: Vec<Node> = {
            let reports = self.reports();
            loaded
                .iter()
                .map(|&i| Node { id: reports[i].id.clone(), depends_on: reports[i].depends_on.clone() })
                .collect()
        };
        let ordering = graph::order(&nodes);
        {
            let mut reports = self.reports();
            for (node, problem) in &ordering.problems {
                let i = loaded[*node];
                let msg = match problem {
                    GraphError::DuplicateId { id, first } => format!(
                        "duplicate plugin id `{id}`: already used by {}",
                        reports[loaded[*first]].file
                    ),
                    other => other.to_string(),
                };
                reports[i].state = State::Failed;
                reports[i].error = Some(msg);
            }
            for (pos, &node) in ordering.order.iter().enumerate() {
                reports[loaded[node]].order = Some(pos + 1);
            }
            for r in reports.iter().filter(|r| r.state == State::Failed) {
                tracing::error!(plugin = %r.id, file = %r.file, "plugin failed: {}", r.error.as_deref().unwrap_or(""));
            }
        }

        for node in ordering.order {
            let i = loaded[node];
            let Some(module) = modules[i] else { continue };
            self.activate(i, module, std::mem::take(&mut configs[i])).await;
        }
        self.settle().await;
    }

    /// `[[plugin]] id = …` entries configure a drop-in plugin once its
    /// manifest says who it is: `required`, the config, and a pin — a pinned
    /// plugin is loaded again from a sealed copy of exactly the pinned
    /// bytes (the first mapping is never activated). An id no drop-in file
    /// provides becomes a failed row naming the directories searched.
    fn apply_id_entries(
        &self,
        entries: Vec<crate::config::IdEntry>,
        searched: &[std::path::PathBuf],
        files: &[(std::path::PathBuf, bool)],
        modules: &mut Vec<Option<PluginModRef>>,
        configs: &mut Vec<String>,
    ) {
        let mut reports = self.reports();
        for entry in entries {
            let found =
                (0..files.len()).find(|&i| files[i].1 && modules[i].is_some() && reports[i].id == entry.id);
            let Some(i) = found else {
                let listed = (0..files.len()).find(|&i| !files[i].1 && reports[i].id == entry.id);
                let error = match listed {
                    Some(i) => format!(
                        "plugin `{}` is listed by path ({}); configure it in that entry, not by id",
                        entry.id, reports[i].file
                    ),
                    None => format!(
                        "no plugin file provides id `{}` (searched {})",
                        entry.id,
                        searched.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" and ")
                    ),
                };
                tracing::error!(plugin = %entry.id, "plugin failed: {error}");
                reports.push(PluginReport {
                    id: entry.id,
                    version: None,
                    file: String::new(),
                    order: None,
                    state: State::Failed,
                    error: Some(error),
                    required: entry.required,
                    description: String::new(),
                    depends_on: Vec::new(),
                    provides: Vec::new(),
                    activate_ms: None,
                });
                modules.push(None);
                configs.push(String::new());
                continue;
            };
            reports[i].required = entry.required;
            configs[i] = entry.config_json;
            if let Some(pin) = entry.sha256 {
                match loader::load(&files[i].0, Some(&pin)) {
                    Ok(loaded) if loaded.manifest.id.as_str() == entry.id => modules[i] = Some(loaded.module),
                    Ok(loaded) => {
                        modules[i] = None;
                        reports[i].state = State::Failed;
                        reports[i].error = Some(format!(
                            "the file changed while loading: the pinned copy is plugin `{}`",
                            loaded.manifest.id
                        ));
                    }
                    Err(e) => {
                        modules[i] = None;
                        reports[i].state = State::Failed;
                        reports[i].error = Some(e.to_string());
                    }
                }
            }
        }
    }

    /// Give the start-up events (plugin states) time to reach their
    /// subscribers, so that what `serve` exposes and `plugins`/`call` show
    /// reflects them. Bounded: a stuck subscriber only delays start-up.
    async fn settle(&self) {
        let deadline = Instant::now() + SETTLE_LIMIT;
        while self.shared.bus.events_in_flight() > 0 {
            if Instant::now() >= deadline {
                tracing::warn!(
                    pending = self.shared.bus.events_in_flight(),
                    "start-up events still undelivered after {} ms; carrying on",
                    SETTLE_LIMIT.as_millis()
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn reports(&self) -> std::sync::MutexGuard<'_, Vec<PluginReport>> {
        self.reports.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Why plugin `i` cannot be activated, if a dependency is not active.
    fn blocked(&self, i: usize) -> Option<String> {
        let reports = self.reports();
        let by_id: HashMap<&str, &PluginReport> = reports.iter().rev().map(|r| (r.id.as_str(), r)).collect();
        reports[i].depends_on.iter().find_map(|dep| match by_id.get(dep.as_str()) {
            Some(r) if r.state == State::Active => None,
            Some(r) => Some(format!(
                "dependency `{dep}` is {}{}",
                r.state.as_str(),
                r.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
            )),
            None => Some(format!("dependency `{dep}` is not available")),
        })
    }

    async fn activate(&mut self, i: usize, module: PluginModRef, config: String) {
        if let Some(reason) = self.blocked(i) {
            let mut reports = self.reports();
            let r = &mut reports[i];
            tracing::warn!(plugin = %r.id, file = %r.file, "plugin skipped: {reason}");
            r.state = State::Skipped;
            r.error = Some(reason);
            drop(reports);
            self.publish_state(i);
            return;
        }
        let (id, file) = {
            let r = &self.reports()[i];
            (r.id.clone(), r.file.clone())
        };
        let api = PluginHost::for_plugin(&id, &self.shared);
        let activate = module.activate();
        let started = Instant::now();
        // `activate` is synchronous plugin code that may block (open a
        // database, start a runtime, call a service): keep it off the
        // runtime's worker threads, and bounded.
        let task = tokio::task::spawn_blocking(move || activate(api, RString::from(config)));
        let timeout = self.settings.activate_timeout;
        let outcome = match tokio::time::timeout(timeout, task).await {
            Ok(Ok(RResult::ROk(instance))) => Ok(instance),
            Ok(Ok(RResult::RErr(e))) => Err(format!("activate failed: {}", e.message)),
            Ok(Err(join)) => Err(format!("activate crashed: {join}")),
            Err(_) => Err(format!(
                "activate did not finish within {} ms (the thread is abandoned)",
                timeout.as_millis()
            )),
        };
        let elapsed = started.elapsed().as_secs_f64() * 1e3;
        {
            let mut reports = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
            let r = &mut reports[i];
            r.activate_ms = Some(elapsed);
            match outcome {
                Ok(instance) => {
                    r.state = State::Active;
                    tracing::info!(plugin = %id, version = r.version.as_deref().unwrap_or(""), "plugin active");
                    let declared: Vec<&str> =
                        r.provides.iter().filter(|p| p.kind == "service").map(|p| p.name.as_str()).collect();
                    if let Some(drift) = self.shared.bus.service_drift(&id, &declared) {
                        tracing::warn!(plugin = %id, file = %file, "{drift}");
                    }
                    self.active.push((i, instance));
                }
                Err(e) => {
                    tracing::error!(plugin = %id, file = %file, "plugin failed: {e}");
                    r.state = State::Failed;
                    r.error = Some(e);
                    // Whatever it registered before failing must not outlive it.
                    self.shared.bus.remove_plugin(&id);
                }
            }
        }
        self.publish_state(i);
    }

    fn publish_state(&self, i: usize) {
        let report = self.reports()[i].clone();
        if let Ok(bytes) = serde_json::to_vec(&report) {
            let _ = self.shared.bus.publish(HOST_ID, PLUGIN_STATE.name(), PLUGIN_STATE.version(), bytes);
        }
    }

    /// A copy of every report, in configuration order.
    pub fn reports_snapshot(&self) -> Vec<PluginReport> {
        self.reports().clone()
    }

    /// Whether every plugin marked `required` is active.
    pub fn required_ok(&self) -> bool {
        self.reports().iter().all(|r| !r.required || r.state == State::Active)
    }

    /// The state every plugin handle shares (for the host's own clients).
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// The bus (for the host's own calls, e.g. `dispatch call`).
    pub fn bus(&self) -> &HostBus {
        &self.shared.bus
    }

    /// Signal shutdown, then deactivate every active plugin in reverse
    /// activation order, each within the deadline.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        while let Some((i, mut instance)) = self.active.pop() {
            let id = self.reports()[i].id.clone();
            let task = tokio::task::spawn_blocking(move || instance.deactivate());
            let timeout = self.settings.deactivate_timeout;
            match tokio::time::timeout(timeout, task).await {
                Ok(Ok(RResult::ROk(()))) => tracing::info!(plugin = %id, "plugin stopped"),
                Ok(Ok(RResult::RErr(e))) => tracing::warn!(plugin = %id, "deactivate failed: {}", e.message),
                Ok(Err(join)) => tracing::warn!(plugin = %id, "deactivate crashed: {join}"),
                Err(_) => {
                    tracing::warn!(plugin = %id, "deactivate did not finish within {} ms; moving on", timeout.as_millis())
                }
            }
            self.shared.bus.remove_plugin(&id);
            self.reports()[i].state = State::Stopped;
        }
    }
}
