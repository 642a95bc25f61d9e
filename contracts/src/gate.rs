//! Provider slots (WIRE.md "Provider concurrency"): each provider request
//! — every step of a turn, a warm, a compaction summary — first asks the `concurrency`
//! service for a slot of its provider (the credential name), and gives it
//! back when its response stream ends (on drop, however it ends: done,
//! failed, aborted). While it waits, the conversation is announced
//! `queued`, and `active` once it has the slot. Without the service (or
//! for an unlimited provider) a request goes at once and nothing is
//! announced.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::concurrency::{Acquired, ConcurrencyRequest, Waited, CONCURRENCY};
use dispatch_abi::Host;
use dispatch_kernel::provider::{Provider, ProviderError, ProviderEvent, StepRequest};
use dispatch_kernel::wire::ConversationStatus;
use dispatch_protocol::Spawner;
use futures::stream::{self, BoxStream, StreamExt as _};

/// Who asks, for the limiter's order.
#[derive(Debug, Clone)]
pub struct Asker {
    /// The provider: the credential name.
    pub provider_id: String,
    /// The conversation.
    pub conversation_id: String,
    /// Its workspace (a starred one goes first).
    pub workspace_id: String,
    /// When the turn started, epoch ms (older goes first).
    pub turn_started_at: u64,
}

/// What the gate announces: `queued` while waiting, `active` with the slot.
pub type Announce = Arc<dyn Fn(ConversationStatus) + Send + Sync>;

/// `inner`, each request held to its provider's slots.
pub struct Gated<P> {
    /// The provider.
    pub inner: P,
    /// The bus.
    pub host: Host,
    /// Where a slot's release runs (it is given back on drop).
    pub spawner: Spawner,
    /// Who asks.
    pub asker: Asker,
    /// Tells clients the conversation waits or goes on.
    pub announce: Announce,
}

/// A slot held (or a place in the queue): given back when dropped.
struct Permit {
    ticket: u64,
    host: Host,
    spawner: Spawner,
    rate_limited: AtomicBool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let request = ConcurrencyRequest::Release {
            ticket: self.ticket,
            rate_limited: self.rate_limited.load(Ordering::SeqCst),
        };
        let host = self.host.clone();
        (self.spawner)(Box::pin(async move {
            if let Err(e) = host.call(&CONCURRENCY, &request).await {
                tracing::warn!(error = %e, "cannot give a provider slot back; it is taken back after five minutes");
            }
        }));
    }
}

impl<P> std::fmt::Debug for Gated<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gated").field("asker", &self.asker).finish_non_exhaustive()
    }
}

impl<P> Gated<P> {
    /// `inner` gated for a request of `model` (`<credential>/<model>`: the
    /// credential is the provider) in `conversation_id` of `workspace_id`,
    /// for a turn starting now.
    pub fn new(
        inner: P,
        host: Host,
        spawner: Spawner,
        model: &str,
        conversation_id: &str,
        workspace_id: &str,
        announce: Announce,
    ) -> Gated<P> {
        let turn_started_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let asker = Asker {
            provider_id: model.split('/').next().unwrap_or(model).to_owned(),
            conversation_id: conversation_id.to_owned(),
            workspace_id: workspace_id.to_owned(),
            turn_started_at,
        };
        Gated { inner, host, spawner, asker, announce }
    }
}

impl<P: Provider> Gated<P> {
    /// A slot, once granted; `None` when requests to this provider are not
    /// limited (or there is no limiter).
    async fn slot(&self) -> Option<Permit> {
        let a = &self.asker;
        let request = ConcurrencyRequest::Acquire {
            provider_id: a.provider_id.clone(),
            conversation_id: a.conversation_id.clone(),
            workspace_id: a.workspace_id.clone(),
            turn_started_at: a.turn_started_at,
        };
        let acquired: Acquired =
            serde_json::from_value(self.host.call(&CONCURRENCY, &request).await.ok()?).ok()?;
        if !acquired.limited {
            return None;
        }
        // From here the ticket is given back however this ends (an abort
        // drops this future: a queued ticket leaves the queue).
        let permit = Permit {
            ticket: acquired.ticket,
            host: self.host.clone(),
            spawner: Arc::clone(&self.spawner),
            rate_limited: AtomicBool::new(false),
        };
        if !acquired.granted {
            (self.announce)(ConversationStatus::Queued);
            loop {
                let wait = ConcurrencyRequest::Wait { ticket: acquired.ticket, wait_ms: Some(20_000) };
                match self.host.call(&CONCURRENCY, &wait).await.map(serde_json::from_value::<Waited>) {
                    Ok(Ok(w)) if w.granted => break,
                    Ok(Ok(_)) => continue,
                    // The limiter went away: go on unlimited.
                    _ => break,
                }
            }
        }
        (self.announce)(ConversationStatus::Active);
        Some(permit)
    }
}

impl<P: Provider> Provider for Gated<P> {
    fn stream<'a>(&'a self, request: StepRequest<'a>) -> BoxStream<'a, Result<ProviderEvent, ProviderError>> {
        stream::once(async move {
            let permit = self.slot().await;
            self.inner
                .stream(request)
                .map(move |event| {
                    if let (Err(e), Some(p)) = (&event, &permit) {
                        if e.code.as_deref() == Some("429") {
                            p.rate_limited.store(true, Ordering::SeqCst);
                        }
                    }
                    event
                })
                .boxed()
        })
        .flatten()
        .boxed()
    }
}
