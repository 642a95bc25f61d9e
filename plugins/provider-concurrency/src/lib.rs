//! # provider-concurrency — per-provider limits and cooldowns
//!
//! WIRE.md "Provider concurrency". A provider is a credential name (the
//! part of a model name before `/`, **(ours)**: what the frontend offers).
//! Each may have a **limit** (requests generating tokens at once) and a
//! **cooldown** (how long a freed slot is held before the next request
//! gets it; 350 ms when a limit exists and none was set). Both are kept in
//! the store (scope `concurrency`), so they survive a restart and are
//! shared by hosts on one database.
//!
//! This version answers the routes — limits and cooldowns set, read,
//! removed, and the status the frontend polls — but does not yet hold
//! requests to them: `inFlight` and `queued` read 0 until the session asks
//! for slots (issue 34, next part).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dispatch_abi::runtime::{PluginRuntime, Runner};
use dispatch_abi::{codes, Context, Error, Host, Plugin, PluginManifest};
use dispatch_contracts::http::{
    self, problem, HttpMethod, HttpRequest, HttpResponse, Problem, Route, RouteResult,
};
use dispatch_contracts::openapi::Operation;
use dispatch_contracts::protocol::concurrency::{
    ProviderCooldown, ProviderLimit, ProviderLimits, Status, StatusEntry, DEFAULT_COOLDOWN_MS,
};
use dispatch_contracts::store::{StoreRequest, STORE};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The store scope and key of the settings.
const SCOPE: &str = "concurrency";
const KEY: &str = "providers";

/// One provider's settings, as kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Settings {
    /// Requests at once; none: unlimited.
    pub limit: Option<u64>,
    /// Its own cooldown; none: the default (with a limit).
    pub cooldown_ms: Option<u64>,
    /// The limit before a `429` first lowered it.
    pub auto_reduced_from: Option<u64>,
}

impl Settings {
    /// The cooldown in force: its own, else the default when limited.
    pub fn cooldown(&self) -> Option<u64> {
        self.cooldown_ms.or(self.limit.map(|_| DEFAULT_COOLDOWN_MS))
    }

    /// Its line of the status (nothing is held to the limits yet, so
    /// nothing is in flight, queued or paused).
    pub fn status(&self, provider_id: &str) -> Option<StatusEntry> {
        let limit = self.limit?;
        Some(StatusEntry {
            provider_id: provider_id.to_owned(),
            limit,
            in_flight: 0,
            queued: 0,
            paused: false,
            paused_until: None,
            cooldown_ms: self.cooldown().unwrap_or(DEFAULT_COOLDOWN_MS),
            auto_reduced: self.auto_reduced_from.is_some(),
            auto_reduced_from: self.auto_reduced_from,
            notice: self.auto_reduced_from.map(|_| {
                format!(
                    "Concurrency limit auto-reduced to {limit} after a 429 — restore manually when ready."
                )
            }),
        })
    }
}

/// A whole non-negative number, as JavaScript's `Number.isInteger` reads
/// one (`2.0` is 2).
fn whole(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0 && *f <= u64::MAX as f64)
            .map(|f| f as u64)
    })
}

/// The number `field` of an object body.
fn field(req: &HttpRequest, name: &str) -> Option<u64> {
    req.body.as_ref().and_then(|b| b.as_object()).and_then(|o| o.get(name)).and_then(whole)
}

struct Concurrency {
    host: Host,
    runner: Runner,
    /// Serializes read-modify-write of the settings.
    writes: tokio::sync::Mutex<()>,
}

impl Concurrency {
    async fn settings(&self) -> Result<BTreeMap<String, Settings>, Problem> {
        let request = StoreRequest::GetValue { scope: SCOPE.into(), key: KEY.into() };
        let v = self.host.call(&STORE, &request).await.map_err(problem)?;
        if v.is_null() {
            return Ok(BTreeMap::new());
        }
        serde_json::from_value(v).map_err(|e| {
            Problem::new(500, "internal", format!("the stored concurrency settings do not parse: {e}"))
        })
    }

    /// Change the settings under the write lock; answers what `change` did.
    async fn change<R>(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, Settings>) -> Result<R, Problem>,
    ) -> Result<R, Problem> {
        let _guard = self.writes.lock().await;
        let mut all = self.settings().await?;
        let answer = change(&mut all)?;
        all.retain(|_, s| *s != Settings::default());
        let value =
            serde_json::to_value(&all).map_err(|e| problem(Error::new(codes::PLUGIN, e.to_string())))?;
        let request = StoreRequest::PutValue { scope: SCOPE.into(), key: KEY.into(), value };
        self.host.call(&STORE, &request).await.map_err(problem)?;
        Ok(answer)
    }
}

