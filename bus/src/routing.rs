//! The service / event / hook bus: who provides what, at which schema
//! version, and how a call, an event or a hook run is routed.
//!
//! The bus is generic over the service handler type `S` so that the host
//! can keep its FFI handler objects and call them with no extra boxing on
//! the hot path. Events and hook chains need the bus to *call* their
//! handlers, so those go through the small [`EventSink`] and [`HookStep`]
//! traits. Nothing here knows about `.so` files or a particular runtime:
//! event pumps are started through an injected [`Spawner`].

use std::fmt;
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};

use futures::channel::mpsc;
use futures::StreamExt as _;
// Names on the bus come from plugins, not from the network: a fast
// non-keyed hash is safe here and is most of a ready call's lookup cost.
use rustc_hash::FxHashMap as HashMap;

pub use dispatch_protocol::{BoxFuture, Spawner};

/// What kind of bus name an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A request/response service.
    Service,
    /// A fire-and-forget event.
    Event,
    /// A hook chain.
    Hook,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Service => "service",
            Kind::Event => "event",
            Kind::Hook => "hook",
        })
    }
}

/// Why the bus refused a registration or a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// Nothing of that name is registered.
    #[error("no {kind} named `{name}` is provided by any active plugin")]
    NotFound {
        /// Service, event or hook.
        kind: Kind,
        /// The name asked for.
        name: String,
    },
    /// The name exists at another schema version.
    #[error(
        "{kind} `{name}` is at schema version {registered} (declared by plugin `{owner}`), \
         but version {requested} was asked for"
    )]
    VersionMismatch {
        /// Service, event or hook.
        kind: Kind,
        /// The name.
        name: String,
        /// The version on the bus.
        registered: u32,
        /// The version asked for.
        requested: u32,
        /// The plugin that fixed the registered version.
        owner: String,
    },
    /// A second provider for a service.
    #[error("service `{name}` is already provided by plugin `{existing}`; plugin `{rejected}` cannot provide it too")]
    DuplicateProvider {
        /// The service.
        name: String,
        /// Who provides it.
        existing: String,
        /// Who tried to provide it again.
        rejected: String,
    },
    /// A handler of a fail-closed hook chain failed.
    #[error("hook `{hook}`: the handler of plugin `{plugin}` failed: {message}")]
    HookFailed {
        /// The hook.
        hook: String,
        /// The failing handler's plugin.
        plugin: String,
        /// What it said.
        message: String,
    },
}

/// An event subscriber, as the bus calls it.
pub trait EventSink: Send + Sync + 'static {
    /// Deliver one event; an `Err` is logged and does not stop delivery.
    fn deliver(&self, payload: Arc<[u8]>) -> BoxFuture<Result<(), String>>;
}

/// One hook handler, as the bus calls it.
pub trait HookStep: Send + Sync + 'static {
    /// Handle one value.
    fn run(&self, value: Vec<u8>) -> BoxFuture<Result<StepReply, String>>;
}

/// What a hook handler answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepReply {
    /// Continue with this value (ignored for guards, which cannot change it).
    Continue(Vec<u8>),
    /// Refuse the value.
    Veto(String),
}

/// Filter or guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// Transforms the value.
    Filter,
    /// May veto the value.
    Guard,
}

/// What a failing handler means for the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Log and pass the value through.
    #[default]
    Open,
    /// A failing filter fails the run; a failing guard vetoes.
    Closed,
}

/// The result of a hook chain run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainOutcome {
    /// The final value.
    Continue(Vec<u8>),
    /// A guard refused the value.
    Vetoed {
        /// The guard's plugin.
        plugin: String,
        /// Its reason.
        reason: String,
    },
}

/// One registration, for introspection (`dispatch plugins --json`).
pub use dispatch_protocol::plugins::Registration;

struct Provider<S> {
    plugin: String,
    version: u32,
    handler: Arc<S>,
}

struct Topic {
    version: u32,
    owner: String,
    subscribers: Vec<Subscriber>,
}

struct Subscriber {
    plugin: String,
    queue: mpsc::UnboundedSender<Arc<[u8]>>,
}

