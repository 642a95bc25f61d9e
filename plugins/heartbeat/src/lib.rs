//! # heartbeat — each workspace's scheduled agent
//!
//! WIRE.md "Heartbeat". A workspace's heartbeat, once enabled, fires every
//! `intervalMinutes`: a **run** opens a new conversation (filed in workspace
//! `heartbeat`) whose opening message is the configured task prompt, with
//! the configured system prompt (else the global template), model and
//! effort, in the workspace's default directory. The next fire is counted
//! from the end of the run's turn, so runs never overlap; with
//! `inactiveOnly` a fire while any conversation of the workspace is active
//! is skipped.
//!
//! Configs and runs live in the store (plugin values, scope `heartbeat`),
//! so they survive a restart: runs found `running` then are `stopped`, and
//! enabled configs are armed again. A deleted workspace's heartbeat is
//! disabled. The length of a "minute" is the plugin's `minute_ms` setting
//! (60 000), so tests run a heartbeat in milliseconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use dispatch_abi::runtime::{PluginRuntime, Runner};
use dispatch_abi::{codes, Context, Error, Host, Plugin, PluginManifest};
use dispatch_contracts::cluster::{Claimed, ClusterRequest, CLUSTER};
use dispatch_contracts::http::{self, problem, HttpMethod, HttpRequest, HttpResponse, Problem, Route};
use dispatch_contracts::openapi::Operation;
use dispatch_contracts::prompt::PROMPT;
use dispatch_contracts::protocol::heartbeat::{
    HeartbeatConfig, HeartbeatRun, HeartbeatRuns, NextRun, RunStatus, HEARTBEAT_WORKSPACE,
};
use dispatch_contracts::protocol::prompt::{PromptRequest, Template};
use dispatch_contracts::protocol::session::{PromptContext, StatusChanged};
use dispatch_contracts::protocol::store::{Listing, StoreRequest};
use dispatch_contracts::protocol::wire::{ConversationStatus, ReasoningEffort};
use dispatch_contracts::session::{SessionRequest, SESSION, STATUS, SYSTEM_PROMPT};
use dispatch_contracts::store::STORE;
use dispatch_contracts::workspace::{Workspace, WorkspaceDeleted, DELETED};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The store scope of everything this plugin keeps.
const SCOPE: &str = "heartbeat";
/// The store key listing the workspaces with a config.
const INDEX_KEY: &str = "workspaces";

/// `[plugin.config]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// How long a "minute" of `intervalMinutes` lasts, in ms (60 000).
    minute_ms: Option<u64>,
}

/// One workspace's schedule, in memory.
#[derive(Debug, Default)]
struct Slot {
    /// Bumped by every (re)arm and disarm: a timer of an older generation
    /// does nothing when it wakes.
    generation: u64,
    /// When the armed timer fires.
    next_at: Option<SystemTime>,
    /// The run in flight.
    running: Option<String>,
}

/// A run in flight.
#[derive(Debug, Clone)]
struct InFlight {
    workspace: String,
    run: String,
    /// The configured system prompt template (`None`: the global one).
    system_prompt: Option<String>,
}

