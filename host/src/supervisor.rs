//! Start-up and shut-down: load every planned library, order the plugins by
//! their dependencies, activate them one by one, and deactivate them in
//! reverse. Every outcome lands in a [`PluginReport`].

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RString, RVec};
use async_ffi::FutureExt as _;
use dispatch_abi::ffi::{BytesFuture, PluginInstanceBox, PluginModRef, ServiceHandler, ServiceHandler_TO};
pub use dispatch_contracts::plugins::{
    PluginList, PluginReport, Provided, ReloadChange, ReloadReport, State, HOST_ID,
};
use dispatch_contracts::plugins::{PLUGINS, PLUGIN_STATE, RELOAD, RELOADED};
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
    /// Plugins this run does without: asked of each plugin's declared
    /// capabilities before it activates; a reason means it is skipped with
    /// that reason (its dependents then too), logged at debug — a command's
    /// choice, not a problem.
    pub leave_out: Option<LeaveOut>,
    /// Flips to `true` when the host is asked to stop (SIGTERM) — during
    /// start-up too: an activation under way is told at once (the plugins'
    /// shutdown signal fires, so one waiting for a slow server gives up)
    /// and the plugins not started yet are skipped.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
}

/// A rule of [`Settings::leave_out`]: a plugin's declared capabilities in,
/// the reason to skip it out (`None`: start it).
pub type LeaveOut = fn(&[Provided]) -> Option<String>;

/// `dispatch openapi`'s choice: every plugin but the transports, so the
/// routes describe themselves and nothing listens.
pub fn no_transports(provides: &[Provided]) -> Option<String> {
    provides
        .iter()
        .any(|p| p.kind == "transport")
        .then(|| "not started by `dispatch openapi`, which starts no server (a transport)".to_owned())
}

/// `dispatch turn`'s choice: a one-shot turn runs beside the session, so
/// nothing that listens (a `transport`) or keeps conversations (the
/// session and the store services) is started — a turn next to a running
/// server neither fights it for its ports nor for its database.
pub fn beside_the_session(provides: &[Provided]) -> Option<String> {
    use dispatch_contracts::{session::SESSION, store::STORE};
    let reason =
        |what: &str| Some(format!("not started by `dispatch turn`, which runs beside the session ({what})"));
    for p in provides {
        if p.kind == "transport" {
            return reason("a transport");
        }
        if p.kind == "service" && (p.name == SESSION.name() || p.name == STORE.name()) {
            return reason(&format!("the `{}` service", p.name));
        }
    }
    None
}

/// A reload report's line for plugin `r`.
fn change_of(r: &PluginReport, reason: Option<String>) -> ReloadChange {
    ReloadChange { id: r.id.clone(), file: r.file.clone(), version: r.version.clone(), reason }
}

/// The running set of plugins.
pub struct Supervisor {
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    reports: Arc<Mutex<Vec<PluginReport>>>,
    active: Vec<(usize, PluginInstanceBox)>,
    settings: Settings,
    /// Per report row: where it came from, for reloads.
    slots: Vec<Slot>,
    /// Plugins skipped by the command's choice (and their dependents):
    /// skipping what depends on them is no problem either.
    quiet: std::collections::HashSet<String>,
}

/// What a reload compares a report row against.
#[derive(Clone)]
struct Slot {
    /// The library file as configured (or found in the drop-in directory).
    path: std::path::PathBuf,
    /// The file's identity when it was loaded (device, inode, size,
    /// modification time): a different one means a new build.
    identity: Option<FileId>,
    /// The configuration it was activated with.
    config: String,
    /// The loaded module (none when loading failed).
    module: Option<PluginModRef>,
}

type FileId = (u64, u64, u64, i64, i64);

fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// The sha256 of a file's bytes, hex.
fn file_sha256(path: &Path) -> Option<String> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).ok()?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).ok()?;
    Some(crate::config::hex(&hasher.finalize()))
}

fn canonical(path: &Path) -> std::path::PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

struct ReloadService(tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<ReloadReport>>);
impl ServiceHandler for ReloadService {
    fn call(&self, _request: RVec<u8>) -> BytesFuture {
        let requests = self.0.clone();
        async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let unavailable = || {
                RResult::RErr(dispatch_abi::ffi::AbiError {
                    code: RString::from(dispatch_abi::codes::UNAVAILABLE),
                    message: RString::from("the host is shutting down; nothing was reloaded"),
                })
            };
            if requests.send(tx).await.is_err() {
                return unavailable();
            }
            match rx.await {
                Ok(report) => RResult::ROk(RVec::from(serde_json::to_vec(&report).unwrap_or_default())),
                Err(_) => unavailable(),
            }
        }
        .into_ffi()
    }
}

