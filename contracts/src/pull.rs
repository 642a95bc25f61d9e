//! [`PullTable`]: the serving side of both pull protocols.
//!
//! A model step and a tool call are both streams: items produced on the
//! plugin's runtime, read by a caller in another library that can only make
//! request/response calls. So the caller *pulls*: `open`/`start` registers a
//! stream and answers its id, each `next` answers every item ready since the
//! previous one (waiting for at least one), `cancel` fires the stream's
//! [`AbortSignal`] and forgets it. One `next` answers all that is ready, so a
//! fast producer costs one bus round trip per batch, not per item.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use dispatch_abi::{codes, Error};
use dispatch_protocol::abort::AbortSignal;
use futures::channel::mpsc;
use futures::StreamExt as _;

/// Most items one `next` answers.
pub const MAX_BATCH: usize = 4096;

/// Where a producer pushes a stream's items. Sending fails only once the
/// stream was cancelled; a producer may ignore that (its abort signal has
/// fired too).
pub type Sender<T> = mpsc::UnboundedSender<T>;

/// Why a `next` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    /// No stream has that id: it finished, was cancelled, or never existed.
    #[error("no open stream {0} (finished, cancelled or never opened)")]
    Unknown(u64),
    /// Another `next` of the same stream is still waiting.
    #[error("stream {0} is already being read by another `next`")]
    Busy(u64),
}

impl From<PullError> for Error {
    fn from(e: PullError) -> Self {
        let code = match e {
            PullError::Unknown(_) => codes::NOT_FOUND,
            PullError::Busy(_) => codes::CONFLICT,
        };
        Error::new(code, e.to_string())
    }
}

/// What one `next` took from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled<T> {
    /// The items, in order; the last one may be the one that ends the
    /// stream.
    pub items: Vec<T>,
    /// The stream is over: an item that ends it was taken, or the producer
    /// went away (check which — a producer that stops without its final
    /// item has failed). The stream is forgotten.
    pub ended: bool,
    /// The producer went away (every sender dropped) with nothing more to
    /// come.
    pub closed: bool,
}

#[derive(Debug)]
struct Entry<T> {
    /// Taken by the `next` in progress.
    rx: Option<mpsc::UnboundedReceiver<T>>,
    abort: AbortSignal,
}

/// Open streams by id. Runtime-agnostic: [`PullTable::open`] hands back the
/// sender and abort signal for the plugin to start its producer with on its
/// own runtime.
#[derive(Debug)]
pub struct PullTable<T> {
    next_id: AtomicU64,
    streams: Mutex<HashMap<u64, Entry<T>>>,
}

impl<T> Default for PullTable<T> {
    fn default() -> Self {
        PullTable { next_id: AtomicU64::new(0), streams: Mutex::new(HashMap::new()) }
    }
}

impl<T: Send> PullTable<T> {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry<T>>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Register a new stream. Answers its id, the sender its producer
    /// pushes into (dropping every sender closes the stream) and the signal
    /// that fires when the stream is cancelled.
    pub fn open(&self) -> (u64, Sender<T>, AbortSignal) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::unbounded();
        let abort = AbortSignal::new();
        self.lock().insert(id, Entry { rx: Some(rx), abort: abort.clone() });
        (id, tx, abort)
    }

    /// Wait for the next items of stream `id`, then take every item already
    /// queued behind them without waiting, at most [`MAX_BATCH`] — up to and
    /// including the first one `ends` says closes the stream.
    pub async fn next(&self, id: u64, ends: impl Fn(&T) -> bool) -> Result<Pulled<T>, PullError> {
        let mut rx = {
            let mut streams = self.lock();
            let entry = streams.get_mut(&id).ok_or(PullError::Unknown(id))?;
            entry.rx.take().ok_or(PullError::Busy(id))?
        };
        let mut pulled = Pulled { items: Vec::new(), ended: false, closed: false };
        let mut item = rx.next().await;
        loop {
            let Some(it) = item else {
                pulled.closed = true;
                pulled.ended = true;
                break;
            };
            let last = ends(&it);
            pulled.items.push(it);
            if last {
                pulled.ended = true;
                break;
            }
            // A bounded batch: a producer far ahead of its reader (an
            // offline model's 300 000 deltas, produced at once) would
            // otherwise make one answer of them all — tens of MB encoded
            // and decoded in one piece.
            if pulled.items.len() >= MAX_BATCH {
                break;
            }
            item = match rx.try_recv() {
                Ok(next) => Some(next),
                Err(mpsc::TryRecvError::Closed) => None,
                // Nothing more ready yet.
                Err(_) => break,
            };
        }
        let mut streams = self.lock();
        if pulled.ended {
            streams.remove(&id);
        } else if let Some(entry) = streams.get_mut(&id) {
            // Still there unless cancelled meanwhile.
            entry.rx = Some(rx);
        }
        Ok(pulled)
    }

    /// Fire stream `id`'s abort signal and forget it. Unknown ids are
    /// ignored (the stream may have just ended).
    pub fn cancel(&self, id: u64) {
        if let Some(entry) = self.lock().remove(&id) {
            entry.abort.abort();
        }
    }

    /// Cancel every stream (deactivation).
    pub fn cancel_all(&self) {
        for (_, entry) in self.lock().drain() {
            entry.abort.abort();
        }
    }

    /// Streams open now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use std::future::Future as _;

    #[test]
    fn one_next_takes_everything_ready_up_to_the_end_and_forgets_the_stream() {
        let table = PullTable::<u32>::default();
        let (id, tx, _abort) = table.open();
        for i in [1, 2, 99, 3] {
            tx.unbounded_send(i).unwrap();
        }
        let pulled = block_on(table.next(id, |i| *i == 99)).unwrap();
        assert_eq!(pulled, Pulled { items: vec![1, 2, 99], ended: true, closed: false });
        assert_eq!(block_on(table.next(id, |_| false)), Err(PullError::Unknown(id)));
        assert!(table.is_empty());
    }

    #[test]
    fn a_producer_that_goes_away_ends_the_stream_as_closed() {
        let table = PullTable::<u32>::default();
        let (id, tx, _abort) = table.open();
        tx.unbounded_send(7).unwrap();
        let first = block_on(table.next(id, |_| false)).unwrap();
        assert_eq!(first, Pulled { items: vec![7], ended: false, closed: false });
        drop(tx);
        let second = block_on(table.next(id, |_| false)).unwrap();
        assert_eq!(second, Pulled { items: vec![], ended: true, closed: true });
        assert!(table.is_empty());
    }

    #[test]
    fn cancel_fires_the_abort_signal_and_a_second_reader_is_refused() {
        let table = PullTable::<u32>::default();
        let (id, _tx, abort) = table.open();
        // A reader waiting on an empty stream holds it.
        let mut waiting = Box::pin(table.next(id, |_| false));
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        assert_eq!(block_on(table.next(id, |_| false)), Err(PullError::Busy(id)));
        let e: Error = PullError::Busy(id).into();
        assert_eq!(e.code(), codes::CONFLICT);
        table.cancel(id);
        assert!(abort.is_aborted());
        assert!(table.is_empty());
    }
}
