//! The conversation store: the `store` service (provided by `store-sqlite`
//! today; any store plugin speaks the same contract). Types in
//! [`dispatch_protocol::store`], re-exported here.

use dispatch_abi::Service;
pub use dispatch_protocol::store::*;
use serde_json::Value;

/// The `store` service. Answers differ by op (see [`StoreRequest`]).
pub const STORE: Service<StoreRequest, Value> = Service::new("store", 1);

use std::future::Future;

use dispatch_abi::{codes, Error};
use dispatch_protocol::trace::{ThroughputRow, TraceEvent, TracePage, MAX_PAGE};
use dispatch_protocol::wire::{ChatMessage, Chunk, ConversationMeta, ConversationStatus, Role, TurnMetrics};
use dispatch_protocol::workspace::{Workspace, WorkspaceEntry, WorkspaceList, WorkspaceUpdate};

/// What a store implements; [`serve`] answers the `store` service's
/// requests with it, so every store decodes, dispatches and encodes them
/// the same way, and a new op is one method every store must have (the
/// compiler says which are missing). A store whose inherent methods have
/// these names and signatures gets the impl from [`store_backend!`].
pub trait StoreBackend: Send + Sync {
    /// The store's own error; its `Into` picks the bus code (`not_found`,
    /// `conflict`, `invalid_payload`, `unavailable`, …).
    type Error: Into<Error> + Send;
    /// [`StoreRequest::Append`]: the new chunks' seqs.
    fn append(
        &self,
        conversation_id: &str,
        role: Role,
        turn_id: Option<&str>,
        chunks: &[Chunk],
    ) -> impl Future<Output = Result<Vec<u64>, Self::Error>> + Send;
    /// [`StoreRequest::AppendMessages`]: every chunk's seq, in order.
    fn append_messages(
        &self,
        conversation_id: &str,
        turn_id: Option<&str>,
        messages: &[(Role, &[Chunk])],
    ) -> impl Future<Output = Result<Vec<u64>, Self::Error>> + Send;
    /// [`StoreRequest::History`].
    fn history(
        &self,
        conversation_id: &str,
        since: Option<u64>,
        before: Option<u64>,
        limit: Option<u64>,
    ) -> impl Future<Output = Result<History, Self::Error>> + Send;
    /// [`StoreRequest::Messages`].
    fn messages(
        &self,
        conversation_id: &str,
    ) -> impl Future<Output = Result<Vec<ChatMessage>, Self::Error>> + Send;
    /// [`StoreRequest::Get`].
    fn get(&self, conversation_id: &str)
        -> impl Future<Output = Result<Option<Details>, Self::Error>> + Send;
    /// [`StoreRequest::Update`].
    fn update(&self, update: MetaUpdate) -> impl Future<Output = Result<Details, Self::Error>> + Send;
    /// [`StoreRequest::List`].
    fn list(
        &self,
        prefix: Option<&str>,
        status: Option<ConversationStatus>,
    ) -> impl Future<Output = Result<Vec<ConversationMeta>, Self::Error>> + Send;
    /// [`StoreRequest::AppendMetrics`].
    fn append_metrics(
        &self,
        conversation_id: &str,
        metrics: &TurnMetrics,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// [`StoreRequest::Metrics`].
    fn metrics(
        &self,
        conversation_id: &str,
    ) -> impl Future<Output = Result<Vec<TurnMetrics>, Self::Error>> + Send;
    /// [`StoreRequest::Compact`]: the conversation's latest seq after it.
    fn compact(&self, request: CompactRequest) -> impl Future<Output = Result<u64, Self::Error>> + Send;
    /// [`StoreRequest::GetValue`], as JSON text.
    fn value(
        &self,
        scope: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<String>, Self::Error>> + Send;
    /// [`StoreRequest::PutValue`] (`None` forgets it).
    fn put_value(
        &self,
        scope: &str,
        key: &str,
        value: Option<String>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// [`StoreRequest::Limits`]: the largest text and image chunks, in bytes.
    fn limits(&self) -> (usize, usize);
    /// [`StoreRequest::Ping`].
    fn ping(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// [`StoreRequest::Workspaces`].
    fn workspaces(&self) -> impl Future<Output = Result<Vec<WorkspaceEntry>, Self::Error>> + Send;
    /// [`StoreRequest::GetWorkspace`].
    fn workspace(&self, id: &str) -> impl Future<Output = Result<Option<Workspace>, Self::Error>> + Send;
    /// [`StoreRequest::PutWorkspace`].
    fn put_workspace(
        &self,
        update: WorkspaceUpdate,
    ) -> impl Future<Output = Result<Workspace, Self::Error>> + Send;
    /// [`StoreRequest::DeleteWorkspace`]: whether it was there.
    fn delete_workspace(&self, id: &str) -> impl Future<Output = Result<bool, Self::Error>> + Send;
    /// [`StoreRequest::AppendTraces`]: only those [`TraceEvent::is_kept`].
    fn append_traces(&self, traces: &[TraceEvent]) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// [`StoreRequest::Traces`] (the query's `limit` already checked).
    fn traces(&self, query: &TraceQuery) -> impl Future<Output = Result<TracePage, Self::Error>> + Send;
    /// [`StoreRequest::Throughput`], sorted by model.
    fn throughput(
        &self,
        start: u64,
        end: u64,
    ) -> impl Future<Output = Result<Vec<ThroughputRow>, Self::Error>> + Send;
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::new(codes::PLUGIN, format!("cannot encode the answer: {e}")))
}

/// Answer one `store` request with `store`.
pub async fn serve<S: StoreBackend>(store: &S, req: StoreRequest) -> Result<Value, Error> {
    let unit = || Value::Object(Default::default());
    match req {
        StoreRequest::Append { conversation_id, role, turn_id, chunks } => {
            let seqs = store
                .append(&conversation_id, role, turn_id.as_deref(), &chunks)
                .await
                .map_err(Into::into)?;
            to_json(&Appended { seqs })
        }
        StoreRequest::AppendMessages { conversation_id, turn_id, messages } => {
            let messages: Vec<(Role, &[Chunk])> =
                messages.iter().map(|m| (m.role, m.chunks.as_slice())).collect();
            let seqs = store
                .append_messages(&conversation_id, turn_id.as_deref(), &messages)
                .await
                .map_err(Into::into)?;
            to_json(&Appended { seqs })
        }
        StoreRequest::History { conversation_id, since_seq, before_seq, limit } => {
            to_json(&store.history(&conversation_id, since_seq, before_seq, limit).await.map_err(Into::into)?)
        }
        StoreRequest::Messages { conversation_id } => {
            to_json(&Messages { messages: store.messages(&conversation_id).await.map_err(Into::into)? })
        }
        StoreRequest::Get { conversation_id } => {
            to_json(&store.get(&conversation_id).await.map_err(Into::into)?)
        }
        StoreRequest::Update(u) => to_json(&store.update(u).await.map_err(Into::into)?),
        StoreRequest::List { prefix, status } => to_json(&Listing {
            conversations: store.list(prefix.as_deref(), status).await.map_err(Into::into)?,
        }),
        StoreRequest::AppendMetrics { conversation_id, metrics } => {
            store.append_metrics(&conversation_id, &metrics).await.map_err(Into::into)?;
            Ok(unit())
        }
        StoreRequest::Metrics { conversation_id } => {
            to_json(&MetricsList { turns: store.metrics(&conversation_id).await.map_err(Into::into)? })
        }
        StoreRequest::Compact(request) => {
            let (conversation_id, archive_id) = (request.conversation_id.clone(), request.archive_id.clone());
            let latest_seq = store.compact(request).await.map_err(Into::into)?;
            to_json(&Compacted { conversation_id, archive_id, latest_seq })
        }
        StoreRequest::GetValue { scope, key } => match store.value(&scope, &key).await.map_err(Into::into)? {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| Error::new(codes::PLUGIN, format!("a stored value is not JSON: {e}"))),
            None => Ok(Value::Null),
        },
        StoreRequest::PutValue { scope, key, value } => {
            let text = (!value.is_null()).then(|| value.to_string());
            store.put_value(&scope, &key, text).await.map_err(Into::into)?;
            Ok(unit())
        }
        StoreRequest::Limits => {
            let (text, image) = store.limits();
            to_json(&StoreLimits { max_chunk_bytes: text as u64, max_image_chunk_bytes: image as u64 })
        }
        StoreRequest::Ping => {
            store.ping().await.map_err(Into::into)?;
            Ok(unit())
        }
        StoreRequest::Workspaces => {
            to_json(&WorkspaceList { workspaces: store.workspaces().await.map_err(Into::into)? })
        }
        StoreRequest::GetWorkspace { id } => to_json(&store.workspace(&id).await.map_err(Into::into)?),
        StoreRequest::PutWorkspace(update) => {
            to_json(&store.put_workspace(update).await.map_err(Into::into)?)
        }
        StoreRequest::DeleteWorkspace { id } => {
            to_json(&serde_json::json!({"deleted": store.delete_workspace(&id).await.map_err(Into::into)?}))
        }
        StoreRequest::AppendTraces { traces } => {
            let kept: Vec<TraceEvent> = traces.into_iter().filter(TraceEvent::is_kept).collect();
            if !kept.is_empty() {
                store.append_traces(&kept).await.map_err(Into::into)?;
            }
            Ok(unit())
        }
        StoreRequest::Traces(query) => {
            if query.limit == 0 || query.limit > MAX_PAGE {
                return Err(Error::new(
                    codes::INVALID_PAYLOAD,
                    format!("`limit` must be 1 to {MAX_PAGE}, not {}", query.limit),
                ));
            }
            to_json(&store.traces(&query).await.map_err(Into::into)?)
        }
        StoreRequest::Throughput { start, end } => {
            to_json(&ThroughputList { models: store.throughput(start, end).await.map_err(Into::into)? })
        }
        other => Err(Error::new(codes::UNSUPPORTED, format!("unsupported store request: {other:?}"))),
    }
}

/// `impl StoreBackend for $store` by its inherent methods of the same
/// names and signatures (`async fn append(&self, …) -> Result<_, $error>`,
/// …), for a store whose own API is the contract.
#[macro_export]
macro_rules! store_backend {
    ($store:ty, $error:ty) => {
        impl $crate::store::StoreBackend for $store {
            type Error = $error;
            async fn append(
                &self,
                conversation_id: &str,
                role: $crate::protocol::wire::Role,
                turn_id: Option<&str>,
                chunks: &[$crate::protocol::wire::Chunk],
            ) -> Result<Vec<u64>, $error> {
                <$store>::append(self, conversation_id, role, turn_id, chunks).await
            }
            async fn append_messages(
                &self,
                conversation_id: &str,
                turn_id: Option<&str>,
                messages: &[($crate::protocol::wire::Role, &[$crate::protocol::wire::Chunk])],
            ) -> Result<Vec<u64>, $error> {
                <$store>::append_messages(self, conversation_id, turn_id, messages).await
            }
            async fn history(
                &self,
                conversation_id: &str,
                since: Option<u64>,
                before: Option<u64>,
                limit: Option<u64>,
            ) -> Result<$crate::store::History, $error> {
                <$store>::history(self, conversation_id, since, before, limit).await
            }
            async fn messages(
                &self,
                conversation_id: &str,
            ) -> Result<Vec<$crate::protocol::wire::ChatMessage>, $error> {
                <$store>::messages(self, conversation_id).await
            }
            async fn get(&self, conversation_id: &str) -> Result<Option<$crate::store::Details>, $error> {
                <$store>::get(self, conversation_id).await
            }
            async fn update(
                &self,
                update: $crate::store::MetaUpdate,
            ) -> Result<$crate::store::Details, $error> {
                <$store>::update(self, update).await
            }
            async fn list(
                &self,
                prefix: Option<&str>,
                status: Option<$crate::protocol::wire::ConversationStatus>,
            ) -> Result<Vec<$crate::protocol::wire::ConversationMeta>, $error> {
                <$store>::list(self, prefix, status).await
            }
            async fn append_metrics(
                &self,
                conversation_id: &str,
                metrics: &$crate::protocol::wire::TurnMetrics,
            ) -> Result<(), $error> {
                <$store>::append_metrics(self, conversation_id, metrics).await
            }
            async fn metrics(
                &self,
                conversation_id: &str,
            ) -> Result<Vec<$crate::protocol::wire::TurnMetrics>, $error> {
                <$store>::metrics(self, conversation_id).await
            }
            async fn compact(&self, request: $crate::store::CompactRequest) -> Result<u64, $error> {
                <$store>::compact(self, request).await
            }
            async fn value(&self, scope: &str, key: &str) -> Result<Option<String>, $error> {
                <$store>::value(self, scope, key).await
            }
            async fn put_value(&self, scope: &str, key: &str, value: Option<String>) -> Result<(), $error> {
                <$store>::put_value(self, scope, key, value).await
            }
            fn limits(&self) -> (usize, usize) {
                <$store>::limits(self)
            }
            async fn ping(&self) -> Result<(), $error> {
                <$store>::ping(self).await
            }
            async fn workspaces(&self) -> Result<Vec<$crate::protocol::workspace::WorkspaceEntry>, $error> {
                <$store>::workspaces(self).await
            }
            async fn workspace(
                &self,
                id: &str,
            ) -> Result<Option<$crate::protocol::workspace::Workspace>, $error> {
                <$store>::workspace(self, id).await
            }
            async fn put_workspace(
                &self,
                update: $crate::protocol::workspace::WorkspaceUpdate,
            ) -> Result<$crate::protocol::workspace::Workspace, $error> {
                <$store>::put_workspace(self, update).await
            }
            async fn delete_workspace(&self, id: &str) -> Result<bool, $error> {
                <$store>::delete_workspace(self, id).await
            }
            async fn append_traces(
                &self,
                traces: &[$crate::protocol::trace::TraceEvent],
            ) -> Result<(), $error> {
                <$store>::append_traces(self, traces).await
            }
            async fn traces(
                &self,
                query: &$crate::store::TraceQuery,
            ) -> Result<$crate::protocol::trace::TracePage, $error> {
                <$store>::traces(self, query).await
            }
            async fn throughput(
                &self,
                start: u64,
                end: u64,
            ) -> Result<Vec<$crate::protocol::trace::ThroughputRow>, $error> {
                <$store>::throughput(self, start, end).await
            }
        }
    };
}
