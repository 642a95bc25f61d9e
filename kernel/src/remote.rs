//! Model providers and the model catalog on the bus.
//!
//! A provider plugin serves one service (e.g. `provider.openai`, schema
//! version [`PROVIDER_VERSION`]) whose requests are tagged by `op`
//! ([`ProviderRequest`]). A model step is streamed *pull-based*: `open`
//! starts it and answers a stream id, each `next` answers the events
//! buffered since the previous `next` (waiting until there is at least one,
//! or the end), and `cancel` stops it. Plugins register their credentials
//! with the catalog (the `models` service, [`CatalogRequest`]), which
//! resolves `<credential>/<model>` to the provider service.
//!
//! [`RemoteProvider`] is the other end: a kernel [`Provider`] that speaks
//! this protocol through any [`ServiceCaller`] (the host's bus, or a
//! plugin's `Host`), so the turn loop never knows a provider is in another
//! library.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bus::{BoxFuture, Spawner};
use crate::provider::{Provider, ProviderError, ProviderEvent, ProviderOptions, StepRequest, ToolSpec};
use crate::wire::{ChatMessage, FinishReason, ReasoningEffort, Usage};

/// Bus name and schema version of the model catalog.
pub const CATALOG_SERVICE: (&str, u32) = ("models", 1);
/// Schema version of every provider service.
pub const PROVIDER_VERSION: u32 = 1;

/// A model as the catalog lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelEntry {
    /// `<credential>/<model>`.
    pub name: String,
    /// The model's context window in tokens, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u64>,
}

/// Requests to the `models` catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum CatalogRequest {
    /// A provider announces the credentials it serves (replaces an earlier
    /// registration of the same provider).
    Register {
        /// The provider's id (its plugin id).
        provider: String,
        /// Its bus service (speaks [`ProviderRequest`]).
        service: String,
        /// The credential names it serves.
        credentials: Vec<String>,
    },
    /// Every model of every provider (the `GET /models` body).
    List,
    /// Which provider serves `model` (`<credential>/<model>`; absent = the
    /// default model).
    Resolve {
        /// The model, or none for the default.
        #[serde(default)]
        model: Option<String>,
    },
}

/// The catalog's `list` answer — exactly the `GET /models` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelList {
    /// `<credential>/<model>` names.
    pub models: Vec<String>,
    /// Per-model metadata, for models that have any.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub model_info: std::collections::BTreeMap<String, ModelInfo>,
}

/// Metadata of one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    /// Context window in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u64>,
}

/// The catalog's `resolve` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    /// The full name, `<credential>/<model>`.
    pub model: String,
    /// The provider plugin.
    pub provider: String,
    /// Its bus service.
    pub service: String,
}

/// Requests to a provider service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum ProviderRequest {
    /// The models this provider serves (may ask the server).
    Models,
    /// Start one model step; answers [`Opened`].
    Open {
        /// `<credential>/<model>`.
        model: String,
        /// The history.
        messages: Vec<ChatMessage>,
        /// The tools on offer.
        #[serde(default)]
        tools: Vec<ToolSpecWire>,
        /// The system prompt.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        system_prompt: Option<String>,
        /// Reasoning effort.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reasoning_effort: Option<ReasoningEffort>,
    },
    /// The events since the last `next`; waits for at least one.
    Next {
        /// From `open`.
        stream_id: u64,
    },
    /// Stop a stream and free it.
    Cancel {
        /// From `open`.
        stream_id: u64,
    },
}

/// A provider's `models` answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderModels {
    /// Its models.
    pub models: Vec<ModelEntry>,
}

/// A provider's `open` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Opened {
    /// Names the stream in `next` and `cancel`.
    pub stream_id: u64,
}

/// A provider's `next` answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Batch {
    /// Events, in order.
    pub events: Vec<WireEvent>,
    /// The stream failed after `events` (the stream is over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
    /// The stream ended after `events`.
    #[serde(default)]
    pub done: bool,
}

