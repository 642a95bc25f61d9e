//! The turn's side of the provider protocol
//! ([`dispatch_protocol::provider`]).
//!
//! [`RemoteProvider`] is the caller's end: a kernel [`Provider`] that speaks
//! this protocol through any [`ServiceCaller`] (the host's bus, or a
//! plugin's `Host`), so the turn loop never knows a provider is in another
//! library.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::stream::BoxStream;
use serde_json::Value;

pub use dispatch_protocol::catalog::Resolved;
use dispatch_protocol::provider::{
    Batch, ContextRef, Opened, ProviderRequest, CONTEXT_LOST, VERSION as PROVIDER_VERSION,
};
use dispatch_protocol::{BoxFuture, CallError, Spawner};

use crate::provider::{Provider, ProviderError, ProviderEvent, ProviderOptions, StepRequest, ToolSpec};
use crate::wire::ChatMessage;

/// Calls a bus service: the one thing [`RemoteProvider`] and
/// [`crate::toolbus::RemoteTool`] need from their environment.
pub trait ServiceCaller: Send + Sync + 'static {
    /// Call `name` at `version` with a JSON request.
    fn call(&self, name: &str, version: u32, request: Vec<u8>) -> BoxFuture<Result<Vec<u8>, CallError>>;
}

/// A [`Provider`] whose steps are served by a provider service on the bus.
///
/// One instance serves one turn: its steps share a provider-side context
/// (see [`dispatch_protocol::provider`]), so each step sends only the
/// messages added since the previous one. Dropping it releases the
/// context.
pub struct RemoteProvider<C: ServiceCaller> {
    caller: Arc<C>,
    service: String,
    model: String,
    spawn: Option<Spawner>,
    sent: Mutex<Sent>,
}

/// What the provider holds of this instance's context.
#[derive(Default)]
struct Sent {
    id: u64,
    /// History messages the provider holds under `id` (0: none).
    count: usize,
    /// The last of them: a cheap check that the next step's history
    /// extends them.
    last: Option<ChatMessage>,
    /// Once the context holds an image: every message it holds. A viewer
    /// (the `vision` plugin) rewrites an older image as its description
    /// when a conversation passes its image limit, changing a message
    /// before the last; only such a history pays for the full check.
    held: Option<Vec<ChatMessage>>,
    /// The context's tools and system prompt (fixed for its life).
    tools: Vec<ToolSpec>,
    system_prompt: Option<String>,
    /// The provider refused contexts (a build that predates them): every
    /// step sends the whole history.
    unsupported: bool,
}

fn has_image(m: &ChatMessage) -> bool {
    m.chunks.iter().any(|c| matches!(c, crate::wire::Chunk::Image { .. }))
}

/// A context id nobody else picks: every library carrying this code has
/// its own counter, so the counter is mixed with a per-process random key.
fn fresh_context_id() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

impl<C: ServiceCaller> RemoteProvider<C> {
    /// Talk to `service` about `model`. With a spawner, a stream dropped
    /// early (an abort) is cancelled at once, and the context is released
    /// when the provider is dropped; without one the provider's idle
    /// timeouts free them.
    pub fn new(caller: Arc<C>, resolved: &Resolved, spawn: Option<Spawner>) -> Self {
        RemoteProvider {
            caller,
            service: resolved.service.clone(),
            model: resolved.model.clone(),
            spawn,
            sent: Mutex::new(Sent { id: fresh_context_id(), ..Sent::default() }),
        }
    }

