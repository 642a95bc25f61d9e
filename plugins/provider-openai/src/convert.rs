//! Pure translation between Dispatch's types and the OpenAI chat
//! completions JSON: the request body, and the streamed chunks back into
//! provider events (tool-call deltas assembled by index).

use std::collections::BTreeMap;
use std::sync::Arc;

use dispatch_contracts::protocol::provider::{ProviderError, ProviderEvent, ToolSpec};
use dispatch_contracts::protocol::wire::{ChatMessage, Chunk, FinishReason, ReasoningEffort, Role, Usage};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

/// The request body of one streamed step, serialized by async-openai.
///
/// The history is kept as already-encoded JSON ([`RawValue`]): a step of a
/// long turn copies the bytes of the messages it shares with the previous
/// step instead of converting and encoding them again (see [`Converted`]).
#[derive(Debug, Serialize)]
pub struct RequestBody {
    model: String,
    messages: Vec<Arc<RawValue>>,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Arc<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'static str>,
    /// The answer's bound, under the name the credential's server reads
    /// (`max_tokens`, or `max_completion_tokens`).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    limit: Option<std::collections::BTreeMap<&'static str, u32>>,
}

#[derive(Debug, Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// What a request asks besides its messages, tools and system prompt.
#[derive(Debug, Clone, Copy)]
pub struct Knobs {
    /// Reasoning effort.
    pub effort: Option<ReasoningEffort>,
    /// Whether images are sent.
    pub images: Images,
    /// The answer's bound: the field that carries it, and tokens.
    pub limit: Option<(&'static str, u32)>,
}

/// A context's history converted to OpenAI messages so far: kept in the
/// step's memo, so each step converts only the messages added since the
/// previous one. The memo's contract (the history only grows, tools and
/// system prompt do not change) is what makes the prefix reusable.
#[derive(Debug, Default)]
pub struct Converted {
    /// How many history messages are converted.
    from: usize,
    /// The system prompt's message, then the converted history.
    messages: Vec<Arc<RawValue>>,
    /// The tools, once converted (`None` when there are none).
    tools: Option<Arc<RawValue>>,
    started: bool,
}

impl Converted {
    /// The body for a step on `messages`, converting only what is new.
    pub fn body(
        &mut self,
        model: &str,
        messages: &[ChatMessage],
        tools: &[ToolSpec],
        system_prompt: Option<&str>,
        knobs: Knobs,
    ) -> RequestBody {
        let Knobs { effort, images, limit } = knobs;
        if !self.started || messages.len() < self.from {
            // First use (or a caller that broke the memo's contract):
            // start over.
            *self = Converted { started: true, ..Converted::default() };
            if let Some(sp) = system_prompt.filter(|s| !s.is_empty()) {
                self.messages.push(raw(&json!({"role": "system", "content": sp})));
            }
            if !tools.is_empty() {
                let list: Vec<Value> = tools
                    .iter()
                    .map(|t| {
                        json!({"type": "function", "function": {
                            "name": t.name, "description": t.description, "parameters": t.input_schema}})
                    })
                    .collect();
                self.tools = Some(raw(&list));
            }
        }
        let mut out = Vec::new();
        convert_messages(&messages[self.from..], images, &mut out);
        self.messages.extend(out.iter().map(raw));
        self.from = messages.len();
        RequestBody {
            model: model.to_owned(),
            messages: self.messages.clone(),
            stream: true,
            stream_options: StreamOptions { include_usage: true },
            tools: self.tools.clone(),
            // OpenAI-compatible servers know low/medium/high; the higher
            // rungs of Dispatch's ladder map to the highest they accept.
            reasoning_effort: effort.map(|e| match e {
                ReasoningEffort::Low => "low",
                ReasoningEffort::Medium => "medium",
                ReasoningEffort::High | ReasoningEffort::Xhigh | ReasoningEffort::Max => "high",
            }),
            limit: limit.map(|(field, n)| [(field, n)].into_iter().collect()),
        }
    }
}

/// Encode once. Serializing a `Value` (or a list of them) cannot fail:
/// its map keys are strings.
fn raw<T: Serialize>(v: &T) -> Arc<RawValue> {
    match serde_json::value::to_raw_value(v) {
        Ok(r) => Arc::from(r),
        Err(_) => unreachable!("a JSON value always serializes"),
    }
}

/// The request body for one streamed step, converted from scratch.
pub fn request_body(
    model: &str,
    messages: &[ChatMessage],
    tools: &[ToolSpec],
    system_prompt: Option<&str>,
    effort: Option<ReasoningEffort>,
    images: Images,
) -> RequestBody {
    Converted::default().body(model, messages, tools, system_prompt, Knobs { effort, images, limit: None })
}

/// Whether a credential's models are sent images (its `images` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Images {
    /// As `image_url` parts: a user's attachments in their message, tool
    /// results' images in a user message after the results (chat
    /// completions' tool messages carry text only).
    Send,
    /// Left out: a user's attachments are replaced by a note, tool results'
    /// images dropped (a tool says in its text what they were).
    Omit,
}