fn not_configured(what: &str) -> Problem {
    Problem::new(404, "not_configured", what)
}

const NO_LIMIT: &str = "No concurrency limit configured for this provider";
const NO_CONFIG: &str = "No concurrency configuration for this provider";

type Handler = fn(
    Arc<Concurrency>,
    HttpRequest,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = RouteResult> + Send>>;

fn op(summary: &str, id: &str) -> Operation {
    Operation::new(summary).id(id).tag("concurrency")
}

fn with_provider(o: Operation) -> Operation {
    o.path_param("providerId", "The provider: a credential name, the part of a model name before `/`")
}

fn routes(c: &Arc<Concurrency>) -> Vec<Route> {
    use HttpMethod::{Delete, Get, Put};
    let route = |method, path: &str, handler: Handler| {
        let c = Arc::clone(c);
        let runner = c.runner.clone();
        Route::on_runtime(&runner, method, path, move |req| handler(Arc::clone(&c), req))
    };
    vec![
        route(Get, "/concurrency/limits", |c, _req| {
            Box::pin(async move {
                let limits = c
                    .settings()
                    .await?
                    .into_iter()
                    .filter_map(|(provider_id, s)| s.limit.map(|limit| ProviderLimit { provider_id, limit }))
                    .collect();
                Ok(HttpResponse::ok(&ProviderLimits { limits }))
            })
        })
        .operation(
            op("List the providers' limits", "listConcurrencyLimits")
                .returns::<ProviderLimits>(200, "Every limit"),
        ),
        route(Get, "/concurrency/limits/{providerId}", |c, req| {
            Box::pin(async move {
                let id = req.param("providerId").unwrap_or_default().to_owned();
                let limit = c
                    .settings()
                    .await?
                    .get(&id)
                    .and_then(|s| s.limit)
                    .ok_or_else(|| not_configured(NO_LIMIT))?;
                Ok(HttpResponse::ok(&ProviderLimit { provider_id: id, limit }))
            })
        })
        .operation(
            with_provider(op("Read a provider's limit", "getConcurrencyLimit"))
                .returns::<ProviderLimit>(200, "Its limit")
                .error(404, &["not_configured"]),
        ),
        route(Put, "/concurrency/limits/{providerId}", |c, req| {
            Box::pin(async move {
                let id = req.param("providerId").unwrap_or_default().to_owned();
                let limit = field(&req, "limit").filter(|l| *l >= 1).ok_or_else(|| {
                    Problem::new(400, "invalid_body", "Body must be { limit: <positive integer> }")
                })?;
                let key = id.clone();
                c.change(move |all| {
                    let s = all.entry(key).or_default();
                    s.limit = Some(limit);
                    // A limit set by hand ends an automatic reduction.
                    s.auto_reduced_from = None;
                    Ok(())
                })
                .await?;
                Ok(HttpResponse::ok(&ProviderLimit { provider_id: id, limit }))
            })
        })
        .operation(
            with_provider(op(
                "Set a provider's limit (restores one lowered after a 429)",
                "setConcurrencyLimit",
            ))
            .body_with(
                json!({"type": "object", "required": ["limit"],
                           "properties": {"limit": {"type": "integer", "minimum": 1}}}),
                true,
            )
            .returns::<ProviderLimit>(200, "The limit kept")
            .error(400, &["invalid_body"]),
        ),
        route(Delete, "/concurrency/limits/{providerId}", |c, req| {
            Box::pin(async move {
                let id = req.param("providerId").unwrap_or_default().to_owned();
                let key = id.clone();
                c.change(move |all| {
                    let s = all
                        .get_mut(&key)
                        .filter(|s| s.limit.is_some())
                        .ok_or_else(|| not_configured(NO_LIMIT))?;
                    s.limit = None;
                    s.auto_reduced_from = None;
                    Ok(())
                })
                .await?;
                Ok(HttpResponse::ok(&json!({"ok": true, "providerId": id})))
            })
        })
        .operation(
            with_provider(op("Remove a provider's limit: it runs unlimited", "deleteConcurrencyLimit"))
                .returns_with(200, "Removed", json!({"type": "object"}))
                .error(404, &["not_configured"]),
        ),
        route(Get, "/concurrency/cooldown/{providerId}", |c, req| {
            Box::pin(async move {
                let id = req.param("providerId").unwrap_or_default().to_owned();
                let cooldown_ms = c
                    .settings()
                    .await?
                    .get(&id)
                    .and_then(Settings::cooldown)
                    .ok_or_else(|| not_configured(NO_CONFIG))?;
                Ok(HttpResponse::ok(&ProviderCooldown { provider_id: id, cooldown_ms }))
            })
        })
        .operation(
            with_provider(op("Read a provider's cooldown", "getConcurrencyCooldown"))
                .returns::<ProviderCooldown>(200, "Its cooldown (350 with a limit and none set)")
                .error(404, &["not_configured"]),
        ),
        route(Put, "/concurrency/cooldown/{providerId}", |c, req| {
            Box::pin(async move {
                let id = req.param("providerId").unwrap_or_default().to_owned();
                let cooldown_ms = field(&req, "cooldownMs").ok_or_else(|| {
                    Problem::new(400, "invalid_body", "Body must be { cooldownMs: <non-negative integer> }")
                })?;
                let key = id.clone();
                c.change(move |all| {
                    all.entry(key).or_default().cooldown_ms = Some(cooldown_ms);
                    Ok(())
                })
                .await?;
                Ok(HttpResponse::ok(&ProviderCooldown { provider_id: id, cooldown_ms }))
            })
        })
        .operation(
            with_provider(op(
                "Set a provider's cooldown (it may come before a limit)",
                "setConcurrencyCooldown",
            ))
            .body_with(
                json!({"type": "object", "required": ["cooldownMs"],
                           "properties": {"cooldownMs": {"type": "integer", "minimum": 0}}}),
                true,
            )
            .returns::<ProviderCooldown>(200, "The cooldown kept")
            .error(400, &["invalid_body"]),
        ),
        route(Get, "/concurrency/status", |c, _req| {
            Box::pin(async move {
                let providers = c.settings().await?.iter().filter_map(|(id, s)| s.status(id)).collect();
                Ok(HttpResponse::ok(&Status { providers }))
            })
        })
        .operation(
            op("Every limited provider's state (the frontend polls it)", "getConcurrencyStatus")
                .returns::<Status>(200, "One entry per provider with a limit"),
        ),
    ]
}

/// The plugin.
pub struct ProviderConcurrency {
    runtime: Option<PluginRuntime>,
}

impl std::fmt::Debug for ProviderConcurrency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConcurrency").finish_non_exhaustive()
    }
}