    fn sent(&self) -> MutexGuard<'_, Sent> {
        self.sent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The `open` for `request`: the new messages of the context when the
    /// provider holds the ones before them, else the whole history.
    fn plan(&self, request: &StepRequest<'_>) -> ProviderRequest {
        let sent = self.sent();
        if sent.unsupported {
            return open_request(&self.model, request.messages, request.tools, request.options);
        }
        let continues = sent.count > 0
            && sent.count <= request.messages.len()
            && sent.last.as_ref() == request.messages.get(sent.count - 1)
            && sent
                .held
                .as_ref()
                .is_none_or(|held| request.messages.get(..held.len()) == Some(held.as_slice()))
            && sent.tools.as_slice() == request.tools
            && sent.system_prompt == request.options.system_prompt;
        let (base, messages, tools, system_prompt) = if continues {
            (sent.count, request.messages[sent.count..].to_vec(), Vec::new(), None)
        } else {
            (0, request.messages.to_vec(), request.tools.to_vec(), request.options.system_prompt.clone())
        };
        ProviderRequest::Open {
            model: self.model.clone(),
            messages,
            tools,
            system_prompt,
            reasoning_effort: request.options.reasoning_effort,
            max_output_tokens: request.options.max_output_tokens,
            context: Some(ContextRef { id: sent.id, base: base as u64 }),
        }
    }

    /// The provider now holds `request`'s whole history.
    fn opened(&self, request: &StepRequest<'_>, restarted: bool) {
        let mut sent = self.sent();
        if sent.unsupported {
            return;
        }
        let before = if restarted { 0 } else { sent.count };
        sent.count = request.messages.len();
        sent.last = request.messages.last().cloned();
        let added = &request.messages[before.min(request.messages.len())..];
        match sent.held.as_mut() {
            Some(held) if !restarted => held.extend_from_slice(added),
            _ if added.iter().any(has_image) => sent.held = Some(request.messages.to_vec()),
            _ if restarted => sent.held = None,
            _ => {}
        }
        if restarted {
            sent.tools = request.tools.to_vec();
            sent.system_prompt = request.options.system_prompt.clone();
        }
    }

    /// An `open` failed: the provider holds nothing of the context.
    fn forget(&self) {
        let mut sent = self.sent();
        sent.count = 0;
        sent.last = None;
        sent.held = None;
    }

    /// Open a step: the planned request, then the whole history again if
    /// the provider lost the context, or without a context at all if it
    /// does not know them.
    async fn open(&self, request: &StepRequest<'_>) -> Result<u64, ProviderError> {
        let mut open = self.plan(request);
        loop {
            let (restarted, with_context) = match &open {
                ProviderRequest::Open { context, .. } => {
                    (context.is_none_or(|c| c.base == 0), context.is_some())
                }
                _ => (true, false),
            };
            match call::<C, Opened>(&self.caller, &self.service, &open).await {
                Ok(o) => {
                    self.opened(request, restarted);
                    return Ok(o.stream_id);
                }
                Err(Failure::Call(e)) if e.code == CONTEXT_LOST && !restarted => {
                    self.forget();
                    open = self.plan(request);
                }
                Err(Failure::Call(e)) if e.code == "invalid_payload" && with_context => {
                    // A provider built before contexts refuses the field.
                    self.sent().unsupported = true;
                    open = open_request(&self.model, request.messages, request.tools, request.options);
                }
                Err(e) => {
                    self.forget();
                    return Err(e.into_provider_error(&self.service));
                }
            }
        }
    }
}

impl<C: ServiceCaller> RemoteProvider<C> {
    /// Send `req` in the background, answer ignored (a cleanup: `cancel`,
    /// `release`); without a spawner the provider's timeouts clean up.
    fn send_later(&self, req: ProviderRequest) {
        if let Some(spawn) = self.spawn.as_ref() {
            let caller = Arc::clone(&self.caller);
            let service = self.service.clone();
            spawn(Box::pin(async move {
                let _ = call::<C, Value>(&caller, &service, &req).await;
            }));
        }
    }
}

impl<C: ServiceCaller> Drop for RemoteProvider<C> {
    fn drop(&mut self) {
        let (unsupported, count, id) = {
            let sent = self.sent();
            (sent.unsupported, sent.count, sent.id)
        };
        if !unsupported && count > 0 {
            self.send_later(ProviderRequest::Release { context: id });
        }
    }
}

