//! Model providers: implement [`ModelProvider`], serve it with [`serve`].
//!
//! The protocol — `models` / `open` / `next` / `cancel`, the event and
//! error shapes — is documented in [`dispatch_protocol::provider`],
//! re-exported here. [`serve`] answers it: it keeps the open streams, runs
//! each step's producer on the plugin's runtime, stops it when the caller
//! cancels, turns a producer that ends without a `finish` event or an error
//! into an error, and registers the provider's credentials with the model
//! catalog. A provider plugin writes only what is its own: listing models
//! and streaming one step.

#[cfg(feature = "runtime")]
use dispatch_abi::runtime::PluginRuntime;
#[cfg(feature = "runtime")]
use dispatch_abi::{codes, to_json, Host};
use dispatch_abi::{Error, Service};
pub use dispatch_protocol::provider::*;
use dispatch_protocol::wire::{ChatMessage, ReasoningEffort};
pub use dispatch_protocol::BoxFuture;
use serde_json::Value;
use std::any::Any;
use std::fmt;
use std::time::Duration;
#[cfg(feature = "runtime")]
use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Instant,
};

#[cfg(feature = "runtime")]
use crate::{catalog, pull::PullTable};
#[cfg(feature = "runtime")]
use std::sync::Arc;

/// The key of the provider service `name` (e.g. `provider.openai`), at
/// [`VERSION`]. Answers differ by op (see [`ProviderRequest`]), hence
/// `Value`.
pub fn key(name: &str) -> Service<ProviderRequest, Value> {
    Service::named(name, VERSION)
}

/// Where a step's producer pushes its events: `Ok` events, then either a
/// [`ProviderEvent::Finish`] or one `Err`. Dropping it ends the stream.
pub type EventSender = crate::pull::Sender<Result<ProviderEvent, ProviderError>>;

/// One model step to stream: the fields of [`ProviderRequest::Open`], with
/// the whole history even when the caller sent only its new messages (see
/// the protocol's contexts).
#[derive(Debug)]
#[non_exhaustive]
pub struct StepSpec<'a> {
    /// `<credential>/<model>`.
    pub model: &'a str,
    /// The whole history.
    pub messages: &'a [ChatMessage],
    /// The tools on offer.
    pub tools: &'a [ToolSpec],
    /// The system prompt.
    pub system_prompt: Option<&'a str>,
    /// Reasoning effort.
    pub reasoning_effort: Option<ReasoningEffort>,
    /// Most tokens the answer may take (`None`: the model's own limit).
    pub max_output_tokens: Option<u32>,
    /// The provider's own scratch space for this context (one turn): what
    /// it derived from `messages` (their request encoding, say) kept for
    /// the next step, which then converts only the new messages. Within a
    /// memo's life `messages` only grows at the end and `tools` and
    /// `system_prompt` do not change. Empty for a step outside a context.
    pub memo: &'a mut Memo,
}

/// A provider's per-context scratch space (see [`StepSpec::memo`]).
#[derive(Default)]
pub struct Memo(Option<Box<dyn Any + Send>>);

impl Memo {
    /// The value of type `T` kept here, created with `T::default()` on
    /// first use (or if a value of another type was kept).
    pub fn get<T: Default + Send + 'static>(&mut self) -> &mut T {
        if !self.0.as_ref().is_some_and(|b| b.is::<T>()) {
            self.0 = Some(Box::new(T::default()));
        }
        match self.0.as_mut().and_then(|b| b.downcast_mut::<T>()) {
            Some(t) => t,
            // Just made sure the box holds a `T`.
            None => unreachable!("the memo holds a T"),
        }
    }
}

impl fmt::Debug for Memo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memo").field("kept", &self.0.is_some()).finish()
    }
}

/// What a provider plugin implements. Both methods' futures run on the
/// plugin's runtime, so they may use tokio freely.
pub trait ModelProvider: Send + Sync + 'static {
    /// The models it serves (`models`); may ask a server.
    fn models(&self) -> BoxFuture<Vec<ModelEntry>>;

    /// Check `step` and return the future that streams it into `events`.
    /// An `Err` here (an unknown credential, say) fails the `open` call; a
    /// failure of the model itself goes into `events` as an `Err`. The
    /// future is dropped when the caller cancels the step.
    fn open(&self, step: StepSpec<'_>, events: EventSender) -> Result<BoxFuture<()>, Error>;
}