/// A tool as the provider sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolSpecWire {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// JSON Schema.
    pub input_schema: Value,
}

/// [`ProviderEvent`] as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", rename_all_fields = "camelCase")]
pub enum WireEvent {
    /// Text.
    TextDelta {
        /// The text.
        delta: String,
    },
    /// Reasoning.
    ReasoningDelta {
        /// The text.
        delta: String,
    },
    /// A complete tool call.
    ToolCall {
        /// Id.
        id: String,
        /// Tool.
        name: String,
        /// Input (a JSON string when the model's arguments did not parse).
        input: Value,
    },
    /// Usage.
    Usage {
        /// Counters.
        usage: Usage,
    },
    /// End of step.
    Finish {
        /// Why.
        reason: FinishReason,
    },
}

/// [`ProviderError`] as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireError {
    /// The server's message.
    pub message: String,
    /// HTTP status or provider code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Worth retrying.
    pub retryable: bool,
    /// The server's `Retry-After`, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl From<WireEvent> for ProviderEvent {
    fn from(e: WireEvent) -> Self {
        match e {
            WireEvent::TextDelta { delta } => ProviderEvent::TextDelta(delta),
            WireEvent::ReasoningDelta { delta } => ProviderEvent::ReasoningDelta(delta),
            WireEvent::ToolCall { id, name, input } => ProviderEvent::ToolCall { id, name, input },
            WireEvent::Usage { usage } => ProviderEvent::Usage(usage),
            WireEvent::Finish { reason } => ProviderEvent::Finish(reason),
        }
    }
}

impl From<ProviderEvent> for WireEvent {
    fn from(e: ProviderEvent) -> Self {
        match e {
            ProviderEvent::TextDelta(delta) => WireEvent::TextDelta { delta },
            ProviderEvent::ReasoningDelta(delta) => WireEvent::ReasoningDelta { delta },
            ProviderEvent::ToolCall { id, name, input } => WireEvent::ToolCall { id, name, input },
            ProviderEvent::Usage(usage) => WireEvent::Usage { usage },
            ProviderEvent::Finish(reason) => WireEvent::Finish { reason },
        }
    }
}

impl From<WireError> for ProviderError {
    fn from(e: WireError) -> Self {
        ProviderError {
            message: e.message,
            code: e.code,
            retryable: e.retryable,
            retry_after: e.retry_after_ms.map(Duration::from_millis),
        }
    }
}

