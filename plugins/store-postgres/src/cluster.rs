//! The `cluster` service on the shared database: turn claims as leased
//! rows, and actions forwarded to the host running a turn through
//! PostgreSQL's `LISTEN`/`NOTIFY` (no broker of our own).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dispatch_contracts::cluster::{Claimed, Delivered, ForwardAction, Forwarded, Member};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPool};
use sqlx::Row as _;

use crate::store::StoreError;

/// The channel forwarded actions travel on.
pub const CHANNEL: &str = "dispatch_cluster";
/// The channel relayed events travel on.
pub const EVENTS: &str = "dispatch_events";
/// The largest payload sent inline (PostgreSQL's limit is 8000 bytes);
/// a larger event goes by reference to a `relayed` row.
const MAX_PAYLOAD: usize = 7000;
/// How long a relayed row is kept (a receiver reads it at once).
const RELAYED_KEPT_MS: i64 = 600_000;

/// What is relayed: a turn event, a status change or a conversation's
/// surface update, as its JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A `session.event`.
    Event,
    /// A `session.status`.
    Status,
    /// A `surfaces.changed` of a conversation's instance.
    Surface,
}

/// Relayed items as they travel: inline, or the id of the row holding them.
#[derive(Debug, Serialize, Deserialize)]
struct Relayed {
    from: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    items: Vec<(Kind, Box<serde_json::value::RawValue>)>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "ref")]
    reference: Option<i64>,
}
/// The database's clock, in ms.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// A forwarded action as it travels (a few hundred bytes: far under
/// `NOTIFY`'s 8000-byte limit).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Note {
    to: String,
    conversation_id: String,
    action: ForwardAction,
}

