//! The SQLite conversation store.
//!
//! One writer connection owned by a task does every write, in
//! transactions; concurrent appends queue up and are committed together
//! (group commit), which is what makes many turns writing at once cheap.
//! Readers use a pool of read-only connections; WAL lets them run while the
//! writer writes. Seqs come from a per-conversation counter bumped in the
//! same transaction as the insert, so they are 1-based, gap-free and
//! monotonic, and a message's chunks land together or not at all.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dispatch_kernel::reconcile::reconcile;
use dispatch_kernel::store::{Details, History, MetaUpdate};
use dispatch_kernel::wire::{
    ChatMessage, Chunk, ConversationMeta, ConversationStatus, ReasoningEffort, Role, StoredChunk, TurnMetrics,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

/// The migrations, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 256;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database file could not be opened or migrated.
    #[error("cannot open the database {path}: {reason}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A conversation id that is empty, too long or has odd characters.
    #[error("invalid conversation id {0:?}: use 1-128 characters of A-Z a-z 0-9 . _ - : @")]
    InvalidId(String),
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
    /// A database error.
    #[error("database error: {0}")]
    Database(String),
    /// The store is shut down.
    #[error("the store is closed")]
    Closed,
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// Durability: what a commit waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `synchronous = NORMAL` (default): a commit survives a crash of this
    /// process (SIGKILL, panic); the last commits before a power loss or OS
    /// crash may be lost, but the database stays consistent. Much faster.
    #[default]
    Normal,
    /// `synchronous = FULL`: every commit is on disk before it is
    /// acknowledged, power loss included.
    Full,
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct Options {
    /// The database file.
    pub path: PathBuf,
    /// Commit durability.
    pub durability: Durability,
    /// Largest chunk (its JSON) accepted.
    pub max_chunk_bytes: usize,
    /// Read connections.
    pub readers: u32,
}

impl Options {
    /// Defaults for a file: NORMAL durability, 1 MiB chunks, readers sized
    /// for the machine (cores, 2–8).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Options {
            path: path.into(),
            durability: Durability::Normal,
            max_chunk_bytes: 1 << 20,
            readers: u32::try_from(cores.clamp(2, 8)).unwrap_or(2),
        }
    }
}

enum Write {
    Append {
        conversation_id: String,
        role: Role,
        turn_id: Option<String>,
        chunks: Vec<String>,
        title: Option<String>,
        reply: oneshot::Sender<Result<Vec<u64>, StoreError>>,
    },
    Update {
        update: MetaUpdate,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Metrics {
        conversation_id: String,
        metrics: String,
        turn_id: String,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// A handle on the store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    writes: mpsc::Sender<Write>,
    readers: SqlitePool,
    max_chunk_bytes: usize,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Conversation ids end up in URLs and logs: keep them plain.
pub fn validate_id(id: &str) -> Result<(), StoreError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidId(id.chars().take(140).collect()))
    }
}

/// The default title: the first user message, on one line, truncated.
fn title_from(chunks: &[Chunk]) -> Option<String> {
    let text: String = chunks
        .iter()
        .filter_map(|c| match c {
            Chunk::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(" ");
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        return None;
    }
    const MAX: usize = 60;
    Some(match line.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line,
    })
}

fn role_str(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

fn parse_role(s: &str) -> Role {
    match s {
        "system" => Role::System,
        "user" => Role::User,
        "tool" => Role::Tool,
        _ => Role::Assistant,
    }
}

fn status_str(s: ConversationStatus) -> &'static str {
    match s {
        ConversationStatus::Active => "active",
        ConversationStatus::Queued => "queued",
        ConversationStatus::Idle => "idle",
        ConversationStatus::Closed => "closed",
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Database(format!("a stored row is not valid JSON: {e}")))
}

