//! The terminating signals the one-shot commands (`turn`, `call`) answer:
//! SIGINT, SIGTERM and SIGHUP (for `serve`, SIGHUP means "reload") (`timeout(1)` sends SIGTERM; a closed
//! terminal, SIGHUP). Listening replaces their default action, which would
//! kill the host on the spot and leave tool processes running; instead the
//! work is aborted and the plugins are deactivated (a shell tool kills its
//! process groups), and the process exits with `128 + signal`.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Listeners for the terminating signals, registered at once.
#[derive(Debug)]
pub struct Terminate {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Terminate {
    /// Start listening (needs a tokio runtime with signal support).
    pub fn listen() -> std::io::Result<Self> {
        Ok(Terminate {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Wait for the first terminating signal; answers its number.
    pub async fn first(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }

    /// For `serve`: wait for SIGINT or SIGTERM (answers its number) — or
    /// SIGHUP, which asks for a reload (answers `None`).
    pub async fn stop_or_reload(&mut self) -> Option<i32> {
        tokio::select! {
            _ = self.int.recv() => Some(libc::SIGINT),
            _ = self.term.recv() => Some(libc::SIGTERM),
            _ = self.hup.recv() => None,
        }
    }

    /// Fire `abort` on the first signal, from a background task; the
    /// answer holds the signal's number once it came (0 before).
    pub fn abort_on_signal(mut self, abort: dispatch_kernel::runtime::AbortSignal) -> Arc<AtomicI32> {
        let fired = Arc::new(AtomicI32::new(0));
        let seen = Arc::clone(&fired);
        tokio::spawn(async move {
            let n = self.first().await;
            seen.store(n, Ordering::SeqCst);
            abort.abort();
        });
        fired
    }
}

/// The exit code of a process ended by signal `n`.
pub fn exit_code(n: i32) -> std::process::ExitCode {
    std::process::ExitCode::from(u8::try_from(128 + n).unwrap_or(1))
}
