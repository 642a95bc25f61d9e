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
//! The `concurrency` service hands out the slots: the session asks for
//! one before each token-generating provider request and releases it when
//! the response ends ([`limiter`] holds the rules). A `429` pauses the
//! provider 30 s and lowers its limit by one (never below 1), kept, with a
//! notice until an operator sets the limit again.

pub mod limiter;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dispatch_abi::runtime::{PluginRuntime, Runner};
use dispatch_abi::{codes, Context, Error, Host, Plugin, PluginManifest};
use dispatch_contracts::concurrency::{Acquired, ConcurrencyRequest, Waited, CONCURRENCY};
use dispatch_contracts::http::{
    self, problem, HttpMethod, HttpRequest, HttpResponse, Problem, Route, RouteResult,
};
use dispatch_contracts::openapi::Operation;
use dispatch_contracts::protocol::concurrency::{
    ProviderCooldown, ProviderLimit, ProviderLimits, Status, StatusEntry, DEFAULT_COOLDOWN_MS,
};
use dispatch_contracts::store::{StoreRequest, STORE};
use dispatch_contracts::workspace::Workspace;
use limiter::{Grant, Limiter};
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

    /// Its line of the status, with the lane's `(in flight, queued,
    /// paused until)`.
    pub fn status(&self, provider_id: &str, lane: (u64, u64, Option<u64>)) -> Option<StatusEntry> {
        let limit = self.limit?;
        let (in_flight, queued, paused_until) = lane;
        Some(StatusEntry {
            provider_id: provider_id.to_owned(),
            limit,
            in_flight,
            queued,
            paused: paused_until.is_some(),
            paused_until,
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
    /// The settings as last read or written by this host.
    known: Mutex<BTreeMap<String, Settings>>,
    limiter: Mutex<Limiter>,
    /// Queued tickets, until their waiter learns it was granted.
    pending: Mutex<HashMap<u64, tokio::sync::watch::Receiver<bool>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The sections below only move values: none can panic half-way.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The longest single `wait`.
const MAX_WAIT_MS: u64 = 20_000;

impl Concurrency {
    /// Hand every provider's free slots to its waiters (after a change of
    /// limits, or a pause's end).
    fn pump_all(&self) {
        let known = lock(&self.known).clone();
        let mut limiter = lock(&self.limiter);
        for provider in limiter.providers() {
            let limit = known.get(&provider).and_then(|s| s.limit);
            limiter.pump(&provider, limit, now_ms());
        }
    }

    async fn starred(&self, workspace_id: &str) -> bool {
        let request = StoreRequest::GetWorkspace { id: workspace_id.to_owned() };
        match self.host.call(&STORE, &request).await {
            Ok(v) => serde_json::from_value::<Option<Workspace>>(v).ok().flatten().is_some_and(|w| w.starred),
            Err(_) => false,
        }
    }

    async fn acquire(&self, provider: &str, workspace_id: &str, turn_started_at: u64) -> Acquired {
        let limit = lock(&self.known).get(provider).and_then(|s| s.limit);
        let Some(limit) = limit else { return Acquired { ticket: 0, granted: true, limited: false } };
        // Whether the workspace is starred only matters to a waiter.
        let (in_flight, queued, paused) = lock(&self.limiter).lane(provider, now_ms());
        let starred = if paused.is_some() || queued > 0 || in_flight >= limit {
            self.starred(workspace_id).await
        } else {
            false
        };
        let grant = lock(&self.limiter).acquire(provider, limit, starred, turn_started_at, now_ms());
        match grant {
            Grant::Now(ticket) => Acquired { ticket, granted: true, limited: true },
            Grant::Queued(ticket, rx) => {
                lock(&self.pending).insert(ticket, rx);
                Acquired { ticket, granted: false, limited: true }
            }
        }
    }

    async fn wait(&self, ticket: u64, wait_ms: u64) -> Waited {
        let Some(mut rx) = lock(&self.pending).get(&ticket).cloned() else { return Waited { granted: true } };
        let wait = Duration::from_millis(wait_ms.min(MAX_WAIT_MS));
        let granted = matches!(tokio::time::timeout(wait, rx.wait_for(|g| *g)).await, Ok(Ok(_)));
        if granted {
            lock(&self.pending).remove(&ticket);
        }
        Waited { granted }
    }

    /// A request ended: after the provider's cooldown its slot goes to the
    /// next waiter. A `429` pauses the provider and lowers its limit.
    async fn release(self: &Arc<Self>, ticket: u64, rate_limited: bool) {
        lock(&self.pending).remove(&ticket);
        let Some(provider) = lock(&self.limiter).release(ticket) else { return };
        if rate_limited {
            let until = lock(&self.limiter).pause(&provider, now_ms());
            let key = provider.clone();
            let lowered = self
                .change(move |all| {
                    let s = all.entry(key).or_default();
                    if let Some(l) = s.limit {
                        s.auto_reduced_from = s.auto_reduced_from.or(Some(l));
                        s.limit = Some(l.saturating_sub(1).max(1));
                    }
                    Ok(())
                })
                .await;
            if let Err(p) = lowered {
                tracing::warn!(provider = %provider, error = %p.message, "cannot lower the limit after a 429");
            }
            tracing::warn!(provider = %provider, "a 429: the provider's queue pauses 30 s");
            let me = Arc::clone(self);
            self.runner.spawn(async move {
                tokio::time::sleep(Duration::from_millis(until.saturating_sub(now_ms()))).await;
                me.pump_all();
            });
        }
        let settings = lock(&self.known).get(&provider).cloned().unwrap_or_default();
        let cooldown = Duration::from_millis(settings.cooldown().unwrap_or(0));
        let me = Arc::clone(self);
        self.runner.spawn(async move {
            if !cooldown.is_zero() {
                tokio::time::sleep(cooldown).await;
            }
            lock(&me.limiter).free(&provider);
            let limit = lock(&me.known).get(&provider).and_then(|s| s.limit);
            lock(&me.limiter).pump(&provider, limit, now_ms());
        });
    }

    /// Every 30 s: a slot held more than five minutes is taken back.
    async fn reclaim_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tick.tick().await;
            let stale = lock(&self.limiter).stale(now_ms());
            for ticket in stale {
                tracing::warn!(ticket, "a provider slot held over five minutes is taken back");
                self.release(ticket, false).await;
            }
        }
    }

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
        *lock(&self.known) = all;
        self.pump_all();
        Ok(answer)
    }
}

