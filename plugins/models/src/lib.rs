//! # models — the model catalog
//!
//! Provider plugins register the credentials they serve; the catalog lists
//! every provider's models (`<credential>/<model>`, the `GET /models` body)
//! and resolves a model name to the provider service that streams it.
//!
//! Service `models` (`dispatch_contracts::catalog`):
//! `register`, `list`, `resolve`. Config:
//!
//! ```toml
//! [plugin.config]
//! default_model = "scripted/demo"   # used when a turn names no model
//! ```
//!
//! Without `default_model`, `DISPATCH_MODEL` is used (`name` means
//! `openai/name`), else the first model listed.
//!
//! # Aliases
//!
//! `aliases = { "<name a client sends>" = "<credential>/<model>" | "default" }`
//! answers a name no provider serves with a configured model, as model
//! gateways do. Why: a client may send a model of its own choosing — the web
//! frontend's first message carries its built-in default — and an operator
//! can map it instead of failing the user's first message. An alias never
//! shadows a model a provider serves, it is listed by `GET /models` after
//! the real models with `modelInfo[alias].aliasOf` naming what answers it,
//! and any other unknown name is still refused.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use dispatch_abi::{codes, to_json, Context, Error, Host, Plugin, PluginManifest, Service};
use dispatch_contracts::catalog::{CatalogRequest, ModelInfo, ModelList, Resolved, CATALOG};
use dispatch_contracts::http;
use dispatch_contracts::openapi::Operation;
use dispatch_contracts::provider::{self, ProviderModels, ProviderRequest};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    default_model: Option<String>,
    aliases: BTreeMap<String, String>,
}

/// An alias's target meaning "the catalog's default model".
const DEFAULT_TARGET: &str = "default";

#[derive(Debug, Clone)]
struct Registration {
    provider: String,
    /// The provider's service, typed for the one op the catalog sends.
    service: Service<ProviderRequest, ProviderModels>,
    credentials: Vec<String>,
}

#[derive(Debug, Clone)]
struct Catalog {
    host: Host,
    default_model: Option<String>,
    aliases: Arc<BTreeMap<String, String>>,
    registrations: Arc<Mutex<Vec<Registration>>>,
}