/// Said in place of a user's image to a model configured for text only.
pub const IMAGE_OMITTED: &str = "[an image was attached here; this model is configured for text only]";

/// Convert a run of messages. Images of tool results wait until the run of
/// tool messages ends: the API wants every result right after the calling
/// message, so the images follow them all in one user message.
fn convert_messages(messages: &[ChatMessage], images: Images, out: &mut Vec<Value>) {
    let mut pending: Vec<Value> = Vec::new();
    for m in messages {
        if m.role != Role::Tool {
            flush_images(&mut pending, out);
        }
        convert_message(m, images, &mut pending, out);
    }
    flush_images(&mut pending, out);
}

fn flush_images(pending: &mut Vec<Value>, out: &mut Vec<Value>) {
    if !pending.is_empty() {
        out.push(json!({"role": "user", "content": std::mem::take(pending)}));
    }
}

/// The texts of `chunks`, joined by `sep`.
fn text_of(chunks: &[Chunk], sep: &str) -> String {
    chunks
        .iter()
        .filter_map(|c| match c {
            Chunk::Text { text } | Chunk::System { text } => Some(text.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(sep)
}

fn convert_message(m: &ChatMessage, images: Images, pending: &mut Vec<Value>, out: &mut Vec<Value>) {
    match m.role {
        Role::System => out.push(json!({"role": "system", "content": text_of(&m.chunks, "")})),
        Role::User => {
            let has_images = m.chunks.iter().any(|c| matches!(c, Chunk::Image { .. }));
            if !has_images {
                // Consecutive user chunks (a message sent after a failed
                // turn, an image's description) are separate paragraphs.
                out.push(json!({"role": "user", "content": text_of(&m.chunks, "\n")}));
            } else if images == Images::Omit {
                let text: Vec<&str> = m
                    .chunks
                    .iter()
                    .filter_map(|c| match c {
                        Chunk::Text { text } | Chunk::System { text } => Some(text.as_str()),
                        Chunk::Image { .. } => Some(IMAGE_OMITTED),
                        _ => None,
                    })
                    .collect();
                out.push(json!({"role": "user", "content": text.join("\n")}));
            } else {
                let parts: Vec<Value> = m
                    .chunks
                    .iter()
                    .filter_map(|c| match c {
                        Chunk::Text { text } => Some(json!({"type": "text", "text": text})),
                        Chunk::Image { url, .. } => Some(image_part(url)),
                        _ => None,
                    })
                    .collect();
                out.push(json!({"role": "user", "content": parts}));
            }
        }
        Role::Assistant => {
            let text = text_of(&m.chunks, "");
            let calls: Vec<Value> = m
                .chunks
                .iter()
                .filter_map(|c| match c {
                    Chunk::ToolCall { tool_call_id, tool_name, input, .. } => Some(json!({
                        "id": tool_call_id, "type": "function",
                        "function": {"name": tool_name, "arguments": arguments(input)}})),
                    _ => None,
                })
                .collect();
            if text.is_empty() && calls.is_empty() {
                return; // only thinking or errors: nothing the model needs back
            }
            let mut msg = Map::new();
            msg.insert("role".into(), json!("assistant"));
            msg.insert("content".into(), if text.is_empty() { Value::Null } else { json!(text) });
            if !calls.is_empty() {
                msg.insert("tool_calls".into(), Value::Array(calls));
            }
            out.push(Value::Object(msg));
        }
        Role::Tool => {
            // Images belong to the result before them.
            let mut result: Option<(&str, &str)> = None;
            let mut introduced = false;
            for c in &m.chunks {
                match c {
                    Chunk::ToolResult { tool_call_id, tool_name, content, .. } => {
                        out.push(json!({"role": "tool", "tool_call_id": tool_call_id, "content": content}));
                        result = Some((tool_call_id, tool_name));
                        introduced = false;
                    }
                    Chunk::Image { url, .. } if images == Images::Send => {
                        introduce(pending, result, &mut introduced);
                        pending.push(image_part(url));
                    }
                    // What the vision plugin shows instead of a result's
                    // image (its description, or a placeholder): beside
                    // the images, where the model looks for them.
                    Chunk::Text { text } => {
                        introduce(pending, result, &mut introduced);
                        pending.push(json!({"type": "text", "text": text}));
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The line that says whose images follow, once per result.
fn introduce(pending: &mut Vec<Value>, result: Option<(&str, &str)>, introduced: &mut bool) {
    if !*introduced {
        let (id, name) = result.unwrap_or(("", "a tool"));
        pending.push(
            json!({"type": "text", "text": format!("The image(s) returned by the `{name}` call {id}:")}),
        );
        *introduced = true;
    }
}

fn image_part(url: &str) -> Value {
    json!({"type": "image_url", "image_url": {"url": url}})
}

/// Tool arguments are a JSON *string* on the wire; a string input (the
/// model's unparseable arguments, kept verbatim) goes back as it was.
fn arguments(input: &Value) -> String {
    match input {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// Assembles a streamed completion into provider events.
#[derive(Default)]
pub struct Assembler {
    calls: BTreeMap<u64, PartialCall>,
    usage: Option<Usage>,
    finish: Option<FinishReason>,
}

fn finish_reason(s: &str) -> FinishReason {
    match s {
        "stop" => FinishReason::Stop,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "length" => FinishReason::Length,
        "content_filter" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_owned()),
    }
}

/// The provider error for an in-band `{"error": …}` chunk or body.
pub fn error_value(err: &Value, status: Option<u16>) -> ProviderError {
    let message =
        err.get("message").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| err.to_string());
    let code = status.map(|s| s.to_string()).or_else(|| match err.get("code") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    });
    let numeric = code.as_deref().and_then(|c| c.parse::<u16>().ok());
    let retryable = numeric.is_some_and(|s| s == 429 || s == 408 || s >= 500);
    ProviderError { message, code, retryable, retry_after: None }
}

/// The first of `paths` present as a count (`a.b` reads a nested field).
fn count(u: &Value, paths: &[&str]) -> Option<u64> {
    paths.iter().find_map(|path| {
        let mut v = u;
        for key in path.split('.') {
            v = v.get(key)?;
        }
        v.as_u64()
    })
}

/// A completion's `usage` object, whichever OpenAI-compatible dialect
/// wrote it: OpenAI's `prompt_tokens_details.cached_tokens` and
/// `completion_tokens_details.reasoning_tokens`, DeepSeek's
/// `prompt_cache_hit_tokens` / `prompt_cache_miss_tokens`, and the cache
/// writes gateways pass on from providers that charge for them
/// (OpenRouter's `cache_write_tokens`, Anthropic's
/// `cache_creation_input_tokens` through LiteLLM). A counter the server
/// did not send stays `None` — never a guessed 0.
pub fn usage_of(u: &Value) -> Usage {
    let read = count(
        u,
        &[
            "prompt_tokens_details.cached_tokens",
            "prompt_cache_hit_tokens",
            "cache_read_input_tokens",
            "cached_tokens",
        ],
    );
    let input = count(u, &["prompt_tokens", "input_tokens"]).or_else(|| {
        let miss = count(u, &["prompt_cache_miss_tokens"])?;
        Some(miss.saturating_add(read.unwrap_or(0)))
    });
    Usage {
        input_tokens: input.unwrap_or(0),
        output_tokens: count(u, &["completion_tokens", "output_tokens"]).unwrap_or(0),
        cache_read_tokens: read,
        cache_write_tokens: count(
            u,
            &[
                "prompt_tokens_details.cache_write_tokens",
                "prompt_tokens_details.cache_creation_tokens",
                "cache_creation_input_tokens",
                "cache_write_tokens",
            ],
        ),
        reasoning_tokens: count(
            u,
            &[
                "completion_tokens_details.reasoning_tokens",
                "output_tokens_details.reasoning_tokens",
                "reasoning_tokens",
            ],
        ),
    }
}

impl Assembler {
    /// Feed one chunk; answers the events it completes (text, reasoning).
    pub fn feed(&mut self, chunk: &Value) -> Result<Vec<ProviderEvent>, ProviderError> {
        if let Some(err) = chunk.get("error") {
            return Err(error_value(err, None));
        }
        let mut out = Vec::new();
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage_of(u));
        }
        let Some(choice) = chunk.get("choices").and_then(Value::as_array).and_then(|c| c.first()) else {
            return Ok(out);
        };
        if let Some(delta) = choice.get("delta") {
            for key in ["reasoning_content", "reasoning"] {
                if let Some(r) = delta.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()) {
                    out.push(ProviderEvent::ReasoningDelta(r.to_owned()));
                    break;
                }
            }
            if let Some(t) = delta.get("content").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                out.push(ProviderEvent::TextDelta(t.to_owned()));
            }
            for tc in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                let index = tc.get("index").and_then(Value::as_u64).unwrap_or(0);
                let call = self.calls.entry(index).or_default();
                if let Some(id) = tc.get("id").and_then(Value::as_str) {
                    call.id.push_str(id);
                }
                if let Some(f) = tc.get("function") {
                    if let Some(n) = f.get("name").and_then(Value::as_str) {
                        call.name.push_str(n);
                    }
                    if let Some(a) = f.get("arguments").and_then(Value::as_str) {
                        call.arguments.push_str(a);
                    }
                }
            }
        }
        if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(finish_reason(r));
        }
        Ok(out)
    }

    /// The stream ended: the assembled tool calls, usage and finish reason.
    /// `complete` says whether the server ended it properly (`[DONE]`, or a
    /// finish reason); otherwise the stream was cut and that is an error.
    pub fn finish(self, complete: bool) -> Result<Vec<ProviderEvent>, ProviderError> {
        if !complete && self.finish.is_none() {
            return Err(ProviderError::retryable(
                "the stream ended before the model finished its answer",
                None,
            ));
        }
        let mut out = Vec::new();
        for (index, call) in self.calls {
            let input = if call.arguments.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(&call.arguments).unwrap_or(Value::String(call.arguments))
            };
            let id = if call.id.is_empty() { format!("call_{index}") } else { call.id };
            out.push(ProviderEvent::ToolCall { id, name: call.name, input });
        }
        if let Some(u) = self.usage {
            out.push(ProviderEvent::Usage(u));
        }
        out.push(ProviderEvent::Finish(self.finish.unwrap_or(FinishReason::Stop)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    const SEND: Knobs = Knobs { effort: None, images: Images::Send, limit: None };
    use super::*;

    /// Every dialect's counters land in the same fields; nothing the
    /// server did not say is invented.
    #[test]
    fn usage_reads_every_dialect() {
        let openai = usage_of(&json!({
            "prompt_tokens": 1200, "completion_tokens": 80,
            "prompt_tokens_details": {"cached_tokens": 1024},
            "completion_tokens_details": {"reasoning_tokens": 64}
        }));
        assert_eq!(
            openai,
            Usage {
                input_tokens: 1200,
                output_tokens: 80,
                cache_read_tokens: Some(1024),
                cache_write_tokens: None,
                reasoning_tokens: Some(64),
            }
        );
        let deepseek = usage_of(&json!({
            "completion_tokens": 5, "prompt_cache_hit_tokens": 700, "prompt_cache_miss_tokens": 300
        }));
        assert_eq!((deepseek.input_tokens, deepseek.cache_read_tokens), (1000, Some(700)));
        let openrouter = usage_of(&json!({
            "prompt_tokens": 50, "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 40}
        }));
        assert_eq!((openrouter.cache_read_tokens, openrouter.cache_write_tokens), (Some(0), Some(40)));
        let litellm = usage_of(&json!({
            "prompt_tokens": 90, "completion_tokens": 5,
            "cache_creation_input_tokens": 30, "cache_read_input_tokens": 60
        }));
        assert_eq!((litellm.cache_read_tokens, litellm.cache_write_tokens), (Some(60), Some(30)));
        let bare = usage_of(&json!({"prompt_tokens": 3, "completion_tokens": 4}));
        assert_eq!(bare, Usage { input_tokens: 3, output_tokens: 4, ..Usage::default() });
    }

    #[test]
    fn history_converts_with_tool_calls_and_results() {
        let msgs = vec![
            ChatMessage::user("list files"),
            ChatMessage {
                role: Role::Assistant,
                chunks: vec![
                    Chunk::Thinking { text: "hmm".into() },
                    Chunk::text("Looking."),
                    Chunk::ToolCall {
                        tool_call_id: "c1".into(),
                        tool_name: "ls".into(),
                        input: json!({"p": "."}),
                        step_id: None,
                    },
                ],
            },
            ChatMessage {
                role: Role::Tool,
                chunks: vec![Chunk::ToolResult {
                    tool_call_id: "c1".into(),
                    tool_name: "ls".into(),
                    content: "a b".into(),
                    is_error: false,
                    step_id: None,
                }],
            },
        ];
        let tools = vec![ToolSpec {
            name: "ls".into(),
            description: "list".into(),
            input_schema: json!({"type": "object"}),
        }];
        let body =
            request_body("gpt-x", &msgs, &tools, Some("be brief"), Some(ReasoningEffort::Max), Images::Send);
        let body = serde_json::to_value(&body).unwrap();
        assert_eq!(
            body["messages"],
            json!([
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "list files"},
                {"role": "assistant", "content": "Looking.", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{\"p\":\".\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "a b"}
            ])
        );
        assert_eq!(body["tools"][0]["function"]["parameters"], json!({"type": "object"}));
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["reasoning_effort"], "high");
    }

    #[test]
    fn a_memo_converts_each_message_once_and_builds_the_same_body_as_from_scratch() {
        let call = |i: usize| ChatMessage {
            role: Role::Assistant,
            chunks: vec![Chunk::ToolCall {
                tool_call_id: format!("c{i}"),
                tool_name: "ls".into(),
                input: json!({"i": i}),
                step_id: None,
            }],
        };
        let result = |i: usize| ChatMessage {
            role: Role::Tool,
            chunks: vec![Chunk::ToolResult {
                tool_call_id: format!("c{i}"),
                tool_name: "ls".into(),
                content: format!("r{i}"),
                is_error: false,
                step_id: None,
            }],
        };
        let mut history = vec![ChatMessage::user("go")];
        for i in 0..4 {
            history.push(call(i));
            history.push(result(i));
        }
        let tools = vec![ToolSpec { name: "ls".into(), description: "l".into(), input_schema: json!({}) }];
        let mut memo = Converted::default();
        for n in [1, 3, 5, 5, 9] {
            let kept = memo.body("m", &history[..n], &tools, Some("sp"), SEND);
            let fresh = request_body("m", &history[..n], &tools, Some("sp"), None, Images::Send);
            assert_eq!(serde_json::to_value(&kept).unwrap(), serde_json::to_value(&fresh).unwrap());
            assert_eq!((memo.from, memo.messages.len()), (n, n + 1));
        }
        // A shorter history breaks the memo's contract: it starts over
        // rather than answering a wrong body.
        let kept = memo.body("m", &history[..2], &tools, Some("sp"), SEND);
        assert_eq!(serde_json::to_value(&kept).unwrap()["messages"].as_array().unwrap().len(), 3);
    }

    /// Regression guard: chat completions takes text only in tool messages
    /// and wants every result right after its call, so tool images travel
    /// in one user message after all the step's results.
    #[test]
    fn tool_images_follow_the_results_in_a_user_message() {
        let png = "data:image/png;base64,iVBORw0KGgo=";
        let calls = ChatMessage {
            role: Role::Assistant,
            chunks: ["a", "b"]
                .iter()
                .map(|id| Chunk::ToolCall {
                    tool_call_id: (*id).into(),
                    tool_name: "shot".into(),
                    input: json!({}),
                    step_id: None,
                })
                .collect(),
        };
        let result = |id: &str, images: usize| ChatMessage {
            role: Role::Tool,
            chunks: std::iter::once(Chunk::ToolResult {
                tool_call_id: id.into(),
                tool_name: "shot".into(),
                content: format!("took {id}"),
                is_error: false,
                step_id: None,
            })
            .chain((0..images).map(|_| Chunk::Image { url: png.into(), mime_type: Some("image/png".into()) }))
            .collect(),
        };
        let history =
            vec![ChatMessage::user("look"), calls, result("a", 2), result("b", 1), ChatMessage::user("so?")];
        let body = serde_json::to_value(request_body("m", &history, &[], None, None, Images::Send)).unwrap();
        let part = json!({"type": "image_url", "image_url": {"url": png}});
        assert_eq!(
            body["messages"].as_array().unwrap()[2..],
            [
                json!({"role": "tool", "tool_call_id": "a", "content": "took a"}),
                json!({"role": "tool", "tool_call_id": "b", "content": "took b"}),
                json!({"role": "user", "content": [
                    {"type": "text", "text": "The image(s) returned by the `shot` call a:"}, part, part,
                    {"type": "text", "text": "The image(s) returned by the `shot` call b:"}, part]}),
                json!({"role": "user", "content": "so?"}),
            ]
        );
        // Step by step through the memo, the same body.
        let mut memo = Converted::default();
        for n in [1, 4, 5] {
            let kept = memo.body("m", &history[..n], &[], None, SEND);
            let fresh = request_body("m", &history[..n], &[], None, None, Images::Send);
            assert_eq!(serde_json::to_value(&kept).unwrap(), serde_json::to_value(&fresh).unwrap());
        }
        // A text-only model gets the results alone, and a note for a
        // user's attachment.
        let mut attached = ChatMessage::user("what is this?");
        attached.chunks.push(Chunk::Image { url: png.into(), mime_type: None });
        let mut text_only = history.clone();
        text_only.push(attached);
        let body =
            serde_json::to_value(request_body("m", &text_only, &[], None, None, Images::Omit)).unwrap();
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 6, "{messages:?}");
        assert!(!body.to_string().contains("image_url"), "{body}");
        assert_eq!(messages[5]["content"], format!("what is this?\n{IMAGE_OMITTED}"));
    }

    #[test]
    fn a_text_in_place_of_a_tool_image_follows_its_result() {
        let calls = ChatMessage {
            role: Role::Assistant,
            chunks: vec![Chunk::ToolCall {
                tool_call_id: "a".into(),
                tool_name: "shot".into(),
                input: json!({}),
                step_id: None,
            }],
        };
        let result = ChatMessage {
            role: Role::Tool,
            chunks: vec![
                Chunk::ToolResult {
                    tool_call_id: "a".into(),
                    tool_name: "shot".into(),
                    content: "took a".into(),
                    is_error: false,
                    step_id: None,
                },
                Chunk::text("[Compacted image]: a red square"),
            ],
        };
        let history = vec![ChatMessage::user("look"), calls, result];
        let body = serde_json::to_value(request_body("m", &history, &[], None, None, Images::Send)).unwrap();
        assert_eq!(
            body["messages"].as_array().unwrap()[2..],
            [
                json!({"role": "tool", "tool_call_id": "a", "content": "took a"}),
                json!({"role": "user", "content": [
                    {"type": "text", "text": "The image(s) returned by the `shot` call a:"},
                    {"type": "text", "text": "[Compacted image]: a red square"}]}),
            ]
        );
    }

    #[test]
    fn tool_call_deltas_are_assembled_by_index() {
        let mut a = Assembler::default();
        let d = |v: Value| json!({"choices": [{"index": 0, "delta": v}]});
        a.feed(&d(json!({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "write", "arguments": "{\"x\""}}]}))).unwrap();
        a.feed(&d(
            json!({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "read", "arguments": ""}}]}),
        ))
        .unwrap();
        a.feed(&d(json!({"tool_calls": [{"index": 1, "function": {"arguments": ": 1}"}}]}))).unwrap();
        a.feed(&d(json!({"tool_calls": [{"index": 0, "function": {"arguments": "not json"}}]}))).unwrap();
        a.feed(&json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})).unwrap();
        let out = a.finish(true).unwrap();
        assert_eq!(
            out,
            vec![
                ProviderEvent::ToolCall { id: "a".into(), name: "read".into(), input: json!("not json") },
                ProviderEvent::ToolCall { id: "b".into(), name: "write".into(), input: json!({"x": 1}) },
                ProviderEvent::Finish(FinishReason::ToolCalls),
            ]
        );
    }

    #[test]
    fn a_cut_stream_is_an_error() {
        let mut a = Assembler::default();
        a.feed(&json!({"choices": [{"delta": {"content": "hal"}}]})).unwrap();
        assert!(a.finish(false).unwrap_err().retryable);
    }

    #[test]
    fn in_band_errors_surface() {
        let e = Assembler::default()
            .feed(&json!({"error": {"message": "rate limited", "code": 429}}))
            .unwrap_err();
        assert_eq!((e.message.as_str(), e.code.as_deref(), e.retryable), ("rate limited", Some("429"), true));
    }
}
