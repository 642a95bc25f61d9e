//! # provider-openai — any OpenAI-compatible endpoint
//!
//! OpenAI, OpenRouter, vLLM, llama.cpp server, Ollama, LiteLLM, DeepSeek, …:
//! streamed chat completions with tools, reasoning deltas where the server
//! sends them (`reasoning_content` / `reasoning`), usage including cached
//! prompt tokens, through `async-openai`.
//!
//! ## Credentials
//!
//! ```toml
//! [plugin.config]
//! connect_timeout_ms = 10000      # TCP + TLS
//! first_byte_timeout_ms = 120000  # request sent → first streamed event
//! idle_timeout_ms = 120000        # longest silence inside a stream
//!
//! [[plugin.config.credentials]]
//! name = "openrouter"                          # models are "openrouter/<model>"
//! base_url = "https://openrouter.ai/api/v1"
//! api_key_env = "OPENROUTER_API_KEY"           # the key is read from this variable
//! models = ["deepseek/deepseek-chat"]          # optional; else GET /models
//! [plugin.config.credentials.context_windows]
//! "deepseek/deepseek-chat" = 64000
//! ```
//!
//! Without `credentials`, `DISPATCH_BASE_URL`, `DISPATCH_API_KEY` and
//! `DISPATCH_MODEL` define one credential named `openai` (as in the
//! original Dispatch); with none of those set, the plugin serves no models.
//! Keys are never logged.
//!
//! ## Errors
//!
//! HTTP 429, 408 and 5xx, connection failures and timeouts are retryable
//! (status and server message kept, `Retry-After` passed to the retry
//! schedule); other 4xx are fatal with the server's message; a stream that
//! breaks or sends a malformed line is an error the turn reports.

pub mod client;
pub mod convert;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dispatch_abi::runtime::PluginRuntime;
use dispatch_abi::{codes, Context, Error, Plugin, PluginManifest};
use dispatch_contracts::provider::{
    self, BoxFuture, EventSender, ModelEntry, ModelProvider, ProviderServer, Registration, StepSpec,
};
use serde::Deserialize;

use crate::client::{Credential, OpenAiClient, Timeouts};

/// The bus service this provider answers on.
pub const SERVICE: &str = "provider.openai";

/// `[plugin.config]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Named credentials.
    pub credentials: Vec<CredentialConfig>,
    /// TCP + TLS connect timeout.
    pub connect_timeout_ms: u64,
    /// Request sent → first streamed event.
    pub first_byte_timeout_ms: u64,
    /// Longest silence inside a stream.
    pub idle_timeout_ms: u64,
    /// Worker threads of the plugin's runtime.
    pub worker_threads: usize,
    /// Register with the `models` catalog (default true).
    pub register: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            credentials: Vec::new(),
            connect_timeout_ms: 10_000,
            first_byte_timeout_ms: 120_000,
            idle_timeout_ms: 120_000,
            worker_threads: 1,
            register: true,
        }
    }
}

/// One `[[plugin.config.credentials]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// The `<credential>` prefix of its models.
    pub name: String,
    /// The endpoint, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// The environment variable holding the API key (never the key itself).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// A fixed model list.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Context windows by model.
    #[serde(default)]
    pub context_windows: BTreeMap<String, u64>,
    /// Whether its models accept images (default `true`). Set `false` for a
    /// text-only endpoint: images are then left out of requests (a user's
    /// attachment becomes a note), where they would be refused.
    #[serde(default = "yes")]
    pub images: bool,
    /// The request field that bounds an answer's length, when Dispatch asks
    /// for a bound (a compaction's summary): `max_tokens` (default; what
    /// most OpenAI-compatible servers read) or `max_completion_tokens`
    /// (what OpenAI's reasoning models require).
    #[serde(default)]
    pub max_tokens_field: MaxTokensField,
}

/// [`CredentialConfig::max_tokens_field`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    /// `max_tokens`.
    #[default]
    MaxTokens,
    /// `max_completion_tokens`.
    MaxCompletionTokens,
}

impl MaxTokensField {
    /// The field's name.
    pub fn name(self) -> &'static str {
        match self {
            MaxTokensField::MaxTokens => "max_tokens",
            MaxTokensField::MaxCompletionTokens => "max_completion_tokens",
        }
    }
}

fn yes() -> bool {
    true
}