impl Catalog {
    fn snapshot(&self) -> Vec<Registration> {
        self.registrations.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    async fn list(&self) -> ModelList {
        let mut out = self.provided().await;
        for (alias, target) in self.aliases.iter() {
            if out.models.contains(alias) {
                continue;
            }
            let target = match target.as_str() {
                DEFAULT_TARGET => match self.default_model_from(&out) {
                    Ok(m) => m,
                    Err(_) => continue,
                },
                t => t.to_owned(),
            };
            let mut info = out.model_info.get(&target).cloned().unwrap_or_default();
            info.alias_of = Some(target);
            out.model_info.insert(alias.clone(), info);
            out.models.push(alias.clone());
        }
        out
    }

    /// The providers' own models.
    async fn provided(&self) -> ModelList {
        let mut out = ModelList::default();
        for reg in self.snapshot() {
            match self.host.call(&reg.service, &ProviderRequest::Models).await {
                Ok(models) => {
                    for m in models.models {
                        // `vision` is told only as `true` (WIRE.md).
                        let vision = m.vision.filter(|v| *v);
                        if m.context_window.is_some() || vision.is_some() {
                            out.model_info.insert(
                                m.name.clone(),
                                ModelInfo {
                                    context_window: m.context_window,
                                    vision,
                                    ..ModelInfo::default()
                                },
                            );
                        }
                        out.models.push(m.name);
                    }
                }
                Err(e) => {
                    tracing::warn!(provider = %reg.provider, error = %e, "cannot list the provider's models")
                }
            }
        }
        out
    }

    async fn resolve(&self, model: Option<String>) -> Result<Resolved, Error> {
        let model = match model.filter(|m| !m.trim().is_empty()) {
            Some(m) => match self.aliases.get(&m) {
                // A name some provider serves is that model, never an alias.
                Some(target) if !self.served(&m).await => {
                    let target =
                        if target == DEFAULT_TARGET { self.default_model().await? } else { target.clone() };
                    tracing::debug!(alias = %m, model = %target, "model alias");
                    target
                }
                _ => m,
            },
            None => self.default_model().await?,
        };
        let Some((credential, rest)) = model.split_once('/').filter(|(c, r)| !c.is_empty() && !r.is_empty())
        else {
            return Err(Error::new(
                codes::NOT_FOUND,
                format!("model `{model}` is not of the form `<credential>/<model>`"),
            ));
        };
        let regs = self.snapshot();
        let Some(reg) = regs.iter().find(|r| r.credentials.iter().any(|c| c == credential)) else {
            let mut known: Vec<&str> =
                regs.iter().flat_map(|r| r.credentials.iter().map(String::as_str)).collect();
            known.sort_unstable();
            return Err(Error::new(
                codes::NOT_FOUND,
                format!(
                    "unknown credential `{credential}` in model `{model}`; configured credentials: {}",
                    if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                ),
            ));
        };
        // Check the model when the provider can say what it has.
        if let Ok(list) = self.host.call(&reg.service, &ProviderRequest::Models).await {
            let names: Vec<&str> = list.models.iter().map(|m| m.name.as_str()).collect();
            if !names.is_empty() && !names.contains(&model.as_str()) {
                return Err(Error::new(
                    codes::NOT_FOUND,
                    format!(
                        "unknown model `{rest}` for credential `{credential}`; it has: {}",
                        names.join(", ")
                    ),
                ));
            }
        }
        Ok(Resolved { model, provider: reg.provider.clone(), service: reg.service.name().to_owned() })
    }

    /// Whether a registered provider lists `model` as its own.
    async fn served(&self, model: &str) -> bool {
        let Some((credential, _)) = model.split_once('/') else { return false };
        for reg in self.snapshot().iter().filter(|r| r.credentials.iter().any(|c| c == credential)) {
            if let Ok(list) = self.host.call(&reg.service, &ProviderRequest::Models).await {
                if list.models.iter().any(|m| m.name == model) {
                    return true;
                }
            }
        }
        false
    }

    async fn default_model(&self) -> Result<String, Error> {
        let provided = if self.default_model.is_some() || Self::env_model().is_some() {
            ModelList::default()
        } else {
            self.provided().await
        };
        self.default_model_from(&provided)
    }

    fn env_model() -> Option<String> {
        std::env::var("DISPATCH_MODEL").ok().filter(|m| !m.trim().is_empty())
    }

    /// The default model, given the providers' list (read only when
    /// neither the configuration nor the environment names one).
    fn default_model_from(&self, provided: &ModelList) -> Result<String, Error> {
        if let Some(m) = &self.default_model {
            return Ok(m.clone());
        }
        if let Some(m) = Self::env_model() {
            return Ok(if m.contains('/') { m } else { format!("openai/{m}") });
        }
        provided.models.first().cloned().ok_or_else(|| {
            Error::new(codes::NOT_FOUND, "no model is available: no provider has registered any")
        })
    }
}

/// The plugin.
#[derive(Debug)]
pub struct Models;

impl Plugin for Models {
    fn manifest() -> PluginManifest {
        PluginManifest::new("models", env!("CARGO_PKG_VERSION"))
            .description(
                "The model catalog: lists every provider's models and resolves a model to its provider",
            )
            .provides("service", CATALOG.name())
            .provides("service", "http:GET /models")
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let cfg: Config = ctx.config()?;
        let bad: Vec<String> = cfg
            .aliases
            .iter()
            .filter(|(alias, target)| {
                alias.trim().is_empty()
                    || (target.as_str() != DEFAULT_TARGET
                        && !target.split_once('/').is_some_and(|(c, m)| !c.is_empty() && !m.is_empty()))
            })
            .map(|(alias, target)| format!("{alias:?} = {target:?}"))
            .collect();
        if !bad.is_empty() {
            return Err(Error::new(
                codes::INVALID_CONFIG,
                format!(
                    "models: an alias maps a non-empty name to `<credential>/<model>` or \"default\"; not: {}",
                    bad.join(", ")
                ),
            ));
        }
        let catalog = Catalog {
            host: ctx.host().clone(),
            default_model: cfg.default_model,
            aliases: Arc::new(cfg.aliases),
            registrations: Arc::default(),
        };
        // `GET /models`: the list, as the catalog answers it.
        let listed = catalog.clone();
        http::Route::new(http::HttpMethod::Get, "/models", move |_req| {
            let catalog = listed.clone();
            async move { Ok(http::HttpResponse::ok(&catalog.list().await)) }
        })
        .operation(
            Operation::new("List the models every provider serves")
                .id("listModels")
                .tag("models")
                .returns::<ModelList>(200, "`<credential>/<model>` names, and what is known of each"),
        )
        .serve(ctx.host())?;
        ctx.host().provide(&CATALOG, move |req: CatalogRequest| {
            let catalog = catalog.clone();
            async move {
                match req {
                    CatalogRequest::Register { provider, service, credentials } => {
                        tracing::info!(%provider, %service, credentials = ?credentials, "provider registered");
                        let mut regs = catalog.registrations.lock().unwrap_or_else(PoisonError::into_inner);
                        // One credential, one provider: a second one would
                        // silently shadow the first.
                        if let Some((other, cred)) = regs.iter().filter(|r| r.provider != provider).find_map(|r| {
                            r.credentials.iter().find(|c| credentials.contains(c)).map(|c| (&r.provider, c))
                        }) {
                            return Err(Error::new(
                                codes::DUPLICATE,
                                format!(
                                    "credential `{cred}` is already served by provider `{other}`; \
                                     provider `{provider}` cannot register it too (rename one of them)"
                                ),
                            ));
                        }
                        regs.retain(|r| r.provider != provider);
                        let service = Service::named(service, provider::VERSION);
                        regs.push(Registration { provider, service, credentials });
                        Ok(Value::Object(Default::default()))
                    }
                    CatalogRequest::List => to_json(&catalog.list().await),
                    CatalogRequest::Resolve { model } => to_json(&catalog.resolve(model).await?),
                    other => Err(Error::new(codes::UNSUPPORTED, format!("unsupported request {other:?}"))),
                }
            }
        })?;
        Ok(Models)
    }
}

dispatch_abi::export_plugin!(Models);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use dispatch_testkit::TestHost;

    fn register(host: &TestHost, provider: &str, credentials: &[&str]) -> Result<Value, Error> {
        let req = CatalogRequest::Register {
            provider: provider.into(),
            service: format!("provider.{provider}"),
            credentials: credentials.iter().map(|c| (*c).to_owned()).collect(),
        };
        host.call(&CATALOG, &req)
    }

    /// A second provider registering a credential name already taken used
    /// to shadow the first silently.
    #[test]
    fn a_credential_registered_by_two_providers_is_refused_naming_both() {
        let mut host = TestHost::new();
        host.activate::<Models>(Value::Null).unwrap();
        register(&host, "a", &["openai"]).unwrap();
        let e = register(&host, "b", &["local", "openai"]).unwrap_err();
        assert_eq!(e.code(), codes::DUPLICATE);
        assert!(
            e.message().contains("`openai`") && e.message().contains("`a`") && e.message().contains("`b`"),
            "{e}"
        );
        // Re-registering one's own credentials is fine.
        register(&host, "a", &["openai", "other"]).unwrap();
    }
}
