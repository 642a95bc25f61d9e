//! The session's state and its ops.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use abi_stable::std_types::{RStr, RVec};
use dispatch_abi::runtime::Runner;
use dispatch_abi::{codes, Error, HookResult, Host};
use dispatch_contracts::catalog::{CatalogRequest, Resolved, CATALOG};
use dispatch_contracts::cluster::{
    Claimed, ClusterRequest, Delivered, ForwardAction, Forwarded, CLUSTER, REMOTE_STATUS,
};
use dispatch_contracts::gate::{Announce, Gated};
use dispatch_contracts::plugins::{PluginList, State, PLUGINS};
use dispatch_contracts::queue::{Cancelled, QueueRequest, QueueState, QUEUE};
use dispatch_contracts::remote::{HostCaller, RemoteProvider};
use dispatch_contracts::session::{
    Aborted, ChatRequest, ConversationRef, LastAnswer, OpenRequested, PromptContext, Queued, SessionRequest,
    Started, StatusChanged, StatusInfo, ToolSummary, TurnTools, Unqueued, WireVersion, EVENT, OPEN, STATUS,
    SYSTEM_PROMPT, TOOLS, TRACE,
};
use dispatch_contracts::store::{
    Appended, Details, Messages, MetaUpdate, NewMessage, StoreLimits, StoreRequest, STORE,
};
use dispatch_contracts::vision::{VisionRequest, VISION};
use dispatch_contracts::workspace::{effective_cwd, is_valid_slug, Workspace, DEFAULT_WORKSPACE, SLUG_RULE};
use dispatch_kernel::protocol::trace::{TraceBatch, TraceBody, TraceEvent};
use dispatch_kernel::protocol::{BoxFuture, Spawner};
use dispatch_kernel::provider::ProviderOptions;
use dispatch_kernel::provider::ToolSpec;
use dispatch_kernel::runtime::{AbortSignal, MonotonicClock, RetryPolicy, Sleep};
use dispatch_kernel::tool::Tool;
use dispatch_kernel::toolbus::{RemoteTool, TOOL_PREFIX};
use dispatch_kernel::turn::{run_turn, TurnInput, TurnOutcome};
use dispatch_kernel::wire::{
    is_valid_conversation_id, AgentEvent, ChatMessage, Chunk, ConversationStatus, FinishReason,
    ReasoningEffort, Role, CONVERSATION_ID_RULE,
};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::log::TurnLog;
use crate::Config;

/// Sealed turns kept per conversation for late readers (besides the
/// running one).
const KEEP_SEALED: usize = 1;
/// Longest an `events` or `last` call waits.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long a sealed turn's events stay readable (a slow client finishing
/// its stream, a late `last`). After that the conversation's in-memory
/// state is dropped: a server with many conversations keeps only the live
/// ones.
const SEALED_KEPT_FOR: Duration = Duration::from_secs(60);
/// The default wait of an `events` call.
const DEFAULT_EVENTS_WAIT: Duration = Duration::from_secs(20);

struct TokioSleep;
impl Sleep for TokioSleep {
    fn sleep(&self, d: Duration) -> BoxFuture<()> {
        Box::pin(tokio::time::sleep(d))
    }
}

struct Running {
    turn_id: String,
    abort: AbortSignal,
    /// `close` was asked: the turn ends the conversation as `closed`.
    closing: bool,
}

#[derive(Default)]
struct Conv {
    running: Option<Running>,
    /// A turn another host runs (sharing the store), whose events arrive
    /// relayed: its log is mirrored in `logs`, so watchers here see it.
    remote: Option<String>,
    /// Another host said the conversation became active before the turn's
    /// first event arrived: told on (with this workspace) once it did.
    pending_active: Option<String>,
    /// The running turn's log last, with up to [`KEEP_SEALED`] before it.
    logs: VecDeque<Arc<TurnLog>>,
    /// The reconciled history as of the last sealed turn, and the store's
    /// last seq then: the next turn appends its user message and, when
    /// that lands right after (nobody else wrote), uses this instead of
    /// reading the whole history back (a turn read it all: 12 → 83 ms per
    /// turn over 2000 turns of one conversation). Forgotten with the
    /// conversation's other state.
    history: Option<(u64, Arc<Vec<ChatMessage>>)>,
}

/// The conversation and turn every turn event names.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventIds {
    conversation_id: String,
    turn_id: String,
}

/// Everything a turn needs, resolved before it starts.
struct Plan {
    conversation_id: String,
    turn_id: String,
    message: String,
    workspace_id: String,
    /// The store's seq of the turn's user message (its last chunk).
    user_seq: u64,
    resolved: Resolved,
    cwd: PathBuf,
    effort: Option<ReasoningEffort>,
    history: Vec<ChatMessage>,
    tools: Vec<Arc<dyn Tool>>,
    /// Which plugin serves each tool (those it could tell), for traces.
    owners: HashMap<String, String>,
    system_prompt: Option<String>,
    abort: AbortSignal,
    log: Arc<TurnLog>,
}

/// The session.
pub struct Session {
    host: Host,
    runner: Runner,
    config: Config,
    default_cwd: Option<PathBuf>,
    /// The operator's own default directory (`default_cwd`, else
    /// `$DISPATCH_CWD`) — never the process's, which is `/` under systemd
    /// and often `$HOME` by hand — handed to the system prompt's filters:
    /// it bounds what a template may read.
    prompt_root: Option<String>,
    caller: Arc<HostCaller>,
    convs: Mutex<HashMap<String, Conv>>,
    tools: Mutex<HashMap<String, Arc<dyn Tool>>>,
    shutting_down: AtomicBool,
    turn_ended: Notify,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("config", &self.config).finish_non_exhaustive()
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new("invalid_input", message)
}

