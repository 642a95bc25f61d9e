//! The model provider contract: what a provider streams for one model step
//! ([`ProviderEvent`], [`ProviderError`]) and the pull protocol a provider
//! plugin answers on its bus service ([`ProviderRequest`]).
//!
//! A provider plugin serves one service (e.g. `provider.openai`, schema
//! version [`VERSION`]). A model step is streamed *pull-based*: `open`
//! starts it and answers [`Opened`], each `next` answers the events
//! buffered since the previous `next` ([`Batch`], waiting until there is at
//! least one, or the end), and `cancel` stops it. A stream that ends without
//! a `finish` event or an error is itself an error: a provider that stops
//! talking has failed, it has not answered.
//!
//! ## Contexts: sending the history once
//!
//! Within a turn every step's history is the previous step's plus a few
//! messages, and a long turn's history is large: re-sending (and
//! re-converting) all of it at every step makes a step's cost grow with the
//! turn. So `open` may name a [`ContextRef`]: with `base: 0` the provider
//! keeps the step's history, tools and system prompt under the context's
//! id; a later `open` with `base: n` sends only the messages after the
//! first `n`, and the provider answers the step on the history it kept plus
//! those (its tools and system prompt are the context's). A provider that
//! no longer holds exactly `n` messages for the id (it restarted, evicted
//! the context, or never kept it) refuses with [`CONTEXT_LOST`], and the
//! caller sends the whole history again with `base: 0`. `release` forgets
//! a context; providers also forget idle ones on their own.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::wire::{ChatMessage, FinishReason, ReasoningEffort, Usage};

/// Schema version of every provider service.
pub const VERSION: u32 = 1;

/// A tool as the model sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolSpec {
    /// Name the model calls it by.
    pub name: String,
    /// What it does, written for a model.
    pub description: String,
    /// JSON Schema of its input.
    pub input_schema: Value,
}

/// What a provider streams for one step.
///
/// On the bus it travels as `{"type": "text-delta", "delta": …}`,
/// `{"type": "tool-call", "id", "name", "input"}`, `{"type": "usage",
/// "usage"}`, `{"type": "finish", "reason"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(into = "EventRepr", from = "EventRepr")]
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

/// The JSON shape of [`ProviderEvent`] (serde cannot tag tuple variants).
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case", rename_all_fields = "camelCase")]
enum EventRepr {
    TextDelta { delta: String },
    ReasoningDelta { delta: String },
    ToolCall { id: String, name: String, input: Value },
    Usage { usage: Usage },
    Finish { reason: FinishReason },
}

impl From<EventRepr> for ProviderEvent {
    fn from(e: EventRepr) -> Self {
        match e {
            EventRepr::TextDelta { delta } => ProviderEvent::TextDelta(delta),
            EventRepr::ReasoningDelta { delta } => ProviderEvent::ReasoningDelta(delta),
            EventRepr::ToolCall { id, name, input } => ProviderEvent::ToolCall { id, name, input },
            EventRepr::Usage { usage } => ProviderEvent::Usage(usage),
            EventRepr::Finish { reason } => ProviderEvent::Finish(reason),
        }
    }
}

impl From<ProviderEvent> for EventRepr {
    fn from(e: ProviderEvent) -> Self {
        match e {
            ProviderEvent::TextDelta(delta) => EventRepr::TextDelta { delta },
            ProviderEvent::ReasoningDelta(delta) => EventRepr::ReasoningDelta { delta },
            ProviderEvent::ToolCall { id, name, input } => EventRepr::ToolCall { id, name, input },
            ProviderEvent::Usage(usage) => EventRepr::Usage { usage },
            ProviderEvent::Finish(reason) => EventRepr::Finish { reason },
        }
    }
}

/// A provider failure.
///
/// On the bus: `{"message", "code"?, "retryable", "retryAfterMs"?}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize, JsonSchema)]
#[serde(into = "ErrorRepr", from = "ErrorRepr")]
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

#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ErrorRepr {
    message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    retryable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

impl From<ErrorRepr> for ProviderError {
    fn from(e: ErrorRepr) -> Self {
        ProviderError {
            message: e.message,
            code: e.code,
            retryable: e.retryable,
            retry_after: e.retry_after_ms.map(Duration::from_millis),
        }
    }
}