impl From<ProviderError> for WireError {
    fn from(e: ProviderError) -> Self {
        WireError {
            message: e.message,
            code: e.code,
            retryable: e.retryable,
            retry_after_ms: e.retry_after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

impl From<&ToolSpec> for ToolSpecWire {
    fn from(t: &ToolSpec) -> Self {
        ToolSpecWire {
            name: t.name.clone(),
            description: t.description.clone(),
            input_schema: t.input_schema.clone(),
        }
    }
}

/// Calls a bus service: the one thing [`RemoteProvider`] needs from its
/// environment. Errors are `(code, message)`.
pub trait ServiceCaller: Send + Sync + 'static {
    /// Call `name` at `version` with a JSON request.
    fn call(
        &self,
        name: &str,
        version: u32,
        request: Vec<u8>,
    ) -> BoxFuture<Result<Vec<u8>, (String, String)>>;
}

/// A [`Provider`] whose steps are served by a provider service on the bus.
pub struct RemoteProvider<C> {
    caller: Arc<C>,
    service: String,
    model: String,
    spawn: Option<Spawner>,
}

impl<C: ServiceCaller> RemoteProvider<C> {
    /// Talk to `service` about `model`. With a spawner, a stream dropped
    /// early (an abort) is cancelled at once; without one the provider's
    /// idle timeout frees it.
    pub fn new(caller: Arc<C>, resolved: &Resolved, spawn: Option<Spawner>) -> Self {
        RemoteProvider { caller, service: resolved.service.clone(), model: resolved.model.clone(), spawn }
    }
}

fn bus_failure((code, message): (String, String)) -> ProviderError {
    // The provider plugin went away or answered garbage: not the model's
    // fault, and retrying the same plugin will not help.
    ProviderError::fatal(format!("provider service failed: {message}"), Some(code))
}

async fn call_json<C: ServiceCaller, T: serde::de::DeserializeOwned>(
    caller: &C,
    service: &str,
    req: &ProviderRequest,
) -> Result<T, ProviderError> {
    let body = serde_json::to_vec(req).map_err(|e| ProviderError::fatal(e.to_string(), None))?;
    let bytes = caller.call(service, PROVIDER_VERSION, body).await.map_err(bus_failure)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ProviderError::fatal(format!("provider `{service}` answered invalid JSON: {e}"), None))
}

struct Pull<C: ServiceCaller> {
    caller: Arc<C>,
    service: String,
    open: Option<ProviderRequest>,
    stream_id: Option<u64>,
    pending: VecDeque<WireEvent>,
    /// An error to yield once `pending` is drained.
    error: Option<WireError>,
    finished: bool,
    spawn: Option<Spawner>,
}

impl<C: ServiceCaller> Drop for Pull<C> {
    fn drop(&mut self) {
        if let (Some(id), false, Some(spawn)) = (self.stream_id, self.finished, self.spawn.as_ref()) {
            let caller = Arc::clone(&self.caller);
            let service = self.service.clone();
            spawn(Box::pin(async move {
                let req = ProviderRequest::Cancel { stream_id: id };
                let _ = call_json::<C, Value>(&caller, &service, &req).await;
            }));
        }
    }
}

impl<C: ServiceCaller> Pull<C> {
    async fn next_item(&mut self) -> Option<Result<ProviderEvent, ProviderError>> {
        if let Some(open) = self.open.take() {
            match call_json::<C, Opened>(&self.caller, &self.service, &open).await {
                Ok(o) => self.stream_id = Some(o.stream_id),
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
            }
        }
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(Ok(e.into()));
            }
            if let Some(err) = self.error.take() {
                return Some(Err(err.into()));
            }
            if self.finished {
                return None;
            }
            let id = self.stream_id?;
            match call_json::<C, Batch>(&self.caller, &self.service, &ProviderRequest::Next { stream_id: id })
                .await
            {
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
                Ok(batch) => {
                    self.pending.extend(batch.events);
                    self.error = batch.error;
                    self.finished = batch.done || self.error.is_some();
                }
            }
        }
    }
}

impl<C: ServiceCaller> Provider for RemoteProvider<C> {
    fn stream<'a>(&'a self, request: StepRequest<'a>) -> BoxStream<'a, Result<ProviderEvent, ProviderError>> {
        let state = Pull {
            caller: Arc::clone(&self.caller),
            service: self.service.clone(),
            open: Some(open_request(&self.model, request.messages, request.tools, request.options)),
            stream_id: None,
            pending: VecDeque::new(),
            error: None,
            finished: false,
            spawn: self.spawn.clone(),
        };
        Box::pin(futures::stream::unfold(state, |mut st| async move {
            let item = st.next_item().await?;
            Some((item, st))
        }))
    }
}

/// The `open` request for one step.
pub fn open_request(
    model: &str,
    messages: &[ChatMessage],
    tools: &[ToolSpec],
    options: &ProviderOptions,
) -> ProviderRequest {
    ProviderRequest::Open {
        model: model.to_owned(),
        messages: messages.to_vec(),
        tools: tools.iter().map(ToolSpecWire::from).collect(),
        system_prompt: options.system_prompt.clone(),
        reasoning_effort: options.reasoning_effort,
    }
}