fn not_configured(what: &str) -> Problem {
    Problem::new(404, "not_configured", what)
}

/// The largest limit taken (**ours**: WIRE.md sets none; no provider
/// allows more requests at once, and a number past it is a mistake).
const MAX_LIMIT: u64 = 1_000_000;
/// The longest cooldown taken: a day (**ours**, likewise).
const MAX_COOLDOWN_MS: u64 = 86_400_000;

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
                let limit = field(&req, "limit").filter(|l| (1..=MAX_LIMIT).contains(l)).ok_or_else(|| {
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
                           "properties": {"limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}}}),
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
                let cooldown_ms = field(&req, "cooldownMs").filter(|c| *c <= MAX_COOLDOWN_MS).ok_or_else(|| {
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
                           "properties": {"cooldownMs": {"type": "integer", "minimum": 0, "maximum": MAX_COOLDOWN_MS}}}),
                true,
            )
            .returns::<ProviderCooldown>(200, "The cooldown kept")
            .error(400, &["invalid_body"]),
        ),
        route(Get, "/concurrency/status", |c, _req| {
            Box::pin(async move {
                let settings = c.settings().await?;
                let limiter = lock(&c.limiter);
                let now = now_ms();
                let providers =
                    settings.iter().filter_map(|(id, s)| s.status(id, limiter.lane(id, now))).collect();
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
                .description(
                    "Per-provider limits and cooldowns: slots for provider requests, and their routes",
                )
                .depends_on(STORE.name())
                .provides("service", CONCURRENCY.name()),
        )
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let host = ctx.host().clone();
        let runtime = PluginRuntime::new("provider-concurrency", 1)?;
        let c = Arc::new(Concurrency {
            host: host.clone(),
            runner: runtime.runner(),
            writes: tokio::sync::Mutex::new(()),
            known: Mutex::default(),
            limiter: Mutex::default(),
            pending: Mutex::default(),
        });
        match runtime.handle().block_on(c.settings()) {
            Ok(settings) => *lock(&c.known) = settings,
            Err(p) => {
                tracing::warn!(error = %p.message, "cannot read the concurrency settings: unlimited until they are set")
            }
        }
        http::serve_all(&host, routes(&c))?;
        let (me, runner) = (Arc::clone(&c), runtime.runner());
        host.provide(&CONCURRENCY, move |request: ConcurrencyRequest| {
            let me = Arc::clone(&me);
            runner.run(async move {
                let answer = match request {
                    ConcurrencyRequest::Acquire { provider_id, workspace_id, turn_started_at, .. } => {
                        serde_json::to_value(me.acquire(&provider_id, &workspace_id, turn_started_at).await)
                    }
                    ConcurrencyRequest::Wait { ticket, wait_ms } => {
                        serde_json::to_value(me.wait(ticket, wait_ms.unwrap_or(MAX_WAIT_MS)).await)
                    }
                    ConcurrencyRequest::Release { ticket, rate_limited } => {
                        me.release(ticket, rate_limited).await;
                        Ok(json!({}))
                    }
                    other => {
                        return Err(Error::new(
                            codes::UNSUPPORTED,
                            format!("unsupported concurrency request {other:?}"),
                        ))
                    }
                };
                answer.map_err(|e| Error::new(codes::PLUGIN, e.to_string()))
            })
        })?;
        runtime.runner().spawn(Arc::clone(&c).reclaim_forever());

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
        assert_eq!(Settings { cooldown_ms: Some(10), ..Settings::default() }.status("p", (0, 0, None)), None);
        let s = Settings { limit: Some(2), ..Settings::default() };
        let line = s.status("p", (0, 0, None)).unwrap();
        assert_eq!(
            (line.limit, line.cooldown_ms, line.auto_reduced, line.notice.is_none()),
            (2, 350, false, true)
        );
        let reduced = Settings { limit: Some(1), cooldown_ms: Some(0), auto_reduced_from: Some(3) };
        let line = reduced.status("p", (1, 2, Some(99))).unwrap();
        assert_eq!((line.in_flight, line.queued, line.paused, line.paused_until), (1, 2, true, Some(99)));
        assert_eq!((line.cooldown_ms, line.auto_reduced_from), (0, Some(3)));
        assert_eq!(
            line.notice.as_deref(),
            Some("Concurrency limit auto-reduced to 1 after a 429 — restore manually when ready.")
        );
    }
}