/// Counts events queued but not yet fully handled, across all subscribers.
#[derive(Default)]
struct InFlight(std::sync::atomic::AtomicUsize);

struct Chain {
    version: u32,
    owner: String,
    entries: Vec<HookEntry>,
}

#[derive(Clone)]
struct HookEntry {
    plugin: String,
    priority: i32,
    kind: HookKind,
    step: Arc<dyn HookStep>,
}

/// The bus. Shared by reference (`Arc<Bus<S>>`) between the host and every
/// plugin's host handle.
pub struct Bus<S> {
    services: RwLock<HashMap<String, Provider<S>>>,
    topics: RwLock<HashMap<String, Topic>>,
    hooks: RwLock<HashMap<String, Chain>>,
    spawn: Spawner,
    in_flight: Arc<InFlight>,
}

fn version_check(
    kind: Kind,
    name: &str,
    registered: u32,
    requested: u32,
    owner: &str,
) -> Result<(), BusError> {
    if registered == requested {
        Ok(())
    } else {
        Err(BusError::VersionMismatch {
            kind,
            name: name.to_owned(),
            registered,
            requested,
            owner: owner.to_owned(),
        })
    }
}

impl<S: Send + Sync + 'static> Bus<S> {
    /// An empty bus whose event pumps are started with `spawn`.
    pub fn new(spawn: Spawner) -> Self {
        Self {
            services: RwLock::default(),
            topics: RwLock::default(),
            hooks: RwLock::default(),
            spawn,
            in_flight: Arc::default(),
        }
    }

    /// Register `plugin` as the one provider of service `name`.
    pub fn provide(&self, plugin: &str, name: &str, version: u32, handler: S) -> Result<(), BusError> {
        let mut services = self.services.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = services.get(name) {
            return Err(BusError::DuplicateProvider {
                name: name.to_owned(),
                existing: existing.plugin.clone(),
                rejected: plugin.to_owned(),
            });
        }
        services.insert(
            name.to_owned(),
            Provider { plugin: plugin.to_owned(), version, handler: Arc::new(handler) },
        );
        Ok(())
    }

    /// The handler of service `name`, checked against `version`.
    pub fn service(&self, name: &str, version: u32) -> Result<Arc<S>, BusError> {
        let services = self.services.read().unwrap_or_else(PoisonError::into_inner);
        let p = services
            .get(name)
            .ok_or_else(|| BusError::NotFound { kind: Kind::Service, name: name.to_owned() })?;
        version_check(Kind::Service, name, p.version, version, &p.plugin)?;
        Ok(Arc::clone(&p.handler))
    }

    /// The plugin providing service `name`, checked against `version`.
    pub fn provider_of(&self, name: &str, version: u32) -> Result<String, BusError> {
        let services = self.services.read().unwrap_or_else(PoisonError::into_inner);
        let p = services
            .get(name)
            .ok_or_else(|| BusError::NotFound { kind: Kind::Service, name: name.to_owned() })?;
        version_check(Kind::Service, name, p.version, version, &p.plugin)?;
        Ok(p.plugin.clone())
    }

    /// Subscribe `plugin` to event `name`. Each subscriber gets its own
    /// queue and pump, so a slow or failing one never holds up the others
    /// or the publisher.
    pub fn subscribe(
        &self,
        plugin: &str,
        name: &str,
        version: u32,
        sink: Arc<dyn EventSink>,
    ) -> Result<(), BusError> {
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        let topic = topics.entry(name.to_owned()).or_insert_with(|| Topic {
            version,
            owner: plugin.to_owned(),
            subscribers: Vec::new(),
        });
        version_check(Kind::Event, name, topic.version, version, &topic.owner)?;
        let (tx, mut rx) = mpsc::unbounded::<Arc<[u8]>>();
        topic.subscribers.push(Subscriber { plugin: plugin.to_owned(), queue: tx });
        let (plugin, event) = (plugin.to_owned(), name.to_owned());
        let in_flight = Arc::clone(&self.in_flight);
        (self.spawn)(Box::pin(async move {
            while let Some(payload) = rx.next().await {
                if let Err(error) = sink.deliver(payload).await {
                    tracing::warn!(plugin = %plugin, event = %event, %error, "event subscriber failed");
                }
                in_flight.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            }
            // Events still queued when the subscriber was removed.
            let mut dropped = 0;
            while rx.try_recv().is_ok() {
                dropped += 1;
            }
            in_flight.0.fetch_sub(dropped, std::sync::atomic::Ordering::AcqRel);
        }));
        Ok(())
    }

    /// Queue an event for every subscriber; answers how many got it.
    pub fn publish(
        &self,
        plugin: &str,
        name: &str,
        version: u32,
        payload: Vec<u8>,
    ) -> Result<usize, BusError> {
        {
            let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(topic) = topics.get(name) {
                version_check(Kind::Event, name, topic.version, version, &topic.owner)?;
                let payload: Arc<[u8]> = payload.into();
                let mut delivered = 0;
                for s in &topic.subscribers {
                    self.in_flight.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    // A closed queue means the subscriber was removed.
                    if s.queue.unbounded_send(Arc::clone(&payload)).is_ok() {
                        delivered += 1;
                    } else {
                        self.in_flight.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                    }
                }
                return Ok(delivered);
            }
        }
        // First use of the name: the publisher fixes its version.
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        let topic = topics.entry(name.to_owned()).or_insert_with(|| Topic {
            version,
            owner: plugin.to_owned(),
            subscribers: Vec::new(),
        });
        version_check(Kind::Event, name, topic.version, version, &topic.owner)?;
        Ok(0)
    }

    /// Events published but not yet handled by every subscriber. Lets the
    /// host wait for start-up events to settle before it reports or serves.
    pub fn events_in_flight(&self) -> usize {
        self.in_flight.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Add a handler to hook chain `name`.
    pub fn add_hook(
        &self,
        plugin: &str,
        name: &str,
        version: u32,
        priority: i32,
        kind: HookKind,
        step: Arc<dyn HookStep>,
    ) -> Result<(), BusError> {
        let mut hooks = self.hooks.write().unwrap_or_else(PoisonError::into_inner);
        let chain = hooks.entry(name.to_owned()).or_insert_with(|| Chain {
            version,
            owner: plugin.to_owned(),
            entries: Vec::new(),
        });
        version_check(Kind::Hook, name, chain.version, version, &chain.owner)?;
        chain.entries.push(HookEntry { plugin: plugin.to_owned(), priority, kind, step });
        // Stable: equal priorities keep registration order.
        chain.entries.sort_by_key(|e| e.priority);
        Ok(())
    }

    /// Run hook chain `name` over `value`. With no handlers the value comes
    /// back unchanged.
    pub fn run_hook(
        &self,
        name: &str,
        version: u32,
        policy: FailurePolicy,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<ChainOutcome, BusError>> + Send + 'static {
        let entries = {
            let hooks = self.hooks.read().unwrap_or_else(PoisonError::into_inner);
            match hooks.get(name) {
                None => Ok(Vec::new()),
                Some(chain) => version_check(Kind::Hook, name, chain.version, version, &chain.owner)
                    .map(|()| chain.entries.clone()),
            }
        };
        let name = name.to_owned();
        async move { run_chain(&name, entries?, policy, value).await }
    }

    /// Remove everything `plugin` registered (after it failed to activate,
    /// or when it is deactivated). Its event queues close once drained.
    pub fn remove_plugin(&self, plugin: &str) {
        self.services.write().unwrap_or_else(PoisonError::into_inner).retain(|_, p| p.plugin != plugin);
        for topic in self.topics.write().unwrap_or_else(PoisonError::into_inner).values_mut() {
            topic.subscribers.retain(|s| s.plugin != plugin);
        }
        for chain in self.hooks.write().unwrap_or_else(PoisonError::into_inner).values_mut() {
            chain.entries.retain(|e| e.plugin != plugin);
        }
    }

    /// How the services `plugin` provides differ from the ones its manifest
    /// `declared` (where `prefix*` covers a family): a sentence naming both
    /// sides, or `None` when they agree.
    /// Hosts warn with it after activation, so a manifest cannot silently
    /// drift from what the plugin registers.
    pub fn service_drift(&self, plugin: &str, declared: &[&str]) -> Option<String> {
        let mut provided: Vec<String> = self
            .services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, p)| p.plugin == plugin)
            .map(|(name, _)| name.clone())
            .collect();
        provided.sort();
        // A declaration ending in `*` (`tool.*`) covers every service under
        // that prefix: a plugin whose services are only known at run time
        // (an MCP bridge) declares the family, and is never missing one.
        let covers = |d: &str, name: &str| match d.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => d == name,
        };
        let undeclared: Vec<&str> =
            provided.iter().map(String::as_str).filter(|n| !declared.iter().any(|d| covers(d, n))).collect();
        let missing: Vec<&str> = declared
            .iter()
            .copied()
            .filter(|d| !d.ends_with('*') && !provided.iter().any(|p| p == d))
            .collect();
        if undeclared.is_empty() && missing.is_empty() {
            return None;
        }
        let list = |names: &[&str]| names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
        let mut parts = Vec::new();
        if !undeclared.is_empty() {
            parts.push(format!("provides {} without declaring it in its manifest", list(&undeclared)));
        }
        if !missing.is_empty() {
            parts.push(format!("declares {} in its manifest but does not provide it", list(&missing)));
        }
        Some(format!("plugin `{plugin}` {}", parts.join("; ")))
    }

    /// Everything registered, sorted by kind and name.
    pub fn registrations(&self) -> Vec<Registration> {
        let mut out = Vec::new();
        for (name, p) in self.services.read().unwrap_or_else(PoisonError::into_inner).iter() {
            out.push(Registration {
                kind: "service".into(),
                name: name.clone(),
                version: p.version,
                plugin: p.plugin.clone(),
                priority: None,
            });
        }
        for (name, t) in self.topics.read().unwrap_or_else(PoisonError::into_inner).iter() {
            for s in &t.subscribers {
                out.push(Registration {
                    kind: "event".into(),
                    name: name.clone(),
                    version: t.version,
                    plugin: s.plugin.clone(),
                    priority: None,
                });
            }
        }
        for (name, c) in self.hooks.read().unwrap_or_else(PoisonError::into_inner).iter() {
            for e in &c.entries {
                out.push(Registration {
                    kind: "hook".into(),
                    name: name.clone(),
                    version: c.version,
                    plugin: e.plugin.clone(),
                    priority: Some(e.priority),
                });
            }
        }
        out.sort_by(|a, b| (&a.kind, &a.name, &a.plugin).cmp(&(&b.kind, &b.name, &b.plugin)));
        out
    }
}