/// The host's `dispatch.plugins` service: the reports, and the bus's
/// registrations (weakly: the service lives on that very bus).
struct PluginsService(Arc<Mutex<Vec<PluginReport>>>, std::sync::Weak<Shared>);
impl ServiceHandler for PluginsService {
    fn call(&self, _request: RVec<u8>) -> BytesFuture {
        let reports = self.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let registrations = self.1.upgrade().map(|s| s.bus.registrations()).unwrap_or_default();
        let list = PluginList { plugins: reports, registrations, host: None };
        let body = serde_json::to_vec(&list).unwrap_or_default();
        std::future::ready(RResult::ROk(RVec::from(body))).into_ffi()
    }
}

/// The plugin ids plugin `i` depends on. A `depends_on` entry names a
/// plugin id, or else a service that a listed plugin declares: so plugins
/// that need "the store" depend on `store`, and whichever store plugin the
/// operator lists (`store-sqlite`, `store-postgres`, a third party's)
/// satisfies them. Unresolved names are kept, to be reported as unknown.
fn dependency_ids(reports: &[PluginReport], i: usize) -> Vec<String> {
    reports[i]
        .depends_on
        .iter()
        .map(|dep| {
            if reports.iter().any(|r| &r.id == dep) {
                return dep.clone();
            }
            reports
                .iter()
                .find(|r| r.provides.iter().any(|p| p.kind == "service" && &p.name == dep))
                .map_or_else(|| dep.clone(), |r| r.id.clone())
        })
        .collect()
}

/// The row of a loaded library, from its manifest.
fn manifest_report(path: &Path, m: dispatch_abi::ffi::Manifest, required: bool) -> PluginReport {
    PluginReport {
        id: m.id.into_string(),
        version: Some(m.version.into_string()),
        file: path.display().to_string(),
        order: None,
        state: State::Pending,
        error: None,
        required,
        description: m.description.into_string(),
        depends_on: m.depends_on.into_iter().map(RString::into_string).collect(),
        provides: m
            .provides
            .into_iter()
            .map(|c| Provided { kind: c.kind.into_string(), name: c.name.into_string() })
            .collect(),
        activate_ms: None,
    }
}