/// Wait for the next item of `rx`, then take every item already queued
/// behind it without waiting — up to and including the first one `ends`
/// says closes the batch. Answers the items in order and whether the
/// channel is closed (its sender gone) with nothing more to come. The
/// heart of both pull protocols: one `next` call answers all that is
/// ready, so a fast producer costs one round trip per batch, not per item.
pub(crate) async fn next_ready<T>(
    rx: &mut futures::channel::mpsc::UnboundedReceiver<T>,
    ends: impl Fn(&T) -> bool,
) -> (Vec<T>, bool) {
    use futures::StreamExt as _;
    let mut items = Vec::new();
    let mut item = rx.next().await;
    loop {
        let Some(it) = item else { return (items, true) };
        let last = ends(&it);
        items.push(it);
        if last {
            return (items, false);
        }
        match rx.try_recv() {
            Ok(next) => item = Some(next),
            Err(futures::channel::mpsc::TryRecvError::Closed) => item = None,
            Err(_) => return (items, false),
        }
    }
}

/// Where a provider's producer pushes one step's events.
pub type EventSender = futures::channel::mpsc::UnboundedSender<Result<ProviderEvent, ProviderError>>;

type Receiver = futures::channel::mpsc::UnboundedReceiver<Result<ProviderEvent, ProviderError>>;

struct Entry {
    rx: Option<Receiver>,
    abort: futures::future::AbortHandle,
}

/// The provider side of the pull protocol: open streams by id. Runtime-
/// agnostic — `open` hands back the producer future for the plugin to spawn
/// on its own runtime.
#[derive(Default)]
pub struct StreamTable {
    next_id: std::sync::atomic::AtomicU64,
    streams: std::sync::Mutex<std::collections::HashMap<u64, Entry>>,
}