/// An answer, serialized once: events already are JSON, and going through
/// a `Value` tree would parse every one of them again.
fn to_value<T: Serialize>(v: &T) -> Result<Box<RawValue>, Error> {
    serde_json::value::to_raw_value(v).map_err(|e| Error::new("plugin", e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, v: Value) -> Result<T, Error> {
    serde_json::from_value(v)
        .map_err(|e| Error::new("plugin", format!("the {what} answered an unexpected shape: {e}")))
}

/// A sealed turn of more events than this returns freed memory to the
/// system (see `dispatch_abi::runtime::give_memory_back`).
const TRIM_AFTER_EVENTS: u64 = 20_000;

/// Longest `stop` waits for the aborted turn to seal before it answers.
const STOP_WAITS_FOR_SEAL: Duration = Duration::from_secs(5);

/// Messages longer than this are checked against the store's chunk limit
/// when they are accepted; shorter ones fit any store worth running.
const CHECK_SIZE_ABOVE: usize = 16 * 1024;

/// The size of `text` as the store keeps it (a text chunk's JSON).
fn stored_size(text: &str) -> usize {
    serde_json::to_string(&Chunk::text(text)).map_or(text.len(), |j| j.len())
}

/// The store's rule for conversation ids, checked before anything is
/// reserved so a bad id is a clear `invalid_input`.
fn check_id(id: &str) -> Result<(), Error> {
    if is_valid_conversation_id(id) {
        Ok(())
    } else {
        Err(invalid(format!("invalid conversation id {id:?}: {CONVERSATION_ID_RULE}")))
    }
}

impl Session {
    /// A session serving through `host`, running turns on `runner`.
    pub fn new(host: Host, runner: Runner, config: Config, default_cwd: Option<PathBuf>) -> Arc<Self> {
        Arc::new(Session {
            caller: Arc::new(HostCaller(host.clone())),
            host,
            runner,
            prompt_root: config
                .default_cwd
                .clone()
                .or_else(|| std::env::var_os("DISPATCH_CWD").map(PathBuf::from))
                .map(|d| d.to_string_lossy().into_owned()),
            config,
            default_cwd,
            convs: Mutex::new(HashMap::new()),
            tools: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            turn_ended: Notify::new(),
        })
    }

    fn convs(&self) -> MutexGuard<'_, HashMap<String, Conv>> {
        // Critical sections only move values in and out of the map.
        self.convs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `provider`'s requests held to its slots (see [`crate::gate`]), for
    /// a turn of `conversation_id` starting now.
    fn gated<P>(&self, provider: P, model: &str, conversation_id: &str, workspace_id: &str) -> Gated<P> {
        let (host, c, w) = (self.host.clone(), conversation_id.to_owned(), workspace_id.to_owned());
        let announce: Announce = Arc::new(move |status| {
            let changed = StatusChanged { conversation_id: c.clone(), workspace_id: w.clone(), status };
            if let Err(e) = host.publish(&STATUS, &changed) {
                tracing::warn!(error = %e, "cannot announce a conversation's status");
            }
        });
        Gated::new(
            provider,
            self.host.clone(),
            self.spawner(),
            model,
            conversation_id,
            workspace_id,
            announce,
        )
    }

    fn spawner(&self) -> Spawner {
        let runner = self.runner.clone();
        Arc::new(move |f| runner.spawn(f))
    }

    /// Forget the tools known so far (a plugin changed state, or changed
    /// its tools).
    pub fn forget_tools(&self) {
        self.tools.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// Drop the history kept for `conversation_id`'s next turn (its log was
    /// replaced behind our back: a compaction).
    pub fn forget_history(&self, conversation_id: &str) {
        if let Some(c) = self.convs().get_mut(conversation_id) {
            c.history = None;
        }
    }

    /// Refuse new turns and abort the running ones.
    pub fn begin_shutdown(&self) {
        if self.shutting_down.swap(true, Ordering::SeqCst) {
            return;
        }
        for conv in self.convs().values() {
            if let Some(r) = &conv.running {
                r.abort.abort();
            }
        }
    }

    /// Wait until no turn runs, at most `limit`; `true` when none does.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::sleep(limit);
        let mut deadline = std::pin::pin!(deadline);
        loop {
            let ended = self.turn_ended.notified();
            let mut ended = std::pin::pin!(ended);
            ended.as_mut().enable();
            if self.convs().values().all(|c| c.running.is_none()) {
                return true;
            }
            tokio::select! {
                () = ended => {}
                () = &mut deadline => return false,
            }
        }
    }

    /// Answer one request (on the session's runtime).
    pub fn handle(
        self: Arc<Self>,
        request: SessionRequest,
    ) -> impl std::future::Future<Output = Result<Box<RawValue>, Error>> {
        let runner = self.runner.clone();
        runner.run(async move {
            match request {
                SessionRequest::Chat { request } => to_value(&self.chat(request).await?),
                SessionRequest::Events { conversation_id, turn_id, from, wire, wait_ms } => {
                    self.events(&conversation_id, &turn_id, from, wire.as_deref(), wait_ms).await
                }
                SessionRequest::Status { conversation_id } => to_value(&self.status(&conversation_id).await?),
                SessionRequest::Stop { conversation_id } => {
                    to_value(&self.stop(conversation_id, false).await?)
                }
                SessionRequest::Close { conversation_id } => {
                    to_value(&self.stop(conversation_id, true).await?)
                }
                SessionRequest::Open { conversation_id } => to_value(&self.open(conversation_id).await?),
                SessionRequest::Queue { conversation_id, text, workspace_id } => {
                    to_value(&self.queue(conversation_id, text, workspace_id).await?)
                }
                SessionRequest::Unqueue { conversation_id, message_id } => {
                    let answer =
                        self.queue_call(QueueRequest::Cancel { conversation_id, message_id }).await?;
                    let c: Cancelled = decode("message-queue", answer)?;
                    to_value(&Unqueued {
                        conversation_id: c.state.conversation_id,
                        cancelled: c.cancelled,
                        queue: c.state.messages,
                    })
                }
                SessionRequest::Last { conversation_id, wait_ms } => {
                    to_value(&self.last(&conversation_id, wait_ms).await?)
                }
                SessionRequest::Warm { conversation_id, model, cwd } => {
                    to_value(&self.warm(&conversation_id, model, cwd).await?)
                }
                _ => Err(Error::new("unsupported", "this session does not know that op")),
            }
        })
    }

    // ---- starting a turn ---------------------------------------------

    /// Start a turn. Boxed (and explicitly `Send`): a turn that ends may
    /// start the next one, so this future is part of its own type.
    fn chat(self: &Arc<Self>, request: ChatRequest) -> BoxFuture<Result<Started, Error>> {
        let me = Arc::clone(self);
        Box::pin(async move { me.start(request).await })
    }

    async fn start(self: &Arc<Self>, request: ChatRequest) -> Result<Started, Error> {
        let message = request.message.trim().to_owned();
        if message.is_empty() {
            return Err(invalid("the message is empty"));
        }
        self.check_fits(&message).await?;
        let conversation_id = match request.conversation_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => uuid::Uuid::new_v4().to_string(),
        };
        check_id(&conversation_id)?;
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(Error::new("unavailable", "the server is shutting down"));
        }
        let turn_id = uuid::Uuid::new_v4().to_string();
        let abort = AbortSignal::new();
        let log = Arc::new(TurnLog::new(conversation_id.clone(), turn_id.clone()));
        {
            let mut convs = self.convs();
            let conv = convs.entry(conversation_id.clone()).or_default();
            if let Some(r) = &conv.running {
                return Err(Error::new(
                    "conflict",
                    format!(
                        "conversation {conversation_id} already has a turn running ({}); queue the message \
                         (POST /conversations/{conversation_id}/queue) or stop the turn first",
                        r.turn_id
                    ),
                ));
            }
            conv.running = Some(Running { turn_id: turn_id.clone(), abort: abort.clone(), closing: false });
            conv.logs.push_back(Arc::clone(&log));
            while conv.logs.len() > KEEP_SEALED + 1 {
                conv.logs.pop_front();
            }
        }
        // Cluster-wide too (hosts sharing one store): one turn per
        // conversation, whichever host runs it.
        let claim = self.claim(&conversation_id, &turn_id).await;
        let claimed = claim.is_ok();
        let prepared = match claim {
            Ok(()) => {
                self.prepare(&conversation_id, &turn_id, message, request, abort, Arc::clone(&log)).await
            }
            Err(e) => Err(e),
        };
        match prepared {
            Ok(plan) => {
                let me = Arc::clone(self);
                self.runner.spawn(async move { me.run(plan).await });
                Ok(Started { conversation_id, turn_id })
            }
            Err(e) => {
                // Nothing will seal it: wake whoever waits for that (a
                // `stop` sent while the turn was being prepared).
                log.abandon();
                {
                    let mut convs = self.convs();
                    if let Some(conv) = convs.get_mut(&conversation_id) {
                        conv.running = None;
                        conv.logs.retain(|l| !Arc::ptr_eq(l, &log));
                        if conv.logs.is_empty() {
                            convs.remove(&conversation_id);
                        }
                    }
                }
                if claimed {
                    self.release_claim(&conversation_id).await;
                }
                self.turn_ended.notify_waiters();
                Err(e)
            }
        }
    }

    /// A cache warm: the next turn's request, ending with the one-token
    /// probe instead of a user's message; nothing is saved or emitted.
    async fn warm(
        &self,
        conversation_id: &str,
        model: Option<String>,
        cwd: Option<String>,
    ) -> Result<dispatch_contracts::session::Warmed, Error> {
        if self.convs().get(conversation_id).is_some_and(|c| c.running.is_some()) {
            return Err(Error::new(codes::CONFLICT, "conversation is generating"));
        }
        let details: Option<Details> =
            self.store(&StoreRequest::Get { conversation_id: conversation_id.to_owned() }).await?;
        let Some(details) = details.filter(|d| d.latest_seq > 0) else {
            return Err(Error::new("no_history", "no history"));
        };
        let asked = model.map(|m| m.trim().to_owned()).filter(|m| !m.is_empty());
        let name = asked.clone().or_else(|| details.model.clone());
        let resolved: Resolved =
            match self.host.call(&CATALOG, &CatalogRequest::Resolve { model: name.clone() }).await {
                Ok(r) => decode("model catalog", r)?,
                Err(e) if e.code() == "not_found" => {
                    return Err(Error::new(
                        "unknown_model",
                        format!("unknown model: {}", name.unwrap_or_else(|| "(default)".into())),
                    ))
                }
                Err(e) => return Err(e),
            };
        let cwd =
            self.resolve_cwd(cwd.as_deref(), details.cwd.as_deref(), &details.meta.workspace_id).await?;
        // The history as the next turn would see it.
        let cached =
            self.convs().get(conversation_id).and_then(|c| c.history.as_ref().map(|(_, h)| Arc::clone(h)));
        let mut messages = match cached {
            Some(h) => Arc::unwrap_or_clone(h),
            None => {
                let Messages { messages } = self
                    .store(&StoreRequest::Messages { conversation_id: conversation_id.to_owned() })
                    .await?;
                messages
            }
        };
        messages.push(ChatMessage::user(dispatch_contracts::session::WARM_PROBE));
        let (tools, _) = self.tools_for(conversation_id, &resolved.model, &cwd).await;
        let system_prompt = self.system_prompt(conversation_id, &resolved.model, &cwd, &tools).await;
        let specs: Vec<dispatch_kernel::provider::ToolSpec> = tools
            .iter()
            .map(|t| dispatch_kernel::provider::ToolSpec {
                name: t.name().to_owned(),
                description: t.description().to_owned(),
                input_schema: t.input_schema(),
            })
            .collect();
        let options = ProviderOptions {
            model: Some(resolved.model.clone()),
            system_prompt,
            reasoning_effort: details.reasoning_effort,
            max_output_tokens: Some(1),
        };
        let provider = self.gated(
            RemoteProvider::new(Arc::clone(&self.caller), &resolved, Some(self.spawner())),
            &resolved.model,
            conversation_id,
            &details.meta.workspace_id,
        );
        // The same images, shown the same way, as the turn would.
        let mut view = viewer(self.host.clone(), conversation_id.to_owned(), resolved.model.clone());
        let viewed = view(&messages).await;
        let messages = viewed.unwrap_or(messages);
        let request =
            dispatch_kernel::provider::StepRequest { messages: &messages, tools: &specs, options: &options };
        let mut usage = dispatch_kernel::wire::Usage::default();
        {
            use dispatch_kernel::provider::{Provider as _, ProviderEvent};
            use futures::StreamExt as _;
            let mut stream = provider.stream(request);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(ProviderEvent::Usage(u)) => usage = u,
                    Ok(ProviderEvent::Finish(_)) => break,
                    Ok(_) => {}
                    Err(e) => return Err(Error::new("provider_error", e.message)),
                }
            }
        }
        Ok(dispatch_contracts::session::Warmed { conversation_id: conversation_id.to_owned(), usage })
    }

    /// A turn's working directory: the one asked, else the conversation's,
    /// else the session's default — an existing directory, canonical.
    async fn resolve_cwd(
        &self,
        asked: Option<&str>,
        stored: Option<&str>,
        workspace_id: &str,
    ) -> Result<PathBuf, Error> {
        let conversation = asked.map(str::trim).filter(|c| !c.is_empty()).or(stored);
        let workspace = self.workspace_cwd(workspace_id).await;
        let cwd = effective_cwd(conversation, workspace.as_deref(), self.default_cwd.as_deref()).ok_or_else(
            || invalid("no working directory: send `cwd`, set the workspace's defaultCwd or configure the session's default_cwd"),
        )?;
        let cwd = std::fs::canonicalize(&cwd)
            .map_err(|e| invalid(format!("the working directory {} is not usable: {e}", cwd.display())))?;
        if !cwd.is_dir() {
            return Err(invalid(format!("the working directory {} is not a directory", cwd.display())));
        }
        Ok(cwd)
    }

    /// The workspace's `defaultCwd`. A store that keeps no workspaces (an
    /// older third-party one) has none to give.
    async fn workspace_cwd(&self, workspace_id: &str) -> Option<String> {
        let request = StoreRequest::GetWorkspace { id: workspace_id.to_owned() };
        match self.store::<Option<Workspace>>(&request).await {
            Ok(w) => w.and_then(|w| w.default_cwd),
            Err(e) => {
                tracing::debug!(workspace = workspace_id, error = %e, "no workspace directory");
                None
            }
        }
    }

    async fn store<T: serde::de::DeserializeOwned>(&self, request: &StoreRequest) -> Result<T, Error> {
        let answer = self.host.call(&STORE, request).await?;
        decode("store", answer)
    }

    async fn prepare(
        &self,
        conversation_id: &str,
        turn_id: &str,
        message: String,
        request: ChatRequest,
        abort: AbortSignal,
        log: Arc<TurnLog>,
    ) -> Result<Plan, Error> {
        let details: Option<Details> =
            self.store(&StoreRequest::Get { conversation_id: conversation_id.to_owned() }).await?;
        let asked_model =
            request.model.as_deref().map(str::trim).filter(|m| !m.is_empty()).map(str::to_owned);
        let model = asked_model.clone().or_else(|| details.as_ref().and_then(|d| d.model.clone()));
        let resolved: Resolved = match self.host.call(&CATALOG, &CatalogRequest::Resolve { model }).await {
            Ok(r) => decode("model catalog", r)?,
            Err(e) if e.code() == "not_found" => return Err(Error::new("unknown_model", e.message())),
            Err(e) => return Err(Error::new(e.code(), format!("cannot resolve the model: {}", e.message()))),
        };
        // A conversation's workspace is fixed when it is created (later
        // `workspaceId`s are ignored), and known before its cwd is resolved.
        let workspace_id = match &details {
            Some(d) => d.meta.workspace_id.clone(),
            None => {
                let asked = request.workspace_id.as_deref().map(str::trim).filter(|w| !w.is_empty());
                let id = asked.unwrap_or(DEFAULT_WORKSPACE);
                if !is_valid_slug(id) {
                    return Err(invalid(format!("Invalid workspaceId {id:?}: {SLUG_RULE}")));
                }
                id.to_owned()
            }
        };
        // Kept as sent (WIRE.md): a relative one follows its workspace.
        let asked_cwd = request.cwd.as_deref().map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned);
        let cwd = self
            .resolve_cwd(asked_cwd.as_deref(), details.as_ref().and_then(|d| d.cwd.as_deref()), &workspace_id)
            .await?;
        let effort = request.reasoning_effort.or_else(|| details.as_ref().and_then(|d| d.reasoning_effort));

        // Refusable checks are done: from here on the turn happens.
        let mut chunks = vec![Chunk::text(message.clone())];
        for image in request.images.unwrap_or_default() {
            chunks.push(Chunk::Image { url: image.url, mime_type: image.mime_type });
        }
        let appended: Appended = self
            .store(&StoreRequest::Append {
                conversation_id: conversation_id.to_owned(),
                role: Role::User,
                turn_id: Some(turn_id.to_owned()),
                chunks: chunks.clone(),
            })
            .await?;
        let (first_seq, user_seq) =
            (appended.seqs.first().copied().unwrap_or(0), appended.seqs.last().copied().unwrap_or(0));
        let update = MetaUpdate {
            conversation_id: conversation_id.to_owned(),
            status: Some(ConversationStatus::Active),
            model: asked_model.map(Some),
            cwd: asked_cwd.map(Some),
            reasoning_effort: request.reasoning_effort.map(Some),
            workspace_id: details.is_none().then(|| workspace_id.clone()),
            ..MetaUpdate::default()
        };
        let _: Value = self.store(&StoreRequest::Update(update)).await?;
        let cached = self.convs().get_mut(conversation_id).and_then(|c| c.history.take());
        let history = match cached {
            // Nothing was written since the last turn sealed: its history,
            // and this message.
            Some((seq, h)) if seq + 1 == first_seq => {
                let mut h = Arc::unwrap_or_clone(h);
                h.push(ChatMessage { role: Role::User, chunks });
                h
            }
            _ => {
                let Messages { messages } = self
                    .store(&StoreRequest::Messages { conversation_id: conversation_id.to_owned() })
                    .await?;
                messages
            }
        };

        let (tools, owners) = self.tools_for(conversation_id, &resolved.model, &cwd).await;
        let system_prompt = self.system_prompt(conversation_id, &resolved.model, &cwd, &tools).await;
        Ok(Plan {
            conversation_id: conversation_id.to_owned(),
            turn_id: turn_id.to_owned(),
            message,
            workspace_id,
            user_seq,
            resolved,
            cwd,
            effort,
            history,
            tools,
            owners,
            system_prompt,
            abort,
            log,
        })
    }

    /// The tools for a turn: every `tool.*` service of an active plugin,
    /// through the `session.tools` filters; and the plugin serving each
    /// (a family's tools are its one family plugin's, when there is one).
    async fn tools_for(
        &self,
        conversation_id: &str,
        model: &str,
        cwd: &std::path::Path,
    ) -> (Vec<Arc<dyn Tool>>, HashMap<String, String>) {
        let mut owners = HashMap::new();
        let mut families = Vec::new();
        let mut names: Vec<String> = match self.host.call(&PLUGINS, &json!({})).await {
            Ok(PluginList { plugins, .. }) => plugins
                .into_iter()
                .filter(|p| p.state == State::Active)
                .flat_map(|p| {
                    let id = p.id;
                    p.provides.into_iter().map(move |s| (id.clone(), s))
                })
                .filter(|(_, p)| p.kind == "service")
                .filter_map(|(id, p)| p.name.strip_prefix(TOOL_PREFIX).map(|n| (id, n.to_owned())))
                // A declared family (`tool.*`) names no tool: its plugin
                // adds its tools through the `session.tools` filter.
                .filter_map(|(id, name)| {
                    if name.ends_with('*') {
                        families.push(id);
                        return None;
                    }
                    owners.insert(name.clone(), id);
                    Some(name)
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the plugins; the turn offers no tools");
                Vec::new()
            }
        };
        let value = TurnTools {
            conversation_id: conversation_id.to_owned(),
            model: model.to_owned(),
            tools: names,
            cwd: Some(cwd.to_string_lossy().into_owned()),
            describe: Default::default(),
        };
        let mut describe;
        (names, describe) = match self.host.run_hook(&TOOLS, &value).await {
            Ok(HookResult::Continue(v)) => (v.tools, v.describe),
            Ok(HookResult::Vetoed { plugin, reason }) => {
                tracing::warn!(%plugin, %reason, "a tools filter vetoed; the turn offers no tools");
                (Vec::new(), Default::default())
            }
            Err(e) => {
                tracing::warn!(error = %e, "the tools hook failed; offering every tool");
                (value.tools, Default::default())
            }
        };
        let mut tools = Vec::with_capacity(names.len());
        let mut seen = std::collections::HashSet::new();
        for name in names {
            if !seen.insert(name.clone()) {
                continue;
            }
            let service = format!("{TOOL_PREFIX}{name}");
            let cached = self.tools.lock().unwrap_or_else(PoisonError::into_inner).get(&service).cloned();
            let tool = match cached {
                Some(t) => t,
                None => match RemoteTool::connect(Arc::clone(&self.caller), &service, Some(self.spawner()))
                    .await
                {
                    Ok(t) => {
                        let t: Arc<dyn Tool> = Arc::new(t);
                        self.tools
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(service, Arc::clone(&t));
                        t
                    }
                    Err(e) => {
                        tracing::warn!(%service, error = %e, "tool left out: it cannot describe itself");
                        continue;
                    }
                },
            };
            let described = describe.remove(tool.name());
            tools.push(crate::offered::Offered::wrap(tool, described, self.host.clone()));
        }
        if let [family] = families.as_slice() {
            for t in &tools {
                owners.entry(t.name().to_owned()).or_insert_with(|| family.clone());
            }
        }
        (tools, owners)
    }

    async fn system_prompt(
        &self,
        conversation_id: &str,
        model: &str,
        cwd: &std::path::Path,
        tools: &[Arc<dyn Tool>],
    ) -> Option<String> {
        let ctx = PromptContext {
            conversation_id: conversation_id.to_owned(),
            model: model.to_owned(),
            cwd: Some(cwd.to_string_lossy().into_owned()),
            // The operator's choice only (`default_cwd`, `$DISPATCH_CWD`),
            // never the process's directory, which is `/` under systemd
            // and often `$HOME` by hand: it bounds what a template reads.
            default_cwd: self.prompt_root.clone(),
            tools: tools
                .iter()
                .map(|t| ToolSummary { name: t.name().to_owned(), description: t.description().to_owned() })
                .collect(),
            prompt: String::new(),
        };
        let prompt = match self.host.run_hook(&SYSTEM_PROMPT, &ctx).await {
            Ok(HookResult::Continue(c)) => c.prompt,
            Ok(_) => String::new(),
            Err(e) => {
                tracing::warn!(error = %e, "the system-prompt hook failed; the turn has no system prompt");
                String::new()
            }
        };
        (!prompt.trim().is_empty()).then_some(prompt)
    }

    // ---- running a turn ----------------------------------------------

    fn publish_status(&self, conversation_id: &str, workspace_id: &str, status: ConversationStatus) {
        let changed = StatusChanged {
            conversation_id: conversation_id.to_owned(),
            workspace_id: workspace_id.to_owned(),
            status,
        };
        if let Err(e) = self.host.publish(&STATUS, &changed) {
            tracing::warn!(error = %e, "cannot publish a status change");
        }
    }

    /// Where a turn's events go: its log (serialized once) and the bus.
    fn emitter(&self, log: Arc<TurnLog>) -> Arc<dyn Fn(AgentEvent) + Send + Sync> {
        let host = self.host.clone();
        Arc::new(move |event: AgentEvent| {
            // Serialized once, for the log and the bus alike.
            let raw = match serde_json::value::to_raw_value(&event) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "an event cannot be serialized; dropped");
                    return;
                }
            };
            let bytes = RVec::from(raw.get().as_bytes());
            log.push(event.type_name(), raw);
            // Nobody listening is not an error worth a log line per delta.
            let _ = host.abi().publish(RStr::from(EVENT.name()), EVENT.version(), bytes);
        })
    }

    async fn run(self: Arc<Self>, plan: Plan) {
        let Plan {
            conversation_id,
            turn_id,
            message,
            workspace_id,
            user_seq,
            resolved,
            cwd,
            effort,
            history,
            tools,
            owners,
            system_prompt,
            abort,
            log,
        } = plan;
        let emit = self.emitter(Arc::clone(&log));
        // The turn's clock counts from here; traces carry wall time.
        let clock = MonotonicClock::start();
        let base = epoch_ms();
        let trace = Tracer {
            host: self.host.clone(),
            base,
            model: resolved.model.clone(),
            owners: Arc::new(owners),
            pending: Arc::default(),
            runner: self.runner.clone(),
            scheduled: Arc::default(),
        };
        trace.record(TraceEvent {
            conversation_id: conversation_id.clone(),
            turn_id: turn_id.clone(),
            step_id: None,
            started_at: base,
            ended_at: base,
            body: TraceBody::Context {
                model: resolved.model.clone(),
                system_prompt: system_prompt.clone(),
                tools: tools
                    .iter()
                    .map(|t| ToolSpec {
                        name: t.name().to_owned(),
                        description: t.description().to_owned(),
                        input_schema: t.input_schema(),
                    })
                    .collect(),
            },
        });
        emit(AgentEvent::UserMessage {
            conversation_id: conversation_id.clone(),
            turn_id: turn_id.clone(),
            text: message,
        });
        self.publish_status(&conversation_id, &workspace_id, ConversationStatus::Active);

        let provider = self.gated(
            RemoteProvider::new(Arc::clone(&self.caller), &resolved, Some(self.spawner())),
            &resolved.model,
            &conversation_id,
            &workspace_id,
        );
        let retry = match &self.config.retry_delays_ms {
            Some(delays) => RetryPolicy {
                delays: delays.iter().map(|ms| Duration::from_millis(*ms)).collect(),
                ..RetryPolicy::default()
            },
            None => RetryPolicy::default(),
        };
        // The store's last seq as the turn saves, and whether every save
        // landed: together they decide whether the history can be kept
        // for the next turn.
        let saved = Arc::new(Mutex::new(Some(user_seq)));
        let on_step = {
            let trace = trace.clone();
            let host = self.host.clone();
            let conversation_id = conversation_id.clone();
            let turn_id = turn_id.clone();
            let saved = Arc::clone(&saved);
            Box::new(move |messages: Vec<ChatMessage>| -> BoxFuture<Result<(), String>> {
                let host = host.clone();
                let conversation_id = conversation_id.clone();
                let turn_id = turn_id.clone();
                let saved = Arc::clone(&saved);
                let trace = trace.clone();
                Box::pin(async move {
                    // Steering alone: the user's queued messages. When they
                    // cannot be saved they go back to the queue, so nothing
                    // a client was told was accepted is lost.
                    let steering: Vec<String> = messages
                        .iter()
                        .filter(|m| m.role == Role::User)
                        .filter_map(|m| match m.chunks.as_slice() {
                            [Chunk::Text { text }] => Some(text.clone()),
                            _ => None,
                        })
                        .collect();
                    let only_steering = steering.len() == messages.len();
                    let count = u32::try_from(messages.len()).unwrap_or(u32::MAX);
                    let started_at = epoch_ms();
                    let result = save_step(&host, &conversation_id, &turn_id, messages).await;
                    trace.record(TraceEvent {
                        conversation_id: conversation_id.clone(),
                        turn_id: turn_id.clone(),
                        step_id: None,
                        started_at,
                        ended_at: epoch_ms(),
                        body: TraceBody::Append { messages: count, ok: result.is_ok() },
                    });
                    {
                        let mut last = saved.lock().unwrap_or_else(PoisonError::into_inner);
                        *last = match (&result, *last) {
                            (Ok(Some(seq)), Some(_)) => Some(*seq),
                            (Ok(None), known) => known,
                            _ => None,
                        };
                    }
                    match result {
                        Ok(_) => Ok(()),
                        Err(e) => {
                            tracing::error!(error = %e, conversation = %conversation_id, "cannot save a step");
                            let mut message = format!("the step could not be saved: {}", e.message());
                            if only_steering {
                                let mut kept = 0;
                                for text in steering {
                                    let push =
                                        QueueRequest::Push { conversation_id: conversation_id.clone(), text };
                                    if host.call(&QUEUE, &push).await.is_ok() {
                                        kept += 1;
                                    }
                                }
                                message
                                    .push_str(&format!("; {kept} queued message(s) are back in the queue"));
                            }
                            Err(message)
                        }
                    }
                })
            })
        };
        let drain = {
            let host = self.host.clone();
            let conversation_id = conversation_id.clone();
            Box::new(move || -> BoxFuture<Vec<String>> {
                let host = host.clone();
                let request = QueueRequest::Drain { conversation_id: conversation_id.clone() };
                Box::pin(async move {
                    match host
                        .call(&QUEUE, &request)
                        .await
                        .and_then(|v| decode::<QueueState>("message-queue", v))
                    {
                        Ok(state) => state.messages.into_iter().map(|m| m.text).collect(),
                        // No queue plugin: nothing is ever queued.
                        Err(_) => Vec::new(),
                    }
                })
            })
        };
        // At tool-result boundaries, the compaction plugin (when there is
        // one) may compact the conversation; the turn goes on with what it
        // answers. What the turn keeps for the next stays right: the store
        // then holds the compacted log and what the turn appended after it.
        let compact = {
            let host = self.host.clone();
            let conversation_id = conversation_id.clone();
            let model = resolved.model.clone();
            let compactor: dispatch_kernel::turn::Compactor =
                Box::new(move |context_size| -> BoxFuture<Option<Vec<ChatMessage>>> {
                    let host = host.clone();
                    let request = dispatch_contracts::compaction::CompactionRequest::InFlight {
                        conversation_id: conversation_id.clone(),
                        model: model.clone(),
                        context_size,
                    };
                    Box::pin(async move {
                        match host.call(&dispatch_contracts::compaction::COMPACTION, &request).await {
                            Ok(answer) => answer.history,
                            // No compaction plugin (or it failed): go on.
                            Err(_) => None,
                        }
                    })
                });
            compactor
        };
        let mut outcome = run_turn(TurnInput {
            conversation_id: conversation_id.clone(),
            turn_id: turn_id.clone(),
            history,
            provider: &provider,
            options: ProviderOptions {
                model: Some(resolved.model.clone()),
                system_prompt,
                reasoning_effort: effort,
                max_output_tokens: None,
            },
            tools,
            cwd: Some(cwd),
            abort,
            clock: Some(Arc::new(clock)),
            sleep: Arc::new(TokioSleep),
            retry,
            max_steps: self.config.max_steps,
            max_parallel_tools: self.config.max_parallel_tools.max(1),
            emit: Arc::clone(&emit),
            drain_steering: Some(drain),
            on_step: Some(on_step),
            compact: Some(compact),
            view: Some(viewer(self.host.clone(), conversation_id.clone(), resolved.model.clone())),
            observe: Some(trace.observer()),
        })
        .await;
        let ended = trace.turn_end(&conversation_id, &turn_id, &outcome);

        let metrics = StoreRequest::AppendMetrics {
            conversation_id: conversation_id.clone(),
            metrics: outcome.metrics,
        };
        if let Err(e) = self.host.call(&STORE, &metrics).await {
            tracing::warn!(error = %e, conversation = %conversation_id, "cannot save the turn's metrics");
        }
        // After the metrics: a subscriber reading the conversation's totals
        // on the turn's end finds this turn among them.
        trace.record(ended);
        trace.flush();
        let closing = {
            let convs = self.convs();
            convs.get(&conversation_id).and_then(|c| c.running.as_ref()).is_some_and(|r| r.closing)
        };
        let status = if closing { ConversationStatus::Closed } else { ConversationStatus::Idle };
        let update = MetaUpdate {
            conversation_id: conversation_id.clone(),
            status: Some(status),
            ..MetaUpdate::default()
        };
        // The status is announced with the workspace the conversation is in
        // now: a workspace deleted meanwhile moved it to `default`.
        let workspace_id = match self.host.call(&STORE, &StoreRequest::Update(update)).await {
            Ok(v) => serde_json::from_value::<Details>(v).map_or(workspace_id, |d| d.meta.workspace_id),
            Err(e) => {
                tracing::warn!(error = %e, conversation = %conversation_id, "cannot save the conversation's status");
                workspace_id
            }
        };
        // Keep the history for the next turn when every save landed. It is
        // what the store would answer because every saved step pairs each
        // tool call with its result (the kernel's guarantee), so the
        // store's `reconcile` on reading has nothing to add.
        let kept = saved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .map(|seq| (seq, Arc::new(std::mem::take(&mut outcome.history))));
        // Free the conversation before announcing the seal: a client that
        // reads `turn-sealed` and sends at once must not get a conflict.
        if let Some(conv) = self.convs().get_mut(&conversation_id) {
            conv.running = None;
            conv.history = kept;
        }
        self.release_claim(&conversation_id).await;
        emit(AgentEvent::TurnSealed { conversation_id: conversation_id.clone(), turn_id: turn_id.clone() });
        // A turn of many events freed as many small allocations, which
        // glibc's malloc keeps for the process: hand them back.
        if log.size().0 > TRIM_AFTER_EVENTS {
            dispatch_abi::runtime::give_memory_back();
        }
        self.publish_status(&conversation_id, &workspace_id, status);
        self.turn_ended.notify_waiters();
        let me = Arc::clone(&self);
        let evicted = conversation_id.clone();
        self.runner.spawn(async move {
            tokio::time::sleep(SEALED_KEPT_FOR).await;
            me.evict(&evicted, &turn_id);
        });

        let carry =
            !closing && outcome.reason != FinishReason::Error && !self.shutting_down.load(Ordering::SeqCst);
        if carry {
            self.carry_queue(conversation_id, workspace_id).await;
        }
    }

    /// What was queued and not drained starts the next turn.
    async fn carry_queue(self: &Arc<Self>, conversation_id: String, workspace_id: String) {
        let drained = self
            .host
            .call(&QUEUE, &QueueRequest::Drain { conversation_id: conversation_id.clone() })
            .await
            .and_then(|v| decode::<QueueState>("message-queue", v));
        let Ok(state) = drained else { return };
        if state.messages.is_empty() {
            return;
        }
        // One message of as many as the store keeps in one chunk (each fits
        // alone: checked when queued); the rest go back to the queue, to
        // steer that turn or start the next — never lost, never refused.
        let limit = self.max_text_bytes().await.unwrap_or(usize::MAX);
        let mut texts: Vec<String> = state.messages.into_iter().map(|m| m.text).collect();
        let mut taken = 1;
        while taken < texts.len() && stored_size(&texts[..=taken].join("\n\n")) <= limit {
            taken += 1;
        }
        let rest = texts.split_off(taken);
        let request = ChatRequest {
            conversation_id: Some(conversation_id.clone()),
            message: texts.join("\n\n"),
            workspace_id: Some(workspace_id),
            ..ChatRequest::default()
        };
        // What did not fit goes back after the turn started (it steers
        // that turn or starts the next); when the turn cannot start, all
        // of it goes back, in the order it was queued.
        let back = match self.chat(request).await {
            Ok(_) => rest,
            Err(e) => {
                // A client started a turn first (or the model is gone).
                tracing::warn!(error = %e, conversation = %conversation_id, "queued messages wait for the next turn");
                texts.into_iter().chain(rest).collect()
            }
        };
        for text in back {
            if let Err(e) =
                self.queue_call(QueueRequest::Push { conversation_id: conversation_id.clone(), text }).await
            {
                tracing::warn!(error = %e, conversation = %conversation_id, "a queued message could not be put back");
            }
        }
    }

    /// Forget a sealed turn's events, and the conversation when nothing of
    /// it is left in memory.
    fn evict(&self, conversation_id: &str, turn_id: &str) {
        let mut convs = self.convs();
        if let Some(conv) = convs.get_mut(conversation_id) {
            conv.logs.retain(|l| l.turn_id != turn_id || !l.is_sealed());
            if conv.running.is_none() && conv.remote.is_none() && conv.logs.is_empty() {
                convs.remove(conversation_id);
            }
        }
    }

    /// A status change relayed from another host: passed on to the
    /// transports (`cluster.remote-status`) — an `active` only once the
    /// turn's first event is mirrored, so whoever asks about it then finds
    /// it.
    pub(crate) fn relayed_status(&self, changed: StatusChanged) {
        if changed.status == ConversationStatus::Active {
            let mut convs = self.convs();
            let conv = convs.entry(changed.conversation_id.clone()).or_default();
            if conv.remote.is_none() && conv.running.is_none() {
                conv.pending_active = Some(changed.workspace_id);
                return;
            }
        } else if let Some(conv) = self.convs().get_mut(&changed.conversation_id) {
            conv.pending_active = None;
        }
        self.announce_remote(&changed.conversation_id, changed.workspace_id, changed.status);
    }

    fn announce_remote(&self, conversation_id: &str, workspace_id: String, status: ConversationStatus) {
        let changed = StatusChanged { conversation_id: conversation_id.to_owned(), workspace_id, status };
        if let Err(e) = self.host.publish(&REMOTE_STATUS, &changed) {
            tracing::warn!(error = %e, "cannot pass on another host's status change");
        }
    }

    /// An event of a turn another host runs: mirrored into that turn's
    /// log here (created at its first event), so `events`, `status` and
    /// `last` answer for it as for a turn of this host.
    pub(crate) fn remote_event(self: &Arc<Self>, event: &AgentEvent) {
        let Ok(raw) = serde_json::value::to_raw_value(event) else { return };
        let Ok(ids) = serde_json::from_str::<EventIds>(raw.get()) else { return };
        let kind = event.type_name();
        let sealed = kind == "turn-sealed";
        let mut announce = None;
        {
            let mut convs = self.convs();
            let conv = convs.entry(ids.conversation_id.clone()).or_default();
            if conv.running.is_some() {
                // This host runs the conversation: a stale relay.
                return;
            }
            let log = match conv.logs.iter().rev().find(|l| l.turn_id == ids.turn_id) {
                Some(l) => Arc::clone(l),
                None => {
                    let log = Arc::new(TurnLog::new(ids.conversation_id.clone(), ids.turn_id.clone()));
                    conv.logs.push_back(Arc::clone(&log));
                    while conv.logs.len() > KEEP_SEALED + 1 {
                        conv.logs.pop_front();
                    }
                    conv.remote = Some(ids.turn_id.clone());
                    announce = conv.pending_active.take();
                    log
                }
            };
            log.push(kind, raw);
            if sealed {
                if conv.remote.as_deref() == Some(ids.turn_id.as_str()) {
                    conv.remote = None;
                }
                // What we held of its history is stale: the other host wrote.
                conv.history = None;
            }
        }
        if let Some(workspace_id) = announce {
            self.announce_remote(&ids.conversation_id, workspace_id, ConversationStatus::Active);
        }
        if sealed {
            self.turn_ended.notify_waiters();
            // Messages queued here while the other host ran the turn start
            // the next one here, as they would after a turn of this host
            // (the conversation's workspace is the stored one).
            let me = Arc::clone(self);
            let id = ids.conversation_id.clone();
            self.runner.spawn(async move { me.carry_queue(id, "default".to_owned()).await });
            let me = Arc::clone(self);
            self.runner.spawn(async move {
                tokio::time::sleep(SEALED_KEPT_FOR).await;
                me.evict(&ids.conversation_id, &ids.turn_id);
            });
        }
    }

    // ---- the other ops -----------------------------------------------

    fn find_log(&self, conversation_id: &str, turn_id: &str) -> Option<Arc<TurnLog>> {
        self.convs().get(conversation_id)?.logs.iter().rev().find(|l| l.turn_id == turn_id).cloned()
    }

    async fn events(
        &self,
        conversation_id: &str,
        turn_id: &str,
        from: u64,
        wire: Option<&str>,
        wait_ms: Option<u64>,
    ) -> Result<Box<RawValue>, Error> {
        let wire = match wire {
            Some(w) => WireVersion::parse(w).ok_or_else(|| invalid(format!("unknown wire version {w:?}")))?,
            None => WireVersion::Latest,
        };
        let log = self.find_log(conversation_id, turn_id).ok_or_else(|| {
            Error::new(
                "not_found",
                format!("no turn {turn_id} in conversation {conversation_id} (it ended long ago?)"),
            )
        })?;
        let wait = wait_ms.map_or(DEFAULT_EVENTS_WAIT, Duration::from_millis).min(MAX_WAIT);
        let batch = log.read(from, wire, tokio::time::sleep(wait)).await;
        to_value(&batch)
    }

    async fn status(&self, conversation_id: &str) -> Result<StatusInfo, Error> {
        let (running, last) = {
            let convs = self.convs();
            let conv = convs.get(conversation_id);
            (
                conv.and_then(|c| c.running.as_ref().map(|r| r.turn_id.clone()).or_else(|| c.remote.clone())),
                conv.and_then(|c| c.logs.back().map(|l| l.turn_id.clone())),
            )
        };
        if let Some(turn_id) = running {
            return Ok(StatusInfo {
                conversation_id: conversation_id.to_owned(),
                is_active: true,
                status: ConversationStatus::Active,
                turn_id: Some(turn_id),
            });
        }
        let details: Option<Details> =
            self.store(&StoreRequest::Get { conversation_id: conversation_id.to_owned() }).await?;
        let d = details.ok_or_else(|| Error::new("not_found", "Conversation not found"))?;
        let status = match d.meta.status {
            // Nothing runs here: an `active` on disk is from a crash.
            ConversationStatus::Active | ConversationStatus::Queued => ConversationStatus::Idle,
            s => s,
        };
        Ok(StatusInfo {
            conversation_id: conversation_id.to_owned(),
            is_active: false,
            status,
            turn_id: last,
        })
    }

    async fn stop(&self, conversation_id: String, close: bool) -> Result<Aborted, Error> {
        let aborting = {
            let mut convs = self.convs();
            let conv = convs.get_mut(&conversation_id);
            let log = conv.as_ref().and_then(|c| c.logs.back().cloned());
            match conv.and_then(|c| c.running.as_mut()) {
                Some(r) => {
                    r.closing |= close;
                    r.abort.abort();
                    log.filter(|l| l.turn_id == r.turn_id)
                }
                None => None,
            }
        };
        let mut aborted_turn = aborting.is_some();
        // Not running here: maybe on another host sharing the store.
        let mut forwarded = false;
        if !aborted_turn {
            let action = if close { ForwardAction::Close } else { ForwardAction::Stop };
            let request = ClusterRequest::Forward { conversation_id: conversation_id.clone(), action };
            match self.host.call(&CLUSTER, &request).await {
                Ok(v) => {
                    forwarded = serde_json::from_value::<Delivered>(v).is_ok_and(|d| d.delivered);
                    aborted_turn = forwarded;
                }
                Err(e) if e.code() == codes::NOT_FOUND => {}
                Err(e) => {
                    tracing::warn!(conversation = %conversation_id, error = %e, "cannot forward a stop to the cluster")
                }
            }
        }
        // Answer once the turn has sealed (bounded): a client that sends
        // its next message as soon as `stop` answers must not meet the
        // aborted turn still winding down (a `409` for a few milliseconds).
        if let Some(log) = aborting {
            if !log.sealed(tokio::time::sleep(STOP_WAITS_FOR_SEAL)).await {
                tracing::warn!(conversation = %conversation_id, "the stopped turn has not sealed yet; answering anyway");
            }
        }
        // (A forwarded close is the running host's to finish.)
        if close && !aborted_turn && !forwarded {
            let details: Option<Details> =
                self.store(&StoreRequest::Get { conversation_id: conversation_id.clone() }).await?;
            if let Some(d) = details {
                let update = MetaUpdate {
                    conversation_id: conversation_id.clone(),
                    status: Some(ConversationStatus::Closed),
                    ..MetaUpdate::default()
                };
                let _: Value = self.store(&StoreRequest::Update(update)).await?;
                self.publish_status(&conversation_id, &d.meta.workspace_id, ConversationStatus::Closed);
            }
        }
        Ok(Aborted { conversation_id, aborted_turn })
    }

    /// Claim the conversation's turn in the cluster, when this host shares
    /// its store with others (the store provides `cluster`); without one
    /// this host decides alone.
    async fn claim(&self, conversation_id: &str, turn_id: &str) -> Result<(), Error> {
        let request = ClusterRequest::Claim {
            conversation_id: conversation_id.to_owned(),
            turn_id: turn_id.to_owned(),
        };
        match self.host.call(&CLUSTER, &request).await {
            Ok(v) => {
                let claimed: Claimed = serde_json::from_value(v)
                    .map_err(|e| Error::new(codes::PLUGIN, format!("the cluster answered: {e}")))?;
                if claimed.granted {
                    return Ok(());
                }
                let holder = claimed.holder.unwrap_or_else(|| "another host".to_owned());
                let turn = claimed.turn_id.map(|t| format!(", turn {t}")).unwrap_or_default();
                Err(Error::new(
                    "conflict",
                    format!(
                        "conversation {conversation_id} already has a turn running (on {holder}{turn}); queue the \
                         message (POST /conversations/{conversation_id}/queue) or stop the turn first"
                    ),
                ))
            }
            Err(e) if e.code() == codes::NOT_FOUND => Ok(()),
            Err(e) => Err(Error::new(
                codes::UNAVAILABLE,
                format!("cannot claim the conversation's turn among the hosts: {e}"),
            )),
        }
    }

    /// Give up this host's claim on the conversation (its turn sealed). A
    /// failure only delays the next turn elsewhere until the lease ends.
    async fn release_claim(&self, conversation_id: &str) {
        let request = ClusterRequest::Release { conversation_id: conversation_id.to_owned() };
        match self.host.call(&CLUSTER, &request).await {
            Ok(_) => {}
            Err(e) if e.code() == codes::NOT_FOUND => {}
            Err(e) => {
                tracing::warn!(conversation = %conversation_id, error = %e, "cannot release the turn's claim")
            }
        }
    }

    /// Another host forwarded a stop or close for a turn this host runs.
    pub(crate) fn forwarded(self: &Arc<Self>, f: Forwarded) {
        let me = Arc::clone(self);
        self.runner.spawn(async move {
            let close = matches!(f.action, ForwardAction::Close);
            if let Err(e) = me.stop(f.conversation_id.clone(), close).await {
                tracing::warn!(conversation = %f.conversation_id, error = %e, "a forwarded stop failed");
            }
        });
    }

    async fn open(&self, conversation_id: String) -> Result<ConversationRef, Error> {
        let details: Option<Details> =
            self.store(&StoreRequest::Get { conversation_id: conversation_id.clone() }).await?;
        let workspace_id = details.map_or_else(|| "default".to_owned(), |d| d.meta.workspace_id);
        self.host
            .publish(&OPEN, &OpenRequested { conversation_id: conversation_id.clone(), workspace_id })?;
        Ok(ConversationRef { conversation_id })
    }

    /// The largest text the store keeps in one message, if it says.
    async fn max_text_bytes(&self) -> Option<usize> {
        let limits: StoreLimits = self.store(&StoreRequest::Limits).await.ok()?;
        usize::try_from(limits.max_chunk_bytes).ok()
    }

    /// Refuse, when it is accepted, a message the store would refuse when
    /// it is saved (`payload_too_large`, HTTP `413`): a queued message is
    /// saved later, when nobody is there to be told.
    async fn check_fits(&self, text: &str) -> Result<(), Error> {
        if text.len() <= CHECK_SIZE_ABOVE {
            return Ok(());
        }
        let Some(limit) = self.max_text_bytes().await else { return Ok(()) };
        let size = stored_size(text);
        if size <= limit {
            return Ok(());
        }
        Err(Error::new(
            "payload_too_large",
            format!(
                "the message is {size} bytes as stored, over the store's limit of {limit} bytes per message \
                 (store-sqlite `max_chunk_bytes`): send it in parts or as a file"
            ),
        ))
    }

    async fn queue_call(&self, request: QueueRequest) -> Result<Value, Error> {
        self.host.call(&QUEUE, &request).await.map_err(|e| {
            if e.code() == "not_found" {
                Error::new("unsupported", "no message queue is loaded (the message-queue plugin)")
            } else {
                e
            }
        })
    }

    async fn queue(
        self: &Arc<Self>,
        conversation_id: String,
        text: String,
        workspace_id: Option<String>,
    ) -> Result<Queued, Error> {
        let text = text.trim().to_owned();
        if text.is_empty() {
            return Err(invalid("the message is empty"));
        }
        check_id(&conversation_id)?;
        self.check_fits(&text).await?;
        let running = self.convs().get(&conversation_id).is_some_and(|c| c.running.is_some());
        if !running {
            let request = ChatRequest {
                conversation_id: Some(conversation_id.clone()),
                message: text.clone(),
                workspace_id,
                ..ChatRequest::default()
            };
            match self.chat(request).await {
                Ok(_) => return Ok(Queued { conversation_id, started_turn: true, queue: Vec::new() }),
                // A turn started meanwhile: queue for it after all.
                Err(e) if e.code() == "conflict" => {}
                Err(e) => return Err(e),
            }
        }
        let answer =
            self.queue_call(QueueRequest::Push { conversation_id: conversation_id.clone(), text }).await?;
        let state: QueueState = decode("message-queue", answer)?;
        Ok(Queued { conversation_id, started_turn: false, queue: state.messages })
    }

    async fn last(&self, conversation_id: &str, wait_ms: Option<u64>) -> Result<LastAnswer, Error> {
        let running = {
            let convs = self.convs();
            convs.get(conversation_id).and_then(|c| {
                if c.running.is_some() || c.remote.is_some() {
                    c.logs.back().cloned()
                } else {
                    None
                }
            })
        };
        let mut turn_id = None;
        if let Some(log) = running {
            let wait = wait_ms.map_or(MAX_WAIT, Duration::from_millis).min(MAX_WAIT);
            if log.sealed(tokio::time::sleep(wait)).await {
                turn_id = Some(log.turn_id.clone());
            }
        }
        let Messages { messages } =
            self.store(&StoreRequest::Messages { conversation_id: conversation_id.to_owned() }).await?;
        let content = messages
            .iter()
            .rev()
            .find(|m| m.role == Role::Assistant)
            .and_then(|m| {
                m.chunks.iter().rev().find_map(|c| match c {
                    Chunk::Text { text } => Some(text.clone()),
                    _ => None,
                })
            })
            .unwrap_or_default();
        Ok(LastAnswer { conversation_id: conversation_id.to_owned(), content, turn_id })
    }

    /// Conversations the store says are `active` when none can be (after a
    /// crash): mark them idle.
    pub async fn recover(&self) -> Result<usize, Error> {
        let listing: dispatch_contracts::store::Listing = self
            .store(&StoreRequest::List { prefix: None, status: Some(ConversationStatus::Active) })
            .await?;
        let n = listing.conversations.len();
        for c in listing.conversations {
            let update = MetaUpdate {
                conversation_id: c.id,
                status: Some(ConversationStatus::Idle),
                ..MetaUpdate::default()
            };
            let _: Value = self.store(&StoreRequest::Update(update)).await?;
        }
        Ok(n)
    }
}