/// The plugin's state.
struct Heartbeat {
    host: Host,
    runner: Runner,
    minute: Duration,
    slots: Mutex<HashMap<String, Slot>>,
    /// By conversation.
    in_flight: Mutex<HashMap<String, InFlight>>,
    /// Serializes read-modify-write of the stored runs and configs.
    writes: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below only moves values: none can panic half-way.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn iso(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Heartbeat {
    async fn store<T: DeserializeOwned>(&self, req: StoreRequest) -> Result<T, Error> {
        let v = self.host.call(&STORE, &req).await?;
        serde_json::from_value(v).map_err(|e| Error::new(codes::PLUGIN, format!("the store answered: {e}")))
    }

    async fn value<T: DeserializeOwned>(&self, key: String) -> Result<Option<T>, Error> {
        let v: Value = self.store(StoreRequest::GetValue { scope: SCOPE.into(), key }).await?;
        if v.is_null() {
            return Ok(None);
        }
        serde_json::from_value(v)
            .map(Some)
            .map_err(|e| Error::new(codes::PLUGIN, format!("a stored heartbeat value does not parse: {e}")))
    }

    async fn put<T: Serialize>(&self, key: String, value: &T) -> Result<(), Error> {
        let value = serde_json::to_value(value).map_err(|e| Error::new(codes::PLUGIN, e.to_string()))?;
        let _: Value = self.store(StoreRequest::PutValue { scope: SCOPE.into(), key, value }).await?;
        Ok(())
    }

    async fn config(&self, ws: &str) -> Result<HeartbeatConfig, Error> {
        Ok(self.value(format!("config:{ws}")).await?.unwrap_or_default())
    }

    /// Read, change and save workspace `ws`'s config under the write lock
    /// (two changes at once must not lose one); answers the saved config.
    async fn update_config(
        &self,
        ws: &str,
        change: impl FnOnce(HeartbeatConfig) -> Result<HeartbeatConfig, Problem>,
    ) -> Result<HeartbeatConfig, Problem> {
        let _guard = self.writes.lock().await;
        let config = change(self.config(ws).await.map_err(problem)?)?;
        self.put(format!("config:{ws}"), &config).await.map_err(problem)?;
        let mut index: Vec<String> = self.value(INDEX_KEY.into()).await.map_err(problem)?.unwrap_or_default();
        if !index.iter().any(|w| w == ws) {
            index.push(ws.to_owned());
            self.put(INDEX_KEY.into(), &index).await.map_err(problem)?;
        }
        Ok(config)
    }

    async fn runs(&self, ws: &str) -> Result<Vec<HeartbeatRun>, Error> {
        Ok(self.value(format!("runs:{ws}")).await?.unwrap_or_default())
    }

    /// Change workspace `ws`'s stored runs; answers what `change` answered.
    async fn change_runs<R>(
        &self,
        ws: &str,
        change: impl FnOnce(&mut Vec<HeartbeatRun>) -> R,
    ) -> Result<R, Error> {
        let _guard = self.writes.lock().await;
        let mut runs = self.runs(ws).await?;
        let answer = change(&mut runs);
        self.put(format!("runs:{ws}"), &runs).await?;
        Ok(answer)
    }

    fn interval(&self, config: &HeartbeatConfig) -> Duration {
        self.minute.saturating_mul(u32::try_from(config.interval_minutes.max(1)).unwrap_or(u32::MAX))
    }

    /// Fire `ws` after `delay` (replacing any timer armed before).
    fn arm(self: &Arc<Self>, ws: &str, delay: Duration) {
        let generation = {
            let mut slots = lock(&self.slots);
            let slot = slots.entry(ws.to_owned()).or_default();
            slot.generation += 1;
            slot.next_at = SystemTime::now().checked_add(delay);
            slot.generation
        };
        self.timer(ws.to_owned(), generation, delay);
    }

    /// [`Heartbeat::arm`] unless `ws` was re-armed or disarmed since the
    /// timer of `generation` woke (a change made meanwhile wins).
    fn rearm_if(self: &Arc<Self>, ws: &str, generation: u64, delay: Duration) {
        let next = {
            let mut slots = lock(&self.slots);
            let slot = slots.entry(ws.to_owned()).or_default();
            if slot.generation != generation {
                return;
            }
            slot.generation += 1;
            slot.next_at = SystemTime::now().checked_add(delay);
            slot.generation
        };
        self.timer(ws.to_owned(), next, delay);
    }

    fn timer(self: &Arc<Self>, ws: String, generation: u64, delay: Duration) {
        let me = Arc::clone(self);
        self.runner.spawn(async move {
            tokio::time::sleep(delay).await;
            let current = lock(&me.slots).get(&ws).is_some_and(|s| s.generation == generation);
            if !current {
                return;
            }
            if let Err(e) = me.fire(&ws, generation).await {
                // The store may be away: try again (the fire reads
                // `enabled` again), after the interval when it is known.
                tracing::warn!(workspace = %ws, error = %e, "a heartbeat fire failed; trying again");
                let delay = me.config(&ws).await.map_or(me.minute, |c| me.interval(&c));
                me.rearm_if(&ws, generation, delay);
            }
        });
    }

    fn disarm(&self, ws: &str) {
        let mut slots = lock(&self.slots);
        let slot = slots.entry(ws.to_owned()).or_default();
        slot.generation += 1;
        slot.next_at = None;
    }

    /// Whether any conversation of `ws` is active.
    async fn busy(&self, ws: &str) -> Result<bool, Error> {
        let listing: Listing =
            self.store(StoreRequest::List { prefix: None, status: Some(ConversationStatus::Active) }).await?;
        Ok(listing.conversations.iter().any(|c| c.workspace_id == ws))
    }

    /// The timer of `generation` woke: run, skip or give way.
    async fn fire(self: &Arc<Self>, ws: &str, generation: u64) -> Result<(), Error> {
        let config = self.config(ws).await?;
        if !config.enabled {
            return Ok(());
        }
        let interval = self.interval(&config);
        if config.inactive_only && self.busy(ws).await? {
            tracing::debug!(workspace = %ws, "the workspace is busy: heartbeat skipped");
            self.rearm_if(ws, generation, interval);
            return Ok(());
        }
        // Several hosts on one store each keep a timer: none runs one
        // sooner than an interval after the last (another host's too), and
        // the one that claims the workspace's heartbeat runs it.
        if let Some(last) = self.runs(ws).await?.first() {
            let since = chrono::DateTime::parse_from_rfc3339(&last.triggered_at)
                .ok()
                .and_then(|t| SystemTime::now().duration_since(SystemTime::from(t)).ok())
                .unwrap_or(interval);
            if since < interval {
                self.rearm_if(ws, generation, interval.saturating_sub(since).max(interval / 10));
                return Ok(());
            }
        }
        let run_id = uuid::Uuid::new_v4().to_string();
        // From here this fire is the run, unless a change came meanwhile.
        {
            let mut slots = lock(&self.slots);
            let slot = slots.entry(ws.to_owned()).or_default();
            if slot.generation != generation {
                return Ok(());
            }
            slot.generation += 1;
            slot.next_at = None;
            slot.running = Some(run_id.clone());
        }
        let claimed = self.claim(ws, &run_id).await;
        if !matches!(claimed, Ok(true)) {
            if let Some(slot) = lock(&self.slots).get_mut(ws) {
                if slot.running.as_deref() == Some(run_id.as_str()) {
                    slot.running = None;
                }
            }
            if let Err(e) = claimed {
                tracing::warn!(workspace = %ws, error = %e, "cannot claim the heartbeat; trying again");
            }
            self.arm(ws, interval);
            return Ok(());
        }
        self.run(ws, config, run_id).await;
        Ok(())
    }

    /// The cluster's claim on `ws`'s heartbeat (granted at once without a
    /// cluster: one host decides alone).
    async fn claim(&self, ws: &str, run_id: &str) -> Result<bool, Error> {
        let request =
            ClusterRequest::Claim { conversation_id: format!("heartbeat.{ws}"), turn_id: run_id.to_owned() };
        match self.host.call(&CLUSTER, &request).await {
            Ok(v) => Ok(serde_json::from_value::<Claimed>(v).map_or(true, |c| c.granted)),
            Err(e) if e.code() == codes::NOT_FOUND => Ok(true),
            Err(e) => Err(e),
        }
    }

    async fn release(&self, ws: &str) {
        let request = ClusterRequest::Release { conversation_id: format!("heartbeat.{ws}") };
        if let Err(e) = self.host.call(&CLUSTER, &request).await {
            if e.code() != codes::NOT_FOUND {
                tracing::warn!(workspace = %ws, error = %e, "cannot release the heartbeat's claim");
            }
        }
    }

    /// Render `template` as the global one would be for `context`; as it
    /// is when no system-prompt plugin is there to render it.
    async fn render(&self, template: &str, context: PromptContext) -> String {
        let request = PromptRequest::Render { template: template.to_owned(), context };
        match self.host.call(&PROMPT, &request).await.map(serde_json::from_value::<Template>) {
            Ok(Ok(t)) => t.template,
            _ => template.to_owned(),
        }
    }

    /// Run: a new conversation opened by the task prompt. Whatever fails
    /// from here ends the run `stopped` (releasing the claim, arming the
    /// next fire), so a failure never leaves the schedule stuck.
    async fn run(self: &Arc<Self>, ws: &str, config: HeartbeatConfig, run_id: String) {
        let conversation_id = uuid::Uuid::new_v4().to_string();
        let system_prompt = (!config.system_prompt.is_empty()).then(|| config.system_prompt.clone());
        lock(&self.in_flight).insert(
            conversation_id.clone(),
            InFlight { workspace: ws.to_owned(), run: run_id.clone(), system_prompt },
        );
        if let Err(e) = self.start_run(ws, &config, &run_id, &conversation_id).await {
            tracing::warn!(workspace = %ws, run = %run_id, error = %e, "the heartbeat run did not start");
            self.finish(&conversation_id, RunStatus::Stopped).await;
        }
    }

    async fn start_run(
        &self,
        ws: &str,
        config: &HeartbeatConfig,
        run_id: &str,
        conversation_id: &str,
    ) -> Result<(), Error> {
        let record = HeartbeatRun {
            id: run_id.to_owned(),
            conversation_id: conversation_id.to_owned(),
            triggered_at: iso(SystemTime::now()),
            status: RunStatus::Running,
        };
        self.change_runs(ws, |runs| runs.insert(0, record)).await?;
        let workspace: Option<Workspace> =
            self.store(StoreRequest::GetWorkspace { id: ws.to_owned() }).await.unwrap_or(None);
        let cwd = workspace.as_ref().and_then(|w| w.default_cwd.clone());
        let context = PromptContext {
            conversation_id: conversation_id.to_owned(),
            model: config.model.clone(),
            cwd: cwd.clone(),
            default_cwd: None,
            tools: Vec::new(),
            prompt: String::new(),
        };
        let task = self.render(&config.task_prompt, context).await;
        let mut request = json!({
            "conversationId": conversation_id,
            "message": task,
            "workspaceId": HEARTBEAT_WORKSPACE,
        });
        if !config.model.is_empty() {
            request["model"] = json!(config.model);
        }
        if let Some(cwd) = cwd {
            request["cwd"] = json!(cwd);
        }
        if let Some(effort) = config.reasoning_effort {
            request["reasoningEffort"] = json!(effort);
        }
        let chat = serde_json::from_value(request)
            .map(|request| SessionRequest::Chat { request })
            .map_err(|e| Error::new(codes::PLUGIN, e.to_string()))?;
        tracing::info!(workspace = %ws, run = %run_id, conversation = %conversation_id, "heartbeat run");
        self.host.call(&SESSION, &chat).await?;
        Ok(())
    }

    /// A run's turn ended (or never started): record it and count the
    /// next fire from now.
    async fn finish(self: &Arc<Self>, conversation_id: &str, status: RunStatus) {
        let Some(done) = lock(&self.in_flight).remove(conversation_id) else { return };
        let recorded = self
            .change_runs(&done.workspace, |runs| {
                if let Some(r) = runs.iter_mut().find(|r| r.id == done.run && r.status == RunStatus::Running)
                {
                    r.status = status;
                }
            })
            .await;
        if let Err(e) = recorded {
            tracing::warn!(run = %done.run, error = %e, "cannot record the end of a heartbeat run");
        }
        {
            let mut slots = lock(&self.slots);
            let slot = slots.entry(done.workspace.clone()).or_default();
            if slot.running.as_deref() == Some(done.run.as_str()) {
                slot.running = None;
            }
        }
        self.release(&done.workspace).await;
        match self.config(&done.workspace).await {
            Ok(c) if c.enabled => self.arm(&done.workspace, self.interval(&c)),
            Ok(_) => {}
            // The store is away: arm anyway; the fire reads the config again.
            Err(e) => {
                tracing::warn!(workspace = %done.workspace, error = %e, "cannot read the heartbeat config");
                self.arm(&done.workspace, self.minute);
            }
        }
    }

    /// Stop run `run_id` of `ws`: `None` when there is no such run.
    async fn stop(self: &Arc<Self>, ws: &str, run_id: &str) -> Result<Option<()>, Error> {
        let conversation = self
            .change_runs(ws, |runs| {
                let run = runs.iter_mut().find(|r| r.id == run_id)?;
                let was_running = run.status == RunStatus::Running;
                if was_running {
                    run.status = RunStatus::Stopped;
                }
                Some(was_running.then(|| run.conversation_id.clone()))
            })
            .await?;
        let Some(conversation) = conversation else { return Ok(None) };
        if let Some(conversation_id) = conversation {
            let _ = self
                .host
                .call(&SESSION, &SessionRequest::Stop { conversation_id: conversation_id.clone() })
                .await;
            // The turn's end is recorded as stopped already; count the next
            // fire from now even if the turn had already ended.
            self.finish(&conversation_id, RunStatus::Stopped).await;
        }
        Ok(Some(()))
    }

    /// Start-up: runs left `running` by an earlier process are `stopped`;
    /// enabled configs fire an interval from now.
    async fn resume(self: &Arc<Self>) -> Result<(), Error> {
        let index: Vec<String> = self.value(INDEX_KEY.into()).await?.unwrap_or_default();
        for ws in index {
            // One workspace's trouble does not keep the others waiting.
            let resumed = async {
                self.change_runs(&ws, |runs| {
                    for r in runs.iter_mut().filter(|r| r.status == RunStatus::Running) {
                        r.status = RunStatus::Stopped;
                    }
                })
                .await?;
                self.config(&ws).await
            };
            match resumed.await {
                Ok(config) if config.enabled => self.arm(&ws, self.interval(&config)),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(workspace = %ws, error = %e, "cannot resume this heartbeat; trying again");
                    self.arm(&ws, self.minute);
                }
            }
        }
        Ok(())
    }

    fn next_run(&self, ws: &str) -> NextRun {
        let slots = lock(&self.slots);
        let next = slots.get(ws).filter(|s| s.running.is_none()).and_then(|s| s.next_at);
        NextRun { next_run_at: next.map(iso) }
    }
}

/// Merge a `PUT` body into `config`, with WIRE.md's messages.
fn merge(mut config: HeartbeatConfig, body: Option<&Value>) -> Result<HeartbeatConfig, Problem> {
    let Some(Value::Object(body)) = body else {
        return Err(Problem::new(400, "invalid_body", "Request body must be a JSON object"));
    };
    let bad = |field: &str, what: &str| {
        Problem::new(400, "invalid_body", format!("Field '{field}' must be {what}"))
    };
    let flag = |b: &Map<String, Value>, field: &str| -> Result<Option<bool>, Problem> {
        b.get(field).map(|v| v.as_bool().ok_or_else(|| bad(field, "a boolean"))).transpose()
    };
    let text = |b: &Map<String, Value>, field: &str| -> Result<Option<String>, Problem> {
        b.get(field).map(|v| v.as_str().map(str::to_owned).ok_or_else(|| bad(field, "a string"))).transpose()
    };
    if let Some(v) = flag(body, "enabled")? {
        config.enabled = v;
    }
    if let Some(v) = flag(body, "inactiveOnly")? {
        config.inactive_only = v;
    }
    if let Some(v) = text(body, "systemPrompt")? {
        config.system_prompt = v;
    }
    if let Some(v) = text(body, "taskPrompt")? {
        config.task_prompt = v;
    }
    if let Some(v) = text(body, "model")? {
        config.model = v;
    }
    if let Some(v) = body.get("intervalMinutes") {
        let n =
            v.as_f64().filter(|n| n.is_finite()).ok_or_else(|| bad("intervalMinutes", "a finite number"))?;
        // Truncated, at least 1; no upper bound (the frontend keeps it to a day).
        config.interval_minutes = if n < 1.0 { 1 } else { n.trunc().min(u64::MAX as f64) as u64 };
    }
    if let Some(v) = body.get("reasoningEffort") {
        config.reasoning_effort = match v {
            Value::Null => None,
            other => Some(serde_json::from_value::<ReasoningEffort>(other.clone()).map_err(|_| {
                Problem::new(
                    400,
                    "invalid_body",
                    "Field 'reasoningEffort' must be one of: low, medium, high, xhigh, max, or null",
                )
            })?),
        };
    }
    Ok(config)
}

fn op(summary: &str, id: &str) -> Operation {
    Operation::new(summary).id(id).tag("heartbeat").path_param("id", "The workspace (any id)")
}

fn routes(h: &Arc<Heartbeat>) -> Vec<Route> {
    use HttpMethod::{Get, Post, Put};
    let route = |method, path: &str, handler: fn(Arc<Heartbeat>, HttpRequest) -> HandlerFuture| {
        let h = Arc::clone(h);
        Route::on_runtime(&h.runner.clone(), method, path, move |req| handler(Arc::clone(&h), req))
    };
    vec![
        route(Get, "/workspaces/{id}/heartbeat", |h, req| {
            Box::pin(async move {
                let ws = req.param("id").unwrap_or_default();
                Ok(HttpResponse::ok(&h.config(ws).await.map_err(problem)?))
            })
        })
        .operation(
            op("Read a workspace's heartbeat settings", "getHeartbeat")
                .returns::<HeartbeatConfig>(200, "The settings (the defaults when never set)"),
        ),
        route(Put, "/workspaces/{id}/heartbeat", |h, req| {
            Box::pin(async move {
                let ws = req.param("id").unwrap_or_default().to_owned();
                let config = h.update_config(&ws, |old| merge(old, req.body.as_ref())).await?;
                // Every change re-arms: the next fire an interval from now.
                let running = lock(&h.slots).get(&ws).is_some_and(|s| s.running.is_some());
                if !config.enabled {
                    h.disarm(&ws);
                } else if !running {
                    h.arm(&ws, h.interval(&config));
                }
                Ok(HttpResponse::ok(&config))
            })
        })
        .operation(
            op("Change a workspace's heartbeat (any part of it); re-arms it", "setHeartbeat")
                .body_with(
                    json!({"type": "object", "description": "Any of HeartbeatConfig's fields; intervalMinutes is \
                        truncated and at least 1"}),
                    true,
                )
                .returns::<HeartbeatConfig>(200, "The merged settings")
                .error(400, &["invalid_body"]),
        ),
        route(Get, "/workspaces/{id}/heartbeat/runs", |h, req| {
            Box::pin(async move {
                let ws = req.param("id").unwrap_or_default();
                Ok(HttpResponse::ok(&HeartbeatRuns { runs: h.runs(ws).await.map_err(problem)? }))
            })
        })
        .operation(
            op("List a workspace's heartbeat runs, newest first", "listHeartbeatRuns")
                .returns::<HeartbeatRuns>(200, "Every run"),
        ),
        route(Get, "/workspaces/{id}/heartbeat/next-run", |h, req| {
            Box::pin(async move { Ok(HttpResponse::ok(&h.next_run(req.param("id").unwrap_or_default()))) })
        })
        .operation(
            op("When the workspace's heartbeat fires next", "getHeartbeatNextRun")
                .returns::<NextRun>(200, "The time, or null when disabled or while a run is in flight"),
        ),
        route(Post, "/workspaces/{id}/heartbeat/runs/{runId}/stop", |h, req| {
            Box::pin(async move {
                let ws = req.param("id").unwrap_or_default().to_owned();
                let run = req.param("runId").unwrap_or_default().to_owned();
                match h.stop(&ws, &run).await.map_err(problem)? {
                    Some(()) => Ok(HttpResponse::ok(&json!({"ok": true}))),
                    None => Err(Problem::new(404, "not_found", "Heartbeat run not found")),
                }
            })
        })
        .operation(
            op("Stop a heartbeat run (its turn is aborted)", "stopHeartbeatRun")
                .path_param("runId", "The run")
                .returns_with(200, "Stopped (a finished run: nothing to do)", json!({"type": "object"}))
                .error(404, &["not_found"]),
        ),
    ]
}

type HandlerFuture = std::pin::Pin<Box<dyn std::future::Future<Output = http::RouteResult> + Send>>;

/// The plugin.
pub struct HeartbeatPlugin {
    runtime: Option<PluginRuntime>,
}

impl std::fmt::Debug for HeartbeatPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartbeatPlugin").finish_non_exhaustive()
    }
}

