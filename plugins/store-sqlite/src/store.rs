//! The SQLite conversation store.
//!
//! One writer connection owned by a task does every write, in
//! transactions; concurrent appends queue up and are committed together
//! (group commit), which is what makes many turns writing at once cheap.
//! Readers use a pool of read-only connections; WAL lets them run while the
//! writer writes. Seqs come from a per-conversation counter bumped in the
//! same transaction as the insert, so they are 1-based, gap-free and
//! monotonic, and a message's chunks land together or not at all.

use std::collections::HashMap;
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
use sqlx::{Connection, Row as _, SqliteConnection, SqlitePool};
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
        let limit_i = limit.map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        // Seqs are gap-free, so the window is a seq range: the newest
        // `limit` below `before` are `hi - limit < seq <= hi`. The rows are
        // stored as wire JSON; one concatenation returns them all (per-row
        // round trips through the driver cost several times more).
        let json: Option<String> = sqlx::query_scalar(
            "WITH b AS (SELECT MIN(?3 - 1, last_seq) AS hi FROM conversations WHERE id = ?1) \
             SELECT '[' || group_concat(stored, ',') || ']' FROM chunks, b \
             WHERE conversation_id = ?1 AND seq > ?2 AND seq <= b.hi AND seq > b.hi - ?4",
        )
        .bind(conversation_id)
        .bind(since_i)
        .bind(before_i)
        .bind(limit_i)
        .fetch_one(&self.readers)
        .await?;
        let mut chunks: Vec<StoredChunk> = match json {
            Some(j) => parse_json(&j)?,
            None => Vec::new(),
        };
        // SQLite returns them in key order; make sure without trusting it.
        if !chunks.windows(2).all(|w| w[0].seq < w[1].seq) {
            chunks.sort_by_key(|c| c.seq);
        }
        let latest_seq = chunks.last().map_or(since.unwrap_or(0), |c| c.seq);
        Ok(History { chunks, latest_seq })
    }

    /// The whole history as messages, reconciled so no tool call is left
    /// without a result.
    pub async fn messages(&self, conversation_id: &str) -> Result<Vec<ChatMessage>, StoreError> {
        validate_id(conversation_id)?;
        let json: Option<String> = sqlx::query_scalar(
            "SELECT '[' || group_concat('[' || message_seq || ',' || stored || ']', ',') || ']' \
             FROM chunks WHERE conversation_id = ?1",
        )
        .bind(conversation_id)
        .fetch_one(&self.readers)
        .await?;
        let mut rows: Vec<(i64, StoredChunk)> = match json {
            Some(j) => parse_json(&j)?,
            None => Vec::new(),
        };
        if !rows.windows(2).all(|w| w[0].1.seq < w[1].1.seq) {
            rows.sort_by_key(|r| r.1.seq);
        }
        let rows = rows.into_iter().map(|(m, s)| (m, s.role, s.chunk));
        let mut out: Vec<ChatMessage> = Vec::new();
        let mut current: Option<i64> = None;
        for (msg, role, chunk) in rows {
            if current == Some(msg) {
                if let Some(last) = out.last_mut() {
                    last.chunks.push(chunk);
                }
            } else {
                current = Some(msg);
                out.push(ChatMessage { role, chunks: vec![chunk] });
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

/// The single writer: owns the write connection and the last seq of every
/// conversation it has touched (it is the only writer, so the cache is
/// exact, and it is only updated once a transaction committed).
struct Writer {
    conn: SqliteConnection,
    last_seq: HashMap<String, i64>,
}

async fn writer_loop(conn: SqliteConnection, mut rx: mpsc::Receiver<Write>) {
    let mut writer = Writer { conn, last_seq: HashMap::new() };
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        writer.commit_batch(batch).await;
    }
    let _ = writer.conn.close().await;
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

/// A whole transaction as one SQL script with positional (`?`) arguments:
/// the driver runs every statement of it in one round trip to its thread,
/// which is most of the cost of a small transaction.
struct Script {
    sql: String,
    args: sqlx::sqlite::SqliteArguments<'static>,
}

impl Script {
    fn new() -> Self {
        Script { sql: String::from("BEGIN IMMEDIATE;"), args: sqlx::sqlite::SqliteArguments::default() }
    }

    fn statement(&mut self, sql: &str) {
        self.sql.push_str(sql);
        self.sql.push(';');
    }

    fn arg<T>(&mut self, v: T) -> Result<(), StoreError>
    where
        T: 'static + Send + sqlx::Encode<'static, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
    {
        use sqlx::Arguments as _;
        self.args.add(v).map_err(|e| StoreError::Database(e.to_string()))
    }
}

impl Writer {
    /// Commit a batch in one transaction; if anything in it fails, roll
    /// back and commit each write on its own, so one bad write fails alone.
    async fn commit_batch(&mut self, batch: Vec<Write>) {
        if batch.len() > 1 {
            if let Ok(done) = self.transaction(&batch).await {
                for (w, d) in batch.into_iter().zip(done) {
                    finish(w, Ok(d));
                }
                return;
            }
        }
        for w in batch {
            let result = self.transaction(std::slice::from_ref(&w)).await.map(|mut d| d.remove(0));
            finish(w, result);
        }
    }

    async fn transaction(&mut self, writes: &[Write]) -> Result<Vec<Outcome>, StoreError> {
        // The seq counters of conversations not seen yet. Reading them
        // outside the transaction is exact: nobody else writes.
        for w in writes {
            if let Write::Append { conversation_id, .. } = w {
                if !self.last_seq.contains_key(conversation_id) {
                    let last =
                        sqlx::query_scalar::<_, i64>("SELECT last_seq FROM conversations WHERE id = ?1")
                            .bind(conversation_id)
                            .fetch_optional(&mut self.conn)
                            .await?
                            .unwrap_or(0);
                    self.last_seq.insert(conversation_id.clone(), last);
                }
            }
        }
        let now = now_ms();
        let mut script = Script::new();
        let mut out = Vec::with_capacity(writes.len());
        let mut next_seq: HashMap<&str, i64> = HashMap::new();
        // Appends are gathered into one upsert and as few multi-row inserts
        // as possible; another kind of write flushes them first, so the
        // order of writes is kept.
        let mut rows: Vec<PendingRow> = Vec::new();
        let mut convs: Vec<(String, i64, String)> = Vec::new();
        for w in writes {
            match w {
                Write::Append { conversation_id, role, turn_id, chunks, title, .. } => {
                    let last = next_seq
                        .get(conversation_id.as_str())
                        .copied()
                        .unwrap_or(self.last_seq[conversation_id]);
                    let first = last + 1;
                    let n = i64::try_from(chunks.len()).unwrap_or(i64::MAX);
                    let role = role_str(*role);
                    for (i, chunk) in chunks.iter().enumerate() {
                        let seq = first + i64::try_from(i).unwrap_or(0);
                        let stored = format!(r#"{{"seq":{seq},"role":"{role}","chunk":{chunk}}}"#);
                        rows.push(PendingRow {
                            conversation_id: conversation_id.clone(),
                            seq,
                            message_seq: first,
                            role,
                            turn_id: turn_id.clone(),
                            stored,
                        });
                    }
                    next_seq.insert(conversation_id, last + n);
                    let title = title.clone().unwrap_or_default();
                    match convs.iter_mut().find(|c| &c.0 == conversation_id) {
                        Some(c) => {
                            c.1 = last + n;
                            if c.2.is_empty() {
                                c.2 = title;
                            }
                        }
                        None => convs.push((conversation_id.clone(), last + n, title)),
                    }
                    out.push(Outcome::Seqs(
                        (first..=last + n).map(|s| u64::try_from(s).unwrap_or(0)).collect(),
                    ));
                }
                other => {
                    flush(&mut script, &mut convs, &mut rows, now)?;
                    meta(&mut script, other, now)?;
                    out.push(Outcome::Unit);
                }
            }
        }
        flush(&mut script, &mut convs, &mut rows, now)?;
        script.statement("COMMIT");
        let result = sqlx::query_with(&script.sql, script.args).execute(&mut self.conn).await;
        if let Err(e) = result {
            // Whatever ran is undone; "no transaction" if BEGIN itself failed.
            let _ = sqlx::query("ROLLBACK").execute(&mut self.conn).await;
            return Err(e.into());
        }
        for (id, last) in next_seq {
            self.last_seq.insert(id.to_owned(), last);
        }
        Ok(out)
    }
}

/// One chunk row waiting for its insert.
struct PendingRow {
    conversation_id: String,
    seq: i64,
    message_seq: i64,
    role: &'static str,
    turn_id: Option<String>,
    /// The wire `StoredChunk` JSON.
    stored: String,
}

/// Add the gathered appends: one upsert for their conversations (seq
/// counter, activity time, default title), then the chunk rows.
fn flush(
    script: &mut Script,
    convs: &mut Vec<(String, i64, String)>,
    rows: &mut Vec<PendingRow>,
    now: i64,
) -> Result<(), StoreError> {
    if !convs.is_empty() {
        let values = vec!["(?, ?, ?, ?, ?)"; convs.len()].join(", ");
        script.statement(&format!(
            "INSERT INTO conversations (id, created_at, last_activity_at, last_seq, title) VALUES {values} \
             ON CONFLICT(id) DO UPDATE SET last_seq = excluded.last_seq, last_activity_at = excluded.last_activity_at, \
             title = CASE WHEN conversations.title = '' THEN excluded.title ELSE conversations.title END"
        ));
        for (id, last, title) in convs.drain(..) {
            script.arg(id)?;
            script.arg(now)?;
            script.arg(now)?;
            script.arg(last)?;
            script.arg(title)?;
        }
    }
    while !rows.is_empty() {
        let part: Vec<_> = rows.drain(..rows.len().min(ROWS_PER_INSERT)).collect();
        let values = vec!["(?, ?, ?, ?, ?, ?)"; part.len()].join(", ");
        script.statement(&format!(
            "INSERT INTO chunks (conversation_id, seq, message_seq, role, turn_id, stored) VALUES {values}"
        ));
        for r in part {
            script.arg(r.conversation_id)?;
            script.arg(r.seq)?;
            script.arg(r.message_seq)?;
            script.arg(r.role)?;
            script.arg(r.turn_id)?;
            script.arg(r.stored)?;
        }
    }
    Ok(())
}

/// Rows per multi-row insert: 6 variables each, well under SQLite's
/// default limit of 32766 bound variables per statement.
const ROWS_PER_INSERT: usize = 4000;

fn ensure_conversation(script: &mut Script, id: &str, now: i64) -> Result<(), StoreError> {
    script.statement("INSERT INTO conversations (id, created_at, last_activity_at) VALUES (?, ?, ?) ON CONFLICT(id) DO NOTHING");
    script.arg(id.to_owned())?;
    script.arg(now)?;
    script.arg(now)
}

/// A metadata update or a metrics append.
fn meta(script: &mut Script, w: &Write, now: i64) -> Result<(), StoreError> {
    match w {
        Write::Append { .. } => Ok(()),
        Write::Update { update: u, .. } => {
            ensure_conversation(script, &u.conversation_id, now)?;
            let mut set = |col: &str, v: Option<String>| -> Result<(), StoreError> {
                script.statement(&format!("UPDATE conversations SET {col} = ? WHERE id = ?"));
                script.arg(v)?;
                script.arg(u.conversation_id.clone())
            };
            if let Some(t) = &u.title {
                set("title", Some(t.clone()))?;
            }
            if let Some(s) = u.status {
                set("status", Some(status_str(s).to_owned()))?;
            }
            if let Some(w) = &u.workspace_id {
                set("workspace_id", Some(w.clone()))?;
            }
            if let Some(c) = &u.cwd {
                set("cwd", c.clone())?;
            }
            if let Some(m) = &u.model {
                set("model", m.clone())?;
            }
            if let Some(e) = &u.reasoning_effort {
                set(
                    "reasoning_effort",
                    e.and_then(|e| serde_json::to_value(e).ok().and_then(|v| v.as_str().map(str::to_owned))),
                )?;
            }
            if let Some(p) = &u.system_prompt {
                set("system_prompt", p.clone())?;
            }
            Ok(())
        }
        Write::Metrics { conversation_id, metrics, turn_id, .. } => {
            ensure_conversation(script, conversation_id, now)?;
            script.statement(
                "INSERT INTO turn_metrics (conversation_id, position, turn_id, metrics) VALUES (?, \
                 (SELECT COALESCE(MAX(position), 0) + 1 FROM turn_metrics WHERE conversation_id = ?), ?, ?)",
            );
            script.arg(conversation_id.clone())?;
            script.arg(conversation_id.clone())?;
            script.arg(turn_id.clone())?;
            script.arg(metrics.clone())
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