impl Plugin for ProviderConcurrency {
    fn manifest() -> PluginManifest {
        http::declare_routes(
            PluginManifest::new("provider-concurrency", env!("CARGO_PKG_VERSION"))
                .description("Per-provider limits and cooldowns, kept in the store, and their routes")
                .depends_on(STORE.name()),
        )
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let host = ctx.host().clone();
        let runtime = PluginRuntime::new("provider-concurrency", 1)?;
        let c = Arc::new(Concurrency {
            host: host.clone(),
            runner: runtime.runner(),
            writes: tokio::sync::Mutex::new(()),
        });
        http::serve_all(&host, routes(&c))?;
        Ok(ProviderConcurrency { runtime: Some(runtime) })
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        if let Some(mut r) = self.runtime.take() {
            r.shutdown(Duration::from_secs(5));
        }
        Ok(())
    }
}

dispatch_abi::export_plugin!(ProviderConcurrency);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn numbers_are_whole_as_the_frontend_sends_them() {
        assert_eq!(whole(&json!(3)), Some(3));
        assert_eq!(whole(&json!(3.0)), Some(3));
        for bad in [json!(2.5), json!(-1), json!("3"), json!(null), json!(f64::MAX)] {
            assert_eq!(whole(&bad), None, "{bad}");
        }
    }

    #[test]
    fn the_status_shows_limited_providers_their_cooldown_and_an_automatic_reduction() {
        assert_eq!(Settings { cooldown_ms: Some(10), ..Settings::default() }.status("p"), None);
        let s = Settings { limit: Some(2), ..Settings::default() };
        let line = s.status("p").unwrap();
        assert_eq!(
            (line.limit, line.cooldown_ms, line.auto_reduced, line.notice.is_none()),
            (2, 350, false, true)
        );
        let reduced = Settings { limit: Some(1), cooldown_ms: Some(0), auto_reduced_from: Some(3) };
        let line = reduced.status("p").unwrap();
        assert_eq!((line.cooldown_ms, line.auto_reduced_from), (0, Some(3)));
        assert_eq!(
            line.notice.as_deref(),
            Some("Concurrency limit auto-reduced to 1 after a 429 — restore manually when ready.")
        );
    }
}