impl Store {
    /// Open (creating if needed) and migrate the database, then start the
    /// writer. Must run inside a tokio runtime, which the writer task and
    /// the pool then use.
    pub async fn open(options: Options) -> Result<Store, StoreError> {
        let path = options.path.clone();
        let open_err = |reason: String| StoreError::Open { path: path.display().to_string(), reason };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let sync = match options.durability {
            Durability::Normal => SqliteSynchronous::Normal,
            Durability::Full => SqliteSynchronous::Full,
        };
        let connect = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sync)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let mut writer =
            SqliteConnection::connect_with(&connect).await.map_err(|e| open_err(e.to_string()))?;
        MIGRATOR.run(&mut writer).await.map_err(|e| open_err(format!("migration failed: {e}")))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(options.readers.max(1))
            .connect_with(connect.clone().read_only(true).create_if_missing(false))
            .await
            .map_err(|e| open_err(e.to_string()))?;
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(writer_loop(writer, rx));
        Ok(Store { writes: tx, readers, max_chunk_bytes: options.max_chunk_bytes })
    }

    /// Stop accepting writes, finish the queued ones and close everything.
    pub async fn close(self) {
        drop(self.writes);
        self.readers.close().await;
    }

    /// Append one message; answers the seqs of its chunks.
    pub async fn append(
        &self,
        conversation_id: &str,
        role: Role,
        turn_id: Option<&str>,
        chunks: &[Chunk],
    ) -> Result<Vec<u64>, StoreError> {
        validate_id(conversation_id)?;
        if chunks.is_empty() {
            return Err(StoreError::EmptyMessage);
        }
        let mut encoded = Vec::with_capacity(chunks.len());
        for (index, c) in chunks.iter().enumerate() {
            let json = serde_json::to_string(c).map_err(|e| StoreError::Database(e.to_string()))?;
            if json.len() > self.max_chunk_bytes {
                return Err(StoreError::ChunkTooLarge {
                    index,
                    size: json.len(),
                    limit: self.max_chunk_bytes,
                });
            }
            encoded.push(json);
        }
        let title = if role == Role::User { title_from(chunks) } else { None };
        let (reply, rx) = oneshot::channel();
        self.writes
            .send(Write::Append {
                conversation_id: conversation_id.to_owned(),
                role,
                turn_id: turn_id.map(str::to_owned),
                chunks: encoded,
                title,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
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
        let since_i = i64::try_from(since.unwrap_or(0)).unwrap_or(i64::MAX);
        let before_i = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let limit_i = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let rows = sqlx::query(
            "SELECT seq, role, chunk FROM chunks WHERE conversation_id = ?1 AND seq > ?2 AND seq < ?3 \
             ORDER BY seq DESC LIMIT ?4",
        )
        .bind(conversation_id)
        .bind(since_i)
        .bind(before_i)
        .bind(limit_i)
        .fetch_all(&self.readers)
        .await?;
        let mut chunks = Vec::with_capacity(rows.len());
        for row in rows.iter().rev() {
            chunks.push(StoredChunk {
                seq: u64::try_from(row.get::<i64, _>(0)).unwrap_or(0),
                role: parse_role(row.get::<&str, _>(1)),
                chunk: parse_json(row.get::<&str, _>(2))?,
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
            "SELECT message_seq, role, chunk FROM chunks WHERE conversation_id = ?1 ORDER BY seq",
        )
        .bind(conversation_id)
        .fetch_all(&self.readers)
        .await?;
        let mut out: Vec<ChatMessage> = Vec::new();
        let mut current: Option<i64> = None;
        for row in &rows {
            let msg: i64 = row.get(0);
            let chunk: Chunk = parse_json(row.get::<&str, _>(2))?;
            if current == Some(msg) {
                if let Some(last) = out.last_mut() {
                    last.chunks.push(chunk);
                }
            } else {
                current = Some(msg);
                out.push(ChatMessage { role: parse_role(row.get::<&str, _>(1)), chunks: vec![chunk] });
            }
        }
        Ok(reconcile(&out))
    }

    /// Everything stored about a conversation, or `None`.
    pub async fn get(&self, conversation_id: &str) -> Result<Option<Details>, StoreError> {
        validate_id(conversation_id)?;
        let row = sqlx::query(
            "SELECT id, created_at, last_activity_at, title, status, workspace_id, cwd, model, reasoning_effort, \
             system_prompt, last_seq FROM conversations WHERE id = ?1",
        )
        .bind(conversation_id)
        .fetch_optional(&self.readers)
        .await?;
        row.map(|r| details(&r)).transpose()
    }

    /// Apply a metadata change (creating the conversation if needed).
    pub async fn update(&self, update: MetaUpdate) -> Result<Details, StoreError> {
        validate_id(&update.conversation_id)?;
        let id = update.conversation_id.clone();
        let (reply, rx) = oneshot::channel();
        self.writes.send(Write::Update { update, reply }).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)??;
        self.get(&id).await?.ok_or_else(|| StoreError::Database("the conversation vanished".into()))
    }

    /// Conversations, most recently active first.
    pub async fn list(
        &self,
        prefix: Option<&str>,
        status: Option<ConversationStatus>,
    ) -> Result<Vec<ConversationMeta>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, created_at, last_activity_at, title, status, workspace_id, cwd, model, reasoning_effort, \
             system_prompt, last_seq FROM conversations \
             WHERE (?1 IS NULL OR substr(id, 1, length(?1)) = ?1) AND (?2 IS NULL OR status = ?2) \
             ORDER BY last_activity_at DESC, id",
        )
        .bind(prefix)
        .bind(status.map(status_str))
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(|r| details(r).map(|d| d.meta)).collect()
    }

    /// Record a sealed turn's metrics.
    pub async fn append_metrics(
        &self,
        conversation_id: &str,
        metrics: &TurnMetrics,
    ) -> Result<(), StoreError> {
        validate_id(conversation_id)?;
        let json = serde_json::to_string(metrics).map_err(|e| StoreError::Database(e.to_string()))?;
        let (reply, rx) = oneshot::channel();
        self.writes
            .send(Write::Metrics {
                conversation_id: conversation_id.to_owned(),
                metrics: json,
                turn_id: metrics.turn_id.clone(),
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Every turn's metrics, in append order.
    pub async fn metrics(&self, conversation_id: &str) -> Result<Vec<TurnMetrics>, StoreError> {
        validate_id(conversation_id)?;
        let rows =
            sqlx::query("SELECT metrics FROM turn_metrics WHERE conversation_id = ?1 ORDER BY position")
                .bind(conversation_id)
                .fetch_all(&self.readers)
                .await?;
        rows.iter().map(|r| parse_json(r.get::<&str, _>(0))).collect()
    }

    /// `PRAGMA integrity_check` (for tests and operators).
    pub async fn integrity_check(&self) -> Result<String, StoreError> {
        let row = sqlx::query("PRAGMA integrity_check").fetch_one(&self.readers).await?;
        Ok(row.get::<String, _>(0))
    }
}

fn details(r: &SqliteRow) -> Result<Details, StoreError> {
    let status: &str = r.get(4);
    let effort: Option<&str> = r.get(8);
    Ok(Details {
        meta: ConversationMeta {
            id: r.get(0),
            created_at: u64::try_from(r.get::<i64, _>(1)).unwrap_or(0),
            last_activity_at: u64::try_from(r.get::<i64, _>(2)).unwrap_or(0),
            title: r.get(3),
            status: serde_json::from_value(serde_json::Value::String(status.to_owned()))
                .unwrap_or(ConversationStatus::Idle),
            workspace_id: r.get(5),
            compacted_from: None,
        },
        cwd: r.get(6),
        model: r.get(7),
        reasoning_effort: effort.and_then(|e| {
            serde_json::from_value::<ReasoningEffort>(serde_json::Value::String(e.to_owned())).ok()
        }),
        system_prompt: r.get(9),
        latest_seq: u64::try_from(r.get::<i64, _>(10)).unwrap_or(0),
    })
}

async fn writer_loop(mut conn: SqliteConnection, mut rx: mpsc::Receiver<Write>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        commit_batch(&mut conn, batch).await;
    }
    let _ = conn.close().await;
}

/// Commit a batch in one transaction; if anything in it fails, roll back
/// and commit each write on its own, so one bad write fails alone.
async fn commit_batch(conn: &mut SqliteConnection, batch: Vec<Write>) {
    if batch.len() > 1 {
        match try_transaction(conn, &batch).await {
            Ok(done) => {
                for (w, d) in batch.into_iter().zip(done) {
                    finish(w, Ok(d));
                }
                return;
            }
            Err(_) => {
                // Fall through: one by one.
            }
        }
    }
    for w in batch {
        let result = try_transaction(conn, std::slice::from_ref(&w)).await.map(|mut d| d.remove(0));
        finish(w, result);
    }
}

/// What each write of a committed transaction answers.
enum Outcome {
    Seqs(Vec<u64>),
    Unit,
}

/// Answer a write once its transaction committed (or failed).
fn finish(w: Write, result: Result<Outcome, StoreError>) {
    match w {
        Write::Append { reply, .. } => {
            let seqs = result.and_then(|o| match o {
                Outcome::Seqs(s) => Ok(s),
                Outcome::Unit => Err(StoreError::Database("internal: an append produced no seqs".into())),
            });
            let _ = reply.send(seqs);
        }
        Write::Update { reply, .. } | Write::Metrics { reply, .. } => {
            let _ = reply.send(result.map(|_| ()));
        }
    }
}

async fn try_transaction(conn: &mut SqliteConnection, writes: &[Write]) -> Result<Vec<Outcome>, StoreError> {
    // IMMEDIATE: take the write lock up front (we are the only writer, but
    // an operator's sqlite3 shell might not be).
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let mut out = Vec::with_capacity(writes.len());
    for w in writes {
        out.push(apply(&mut tx, w).await?);
    }
    tx.commit().await?;
    Ok(out)
}

async fn ensure_conversation(tx: &mut SqliteConnection, id: &str, now: i64) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO conversations (id, created_at, last_activity_at) VALUES (?1, ?2, ?2) ON CONFLICT(id) DO NOTHING")
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn apply(tx: &mut SqliteConnection, w: &Write) -> Result<Outcome, StoreError> {
    let now = now_ms();
    match w {
        Write::Append { conversation_id, role, turn_id, chunks, title, .. } => {
            ensure_conversation(tx, conversation_id, now).await?;
            let n = i64::try_from(chunks.len()).unwrap_or(i64::MAX);
            let last: i64 = sqlx::query_scalar(
                "UPDATE conversations SET last_seq = last_seq + ?1, last_activity_at = ?2 WHERE id = ?3 RETURNING last_seq",
            )
            .bind(n)
            .bind(now)
            .bind(conversation_id)
            .fetch_one(&mut *tx)
            .await?;
            let first = last - n + 1;
            for (i, chunk) in chunks.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO chunks (conversation_id, seq, message_seq, role, turn_id, chunk) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .bind(conversation_id)
                .bind(first + i64::try_from(i).unwrap_or(0))
                .bind(first)
                .bind(role_str(*role))
                .bind(turn_id.as_deref())
                .bind(chunk.as_str())
                .execute(&mut *tx)
                .await?;
            }
            if let Some(t) = title {
                sqlx::query("UPDATE conversations SET title = ?1 WHERE id = ?2 AND title = ''")
                    .bind(t)
                    .bind(conversation_id)
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(Outcome::Seqs((first..=last).map(|s| u64::try_from(s).unwrap_or(0)).collect()))
        }
        Write::Update { update: u, .. } => {
            ensure_conversation(tx, &u.conversation_id, now).await?;
            let set = |col: &'static str| format!("UPDATE conversations SET {col} = ?1 WHERE id = ?2");
            if let Some(t) = &u.title {
                sqlx::query(&set("title")).bind(t).bind(&u.conversation_id).execute(&mut *tx).await?;
            }
            if let Some(s) = u.status {
                sqlx::query(&set("status"))
                    .bind(status_str(s))
                    .bind(&u.conversation_id)
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some(w) = &u.workspace_id {
                sqlx::query(&set("workspace_id")).bind(w).bind(&u.conversation_id).execute(&mut *tx).await?;
            }
            if let Some(c) = &u.cwd {
                sqlx::query(&set("cwd"))
                    .bind(c.as_deref())
                    .bind(&u.conversation_id)
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some(m) = &u.model {
                sqlx::query(&set("model"))
                    .bind(m.as_deref())
                    .bind(&u.conversation_id)
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some(e) = &u.reasoning_effort {
                let v = e
                    .map(|e| serde_json::to_value(e).ok().and_then(|v| v.as_str().map(str::to_owned)))
                    .flatten();
                sqlx::query(&set("reasoning_effort"))
                    .bind(v)
                    .bind(&u.conversation_id)
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some(p) = &u.system_prompt {
                sqlx::query(&set("system_prompt"))
                    .bind(p.as_deref())
                    .bind(&u.conversation_id)
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(Outcome::Unit)
        }
        Write::Metrics { conversation_id, metrics, turn_id, .. } => {
            ensure_conversation(tx, conversation_id, now).await?;
            sqlx::query(
                "INSERT INTO turn_metrics (conversation_id, position, turn_id, metrics) VALUES (?1, \
                 (SELECT COALESCE(MAX(position), 0) + 1 FROM turn_metrics WHERE conversation_id = ?1), ?2, ?3)",
            )
            .bind(conversation_id)
            .bind(turn_id)
            .bind(metrics)
            .execute(&mut *tx)
            .await?;
            Ok(Outcome::Unit)
        }
    }
}

/// Parse `normal`/`full`.
impl FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "normal" => Ok(Durability::Normal),
            "full" => Ok(Durability::Full),
            other => Err(format!("durability must be `normal` or `full`, not `{other}`")),
        }
    }
}

/// The database file a store in `data_dir` uses.
pub fn default_path(data_dir: &Path) -> PathBuf {
    data_dir.join("dispatch.db")
}
