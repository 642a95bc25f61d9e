//! # provider-scripted — an offline model that plays a script
//!
//! The embedded default provider: with no credential configured, `dispatch
//! serve` works with it, and the end-to-end tests use it. It is honestly a
//! script player, not a model. Its one model is `scripted/demo`.
//!
//! The script (JSON) comes from `[plugin.config] script = "path"`, else the
//! `DISPATCH_SCRIPT` environment variable, else the bundled
//! `default-script.json` (a greeting, a compaction summary, and a turn that calls `read_file` and
//! then answers). Format:
//!
//! ```json
//! {"replies": [
//!   {"match": "regex on the latest user message (optional; first match wins, no match = the last reply)",
//!    "steps": [
//!      {"reasoning": "optional", "text": "optional", "delayMs": 0, "chunkChars": 16,
//!       "toolCalls": [{"name": "read_file", "input": {"path": "README.md"}}],
//!       "usage": {"inputTokens": 10, "outputTokens": 5}},   (else estimated: a token per 4 characters)
//!      {"error": {"status": 429, "message": "overloaded"}},
//!      {"text": "final answer"}
//!    ]}
//! ]}
//! ```
//!
//! Each step is one model round-trip of the turn, in order: the step is
//! picked by counting the assistant messages since the latest user message,
//! plus the failed attempts already made at the same point (so an `error`
//! step fails once and a retry moves on). Text and reasoning stream in
//! chunks of `chunkChars` characters with `delayMs` between them. An `error`
//! step fails the round-trip: status 429, 5xx and 408 are retryable, others
//! fatal. Past the last step the provider answers with an empty finish.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dispatch_abi::runtime::PluginRuntime;
use dispatch_abi::{codes, Context, Error, Plugin, PluginManifest};
use dispatch_contracts::protocol::wire::{ChatMessage, Chunk, FinishReason, Role, Usage};
use dispatch_contracts::provider::{
    self, BoxFuture, EventSender, ModelEntry, ModelProvider, ProviderError, ProviderEvent, ProviderServer,
    Registration, StepSpec,
};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// The bus service this provider answers on.
pub const SERVICE: &str = "provider.scripted";

/// The credential (and model prefix) it serves.
pub const CREDENTIAL: &str = "scripted";
/// Its one model.
pub const MODEL: &str = "scripted/demo";

const DEFAULT_SCRIPT: &str = include_str!("../default-script.json");

/// A script.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Script {
    /// The replies, tried in order.
    pub replies: Vec<Reply>,
    /// The context window `scripted/demo` reports (default 128 000): a
    /// small one lets automatic compaction be tried offline.
    #[serde(default)]
    pub context_window: Option<u64>,
    /// Whether `scripted/demo` reports taking images (default `false`).
    #[serde(default)]
    pub vision: bool,
}

/// A token estimate for text: a quarter of its characters, rounded up
/// (what a step reports when its script gives no `usage`, so context sizes
/// and compaction thresholds work offline).
pub fn estimate_tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4)
}

/// The characters of a step's input: its system prompt and every chunk's
/// text-like content.
fn input_chars(system_prompt: Option<&str>, messages: &[ChatMessage]) -> usize {
    let chunk_chars = |c: &Chunk| match c {
        Chunk::Text { text } | Chunk::Thinking { text } => text.len(),
        Chunk::ToolCall { tool_name, input, .. } => tool_name.len() + input.to_string().len(),
        Chunk::ToolResult { content, .. } => content.len(),
        _ => 0,
    };
    system_prompt.map_or(0, str::len)
        + messages.iter().flat_map(|m| &m.chunks).map(chunk_chars).sum::<usize>()
}

/// One scripted reply: the steps of a turn.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    /// Applies when the latest user message matches (absent = always).
    #[serde(default, rename = "match", deserialize_with = "regex_opt")]
    pub pattern: Option<regex_lite::Regex>,
    /// The round-trips.
    pub steps: Vec<Step>,
}

