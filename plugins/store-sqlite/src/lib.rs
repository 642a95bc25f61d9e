//! # store-sqlite — the conversation store on SQLite
//!
//! The append-only chunk log (1-based, gap-free `seq` per conversation),
//! conversation metadata and per-turn metrics, behind the `store` service
//! (`dispatch_contracts::protocol::store::StoreRequest`), so a different store can
//! replace it without touching the plugins that use it.
//!
//! ```toml
//! [[plugin]]
//! path = "libdispatch_plugin_store_sqlite.so"
//! [plugin.config]
//! path = "/var/lib/dispatch/dispatch.db"  # default: <data_dir>/store-sqlite/dispatch.db
//! durability = "normal"                  # or "full" (see below)
//! max_chunk_bytes = 1048576              # a larger chunk is refused
//! max_image_chunk_bytes = 16777216       # an image chunk's own limit (inline data URLs)
//! readers = 4                            # read connections (default: cores, 2-8)
//! ```
//!
//! Durability: `normal` (SQLite `synchronous = NORMAL`, WAL) survives any
//! crash of the process — an acknowledged append is there after a SIGKILL —
//! but the last commits before a power loss or kernel crash can be lost
//! (never half of one: the database stays consistent). `full` makes every
//! acknowledged append durable against power loss too, at the cost of an
//! fsync per commit (group commit shares it among concurrent turns).

pub mod store;

use std::path::PathBuf;
use std::time::Duration;

use dispatch_abi::runtime::{PluginRuntime, Runner};
use dispatch_abi::{codes, Context, Error, Plugin, PluginManifest};
use dispatch_contracts::protocol::BoxFuture;
use dispatch_contracts::store::{StoreRequest, STORE};
use serde::Deserialize;
use serde_json::Value;

use crate::store::{Durability, Options, Store, StoreError};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    path: Option<PathBuf>,
    durability: Durability,
    max_chunk_bytes: Option<usize>,
    max_image_chunk_bytes: Option<usize>,
    readers: Option<u32>,
}

/// The plugin.
pub struct StoreSqlite {
    runtime: PluginRuntime,
    store: Option<Store>,
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
        StoreError::Closed => codes::UNAVAILABLE,
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

impl Plugin for StoreSqlite {
    fn manifest() -> PluginManifest {
        PluginManifest::new("store-sqlite", env!("CARGO_PKG_VERSION"))
            .description("The conversation store: chunk log, metadata and metrics in SQLite")
            .provides("service", STORE.name())
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let cfg: Config = ctx.config()?;
        let path = cfg.path.clone().unwrap_or_else(|| store::default_path(&ctx.host().data_dir()));
        let mut options = Options::new(&path);
        options.durability = cfg.durability;
        if let Some(m) = cfg.max_chunk_bytes {
            options.max_chunk_bytes = m;
        }
        if let Some(m) = cfg.max_image_chunk_bytes {
            options.max_image_chunk_bytes = m;
        }
        if let Some(r) = cfg.readers {
            if !(1..=64).contains(&r) {
                return Err(Error::new(
                    codes::INVALID_CONFIG,
                    format!("`readers` = {r} is out of range (1 to 64)"),
                ));
            }
            options.readers = r;
        }
        let runtime = PluginRuntime::new("store-sqlite", 2)?;
        // Open inside our runtime: the pool and the writer task live there.
        let store = runtime
            .handle()
            .block_on(Store::open(options))
            .map_err(|e| Error::new(codes::INVALID_CONFIG, e.to_string()))?;
        tracing::info!(path = %path.display(), durability = ?cfg.durability, "store open");
        let runner: Runner = runtime.runner();
        let s = store.clone();
        ctx.host().provide(&STORE, move |req: StoreRequest| -> BoxFuture<Result<Value, Error>> {
            match req {
                // Appends only queue for the writer thread and wait for its
                // answer (tokio channels, which need no runtime): served in
                // the caller's own poll, they skip two thread hand-offs per
                // call.
                StoreRequest::Append { .. }
                | StoreRequest::AppendMessages { .. }
                | StoreRequest::AppendMetrics { .. } => Box::pin(handle(s.clone(), req)),
                // Reads use the pool and blocking threads of our runtime.
                _ => Box::pin(runner.run(handle(s.clone(), req))),
            }
        })?;
        Ok(StoreSqlite { runtime, store: Some(store) })
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        if let Some(store) = self.store.take() {
            // Let queued writes finish before the runtime stops.
            let _ = self
                .runtime
                .handle()
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), store.close()).await });
        }
        self.runtime.shutdown(Duration::from_secs(5));
        Ok(())
    }
}

dispatch_abi::export_plugin!(StoreSqlite);
