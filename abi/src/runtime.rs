//! Where a plugin's async work runs: the host's tokio runtime when the
//! plugin shares the host's tokio, a small runtime of its own otherwise.
//!
//! A plugin built on its own (the usual third-party build) links its own
//! copy of tokio, and tokio finds its reactor and timers through
//! thread-locals of *that* copy. A plugin future that touches tokio while the
//! host polls it would panic with "no reactor running". Such a plugin owns a
//! runtime, spawns its work there, and hands the host a future that only
//! waits on a runtime-agnostic channel: [`PluginRuntime::run`] does exactly
//! that.
//!
//! The bundled plugins link tokio from the same shared library as the host
//! (the `dispatch-rt` crate). For them the host's runtime is visible from
//! plugin code, and a runtime per plugin would only add threads, memory and a
//! thread hop on every call. [`PluginRuntime::new`] sees this —
//! `Handle::try_current()` succeeds on the host thread that activates the
//! plugin only when both use one tokio — and then runs the plugin's tasks on
//! the host's runtime instead, tracking them so that
//! [`PluginRuntime::shutdown`] still stops them all: deactivation means the
//! same in both modes. The plugin's code does not change.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::FutureExt as _;
use tokio::sync::Notify;

use crate::error::{codes, Error};

/// The most worker threads a [`PluginRuntime`] may have.
pub const MAX_WORKERS: usize = 256;

/// Where a plugin's tasks run; see the [module docs](self).
#[derive(Debug)]
pub struct PluginRuntime {
    /// The plugin's own runtime; `None` when it shares the host's (or after
    /// [`PluginRuntime::shutdown`]).
    runtime: Option<tokio::runtime::Runtime>,
    runner: Runner,
}

/// A cheap, cloneable handle that runs futures on a [`PluginRuntime`]; move
/// clones into service handlers.
#[derive(Clone, Debug)]
pub struct Runner {
    handle: tokio::runtime::Handle,
    name: Arc<str>,
    /// The plugin's live tasks, when they run on the host's runtime.
    tasks: Option<Arc<Tasks>>,
}

/// Return the allocator's free memory to the system, after a burst that
/// freed much (a turn of hundreds of thousands of events, a thousand
/// sockets closing): glibc's malloc keeps freed chunks in its arenas, and
/// `malloc_trim` releases every arena's free pages. Elsewhere a no-op.
pub fn give_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::os::raw::c_int;
        }
        // SAFETY: glibc's malloc_trim takes a size and touches only the
        // allocator's own state, under its own locks.
        unsafe {
            malloc_trim(0);
        }
    }
}

impl PluginRuntime {
    /// Where the plugin named `name` runs its tasks: the host's runtime when
    /// the plugin shares the host's tokio (see the [module docs](self)),
    /// otherwise a new runtime with `workers` threads (at least one, at
    /// most [`MAX_WORKERS`]) named after the plugin. A count from
    /// configuration above the limit is an `invalid_config` error in both
    /// cases, not an attempt to start 20 000 threads that aborts the host.
    ///
    /// Call it from [`crate::Plugin::activate`] (a host thread), where the
    /// host's runtime is visible.
    pub fn new(name: &str, workers: usize) -> Result<Self, Error> {
        check_workers(name, workers)?;
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => Ok(Self {
                runtime: None,
                runner: Runner { handle, name: name.into(), tasks: Some(Arc::default()) },
            }),
            Err(_) => Self::dedicated(name, workers),
        }
    }

    /// A runtime of the plugin's own with `workers` threads, even when the
    /// host's could be shared: for a plugin whose work must not compete
    /// with everyone else's for the host's workers (or that blocks them).
    pub fn dedicated(name: &str, workers: usize) -> Result<Self, Error> {
        check_workers(name, workers)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name(format!("{name}-rt"))
            // Its workers and blocking threads run only this plugin's code.
            .on_thread_start(crate::scope::mark_thread)
            .enable_all()
            .build()
            .map_err(|e| Error::msg(format!("cannot start the `{name}` runtime: {e}")))?;
        let runner = Runner { handle: runtime.handle().clone(), name: name.into(), tasks: None };
        Ok(Self { runtime: Some(runtime), runner })
    }

    /// Whether the plugin's tasks run on the host's runtime.
    pub fn is_shared(&self) -> bool {
        self.runner.tasks.is_some()
    }

    /// The tokio handle, for building clients inside the runtime's context.
    /// A task spawned on it directly is not stopped by
    /// [`PluginRuntime::shutdown`] when the runtime is the host's: spawn
    /// through [`Runner::spawn`].
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.runner.handle
    }

    /// A cloneable handle for running futures here.
    pub fn runner(&self) -> Runner {
        self.runner.clone()
    }

    /// See [`Runner::run`].
    pub fn run<T, F>(&self, fut: F) -> impl Future<Output = Result<T, Error>> + Send + 'static
    where
        T: Send + 'static,
        F: Future<Output = Result<T, Error>> + Send + 'static,
    {
        self.runner.run(fut)
    }

    /// Stop every task, giving them up to `timeout` to be dropped (an own
    /// runtime also waits that long for its blocking threads). Later
    /// [`Runner::run`] calls answer an `unavailable` error.
    ///
    /// Blocks the calling thread: call it from
    /// [`crate::Plugin::deactivate`], which the host runs on a blocking
    /// thread of its own — not from a task on the runtime, where it could
    /// only wait out `timeout`.
    pub fn shutdown(&mut self, timeout: Duration) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(timeout);
        }
        if let Some(tasks) = &self.runner.tasks {
            tasks.close();
            // Bounded: called from one of the tasks being stopped, or from
            // the only worker that could drop them, this waits out the
            // timeout and returns (they go at their next poll).
            tasks.wait_idle(timeout);
        }
    }
}