/// One round-trip.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Step {
    /// Streamed first.
    #[serde(default)]
    pub reasoning: Option<String>,
    /// Streamed next.
    #[serde(default)]
    pub text: Option<String>,
    /// Pause between chunks.
    #[serde(default)]
    pub delay_ms: u64,
    /// Characters per chunk (default 16).
    #[serde(default)]
    pub chunk_chars: Option<usize>,
    /// Tool calls, after the text.
    #[serde(default)]
    pub tool_calls: Vec<ScriptedCall>,
    /// Reported usage.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Fail the round-trip instead.
    #[serde(default)]
    pub error: Option<ScriptedError>,
}

/// A scripted tool call.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedCall {
    /// The tool.
    pub name: String,
    /// Its input.
    #[serde(default)]
    pub input: Value,
}

/// A scripted failure.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedError {
    /// HTTP-like status: 429/5xx/408 retryable.
    pub status: u16,
    /// The message.
    pub message: String,
}

fn regex_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<regex_lite::Regex>, D::Error> {
    let Some(s) = Option::<String>::deserialize(d)? else { return Ok(None) };
    regex_lite::Regex::new(&s)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("invalid `match` regex: {e}")))
}

impl Script {
    /// Parse a script; errors carry line and column.
    pub fn parse(text: &str) -> Result<Script, String> {
        let script: Script = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if script.replies.is_empty() {
            return Err("the script has no replies".into());
        }
        if let Some(i) = script.replies.iter().position(|r| r.steps.is_empty()) {
            return Err(format!("reply #{} has no steps", i + 1));
        }
        Ok(script)
    }

    /// The reply for a conversation: the first whose pattern matches the
    /// latest user message, else the last.
    pub fn reply_for(&self, latest_user: &str) -> &Reply {
        self.replies
            .iter()
            .find(|r| r.pattern.as_ref().is_some_and(|p| p.is_match(latest_user)))
            .or_else(|| self.replies.iter().find(|r| r.pattern.is_none()))
            .or(self.replies.last())
            .unwrap_or(&self.replies[0])
    }
}