impl From<ProviderError> for ErrorRepr {
    fn from(e: ProviderError) -> Self {
        ErrorRepr {
            message: e.message,
            code: e.code,
            retryable: e.retryable,
            retry_after_ms: e.retry_after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
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

/// A model as a provider lists it. Build it with [`ModelEntry::named`] and
/// the setters (or `..Default::default()`), so a field added later does not
/// break your plugin's source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelEntry {
    /// `<credential>/<model>`.
    pub name: String,
    /// The model's context window in tokens, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u64>,
    /// Whether it takes images, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision: Option<bool>,
}

impl ModelEntry {
    /// A model called `name` (`<credential>/<model>`), nothing else known.
    pub fn named(name: impl Into<String>) -> ModelEntry {
        ModelEntry { name: name.into(), ..ModelEntry::default() }
    }

    /// Its context window, in tokens.
    pub fn context_window(mut self, tokens: u64) -> ModelEntry {
        self.context_window = Some(tokens);
        self
    }

    /// Whether it takes images.
    pub fn vision(mut self, vision: bool) -> ModelEntry {
        self.vision = Some(vision);
        self
    }
}

/// The error code of an `open` whose context the provider does not hold
/// (with exactly `base` messages): send the whole history again.
pub const CONTEXT_LOST: &str = "context_lost";

/// Continue a context (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContextRef {
    /// Chosen by the caller, unique among its contexts (a random number).
    pub id: u64,
    /// How many history messages earlier `open`s of this context sent; 0
    /// starts (or restarts) the context with the whole history.
    pub base: u64,
}

/// Requests to a provider service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub enum ProviderRequest {
    /// The models this provider serves (may ask the server); answers
    /// [`ProviderModels`].
    Models,
    /// Start one model step; answers [`Opened`].
    Open {
        /// `<credential>/<model>`.
        model: String,
        /// The history; in a continued context, only the messages after
        /// the context's `base`.
        messages: Vec<ChatMessage>,
        /// The tools on offer (ignored in a continued context).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tools: Vec<ToolSpec>,
        /// The system prompt (ignored in a continued context).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        system_prompt: Option<String>,
        /// Reasoning effort.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reasoning_effort: Option<ReasoningEffort>,
        /// Most tokens the answer may take (a summary's bound); `None`:
        /// the model's own limit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_output_tokens: Option<u32>,
        /// Keep, or continue, a context.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        context: Option<ContextRef>,
    },
    /// The events since the last `next`; waits for at least one. Answers
    /// [`Batch`].
    Next {
        /// From `open`.
        stream_id: u64,
    },
    /// Stop a stream and free it. Answers `{}`; unknown ids are ignored.
    Cancel {
        /// From `open`.
        stream_id: u64,
    },
    /// Forget a context. Answers `{}`; unknown ids are ignored.
    Release {
        /// The context's id.
        context: u64,
    },
}

/// A provider's `models` answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderModels {
    /// Its models.
    pub models: Vec<ModelEntry>,
}

/// A provider's `open` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Opened {
    /// Names the stream in `next` and `cancel`.
    pub stream_id: u64,
}

/// A provider's `next` answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Batch {
    /// Events, in order.
    pub events: Vec<ProviderEvent>,
    /// The stream failed after `events` (the stream is over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ProviderError>,
    /// The stream ended after `events`.
    #[serde(default)]
    pub done: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_and_errors_travel_in_their_documented_shape() {
        let e = ProviderEvent::ToolCall { id: "c".into(), name: "t".into(), input: json!({"a": 1}) };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"type": "tool-call", "id": "c", "name": "t", "input": {"a": 1}})
        );
        let d = ProviderEvent::TextDelta("hi".into());
        assert_eq!(serde_json::to_value(&d).unwrap(), json!({"type": "text-delta", "delta": "hi"}));
        let err = ProviderError {
            message: "slow down".into(),
            code: Some("429".into()),
            retryable: true,
            retry_after: Some(Duration::from_millis(1500)),
        };
        let v = serde_json::to_value(&err).unwrap();
        assert_eq!(
            v,
            json!({"message": "slow down", "code": "429", "retryable": true, "retryAfterMs": 1500})
        );
        assert_eq!(serde_json::from_value::<ProviderError>(v).unwrap(), err);
    }
}
