//! # cache-warming — keep a provider's prompt cache warm between turns
//!
//! WIRE.md's "Cache warming". A provider keeps a long prompt prefix cached
//! for a few minutes; a conversation that pauses longer pays for the whole
//! prefix again. A *warm* sends exactly what the conversation's next turn
//! would send — system prompt, tools, history — plus a one-token probe
//! (the session's `warm` op), persisting nothing, and reports how much of
//! it the cache served.
//!
//! * `POST /chat/warm` warms once.
//! * The `cache-warming` surface (per conversation) turns a timer on and
//!   off and sets its interval; the timer is armed when a turn settles,
//!   cancelled when one starts, re-armed after each warm (a failed one
//!   too), and a closed conversation's warming is switched off.
//!
//! `{enabled, intervalMs}` is kept per conversation in the store; what the
//! timer is doing lives in memory, so after a restart a conversation reads
//! disabled until it is toggled on again (the toggle restores its interval).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dispatch_abi::runtime::{PluginRuntime, Runner};
use dispatch_abi::{Context, Error, Host, Plugin, PluginManifest};
use dispatch_contracts::http::{self, HttpMethod, HttpResponse, Problem, Route};
use dispatch_contracts::openapi::Operation;
use dispatch_contracts::protocol::store::StoreRequest;
use dispatch_contracts::protocol::wire::{ConversationStatus, Usage};
use dispatch_contracts::session::{SessionRequest, StatusChanged, Warmed, SESSION, STATUS};
use dispatch_contracts::store::STORE;
use dispatch_contracts::surface::{
    ActionRef, RegistryRequest, Scope, SurfaceAction, SurfaceField, SurfaceSpec, ACTION, REGISTRY,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The surface's id.
pub const SURFACE_ID: &str = "cache-warming";
/// Its toggle's action.
pub const TOGGLE: &str = "cache-warming/toggle";
/// Its interval's action.
pub const SET_INTERVAL: &str = "cache-warming/set-interval";
/// The interval of a conversation that never set one.
pub const DEFAULT_INTERVAL_MS: u64 = 240_000;
/// The store key of a conversation's `{enabled, intervalMs}`.
const SETTINGS_KEY: &str = "cache-warming";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What `POST /chat/warm` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WarmAnswer {
    /// The probe's input tokens.
    pub input_tokens: u64,
    /// Its output tokens.
    pub output_tokens: u64,
    /// Input tokens the cache served.
    pub cache_read_tokens: u64,
    /// Input tokens written to the cache.
    pub cache_write_tokens: u64,
    /// `cacheRead / input`, in percent (0 when input is 0).
    pub cache_pct: u64,
    /// `cacheRead / (cacheRead + cacheWrite)`, in percent (0 when both are 0).
    pub expected_cache_rate: u64,
}

impl WarmAnswer {
    /// The figures of a probe's usage.
    pub fn of(u: &Usage) -> WarmAnswer {
        let read = u.cache_read_tokens.unwrap_or(0);
        let write = u.cache_write_tokens.unwrap_or(0);
        let pct = |part: u64, whole: u64| {
            if whole == 0 {
                0
            } else {
                ((part.min(whole) as f64 / whole as f64) * 100.0).round() as u64
            }
        };
        WarmAnswer {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cache_read_tokens: read,
            cache_write_tokens: write,
            cache_pct: pct(read, u.input_tokens),
            expected_cache_rate: pct(read, read + write),
        }
    }
}

/// The body of `POST /chat/warm`, for the API description: the handler
/// reads it field by field, to answer WIRE.md's exact message when
/// `conversationId` is missing or empty.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct WarmBody {
    /// The conversation.
    #[schemars(regex(pattern = "^[A-Za-z0-9._:@-]{1,128}$"))]
    conversation_id: String,
    /// The model (default: the conversation's, else the default).
    #[serde(default)]
    model: Option<String>,
    /// The working directory (default: the conversation's).
    #[serde(default)]
    cwd: Option<String>,
}

/// A conversation's warming, in memory.
#[derive(Debug, Clone, Default)]
struct Conv {
    enabled: bool,
    interval_ms: u64,
    last: Option<WarmAnswer>,
    last_warm_at: Option<u64>,
    next_warm_at: Option<u64>,
    /// Bumped by every arm and cancel: a timer that wakes with an older
    /// one was superseded.
    generation: u64,
}

/// The surface shown with no conversation.
pub fn idle_spec() -> SurfaceSpec {
    SurfaceSpec {
        id: SURFACE_ID.into(),
        region: "side".into(),
        title: "Cache Warming".into(),
        fields: vec![SurfaceField::Stat { label: "Status".into(), value: "No conversation focused".into() }],
    }
}

