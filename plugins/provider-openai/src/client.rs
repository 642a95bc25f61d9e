//! One named credential's connection to an OpenAI-compatible endpoint,
//! built on `async-openai` (its `byot` streaming with our own JSON), with
//! its retries disabled — the turn loop owns retry policy — and HTTP errors
//! kept whole (status, server message, `Retry-After`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use async_openai::Client;
use dispatch_contracts::protocol::provider::{ProviderError, ProviderEvent};
use dispatch_contracts::provider::{EventSender, ModelEntry};
use futures::StreamExt as _;
use serde_json::Value;

use crate::convert::{error_value, Assembler, RequestBody};

/// A credential as configured. `Debug` never shows the key.
#[derive(Clone)]
pub struct Credential {
    /// Its name: the `<credential>` in `<credential>/<model>`.
    pub name: String,
    /// E.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// The secret.
    pub api_key: String,
    /// A fixed model list; `None` = ask the server's `/models`.
    pub models: Option<Vec<String>>,
    /// Per-model context windows.
    pub context_windows: BTreeMap<String, u64>,
    /// Whether its models are shown images (users' attachments, tools'
    /// images); `false` for text-only endpoints, which refuse them.
    pub images: bool,
    /// The request field that bounds an answer (`max_tokens` or
    /// `max_completion_tokens`).
    pub max_tokens_field: &'static str,
}

impl Credential {
    /// The base URL without its userinfo (`user:password@`), for messages
    /// and logs.
    pub fn shown_base_url(&self) -> String {
        match self.userinfo() {
            Some(info) => self.base_url.replacen(&format!("{info}@"), "", 1),
            None => self.base_url.clone(),
        }
    }

    /// The `user:password` part of the base URL, if any.
    fn userinfo(&self) -> Option<&str> {
        let rest = self.base_url.split_once("://")?.1;
        let authority = rest.split(['/', '?', '#']).next()?;
        authority.rsplit_once('@').map(|(info, _)| info).filter(|i| !i.is_empty())
    }

    /// `text` with every secret of this credential — the key, the base URL's
    /// userinfo and its password — replaced: a server that echoes the
    /// request's headers, or an error that quotes the URL, must not put
    /// them into an event the client and the model see.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        let password = self.userinfo().and_then(|i| i.split_once(':')).map(|(_, p)| p);
        for secret in [Some(self.api_key.as_str()), self.userinfo(), password].into_iter().flatten() {
            if secret.len() >= 4 {
                out = out.replace(secret, "[redacted]");
            }
        }
        out
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("base_url", &self.shown_base_url())
            .field("api_key", &if self.api_key.is_empty() { "<none>" } else { "<redacted>" })
            .field("models", &self.models)
            .finish()
    }
}

/// Timeouts of every request.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP (+TLS) connect.
    pub connect: Duration,
    /// From sending the request to the first streamed event.
    pub first_byte: Duration,
    /// Longest silence between two pieces of the body.
    pub idle: Duration,
}

/// An HTTP answer that was not 2xx, kept whole.
#[derive(Debug, thiserror::Error)]
#[error("HTTP {status}: {body}")]
struct HttpStatus {
    status: u16,
    retry_after: Option<Duration>,
    body: String,
}

/// A client for one credential.
#[derive(Clone)]
pub struct OpenAiClient {
    credential: Credential,
    client: Client<OpenAIConfig>,
    timeouts: Timeouts,
}

/// The longest `Retry-After` honoured: a server's value is a hint, and the
/// turn loop's retry budget is far shorter anyway.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How much of an error answer's body is kept: enough for any server's
/// message; the rest is never read, so a huge body cannot exhaust memory.
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// A server's `Retry-After` (RFC 9110: delay-seconds or an HTTP-date),
/// clamped to [`MAX_RETRY_AFTER`]. Anything else is ignored. `now` is
/// passed in so the date form is testable.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        // Compare before converting: `Duration::from_secs_f64` panics on
        // values it cannot represent (1e20 did, before this check).
        return Some(if secs >= MAX_RETRY_AFTER.as_secs_f64() {
            MAX_RETRY_AFTER
        } else {
            Duration::from_secs_f64(secs)
        });
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO).min(MAX_RETRY_AFTER))
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    parse_retry_after(headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?, std::time::SystemTime::now())
}