/// Why a provider call failed.
enum Failure {
    /// The bus or the provider refused it.
    Call(CallError),
    /// It answered something else than the protocol says.
    Garbage(String),
}

impl Failure {
    fn into_provider_error(self, service: &str) -> ProviderError {
        match self {
            // The provider plugin went away or refused the request: not the
            // model's fault, and retrying the same plugin will not help.
            Failure::Call(e) => {
                ProviderError::fatal(format!("provider service failed: {}", e.message), Some(e.code))
            }
            Failure::Garbage(e) => {
                ProviderError::fatal(format!("provider `{service}` answered invalid JSON: {e}"), None)
            }
        }
    }
}

async fn call<C: ServiceCaller, T: serde::de::DeserializeOwned>(
    caller: &C,
    service: &str,
    req: &ProviderRequest,
) -> Result<T, Failure> {
    let body = serde_json::to_vec(req).map_err(|e| Failure::Garbage(e.to_string()))?;
    let bytes = caller.call(service, PROVIDER_VERSION, body).await.map_err(Failure::Call)?;
    serde_json::from_slice(&bytes).map_err(|e| Failure::Garbage(e.to_string()))
}

async fn call_json<C: ServiceCaller, T: serde::de::DeserializeOwned>(
    caller: &C,
    service: &str,
    req: &ProviderRequest,
) -> Result<T, ProviderError> {
    call(caller, service, req).await.map_err(|e| e.into_provider_error(service))
}

struct Pull<'a, C: ServiceCaller> {
    provider: &'a RemoteProvider<C>,
    /// The step, until it is opened.
    request: Option<StepRequest<'a>>,
    stream_id: Option<u64>,
    pending: VecDeque<ProviderEvent>,
    /// An error to yield once `pending` is drained.
    error: Option<ProviderError>,
    finished: bool,
    /// A `finish` event arrived: the step really ended.
    saw_finish: bool,
}

impl<C: ServiceCaller> Drop for Pull<'_, C> {
    fn drop(&mut self) {
        if let (Some(id), false) = (self.stream_id, self.finished) {
            self.provider.send_later(ProviderRequest::Cancel { stream_id: id });
        }
    }
}

impl<C: ServiceCaller> Pull<'_, C> {
    async fn next_item(&mut self) -> Option<Result<ProviderEvent, ProviderError>> {
        if let Some(request) = self.request.take() {
            match self.provider.open(&request).await {
                Ok(id) => self.stream_id = Some(id),
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
            }
        }
        let service = &self.provider.service;
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(Ok(e));
            }
            if let Some(err) = self.error.take() {
                return Some(Err(err));
            }
            if self.finished {
                return None;
            }
            let id = self.stream_id?;
            let next = ProviderRequest::Next { stream_id: id };
            match call_json::<C, Batch>(&self.provider.caller, service, &next).await {
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
                Ok(batch) => {
                    self.saw_finish |= batch.events.iter().any(|e| matches!(e, ProviderEvent::Finish(_)));
                    self.pending.extend(batch.events);
                    self.error = batch.error;
                    self.finished = batch.done || self.error.is_some();
                    if self.finished && self.error.is_none() && !self.saw_finish {
                        // Whatever the provider (third-party ones too): a
                        // step that stops without saying how it ended has
                        // failed, it has not answered.
                        self.error = Some(ProviderError::fatal(
                            format!(
                                "provider `{service}` ended the step without finishing it (no finish event, no error)"
                            ),
                            None,
                        ));
                    }
                }
            }
        }
    }
}