fn percent(v: Option<u64>) -> String {
    v.map_or_else(|| "—".to_owned(), |n| format!("{n}%"))
}

/// A conversation's surface, fields in the order the frontend reads.
fn spec_of(c: &Conv) -> SurfaceSpec {
    let interval = if c.interval_ms == 0 { DEFAULT_INTERVAL_MS } else { c.interval_ms };
    SurfaceSpec {
        id: SURFACE_ID.into(),
        region: "side".into(),
        title: "Cache Warming".into(),
        fields: vec![
            SurfaceField::Toggle {
                label: "Enabled".into(),
                value: c.enabled,
                action: ActionRef { action_id: TOGGLE.into() },
            },
            SurfaceField::Number {
                label: "Refresh Interval".into(),
                value: (interval as f64 / 1000.0).round(),
                min: Some(1.0),
                max: None,
                step: Some(1.0),
                unit: Some("s".into()),
                action: ActionRef { action_id: SET_INTERVAL.into() },
            },
            SurfaceField::Stat { label: "Last Cache %".into(), value: percent(c.last.map(|l| l.cache_pct)) },
            SurfaceField::Stat {
                label: "Cache retention".into(),
                value: percent(c.last.map(|l| l.expected_cache_rate)),
            },
            SurfaceField::Custom {
                renderer_id: "cache-warming-timer".into(),
                payload: json!({"nextWarmAt": c.next_warm_at, "lastWarmAt": c.last_warm_at}),
            },
        ],
    }
}

/// The interval a `set-interval` payload asks for: seconds as a positive
/// number, or `{value: seconds}`; in ms, at least 1000.
pub fn interval_of(payload: &Value) -> Option<u64> {
    let s = payload.as_f64().or_else(|| payload.get("value").and_then(Value::as_f64))?;
    (s.is_finite() && s > 0.0).then(|| ((s * 1000.0).round() as u64).max(1000))
}

struct Warmer {
    host: Host,
    runner: Runner,
    token: String,
    convs: Mutex<HashMap<String, Conv>>,
}

