//! The turn's side of the provider protocol
//! ([`dispatch_protocol::provider`]).
//!
//! [`RemoteProvider`] is the caller's end: a kernel [`Provider`] that speaks
//! this protocol through any [`ServiceCaller`] (the host's bus, or a
//! plugin's `Host`), so the turn loop never knows a provider is in another
//! library.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::stream::BoxStream;
use serde_json::Value;

pub use dispatch_protocol::catalog::Resolved;
use dispatch_protocol::provider::{Batch, Opened, ProviderRequest, VERSION as PROVIDER_VERSION};
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

fn bus_failure(e: CallError) -> ProviderError {
    // The provider plugin went away or answered garbage: not the model's
    // fault, and retrying the same plugin will not help.
    ProviderError::fatal(format!("provider service failed: {}", e.message), Some(e.code))
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
    pending: VecDeque<ProviderEvent>,
    /// An error to yield once `pending` is drained.
    error: Option<ProviderError>,
    finished: bool,
    /// A `finish` event arrived: the step really ended.
    saw_finish: bool,
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
                return Some(Ok(e));
            }
            if let Some(err) = self.error.take() {
                return Some(Err(err));
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
                                "provider `{}` ended the step without finishing it (no finish event, no error)",
                                self.service
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
            caller: Arc::clone(&self.caller),
            service: self.service.clone(),
            open: Some(open_request(&self.model, request.messages, request.tools, request.options)),
            stream_id: None,
            pending: VecDeque::new(),
            error: None,
            finished: false,
            saw_finish: false,
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
        tools: tools.to_vec(),
        system_prompt: options.system_prompt.clone(),
        reasoning_effort: options.reasoning_effort,
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
