//! # store-postgres — the conversation store on PostgreSQL
//!
//! The `store` contract of `store-sqlite` (`StoreRequest`), on a database
//! that several `dispatch serve` hosts share: any host reads and appends
//! to any conversation, seqs stay 1-based and gap-free whichever host
//! appends, and nothing the store answers comes from one host's memory.
//! Listed in `plugins.toml` instead of `store-sqlite` (plugins that depend
//! on `store-sqlite` accept it: it declares the same service).
//!
//! ```toml
//! [[plugin]]
//! path = "libdispatch_plugin_store_postgres.so"
//! [plugin.config]
//! url = "postgres://dispatch@db.internal:5432/dispatch"  # else $DISPATCH_DATABASE_URL
//! schema = "dispatch"              # optional: the tables' schema (created if missing)
//! pool_size = 16                   # connections per host
//! connect_timeout_ms = 5000        # to connect, or to get a free connection
//! statement_timeout_ms = 30000     # PostgreSQL's statement_timeout (0: none)
//! claim_lease_ms = 10000           # a dead host's turn claims lapse after this
//! max_chunk_bytes = 1048576
//! max_image_chunk_bytes = 16777216
//! ```

pub mod cluster;
pub mod store;

use std::time::Duration;

use dispatch_abi::runtime::{PluginRuntime, Runner};
use dispatch_abi::{codes, to_json, Context, Error, Host, Plugin, PluginManifest};
use dispatch_contracts::cluster::{
    ClusterRequest, CLUSTER, FORWARDED, RELAYED_STATUS, REMOTE_EVENT, REMOTE_SURFACE,
};
use dispatch_contracts::protocol::wire::AgentEvent;
use dispatch_contracts::protocol::BoxFuture;
use dispatch_contracts::session::{StatusChanged, EVENT, STATUS};
use dispatch_contracts::store::{StoreRequest, STORE};
use dispatch_contracts::surface::{SurfaceChanged, CHANGED as SURFACE_CHANGED};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::cluster::{Cluster, Kind};
use crate::store::{Options, Store, StoreError};

/// How long a turn claim outlives its host's last renewal, by default: the
/// longest a conversation whose host died waits before another host may
/// run its next turn.
pub const DEFAULT_LEASE_MS: u64 = 10_000;

/// Events waiting to be relayed to the other hosts; past this (the
/// database is away) new ones are dropped for them.
const RELAY_QUEUE: usize = 65_536;

/// The variable the URL is read from when the configuration has none.
pub const URL_VARIABLE: &str = "DISPATCH_DATABASE_URL";

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    url: Option<String>,
    schema: Option<String>,
    pool_size: Option<u32>,
    connect_timeout_ms: Option<u64>,
    statement_timeout_ms: Option<u64>,
    max_chunk_bytes: Option<usize>,
    max_image_chunk_bytes: Option<usize>,
    claim_lease_ms: Option<u64>,
    workers: Option<usize>,
}

/// The plugin.
pub struct StorePostgres {
    runtime: PluginRuntime,
    store: Store,
    cluster: Cluster,
}

impl std::fmt::Debug for StorePostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorePostgres").finish_non_exhaustive()
    }
}

fn err(e: StoreError) -> Error {
    let code = match e {
        StoreError::InvalidId(_)
        | StoreError::InvalidWorkspace(_)
        | StoreError::ChunkTooLarge { .. }
        | StoreError::EmptyMessage
        | StoreError::BadCompaction(_) => codes::INVALID_PAYLOAD,
        StoreError::Conflict(_) => codes::CONFLICT,
        StoreError::NoConversation(_) => codes::NOT_FOUND,
        StoreError::Unavailable(_) => codes::UNAVAILABLE,
        _ => codes::PLUGIN,
    };
    Error::new(code, e.to_string())
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        err(e)
    }
}

dispatch_contracts::store_backend!(Store, StoreError);

/// One `store` request, answered by the shared dispatch over this store.
async fn handle(store: Store, req: StoreRequest) -> Result<Value, Error> {
    dispatch_contracts::store::serve(&store, req).await
}

async fn handle_cluster(cluster: Cluster, req: ClusterRequest) -> Result<Value, Error> {
    match req {
        ClusterRequest::Claim { conversation_id, turn_id } => {
            to_json(&cluster.claim(&conversation_id, &turn_id).await.map_err(err)?)
        }
        ClusterRequest::Release { conversation_id } => {
            cluster.release(&conversation_id).await.map_err(err)?;
            Ok(Value::Object(Default::default()))
        }
        ClusterRequest::Forward { conversation_id, action } => {
            to_json(&cluster.forward(&conversation_id, action).await.map_err(err)?)
        }
        ClusterRequest::Whoami => to_json(&cluster.member()),
        other => Err(Error::new(codes::UNSUPPORTED, format!("unsupported cluster request: {other:?}"))),
    }
}

/// This host's id in the cluster: its name and pid (what an operator
/// recognises), and a random part (a pid is reused).
fn host_id() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{}:{}:{}", if name.is_empty() { "host" } else { name }, std::process::id(), &random[..8])
}