impl Plugin for HeartbeatPlugin {
    fn manifest() -> PluginManifest {
        http::declare_routes(
            PluginManifest::new("heartbeat", env!("CARGO_PKG_VERSION"))
                .description("Each workspace's scheduled agent: a run every interval, and its routes")
                .depends_on(STORE.name())
                .depends_on("session"),
        )
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let config: Config = ctx.config()?;
        let host = ctx.host().clone();
        let runtime = PluginRuntime::new("heartbeat", 1)?;
        let heartbeat = Arc::new(Heartbeat {
            host: host.clone(),
            runner: runtime.runner(),
            minute: Duration::from_millis(config.minute_ms.unwrap_or(60_000).max(1)),
            slots: Mutex::default(),
            in_flight: Mutex::default(),
            writes: tokio::sync::Mutex::new(()),
        });
        http::serve_all(&host, routes(&heartbeat))?;
        // A run's turn ended: any status but `active` of its conversation.
        let h = Arc::clone(&heartbeat);
        host.subscribe(&STATUS, move |changed: StatusChanged| {
            let h = Arc::clone(&h);
            let runner = h.runner.clone();
            async move {
                let ours = lock(&h.in_flight).contains_key(&changed.conversation_id);
                // (`queued` and `active` come and go while a step waits for
                // a provider slot; `idle` or `closed` is the turn's end.)
                let ended = matches!(changed.status, ConversationStatus::Idle | ConversationStatus::Closed);
                if ours && ended {
                    let finished = runner.run(async move {
                        h.finish(&changed.conversation_id, RunStatus::Completed).await;
                        Ok(())
                    });
                    // Fails only while the plugin stops: the run is found
                    // `running` at the next start and marked `stopped`.
                    let _ = finished.await;
                }
                Ok(())
            }
        })?;
        // A deleted workspace's heartbeat stops for good.
        let h = Arc::clone(&heartbeat);
        host.subscribe(&DELETED, move |deleted: WorkspaceDeleted| {
            let h = Arc::clone(&h);
            let runner = h.runner.clone();
            async move {
                runner
                    .run(async move {
                        let ws = deleted.workspace_id;
                        h.disarm(&ws);
                        h.update_config(&ws, |config| Ok(HeartbeatConfig { enabled: false, ..config }))
                            .await
                            .map_err(|p| Error::new(codes::PLUGIN, p.message))?;
                        Ok(())
                    })
                    .await
            }
        })?;
        // A run's own system prompt, in place of the global one.
        let h = Arc::clone(&heartbeat);
        host.add_filter(&SYSTEM_PROMPT, 10, move |mut prompt: PromptContext| {
            let h = Arc::clone(&h);
            async move {
                let template =
                    lock(&h.in_flight).get(&prompt.conversation_id).and_then(|r| r.system_prompt.clone());
                if let Some(template) = template {
                    let context = PromptContext { prompt: String::new(), ..prompt.clone() };
                    let runner = h.runner.clone();
                    prompt.prompt = runner.run(async move { Ok(h.render(&template, context).await) }).await?;
                }
                Ok(prompt)
            }
        })?;
        // Before the server answers: a client must not read a run as
        // `running` that died with the last process.
        if let Err(e) = runtime.handle().block_on(heartbeat.resume()) {
            tracing::warn!(error = %e, "cannot resume the heartbeats");
        }
        Ok(HeartbeatPlugin { runtime: Some(runtime) })
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        if let Some(mut r) = self.runtime.take() {
            r.shutdown(Duration::from_secs(5));
        }
        Ok(())
    }
}