fn check_workers(name: &str, workers: usize) -> Result<(), Error> {
    if workers > MAX_WORKERS {
        return Err(Error::new(
            codes::INVALID_CONFIG,
            format!("the `{name}` runtime cannot have {workers} worker threads (at most {MAX_WORKERS})"),
        ));
    }
    Ok(())
}

impl Runner {
    /// The tokio handle of the runtime this runner spawns on; see
    /// [`PluginRuntime::handle`].
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Start `fut` on the plugin's runtime and let it run to its end,
    /// detached: fire-and-forget work (a model stream's producer, a tool
    /// call, a refresh, a connection). A panic is logged by the plugin's
    /// panic hook; after [`PluginRuntime::shutdown`] the future is dropped
    /// unstarted, and shutdown drops it wherever it waits.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.start(fut);
    }

    /// Spawn `fut` — on the host's runtime, counted and stoppable, in the
    /// plugin's panic scope; answers false (dropping it) once shut down.
    fn start<F>(&self, fut: F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match &self.tasks {
            None => {
                drop(self.handle.spawn(fut));
                true
            }
            Some(tasks) => Live::start(tasks)
                .map(|live| drop(self.handle.spawn(crate::scope::Scoped::inside(live.watch(fut)))))
                .is_some(),
        }
    }

    /// Spawn `fut` on the plugin's runtime and return a future, safe to poll
    /// from any runtime (or none), that resolves to its output. A panic in
    /// `fut` becomes an error with code `panic`; a runtime shut down before
    /// or during `fut`, one with code `unavailable`.
    pub fn run<T, F>(&self, fut: F) -> impl Future<Output = Result<T, Error>> + Send + 'static
    where
        T: Send + 'static,
        F: Future<Output = Result<T, Error>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let name = Arc::clone(&self.name);
        let send = async move {
            // A panic is answered here, so a sender dropped unanswered
            // means one thing: the task was stopped. (The plugin's panic
            // hook has logged the panic already.)
            let out = match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(out) => out,
                Err(_) => Err(Error::new(codes::PANIC, format!("a task on the `{name}` runtime panicked"))),
            };
            let _ = tx.send(out);
        };
        let started = self.start(send);
        let name = Arc::clone(&self.name);
        async move {
            let shut = || Error::new(codes::UNAVAILABLE, format!("the `{name}` runtime is shut down"));
            if !started {
                return Err(shut());
            }
            // Dropped unanswered: stopped by a shutdown (see above).
            rx.await.unwrap_or_else(|_| Err(shut()))
        }
    }
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Dropping a runtime inside another runtime's context panics;
            // background shutdown never blocks.
            rt.shutdown_background();
        }
        if let Some(tasks) = &self.runner.tasks {
            // Drop may run anywhere, a runtime worker included: stop the
            // tasks but do not wait for them here.
            tasks.close();
        }
    }
}

/// A plugin's tasks on the host's runtime: how many are alive, and the
/// signal that stops them.
#[derive(Debug, Default)]
struct Tasks {
    closed: AtomicBool,
    /// Fired once, by [`Tasks::close`]; every live task waits on it.
    stop: Notify,
    live: Mutex<usize>,
    idle: Condvar,
}

impl Tasks {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn close(&self) {
        {
            // Under the lock: a spawn either sees `closed`, or counted its
            // task before this and will see the stop signal.
            let _live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
            self.closed.store(true, Ordering::Release);
        }
        self.stop.notify_waiters();
    }

    /// Wait until every task has been dropped, or `timeout` has passed.
    fn wait_idle(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        while *live > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(tasks = *live, "tasks still running after the shutdown timeout; leaving them");
                return;
            }
            live = self.idle.wait_timeout(live, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }
}

/// One counted task; uncounts it when dropped (finished, stopped or
/// panicked alike).
struct Live(Arc<Tasks>);