impl StreamTable {
    /// Register a new stream whose events `produce` pushes into the given
    /// sender (dropping the sender ends the stream). Answers the id and the
    /// future to spawn; cancelling the stream aborts that future.
    pub fn open<F, Fut>(&self, produce: F) -> (u64, BoxFuture<()>)
    where
        F: FnOnce(EventSender) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let (abort, registration) = futures::future::AbortHandle::new_pair();
        let fut = futures::future::Abortable::new(produce(tx), registration);
        self.lock().insert(id, Entry { rx: Some(rx), abort });
        (
            id,
            Box::pin(async move {
                let _ = fut.await;
            }),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Entry>> {
        self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wait for the next events of stream `id` and answer them all as one
    /// batch. Unknown ids (cancelled, finished, never opened) are an error.
    pub async fn next(&self, id: u64) -> Result<Batch, String> {
        let mut rx = {
            let mut streams = self.lock();
            let entry = streams.get_mut(&id).ok_or_else(|| format!("no open stream {id}"))?;
            entry.rx.take().ok_or_else(|| format!("stream {id} is already being read"))?
        };
        let (items, closed) = next_ready(&mut rx, Result::is_err).await;
        let mut batch = Batch { done: closed, ..Batch::default() };
        for item in items {
            match item {
                Ok(e) => batch.events.push(e.into()),
                Err(e) => {
                    batch.error = Some(e.into());
                    batch.done = true;
                }
            }
        }
        let mut streams = self.lock();
        if batch.done {
            streams.remove(&id);
        } else if let Some(entry) = streams.get_mut(&id) {
            entry.rx = Some(rx);
        }
        Ok(batch)
    }

    /// Answer the ops every provider answers the same way — `next` and
    /// `cancel` — or `None` for the others (`models`, `open`).
    pub async fn answer(&self, req: &ProviderRequest) -> Option<Result<Value, String>> {
        match req {
            ProviderRequest::Next { stream_id } => Some(
                self.next(*stream_id).await.and_then(|b| serde_json::to_value(b).map_err(|e| e.to_string())),
            ),
            ProviderRequest::Cancel { stream_id } => {
                self.cancel(*stream_id);
                Some(Ok(Value::Object(serde_json::Map::new())))
            }
            _ => None,
        }
    }

    /// Stop stream `id` (its producer is aborted). Unknown ids are ignored.
    pub fn cancel(&self, id: u64) {
        if let Some(entry) = self.lock().remove(&id) {
            entry.abort.abort();
        }
    }

    /// Streams currently open.
    pub fn open_streams(&self) -> usize {
        self.lock().len()
    }

    /// Stop every stream (deactivation).
    pub fn cancel_all(&self) {
        for (_, entry) in self.lock().drain() {
            entry.abort.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ProviderEvent;
    use std::sync::Mutex;

    /// A caller that routes to an in-process provider service.
    struct Local {
        table: Arc<StreamTable>,
        script: Mutex<Vec<Result<ProviderEvent, ProviderError>>>,
    }

    impl ServiceCaller for Local {
        fn call(
            &self,
            _name: &str,
            _version: u32,
            request: Vec<u8>,
        ) -> BoxFuture<Result<Vec<u8>, (String, String)>> {
            let req: ProviderRequest = serde_json::from_slice(&request).unwrap();
            let table = Arc::clone(&self.table);
            let items = std::mem::take(&mut *self.script.lock().unwrap());
            Box::pin(async move {
                let out: Value = match req {
                    ProviderRequest::Open { .. } => {
                        let (id, fut) = table.open(move |tx| async move {
                            for i in items {
                                let _ = tx.unbounded_send(i);
                            }
                        });
                        fut.await;
                        serde_json::to_value(Opened { stream_id: id }).unwrap()
                    }
                    ProviderRequest::Next { stream_id } => {
                        serde_json::to_value(table.next(stream_id).await.unwrap()).unwrap()
                    }
                    ProviderRequest::Cancel { stream_id } => {
                        table.cancel(stream_id);
                        Value::Null
                    }
                    ProviderRequest::Models => Value::Null,
                };
                Ok(serde_json::to_vec(&out).unwrap())
            })
        }
    }

    fn collect(
        script: Vec<Result<ProviderEvent, ProviderError>>,
    ) -> (Vec<Result<ProviderEvent, ProviderError>>, usize) {
        use futures::StreamExt as _;
        let caller = Arc::new(Local { table: Arc::default(), script: Mutex::new(script) });
        let resolved = Resolved { model: "x/y".into(), provider: "p".into(), service: "provider.p".into() };
        let provider = RemoteProvider::new(Arc::clone(&caller), &resolved, None);
        let options = ProviderOptions::default();
        let req = StepRequest { messages: &[], tools: &[], options: &options };
        let items = futures::executor::block_on(provider.stream(req).collect::<Vec<_>>());
        (items, caller.table.open_streams())
    }

    #[test]
    fn events_cross_the_pull_protocol_in_order_and_the_stream_is_freed() {
        let script = vec![
            Ok(ProviderEvent::TextDelta("a".into())),
            Ok(ProviderEvent::Usage(Usage { input_tokens: 1, output_tokens: 2, ..Usage::default() })),
            Ok(ProviderEvent::Finish(FinishReason::Stop)),
        ];
        let (items, open) = collect(script.clone());
        assert_eq!(items, script);
        assert_eq!(open, 0);
    }

    #[test]
    fn an_error_arrives_after_the_events_before_it() {
        let err = ProviderError {
            message: "boom".into(),
            code: Some("500".into()),
            retryable: true,
            retry_after: Some(Duration::from_millis(1500)),
        };
        let script = vec![
            Ok(ProviderEvent::TextDelta("a".into())),
            Err(err.clone()),
            Ok(ProviderEvent::TextDelta("never".into())),
        ];
        let (items, open) = collect(script);
        assert_eq!(items, vec![Ok(ProviderEvent::TextDelta("a".into())), Err(err)]);
        assert_eq!(open, 0);
    }

    #[test]
    fn cancel_aborts_the_producer_and_forgets_the_stream() {
        let table = StreamTable::default();
        let (id, fut) = table.open(|_tx| futures::future::pending::<()>());
        table.cancel(id);
        futures::executor::block_on(fut); // returns because it was aborted
        assert!(futures::executor::block_on(table.next(id)).is_err());
        assert_eq!(table.open_streams(), 0);
    }
}
