//! The model provider contract the turn loop runs against: one streamed
//! step per call.

use futures::stream::BoxStream;

pub use dispatch_protocol::provider::{ProviderError, ProviderEvent, ToolSpec};

use crate::wire::{ChatMessage, ReasoningEffort};

/// Per-turn options handed to every step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderOptions {
    /// The model, as the provider names it.
    pub model: Option<String>,
    /// The system prompt.
    pub system_prompt: Option<String>,
    /// Reasoning effort, where the model accepts it.
    pub reasoning_effort: Option<ReasoningEffort>,
    /// Most tokens an answer may take (`None`: the model's own limit).
    pub max_output_tokens: Option<u32>,
}

/// One step's request.
#[derive(Debug, Clone, Copy)]
pub struct StepRequest<'a> {
    /// The whole history so far, reconciled.
    pub messages: &'a [ChatMessage],
    /// The tools on offer.
    pub tools: &'a [ToolSpec],
    /// Per-turn options.
    pub options: &'a ProviderOptions,
}

/// A model provider.
pub trait Provider: Send + Sync {
    /// Start one step. Errors may come first (connection refused) or mid-way
    /// (the stream broke); the stream ends after [`ProviderEvent::Finish`]
    /// or an error.
    fn stream<'a>(&'a self, request: StepRequest<'a>) -> BoxStream<'a, Result<ProviderEvent, ProviderError>>;
}