/// The row of a file that could not be loaded.
fn failed_report(path: &Path, required: bool, error: String) -> PluginReport {
    PluginReport {
        id: file_stem(path),
        version: None,
        file: path.display().to_string(),
        order: None,
        state: State::Failed,
        error: Some(error),
        required,
        description: String::new(),
        depends_on: Vec::new(),
        provides: Vec::new(),
        activate_ms: None,
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
        Supervisor::start_with_reload(plan, settings, None).await
    }

    /// [`Supervisor::start`], offering `dispatch.reload` (each call sends
    /// its answer slot down `reload`) before the first plugin activates:
    /// a transport answers as soon as it is active, and a client that
    /// asks for a reload then must find the service, not a `not_found`
    /// (requests made during start-up wait in `reload` until its owner
    /// reads them).
    pub async fn start_with_reload(
        plan: Plan,
        settings: Settings,
        reload: Option<tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<ReloadReport>>>,
    ) -> Supervisor {
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
        let host_service = ServiceHandler_TO::from_value(
            PluginsService(Arc::clone(&reports), Arc::downgrade(&shared)),
            TD_Opaque,
        );
        // The bus is empty: the host's own name cannot be taken yet.
        let _ = shared.bus.provide(HOST_ID, PLUGINS.name(), PLUGINS.version(), host_service);

        let mut sup = Supervisor {
            shared,
            shutdown_tx,
            reports,
            active: Vec::new(),
            settings,
            slots: Vec::new(),
            quiet: Default::default(),
        };
        if let Some(requests) = reload {
            sup.provide_reload(requests);
        }
        sup.run(plan).await;
        sup
    }

    async fn run(&mut self, plan: Plan) {
        let mut modules: Vec<Option<PluginModRef>> = Vec::new();
        let mut configs = Vec::new();
        let mut files: Vec<(std::path::PathBuf, bool)> = Vec::new();
        let (by_id, searched) = (plan.by_id, plan.searched);
        // Pins of `id` entries are matched to drop-in files by hash before
        // anything is loaded, so a pinned id only ever runs its pinned bytes.
        let pins: Vec<String> =
            by_id.iter().filter_map(|e| e.sha256.as_deref()).map(|p| p.trim().to_ascii_lowercase()).collect();
        let mut pinned: Vec<Option<String>> = Vec::new();
        for mut p in plan.plugins {
            files.push((p.path.clone(), p.drop_in));
            if p.drop_in && p.problem.is_none() && !pins.is_empty() {
                p.sha256 = file_sha256(&p.path).filter(|h| pins.contains(h));
            }
            pinned.push(p.sha256.clone().filter(|_| p.drop_in));
            let loaded = match p.problem {
                Some(problem) => Err(problem),
                None => loader::load(&p.path, p.sha256.as_deref()).map(|(l, _)| l).map_err(|e| e.to_string()),
            };
            let (report, module) = match loaded {
                Ok(loaded) => (manifest_report(&p.path, loaded.manifest, p.required), Some(loaded.module)),
                Err(error) => (failed_report(&p.path, p.required, error), None),
            };
            modules.push(module);
            configs.push(p.config_json);
            self.reports().push(report);
        }

        self.apply_id_entries(by_id, &searched, &files, &pinned, &mut modules, &mut configs);
        self.slots = (0..modules.len())
            .map(|i| Slot {
                path: files.get(i).map(|f| f.0.clone()).unwrap_or_default(),
                identity: files.get(i).and_then(|f| file_id(&f.0)),
                config: configs[i].clone(),
                module: modules[i],
            })
            .collect();

        // Order what loaded; graph problems fail the plugin they belong to.
        let loaded: Vec<usize> = (0..modules.len()).filter(|&i| modules[i].is_some()).collect();
        let nodes: Vec<Node> = {
            let reports = self.reports();
            loaded
                .iter()
                .map(|&i| Node { id: reports[i].id.clone(), depends_on: dependency_ids(&reports, i) })
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
    /// manifest says who it is: `required`, the config, and a pin — a
    /// pinned id must come from a file that was matched to the pin by its
    /// hash and loaded from a sealed copy of those bytes (`pinned`). An id
    /// no drop-in file provides becomes a failed row naming the
    /// directories searched.
    fn apply_id_entries(
        &self,
        entries: Vec<crate::config::IdEntry>,
        searched: &[std::path::PathBuf],
        files: &[(std::path::PathBuf, bool)],
        pinned: &[Option<String>],
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
                    file: String::new(),
                    ..failed_report(Path::new(""), entry.required, error)
                });
                modules.push(None);
                configs.push(String::new());
                continue;
            };
            reports[i].required = entry.required;
            configs[i] = entry.config_json;
            if let Some(pin) = entry.sha256 {
                let pin = pin.trim().to_ascii_lowercase();
                if pinned.get(i).and_then(Option::as_deref) != Some(pin.as_str()) {
                    modules[i] = None;
                    reports[i].state = State::Failed;
                    reports[i].error = Some(format!(
                        "sha256 mismatch: the configuration pins {pin} for `{}`, but its file in the drop-in directory has other bytes; refusing it",
                        entry.id
                    ));
                }
            }
        }
    }

    /// Offer `dispatch.reload` on the bus: each call sends its answer slot
    /// down `requests`, for the owner of this supervisor (the serve loop)
    /// to run [`Supervisor::reload`] and answer.
    fn provide_reload(
        &self,
        requests: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<ReloadReport>>,
    ) {
        let handler = ServiceHandler_TO::from_value(ReloadService(requests), TD_Opaque);
        if let Err(e) = self.shared.bus.provide(HOST_ID, RELOAD.name(), RELOAD.version(), handler) {
            tracing::warn!(error = %e, "cannot offer dispatch.reload");
        }
    }

    /// Re-read the configuration (`plan`) and the drop-in directory and
    /// apply the difference to the running plugins: new files are loaded
    /// and activated in dependency order among the running ones; plugins
    /// no longer configured are deactivated, their dependents first, and
    /// leave the bus; a file that changed (a new build) is loaded from a
    /// private copy and replaces the running instance; a changed
    /// `[plugin.config]` restarts its plugin. A file that fails to load or
    /// activate is reported and nothing else is disturbed. Libraries stay
    /// mapped (abi_stable never unloads).
    pub async fn reload(&mut self, plan: Plan) -> ReloadReport {
        let report = self.apply(plan).await;
        if let Ok(bytes) = serde_json::to_vec(&report) {
            let _ = self.shared.bus.publish(HOST_ID, RELOADED.name(), RELOADED.version(), bytes);
        }
        report
    }

    /// [`Supervisor::reload`]'s work.
    async fn apply(&mut self, plan: Plan) -> ReloadReport {
        let mut out = ReloadReport::default();
        let Plan { plugins: planned, by_id, .. } = plan;
        let by_id: HashMap<String, crate::config::IdEntry> =
            by_id.into_iter().map(|e| (e.id.clone(), e)).collect();
        // What is wanted, by canonical path.
        let mut wanted: HashMap<std::path::PathBuf, crate::config::PlannedPlugin> = HashMap::new();
        let mut wanted_order: Vec<std::path::PathBuf> = Vec::new();
        for p in planned {
            let c = canonical(&p.path);
            if let std::collections::hash_map::Entry::Vacant(slot) = wanted.entry(c.clone()) {
                wanted_order.push(c);
                slot.insert(p);
            }
        }
        let active_rows: HashSet<usize> = self.active.iter().map(|(i, _)| *i).collect();
        let rows = self.slots.len();
        let mut leaving: HashSet<usize> = HashSet::new(); // rows that go for good
        let mut stop: HashSet<usize> = HashSet::new(); // active rows to deactivate
        let mut load: Vec<usize> = Vec::new(); // rows to load anew (upgrades)
        let mut again: HashSet<usize> = HashSet::new(); // rows to (re)activate
        let mut known: HashSet<std::path::PathBuf> = HashSet::new();
        for i in 0..rows {
            let c = canonical(&self.slots[i].path);
            known.insert(c.clone());
            let Some(w) = wanted.get(&c) else {
                leaving.insert(i);
                if active_rows.contains(&i) {
                    stop.insert(i);
                }
                continue;
            };
            let config = self.config_for(i, w, &by_id);
            if file_id(&w.path) != self.slots[i].identity {
                load.push(i);
                if active_rows.contains(&i) {
                    stop.insert(i);
                }
            } else if config != self.slots[i].config {
                self.slots[i].config = config;
                again.insert(i);
                if active_rows.contains(&i) {
                    stop.insert(i);
                }
            } else if !active_rows.contains(&i) && self.slots[i].module.is_some() {
                // Failed or skipped before: try again (a dependency may be back).
                again.insert(i);
            }
        }
        // Dependents of whatever stops stop first, and come back after.
        loop {
            let stopping: HashSet<String> = stop.iter().map(|&i| self.reports()[i].id.clone()).collect();
            let more: Vec<usize> = active_rows
                .iter()
                .copied()
                .filter(|i| !stop.contains(i))
                .filter(|&i| dependency_ids(&self.reports(), i).iter().any(|d| stopping.contains(d)))
                .collect();
            if more.is_empty() {
                break;
            }
            for i in more {
                stop.insert(i);
                if !leaving.contains(&i) && !load.contains(&i) {
                    again.insert(i);
                }
            }
        }
        // Deactivate, most recently activated first.
        let order: Vec<usize> =
            self.active.iter().rev().map(|(i, _)| *i).filter(|i| stop.contains(i)).collect();
        for i in order {
            self.deactivate_row(i).await;
            if leaving.contains(&i) {
                let r = self.reports()[i].clone();
                out.removed.push(change_of(&r, None));
            }
        }
        // Load new builds of changed files, and the new files.
        let mut upgraded: HashSet<usize> = HashSet::new();
        for &i in &load {
            let c = canonical(&self.slots[i].path);
            let Some(w) = wanted.get(&c) else { continue };
            let config = self.config_for(i, w, &by_id);
            match self.load_row(&w.path, by_id.values()) {
                Ok((report, module)) => {
                    let keep = self.reports()[i].clone();
                    let mut reports = self.reports();
                    reports[i] = PluginReport {
                        required: keep.required || report.required,
                        order: keep.order,
                        ..report
                    };
                    drop(reports);
                    self.slots[i] = Slot {
                        path: w.path.clone(),
                        identity: file_id(&w.path),
                        config,
                        module: Some(module),
                    };
                    upgraded.insert(i);
                    again.insert(i);
                }
                Err(reason) => {
                    let r = self.reports()[i].clone();
                    out.failed.push(ReloadChange {
                        id: r.id,
                        file: w.path.display().to_string(),
                        version: None,
                        reason: Some(reason.clone()),
                    });
                    let mut reports = self.reports();
                    reports[i].state = State::Failed;
                    reports[i].error = Some(reason);
                    drop(reports);
                    self.slots[i].module = None;
                    self.slots[i].identity = file_id(&w.path);
                    again.remove(&i);
                }
            }
        }
        let mut added: HashSet<usize> = HashSet::new();
        for c in &wanted_order {
            if known.contains(c) {
                continue;
            }
            let Some(w) = wanted.get(c) else { continue };
            let i = self.reports().len();
            let (report, module) =
                match w.problem.clone().map(Err).unwrap_or_else(|| self.load_row(&w.path, by_id.values())) {
                    Ok((mut report, module)) => {
                        report.required = w.required || by_id.get(&report.id).is_some_and(|e| e.required);
                        (report, Some(module))
                    }
                    Err(reason) => {
                        out.failed.push(ReloadChange {
                            id: file_stem(&w.path),
                            file: w.path.display().to_string(),
                            version: None,
                            reason: Some(reason.clone()),
                        });
                        (failed_report(&w.path, w.required, reason), None)
                    }
                };
            let config = match &module {
                Some(_) => by_id
                    .get(&report.id)
                    .map(|e| e.config_json.clone())
                    .filter(|_| w.drop_in)
                    .unwrap_or_else(|| w.config_json.clone()),
                None => String::new(),
            };
            self.reports().push(report);
            self.slots.push(Slot { path: w.path.clone(), identity: file_id(&w.path), config, module });
            if module.is_some() {
                added.insert(i);
                again.insert(i);
            }
        }
        // Forget the rows that left (their libraries stay mapped).
        if !leaving.is_empty() {
            let keep: Vec<usize> = (0..self.slots.len()).filter(|i| !leaving.contains(i)).collect();
            let map: HashMap<usize, usize> = keep.iter().enumerate().map(|(new, &old)| (old, new)).collect();
            let remap = |set: HashSet<usize>| -> HashSet<usize> {
                set.into_iter().filter_map(|i| map.get(&i).copied()).collect()
            };
            {
                let mut reports = self.reports();
                let old = std::mem::take(&mut *reports);
                *reports = old
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| !leaving.contains(i))
                    .map(|(_, r)| r)
                    .collect();
            }
            let old = std::mem::take(&mut self.slots);
            self.slots =
                old.into_iter().enumerate().filter(|(i, _)| !leaving.contains(i)).map(|(_, s)| s).collect();
            for (i, _) in &mut self.active {
                *i = map[i];
            }
            again = remap(again);
            upgraded = remap(upgraded);
            added = remap(added);
        }
        // Activate in dependency order among everything loaded.
        let candidates: Vec<usize> =
            (0..self.slots.len()).filter(|i| self.slots[*i].module.is_some()).collect();
        let nodes: Vec<Node> = {
            let reports = self.reports();
            candidates
                .iter()
                .map(|&i| Node { id: reports[i].id.clone(), depends_on: dependency_ids(&reports, i) })
                .collect()
        };
        let ordering = graph::order(&nodes);
        for (node, problem) in &ordering.problems {
            let i = candidates[*node];
            if !again.contains(&i) {
                continue;
            }
            let msg = match problem {
                GraphError::DuplicateId { id, first } => {
                    format!(
                        "duplicate plugin id `{id}`: already used by {}",
                        self.reports()[candidates[*first]].file
                    )
                }
                other => other.to_string(),
            };
            let mut reports = self.reports();
            tracing::error!(plugin = %reports[i].id, file = %reports[i].file, "plugin failed: {msg}");
            out.failed.push(change_of(&reports[i], Some(msg.clone())));
            reports[i].state = State::Failed;
            reports[i].error = Some(msg);
            drop(reports);
            again.remove(&i);
            self.publish_state(i);
        }
        let mut next_order = self.reports().iter().filter_map(|r| r.order).max().unwrap_or(0);
        for node in ordering.order {
            let i = candidates[node];
            if !again.contains(&i) {
                continue;
            }
            let Some(module) = self.slots[i].module else { continue };
            next_order += 1;
            self.reports()[i].order = Some(next_order);
            let config = self.slots[i].config.clone();
            self.activate(i, module, config).await;
        }
        // The report.
        let reports = self.reports().clone();
        for (i, r) in reports.iter().enumerate() {
            if !again.contains(&i) && !added.contains(&i) && !upgraded.contains(&i) {
                if r.state == State::Active {
                    out.unchanged += 1;
                } else if self.slots[i].module.is_none()
                    && !out.failed.iter().any(|f| f.id == r.id && f.file == r.file)
                {
                    // A file that could not be loaded and has not changed
                    // since: not tried again, but still broken — a reload
                    // that answered "nothing failed" would hide it.
                    let reason = r.error.clone().map(|e| format!("{e} (unchanged since it failed)"));
                    out.failed.push(change_of(r, reason));
                }
                continue;
            }
            let change = change_of(r, r.error.clone());
            if r.state != State::Active {
                out.failed.push(change);
            } else if added.contains(&i) {
                out.added.push(change);
            } else if upgraded.contains(&i) {
                out.upgraded.push(change);
            } else {
                out.restarted.push(change);
            }
        }
        self.settle().await;
        tracing::info!(
            added = out.added.len(),
            removed = out.removed.len(),
            upgraded = out.upgraded.len(),
            restarted = out.restarted.len(),
            failed = out.failed.len(),
            unchanged = out.unchanged,
            "plugins reloaded"
        );
        out
    }

    /// Put the running plugins back in the order a fresh start would
    /// activate them — `depends_on` first, then the configuration's order —
    /// so that shutdown, which stops them from the end, stops them in the
    /// reverse. A reload activates what it restarts after everything else;
    /// left as it was, a restarted tool would stop before the session that
    /// is listed after the tools so as to seal its turns first.
    fn in_configured_order(&mut self) {
        let rows: Vec<usize> = {
            let mut rows: Vec<usize> = self.active.iter().map(|(i, _)| *i).collect();
            rows.sort_unstable();
            rows
        };
        let nodes: Vec<Node> = {
            let reports = self.reports();
            rows.iter()
                .map(|&i| Node { id: reports[i].id.clone(), depends_on: dependency_ids(&reports, i) })
                .collect()
        };
        let ordering = graph::order(&nodes);
        let mut rank: HashMap<usize, usize> = HashMap::new();
        for (position, node) in ordering.order.iter().enumerate() {
            rank.insert(rows[*node], position);
        }
        // Anything the graph would not order (it cannot be, as all of these
        // activated) keeps its place after the rest.
        self.active.sort_by_key(|(i, _)| rank.get(i).copied().unwrap_or(usize::MAX));
    }

    /// The configuration a row should run with: its entry's, or for a
    /// drop-in, its `id` entry's.
    fn config_for(
        &self,
        i: usize,
        w: &crate::config::PlannedPlugin,
        by_id: &HashMap<String, crate::config::IdEntry>,
    ) -> String {
        if w.drop_in {
            let id = self.reports()[i].id.clone();
            return by_id.get(&id).map(|e| e.config_json.clone()).unwrap_or_default();
        }
        w.config_json.clone()
    }

    /// Load a private copy of `path` and read its manifest into a report;
    /// a pin of an `id` entry naming it is checked against the bytes loaded.
    fn load_row<'a>(
        &self,
        path: &Path,
        id_entries: impl Iterator<Item = &'a crate::config::IdEntry> + Clone,
    ) -> Result<(PluginReport, PluginModRef), String> {
        let (loaded, sha256) = loader::load(path, None).map_err(|e| e.to_string())?;
        let m = loaded.manifest;
        let id = m.id.as_str();
        if let Some(pin) = id_entries.clone().find(|e| e.id == id).and_then(|e| e.sha256.clone()) {
            if !pin.trim().eq_ignore_ascii_case(&sha256) {
                return Err(format!(
                    "sha256 mismatch: the configuration pins {} but the file is {sha256}; refusing a swapped binary",
                    pin.trim()
                ));
            }
        }
        Ok((manifest_report(path, m, false), loaded.module))
    }

    /// Deactivate the active plugin of row `i` (bounded) and take what it
    /// registered off the bus.
    async fn deactivate_row(&mut self, i: usize) {
        let Some(pos) = self.active.iter().position(|(row, _)| *row == i) else { return };
        let (_, instance) = self.active.remove(pos);
        self.stop_instance(i, instance, " for a reload").await;
        self.publish_state(i);
    }

    /// Deactivate one instance within the deadline (its thread is
    /// abandoned past it), take what it registered off the bus, and mark
    /// its row stopped. `why` ends the log line ("plugin stopped{why}").
    async fn stop_instance(&self, i: usize, mut instance: PluginInstanceBox, why: &str) {
        let id = self.reports()[i].id.clone();
        let task = tokio::task::spawn_blocking(move || instance.deactivate());
        let timeout = self.settings.deactivate_timeout;
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(RResult::ROk(()))) => tracing::info!(plugin = %id, "plugin stopped{why}"),
            Ok(Ok(RResult::RErr(e))) => tracing::warn!(plugin = %id, "deactivate failed: {}", e.message),
            Ok(Err(join)) => tracing::warn!(plugin = %id, "deactivate crashed: {join}"),
            Err(_) => {
                tracing::warn!(plugin = %id, "deactivate did not finish within {} ms; moving on", timeout.as_millis())
            }
        }
        self.shared.bus.remove_plugin(&id);
        self.reports()[i].state = State::Stopped;
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

    /// Why plugin `i` cannot be activated, if a dependency is not active;
    /// and whether that is a problem (not when the dependency was left out
    /// by the command's choice).
    fn blocked(&self, i: usize) -> Option<(String, bool)> {
        let reports = self.reports();
        let by_id: HashMap<&str, &PluginReport> = reports.iter().rev().map(|r| (r.id.as_str(), r)).collect();
        dependency_ids(&reports, i).into_iter().find_map(|dep| match by_id.get(dep.as_str()) {
            Some(r) if r.state == State::Active => None,
            Some(r) => Some((
                format!(
                    "dependency `{dep}` is {}{}",
                    r.state.as_str(),
                    r.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
                ),
                !(r.state == State::Skipped && self.quiet.contains(&dep)),
            )),
            None => Some((format!("dependency `{dep}` is not available"), true)),
        })
    }

    /// Mark plugin `i` skipped for `reason` (logged as a warning when it is
    /// a problem) and say so on the bus.
    fn skip(&mut self, i: usize, reason: String, warn: bool) {
        let mut reports = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        let r = &mut reports[i];
        if !warn {
            self.quiet.insert(r.id.clone());
        }
        if warn {
            tracing::warn!(plugin = %r.id, file = %r.file, "plugin skipped: {reason}");
        } else {
            tracing::debug!(plugin = %r.id, file = %r.file, "plugin left out: {reason}");
        }
        r.state = State::Skipped;
        r.error = Some(reason);
        drop(reports);
        self.publish_state(i);
    }

    async fn activate(&mut self, i: usize, module: PluginModRef, config: String) {
        let left_out = self.settings.leave_out.and_then(|rule| rule(&self.reports()[i].provides));
        if let Some(reason) = left_out {
            // The command's choice, not a problem: no warning.
            self.skip(i, reason, false);
            return;
        }
        if let Some((reason, warn)) = self.blocked(i) {
            self.skip(i, reason, warn);
            return;
        }
        if self.stop_requested() {
            self.skip(i, "not started: the host is stopping".into(), false);
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
        let mut task = tokio::task::spawn_blocking(move || activate(api, RString::from(config)));
        let timeout = self.settings.activate_timeout;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let stop = self.settings.stop.clone();
        let stopping = async move {
            match stop {
                Some(mut rx) => {
                    let _ = rx.wait_for(|s| *s).await;
                }
                None => std::future::pending().await,
            }
        };
        let finished = tokio::select! {
            r = &mut task => Ok(r),
            () = &mut deadline => Err(()),
            () = stopping => {
                // Asked to stop mid-activation: tell the plugin (its
                // shutdown signal), then give it the rest of its deadline.
                tracing::info!(plugin = %id, "stopping: the plugin being activated is told to give up");
                let _ = self.shutdown_tx.send(true);
                tokio::select! {
                    r = &mut task => Ok(r),
                    () = &mut deadline => Err(()),
                }
            }
        };
        let outcome = match finished {
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

    /// Whether the host was asked to stop ([`Settings::stop`]).
    fn stop_requested(&self) -> bool {
        self.settings.stop.as_ref().is_some_and(|rx| *rx.borrow())
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
        self.in_configured_order();
        while let Some((i, instance)) = self.active.pop() {
            self.stop_instance(i, instance, "").await;
        }
    }
}
