//! [`AbortSignal`]: how a turn, a model step or a tool call is cancelled.
//! Runtime-agnostic (no timers, no executor), so the same signal works in
//! the kernel, in a plugin's own runtime and in tests.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct AbortState {
    aborted: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

/// Cancels a turn. Cheap to clone; every clone sees the same state. Works
/// with any executor (no timers, no runtime).
#[derive(Clone, Default)]
pub struct AbortSignal(Arc<AbortState>);

impl std::fmt::Debug for AbortSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AbortSignal(aborted: {})", self.is_aborted())
    }
}

impl AbortSignal {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fire: everything waiting on [`AbortSignal::aborted`] wakes.
    pub fn abort(&self) {
        self.0.aborted.store(true, Ordering::SeqCst);
        let wakers = std::mem::take(&mut *self.0.wakers.lock().unwrap_or_else(PoisonError::into_inner));
        for w in wakers {
            w.wake();
        }
    }

    /// Whether it has fired.
    pub fn is_aborted(&self) -> bool {
        self.0.aborted.load(Ordering::SeqCst)
    }

    /// Resolves once the signal fires.
    pub fn aborted(&self) -> Aborted {
        Aborted(self.clone())
    }
}

/// The future of [`AbortSignal::aborted`].
pub struct Aborted(AbortSignal);

impl Future for Aborted {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.is_aborted() {
            return Poll::Ready(());
        }
        let mut wakers = self.0 .0.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        // Re-check under the lock: `abort` takes the list after setting the
        // flag, so either we see the flag or it sees our waker.
        if self.0.is_aborted() {
            return Poll::Ready(());
        }
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abort_wakes_a_waiter() {
        let signal = AbortSignal::new();
        let s = signal.clone();
        let t = std::thread::spawn(move || futures::executor::block_on(s.aborted()));
        std::thread::sleep(std::time::Duration::from_millis(20));
        signal.abort();
        t.join().unwrap();
        assert!(signal.is_aborted());
    }
}