impl Warmer {
    fn conv(&self, id: &str) -> Conv {
        self.convs.lock().unwrap_or_else(PoisonError::into_inner).get(id).cloned().unwrap_or_default()
    }

    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Conv) -> T) -> T {
        let mut convs = self.convs.lock().unwrap_or_else(PoisonError::into_inner);
        let c = convs
            .entry(id.to_owned())
            .or_insert_with(|| Conv { interval_ms: DEFAULT_INTERVAL_MS, ..Conv::default() });
        f(c)
    }

    async fn push(&self, id: &str) {
        let spec = spec_of(&self.conv(id));
        let update =
            RegistryRequest::Update { spec, token: self.token.clone(), conversation_id: Some(id.to_owned()) };
        if let Err(e) = self.host.call(&REGISTRY, &update).await {
            tracing::debug!(error = %e, conversation = %id, "cannot update the cache-warming surface");
        }
    }

    async fn persist(&self, id: &str) {
        let c = self.conv(id);
        let put = StoreRequest::PutValue {
            scope: id.to_owned(),
            key: SETTINGS_KEY.to_owned(),
            value: json!({"enabled": c.enabled, "intervalMs": c.interval_ms}),
        };
        if let Err(e) = self.host.call(&STORE, &put).await {
            tracing::warn!(error = %e, conversation = %id, "cannot keep the cache-warming settings");
        }
    }

    /// The stored interval (on the first toggle after a restart).
    async fn stored_interval(&self, id: &str) -> Option<u64> {
        let get = StoreRequest::GetValue { scope: id.to_owned(), key: SETTINGS_KEY.to_owned() };
        let v: Value = self.host.call(&STORE, &get).await.ok()?;
        v.get("intervalMs").and_then(Value::as_u64).filter(|ms| *ms >= 1000)
    }

    /// Arm the timer: a warm in one interval from now.
    fn arm(self: &Arc<Self>, id: &str) {
        let (generation, interval) = self.with(id, |c| {
            c.generation += 1;
            c.next_warm_at = Some(now_ms() + c.interval_ms);
            (c.generation, c.interval_ms)
        });
        let me = Arc::clone(self);
        let id = id.to_owned();
        self.runner.spawn(async move {
            tokio::time::sleep(Duration::from_millis(interval)).await;
            let current = me.with(&id, |c| c.enabled && c.generation == generation);
            if current {
                me.warm_on_timer(&id).await;
            }
        });
    }

    fn cancel(&self, id: &str) {
        self.with(id, |c| {
            c.generation += 1;
            c.next_warm_at = None;
        });
    }

    async fn warm_on_timer(self: &Arc<Self>, id: &str) {
        match self.warm(id, None, None).await {
            Ok(_) => {}
            Err(p) => {
                tracing::info!(conversation = %id, error = %p, "a timed cache warm failed; trying again next interval")
            }
        }
        // (ours) re-armed after a failure too.
        if self.with(id, |c| c.enabled) {
            self.arm(id);
        }
        self.push(id).await;
    }

    /// One warm through the session; a success is recorded on the surface.
    async fn warm(
        &self,
        id: &str,
        model: Option<String>,
        cwd: Option<String>,
    ) -> Result<WarmAnswer, Problem> {
        let request = SessionRequest::Warm { conversation_id: id.to_owned(), model, cwd };
        let warmed: Warmed = match self.host.call(&SESSION, &request).await {
            Ok(v) => {
                serde_json::from_value(v).map_err(|e| Problem::new(502, "bad_gateway", e.to_string()))?
            }
            Err(e) => {
                return Err(match e.code() {
                    "conflict" => Problem::new(409, "conversation_active", "conversation is generating"),
                    "no_history" => Problem::new(409, "no_history", "no history"),
                    "unknown_model" => Problem::new(409, "unknown_model", e.message()),
                    "provider_error" => Problem::new(502, "provider_error", e.message()),
                    _ => http::problem(e),
                })
            }
        };
        let answer = WarmAnswer::of(&warmed.usage);
        self.with(id, |c| {
            c.last = Some(answer);
            c.last_warm_at = Some(now_ms());
        });
        Ok(answer)
    }

    async fn on_action(self: &Arc<Self>, action: SurfaceAction) {
        if action.surface_id != SURFACE_ID {
            return;
        }
        // An invoke without a conversation is ignored (WIRE.md).
        let Some(id) = action.conversation_id else { return };
        match action.action_id.as_str() {
            TOGGLE => {
                let first = !self.convs.lock().unwrap_or_else(PoisonError::into_inner).contains_key(&id);
                if first {
                    if let Some(ms) = self.stored_interval(&id).await {
                        self.with(&id, |c| c.interval_ms = ms);
                    }
                }
                let enabled = self.with(&id, |c| {
                    c.enabled = !c.enabled;
                    c.enabled
                });
                if enabled {
                    self.arm(&id);
                } else {
                    self.cancel(&id);
                }
            }
            SET_INTERVAL => {
                let Some(ms) = interval_of(&action.payload) else { return };
                let enabled = self.with(&id, |c| {
                    c.interval_ms = ms;
                    c.enabled
                });
                if enabled {
                    self.arm(&id);
                }
            }
            _ => return,
        }
        self.persist(&id).await;
        self.push(&id).await;
    }

    async fn on_status(self: &Arc<Self>, s: StatusChanged) {
        let id = s.conversation_id;
        if !self.convs.lock().unwrap_or_else(PoisonError::into_inner).contains_key(&id) {
            return;
        }
        match s.status {
            ConversationStatus::Active if self.with(&id, |c| c.enabled) => {
                self.cancel(&id);
                self.push(&id).await;
            }
            ConversationStatus::Idle if self.with(&id, |c| c.enabled) => {
                self.arm(&id);
                self.push(&id).await;
            }
            ConversationStatus::Closed => {
                let was = self.with(&id, |c| std::mem::replace(&mut c.enabled, false));
                self.cancel(&id);
                if was {
                    self.persist(&id).await;
                }
                self.push(&id).await;
            }
            _ => {}
        }
    }
}

/// The plugin.
#[derive(Debug)]
pub struct CacheWarming {
    runtime: PluginRuntime,
}