impl Live {
    /// Count a new task, unless the runtime is shut down.
    fn start(tasks: &Arc<Tasks>) -> Option<Live> {
        let mut live = tasks.live.lock().unwrap_or_else(PoisonError::into_inner);
        if tasks.is_closed() {
            return None;
        }
        *live += 1;
        Some(Live(Arc::clone(tasks)))
    }

    /// `fut`, ended early when the runtime shuts down.
    async fn watch<F: Future<Output = ()>>(self, fut: F) {
        let stop = self.0.stop.notified();
        let mut stop = std::pin::pin!(stop);
        // Registered before the check: a `close` after it wakes us.
        stop.as_mut().enable();
        if self.0.is_closed() {
            return;
        }
        tokio::select! {
            biased;
            () = fut => {}
            () = stop => {}
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let mut live = self.0.live.lock().unwrap_or_else(PoisonError::into_inner);
        *live -= 1;
        if *live == 0 {
            self.0.idle.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host runtime of `workers` threads, and a plugin runtime made on
    /// one of its blocking threads, as the host activates plugins.
    fn activated(workers: usize) -> (tokio::runtime::Runtime, PluginRuntime) {
        let host =
            tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().unwrap();
        let rt = host
            .block_on(async { tokio::task::spawn_blocking(|| PluginRuntime::new("p", 1)).await })
            .unwrap()
            .unwrap();
        (host, rt)
    }

    #[test]
    fn a_plugin_activated_on_a_host_thread_shares_the_hosts_runtime() {
        let (_host, shared) = activated(1);
        assert!(shared.is_shared());
        let own = PluginRuntime::new("p", 1).unwrap();
        assert!(!own.is_shared(), "no runtime is current here");
    }

    #[test]
    fn shutdown_stops_the_tasks_of_a_shared_runtime_and_refuses_new_ones() {
        let (host, mut rt) = activated(2);
        let runner = rt.runner();
        // A task that never ends on its own, holding a value whose drop we observe.
        let (dropped_tx, dropped_rx) = std::sync::mpsc::channel::<()>();
        struct OnDrop(std::sync::mpsc::Sender<()>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                // A slow clean-up: shutdown must wait for it.
                std::thread::sleep(Duration::from_millis(200));
                let _ = self.0.send(());
            }
        }
        let guard = OnDrop(dropped_tx);
        runner.spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        let pending = runner.run(async { std::future::pending::<Result<(), Error>>().await });
        let answered = runner.run(async { Ok(7) });
        assert_eq!(host.block_on(answered).unwrap(), 7);

        // From a blocking thread, as the host deactivates: shutdown returns
        // only once the task is gone.
        let rt = host.block_on(async move {
            tokio::task::spawn_blocking(move || {
                rt.shutdown(Duration::from_secs(30));
                rt
            })
            .await
        });
        let _rt = rt.unwrap();
        dropped_rx.try_recv().expect("shutdown returned before the endless task was dropped");
        assert_eq!(host.block_on(pending).unwrap_err().code(), codes::UNAVAILABLE);
        assert_eq!(host.block_on(runner.run(async { Ok(1) })).unwrap_err().code(), codes::UNAVAILABLE);
        // The host's runtime itself is untouched.
        assert_eq!(host.block_on(async { tokio::spawn(async { 3 }).await }).unwrap(), 3);
    }

    /// A panic is `panic` and a stop is `unavailable`, on an own runtime
    /// as on the host's, whichever thread notices first.
    #[test]
    fn run_tells_a_panic_from_a_shutdown_on_an_own_runtime() {
        let mut own = PluginRuntime::new("p", 1).unwrap();
        use futures::executor::block_on as poller;
        let failed = own.run(async { panic!("boom") as Result<(), Error> });
        assert_eq!(poller(failed).unwrap_err().code(), codes::PANIC);
        let pending = own.run(async { std::future::pending::<Result<(), Error>>().await });
        own.shutdown(Duration::from_secs(5));
        assert_eq!(poller(pending).unwrap_err().code(), codes::UNAVAILABLE);
        assert_eq!(poller(own.run(async { Ok(1) })).unwrap_err().code(), codes::UNAVAILABLE);
    }

    #[test]
    fn a_panicking_task_on_a_shared_runtime_is_a_panic_error_and_uncounted() {
        let (host, mut rt) = activated(1);
        let failed = rt.run(async { panic!("boom") as Result<(), Error> });
        assert_eq!(host.block_on(failed).unwrap_err().code(), codes::PANIC);
        let tasks = Arc::clone(rt.runner.tasks.as_ref().unwrap());
        tasks.wait_idle(Duration::from_secs(30));
        assert_eq!(*tasks.live.lock().unwrap(), 0, "the panicked task is no longer counted");
        rt.shutdown(Duration::from_secs(5));
    }
}