dispatch_abi::export_plugin!(HeartbeatPlugin);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_put_body_merges_field_by_field_with_wire_md_messages() {
        let base = HeartbeatConfig::default();
        let merged =
            merge(base.clone(), Some(&json!({"enabled": true, "intervalMinutes": 2.9, "model": "m"})))
                .unwrap();
        assert_eq!((merged.enabled, merged.interval_minutes, merged.model.as_str()), (true, 2, "m"));
        assert_eq!(merged.task_prompt, base.task_prompt, "absent fields are left alone");
        assert_eq!(merge(base.clone(), Some(&json!({"intervalMinutes": 0}))).unwrap().interval_minutes, 1);
        assert_eq!(merge(base.clone(), Some(&json!({"intervalMinutes": -5}))).unwrap().interval_minutes, 1);
        assert_eq!(
            merge(base.clone(), Some(&json!({"reasoningEffort": "max"}))).unwrap().reasoning_effort,
            Some(ReasoningEffort::Max)
        );
        for (body, message) in [
            (json!({"enabled": "yes"}), "Field 'enabled' must be a boolean"),
            (json!({"inactiveOnly": 1}), "Field 'inactiveOnly' must be a boolean"),
            (json!({"taskPrompt": 3}), "Field 'taskPrompt' must be a string"),
            (json!({"intervalMinutes": "5"}), "Field 'intervalMinutes' must be a finite number"),
            (
                json!({"reasoningEffort": "huge"}),
                "Field 'reasoningEffort' must be one of: low, medium, high, xhigh, max, or null",
            ),
        ] {
            assert_eq!(merge(base.clone(), Some(&body)).unwrap_err().message, message, "{body}");
        }
        assert_eq!(merge(base, Some(&json!([1]))).unwrap_err().status, 400);
    }
}