#[cfg(feature = "runtime")]
/// What [`serve`] keeps of a context between steps.
#[derive(Debug)]
struct Kept {
    messages: Vec<ChatMessage>,
    tools: Vec<ToolSpec>,
    system_prompt: Option<String>,
    memo: Memo,
    used: Instant,
}

#[cfg(feature = "runtime")]
/// Contexts kept by [`serve`]. Bounded: at most [`MAX_CONTEXTS`], each
/// forgotten after [`CONTEXT_IDLE`] without a step (its caller died or
/// never released it); a forgotten context costs its caller one resend.
#[derive(Debug, Default)]
struct Contexts(Mutex<Table>);

#[cfg(feature = "runtime")]
#[derive(Debug)]
struct Table {
    map: HashMap<u64, Kept>,
    /// When idle contexts were last dropped: a sweep walks every context,
    /// so it runs at most once a minute (or when the table is full), not
    /// at every step.
    swept: Instant,
}

#[cfg(feature = "runtime")]
impl Default for Table {
    fn default() -> Self {
        Table { map: HashMap::new(), swept: Instant::now() }
    }
}

/// How many contexts a provider keeps at most.
pub const MAX_CONTEXTS: usize = 512;
/// How long an unused context is kept.
pub const CONTEXT_IDLE: Duration = Duration::from_secs(15 * 60);
#[cfg(feature = "runtime")]
const SWEEP_EVERY: Duration = Duration::from_secs(60);

#[cfg(feature = "runtime")]
impl Contexts {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The context `r` continues, with `messages` appended; or a fresh one
    /// for `base: 0`. Taken out of the table while the step is opened (a
    /// concurrent `open` of the same context is refused as lost).
    fn take(&self, r: ContextRef, open: OpenFields) -> Result<Kept, Error> {
        if r.base == 0 {
            return Ok(open.into_kept());
        }
        let mut kept = self.lock().map.remove(&r.id).ok_or_else(|| lost(r, None))?;
        if kept.messages.len() as u64 != r.base {
            return Err(lost(r, Some(kept.messages.len())));
        }
        kept.messages.extend(open.messages);
        Ok(kept)
    }

    fn put(&self, id: u64, mut kept: Kept) {
        let now = Instant::now();
        kept.used = now;
        let mut table = self.lock();
        if table.map.len() >= MAX_CONTEXTS || now.duration_since(table.swept) >= SWEEP_EVERY {
            table.map.retain(|_, k| now.duration_since(k.used) < CONTEXT_IDLE);
            table.swept = now;
        }
        if table.map.len() >= MAX_CONTEXTS {
            if let Some(oldest) = table.map.iter().min_by_key(|(_, k)| k.used).map(|(id, _)| *id) {
                table.map.remove(&oldest);
            }
        }
        table.map.insert(id, kept);
    }

    fn release(&self, id: u64) {
        self.lock().map.remove(&id);
    }
}

#[cfg(feature = "runtime")]
struct OpenFields {
    messages: Vec<ChatMessage>,
    tools: Vec<ToolSpec>,
    system_prompt: Option<String>,
}

#[cfg(feature = "runtime")]
impl OpenFields {
    /// A context (or a lone step) starting with these fields.
    fn into_kept(self) -> Kept {
        let OpenFields { messages, tools, system_prompt } = self;
        Kept { messages, tools, system_prompt, memo: Memo::default(), used: Instant::now() }
    }
}

#[cfg(feature = "runtime")]
fn lost(r: ContextRef, held: Option<usize>) -> Error {
    let why = match held {
        None => "it is not held (expired, evicted, or the provider restarted)".to_owned(),
        Some(n) => format!("it holds {n} messages"),
    };
    Error::new(
        CONTEXT_LOST,
        format!("context {} cannot continue after {} messages: {why}; send the whole history", r.id, r.base),
    )
}

/// How [`serve`] presents the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The plugin id (the catalog's `provider`).
    pub provider: String,
    /// The bus service to answer on (`provider.<name>`).
    pub service: String,
    /// Credentials to register with the catalog (`models`); none = do not
    /// register.
    pub credentials: Vec<String>,
}