/// The text of the latest user message and the number of assistant
/// messages after it (= which step of the turn this is).
fn position(messages: &[ChatMessage]) -> (String, usize) {
    let last_user = messages.iter().rposition(|m| m.role == Role::User);
    let text = last_user
        .map(|i| {
            messages[i]
                .chunks
                .iter()
                .filter_map(|c| match c {
                    Chunk::Text { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    let start = last_user.map_or(0, |i| i + 1);
    let steps = messages[start..].iter().filter(|m| m.role == Role::Assistant).count();
    (text, steps)
}

fn chunks(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(size.max(1)).map(|c| c.iter().collect()).collect()
}

struct State {
    script: Script,
    /// Failed attempts per (history length, user text): so a retry advances.
    attempts: Mutex<HashMap<(usize, String), usize>>,
    next_call: std::sync::atomic::AtomicU64,
}

impl ModelProvider for State {
    fn models(&self) -> BoxFuture<Vec<ModelEntry>> {
        let window = self.script.context_window.unwrap_or(128_000);
        Box::pin(std::future::ready(vec![ModelEntry {
            name: MODEL.into(),
            context_window: Some(window),
            vision: Some(self.script.vision),
        }]))
    }

    fn open(&self, step: StepSpec<'_>, events: EventSender) -> Result<BoxFuture<()>, Error> {
        if step.model != MODEL {
            return Err(Error::new(
                codes::NOT_FOUND,
                format!("unknown model `{}`: the scripted provider only has `{MODEL}`", step.model),
            ));
        }
        let input = estimate_tokens(input_chars(step.system_prompt, step.messages));
        Ok(Box::pin(play(self.plan_for(step.messages, input), events)))
    }
}

impl State {
    fn plan_for(&self, messages: &[ChatMessage], input_tokens: u64) -> Vec<Planned> {
        let (user, steps) = position(messages);
        let key = (messages.len(), user.clone());
        let tries = *self.attempts.lock().unwrap_or_else(PoisonError::into_inner).get(&key).unwrap_or(&0);
        let reply = self.script.reply_for(&user);
        let index = steps + tries;
        let plan: Vec<Planned> = match reply.steps.get(index) {
            None => vec![Planned::Event(ProviderEvent::Finish(FinishReason::Stop))],
            Some(step) => {
                if step.error.is_some() {
                    *self.attempts.lock().unwrap_or_else(PoisonError::into_inner).entry(key).or_default() +=
                        1;
                }
                self.plan(step, input_tokens)
            }
        };
        plan
    }

    fn plan(&self, step: &Step, input_tokens: u64) -> Vec<Planned> {
        let size = step.chunk_chars.unwrap_or(16);
        let delay = Duration::from_millis(step.delay_ms);
        let mut out = Vec::new();
        if let Some(err) = &step.error {
            let retryable = err.status == 429 || err.status == 408 || err.status >= 500;
            let e = ProviderError {
                message: format!("HTTP {}: {}", err.status, err.message),
                code: Some(err.status.to_string()),
                retryable,
                retry_after: None,
            };
            out.push(Planned::Fail(e));
            return out;
        }
        for (text, reasoning) in [(&step.reasoning, true), (&step.text, false)] {
            for piece in text.as_deref().map(|t| chunks(t, size)).unwrap_or_default() {
                out.push(Planned::Wait(delay));
                out.push(Planned::Event(if reasoning {
                    ProviderEvent::ReasoningDelta(piece)
                } else {
                    ProviderEvent::TextDelta(piece)
                }));
            }
        }
        for call in &step.tool_calls {
            let n = self.next_call.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            out.push(Planned::Event(ProviderEvent::ToolCall {
                id: format!("scripted-call-{n}"),
                name: call.name.clone(),
                input: call.input.clone(),
            }));
        }
        // The script's usage, else an estimate.
        let usage = step.usage.unwrap_or_else(|| {
            let produced = step.text.as_deref().map_or(0, str::len)
                + step.reasoning.as_deref().map_or(0, str::len)
                + step.tool_calls.iter().map(|c| c.name.len() + c.input.to_string().len()).sum::<usize>();
            Usage { input_tokens, output_tokens: estimate_tokens(produced), ..Usage::default() }
        });
        out.push(Planned::Event(ProviderEvent::Usage(usage)));
        let reason = if step.tool_calls.is_empty() { FinishReason::Stop } else { FinishReason::ToolCalls };
        out.push(Planned::Event(ProviderEvent::Finish(reason)));
        out
    }
}

enum Planned {
    Wait(Duration),
    Event(ProviderEvent),
    Fail(ProviderError),
}

async fn play(plan: Vec<Planned>, tx: EventSender) {
    for p in plan {
        let sent = match p {
            Planned::Wait(d) if d.is_zero() => Ok(()),
            Planned::Wait(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            Planned::Event(e) => tx.unbounded_send(Ok(e)),
            Planned::Fail(e) => tx.unbounded_send(Err(e)),
        };
        if sent.is_err() {
            return; // the reader went away
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Path of the script (relative paths: to the host's working directory).
    script: Option<PathBuf>,
    /// Register with the `models` catalog (default true).
    register: Option<bool>,
}

/// The plugin.
#[derive(Debug)]
pub struct ScriptedProvider(ProviderServer);

/// The largest script read: far beyond any real script.
pub const MAX_SCRIPT_BYTES: u64 = 16 * 1024 * 1024;

/// Read a script file: a regular file (checked before opening, so a FIFO
/// cannot block activation) of at most [`MAX_SCRIPT_BYTES`] (so
/// `/dev/zero` cannot grow memory without bound).
fn read_script(path: &std::path::Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_SCRIPT_BYTES + 1), &mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_SCRIPT_BYTES {
        return Err(format!("larger than {} MiB", MAX_SCRIPT_BYTES >> 20));
    }
    Ok(text)
}

fn load_script(cfg: &Config) -> Result<(Script, String), Error> {
    let path = cfg.script.clone().or_else(|| std::env::var_os("DISPATCH_SCRIPT").map(PathBuf::from));
    let (text, origin) = match path {
        Some(p) => (
            read_script(&p).map_err(|e| {
                Error::new(codes::INVALID_CONFIG, format!("cannot read script {}: {e}", p.display()))
            })?,
            p.display().to_string(),
        ),
        None => (DEFAULT_SCRIPT.to_owned(), "the bundled default script".to_owned()),
    };
    let script = Script::parse(&text)
        .map_err(|e| Error::new(codes::INVALID_CONFIG, format!("malformed script {origin}: {e}")))?;
    Ok((script, origin))
}

impl Plugin for ScriptedProvider {
    fn manifest() -> PluginManifest {
        PluginManifest::new("provider-scripted", env!("CARGO_PKG_VERSION"))
            .description("Offline provider that plays scripted replies (model scripted/demo)")
            .depends_on("models")
            .provides("provider", CREDENTIAL)
            .provides("service", SERVICE)
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let cfg: Config = ctx.config()?;
        let (script, origin) = load_script(&cfg)?;
        let state = Arc::new(State { script, attempts: Mutex::default(), next_call: Default::default() });
        let registration = Registration {
            provider: "provider-scripted".into(),
            service: SERVICE.into(),
            credentials: if cfg.register.unwrap_or(true) { vec![CREDENTIAL.into()] } else { Vec::new() },
        };
        let runtime = PluginRuntime::new("provider-scripted", 1)?;
        let server = provider::serve(ctx.host(), registration, state, runtime)?;
        tracing::info!(script = %origin, "scripted provider ready");
        Ok(ScriptedProvider(server))
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        self.0.stop();
        Ok(())
    }
}

dispatch_abi::export_plugin!(ScriptedProvider);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_script_parses() {
        let s = Script::parse(DEFAULT_SCRIPT).unwrap();
        assert_eq!(s.reply_for("hello there").steps.len(), 1);
        assert_eq!(s.reply_for("what is this project?").steps.len(), 2);
        // A compaction's summary request gets a summary, not the greeting
        // its transcript may contain.
        let summary = s.reply_for("Please summarize the following conversation:\n\nuser: hello");
        assert!(summary.steps[0].text.as_deref().unwrap().starts_with("Summary"));
    }

    #[test]
    fn malformed_scripts_are_refused_with_line_and_reason() {
        let e = Script::parse("{\"replies\": [\n  {\"steps\": [{\"txt\": \"x\"}]}\n]}").unwrap_err();
        assert!(e.contains("unknown field `txt`") && e.contains("line 2"), "{e}");
        let e = Script::parse("{\"replies\": [\n {\"match\": \"(unclosed\", \"steps\": [{}]}]}").unwrap_err();
        assert!(e.contains("invalid `match` regex") && e.contains("line 2"), "{e}");
        let e = Script::parse("{\"replies\": [").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        assert_eq!(Script::parse("{\"replies\": []}").unwrap_err(), "the script has no replies");
    }

    #[test]
    fn the_step_is_the_number_of_assistant_messages_since_the_latest_user_message() {
        let msgs = vec![
            ChatMessage::user("old"),
            ChatMessage { role: Role::Assistant, chunks: vec![Chunk::text("a")] },
            ChatMessage::user("new question"),
            ChatMessage { role: Role::Assistant, chunks: vec![Chunk::text("b")] },
            ChatMessage { role: Role::Tool, chunks: vec![] },
        ];
        assert_eq!(position(&msgs), ("new question".into(), 1));
        assert_eq!(chunks("abcdefg", 3), ["abc", "def", "g"]);
    }
}