/// Read at most [`MAX_ERROR_BODY`] bytes of an error answer's body.
async fn capped_body(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(MAX_ERROR_BODY - body.len())]),
            _ => break,
        }
    }
    let mut text = String::from_utf8_lossy(&body).into_owned();
    if body.len() >= MAX_ERROR_BODY {
        text.push_str(" […]");
    }
    text
}

impl OpenAiClient {
    /// Build the client (no I/O happens here).
    pub fn new(credential: Credential, timeouts: Timeouts) -> Result<Self, String> {
        // reqwest (built without a default TLS provider) panics when no rustls
        // provider is installed; install ring's once. This library has its own
        // copy of rustls, so this affects nobody else in the process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.idle)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        // Clear the org/project headers OpenAIConfig picks up from the
        // environment: they must not leak to third-party servers.
        let config = OpenAIConfig::new()
            .with_api_base(credential.base_url.trim_end_matches('/'))
            .with_api_key(credential.api_key.clone())
            .with_org_id("")
            .with_project_id("");
        let exec = http.clone();
        // Our own executor: no retries, and non-2xx answers kept whole.
        let service = tower::service_fn(move |factory: HttpRequestFactory| {
            let http = exec.clone();
            async move {
                let request = factory.build().await?;
                let response = http.execute(request).await.map_err(OpenAIError::Reqwest)?;
                if response.status().is_success() {
                    return Ok(response);
                }
                let status = response.status().as_u16();
                let retry_after = retry_after(response.headers());
                let body = capped_body(response).await;
                Err(OpenAIError::Boxed(Box::new(HttpStatus { status, retry_after, body })))
            }
        });
        let client = Client::with_config(config).with_http_client(http).with_http_service(service);
        Ok(OpenAiClient { credential, client, timeouts })
    }

    /// The credential.
    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// The provider error for `e`, with the credential's secrets redacted.
    fn classify(&self, e: OpenAIError) -> ProviderError {
        let mut err = self.classify_raw(e);
        err.message = self.credential.redact(&err.message);
        err
    }

    fn classify_raw(&self, e: OpenAIError) -> ProviderError {
        let base = &self.credential.shown_base_url();
        match e {
            OpenAIError::Boxed(b) => match b.downcast_ref::<HttpStatus>() {
                Some(h) => {
                    let parsed: Option<Value> = serde_json::from_str(&h.body).ok();
                    let inner = parsed.as_ref().and_then(|v| v.get("error").cloned().or(Some(v.clone())));
                    let mut err = match inner {
                        Some(v) if v.get("message").is_some() => error_value(&v, Some(h.status)),
                        _ => error_value(&Value::String(truncate(&h.body, 500)), Some(h.status)),
                    };
                    if err.message.starts_with('"') {
                        err.message = truncate(&h.body, 500);
                    }
                    err.message = format!("HTTP {}: {}", h.status, err.message);
                    err.retry_after = h.retry_after;
                    err
                }
                None => ProviderError::fatal(b.to_string(), None),
            },
            OpenAIError::Reqwest(r) if r.is_connect() => {
                ProviderError::retryable(format!("cannot connect to {base}: {}", source_chain(&r)), None)
            }
            OpenAIError::Reqwest(r) if r.is_timeout() => {
                ProviderError::retryable(format!("{base} did not answer in time: {}", source_chain(&r)), None)
            }
            OpenAIError::Reqwest(r) => {
                ProviderError::retryable(format!("request to {base} failed: {}", source_chain(&r)), None)
            }
            OpenAIError::JSONDeserialize(e, raw) => ProviderError::fatal(
                format!("the server sent a malformed stream line ({e}): {}", truncate(&raw, 200)),
                None,
            ),
            OpenAIError::StreamError(e) => {
                ProviderError::retryable(format!("the stream from {base} broke: {e}"), None)
            }
            OpenAIError::ApiError(api) => {
                let status = api.status_code.as_u16();
                let mut err = ProviderError::fatal(
                    format!("HTTP {status}: {}", api.api_error.message),
                    Some(status.to_string()),
                );
                err.retryable = status == 429 || status == 408 || status >= 500;
                err
            }
            other => ProviderError::fatal(other.to_string(), None),
        }
    }

