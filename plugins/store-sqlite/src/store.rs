//! The SQLite conversation store.
//!
//! One writer thread does every write, in transactions; concurrent appends
//! queue up and are committed together (group commit), which is what makes
//! many turns writing at once cheap. Readers use a pool of read-only
//! connections; WAL lets them run while the writer writes. Seqs continue
//! from the conversation's last stored chunk, read in the same transaction
//! as the insert by the only writer, so they are 1-based, gap-free and
//! monotonic, and a message's chunks land together or not at all.
//!
//! sqlx opens, configures and migrates every connection and serves the
//! small metadata queries. The hot paths — the writer's transactions and
//! history reads — run on those same connections' raw handles
//! (`lock_handle`) through rusqlite's prepared statements, synchronously:
//! sqlx hands every statement and every row to a worker thread, and on
//! this workload that hand-off cost more than SQLite itself
//! (BENCHMARKS.md has the figures).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dispatch_contracts::protocol::reconcile::reconcile;
use dispatch_contracts::protocol::store::{
    CompactRequest, Details, History, MetaUpdate, TraceQuery, SUMMARY_PREFIX,
};
use dispatch_contracts::protocol::trace::{ThroughputRow, TraceColumns, TraceEvent, TracePage};
use dispatch_contracts::protocol::wire::{
    ChatMessage, Chunk, ConversationMeta, ConversationStatus, ReasoningEffort, Role, StoredChunk, TurnMetrics,
};
use dispatch_contracts::protocol::workspace::{
    is_valid_slug, Workspace, WorkspaceEntry, WorkspaceUpdate, DEFAULT_WORKSPACE,
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

/// How stale a conversation's `last_activity_at` may get while its turn
/// appends step after step. Rewriting the row (and its entry in the
/// activity index) on every append was two of a step commit's pages; an
/// append within this long of the last recorded activity leaves the row
/// alone. The first append the writer sees for a conversation, a message
/// with a title, and a turn's metrics always record it.
const ACTIVITY_GRAIN_MS: i64 = 1000;

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
    /// Another process writes to this database: the store keeps each
    /// conversation's last seq in memory, which is only right for a single
    /// writer, so a second one is refused instead of failing appends.
    #[error(
        "the database {path} is already in use by another process{holder}; one process writes a \
         SQLite store (stop it, or point this one at another database)"
    )]
    InUse {
        /// The file.
        path: String,
        /// ` (pid N)` when the holder said who it is.
        holder: String,
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
    /// A compaction that no longer fits the conversation (something was
    /// appended since it was read, or the archive id is taken).
    #[error("{0}")]
    Conflict(String),
    /// A compaction asked of a conversation that does not exist.
    #[error("no conversation {0:?}")]
    NoConversation(String),
    /// A compaction whose kept part does not start a message.
    #[error("{0}")]
    BadCompaction(String),
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
    /// Largest image chunk (its JSON, the data URL inside): images travel
    /// inline in request bodies of up to 8 MiB, so they get a limit of
    /// their own that a text chunk's does not stretch.
    pub max_image_chunk_bytes: usize,
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
            max_image_chunk_bytes: 16 << 20,
            readers: u32::try_from(cores.clamp(2, 8)).unwrap_or(2),
        }
    }
}

/// One message of an append, its chunks already encoded.
struct Encoded {
    role: Role,
    chunks: Vec<String>,
    /// The conversation's title, from a user message.
    title: Option<String>,
}

enum Write {
    /// One or more messages of one conversation, in one transaction.
    Append {
        conversation_id: String,
        turn_id: Option<String>,
        messages: Vec<Encoded>,
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
    /// Compact a conversation (see `StoreRequest::Compact`).
    Compact {
        request: CompactRequest,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Keep (`Some`) or forget a plugin's value.
    Value {
        scope: String,
        key: String,
        value: Option<String>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Create or change a workspace, or forget one.
    Workspace {
        change: WorkspaceChange,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Keep turn traces.
    Traces {
        rows: Vec<TraceRow>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Finish what is queued before it, close the connection, answer.
    Close {
        done: oneshot::Sender<()>,
    },
}

/// A trace as written: its columns and its JSON.
struct TraceRow {
    conversation_id: String,
    turn_id: String,
    ended_at: i64,
    columns: TraceColumns,
    body: String,
}

/// A workspace write.
enum WorkspaceChange {
    Put(WorkspaceUpdate),
    Delete(String),
}

/// The columns of a [`Workspace`] row `w` (`last_activity_at` the latest of
/// its own and its conversations'), then its conversation count; `default`
/// is there even when never persisted.
const WORKSPACE_SELECT: &str = "SELECT w.id, w.title, w.default_cwd, w.default_computer_id, w.starred, w.created_at,        max(w.last_activity_at, COALESCE((SELECT MAX(c.last_activity_at) FROM conversations c          WHERE c.workspace_id = w.id), 0)),        (SELECT COUNT(*) FROM conversations c WHERE c.workspace_id = w.id)      FROM (SELECT id, title, default_cwd, default_computer_id, starred, created_at, last_activity_at FROM workspaces            UNION ALL SELECT 'default', 'default', NULL, NULL, 0, 0, 0            WHERE NOT EXISTS (SELECT 1 FROM workspaces WHERE id = 'default')) w";

fn workspace_of(r: &sqlx::sqlite::SqliteRow) -> WorkspaceEntry {
    let n = |i: usize| u64::try_from(r.get::<i64, _>(i)).unwrap_or(0);
    WorkspaceEntry {
        workspace: Workspace {
            id: r.get(0),
            title: r.get(1),
            default_cwd: r.get(2),
            default_computer_id: r.get(3),
            starred: r.get::<i64, _>(4) != 0,
            created_at: n(5),
            last_activity_at: n(6),
        },
        conversation_count: n(7),
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

/// A handle on the store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    writes: mpsc::Sender<Write>,
    readers: SqlitePool,
    max_chunk_bytes: usize,
    max_image_chunk_bytes: usize,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

enum LockError {
    Held(String),
    Io(std::io::Error),
}

/// Take the exclusive writer lock `<db>.lock` (an advisory `flock`, freed by
/// the kernel when the holder exits, however it exits) and write our pid
/// into it for whoever is refused next.
fn lock_writer(db: &std::path::Path) -> Result<std::fs::File, LockError> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&name)
        .map_err(LockError::Io)?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(LockError::Io(e));
        }
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        let pid = pid.trim();
        return Err(LockError::Held(if pid.is_empty() { String::new() } else { format!(" (pid {pid})") }));
    }
    file.set_len(0).and_then(|()| file.rewind()).map_err(LockError::Io)?;
    writeln!(file, "{}", std::process::id()).and_then(|()| file.flush()).map_err(LockError::Io)?;
    Ok(file)
}

/// Conversation ids end up in URLs and logs: keep them plain.
pub fn validate_id(id: &str) -> Result<(), StoreError> {
    if dispatch_contracts::protocol::wire::is_valid_conversation_id(id) {
        Ok(())
    } else {
        Err(StoreError::InvalidId(id.chars().take(140).collect()))
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
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
        }
        // The conversations are the user's: a new database is readable by
        // its owner only (SQLite gives its WAL and shared-memory files the
        // database file's mode, so they follow).
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(open_err(format!("cannot create {}: {e}", path.display()))),
            }
        }
        let lock = lock_writer(&path).map_err(|e| match e {
            LockError::Held(holder) => StoreError::InUse { path: path.display().to_string(), holder },
            LockError::Io(e) => open_err(format!("cannot lock {}.lock: {e}", path.display())),
        })?;
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
        let (ready, started) = oneshot::channel();
        let rt = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("store-writer".into())
            // The writer holds the lock for as long as it writes.
            .spawn(move || writer_thread(rt, writer, rx, ready, lock))
            .map_err(|e| open_err(format!("cannot start the writer thread: {e}")))?;
        started
            .await
            .map_err(|_| open_err("the writer thread ended at start".into()))?
            .map_err(|e| open_err(e.to_string()))?;
        Ok(Store {
            writes: tx,
            readers,
            max_chunk_bytes: options.max_chunk_bytes,
            max_image_chunk_bytes: options.max_image_chunk_bytes.max(options.max_chunk_bytes),
        })
    }

