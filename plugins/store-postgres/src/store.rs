//! The PostgreSQL conversation store.
//!
//! Several hosts write one database at once, so nothing the store answers
//! may come from a host's memory: a conversation's last seq lives in its
//! row (`last_seq`), and an append is one statement that bumps it and
//! inserts the chunks. The bump takes the row's lock, which orders
//! concurrent appends to one conversation from any host; the statement is
//! atomic, so a failed append leaves neither chunks nor a hole. Reads are
//! plain queries on a pool; a commit is acknowledged once PostgreSQL has
//! it on disk (its `synchronous_commit`), so it survives any crash of the
//! host.

use std::str::FromStr as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dispatch_contracts::protocol::reconcile::reconcile;
use dispatch_contracts::protocol::store::{
    default_title, CompactRequest, Details, History, MetaUpdate, TraceQuery, SUMMARY_PREFIX,
};
use dispatch_contracts::protocol::trace::{ThroughputRow, TraceEvent, TracePage};
use dispatch_contracts::protocol::wire::{
    is_valid_conversation_id, ChatMessage, Chunk, ConversationMeta, ConversationStatus, ReasoningEffort,
    Role, StoredChunk, TurnMetrics,
};
use dispatch_contracts::protocol::workspace::{
    is_valid_slug, Workspace, WorkspaceEntry, WorkspaceUpdate, DEFAULT_WORKSPACE,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection as _, Executor as _, PgConnection, Row as _};

/// The migrations, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be reached or migrated at start.
    #[error("cannot open the database {url}: {reason}")]
    Open {
        /// The URL, without its password.
        url: String,
        /// Why.
        reason: String,
    },
    /// A conversation id that is empty, too long or has odd characters.
    #[error("invalid conversation id {0:?}: use 1-128 characters of A-Z a-z 0-9 . _ - : @")]
    InvalidId(String),
    /// A workspace id that is not a slug.
    #[error("Workspace id must be a valid slug (lowercase alphanumeric + hyphens, 1–40 chars): {0:?}")]
    InvalidWorkspace(String),
    /// A chunk over the size limit.
    #[error("chunk #{index} is {size} bytes, over the limit of {limit} bytes")]
    ChunkTooLarge {
        /// Its position in the message (0-based).
        index: usize,
        /// Its JSON size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// An append with no chunks.
    #[error("a message needs at least one chunk")]
    EmptyMessage,
    /// A compaction that no longer fits the conversation.
    #[error("{0}")]
    Conflict(String),
    /// A compaction asked of a conversation that does not exist.
    #[error("no conversation {0:?}")]
    NoConversation(String),
    /// A compaction whose kept part does not start a message.
    #[error("{0}")]
    BadCompaction(String),
    /// The database cannot be reached now (down, restarting, the pool
    /// exhausted past its timeout): worth trying again later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let unavailable = match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_) => true,
            // Class 08 (connection exception), 57P01-3 (shutting down,
            // crash recovery, cannot connect now).
            sqlx::Error::Database(d) => {
                d.code().is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03"))
            }
            _ => false,
        };
        if unavailable {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Database(e.to_string())
        }
    }
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct Options {
    /// `postgres://user[:password]@host[:port]/database[?…]`.
    pub url: String,
    /// The schema the tables live in (created if missing); `None`: the
    /// connection's default (`public`).
    pub schema: Option<String>,
    /// Most connections kept open.
    pub pool_size: u32,
    /// How long a connection (or a free one from the pool) is waited for.
    pub connect_timeout: Duration,
    /// Longest statement (PostgreSQL's `statement_timeout`); zero: none.
    pub statement_timeout: Duration,
    /// Largest chunk (its JSON) accepted.
    pub max_chunk_bytes: usize,
    /// Largest image chunk (its JSON): images travel inline.
    pub max_image_chunk_bytes: usize,
}

impl Options {
    /// Defaults for `url`: 16 connections, 5 s to connect, 30 s per
    /// statement, store-sqlite's chunk limits.
    pub fn new(url: impl Into<String>) -> Self {
        Options {
            url: url.into(),
            schema: None,
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            max_chunk_bytes: 1 << 20,
            max_image_chunk_bytes: 16 << 20,
        }
    }
}