/// This host in the cluster.
#[derive(Clone)]
pub struct Cluster {
    pool: PgPool,
    host_id: Arc<str>,
    lease: Duration,
    /// The conversations this host holds claims on: only these are renewed,
    /// so a claim whose release failed (the database was away) lapses at
    /// the end of its lease instead of living on.
    held: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("host_id", &self.host_id).field("lease", &self.lease).finish()
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Cluster {
    /// This host (a new id per start) on `pool`, its claims leased for
    /// `lease`.
    pub fn new(pool: PgPool, host_id: String, lease: Duration) -> Self {
        Cluster { pool, host_id: host_id.into(), lease, held: Arc::default() }
    }

    /// This host's id.
    pub fn member(&self) -> Member {
        Member { host_id: self.host_id.to_string() }
    }

    /// Claim `conversation_id`'s turn: granted when nobody holds it, the
    /// holder's lease ran out, or this host holds it already.
    pub async fn claim(&self, conversation_id: &str, turn_id: &str) -> Result<Claimed, StoreError> {
        let won = sqlx::query(&format!(
            "INSERT INTO turn_claims AS t (conversation_id, host_id, turn_id, expires_at) \
             VALUES ($1, $2, $3, {NOW_MS} + $4) \
             ON CONFLICT (conversation_id) DO UPDATE SET host_id = EXCLUDED.host_id, \
               turn_id = EXCLUDED.turn_id, expires_at = EXCLUDED.expires_at \
             WHERE t.expires_at < {NOW_MS} OR t.host_id = EXCLUDED.host_id \
             RETURNING host_id"
        ))
        .bind(conversation_id)
        .bind(&*self.host_id)
        .bind(turn_id)
        .bind(ms(self.lease))
        .fetch_optional(&self.pool)
        .await?;
        if won.is_some() {
            self.held().insert(conversation_id.to_owned());
            return Ok(Claimed { granted: true, holder: None, turn_id: None });
        }
        let holder = sqlx::query("SELECT host_id, turn_id FROM turn_claims WHERE conversation_id = $1")
            .bind(conversation_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(Claimed {
            granted: false,
            holder: holder.as_ref().map(|r| r.get(0)),
            turn_id: holder.as_ref().and_then(|r| r.get(1)),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Give up this host's claim on `conversation_id`.
    pub async fn release(&self, conversation_id: &str) -> Result<(), StoreError> {
        self.held().remove(conversation_id);
        sqlx::query("DELETE FROM turn_claims WHERE conversation_id = $1 AND host_id = $2")
            .bind(conversation_id)
            .bind(&*self.host_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Give up every claim of this host (it is stopping).
    pub async fn release_all(&self) -> Result<(), StoreError> {
        self.held().clear();
        sqlx::query("DELETE FROM turn_claims WHERE host_id = $1")
            .bind(&*self.host_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Extend the lease of every claim this host holds.
    async fn renew(&self) -> Result<u64, StoreError> {
        let held: Vec<String> = self.held().iter().cloned().collect();
        if held.is_empty() {
            return Ok(0);
        }
        let done = sqlx::query(&format!(
            "UPDATE turn_claims SET expires_at = {NOW_MS} + $2 WHERE host_id = $1 AND conversation_id = ANY($3)"
        ))
        .bind(&*self.host_id)
        .bind(ms(self.lease))
        .bind(&held)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Renew this host's claims three times per lease, for as long as the
    /// task runs. A renewal that fails (the database is away) is tried
    /// again at the next tick; claims that lapse meanwhile may be taken.
    pub async fn renew_forever(self) {
        let mut tick = tokio::time::interval(self.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.pool.is_closed() {
            tick.tick().await;
            if let Err(e) = self.renew().await {
                tracing::warn!(error = %e, "cannot renew this host's turn claims");
            }
        }
    }

    /// Send `action` to the host running `conversation_id`'s turn, when
    /// another live host does.
    pub async fn forward(
        &self,
        conversation_id: &str,
        action: ForwardAction,
    ) -> Result<Delivered, StoreError> {
        let holder: Option<String> = sqlx::query_scalar(&format!(
            "SELECT host_id FROM turn_claims WHERE conversation_id = $1 AND expires_at >= {NOW_MS}"
        ))
        .bind(conversation_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(to) = holder.filter(|h| *h != *self.host_id) else {
            return Ok(Delivered { delivered: false, host: None });
        };
        let note = Note { to: to.clone(), conversation_id: conversation_id.to_owned(), action };
        let payload = serde_json::to_string(&note).map_err(|e| StoreError::Database(e.to_string()))?;
        sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(payload).execute(&self.pool).await?;
        Ok(Delivered { delivered: true, host: Some(to) })
    }

    /// Send what this host publishes to the other hosts, in order: each
    /// batch of what queued meanwhile in one `NOTIFY` (by reference when
    /// over [`MAX_PAYLOAD`]). A failed send is dropped with a warning: the
    /// other hosts' watchers miss those live events (the store has the
    /// turn's messages).
    pub async fn relay_forever(
        self,
        mut queue: tokio::sync::mpsc::Receiver<(Kind, Box<serde_json::value::RawValue>)>,
    ) {
        while let Some(first) = queue.recv().await {
            let mut size = first.1.get().len();
            let mut items = vec![first];
            while size < MAX_PAYLOAD {
                match queue.try_recv() {
                    Ok(item) => {
                        size += item.1.get().len() + 16;
                        items.push(item);
                    }
                    Err(_) => break,
                }
            }
            if let Err(e) = self.send(items).await {
                tracing::warn!(error = %e, "cannot relay events to the other hosts");
            }
        }
    }

    async fn send(&self, items: Vec<(Kind, Box<serde_json::value::RawValue>)>) -> Result<(), StoreError> {
        let mut batch = Vec::new();
        let mut size = 0;
        for item in items {
            let n = item.1.get().len() + 16;
            if size + n > MAX_PAYLOAD && !batch.is_empty() {
                self.notify(std::mem::take(&mut batch)).await?;
                size = 0;
            }
            size += n;
            batch.push(item);
        }
        if !batch.is_empty() {
            self.notify(batch).await?;
        }
        Ok(())
    }

    async fn notify(&self, items: Vec<(Kind, Box<serde_json::value::RawValue>)>) -> Result<(), StoreError> {
        let json = |r: &Relayed| serde_json::to_string(r).map_err(|e| StoreError::Database(e.to_string()));
        let mut relayed = Relayed { from: self.host_id.to_string(), items, reference: None };
        let mut payload = json(&relayed)?;
        if payload.len() > MAX_PAYLOAD {
            let id: i64 = sqlx::query_scalar(&format!(
                "WITH gone AS (DELETE FROM relayed WHERE sent_at < {NOW_MS} - $2) \
                 INSERT INTO relayed (body, sent_at) VALUES ($1, {NOW_MS}) RETURNING id"
            ))
            .bind(&payload)
            .bind(RELAYED_KEPT_MS)
            .fetch_one(&self.pool)
            .await?;
            relayed = Relayed { from: relayed.from, items: Vec::new(), reference: Some(id) };
            payload = json(&relayed)?;
        }
        sqlx::query("SELECT pg_notify($1, $2)").bind(EVENTS).bind(payload).execute(&self.pool).await?;
        Ok(())
    }

    /// The items of a relayed payload from another host (none from this
    /// one).
    async fn received(
        &self,
        payload: &str,
    ) -> Result<Vec<(Kind, Box<serde_json::value::RawValue>)>, StoreError> {
        let relayed: Relayed = serde_json::from_str(payload)
            .map_err(|e| StoreError::Database(format!("a relayed payload: {e}")))?;
        if *relayed.from == *self.host_id {
            return Ok(Vec::new());
        }
        let Some(id) = relayed.reference else { return Ok(relayed.items) };
        let body: String = sqlx::query_scalar("SELECT body FROM relayed WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        let full: Relayed =
            serde_json::from_str(&body).map_err(|e| StoreError::Database(format!("a relayed row: {e}")))?;
        Ok(full.items)
    }

    /// Listen for actions forwarded to this host and hand each to
    /// `deliver`, for as long as the task runs. The listener reconnects by
    /// itself after a lost connection (an action sent meanwhile is lost: the
    /// sender's client may ask again).
    pub async fn listen_forever(
        self,
        deliver: impl Fn(Forwarded) + Send + 'static,
        relayed: impl Fn(Kind, &serde_json::value::RawValue) + Send + 'static,
    ) {
        // Until the store closes its pool (the plugin is stopping).
        while !self.pool.is_closed() {
            let mut listener = match PgListener::connect_with(&self.pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for forwarded actions; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(e) = listener.listen_all([CHANNEL, EVENTS]).await {
                tracing::warn!(error = %e, "cannot listen for forwarded actions; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            loop {
                match listener.recv().await {
                    Ok(n) if n.channel() == EVENTS => match self.received(n.payload()).await {
                        Ok(items) => {
                            for (kind, json) in &items {
                                relayed(*kind, json);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "a relayed event cannot be read"),
                    },
                    Ok(n) => match serde_json::from_str::<Note>(n.payload()) {
                        Ok(note) if *note.to == *self.host_id => {
                            deliver(Forwarded { conversation_id: note.conversation_id, action: note.action })
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "a forwarded action that does not parse"),
                    },
                    Err(_) if self.pool.is_closed() => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "the forwarded actions' connection failed; listening again");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        break;
                    }
                }
            }
        }
    }
}