impl Plugin for CacheWarming {
    fn manifest() -> PluginManifest {
        http::declare(
            PluginManifest::new("cache-warming", env!("CARGO_PKG_VERSION"))
                .description("Keeps a provider's prompt cache warm between turns, on demand or on a timer")
                .depends_on("session")
                .depends_on("surfaces")
                .provides("surface", SURFACE_ID),
            HttpMethod::Post,
            "/chat/warm",
        )
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let host = ctx.host().clone();
        let runtime = PluginRuntime::new("cache-warming", 1)?;
        let default = spec_of(&Conv { interval_ms: DEFAULT_INTERVAL_MS, ..Conv::default() });
        let registered = host.call_blocking(
            &REGISTRY,
            &RegistryRequest::Register {
                spec: idle_spec(),
                scope: Some(Scope::Conversation),
                token: None,
                conversation_spec: Some(default),
            },
        )?;
        let token = registered.token.ok_or_else(|| Error::msg("the surfaces registry answered no token"))?;
        let warmer =
            Arc::new(Warmer { host: host.clone(), runner: runtime.runner(), token, convs: Mutex::default() });

        let (w, runner) = (Arc::clone(&warmer), runtime.runner());
        host.subscribe_sync(&ACTION, move |action: SurfaceAction| {
            let w = Arc::clone(&w);
            runner.spawn(async move { w.on_action(action).await });
            Ok(())
        })?;
        let (w, runner) = (Arc::clone(&warmer), runtime.runner());
        host.subscribe_sync(&STATUS, move |status: StatusChanged| {
            let w = Arc::clone(&w);
            runner.spawn(async move { w.on_status(status).await });
            Ok(())
        })?;

        let (w, runner) = (Arc::clone(&warmer), runtime.runner());
        Route::new(HttpMethod::Post, "/chat/warm", move |req| {
            let w = Arc::clone(&w);
            let answer = runner.run(async move {
                let answer: Result<HttpResponse, Problem> = async {
                    let required = || {
                        Problem::new(
                            400,
                            "invalid_body",
                            "Field 'conversationId' is required and must be a non-empty string",
                        )
                    };
                    let body = req.body.as_ref().filter(|b| b.is_object()).ok_or_else(required)?;
                    let id = body
                        .get("conversationId")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .ok_or_else(required)?
                        .to_owned();
                    // `model` and `cwd` are strings when present (`null`: absent).
                    let text = |k: &str| -> Result<Option<String>, Problem> {
                        match body.get(k) {
                            None | Some(Value::Null) => Ok(None),
                            Some(Value::String(s)) => Ok(Some(s.clone())),
                            Some(_) => Err(Problem::new(
                                400,
                                "invalid_body",
                                format!("Field '{k}' must be a string"),
                            )),
                        }
                    };
                    let (model, cwd) = (text("model")?, text("cwd")?);
                    let answer = w.warm(&id, model, cwd).await?;
                    // A success counts as the timer's warm too.
                    if w.with(&id, |c| c.enabled) {
                        w.arm(&id);
                    }
                    w.push(&id).await;
                    Ok(HttpResponse::ok(&answer))
                }
                .await;
                Ok::<_, Error>(answer)
            });
            async move { answer.await.unwrap_or_else(|e| Err(http::problem(e))) }
        })
        .operation(
            Operation::new("Warm the provider's prompt cache for a conversation's next turn")
                .id("warmCache")
                .tag("cache-warming")
                .body::<WarmBody>()
                .returns::<WarmAnswer>(200, "What the one-token probe cost and how much the cache served")
                .error(400, &["invalid_body", "invalid_input"])
                .error(409, &["conversation_active", "no_history", "unknown_model"])
                .error(502, &["provider_error"]),
        )
        .serve(&host)?;
        Ok(CacheWarming { runtime })
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        self.runtime.shutdown(Duration::from_secs(2));
        Ok(())
    }
}

dispatch_abi::export_plugin!(CacheWarming);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_clamp_and_are_zero_on_nothing() {
        let u = Usage {
            input_tokens: 1000,
            output_tokens: 1,
            cache_read_tokens: Some(875),
            cache_write_tokens: Some(125),
            ..Usage::default()
        };
        let a = WarmAnswer::of(&u);
        assert_eq!((a.cache_pct, a.expected_cache_rate), (88, 88));
        let none = WarmAnswer::of(&Usage::default());
        assert_eq!((none.cache_pct, none.expected_cache_rate), (0, 0));
        let over = Usage { input_tokens: 10, cache_read_tokens: Some(50), ..Usage::default() };
        assert_eq!(WarmAnswer::of(&over).cache_pct, 100);
    }

    #[test]
    fn an_interval_is_seconds_or_a_value_object_at_least_one_second() {
        assert_eq!(interval_of(&json!(10)), Some(10_000));
        assert_eq!(interval_of(&json!({"value": 90.5})), Some(90_500));
        assert_eq!(interval_of(&json!(0.2)), Some(1000));
        for bad in [json!(0), json!(-3), json!("10"), json!(null), json!({"v": 1})] {
            assert_eq!(interval_of(&bad), None, "{bad}");
        }
    }

    #[test]
    fn the_surface_fields_come_in_the_order_the_frontend_reads() {
        let v = serde_json::to_value(spec_of(&Conv { interval_ms: 10_000, ..Conv::default() })).unwrap();
        let kinds: Vec<&str> =
            v["fields"].as_array().unwrap().iter().map(|f| f["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["toggle", "number", "stat", "stat", "custom"]);
        assert_eq!(v["fields"][1]["value"], 10.0);
        assert_eq!(v["fields"][3]["label"], "Cache retention");
        assert_eq!(v["fields"][4]["payload"], json!({"nextWarmAt": null, "lastWarmAt": null}));
    }
}