impl<C: ServiceCaller> Provider for RemoteProvider<C> {
    fn stream<'a>(&'a self, request: StepRequest<'a>) -> BoxStream<'a, Result<ProviderEvent, ProviderError>> {
        let state = Pull {
            provider: self,
            request: Some(request),
            stream_id: None,
            pending: VecDeque::new(),
            error: None,
            finished: false,
            saw_finish: false,
        };
        Box::pin(futures::stream::unfold(state, |mut st| async move {
            let item = st.next_item().await?;
            Some((item, st))
        }))
    }
}

/// The `open` request for one step, with the whole history and no context.
pub fn open_request(
    model: &str,
    messages: &[ChatMessage],
    tools: &[ToolSpec],
    options: &ProviderOptions,
) -> ProviderRequest {
    ProviderRequest::Open {
        model: model.to_owned(),
        messages: messages.to_vec(),
        tools: tools.to_vec(),
        system_prompt: options.system_prompt.clone(),
        reasoning_effort: options.reasoning_effort,
        max_output_tokens: options.max_output_tokens,
        context: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{FinishReason, Usage};
    use std::sync::Mutex;
    use std::time::Duration;

    /// A provider service that answers a whole step at the first `next`
    /// (the serving side proper is `dispatch_contracts::provider::serve`,
    /// tested against this client in the host's tests).
    struct Local {
        script: Mutex<Vec<Result<ProviderEvent, ProviderError>>>,
        open: Mutex<bool>,
    }

    impl ServiceCaller for Local {
        fn call(&self, _name: &str, version: u32, request: Vec<u8>) -> BoxFuture<Result<Vec<u8>, CallError>> {
            assert_eq!(version, PROVIDER_VERSION);
            let req: ProviderRequest = serde_json::from_slice(&request).unwrap();
            let out: serde_json::Value = match req {
                ProviderRequest::Open { .. } => {
                    *self.open.lock().unwrap() = true;
                    serde_json::to_value(Opened { stream_id: 1 }).unwrap()
                }
                ProviderRequest::Next { stream_id: 1 } => {
                    let mut batch = Batch { done: true, ..Batch::default() };
                    for item in std::mem::take(&mut *self.script.lock().unwrap()) {
                        match item {
                            Ok(e) => batch.events.push(e),
                            Err(e) => {
                                batch.error = Some(e);
                                break;
                            }
                        }
                    }
                    *self.open.lock().unwrap() = false;
                    serde_json::to_value(batch).unwrap()
                }
                _ => serde_json::Value::Null,
            };
            Box::pin(std::future::ready(Ok(serde_json::to_vec(&out).unwrap())))
        }
    }

    fn collect(
        script: Vec<Result<ProviderEvent, ProviderError>>,
    ) -> (Vec<Result<ProviderEvent, ProviderError>>, bool) {
        use futures::StreamExt as _;
        let caller = Arc::new(Local { script: Mutex::new(script), open: Mutex::new(false) });
        let resolved = Resolved { model: "x/y".into(), provider: "p".into(), service: "provider.p".into() };
        let provider = RemoteProvider::new(Arc::clone(&caller), &resolved, None);
        let options = ProviderOptions::default();
        let req = StepRequest { messages: &[], tools: &[], options: &options };
        let items = futures::executor::block_on(provider.stream(req).collect::<Vec<_>>());
        let still_open = *caller.open.lock().unwrap();
        (items, still_open)
    }

    /// Answers every step at once, recording the requests; refuses the
    /// next continued `open` as lost when `lose` is set, and every `open`
    /// with a context when `old` is (a provider built before contexts).
    #[derive(Default)]
    struct Recorder {
        requests: Mutex<Vec<serde_json::Value>>,
        lose: Mutex<bool>,
        old: bool,
    }

    impl ServiceCaller for Recorder {
        fn call(
            &self,
            _name: &str,
            _version: u32,
            request: Vec<u8>,
        ) -> BoxFuture<Result<Vec<u8>, CallError>> {
            let v: serde_json::Value = serde_json::from_slice(&request).unwrap();
            self.requests.lock().unwrap().push(v.clone());
            let answer = match v["op"].as_str().unwrap() {
                "open" if self.old && v.get("context").is_some() => {
                    Err(CallError::new("invalid_payload", "unknown field `context`"))
                }
                "open"
                    if v["context"]["base"].as_u64().unwrap_or(0) > 0
                        && std::mem::take(&mut *self.lose.lock().unwrap()) =>
                {
                    Err(CallError::new(CONTEXT_LOST, "not held"))
                }
                "open" => Ok(serde_json::json!({"streamId": 1})),
                "next" => Ok(serde_json::to_value(Batch {
                    events: vec![ProviderEvent::Finish(FinishReason::Stop)],
                    done: true,
                    ..Batch::default()
                })
                .unwrap()),
                _ => Ok(serde_json::json!({})),
            };
            Box::pin(std::future::ready(answer.map(|a| serde_json::to_vec(&a).unwrap())))
        }
    }

    impl Recorder {
        fn opens(&self) -> Vec<serde_json::Value> {
            self.requests.lock().unwrap().iter().filter(|r| r["op"] == "open").cloned().collect()
        }
    }

    /// Runs one step per history through one provider (one turn), then
    /// drops it.
    fn steps(caller: &Arc<Recorder>, histories: &[Vec<ChatMessage>]) {
        use futures::StreamExt as _;
        let resolved = Resolved { model: "x/y".into(), provider: "p".into(), service: "provider.p".into() };
        let released = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&released);
        let spawn: Spawner = Arc::new(move |f| sink.lock().unwrap().push(f));
        let provider = RemoteProvider::new(Arc::clone(caller), &resolved, Some(spawn));
        let tools =
            [ToolSpec { name: "t".into(), description: "d".into(), input_schema: serde_json::json!({}) }];
        let options = ProviderOptions { system_prompt: Some("sp".into()), ..ProviderOptions::default() };
        for h in histories {
            let req = StepRequest { messages: h, tools: &tools, options: &options };
            let items = futures::executor::block_on(provider.stream(req).collect::<Vec<_>>());
            assert_eq!(items, vec![Ok(ProviderEvent::Finish(FinishReason::Stop))]);
        }
        drop(provider);
        for f in released.lock().unwrap().drain(..) {
            futures::executor::block_on(f);
        }
    }

    fn history(n: usize) -> Vec<ChatMessage> {
        (0..n).map(|i| ChatMessage::user(format!("m{i}"))).collect()
    }

    #[test]
    fn each_step_of_a_turn_sends_only_the_messages_after_those_the_provider_holds() {
        let caller = Arc::new(Recorder::default());
        steps(&caller, &[history(1), history(3), history(3), history(4)]);
        let opens = caller.opens();
        let shape: Vec<(u64, usize, bool)> = opens
            .iter()
            .map(|o| {
                let base = o["context"]["base"].as_u64().unwrap();
                (base, o["messages"].as_array().unwrap().len(), o.get("tools").is_some())
            })
            .collect();
        // Tools and the system prompt travel once, with the whole history.
        assert_eq!(shape, vec![(0, 1, true), (1, 2, false), (3, 0, false), (3, 1, false)]);
        assert_eq!(opens[1]["messages"][0]["chunks"][0]["text"], "m1");
        assert!(opens.iter().all(|o| o["context"]["id"] == opens[0]["context"]["id"]));
        // Dropping the provider releases its context.
        let last = caller.requests.lock().unwrap().last().cloned().unwrap();
        assert_eq!(last, serde_json::json!({"op": "release", "context": opens[0]["context"]["id"]}));
    }

    #[test]
    fn a_history_that_does_not_extend_the_last_one_starts_the_context_again() {
        let caller = Arc::new(Recorder::default());
        let mut other = history(3);
        other[1] = ChatMessage::user("changed");
        steps(&caller, &[history(2), other]);
        let bases: Vec<u64> = caller.opens().iter().map(|o| o["context"]["base"].as_u64().unwrap()).collect();
        assert_eq!(bases, vec![0, 0]);
    }

    #[test]
    fn a_changed_message_before_the_last_restarts_a_context_that_holds_images() {
        let caller = Arc::new(Recorder::default());
        let image = crate::wire::Chunk::Image { url: "data:image/png;base64,AA==".into(), mime_type: None };
        let mut first = history(2);
        first[0].chunks.push(image);
        let grown = |h: &[ChatMessage], n: usize| {
            let mut h = h.to_vec();
            h.extend((0..n).map(|i| ChatMessage::user(format!("more{i}"))));
            h
        };
        let second = grown(&first, 1);
        // The image of message 0 shown as its description from now on.
        let mut described = grown(&second, 1);
        described[0].chunks[1] = crate::wire::Chunk::text("[Compacted image]: a dot");
        let fourth = grown(&described, 1);
        steps(&caller, &[first, second, described, fourth]);
        let bases: Vec<u64> = caller.opens().iter().map(|o| o["context"]["base"].as_u64().unwrap()).collect();
        assert_eq!(bases, vec![0, 2, 0, 4]);
    }

    #[test]
    fn a_lost_context_is_sent_again_whole_within_the_same_step() {
        let caller = Arc::new(Recorder::default());
        let histories = [history(2), history(4), history(5)];
        // A first turn, then a second whose second step finds its context
        // lost.
        steps(&caller, &histories[..1]);
        *caller.lose.lock().unwrap() = true;
        steps(&caller, &histories);
        let opens = caller.opens();
        let shape: Vec<(u64, usize)> = opens
            .iter()
            .skip(1)
            .map(|o| (o["context"]["base"].as_u64().unwrap(), o["messages"].as_array().unwrap().len()))
            .collect();
        // Step 1 of the second turn: base 0 (no refusal); step 2: refused
        // as lost, then sent whole; step 3 continues from there.
        assert_eq!(shape, vec![(0, 2), (2, 2), (0, 4), (4, 1)]);
    }

    #[test]
    fn a_provider_that_predates_contexts_gets_the_whole_history_every_step() {
        let caller = Arc::new(Recorder { old: true, ..Recorder::default() });
        steps(&caller, &[history(1), history(3)]);
        let opens = caller.opens();
        let shape: Vec<(bool, usize)> = opens
            .iter()
            .map(|o| (o.get("context").is_some(), o["messages"].as_array().unwrap().len()))
            .collect();
        assert_eq!(shape, vec![(true, 1), (false, 1), (false, 3)]);
        // Nothing to release.
        assert!(caller.requests.lock().unwrap().iter().all(|r| r["op"] != "release"));
    }

    #[test]
    fn events_cross_the_pull_protocol_in_order_and_the_stream_is_read_to_its_end() {
        let script = vec![
            Ok(ProviderEvent::TextDelta("a".into())),
            Ok(ProviderEvent::Usage(Usage { input_tokens: 1, output_tokens: 2, ..Usage::default() })),
            Ok(ProviderEvent::Finish(FinishReason::Stop)),
        ];
        let (items, open) = collect(script.clone());
        assert_eq!(items, script);
        assert!(!open);
    }

    #[test]
    fn a_stream_that_ends_without_a_finish_is_an_error_not_an_empty_success() {
        let (items, _) = collect(vec![Ok(ProviderEvent::TextDelta("half".into()))]);
        assert_eq!(items[0], Ok(ProviderEvent::TextDelta("half".into())));
        let err = items[1].as_ref().unwrap_err();
        assert!(err.message.contains("without finishing"), "{err:?}");
        assert!(!err.retryable);
        assert_eq!(items.len(), 2);
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
        let (items, _) = collect(script);
        assert_eq!(items, vec![Ok(ProviderEvent::TextDelta("a".into())), Err(err)]);
    }
}
