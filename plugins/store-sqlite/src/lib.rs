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
use dispatch_abi::{codes, to_json, Context, Error, Plugin, PluginManifest};
use dispatch_contracts::protocol::wire::{Chunk, Role};
use dispatch_contracts::protocol::workspace::WorkspaceList;
use dispatch_contracts::protocol::BoxFuture;
use dispatch_contracts::store::{
    Appended, Compacted, History, Listing, Messages, MetricsList, StoreLimits, StoreRequest, STORE,
};
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

async fn handle(store: Store, req: StoreRequest) -> Result<Value, Error> {
    match req {
        StoreRequest::Append { conversation_id, role, turn_id, chunks } => {
            let seqs =
                store.append(&conversation_id, role, turn_id.as_deref(), &chunks).await.map_err(err)?;
            to_json(&Appended { seqs })
        }
        StoreRequest::AppendMessages { conversation_id, turn_id, messages } => {
            let messages: Vec<(Role, &[Chunk])> =
                messages.iter().map(|m| (m.role, m.chunks.as_slice())).collect();
            let seqs =
                store.append_messages(&conversation_id, turn_id.as_deref(), &messages).await.map_err(err)?;
            to_json(&Appended { seqs })
        }
        StoreRequest::History { conversation_id, since_seq, before_seq, limit } => {
            let h: History =
                store.history(&conversation_id, since_seq, before_seq, limit).await.map_err(err)?;
            to_json(&h)
        }
        StoreRequest::Messages { conversation_id } => {
            to_json(&Messages { messages: store.messages(&conversation_id).await.map_err(err)? })
        }
        StoreRequest::Get { conversation_id } => to_json(&store.get(&conversation_id).await.map_err(err)?),
        StoreRequest::Update(u) => to_json(&store.update(u).await.map_err(err)?),
        StoreRequest::List { prefix, status } => {
            to_json(&Listing { conversations: store.list(prefix.as_deref(), status).await.map_err(err)? })
        }
        StoreRequest::AppendMetrics { conversation_id, metrics } => {
            store.append_metrics(&conversation_id, &metrics).await.map_err(err)?;
            Ok(Value::Object(Default::default()))
        }
        StoreRequest::Metrics { conversation_id } => {
            to_json(&MetricsList { turns: store.metrics(&conversation_id).await.map_err(err)? })
        }
        StoreRequest::Compact(request) => {
            let (conversation_id, archive_id) = (request.conversation_id.clone(), request.archive_id.clone());
            let latest_seq = store.compact(request).await.map_err(err)?;
            to_json(&Compacted { conversation_id, archive_id, latest_seq })
        }
        StoreRequest::GetValue { scope, key } => match store.value(&scope, &key).await.map_err(err)? {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| Error::new(codes::PLUGIN, format!("a stored value is not JSON: {e}"))),
            None => Ok(Value::Null),
        },
        StoreRequest::PutValue { scope, key, value } => {
            let text = (!value.is_null()).then(|| value.to_string());
            store.put_value(&scope, &key, text).await.map_err(err)?;
            Ok(Value::Object(Default::default()))
        }
        StoreRequest::Limits => {
            let (text, image) = store.limits();
            to_json(&StoreLimits { max_chunk_bytes: text as u64, max_image_chunk_bytes: image as u64 })
        }
        StoreRequest::Workspaces => {
            to_json(&WorkspaceList { workspaces: store.workspaces().await.map_err(err)? })
        }
        StoreRequest::GetWorkspace { id } => to_json(&store.workspace(&id).await.map_err(err)?),
        StoreRequest::PutWorkspace(update) => to_json(&store.put_workspace(update).await.map_err(err)?),
        StoreRequest::DeleteWorkspace { id } => {
            to_json(&serde_json::json!({"deleted": store.delete_workspace(&id).await.map_err(err)?}))
        }
        StoreRequest::Ping => {
            store.ping().await.map_err(err)?;
            Ok(Value::Object(Default::default()))
        }
        other => Err(Error::new(codes::UNSUPPORTED, format!("unsupported store request: {other:?}"))),
    }
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