    /// Stop accepting writes, finish the queued ones, close the write
    /// connection and the readers. Writes sent through other clones after
    /// this fail with [`StoreError::Closed`].
    pub async fn close(self) {
        let (done, closed) = oneshot::channel();
        if self.writes.send(Write::Close { done }).await.is_ok() {
            let _ = closed.await;
        }
        self.readers.close().await;
    }

    /// Run `f` on a read connection's raw handle, on a blocking thread:
    /// the rows never cross sqlx's per-row channel, which for a long
    /// history cost more than the query itself (see BENCHMARKS.md).
    async fn read_raw<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let mut pooled = self.readers.acquire().await?;
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut locked = rt.block_on(pooled.lock_handle())?;
            // SAFETY: as in `writer_thread` — a valid handle that sqlx does
            // not touch while `locked` lives; the rusqlite connection does
            // not own it and is dropped first.
            let db = unsafe { rusqlite::Connection::from_handle(locked.as_raw_handle().as_ptr()) }?;
            let result = f(&db);
            drop(db);
            result
        })
        .await
        .map_err(|e| StoreError::Database(format!("a read failed: {e}")))?
    }

    /// Append one message; answers the seqs of its chunks.
    pub async fn append(
        &self,
        conversation_id: &str,
        role: Role,
        turn_id: Option<&str>,
        chunks: &[Chunk],
    ) -> Result<Vec<u64>, StoreError> {
        self.append_messages(conversation_id, turn_id, &[(role, chunks)]).await
    }

    /// Append several messages in one transaction (all or none); answers
    /// the seqs of all their chunks, in order.
    pub async fn append_messages(
        &self,
        conversation_id: &str,
        turn_id: Option<&str>,
        messages: &[(Role, &[Chunk])],
    ) -> Result<Vec<u64>, StoreError> {
        validate_id(conversation_id)?;
        let mut encoded = Vec::with_capacity(messages.len());
        for &(role, chunks) in messages {
            encoded.push(self.encode(role, chunks)?);
        }
        if encoded.is_empty() {
            return Err(StoreError::EmptyMessage);
        }
        let (reply, rx) = oneshot::channel();
        self.writes
            .send(Write::Append {
                conversation_id: conversation_id.to_owned(),
                turn_id: turn_id.map(str::to_owned),
                messages: encoded,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Compact a conversation (see `StoreRequest::Compact`); answers its
    /// latest seq now.
    pub async fn compact(&self, request: CompactRequest) -> Result<u64, StoreError> {
        validate_id(&request.conversation_id)?;
        validate_id(&request.archive_id)?;
        let (reply, rx) = oneshot::channel();
        self.writes.send(Write::Compact { request, reply }).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// A plugin's value, as JSON text.
    pub async fn value(&self, scope: &str, key: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM plugin_values WHERE scope = ?1 AND key = ?2")
            .bind(scope)
            .bind(key)
            .fetch_optional(&self.readers)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Keep (`Some`, JSON text) or forget a plugin's value.
    pub async fn put_value(&self, scope: &str, key: &str, value: Option<String>) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        let write = Write::Value { scope: scope.to_owned(), key: key.to_owned(), value, reply };
        self.writes.send(write).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Every workspace, most recently active first.
    pub async fn workspaces(&self) -> Result<Vec<WorkspaceEntry>, StoreError> {
        let rows =
            sqlx::query(&format!("{WORKSPACE_SELECT} ORDER BY 7 DESC, 1")).fetch_all(&self.readers).await?;
        Ok(rows.iter().map(workspace_of).collect())
    }

    /// One workspace (`default` even when never persisted).
    pub async fn workspace(&self, id: &str) -> Result<Option<Workspace>, StoreError> {
        validate_workspace(id)?;
        let row = sqlx::query(&format!("{WORKSPACE_SELECT} WHERE w.id = ?1"))
            .bind(id)
            .fetch_optional(&self.readers)
            .await?;
        Ok(row.map(|r| workspace_of(&r).workspace))
    }

    /// Create or change a workspace; answers it.
    pub async fn put_workspace(&self, update: WorkspaceUpdate) -> Result<Workspace, StoreError> {
        validate_workspace(&update.id)?;
        let id = update.id.clone();
        self.workspace_write(WorkspaceChange::Put(update)).await?;
        self.workspace(&id).await?.ok_or_else(|| StoreError::Database("the workspace vanished".into()))
    }

    /// Forget a workspace; answers whether it was there.
    pub async fn delete_workspace(&self, id: &str) -> Result<bool, StoreError> {
        validate_workspace(id)?;
        if id == DEFAULT_WORKSPACE {
            return Err(StoreError::Conflict("The \"default\" workspace cannot be deleted".into()));
        }
        let existed = sqlx::query("SELECT 1 FROM workspaces WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.readers)
            .await?
            .is_some();
        self.workspace_write(WorkspaceChange::Delete(id.to_owned())).await?;
        Ok(existed)
    }

    /// Keep turn traces, in order (one transaction with whatever else the
    /// writer has queued).
    pub async fn append_traces(&self, traces: &[TraceEvent]) -> Result<(), StoreError> {
        let mut rows = Vec::with_capacity(traces.len());
        for t in traces {
            validate_id(&t.conversation_id)?;
            rows.push(TraceRow {
                conversation_id: t.conversation_id.clone(),
                turn_id: t.turn_id.clone(),
                ended_at: i64::try_from(t.ended_at).unwrap_or(i64::MAX),
                columns: t.columns(),
                body: serde_json::to_string(t).map_err(|e| StoreError::Database(e.to_string()))?,
            });
        }
        let (reply, rx) = oneshot::channel();
        self.writes.send(Write::Traces { rows, reply }).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// A page of a conversation's traces, oldest first.
    pub async fn traces(&self, query: &TraceQuery) -> Result<TracePage, StoreError> {
        validate_id(&query.conversation_id)?;
        let after = i64::try_from(query.after.unwrap_or(0)).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT id, body FROM traces WHERE conversation_id = ?1 AND id > ?2              AND (?3 IS NULL OR turn_id = ?3) AND (?4 IS NULL OR kind = ?4) ORDER BY id LIMIT ?5",
        )
        .bind(&query.conversation_id)
        .bind(after)
        .bind(query.turn_id.as_deref())
        .bind(query.kind.as_deref())
        .bind(i64::try_from(query.limit.saturating_add(1)).unwrap_or(i64::MAX))
        .fetch_all(&self.readers)
        .await?;
        TracePage::from_rows(rows.iter().map(|r| (r.get::<i64, _>(0), r.get::<&str, _>(1))), query.limit)
            .map_err(|e| StoreError::Database(e.to_string()))
    }

    /// Generation per model over `[start, end)`.
    pub async fn throughput(&self, start: u64, end: u64) -> Result<Vec<ThroughputRow>, StoreError> {
        let bound = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT model, SUM(output_tokens), SUM(gen_ms), COUNT(*) FROM traces              WHERE kind = 'turn' AND ended_at >= ?1 AND ended_at < ?2 AND gen_ms > 0 AND output_tokens IS NOT NULL AND model IS NOT NULL              GROUP BY model ORDER BY model",
        )
        .bind(bound(start))
        .bind(bound(end))
        .fetch_all(&self.readers)
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

    async fn workspace_write(&self, change: WorkspaceChange) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writes.send(Write::Workspace { change, reply }).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The largest chunks this store accepts (their JSON): text and the
    /// rest, and images.
    pub fn limits(&self) -> (usize, usize) {
        (self.max_chunk_bytes, self.max_image_chunk_bytes)
    }

    /// A message's chunks as stored, each within the size limit.
    fn encode(&self, role: Role, chunks: &[Chunk]) -> Result<Encoded, StoreError> {
        if chunks.is_empty() {
            return Err(StoreError::EmptyMessage);
        }
        let mut encoded = Vec::with_capacity(chunks.len());
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
            encoded.push(json);
        }
        let title = if role == Role::User {
            dispatch_contracts::protocol::store::default_title(chunks)
        } else {
            None
        };
        Ok(Encoded { role, chunks: encoded, title })
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
        let limit_i = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(-1));
        let id = conversation_id.to_owned();
        // The newest `limit` below `before`, read newest first, then
        // turned around (the primary key makes both directions cheap).
        let mut chunks = self
            .read_raw(move |db| {
                let mut q = db.prepare_cached(
                    "SELECT stored FROM chunks WHERE conversation_id = ?1 AND seq > ?2 AND seq < ?3 \
                     ORDER BY seq DESC LIMIT ?4",
                )?;
                let mut rows = q.query(rusqlite::params![id, since_i, before_i, limit_i])?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(parse_json::<StoredChunk>(r.get_ref(0)?.as_str()?)?);
                }
                Ok(out)
            })
            .await?;
        chunks.reverse();
        let latest_seq = chunks.last().map_or(since.unwrap_or(0), |c| c.seq);
        Ok(History { chunks, latest_seq })
    }

    /// The whole history as messages, reconciled so no tool call is left
    /// without a result.
    pub async fn messages(&self, conversation_id: &str) -> Result<Vec<ChatMessage>, StoreError> {
        validate_id(conversation_id)?;
        let id = conversation_id.to_owned();
        let out = self
            .read_raw(move |db| {
                let mut q = db.prepare_cached(
                    "SELECT message_seq, stored FROM chunks WHERE conversation_id = ?1 ORDER BY seq",
                )?;
                let mut rows = q.query([id])?;
                let mut out: Vec<ChatMessage> = Vec::new();
                let mut current: Option<i64> = None;
                while let Some(r) = rows.next()? {
                    let msg: i64 = r.get(0)?;
                    let stored: StoredChunk = parse_json(r.get_ref(1)?.as_str()?)?;
                    match out.last_mut() {
                        Some(last) if current == Some(msg) => last.chunks.push(stored.chunk),
                        _ => {
                            current = Some(msg);
                            out.push(ChatMessage { role: stored.role, chunks: vec![stored.chunk] });
                        }
                    }
                }
                Ok(out)
            })
            .await?;
        Ok(reconcile(&out))
    }

    /// Everything stored about a conversation, or `None`.
    pub async fn get(&self, conversation_id: &str) -> Result<Option<Details>, StoreError> {
        validate_id(conversation_id)?;
        let row = sqlx::query(
            "SELECT id, created_at, last_activity_at, title, status, workspace_id, compacted_from, cwd, model, \
             reasoning_effort, system_prompt, (SELECT COALESCE(MAX(seq), 0) FROM chunks WHERE conversation_id = conversations.id) \
             FROM conversations WHERE id = ?1",
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
        // Only the `ConversationMeta` columns: a list carries no seq, and
        // looking up each conversation's last chunk would triple the time
        // of a 10 000-conversation list.
        let rows = sqlx::query(
            "SELECT id, created_at, last_activity_at, title, status, workspace_id, compacted_from FROM conversations \
             WHERE (?1 IS NULL OR substr(id, 1, length(?1)) = ?1) AND (?2 IS NULL OR status = ?2) \
             ORDER BY last_activity_at DESC, id",
        )
        .bind(prefix)
        .bind(status.map(ConversationStatus::as_str))
        .fetch_all(&self.readers)
        .await?;
        Ok(rows.iter().map(meta_of).collect())
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

    /// A read on the pool (readiness): the file is there and readable.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    /// `PRAGMA integrity_check` (for tests and operators).
    pub async fn integrity_check(&self) -> Result<String, StoreError> {
        let row = sqlx::query("PRAGMA integrity_check").fetch_one(&self.readers).await?;
        Ok(row.get::<String, _>(0))
    }
}

/// A row's first seven columns: id, created_at, last_activity_at, title,
/// status, workspace_id, compacted_from.
fn meta_of(r: &SqliteRow) -> ConversationMeta {
    let status: &str = r.get(4);
    ConversationMeta {
        id: r.get(0),
        created_at: u64::try_from(r.get::<i64, _>(1)).unwrap_or(0),
        last_activity_at: u64::try_from(r.get::<i64, _>(2)).unwrap_or(0),
        title: r.get(3),
        status: serde_json::from_value(serde_json::Value::String(status.to_owned()))
            .unwrap_or(ConversationStatus::Idle),
        workspace_id: r.get(5),
        compacted_from: r.get(6),
    }
}

fn details(r: &SqliteRow) -> Result<Details, StoreError> {
    let effort: Option<&str> = r.get(9);
    Ok(Details {
        meta: meta_of(r),
        cwd: r.get(7),
        model: r.get(8),
        reasoning_effort: effort.and_then(|e| {
            serde_json::from_value::<ReasoningEffort>(serde_json::Value::String(e.to_owned())).ok()
        }),
        system_prompt: r.get(10),
        latest_seq: u64::try_from(r.get::<i64, _>(11)).unwrap_or(0),
    })
}

/// The single writer's thread: takes the write connection's raw SQLite
/// handle from sqlx and keeps it for its whole life, so a transaction runs
/// as plain synchronous SQLite calls with cached prepared statements — no
/// hand-off to sqlx's worker thread per statement, which is what bounded
/// throughput before (see BENCHMARKS.md). sqlx still opened, configured
/// and migrated the connection, and closes it at the end.
fn writer_thread(
    rt: tokio::runtime::Handle,
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<Write>,
    ready: oneshot::Sender<Result<(), StoreError>>,
    lock: std::fs::File,
) {
    let mut closed = None;
    match rt.block_on(conn.lock_handle()) {
        Err(e) => {
            let _ = ready.send(Err(e.into()));
        }
        Ok(mut locked) => {
            // SAFETY: the handle is a valid open connection, and while
            // `locked` lives sqlx makes no call on it (that is what the lock
            // guarantees). The rusqlite connection does not own the handle
            // (`from_handle` never closes it) and is dropped inside this
            // block, before `locked`.
            match unsafe { rusqlite::Connection::from_handle(locked.as_raw_handle().as_ptr()) } {
                Err(e) => {
                    let _ = ready.send(Err(e.into()));
                }
                Ok(db) => {
                    let _ = ready.send(Ok(()));
                    // Room for every statement the writer prepares (about
                    // fifteen; rusqlite keeps sixteen by default).
                    db.set_prepared_statement_cache_capacity(64);
                    let mut writer =
                        Writer { db, seen: HashMap::new(), activity_grain_ms: ACTIVITY_GRAIN_MS };
                    closed = writer.run(&mut rx);
                }
            }
        }
    }
    let _ = rt.block_on(conn.close());
    // Free the writer lock before saying "closed": a store reopened right
    // after `close` must find it free.
    drop(lock);
    if let Some(done) = closed {
        let _ = done.send(());
    }
}

/// The single writer: the write connection and what it knows of every
/// conversation it has appended to (it is the only writer, so the cache is
/// exact, and it is only updated once a transaction committed).
struct Writer {
    db: rusqlite::Connection,
    seen: HashMap<String, Seen>,
    /// [`ACTIVITY_GRAIN_MS`]; a field so tests can make it 0 or large.
    activity_grain_ms: i64,
}

/// A conversation as the writer last committed it.
#[derive(Clone, Copy)]
struct Seen {
    /// Its last seq.
    last_seq: i64,
    /// The `last_activity_at` its row holds.
    activity_at: i64,
}

/// What each write of a committed transaction answers.
enum Outcome {
    Seqs(Vec<u64>),
    /// A compaction: the conversation's latest seq now.
    Latest(u64),
    Unit,
}

/// Answer a write once its transaction committed (or failed).
fn finish(w: Write, result: Result<Outcome, StoreError>) {
    match w {
        Write::Append { reply, .. } => {
            let seqs = result.and_then(|o| match o {
                Outcome::Seqs(s) => Ok(s),
                _ => Err(StoreError::Database("internal: an append produced no seqs".into())),
            });
            let _ = reply.send(seqs);
        }
        Write::Compact { reply, .. } => {
            let latest = result.and_then(|o| match o {
                Outcome::Latest(l) => Ok(l),
                _ => Err(StoreError::Database("internal: a compaction produced no seq".into())),
            });
            let _ = reply.send(latest);
        }
        Write::Update { reply, .. }
        | Write::Metrics { reply, .. }
        | Write::Value { reply, .. }
        | Write::Workspace { reply, .. }
        | Write::Traces { reply, .. } => {
            let _ = reply.send(result.map(|_| ()));
        }
        Write::Close { .. } => {}
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

impl From<rusqlite::types::FromSqlError> for StoreError {
    fn from(e: rusqlite::types::FromSqlError) -> Self {
        StoreError::Database(e.to_string())
    }
}

impl Writer {
    /// Commit what is queued, as it queues: every write that arrived while
    /// the previous transaction ran goes into the next one (group commit),
    /// so batches grow with the number of concurrent writers. Answers the
    /// `Close` request, if that is what ended the loop.
    fn run(&mut self, rx: &mut mpsc::Receiver<Write>) -> Option<oneshot::Sender<()>> {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = Vec::new();
            let mut close = None;
            let mut next = Some(first);
            while let Some(w) = next.take() {
                match w {
                    Write::Close { done } => close = Some(done),
                    w => batch.push(w),
                }
                if close.is_none() && batch.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit_batch(batch);
            }
            if close.is_some() {
                return close;
            }
        }
        None
    }

    /// Commit a batch in one transaction; if anything in it fails, roll
    /// back and commit each write on its own, so one bad write fails alone.
    fn commit_batch(&mut self, batch: Vec<Write>) {
        if batch.len() > 1 {
            if let Ok(done) = self.transaction(&batch) {
                for (w, d) in batch.into_iter().zip(done) {
                    finish(w, Ok(d));
                }
                return;
            }
        }
        for w in batch {
            let result = self.transaction(std::slice::from_ref(&w)).map(|mut d| d.remove(0));
            finish(w, result);
        }
    }

    /// One transaction for `writes`. Rolled back (by dropping it) on any
    /// error, and then the seq cache is left as it was.
    fn transaction(&mut self, writes: &[Write]) -> Result<Vec<Outcome>, StoreError> {
        let now = now_ms();
        let tx = Tx::begin(&self.db)?;
        let mut out = Vec::with_capacity(writes.len());
        // What this transaction will have made of each conversation.
        let mut next: HashMap<&str, Seen> = HashMap::new();
        let mut stored = String::new();
        for w in writes {
            match w {
                Write::Append { conversation_id, turn_id, messages, .. } => {
                    let id = conversation_id.as_str();
                    let known = next.get(id).or_else(|| self.seen.get(id)).copied();
                    let mut last = match known {
                        Some(k) => k.last_seq,
                        // Not seen yet: its last stored chunk. Exact, since
                        // nobody else writes.
                        None => tx
                            .prepare_cached(
                                "SELECT COALESCE(MAX(seq), 0) FROM chunks WHERE conversation_id = ?1",
                            )?
                            .query_row([id], |r| r.get(0))?,
                    };
                    let title = messages.iter().find_map(|m| m.title.as_deref()).unwrap_or("");
                    // The conversation row first, once for all the messages
                    // (chunks reference it) — unless the writer knows it
                    // exists and its activity is recent enough.
                    let activity_at = match known {
                        // (A clock stepped back records at once.)
                        Some(k)
                            if title.is_empty()
                                && (0..self.activity_grain_ms).contains(&(now - k.activity_at)) =>
                        {
                            k.activity_at
                        }
                        _ => {
                            tx.prepare_cached(
                                "INSERT INTO conversations (id, created_at, last_activity_at, title) \
                                 VALUES (?1, ?2, ?2, ?3) ON CONFLICT(id) DO UPDATE SET \
                                 last_activity_at = excluded.last_activity_at, \
                                 title = CASE WHEN conversations.title = '' THEN excluded.title ELSE conversations.title END",
                            )?
                            .execute(rusqlite::params![id, now, title])?;
                            now
                        }
                    };
                    let mut insert = tx.prepare_cached(
                        "INSERT INTO chunks (conversation_id, seq, message_seq, role, turn_id, stored) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?;
                    let total: usize = messages.iter().map(|m| m.chunks.len()).sum();
                    let mut seqs = Vec::with_capacity(total);
                    for Encoded { role, chunks, .. } in messages {
                        let first = last + 1;
                        let n = i64::try_from(chunks.len()).unwrap_or(i64::MAX);
                        let role = role.as_str();
                        for (seq, chunk) in (first..).zip(chunks) {
                            use std::fmt::Write as _;
                            stored.clear();
                            // Infallible: writing to a String.
                            let _ = write!(stored, r#"{{"seq":{seq},"role":"{role}","chunk":{chunk}}}"#);
                            insert.execute(rusqlite::params![id, seq, first, role, turn_id, stored])?;
                        }
                        seqs.extend((first..=last + n).map(|s| u64::try_from(s).unwrap_or(0)));
                        last += n;
                    }
                    next.insert(id, Seen { last_seq: last, activity_at });
                    out.push(Outcome::Seqs(seqs));
                }
                Write::Compact { request, .. } => {
                    let id = request.conversation_id.as_str();
                    let known = next.get(id).or_else(|| self.seen.get(id)).map(|k| k.last_seq);
                    let latest = compact(&tx, request, known, now)?;
                    next.insert(id, Seen { last_seq: latest, activity_at: now });
                    out.push(Outcome::Latest(u64::try_from(latest).unwrap_or(0)));
                }
                other => {
                    meta(&tx, other, now)?;
                    out.push(Outcome::Unit);
                }
            }
        }
        tx.commit()?;
        for (id, seen) in next {
            self.seen.insert(id.to_owned(), seen);
        }
        Ok(out)
    }
}

/// An `IMMEDIATE` transaction begun and committed through cached
/// statements. rusqlite's `Transaction` runs `BEGIN` and `COMMIT` through
/// `execute_batch`, which parses them anew for every transaction: ~9 % of
/// the writer thread's time at one commit per model step (`perf`, peer
/// bench). Rolled back when dropped uncommitted — on any error, including
/// a failed `COMMIT`.
struct Tx<'a> {
    db: &'a rusqlite::Connection,
    committed: bool,
}

impl<'a> Tx<'a> {
    fn begin(db: &'a rusqlite::Connection) -> Result<Tx<'a>, rusqlite::Error> {
        db.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(Tx { db, committed: false })
    }

    fn commit(mut self) -> Result<(), rusqlite::Error> {
        self.db.prepare_cached("COMMIT")?.execute([])?;
        self.committed = true;
        Ok(())
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = rusqlite::Connection;
    fn deref(&self) -> &rusqlite::Connection {
        self.db
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.committed && !self.db.is_autocommit() {
            // Nothing to report to: the caller already has the error that
            // brought us here, and a failed rollback leaves SQLite's own.
            let _ = self.db.execute_batch("ROLLBACK");
        }
    }
}

/// Compact inside the writer's transaction: copy the whole log to the
/// archive, then replace the live log with the summary and the kept
/// chunks renumbered from 2. `known` is the writer's idea of the latest
/// seq, if it has one. Answers the new latest seq.
fn compact(
    tx: &rusqlite::Connection,
    c: &CompactRequest,
    known: Option<i64>,
    now: i64,
) -> Result<i64, StoreError> {
    let id = c.conversation_id.as_str();
    let exists: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM conversations WHERE id = ?1)")?
        .query_row([id], |r| r.get(0))?;
    if !exists {
        return Err(StoreError::NoConversation(id.to_owned()));
    }
    let latest = match known {
        Some(l) => l,
        None => tx
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM chunks WHERE conversation_id = ?1")?
            .query_row([id], |r| r.get(0))?,
    };
    let expect = i64::try_from(c.expect_latest_seq).unwrap_or(i64::MAX);
    if latest != expect {
        return Err(StoreError::Conflict(format!(
            "conversation {id:?} changed while it was being compacted (its latest seq is {latest}, not {expect})"
        )));
    }
    let keep = i64::try_from(c.keep_from_seq).unwrap_or(i64::MAX);
    if keep < 1 || keep > latest + 1 {
        return Err(StoreError::BadCompaction(format!(
            "keep_from_seq {keep} is outside 1..={} of conversation {id:?}",
            latest + 1
        )));
    }
    if keep <= latest {
        let starts: bool = tx
            .prepare_cached("SELECT message_seq = seq FROM chunks WHERE conversation_id = ?1 AND seq = ?2")?
            .query_row(rusqlite::params![id, keep], |r| r.get(0))?;
        if !starts {
            return Err(StoreError::BadCompaction(format!(
                "keep_from_seq {keep} is not the start of a message of conversation {id:?}"
            )));
        }
    }
    let taken: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM conversations WHERE id = ?1)")?
        .query_row([&c.archive_id], |r| r.get(0))?;
    if taken {
        return Err(StoreError::Conflict(format!("the archive id {:?} is taken", c.archive_id)));
    }
    // 1. The archive: the conversation's settings and its whole log, seqs
    //    as they were (they start at 1 and have no gaps).
    tx.prepare_cached(
        "INSERT INTO conversations (id, created_at, last_activity_at, title, status, workspace_id, cwd, model, \
         reasoning_effort, system_prompt, compacted_from) \
         SELECT ?2, created_at, ?3, 'Archive: ' || title, 'closed', workspace_id, cwd, model, reasoning_effort, \
         system_prompt, compacted_from FROM conversations WHERE id = ?1",
    )?
    .execute(rusqlite::params![id, c.archive_id, now])?;
    tx.prepare_cached(
        "INSERT INTO chunks (conversation_id, seq, message_seq, role, turn_id, stored) \
         SELECT ?2, seq, message_seq, role, turn_id, stored FROM chunks WHERE conversation_id = ?1",
    )?
    .execute(rusqlite::params![id, c.archive_id])?;
    // 2. The live log: the summary, then the kept chunks (read back from
    //    the archive) two seqs on from where they start over.
    tx.prepare_cached("DELETE FROM chunks WHERE conversation_id = ?1")?.execute([id])?;
    let summary = serde_json::json!({
        "seq": 1,
        "role": "system",
        "chunk": {"type": "text", "text": format!("{SUMMARY_PREFIX}{}", c.summary)},
    });
    tx.prepare_cached(
        "INSERT INTO chunks (conversation_id, seq, message_seq, role, turn_id, stored) \
         VALUES (?1, 1, 1, 'system', NULL, ?2)",
    )?
    .execute(rusqlite::params![id, summary.to_string()])?;
    let shift = keep - 2;
    tx.prepare_cached(
        "INSERT INTO chunks (conversation_id, seq, message_seq, role, turn_id, stored) \
         SELECT ?1, seq - ?3, message_seq - ?3, role, turn_id, json_set(stored, '$.seq', seq - ?3) \
         FROM chunks WHERE conversation_id = ?2 AND seq >= ?4",
    )?
    .execute(rusqlite::params![id, c.archive_id, shift, keep])?;
    tx.prepare_cached("UPDATE conversations SET compacted_from = ?2, last_activity_at = ?3 WHERE id = ?1")?
        .execute(rusqlite::params![id, c.archive_id, now])?;
    Ok(latest - shift)
}

/// Make sure a conversation row exists (metadata and metrics need one);
/// with `record_activity`, an existing row's `last_activity_at` becomes
/// `now` too.
fn ensure_conversation(
    tx: &rusqlite::Connection,
    id: &str,
    now: i64,
    record_activity: bool,
) -> Result<(), StoreError> {
    let sql = if record_activity {
        "INSERT INTO conversations (id, created_at, last_activity_at) VALUES (?1, ?2, ?2) \
         ON CONFLICT(id) DO UPDATE SET last_activity_at = excluded.last_activity_at"
    } else {
        "INSERT INTO conversations (id, created_at, last_activity_at) VALUES (?1, ?2, ?2) \
         ON CONFLICT(id) DO NOTHING"
    };
    tx.prepare_cached(sql)?.execute(rusqlite::params![id, now])?;
    Ok(())
}

/// Create workspace `id` if missing (titled by its id); answers whether
/// it did.
fn ensure_workspace(tx: &rusqlite::Connection, id: &str, now: i64) -> Result<bool, StoreError> {
    let n = tx
        .prepare_cached(
            "INSERT INTO workspaces (id, title, created_at, last_activity_at) VALUES (?1, ?1, ?2, ?2) \
             ON CONFLICT(id) DO NOTHING",
        )?
        .execute(rusqlite::params![id, now])?;
    Ok(n > 0)
}

/// A metadata update or a metrics append.
fn meta(tx: &rusqlite::Connection, w: &Write, now: i64) -> Result<(), StoreError> {
    match w {
        Write::Append { .. } | Write::Close { .. } | Write::Compact { .. } => Ok(()),
        Write::Traces { rows, .. } => {
            let mut insert = tx.prepare_cached(
                "INSERT INTO traces (conversation_id, turn_id, kind, ended_at, model, output_tokens, gen_ms, body)                  VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let int = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
            for r in rows {
                insert.execute(rusqlite::params![
                    r.conversation_id,
                    r.turn_id,
                    r.columns.kind,
                    r.ended_at,
                    r.columns.model,
                    int(r.columns.output_tokens),
                    int(r.columns.gen_ms),
                    r.body
                ])?;
            }
            Ok(())
        }
        Write::Value { scope, key, value, .. } => {
            match value {
                Some(v) => tx
                    .prepare_cached(
                        "INSERT INTO plugin_values (scope, key, value) VALUES (?1, ?2, ?3) \
                         ON CONFLICT(scope, key) DO UPDATE SET value = excluded.value",
                    )?
                    .execute(rusqlite::params![scope, key, v])?,
                None => tx
                    .prepare_cached("DELETE FROM plugin_values WHERE scope = ?1 AND key = ?2")?
                    .execute(rusqlite::params![scope, key])?,
            };
            Ok(())
        }
        Write::Workspace { change: WorkspaceChange::Delete(id), .. } => {
            tx.prepare_cached("DELETE FROM workspaces WHERE id = ?1")?.execute([id])?;
            Ok(())
        }
        Write::Workspace { change: WorkspaceChange::Put(u), .. } => {
            let created = ensure_workspace(tx, &u.id, now)?;
            if u.create_only && !created {
                return Ok(());
            }
            let set = |col: &str, v: rusqlite::types::Value| -> Result<(), StoreError> {
                // `col` is one of the fixed names below, never input.
                tx.prepare_cached(&format!("UPDATE workspaces SET {col} = ?1 WHERE id = ?2"))?
                    .execute(rusqlite::params![v, u.id])?;
                Ok(())
            };
            use rusqlite::types::Value as V;
            let text = |v: &Option<String>| v.clone().map_or(V::Null, V::Text);
            if let Some(t) = &u.title {
                set("title", V::Text(dispatch_contracts::protocol::wire::bounded_title(t)))?;
            }
            if let Some(c) = &u.default_cwd {
                set("default_cwd", text(c))?;
            }
            if let Some(c) = &u.default_computer_id {
                set("default_computer_id", text(c))?;
            }
            if let Some(s) = u.starred {
                set("starred", V::Integer(i64::from(s)))?;
            }
            Ok(())
        }
        Write::Update { update: u, .. } => {
            ensure_conversation(tx, &u.conversation_id, now, false)?;
            let set = |col: &str, v: Option<&str>| -> Result<(), StoreError> {
                // `col` is one of the fixed names below, never input.
                tx.prepare_cached(&format!("UPDATE conversations SET {col} = ?1 WHERE id = ?2"))?
                    .execute(rusqlite::params![v, u.conversation_id])?;
                Ok(())
            };
            if let Some(t) = &u.title {
                // Bounded whoever asks: every list carries every title.
                set("title", Some(&dispatch_contracts::protocol::wire::bounded_title(t)))?;
            }
            if let Some(s) = u.status {
                set("status", Some(s.as_str()))?;
            }
            if let Some(w) = &u.workspace_id {
                validate_workspace(w)?;
                ensure_workspace(tx, w, now)?;
                set("workspace_id", Some(w))?;
            }
            if let Some(c) = &u.cwd {
                set("cwd", c.as_deref())?;
            }
            if let Some(m) = &u.model {
                set("model", m.as_deref())?;
            }
            if let Some(e) = &u.reasoning_effort {
                let e =
                    e.and_then(|e| serde_json::to_value(e).ok()).and_then(|v| v.as_str().map(str::to_owned));
                set("reasoning_effort", e.as_deref())?;
            }
            if let Some(p) = &u.system_prompt {
                set("system_prompt", p.as_deref())?;
            }
            Ok(())
        }
        Write::Metrics { conversation_id, metrics, turn_id, .. } => {
            // A sealed turn is activity: its steps may have left
            // `last_activity_at` up to ACTIVITY_GRAIN_MS behind.
            ensure_conversation(tx, conversation_id, now, true)?;
            tx.prepare_cached(
                "INSERT INTO turn_metrics (conversation_id, position, turn_id, metrics) VALUES (?1, \
                 (SELECT COALESCE(MAX(position), 0) + 1 FROM turn_metrics WHERE conversation_id = ?1), ?2, ?3)",
            )?
            .execute(rusqlite::params![conversation_id, turn_id, metrics])?;
            Ok(())
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A writer on a fresh database migrated with the store's own SQL.
    fn writer(grain: i64) -> (tempfile::TempDir, Writer) {
        let dir = tempfile::tempdir().unwrap();
        let db = rusqlite::Connection::open(dir.path().join("w.db")).unwrap();
        for m in MIGRATOR.iter() {
            db.execute_batch(&m.sql).unwrap();
        }
        (dir, Writer { db, seen: HashMap::new(), activity_grain_ms: grain })
    }

    fn append(w: &mut Writer, id: &str, title: Option<&str>) -> Vec<u64> {
        let (reply, _rx) = oneshot::channel();
        let messages = vec![Encoded {
            role: if title.is_some() { Role::User } else { Role::Assistant },
            chunks: vec![r#"{"type":"text","text":"x"}"#.to_owned()],
            title: title.map(str::to_owned),
        }];
        let write = Write::Append { conversation_id: id.into(), turn_id: None, messages, reply };
        match w.transaction(std::slice::from_ref(&write)).unwrap().remove(0) {
            Outcome::Seqs(s) => s,
            _ => panic!("an append answered no seqs"),
        }
    }

    fn compact(w: &mut Writer, keep: u64, expect: u64) -> Result<u64, StoreError> {
        let (reply, _rx) = oneshot::channel();
        let request = CompactRequest {
            conversation_id: "c".into(),
            archive_id: format!("archive-{keep}-{expect}"),
            summary: "short".into(),
            keep_from_seq: keep,
            expect_latest_seq: expect,
        };
        let write = Write::Compact { request, reply };
        w.transaction(std::slice::from_ref(&write)).map(|mut o| match o.remove(0) {
            Outcome::Latest(l) => l,
            _ => panic!("a compaction answered no seq"),
        })
    }

    fn rows(w: &Writer, id: &str) -> Vec<(i64, i64, String)> {
        let mut q = w
            .db
            .prepare("SELECT seq, message_seq, stored FROM chunks WHERE conversation_id = ?1 ORDER BY seq")
            .unwrap();
        q.query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
    }

    /// The live log after a compaction: the summary at 1, the kept
    /// messages from 2 with their `message_seq` and the seq inside their
    /// stored JSON renumbered alike; the archive a copy of the old log. A
    /// stale `expect_latest_seq` or a boundary inside a message changes
    /// nothing.
    #[test]
    fn a_compaction_renumbers_the_kept_chunks_and_refuses_what_no_longer_fits() {
        let (_dir, mut w) = writer(0);
        for _ in 0..3 {
            append(&mut w, "c", Some("t"));
        }
        // A message of two chunks at seqs 4 and 5.
        let (reply, _rx) = oneshot::channel();
        let two = vec![Encoded {
            role: Role::Assistant,
            chunks: vec![
                r#"{"type":"text","text":"a"}"#.to_owned(),
                r#"{"type":"text","text":"b"}"#.to_owned(),
            ],
            title: None,
        }];
        let write = Write::Append { conversation_id: "c".into(), turn_id: None, messages: two, reply };
        w.transaction(std::slice::from_ref(&write)).unwrap();
        let old = rows(&w, "c");
        assert_eq!(old.len(), 5);

        assert!(matches!(compact(&mut w, 2, 4), Err(StoreError::Conflict(_))), "stale latest seq");
        assert!(matches!(compact(&mut w, 5, 5), Err(StoreError::BadCompaction(_))), "inside a message");
        assert_eq!(rows(&w, "c"), old, "refusals change nothing");

        assert_eq!(compact(&mut w, 3, 5).unwrap(), 4);
        let live = rows(&w, "c");
        let seqs: Vec<(i64, i64)> = live.iter().map(|(s, m, _)| (*s, *m)).collect();
        assert_eq!(seqs, [(1, 1), (2, 2), (3, 3), (4, 3)]);
        for (seq, _, stored) in &live {
            let v: serde_json::Value = serde_json::from_str(stored).unwrap();
            assert_eq!(v["seq"], *seq, "{stored}");
        }
        assert!(live[0].2.contains("summary of the previous conversation"));
        assert_eq!(rows(&w, "archive-3-5"), old);
        // The writer's idea of the latest seq follows: the next append is 5.
        assert_eq!(append(&mut w, "c", None), [5]);
    }

    fn activity(w: &Writer, id: &str) -> i64 {
        w.db.query_row("SELECT last_activity_at FROM conversations WHERE id = ?1", [id], |r| r.get(0))
            .unwrap()
    }

    fn mark(w: &Writer, id: &str) {
        w.db.execute("UPDATE conversations SET last_activity_at = 5 WHERE id = ?1", [id]).unwrap();
    }

    #[test]
    fn appends_within_the_activity_grain_leave_the_conversation_row_alone() {
        let (_dir, mut w) = writer(i64::MAX / 2);
        assert_eq!(append(&mut w, "c", None), [1], "the first append creates the row");
        assert!(activity(&w, "c") > 5);
        mark(&w, "c");
        assert_eq!(append(&mut w, "c", None), [2]);
        assert_eq!(activity(&w, "c"), 5, "a step's append did not rewrite the row");
        assert_eq!(append(&mut w, "c", Some("a title")), [3]);
        assert!(activity(&w, "c") > 5, "a message with a title records the activity");
        // Another writer (a restart) knows nothing: its first append
        // records the activity and continues the seqs from the chunks.
        mark(&w, "c");
        let Writer { db, .. } = w;
        let mut again = Writer { db, seen: HashMap::new(), activity_grain_ms: i64::MAX / 2 };
        assert_eq!(append(&mut again, "c", None), [4]);
        assert!(activity(&again, "c") > 5);
    }

    #[test]
    fn past_the_activity_grain_an_append_records_the_activity() {
        let (_dir, mut w) = writer(0);
        append(&mut w, "c", None);
        mark(&w, "c");
        assert_eq!(append(&mut w, "c", None), [2]);
        assert!(activity(&w, "c") > 5);
    }

    #[test]
    fn a_turns_metrics_record_the_activity() {
        let (_dir, mut w) = writer(i64::MAX / 2);
        append(&mut w, "c", None);
        mark(&w, "c");
        let (reply, _rx) = oneshot::channel();
        let write =
            Write::Metrics { conversation_id: "c".into(), metrics: "{}".into(), turn_id: "t".into(), reply };
        w.transaction(std::slice::from_ref(&write)).unwrap();
        assert!(activity(&w, "c") > 5);
    }
}