/// Persist a step's messages: in one `appendMessages` call (one
/// transaction, one hop to the store), or one `append` each for a store
/// that does not know that op.
/// What the model is shown of a request's images: the `vision` plugin's
/// view (images over the limit described, placeholders for a text-only
/// model). Asked only when the messages hold an image, so a conversation
/// without images never pays for it; without the plugin, or when it fails,
/// the messages go as they are (the provider decides what it sends).
fn viewer(host: Host, conversation_id: String, model: String) -> dispatch_kernel::turn::Viewer {
    Box::new(move |messages: &[ChatMessage]| -> BoxFuture<Option<Vec<ChatMessage>>> {
        if !messages.iter().any(|m| m.chunks.iter().any(|c| matches!(c, Chunk::Image { .. }))) {
            return Box::pin(std::future::ready(None));
        }
        let host = host.clone();
        let request = VisionRequest::View {
            conversation_id: conversation_id.clone(),
            model: model.clone(),
            messages: messages.to_vec(),
        };
        Box::pin(async move {
            match host.call(&VISION, &request).await {
                Ok(viewed) => viewed.messages,
                Err(e) if e.code() == codes::NOT_FOUND || e.code() == codes::UNAVAILABLE => None,
                Err(e) => {
                    tracing::warn!(error = %e, "the vision service failed; images go as they are");
                    None
                }
            }
        })
    })
}