    /// Stream one step into `tx`. Never panics and never hangs: every
    /// failure (including timeouts) becomes one error event.
    pub async fn produce(self, body: RequestBody, tx: EventSender) {
        let first_byte = self.timeouts.first_byte;
        let start = async {
            let mut stream = self.client.chat().create_stream_byot::<_, Value>(&body).await?;
            let first = stream.next().await;
            Ok::<_, OpenAIError>((stream, first))
        };
        let (mut stream, mut item) = match tokio::time::timeout(first_byte, start).await {
            Err(_) => {
                let _ = tx.unbounded_send(Err(ProviderError::retryable(
                    format!(
                        "{} sent nothing within {} ms (first-byte timeout)",
                        self.credential.shown_base_url(),
                        first_byte.as_millis()
                    ),
                    None,
                )));
                return;
            }
            Ok(Err(e)) => {
                let _ = tx.unbounded_send(Err(self.classify(e)));
                return;
            }
            Ok(Ok(pair)) => pair,
        };
        let mut assembler = Assembler::default();
        let mut seen_end = false;
        loop {
            match item {
                None => break,
                Some(Err(e)) => {
                    let _ = tx.unbounded_send(Err(self.classify(e)));
                    return;
                }
                Some(Ok(chunk)) => {
                    let has_finish = chunk
                        .get("choices")
                        .and_then(|c| c.get(0))
                        .and_then(|c| c.get("finish_reason"))
                        .is_some_and(|f| !f.is_null());
                    match assembler.feed(&chunk) {
                        Ok(events) => {
                            for e in events {
                                if tx.unbounded_send(Ok(e)).is_err() {
                                    return; // the reader went away
                                }
                            }
                        }
                        Err(e) => {
                            let _ = tx.unbounded_send(Err(e));
                            return;
                        }
                    }
                    seen_end |= has_finish;
                }
            }
            item = stream.next().await;
        }
        // async-openai ends the stream both on `[DONE]` and on a clean EOF;
        // a finish reason is our evidence the model finished.
        match assembler.finish(seen_end) {
            Ok(events) => {
                for e in events {
                    let _ = tx.unbounded_send(Ok::<ProviderEvent, _>(e));
                }
            }
            Err(e) => {
                let _ = tx.unbounded_send(Err(e));
            }
        }
    }

    /// The models this credential serves: the configured list, else the
    /// server's `/models` — with each model's context window and whether
    /// it takes images, where the server says (see [`listed_model`]), else
    /// from the configuration's `context_windows` and [`vision_by_name`].
    pub async fn models(&self) -> Result<Vec<ModelEntry>, ProviderError> {
        let listed: Vec<Listed> = match &self.credential.models {
            Some(list) => list.iter().map(|id| Listed { id: id.clone(), ..Listed::default() }).collect(),
            None => {
                let models = self.client.models();
                let fetch = models.list_byot::<Value>();
                let listed = tokio::time::timeout(self.timeouts.first_byte, fetch)
                    .await
                    .map_err(|_| ProviderError::retryable("listing models timed out", None))?
                    .map_err(|e| self.classify(e))?;
                listed
                    .get("data")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(listed_model)
                    .collect()
            }
        };
        Ok(listed
            .into_iter()
            .map(|m| {
                let context_window =
                    m.context_window.or_else(|| self.credential.context_windows.get(&m.id).copied());
                // A text-only endpoint (`images = false`) takes no images,
                // whatever its models could do elsewhere.
                let vision = self.credential.images && m.vision.unwrap_or_else(|| vision_by_name(&m.id));
                ModelEntry {
                    context_window,
                    vision: Some(vision),
                    name: format!("{}/{}", self.credential.name, m.id),
                }
            })
            .collect())
    }
}

/// One model of a `/models` answer, as far as it says.
#[derive(Debug, Default, PartialEq)]
pub struct Listed {
    /// Its id.
    pub id: String,
    /// Its context window, if the server reports one.
    pub context_window: Option<u64>,
    /// Whether it takes images, if the server reports it.
    pub vision: Option<bool>,
}