#[cfg(feature = "runtime")]
/// A provider being served. Call [`ProviderServer::stop`] from
/// `deactivate`.
#[derive(Debug)]
pub struct ProviderServer {
    runtime: PluginRuntime,
    streams: Arc<PullTable<Result<ProviderEvent, ProviderError>>>,
}

#[cfg(feature = "runtime")]
fn ends_step(item: &Result<ProviderEvent, ProviderError>) -> bool {
    matches!(item, Err(_) | Ok(ProviderEvent::Finish(_)))
}

#[cfg(feature = "runtime")]
/// Serve `provider` as `registration.service`, running its steps on
/// `runtime`, and register its credentials with the catalog.
pub fn serve<P: ModelProvider>(
    host: &Host,
    registration: Registration,
    provider: Arc<P>,
    runtime: PluginRuntime,
) -> Result<ProviderServer, Error> {
    let streams: Arc<PullTable<Result<ProviderEvent, ProviderError>>> = Arc::default();
    let contexts: Arc<Contexts> = Arc::default();
    let runner = runtime.runner();
    let table = Arc::clone(&streams);
    let service = registration.service.clone();
    host.provide(&key(&service), move |req: ProviderRequest| {
        let (table, provider, runner) = (Arc::clone(&table), Arc::clone(&provider), runner.clone());
        let contexts = Arc::clone(&contexts);
        async move {
            match req {
                ProviderRequest::Models => {
                    let models = runner.run(async move { Ok(provider.models().await) }).await?;
                    to_json(&ProviderModels { models })
                }
                ProviderRequest::Open {
                    model,
                    messages,
                    tools,
                    system_prompt,
                    reasoning_effort,
                    max_output_tokens,
                    context,
                } => {
                    let fields = OpenFields { messages, tools, system_prompt };
                    let mut kept = match context {
                        Some(r) => contexts.take(r, fields)?,
                        None => fields.into_kept(),
                    };
                    let step = StepSpec {
                        model: &model,
                        messages: &kept.messages,
                        tools: &kept.tools,
                        system_prompt: kept.system_prompt.as_deref(),
                        reasoning_effort,
                        max_output_tokens,
                        memo: &mut kept.memo,
                    };
                    let (stream_id, tx, abort) = table.open();
                    let produce = match provider.open(step, tx) {
                        Ok(fut) => fut,
                        Err(e) => {
                            // The context is dropped with `kept`: the
                            // caller's next open starts it again.
                            table.cancel(stream_id);
                            return Err(e);
                        }
                    };
                    if let Some(r) = context {
                        contexts.put(r.id, kept);
                    }
                    runner.spawn(async move {
                        // Cancelling the stream drops the producer.
                        futures::future::select(produce, abort.aborted()).await;
                    });
                    to_json(&Opened { stream_id })
                }
                ProviderRequest::Next { stream_id } => {
                    let pulled = table.next(stream_id, ends_step).await?;
                    let mut batch = Batch { done: pulled.ended, ..Batch::default() };
                    let mut finished = false;
                    for item in pulled.items {
                        match item {
                            Ok(e) => {
                                finished |= matches!(e, ProviderEvent::Finish(_));
                                batch.events.push(e);
                            }
                            Err(e) => batch.error = Some(e),
                        }
                    }
                    if pulled.closed && !finished && batch.error.is_none() {
                        // A producer that stops talking has failed; it has
                        // not answered.
                        batch.error = Some(ProviderError::fatal(
                            "the provider ended the step without finishing it (no finish event, no error)",
                            None,
                        ));
                    }
                    to_json(&batch)
                }
                ProviderRequest::Cancel { stream_id } => {
                    table.cancel(stream_id);
                    to_json(&serde_json::Map::new())
                }
                ProviderRequest::Release { context } => {
                    contexts.release(context);
                    to_json(&serde_json::Map::new())
                }
                other => {
                    Err(Error::new(codes::UNSUPPORTED, format!("unsupported provider request: {other:?}")))
                }
            }
        }
    })?;
    if !registration.credentials.is_empty() {
        catalog::register(host, &registration.provider, &service, registration.credentials)?;
    }
    Ok(ProviderServer { runtime, streams })
}

#[cfg(feature = "runtime")]
impl ProviderServer {
    /// Steps being streamed now.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Stop every step in progress and the runtime.
    pub fn stop(&mut self) {
        self.streams.cancel_all();
        self.runtime.shutdown(Duration::from_secs(2));
    }
}