/// Provide the cluster service and keep this host's part of it going.
fn serve_cluster(host: &Host, cluster: &Cluster, runner: &Runner) -> Result<(), Error> {
    let (c, r) = (cluster.clone(), runner.clone());
    host.provide(&CLUSTER, move |req: ClusterRequest| -> BoxFuture<Result<Value, Error>> {
        Box::pin(r.run(handle_cluster(c.clone(), req)))
    })?;
    runner.spawn(cluster.clone().renew_forever());
    // This host's turn events and status changes, to the other hosts.
    let (queue, relay) = tokio::sync::mpsc::channel(RELAY_QUEUE);
    let full = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let offer = move |kind: Kind, raw: Result<Box<RawValue>, serde_json::Error>| {
        let Ok(raw) = raw else { return };
        if queue.try_send((kind, raw)).is_err() && !full.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!("the relay to the other hosts is behind; live events are dropped for them");
        }
    };
    let o = offer.clone();
    host.subscribe_sync(&EVENT, move |e: AgentEvent| {
        o(Kind::Event, serde_json::value::to_raw_value(&e));
        Ok(())
    })?;
    let o = offer.clone();
    host.subscribe_sync(&STATUS, move |s: StatusChanged| {
        o(Kind::Status, serde_json::value::to_raw_value(&s));
        Ok(())
    })?;
    // A conversation's surfaces (its todo list, its queue) as this host's
    // plugins set them; not the global ones (each host shows its own
    // plugins), nor what was relayed here.
    host.subscribe_sync(&SURFACE_CHANGED, move |c: SurfaceChanged| {
        if c.conversation_id.is_some() && c.spec.is_some() && !c.remote {
            offer(Kind::Surface, serde_json::value::to_raw_value(&c));
        }
        Ok(())
    })?;
    runner.spawn(cluster.clone().relay_forever(relay));
    let (publisher, republisher) = (host.clone(), host.clone());
    runner.spawn(cluster.clone().listen_forever(
        move |f| {
            if let Err(e) = publisher.publish(&FORWARDED, &f) {
                tracing::warn!(error = %e, "cannot hand a forwarded action to the session");
            }
        },
        move |kind, json| {
            let published = match kind {
                Kind::Event => serde_json::from_str::<AgentEvent>(json.get())
                    .map_err(|e| Error::new(codes::PLUGIN, e.to_string()))
                    .and_then(|e| republisher.publish(&REMOTE_EVENT, &e)),
                Kind::Status => serde_json::from_str::<StatusChanged>(json.get())
                    .map_err(|e| Error::new(codes::PLUGIN, e.to_string()))
                    .and_then(|s| republisher.publish(&RELAYED_STATUS, &s)),
                Kind::Surface => serde_json::from_str::<SurfaceChanged>(json.get())
                    .map_err(|e| Error::new(codes::PLUGIN, e.to_string()))
                    .and_then(|c| republisher.publish(&REMOTE_SURFACE, &c)),
            };
            if let Err(e) = published {
                tracing::warn!(error = %e, "cannot publish a relayed event");
            }
        },
    ));
    Ok(())
}

impl Plugin for StorePostgres {
    fn manifest() -> PluginManifest {
        PluginManifest::new("store-postgres", env!("CARGO_PKG_VERSION"))
            .description("The conversation store on PostgreSQL, shared by several hosts")
            .provides("service", STORE.name())
            .provides("service", CLUSTER.name())
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let cfg: Config = ctx.config()?;
        let url = cfg.url.clone().or_else(|| std::env::var(URL_VARIABLE).ok()).ok_or_else(|| {
            Error::new(
                codes::INVALID_CONFIG,
                format!("no database: set `url` in [plugin.config] or ${URL_VARIABLE}"),
            )
        })?;
        let mut options = Options::new(url);
        options.schema = cfg.schema.clone();
        if let Some(n) = cfg.pool_size {
            if !(1..=1000).contains(&n) {
                return Err(Error::new(
                    codes::INVALID_CONFIG,
                    format!("`pool_size` = {n} is out of range (1 to 1000)"),
                ));
            }
            options.pool_size = n;
        }
        if let Some(ms) = cfg.connect_timeout_ms {
            options.connect_timeout = Duration::from_millis(ms.max(1));
        }
        if let Some(ms) = cfg.statement_timeout_ms {
            options.statement_timeout = Duration::from_millis(ms);
        }
        if let Some(m) = cfg.max_chunk_bytes {
            options.max_chunk_bytes = m;
        }
        if let Some(m) = cfg.max_image_chunk_bytes {
            options.max_image_chunk_bytes = m;
        }
        let shown = store::redact(&options.url);
        let runtime = PluginRuntime::new("store-postgres", cfg.workers.unwrap_or(2).max(1))?;
        // Open inside our runtime: the pool's connections live there.
        let store = runtime
            .handle()
            .block_on(Store::open(options))
            .map_err(|e| Error::new(codes::INVALID_CONFIG, e.to_string()))?;
        tracing::info!(url = %shown, schema = cfg.schema.as_deref().unwrap_or("(default)"), "store open");
        let runner: Runner = runtime.runner();
        let s = store.clone();
        let r = runner.clone();
        ctx.host().provide(&STORE, move |req: StoreRequest| -> BoxFuture<Result<Value, Error>> {
            Box::pin(r.run(handle(s.clone(), req)))
        })?;
        let lease = Duration::from_millis(cfg.claim_lease_ms.unwrap_or(DEFAULT_LEASE_MS).max(300));
        let cluster = Cluster::new(store.pool().clone(), host_id(), lease);
        serve_cluster(ctx.host(), &cluster, &runner)?;
        tracing::info!(host = %cluster.member().host_id, lease_ms = lease.as_millis() as u64, "cluster member");
        Ok(StorePostgres { runtime, store, cluster })
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        let (store, cluster) = (self.store.clone(), self.cluster.clone());
        let _ = self.runtime.handle().block_on(async {
            // Free this host's claims now rather than at the lease's end.
            let _ = tokio::time::timeout(Duration::from_secs(2), cluster.release_all()).await;
            tokio::time::timeout(Duration::from_secs(5), store.close()).await
        });
        self.runtime.shutdown(Duration::from_secs(5));
        Ok(())
    }
}

dispatch_abi::export_plugin!(StorePostgres);