/// Read one entry of an OpenAI-compatible `/models` answer. Servers
/// report the window under different names: `context_length` (OpenRouter,
/// and its `top_provider.context_length`), `max_model_len` (vLLM),
/// `context_window`, `max_context_length`; and image input as
/// `architecture.input_modalities` (OpenRouter), `architecture.modality`
/// (`"text+image->text"`) or `capabilities.vision`.
pub fn listed_model(entry: &Value) -> Option<Listed> {
    let id = entry.get("id")?.as_str()?.to_owned();
    let number = |v: Option<&Value>| v.and_then(Value::as_u64).filter(|n| *n > 0);
    let context_window = ["context_length", "max_model_len", "context_window", "max_context_length"]
        .iter()
        .find_map(|k| number(entry.get(*k)))
        .or_else(|| number(entry.pointer("/top_provider/context_length")));
    let arch = entry.get("architecture");
    let vision = arch
        .and_then(|a| a.get("input_modalities"))
        .and_then(Value::as_array)
        .map(|m| m.iter().any(|x| x == "image"))
        .or_else(|| {
            arch.and_then(|a| a.get("modality"))
                .and_then(Value::as_str)
                .map(|m| m.split("->").next().unwrap_or("").contains("image"))
        })
        .or_else(|| entry.pointer("/capabilities/vision").and_then(Value::as_bool));
    Some(Listed { id, context_window, vision })
}

/// Model families that take images, for servers that do not say: matched
/// as substrings of the lower-cased model id (without its vendor prefix).
/// The README lists them; a credential with `images = false` overrides.
pub const VISION_NAMES: &[&str] = &[
    "gpt-4o",
    "gpt-4.1",
    "gpt-4-turbo",
    "gpt-4-vision",
    "gpt-5",
    "o3",
    "o4-",
    "claude-3",
    "claude-opus-4",
    "claude-sonnet-4",
    "claude-haiku-4",
    "gemini",
    "gemma-3",
    "llava",
    "pixtral",
    "qwen-vl",
    "qwen2-vl",
    "qwen2.5-vl",
    "qwen3-vl",
    "umans-qwen",
    "kimi-k2.5",
    "kimi-vl",
    "umans-kimi",
    "glm-4v",
    "glm-4.5v",
    "grok-2-vision",
    "grok-4",
    "llama-3.2-11b-vision",
    "llama-3.2-90b-vision",
    "llama-4",
    "mistral-small-3.1",
    "mistral-medium-3",
    "phi-4-multimodal",
    "minicpm-v",
    "internvl",
    "-vision",
    "-vl-",
];

/// Whether a model id names a family of [`VISION_NAMES`].
pub fn vision_by_name(id: &str) -> bool {
    let lower = id.to_ascii_lowercase();
    let name = lower.rsplit('/').next().unwrap_or(&lower);
    VISION_NAMES.iter().any(|v| name.contains(v)) || name.ends_with("-vl")
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_models_entry_gives_its_window_and_image_input_under_any_of_the_usual_names() {
        use serde_json::json;
        let read = |v: Value| listed_model(&v).unwrap();
        let or = read(json!({"id": "vendor/m", "context_length": 200000,
            "architecture": {"input_modalities": ["text", "image"], "modality": "text+image->text"}}));
        assert_eq!(or, Listed { id: "vendor/m".into(), context_window: Some(200000), vision: Some(true) });
        let vllm = read(json!({"id": "local", "max_model_len": 32768}));
        assert_eq!((vllm.context_window, vllm.vision), (Some(32768), None));
        let top = read(
            json!({"id": "x", "top_provider": {"context_length": 1000}, "architecture": {"modality": "text->text+image"}}),
        );
        assert_eq!(
            (top.context_window, top.vision),
            (Some(1000), Some(false)),
            "an image output is not input"
        );
        assert_eq!(read(json!({"id": "y", "capabilities": {"vision": true}})).vision, Some(true));
        assert!(listed_model(&json!({"object": "model"})).is_none());
        assert!(vision_by_name("openai/gpt-4o-mini") && vision_by_name("Qwen/Qwen2.5-VL-7B-Instruct"));
        assert!(!vision_by_name("deepseek-chat") && !vision_by_name("gpt-3.5-turbo"));
    }

    use super::*;
    use std::time::SystemTime;

    #[test]
    fn retry_after_takes_seconds_or_an_http_date_and_is_clamped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 1.5 ", now), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("1e20", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("NaN", now), None);
        assert_eq!(parse_retry_after("inf", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        let in_ten = httpdate::fmt_http_date(now + Duration::from_secs(10));
        assert_eq!(parse_retry_after(&in_ten, now), Some(Duration::from_secs(10)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(10));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        let far = httpdate::fmt_http_date(now + Duration::from_secs(86_400));
        assert_eq!(parse_retry_after(&far, now), Some(MAX_RETRY_AFTER));
    }
}