/// `url` without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A schema name is an identifier of our own making: plain characters only,
/// so it can be quoted into SQL.
fn valid_schema(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Conversation ids end up in URLs and logs: keep them plain.
pub fn validate_id(id: &str) -> Result<(), StoreError> {
    if is_valid_conversation_id(id) {
        Ok(())
    } else {
        Err(StoreError::InvalidId(id.chars().take(140).collect()))
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Database(format!("a stored row is not valid JSON: {e}")))
}

fn role_of(name: &str) -> Result<Role, StoreError> {
    Role::parse(name)
        .ok_or_else(|| StoreError::Database(format!("a stored chunk has the unknown role {name:?}")))
}

/// A handle on the store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    max_chunk_bytes: usize,
    max_image_chunk_bytes: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// The columns of a conversation's [`ConversationMeta`], then its details.
const META_COLUMNS: &str = "id, created_at, last_activity_at, title, status, workspace_id, compacted_from";
const DETAIL_COLUMNS: &str = "cwd, model, reasoning_effort, system_prompt, last_seq";

impl Store {
    /// Connect, create the schema if asked, migrate. Several hosts may
    /// open one database at once: migrations take PostgreSQL's advisory
    /// lock, so one of them migrates and the others wait.
    pub async fn open(options: Options) -> Result<Store, StoreError> {
        let url = redact(&options.url);
        let open_err = |reason: String| StoreError::Open { url: url.clone(), reason };
        let mut connect = PgConnectOptions::from_str(&options.url).map_err(|e| open_err(e.to_string()))?;
        if let Some(schema) = &options.schema {
            if !valid_schema(schema) {
                return Err(open_err(format!(
                    "schema {schema:?} is not a plain name (letters, digits and _, at most 63)"
                )));
            }
            connect = connect.options([("search_path", schema.as_str())]);
        }
        if !options.statement_timeout.is_zero() {
            let ms = options.statement_timeout.as_millis().to_string();
            connect = connect.options([("statement_timeout", ms.as_str())]);
        }
        // Migrate on a connection of its own, which also proves the
        // database is there before anything is served.
        let mut first = tokio::time::timeout(options.connect_timeout, PgConnection::connect_with(&connect))
            .await
            .map_err(|_| open_err(format!("no connection within {:?}", options.connect_timeout)))?
            .map_err(|e| open_err(e.to_string()))?;
        // Hosts starting together: one creates the schema and migrates, the
        // others wait (`CREATE SCHEMA IF NOT EXISTS` alone races: two at
        // once fail one with a duplicate key). Released with the connection.
        first
            .execute("SELECT pg_advisory_lock(hashtext('dispatch store-postgres: schema'))")
            .await
            .map_err(|e| open_err(format!("cannot take the start-up lock: {e}")))?;
        if let Some(schema) = &options.schema {
            first
                .execute(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"").as_str())
                .await
                .map_err(|e| open_err(format!("cannot create schema {schema}: {e}")))?;
        }
        MIGRATOR.run(&mut first).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::VersionMissing(v) => open_err(format!(
                "its schema is version {v}, newer than this build's {} (a newer Dispatch migrated it): \
                 run that version, or point this one at another database",
                MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
            )),
            e => open_err(format!("migration failed: {e}")),
        })?;
        let _ = first.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size.max(1))
            .acquire_timeout(options.connect_timeout)
            .connect_lazy_with(connect);
        Ok(Store {
            pool,
            max_chunk_bytes: options.max_chunk_bytes,
            max_image_chunk_bytes: options.max_image_chunk_bytes.max(options.max_chunk_bytes),
        })
    }

    /// The connection pool (the cluster's claims and notifications use it).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Close the pool (waits for connections in use).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Whether the database answers now (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The largest chunks this store accepts: text and the rest, images.
    pub fn limits(&self) -> (usize, usize) {
        (self.max_chunk_bytes, self.max_image_chunk_bytes)
    }

    /// A message's chunks as JSON, each within its limit.
    fn encode(&self, chunks: &[Chunk]) -> Result<Vec<String>, StoreError> {
        if chunks.is_empty() {
            return Err(StoreError::EmptyMessage);
        }
        let mut out = Vec::with_capacity(chunks.len());
        for (index, c) in chunks.iter().enumerate() {
            let json = serde_json::to_string(c).map_err(|e| StoreError::Database(e.to_string()))?;
            let limit = if matches!(c, Chunk::Image { .. }) {
                self.max_image_chunk_bytes
            } else {
                self.max_chunk_bytes
            };
            if json.len() > limit {
                return Err(StoreError::ChunkTooLarge { index, size: json.len(), limit });
            }
            out.push(json);
        }
        Ok(out)
    }

    /// Append several messages in one statement (all or none); answers
    /// the seqs of all their chunks, in order.
    pub async fn append_messages(
        &self,
        conversation_id: &str,
        turn_id: Option<&str>,
        messages: &[(Role, &[Chunk])],
    ) -> Result<Vec<u64>, StoreError> {
        validate_id(conversation_id)?;
        if messages.is_empty() {
            return Err(StoreError::EmptyMessage);
        }
        // Offsets from the conversation's last seq: each chunk's own, and
        // its message's first.
        let (mut offs, mut msgs, mut roles, mut jsons) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut title = None;
        for &(role, chunks) in messages {
            let encoded = self.encode(chunks)?;
            let first = to_i64(offs.len() as u64) + 1;
            for json in encoded {
                offs.push(to_i64(offs.len() as u64) + 1);
                msgs.push(first);
                roles.push(role.as_str());
                jsons.push(json);
            }
            if title.is_none() && role == Role::User {
                title = default_title(chunks);
            }
        }
        let n = to_i64(offs.len() as u64);
        let rows = sqlx::query(
            "WITH conv AS ( \
               INSERT INTO conversations AS c (id, created_at, last_activity_at, title, last_seq) \
               VALUES ($1, $2, $2, $3, $4) \
               ON CONFLICT (id) DO UPDATE SET \
                 last_activity_at = GREATEST(c.last_activity_at, EXCLUDED.last_activity_at), \
                 title = CASE WHEN c.title = '' THEN EXCLUDED.title ELSE c.title END, \
                 last_seq = c.last_seq + EXCLUDED.last_seq \
               RETURNING c.last_seq - $4 AS base) \
             INSERT INTO chunks (conversation_id, seq, message_seq, role, turn_id, chunk) \
             SELECT $1, conv.base + u.off, conv.base + u.msg, u.role, $5, u.chunk \
             FROM conv, UNNEST($6::int8[], $7::int8[], $8::text[], $9::text[]) AS u(off, msg, role, chunk) \
             RETURNING seq",
        )
        .bind(conversation_id)
        .bind(now_ms())
        .bind(title.unwrap_or_default())
        .bind(n)
        .bind(turn_id)
        .bind(&offs)
        .bind(&msgs)
        .bind(&roles)
        .bind(&jsons)
        .fetch_all(&self.pool)
        .await?;
        let mut seqs: Vec<u64> = rows.iter().map(|r| to_u64(r.get::<i64, _>(0))).collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// Append one message.
    pub async fn append(
        &self,
        conversation_id: &str,
        role: Role,
        turn_id: Option<&str>,
        chunks: &[Chunk],
    ) -> Result<Vec<u64>, StoreError> {
        self.append_messages(conversation_id, turn_id, &[(role, chunks)]).await
    }

    /// A history window: `since < seq < before`, the newest `limit`,
    /// ascending. Unknown conversations read as empty.
    pub async fn history(
        &self,
        conversation_id: &str,
        since: Option<u64>,
        before: Option<u64>,
        limit: Option<u64>,
    ) -> Result<History, StoreError> {
        validate_id(conversation_id)?;
        let rows = sqlx::query(
            "SELECT seq, role, chunk FROM chunks WHERE conversation_id = $1 AND seq > $2 AND seq < $3 \
             ORDER BY seq DESC LIMIT $4",
        )
        .bind(conversation_id)
        .bind(to_i64(since.unwrap_or(0)))
        .bind(before.map_or(i64::MAX, to_i64))
        .bind(limit.map(to_i64))
        .fetch_all(&self.pool)
        .await?;
        let mut chunks = Vec::with_capacity(rows.len());
        for r in rows.iter().rev() {
            chunks.push(StoredChunk {
                seq: to_u64(r.get(0)),
                role: role_of(r.get(1))?,
                chunk: parse_json(r.get(2))?,
            });
        }
        let latest_seq = chunks.last().map_or(since.unwrap_or(0), |c| c.seq);
        Ok(History { chunks, latest_seq })
    }

    /// The whole history as messages, reconciled so no tool call is left
    /// without a result.
    pub async fn messages(&self, conversation_id: &str) -> Result<Vec<ChatMessage>, StoreError> {
        validate_id(conversation_id)?;
        let rows = sqlx::query(
            "SELECT message_seq, role, chunk FROM chunks WHERE conversation_id = $1 ORDER BY seq",
        )
        .bind(conversation_id)
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<ChatMessage> = Vec::new();
        let mut current = None;
        for r in &rows {
            let msg: i64 = r.get(0);
            let chunk: Chunk = parse_json(r.get(2))?;
            match out.last_mut() {
                Some(last) if current == Some(msg) => last.chunks.push(chunk),
                _ => {
                    current = Some(msg);
                    out.push(ChatMessage { role: role_of(r.get(1))?, chunks: vec![chunk] });
                }
            }
        }
        Ok(reconcile(&out))
    }

    /// Everything stored about a conversation, or `None`.
    pub async fn get(&self, conversation_id: &str) -> Result<Option<Details>, StoreError> {
        validate_id(conversation_id)?;
        let row =
            sqlx::query(&format!("SELECT {META_COLUMNS}, {DETAIL_COLUMNS} FROM conversations WHERE id = $1"))
                .bind(conversation_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| details(&r)))
    }

    /// Apply a metadata change, creating the conversation if needed.
    pub async fn update(&self, u: MetaUpdate) -> Result<Details, StoreError> {
        validate_id(&u.conversation_id)?;
        let title = u.title.as_deref().map(dispatch_contracts::protocol::wire::bounded_title);
        let effort = |e: &Option<ReasoningEffort>| {
            e.and_then(|e| serde_json::to_value(e).ok()).and_then(|v| v.as_str().map(str::to_owned))
        };
        if let Some(w) = &u.workspace_id {
            validate_workspace(w)?;
        }
        // For each clearable column: whether to set it, and to what. A
        // workspace named is created on miss, in the same statement.
        let row = sqlx::query(&format!(
            "WITH ws AS (INSERT INTO workspaces (id, title, created_at, last_activity_at) \
               SELECT $5, $5, $2, $2 WHERE $5::text IS NOT NULL ON CONFLICT (id) DO NOTHING) \
             INSERT INTO conversations AS c (id, created_at, last_activity_at, title, status, workspace_id, \
               cwd, model, reasoning_effort, system_prompt) \
             VALUES ($1, $2, $2, COALESCE($3, ''), COALESCE($4, 'idle'), COALESCE($5, 'default'), $7, $9, $11, $13) \
             ON CONFLICT (id) DO UPDATE SET \
               title = COALESCE($3, c.title), status = COALESCE($4, c.status), \
               workspace_id = COALESCE($5, c.workspace_id), \
               cwd = CASE WHEN $6 THEN $7 ELSE c.cwd END, \
               model = CASE WHEN $8 THEN $9 ELSE c.model END, \
               reasoning_effort = CASE WHEN $10 THEN $11 ELSE c.reasoning_effort END, \
               system_prompt = CASE WHEN $12 THEN $13 ELSE c.system_prompt END \
             RETURNING {META_COLUMNS}, {DETAIL_COLUMNS}"
        ))
        .bind(&u.conversation_id)
        .bind(now_ms())
        .bind(title)
        .bind(u.status.map(ConversationStatus::as_str))
        .bind(&u.workspace_id)
        .bind(u.cwd.is_some())
        .bind(u.cwd.clone().flatten())
        .bind(u.model.is_some())
        .bind(u.model.clone().flatten())
        .bind(u.reasoning_effort.is_some())
        .bind(u.reasoning_effort.as_ref().and_then(effort))
        .bind(u.system_prompt.is_some())
        .bind(u.system_prompt.clone().flatten())
        .fetch_one(&self.pool)
        .await?;
        Ok(details(&row))
    }

    /// Conversations, most recently active first.
    pub async fn list(
        &self,
        prefix: Option<&str>,
        status: Option<ConversationStatus>,
    ) -> Result<Vec<ConversationMeta>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {META_COLUMNS} FROM conversations \
             WHERE ($1::text IS NULL OR left(id, length($1)) = $1) AND ($2::text IS NULL OR status = $2) \
             ORDER BY last_activity_at DESC, id"
        ))
        .bind(prefix)
        .bind(status.map(ConversationStatus::as_str))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(meta_of).collect())
    }

    /// Record a sealed turn's metrics (a turn is activity).
    pub async fn append_metrics(
        &self,
        conversation_id: &str,
        metrics: &TurnMetrics,
    ) -> Result<(), StoreError> {
        validate_id(conversation_id)?;
        let json = serde_json::to_string(metrics).map_err(|e| StoreError::Database(e.to_string()))?;
        sqlx::query(
            "WITH conv AS ( \
               INSERT INTO conversations AS c (id, created_at, last_activity_at, metrics_count) VALUES ($1, $2, $2, 1) \
               ON CONFLICT (id) DO UPDATE SET \
                 last_activity_at = GREATEST(c.last_activity_at, EXCLUDED.last_activity_at), \
                 metrics_count = c.metrics_count + 1 \
               RETURNING c.metrics_count) \
             INSERT INTO turn_metrics (conversation_id, position, turn_id, metrics) \
             SELECT $1, conv.metrics_count, $3, $4 FROM conv",
        )
        .bind(conversation_id)
        .bind(now_ms())
        .bind(&metrics.turn_id)
        .bind(json)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every turn's metrics, in append order.
    pub async fn metrics(&self, conversation_id: &str) -> Result<Vec<TurnMetrics>, StoreError> {
        validate_id(conversation_id)?;
        let rows =
            sqlx::query("SELECT metrics FROM turn_metrics WHERE conversation_id = $1 ORDER BY position")
                .bind(conversation_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|r| parse_json(r.get::<&str, _>(0))).collect()
    }

    /// Every workspace, most recently active first.
    pub async fn workspaces(&self) -> Result<Vec<WorkspaceEntry>, StoreError> {
        let rows =
            sqlx::query(&format!("{WORKSPACE_SELECT} ORDER BY 7 DESC, 1")).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(workspace_of).collect())
    }

    /// One workspace (`default` even when never persisted).
    pub async fn workspace(&self, id: &str) -> Result<Option<Workspace>, StoreError> {
        validate_workspace(id)?;
        let row = sqlx::query(&format!("{WORKSPACE_SELECT} WHERE w.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| workspace_of(&r).workspace))
    }

    /// Create or change a workspace in one statement; answers it.
    pub async fn put_workspace(&self, u: WorkspaceUpdate) -> Result<Workspace, StoreError> {
        validate_workspace(&u.id)?;
        let title = u.title.as_deref().map(dispatch_contracts::protocol::wire::bounded_title);
        sqlx::query(
            "INSERT INTO workspaces AS w (id, title, default_cwd, default_computer_id, starred, created_at, \
               last_activity_at) VALUES ($1, COALESCE($2, $1), $4, $6, COALESCE($7, false), $8, $8) \
             ON CONFLICT (id) DO UPDATE SET title = COALESCE($2, w.title), \
               default_cwd = CASE WHEN $3 THEN $4 ELSE w.default_cwd END, \
               default_computer_id = CASE WHEN $5 THEN $6 ELSE w.default_computer_id END, \
               starred = COALESCE($7, w.starred) \
             WHERE NOT $9",
        )
        .bind(&u.id)
        .bind(title)
        .bind(u.default_cwd.is_some())
        .bind(u.default_cwd.clone().flatten())
        .bind(u.default_computer_id.is_some())
        .bind(u.default_computer_id.clone().flatten())
        .bind(u.starred)
        .bind(now_ms())
        .bind(u.create_only)
        .execute(&self.pool)
        .await?;
        self.workspace(&u.id).await?.ok_or_else(|| StoreError::Database("the workspace vanished".into()))
    }

    /// Forget a workspace; answers whether it was there.
    pub async fn delete_workspace(&self, id: &str) -> Result<bool, StoreError> {
        validate_workspace(id)?;
        if id == DEFAULT_WORKSPACE {
            return Err(StoreError::Conflict("The \"default\" workspace cannot be deleted".into()));
        }
        let done = sqlx::query("DELETE FROM workspaces WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }

    /// Keep turn traces, in order, in one statement.
    pub async fn append_traces(&self, traces: &[TraceEvent]) -> Result<(), StoreError> {
        let n = traces.len();
        let (mut conv, mut turn, mut kind, mut ended) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut model, mut output, mut gen, mut body) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let int = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        for t in traces {
            validate_id(&t.conversation_id)?;
            let c = t.columns();
            conv.push(t.conversation_id.clone());
            turn.push(t.turn_id.clone());
            kind.push(c.kind);
            ended.push(i64::try_from(t.ended_at).unwrap_or(i64::MAX));
            model.push(c.model);
            output.push(int(c.output_tokens));
            gen.push(int(c.gen_ms));
            body.push(serde_json::to_string(t).map_err(|e| StoreError::Database(e.to_string()))?);
        }
        // `WITH ORDINALITY` keeps the ids in the records' order.
        sqlx::query(
            "INSERT INTO traces (conversation_id, turn_id, kind, ended_at, model, output_tokens, gen_ms, body)              SELECT c, t, k, e, m, o, g, b FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[],              $5::text[], $6::bigint[], $7::bigint[], $8::text[]) WITH ORDINALITY AS r(c, t, k, e, m, o, g, b, n)              ORDER BY n",
        )
        .bind(conv)
        .bind(turn)
        .bind(kind)
        .bind(ended)
        .bind(model)
        .bind(output)
        .bind(gen)
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A page of a conversation's traces, oldest first.
    pub async fn traces(&self, query: &TraceQuery) -> Result<TracePage, StoreError> {
        validate_id(&query.conversation_id)?;
        let rows = sqlx::query(
            "SELECT id, body FROM traces WHERE conversation_id = $1 AND id > $2              AND ($3::text IS NULL OR turn_id = $3) AND ($4::text IS NULL OR kind = $4) ORDER BY id LIMIT $5",
        )
        .bind(&query.conversation_id)
        .bind(i64::try_from(query.after.unwrap_or(0)).unwrap_or(i64::MAX))
        .bind(query.turn_id.as_deref())
        .bind(query.kind.as_deref())
        .bind(i64::try_from(query.limit.saturating_add(1)).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        TracePage::from_rows(rows.iter().map(|r| (r.get::<i64, _>(0), r.get::<&str, _>(1))), query.limit)
            .map_err(|e| StoreError::Database(e.to_string()))
    }

    /// Generation per model over `[start, end)`.
    pub async fn throughput(&self, start: u64, end: u64) -> Result<Vec<ThroughputRow>, StoreError> {
        let bound = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT model, SUM(output_tokens)::bigint, SUM(gen_ms)::bigint, COUNT(*) FROM traces \
             WHERE kind = 'turn' AND ended_at >= $1 AND ended_at < $2 AND gen_ms > 0 AND output_tokens IS NOT NULL AND model IS NOT NULL \
             GROUP BY model ORDER BY model",
        )
        .bind(bound(start))
        .bind(bound(end))
        .fetch_all(&self.pool)
        .await?;
        let count = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(rows
            .iter()
            .map(|r| ThroughputRow {
                model: r.get(0),
                output_tokens: count(r.get(1)),
                gen_ms: count(r.get(2)),
                turns: count(r.get(3)),
            })
            .collect())
    }

    /// A plugin's value, as JSON text.
    pub async fn value(&self, scope: &str, key: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM plugin_values WHERE scope = $1 AND key = $2")
            .bind(scope)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Keep (`Some`, JSON text) or forget a plugin's value.
    pub async fn put_value(&self, scope: &str, key: &str, value: Option<String>) -> Result<(), StoreError> {
        let q = match value {
            Some(v) => sqlx::query(
                "INSERT INTO plugin_values (scope, key, value) VALUES ($1, $2, $3) \
                 ON CONFLICT (scope, key) DO UPDATE SET value = EXCLUDED.value",
            )
            .bind(scope)
            .bind(key)
            .bind(v),
            None => {
                sqlx::query("DELETE FROM plugin_values WHERE scope = $1 AND key = $2").bind(scope).bind(key)
            }
        };
        q.execute(&self.pool).await?;
        Ok(())
    }

    /// Compact a conversation (see `StoreRequest::Compact`) in one
    /// transaction: the archive gets the whole log, then the live log is
    /// replaced by the summary and the kept chunks renumbered from 2.
    /// Answers the conversation's latest seq now.
    pub async fn compact(&self, c: CompactRequest) -> Result<u64, StoreError> {
        validate_id(&c.conversation_id)?;
        validate_id(&c.archive_id)?;
        let id = c.conversation_id.as_str();
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        // The row lock keeps appends from any host out until we commit.
        let latest: Option<i64> =
            sqlx::query_scalar("SELECT last_seq FROM conversations WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(latest) = latest else { return Err(StoreError::NoConversation(id.to_owned())) };
        let expect = to_i64(c.expect_latest_seq);
        if latest != expect {
            return Err(StoreError::Conflict(format!(
                "conversation {id:?} changed while it was being compacted (its latest seq is {latest}, not {expect})"
            )));
        }
        let keep = to_i64(c.keep_from_seq);
        if keep < 1 || keep > latest + 1 {
            return Err(StoreError::BadCompaction(format!(
                "keep_from_seq {keep} is outside 1..={} of conversation {id:?}",
                latest + 1
            )));
        }
        if keep <= latest {
            let starts: Option<bool> = sqlx::query_scalar(
                "SELECT message_seq = seq FROM chunks WHERE conversation_id = $1 AND seq = $2",
            )
            .bind(id)
            .bind(keep)
            .fetch_optional(&mut *tx)
            .await?;
            if starts != Some(true) {
                return Err(StoreError::BadCompaction(format!(
                    "keep_from_seq {keep} is not the start of a message of conversation {id:?}"
                )));
            }
        }
        let archived = sqlx::query(
            "INSERT INTO conversations (id, created_at, last_activity_at, title, status, workspace_id, cwd, model, \
               reasoning_effort, system_prompt, compacted_from, last_seq) \
             SELECT $2, created_at, $3, 'Archive: ' || title, 'closed', workspace_id, cwd, model, reasoning_effort, \
               system_prompt, compacted_from, last_seq FROM conversations WHERE id = $1 \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(&c.archive_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if archived.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("the archive id {:?} is taken", c.archive_id)));
        }
        sqlx::query(
            "INSERT INTO chunks (conversation_id, seq, message_seq, role, turn_id, chunk) \
             SELECT $2, seq, message_seq, role, turn_id, chunk FROM chunks WHERE conversation_id = $1",
        )
        .bind(id)
        .bind(&c.archive_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM chunks WHERE conversation_id = $1").bind(id).execute(&mut *tx).await?;
        let summary = serde_json::to_string(&Chunk::text(format!("{SUMMARY_PREFIX}{}", c.summary)))
            .map_err(|e| StoreError::Database(e.to_string()))?;
        sqlx::query(
            "INSERT INTO chunks (conversation_id, seq, message_seq, role, turn_id, chunk) \
             VALUES ($1, 1, 1, 'system', NULL, $2)",
        )
        .bind(id)
        .bind(summary)
        .execute(&mut *tx)
        .await?;
        let shift = keep - 2;
        sqlx::query(
            "INSERT INTO chunks (conversation_id, seq, message_seq, role, turn_id, chunk) \
             SELECT $1, seq - $3, message_seq - $3, role, turn_id, chunk FROM chunks \
             WHERE conversation_id = $2 AND seq >= $4",
        )
        .bind(id)
        .bind(&c.archive_id)
        .bind(shift)
        .bind(keep)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE conversations SET compacted_from = $2, last_activity_at = $3, last_seq = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(&c.archive_id)
        .bind(now)
        .bind(latest - shift)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(to_u64(latest - shift))
    }
}

/// A row's [`META_COLUMNS`].
fn meta_of(r: &PgRow) -> ConversationMeta {
    ConversationMeta {
        id: r.get(0),
        created_at: to_u64(r.get(1)),
        last_activity_at: to_u64(r.get(2)),
        title: r.get(3),
        status: ConversationStatus::parse(r.get(4)).unwrap_or(ConversationStatus::Idle),
        workspace_id: r.get(5),
        compacted_from: r.get(6),
    }
}

/// The columns of a [`Workspace`] row `w` (`last_activity_at` the latest of
/// its own and its conversations'), then its conversation count; `default`
/// is there even when never persisted.
const WORKSPACE_SELECT: &str = "SELECT w.id, w.title, w.default_cwd, w.default_computer_id, w.starred, w.created_at, \
       GREATEST(w.last_activity_at, COALESCE((SELECT MAX(c.last_activity_at) FROM conversations c \
         WHERE c.workspace_id = w.id), 0)), \
       (SELECT COUNT(*) FROM conversations c WHERE c.workspace_id = w.id) \
     FROM (SELECT id, title, default_cwd, default_computer_id, starred, created_at, last_activity_at FROM workspaces \
           UNION ALL SELECT 'default', 'default', NULL, NULL, false, 0, 0 \
           WHERE NOT EXISTS (SELECT 1 FROM workspaces WHERE id = 'default')) w";

fn workspace_of(r: &PgRow) -> WorkspaceEntry {
    WorkspaceEntry {
        workspace: Workspace {
            id: r.get(0),
            title: r.get(1),
            default_cwd: r.get(2),
            default_computer_id: r.get(3),
            starred: r.get(4),
            created_at: to_u64(r.get(5)),
            last_activity_at: to_u64(r.get(6)),
        },
        conversation_count: to_u64(r.get(7)),
    }
}

/// Workspace ids are slugs (they are the frontend's URLs).
pub fn validate_workspace(id: &str) -> Result<(), StoreError> {
    if is_valid_slug(id) {
        Ok(())
    } else {
        Err(StoreError::InvalidWorkspace(id.chars().take(60).collect()))
    }
}

/// A row's [`META_COLUMNS`] then [`DETAIL_COLUMNS`].
fn details(r: &PgRow) -> Details {
    let effort: Option<&str> = r.get(9);
    Details {
        meta: meta_of(r),
        cwd: r.get(7),
        model: r.get(8),
        reasoning_effort: effort.and_then(|e| {
            serde_json::from_value::<ReasoningEffort>(serde_json::Value::String(e.to_owned())).ok()
        }),
        system_prompt: r.get(10),
        latest_seq: to_u64(r.get(11)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_password() {
        assert_eq!(redact("postgres://me:secret@db:5432/x"), "postgres://me:***@db:5432/x");
        assert_eq!(redact("postgres://me@db/x"), "postgres://me@db/x");
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
    }

    #[test]
    fn only_plain_schema_names_are_taken() {
        assert!(valid_schema("dispatch_1"));
        for bad in ["", "1abc", "a-b", "a\"b", &"x".repeat(64)] {
            assert!(!valid_schema(bad), "{bad:?}");
        }
    }
}