/// Build the credentials from the config, or from the `DISPATCH_*`
/// environment variables when the config has none.
pub fn credentials(cfg: &Config, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<Credential>, String> {
    let mut out = Vec::new();
    for c in &cfg.credentials {
        if c.name.is_empty() || c.name.contains('/') {
            return Err(format!("credential name `{}` must be non-empty and contain no `/`", c.name));
        }
        if out.iter().any(|o: &Credential| o.name == c.name) {
            return Err(format!("credential `{}` is configured twice", c.name));
        }
        let api_key = match &c.api_key_env {
            Some(var) => env(var).ok_or_else(|| {
                format!("credential `{}`: the environment variable `{var}` (its API key) is not set", c.name)
            })?,
            None => String::new(),
        };
        out.push(Credential {
            name: c.name.clone(),
            base_url: c.base_url.clone(),
            api_key,
            models: c.models.clone(),
            context_windows: c.context_windows.clone(),
            images: c.images,
            max_tokens_field: c.max_tokens_field.name(),
        });
    }
    if out.is_empty() {
        let base = env("DISPATCH_BASE_URL");
        let key = env("DISPATCH_API_KEY");
        if base.is_some() || key.is_some() {
            let model = env("DISPATCH_MODEL").filter(|m| !m.is_empty());
            out.push(Credential {
                name: "openai".into(),
                base_url: base.unwrap_or_else(|| "https://api.openai.com/v1".into()),
                api_key: key.unwrap_or_default(),
                models: model.map(|m| vec![m.strip_prefix("openai/").unwrap_or(&m).to_owned()]),
                context_windows: BTreeMap::new(),
                images: true,
                max_tokens_field: MaxTokensField::MaxTokens.name(),
            });
        }
    }
    Ok(out)
}

struct State {
    clients: HashMap<String, OpenAiClient>,
    /// Server-listed models, once fetched.
    listed: Mutex<HashMap<String, Vec<ModelEntry>>>,
}

impl State {
    async fn models(&self) -> Vec<ModelEntry> {
        let mut out = Vec::new();
        let mut names: Vec<&String> = self.clients.keys().collect();
        names.sort();
        for name in names {
            let cached = self.listed.lock().unwrap_or_else(PoisonError::into_inner).get(name).cloned();
            if let Some(list) = cached {
                out.extend(list);
                continue;
            }
            match self.clients[name].models().await {
                Ok(list) => {
                    self.listed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(name.clone(), list.clone());
                    out.extend(list);
                }
                Err(e) => tracing::warn!(credential = %name, error = %e, "cannot list models"),
            }
        }
        out
    }
}

/// `Arc` so `models` can hand a future that owns its state to the runtime.
struct Shared(Arc<State>);

impl ModelProvider for Shared {
    fn models(&self) -> BoxFuture<Vec<ModelEntry>> {
        let state = Arc::clone(&self.0);
        Box::pin(async move { state.models().await })
    }

    fn open(&self, step: StepSpec<'_>, events: EventSender) -> Result<BoxFuture<()>, Error> {
        let model = step.model;
        let (cred, name) = model.split_once('/').ok_or_else(|| {
            Error::new(codes::NOT_FOUND, format!("model `{model}` is not `<credential>/<model>`"))
        })?;
        let client = self
            .0
            .clients
            .get(cred)
            .cloned()
            .ok_or_else(|| Error::new(codes::NOT_FOUND, format!("unknown credential `{cred}`")))?;
        let images = if client.credential().images { convert::Images::Send } else { convert::Images::Omit };
        let body = step.memo.get::<convert::Converted>().body(
            name,
            step.messages,
            step.tools,
            step.system_prompt,
            convert::Knobs {
                effort: step.reasoning_effort,
                images,
                limit: step.max_output_tokens.map(|n| (client.credential().max_tokens_field, n)),
            },
        );
        Ok(Box::pin(client.produce(body, events)))
    }
}

/// The plugin.
#[derive(Debug)]
pub struct OpenAiProvider(ProviderServer);

impl Plugin for OpenAiProvider {
    fn manifest() -> PluginManifest {
        PluginManifest::new("provider-openai", env!("CARGO_PKG_VERSION"))
            .description("Any OpenAI-compatible endpoint, through named credentials")
            .depends_on("models")
            .provides("provider", "openai-compatible")
            .provides("service", SERVICE)
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let cfg: Config = ctx.config()?;
        let creds = credentials(&cfg, &|k| std::env::var(k).ok())
            .map_err(|e| Error::new(codes::INVALID_CONFIG, e))?;
        let timeouts = Timeouts {
            connect: Duration::from_millis(cfg.connect_timeout_ms),
            first_byte: Duration::from_millis(cfg.first_byte_timeout_ms),
            idle: Duration::from_millis(cfg.idle_timeout_ms),
        };
        let runtime = PluginRuntime::new("provider-openai", cfg.worker_threads)?;
        let mut clients = HashMap::new();
        for c in &creds {
            tracing::info!(credential = ?c, "credential configured");
            let client = OpenAiClient::new(c.clone(), timeouts).map_err(Error::msg)?;
            clients.insert(c.name.clone(), client);
        }
        if clients.is_empty() {
            tracing::info!("no credentials configured (set DISPATCH_BASE_URL / DISPATCH_API_KEY, or [plugin.config] credentials)");
        }
        let names: Vec<String> = creds.iter().map(|c| c.name.clone()).collect();
        let state = Shared(Arc::new(State { clients, listed: Mutex::default() }));
        let registration = Registration {
            provider: "provider-openai".into(),
            service: SERVICE.into(),
            credentials: if cfg.register { names } else { Vec::new() },
        };
        Ok(OpenAiProvider(provider::serve(ctx.host(), registration, Arc::new(state), runtime)?))
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        self.0.stop();
        Ok(())
    }
}

dispatch_abi::export_plugin!(OpenAiProvider);

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn the_dispatch_environment_defines_an_openai_credential() {
        let c = credentials(
            &Config::default(),
            &env(&[
                ("DISPATCH_BASE_URL", "http://x/v1"),
                ("DISPATCH_API_KEY", "sk-1"),
                ("DISPATCH_MODEL", "m1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].name.as_str(), c[0].base_url.as_str(), c[0].api_key.as_str()),
            ("openai", "http://x/v1", "sk-1")
        );
        assert_eq!(c[0].models, Some(vec!["m1".to_owned()]));
        assert!(credentials(&Config::default(), &env(&[])).unwrap().is_empty());
    }

    #[test]
    fn keys_come_from_the_named_variable_and_are_never_printed() {
        let cfg: Config = serde_json::from_value(serde_json::json!({"credentials": [
            {"name": "or", "base_url": "https://openrouter.ai/api/v1", "api_key_env": "OR_KEY"}]}))
        .unwrap();
        let c = credentials(&cfg, &env(&[("OR_KEY", "sk-secret-123")])).unwrap();
        assert_eq!(c[0].api_key, "sk-secret-123");
        assert!(!format!("{:?}", c[0]).contains("sk-secret"));
        let e = credentials(&cfg, &env(&[])).unwrap_err();
        assert!(e.contains("`OR_KEY`") && e.contains("not set"), "{e}");
    }
}
