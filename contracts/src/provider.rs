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

#[cfg(feature = "runtime")]
use crate::{catalog, pull::PullTable};
#[cfg(feature = "runtime")]
use std::sync::Arc;
#[cfg(feature = "runtime")]
use std::time::Duration;

/// The key of the provider service `name` (e.g. `provider.openai`), at
/// [`VERSION`]. Answers differ by op (see [`ProviderRequest`]), hence
/// `Value`.
pub fn key(name: &str) -> Service<ProviderRequest, Value> {
    Service::named(name, VERSION)
}

/// Where a step's producer pushes its events: `Ok` events, then either a
/// [`ProviderEvent::Finish`] or one `Err`. Dropping it ends the stream.
pub type EventSender = crate::pull::Sender<Result<ProviderEvent, ProviderError>>;

/// One model step to stream: the fields of [`ProviderRequest::Open`].
#[derive(Debug, Clone, PartialEq)]
pub struct StepSpec {
    /// `<credential>/<model>`.
    pub model: String,
    /// The history.
    pub messages: Vec<ChatMessage>,
    /// The tools on offer.
    pub tools: Vec<ToolSpec>,
    /// The system prompt.
    pub system_prompt: Option<String>,
    /// Reasoning effort.
    pub reasoning_effort: Option<ReasoningEffort>,
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
    fn open(&self, step: StepSpec, events: EventSender) -> Result<BoxFuture<()>, Error>;
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
    let runner = runtime.runner();
    let table = Arc::clone(&streams);
    let service = registration.service.clone();
    host.provide(&key(&service), move |req: ProviderRequest| {
        let (table, provider, runner) = (Arc::clone(&table), Arc::clone(&provider), runner.clone());
        async move {
            match req {
                ProviderRequest::Models => {
                    let models = runner.run(async move { Ok(provider.models().await) }).await?;
                    to_json(&ProviderModels { models })
                }
                ProviderRequest::Open { model, messages, tools, system_prompt, reasoning_effort } => {
                    let step = StepSpec { model, messages, tools, system_prompt, reasoning_effort };
                    let (stream_id, tx, abort) = table.open();
                    let produce = match provider.open(step, tx) {
                        Ok(fut) => fut,
                        Err(e) => {
                            table.cancel(stream_id);
                            return Err(e);
                        }
                    };
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
