//! A small tokio runtime owned by a plugin.
//!
//! Every plugin library has its own copy of tokio, and tokio's reactor and
//! timers are found through thread-locals of *that* copy. A plugin future
//! that touches tokio while the host polls it would panic with "no reactor
//! running". So a plugin that does async I/O owns a runtime, spawns its work
//! there, and hands the host a future that only waits on a runtime-agnostic
//! channel: [`PluginRuntime::run`] does exactly that.

use std::future::Future;
use std::time::Duration;

use futures::channel::oneshot;

use crate::error::{codes, Error};

/// The most worker threads a [`PluginRuntime`] may have.
pub const MAX_WORKERS: usize = 256;

/// A multi-thread tokio runtime with named worker threads.
#[derive(Debug)]
pub struct PluginRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    runner: Runner,
}

/// A cheap, cloneable handle that runs futures on a [`PluginRuntime`]; move
/// clones into service handlers.
#[derive(Clone, Debug)]
pub struct Runner {
    handle: tokio::runtime::Handle,
    name: String,
}

impl PluginRuntime {
    /// Start a runtime with `workers` threads (at least one, at most
    /// [`MAX_WORKERS`]) named after the plugin. A count from configuration
    /// above the limit is an `invalid_config` error, not an attempt to
    /// start 20 000 threads that aborts the host.
    pub fn new(name: &str, workers: usize) -> Result<Self, Error> {
        if workers > MAX_WORKERS {
            return Err(Error::new(
                codes::INVALID_CONFIG,
                format!("the `{name}` runtime cannot have {workers} worker threads (at most {MAX_WORKERS})"),
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name(format!("{name}-rt"))
            // Its workers and blocking threads run only this plugin's code.
            .on_thread_start(crate::scope::mark_thread)
            .enable_all()
            .build()
            .map_err(|e| Error::msg(format!("cannot start the `{name}` runtime: {e}")))?;
        let runner = Runner { handle: runtime.handle().clone(), name: name.to_owned() };
        Ok(Self { runtime: Some(runtime), runner })
    }

    /// The tokio handle, for building clients inside the runtime's context.
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

    /// Stop the runtime, giving running tasks up to `timeout` to finish.
    /// Later [`Runner::run`] calls answer an `unavailable` error.
    pub fn shutdown(&mut self, timeout: Duration) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(timeout);
        }
    }
}

impl Runner {
    /// Start `fut` on the plugin's runtime and let it run to its end,
    /// detached: fire-and-forget work (a model stream's producer, a tool
    /// call, a refresh). A panic is logged by the plugin's panic hook; after
    /// [`PluginRuntime::shutdown`] the future is dropped unstarted.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.handle.spawn(fut));
    }

    /// Spawn `fut` on the plugin's runtime and return a future, safe to poll
    /// from any runtime (or none), that resolves to its output. A panic in
    /// `fut` becomes an error with code `panic`.
    pub fn run<T, F>(&self, fut: F) -> impl Future<Output = Result<T, Error>> + Send + 'static
    where
        T: Send + 'static,
        F: Future<Output = Result<T, Error>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let task = self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        let name = self.name.clone();
        async move {
            match rx.await {
                Ok(out) => out,
                // The sender was dropped without sending: the task panicked
                // (the panic hook logged it), or the runtime is shut down.
                Err(_) if task.is_finished() => Err(Error::new(
                    codes::PANIC,
                    format!("a task on the `{name}` runtime panicked or was cancelled"),
                )),
                Err(_) => Err(Error::new(codes::UNAVAILABLE, format!("the `{name}` runtime is shut down"))),
            }
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
    }
}
