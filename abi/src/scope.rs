//! Which plugin's code a thread is running, for attributing panics.
//!
//! With std linked statically into the plugin (the usual third-party build),
//! the panic hook this crate installs only ever sees panics raised by this
//! library's code: each library has its own std and its own hook. The bundled
//! plugins share one std with the host (`-C prefer-dynamic`, see the
//! `dispatch-rt` crate), and with it one chain of panic hooks, so each hook
//! must tell whether a panic is its plugin's.
//!
//! This crate is linked statically into every plugin, so the thread-local
//! below is private to the plugin. It is set while the thread runs code of
//! this plugin — an entry point, a handler, a poll of a future the plugin gave
//! the host, a worker of its runtime — and cleared again while this plugin
//! calls out to the host (a service call, a hook chain, a publish), where the
//! code that runs may be another plugin's. So at any moment at most one
//! plugin claims a thread: the innermost one.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

thread_local! {
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Restores the previous state when dropped.
#[must_use]
pub(crate) struct Scope(bool);

impl Drop for Scope {
    fn drop(&mut self) {
        let previous = self.0;
        let _ = INSIDE.try_with(|c| c.set(previous));
    }
}

fn set(inside: bool) -> Scope {
    Scope(INSIDE.try_with(|c| c.replace(inside)).unwrap_or(false))
}

/// This thread runs this plugin's code until the guard drops.
pub(crate) fn enter() -> Scope {
    set(true)
}

/// This thread runs the host's (or another plugin's) code until the guard drops.
pub(crate) fn leave() -> Scope {
    set(false)
}

/// Whether this thread is running this plugin's code.
pub(crate) fn inside() -> bool {
    INSIDE.try_with(Cell::get).unwrap_or(false)
}

/// Marks a thread of the plugin's own runtime for its whole life.
#[cfg(feature = "runtime")]
pub(crate) fn mark_thread() {
    let _ = INSIDE.try_with(|c| c.set(true));
}

pin_project_lite::pin_project! {
    /// A future every poll of which runs [`enter`]ed (this plugin's code) or
    /// [`leave`]n (the host's).
    pub(crate) struct Scoped<F> {
        #[pin]
        inner: F,
        inside: bool,
    }
}

impl<F> Scoped<F> {
    pub(crate) fn inside(inner: F) -> Self {
        Self { inner, inside: true }
    }
    pub(crate) fn outside(inner: F) -> Self {
        Self { inner, inside: false }
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _scope = set(*this.inside);
        this.inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_restore() {
        assert!(!inside());
        {
            let _a = enter();
            assert!(inside());
            {
                let _b = leave();
                assert!(!inside());
                let _c = enter();
                assert!(inside());
            }
            assert!(inside());
        }
        assert!(!inside());
    }

    #[test]
    fn a_scoped_future_is_polled_in_its_scope_and_restores_the_callers() {
        let probe = Scoped::inside(async { inside() });
        let _outer = leave();
        assert!(futures::executor::block_on(probe));
        assert!(!inside());
        let _in = enter();
        assert!(!futures::executor::block_on(Scoped::outside(async { inside() })));
        assert!(inside());
    }
}