async fn run_chain(
    name: &str,
    entries: Vec<HookEntry>,
    policy: FailurePolicy,
    mut value: Vec<u8>,
) -> Result<ChainOutcome, BusError> {
    for entry in entries {
        let input = match entry.kind {
            // A fail-open filter needs the value back if it fails.
            HookKind::Filter if policy == FailurePolicy::Open => value.clone(),
            HookKind::Filter => std::mem::take(&mut value),
            HookKind::Guard => value.clone(),
        };
        match entry.step.run(input).await {
            Ok(StepReply::Continue(v)) => {
                if entry.kind == HookKind::Filter {
                    value = v;
                }
            }
            Ok(StepReply::Veto(reason)) => return Ok(ChainOutcome::Vetoed { plugin: entry.plugin, reason }),
            Err(message) => match (policy, entry.kind) {
                (FailurePolicy::Open, _) => {
                    tracing::warn!(plugin = %entry.plugin, hook = %name, error = %message,
                        "hook handler failed; passing the value through (fail-open)");
                }
                (FailurePolicy::Closed, HookKind::Guard) => {
                    return Ok(ChainOutcome::Vetoed {
                        plugin: entry.plugin,
                        reason: format!("guard failed (fail-closed hook): {message}"),
                    })
                }
                (FailurePolicy::Closed, HookKind::Filter) => {
                    return Err(BusError::HookFailed { hook: name.to_owned(), plugin: entry.plugin, message })
                }
            },
        }
    }
    Ok(ChainOutcome::Continue(value))
}