async fn save_step(
    host: &Host,
    conversation_id: &str,
    turn_id: &str,
    messages: Vec<ChatMessage>,
) -> Result<Option<u64>, dispatch_abi::Error> {
    let mut messages: Vec<NewMessage> =
        messages.into_iter().map(|m| NewMessage { role: m.role, chunks: m.chunks }).collect();
    if messages.len() > 1 {
        let request = StoreRequest::AppendMessages {
            conversation_id: conversation_id.to_owned(),
            turn_id: Some(turn_id.to_owned()),
            messages: std::mem::take(&mut messages),
        };
        match host.call(&STORE, &request).await {
            // An older store: `unsupported`, or a request it cannot decode
            // (the op's name in the message). Not a refused *content*
            // (an over-long chunk is `invalid_payload` too): retrying that
            // message by message would save half the step.
            Err(e)
                if e.code() == codes::UNSUPPORTED
                    || (e.code() == codes::INVALID_PAYLOAD && e.message().contains("appendMessages")) =>
            {
                tracing::debug!(error = %e, "the store does not take appendMessages; appending one by one");
            }
            other => {
                return other.and_then(|v| decode::<Appended>("store", v)).map(|a| a.seqs.last().copied())
            }
        }
        if let StoreRequest::AppendMessages { messages: back, .. } = request {
            messages = back;
        }
    }
    let mut last = None;
    for m in messages {
        let append = StoreRequest::Append {
            conversation_id: conversation_id.to_owned(),
            role: m.role,
            turn_id: Some(turn_id.to_owned()),
            chunks: m.chunks,
        };
        let appended: Appended = decode("store", host.call(&STORE, &append).await?)?;
        last = appended.seqs.last().copied().or(last);
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::{Arc, Mutex};

    use dispatch_contracts::store::{Appended, StoreRequest, STORE};
    use dispatch_kernel::wire::{ChatMessage, Chunk, Role};
    use dispatch_testkit::TestHost;
    use serde_json::Value;

    use super::save_step;

    /// How the test store answers `appendMessages`.
    #[derive(Clone, Copy)]
    enum Takes {
        /// It appends them.
        Steps,
        /// An older store: it cannot decode the op.
        Unknown,
        /// It refuses the content (a chunk over its limit).
        Refuses,
    }

    /// A store that records the appends it makes.
    fn store(t: &TestHost, takes: Takes) -> Arc<Mutex<Vec<String>>> {
        use dispatch_abi::{codes, Error};
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        t.host()
            .provide(&STORE, move |req: StoreRequest| {
                let answer = match (&req, takes) {
                    (StoreRequest::AppendMessages { messages, .. }, Takes::Steps) => {
                        log.lock().unwrap().push(format!("appendMessages x{}", messages.len()));
                        Ok(serde_json::to_value(Appended { seqs: vec![1] }).unwrap())
                    }
                    (StoreRequest::AppendMessages { .. }, Takes::Unknown) => Err(Error::new(
                        codes::INVALID_PAYLOAD,
                        "cannot decode request for service `store`: unknown variant `appendMessages`",
                    )),
                    (StoreRequest::AppendMessages { .. }, Takes::Refuses) => {
                        Err(Error::new(codes::INVALID_PAYLOAD, "chunk #0 is 2000000 bytes, over the limit"))
                    }
                    (StoreRequest::Append { role, .. }, _) => {
                        log.lock().unwrap().push(format!("append {role:?}"));
                        Ok(serde_json::to_value(Appended { seqs: vec![1] }).unwrap())
                    }
                    _ => Ok(Value::Null),
                };
                std::future::ready(answer)
            })
            .unwrap();
        seen
    }

    fn step() -> Vec<ChatMessage> {
        vec![
            ChatMessage { role: Role::Assistant, chunks: vec![Chunk::text("calling")] },
            ChatMessage { role: Role::Tool, chunks: vec![Chunk::text("result")] },
        ]
    }

    #[test]
    fn a_step_is_saved_in_one_call() {
        let t = TestHost::new();
        let seen = store(&t, Takes::Steps);
        t.block_on(save_step(t.host(), "c", "t", step())).unwrap();
        assert_eq!(*seen.lock().unwrap(), ["appendMessages x2"]);
    }

    /// Retrying a refused step message by message would save the tool
    /// call without its result.
    #[test]
    fn a_step_the_store_refuses_is_not_saved_in_part() {
        let t = TestHost::new();
        let seen = store(&t, Takes::Refuses);
        let e = t.block_on(save_step(t.host(), "c", "t", step())).unwrap_err();
        assert!(e.message().contains("over the limit"), "{e}");
        assert!(seen.lock().unwrap().is_empty(), "{:?}", seen.lock().unwrap());
    }

    #[test]
    fn a_store_without_append_messages_gets_the_step_one_message_at_a_time() {
        let t = TestHost::new();
        let seen = store(&t, Takes::Unknown);
        t.block_on(save_step(t.host(), "c", "t", step())).unwrap();
        assert_eq!(*seen.lock().unwrap(), ["append Assistant", "append Tool"]);
    }
}

/// Now, epoch ms.
fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How long a turn's facts gather before they are sent: a turn of fast
/// steps sends one event per this, not one per step (each event wakes
/// every subscriber: BENCHMARKS.md, "Observability").
const TRACE_LINGER: Duration = Duration::from_millis(100);

/// Publishes a turn's telemetry on `session.trace`: the kernel's records
/// with wall-clock times, the model and each tool's plugin filled in,
/// gathered for up to [`TRACE_LINGER`] into one event (the turn's end is
/// sent at once). Facts only: what becomes of them is the subscribers'
/// business.
#[derive(Clone)]
struct Tracer {
    host: Host,
    runner: Runner,
    /// Epoch ms when the turn's clock read 0.
    base: u64,
    model: String,
    owners: Arc<HashMap<String, String>>,
    pending: Arc<Mutex<Vec<TraceEvent>>>,
    /// A send is scheduled.
    scheduled: Arc<AtomicBool>,
}

impl Tracer {
    /// Keep `event` for the next send, and make sure one comes.
    fn record(&self, event: TraceEvent) {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).push(event);
        if !self.scheduled.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            self.runner.spawn(async move {
                tokio::time::sleep(TRACE_LINGER).await;
                me.scheduled.store(false, Ordering::Release);
                me.flush();
            });
        }
    }

    /// Send what was recorded since the last send. Under the lock, so two
    /// sends cannot overtake each other.
    fn flush(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if !pending.is_empty() {
            let batch = TraceBatch { facts: std::mem::take(&mut *pending) };
            // Nobody listening is not worth a log line.
            let _ = self.host.publish(&TRACE, &batch);
        }
    }

    /// The kernel's observer.
    fn observer(&self) -> dispatch_kernel::turn::Observer {
        let me = self.clone();
        Arc::new(move |mut event: TraceEvent| {
            event.started_at = event.started_at.saturating_add(me.base);
            event.ended_at = event.ended_at.saturating_add(me.base);
            match &mut event.body {
                TraceBody::Request { model, .. } => model.clone_from(&me.model),
                TraceBody::Tool { tool_name, plugin, .. } => {
                    plugin.clone_from(&me.owners.get(tool_name).cloned())
                }
                _ => {}
            }
            me.record(event);
        })
    }

    /// The record of a turn that ended.
    fn turn_end(&self, conversation_id: &str, turn_id: &str, outcome: &TurnOutcome) -> TraceEvent {
        let metrics = &outcome.metrics;
        let tool_calls = outcome
            .messages
            .iter()
            .flat_map(|m| &m.chunks)
            .filter(|c| matches!(c, Chunk::ToolCall { .. }))
            .count();
        let reported = outcome.usage.is_reported();
        let ended_at = epoch_ms();
        TraceEvent {
            conversation_id: conversation_id.to_owned(),
            turn_id: turn_id.to_owned(),
            step_id: None,
            started_at: self.base,
            ended_at: metrics.duration_ms.map_or(ended_at, |d| self.base.saturating_add(d)),
            body: TraceBody::Turn {
                model: self.model.clone(),
                reason: outcome.reason.clone(),
                usage: reported.then_some(outcome.usage),
                cache_hit_rate: outcome.usage.cache_hit_rate(),
                steps: u32::try_from(metrics.steps.len()).unwrap_or(u32::MAX),
                tool_calls: u32::try_from(tool_calls).unwrap_or(u32::MAX),
                gen_ms: metrics.steps.iter().filter_map(|s| s.gen_total_ms).sum(),
                context_size: metrics.context_size,
            },
        }
    }
}
