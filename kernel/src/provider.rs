//! The model provider contract the turn loop runs against: one streamed
//! step per call.

use std::time::Duration;

use futures::stream::BoxStream;
use serde_json::Value;

use crate::wire::{ChatMessage, FinishReason, ReasoningEffort, Usage};

/// A tool as the model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// Name the model calls it by.
    pub name: String,
    /// What it does, written for a model.
    pub description: String,
    /// JSON Schema of its input.
    pub input_schema: Value,
}

/// Per-turn options handed to every step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderOptions {
    /// The model, as the provider names it.
    pub model: Option<String>,
    /// The system prompt.
    pub system_prompt: Option<String>,
    /// Reasoning effort, where the model accepts it.
    pub reasoning_effort: Option<ReasoningEffort>,
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

/// What a provider streams for one step.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderEvent {
    /// Answer text.
    TextDelta(String),
    /// Reasoning text.
    ReasoningDelta(String),
    /// A complete tool call. `input` is the parsed JSON; a provider that
    /// could not parse the model's arguments passes them as a JSON string,
    /// which the turn loop reports to the model as invalid input.
    ToolCall {
        /// Call id.
        id: String,
        /// Tool name.
        name: String,
        /// Input.
        input: Value,
    },
    /// Token usage (usually once, at the end).
    Usage(Usage),
    /// Why the step ended.
    Finish(FinishReason),
}

/// A provider failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    /// The server's message (or the transport's).
    pub message: String,
    /// A stable code: the HTTP status, or a provider error code.
    pub code: Option<String>,
    /// Whether trying again may succeed (429, 5xx, connection failures).
    pub retryable: bool,
    /// The server's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    /// A failure worth retrying.
    pub fn retryable(message: impl Into<String>, code: Option<String>) -> Self {
        ProviderError { message: message.into(), code, retryable: true, retry_after: None }
    }
    /// A failure that retrying will not fix.
    pub fn fatal(message: impl Into<String>, code: Option<String>) -> Self {
        ProviderError { message: message.into(), code, retryable: false, retry_after: None }
    }
}

/// A model provider.
pub trait Provider: Send + Sync {
    /// Start one step. Errors may come first (connection refused) or mid-way
    /// (the stream broke); the stream ends after [`ProviderEvent::Finish`]
    /// or an error.
    fn stream<'a>(&'a self, request: StepRequest<'a>) -> BoxStream<'a, Result<ProviderEvent, ProviderError>>;
}
