//! # dispatch-testkit — test a plugin without building a `.so`
//!
//! [`TestHost`] activates plugins from their `rlib` against the same bus
//! the `dispatch` binary runs ([`dispatch_bus`]), through the same
//! panic-containing entry points `export_plugin!` generates. Your plugin's
//! own unit tests then call its services, publish and receive events and
//! run hooks through [`TestHost::host`], a client handle on that bus.
//!
//! ```
//! use dispatch_abi::{Context, Error, Plugin, PluginManifest, Service};
//! use dispatch_testkit::TestHost;
//!
//! const ECHO: Service<String, String> = Service::new("echo", 1);
//!
//! struct Echo;
//! impl Plugin for Echo {
//!     fn manifest() -> PluginManifest {
//!         PluginManifest::new("echo", "0.1.0").provides("service", ECHO.name())
//!     }
//!     fn activate(ctx: Context) -> Result<Self, Error> {
//!         ctx.host().provide_sync(&ECHO, |s: String| Ok(s))?;
//!         Ok(Echo)
//!     }
//! }
//!
//! let mut host = TestHost::new();
//! host.activate::<Echo>(serde_json::json!({})).unwrap();
//! assert_eq!(host.call(&ECHO, &"hi".to_owned()).unwrap(), "hi");
//! ```
//!
//! What differs from the real host: plugins share the test's `tracing`
//! dispatcher and panic hook (their records are printed to stderr, from the
//! first host activated in the process), and the test binary's tokio is
//! the plugins' tokio. Everything on the bus is the same.

#![warn(missing_docs, missing_debug_implementations)]

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use abi_stable::std_types::{RResult, RString};
use dispatch_abi::ffi::{LogLevel, PluginInstanceBox};
use dispatch_abi::{codes, Error, Host, Plugin, Service};
use dispatch_bus::hostapi::{HostBus, PluginHost, Shared};
use tokio::sync::watch;

/// The plugin id the test's own handle ([`TestHost::host`]) acts as.
pub const CLIENT_ID: &str = "test";

/// One log record a plugin sent: `LEVEL plugin=<id> <target>: <message>`.
type Records = Arc<std::sync::Mutex<Vec<String>>>;

/// An in-process host. Dropping it deactivates every plugin, newest first.
pub struct TestHost {
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    records: Records,
    shutdown: watch::Sender<bool>,
    active: Vec<(String, PluginInstanceBox)>,
    /// The services the active plugins declared (a dependency may name one).
    declared: Vec<String>,
    client: Host,
    data: tempfile::TempDir,
}

impl std::fmt::Debug for TestHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let active: Vec<&str> = self.active.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("TestHost").field("active", &active).field("data_dir", &self.data.path()).finish()
    }
}

fn format_record(plugin: &str, level: LogLevel, module: &str, message: &str) -> String {
    let level = match level {
        LogLevel::Error => "ERROR",
        LogLevel::Warn => "WARN",
        LogLevel::Info => "INFO",
        LogLevel::Debug => "DEBUG",
        LogLevel::Trace => "TRACE",
    };
    format!("{level} plugin={plugin} {module}: {message}")
}

impl Default for TestHost {
    fn default() -> Self {
        Self::new()
    }
}

impl TestHost {
    /// An empty host with its own event-delivery runtime and a temporary
    /// data directory (removed on drop).
    ///
    /// # Panics
    ///
    /// When the OS refuses a thread or a temporary directory: a test
    /// cannot run without them.
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("testkit-bus")
            .enable_all()
            .build()
            .expect("cannot start the test host's runtime");
        let data = tempfile::tempdir().expect("cannot create the test host's data directory");
        let handle = runtime.handle().clone();
        let bus = HostBus::new(Arc::new(move |fut| {
            handle.spawn(fut);
        }));
        let (shutdown, shutdown_rx) = watch::channel(false);
        // The plugin's rlib shares the test binary's std: its panic hook
        // must not claim the test's own failed assertions.
        dispatch_abi::std_shared_with_caller();
        let records: Records = Arc::default();
        let sink = Arc::clone(&records);
        let shared = Arc::new(Shared {
            bus,
            log: Arc::new(move |plugin: &str, level: LogLevel, module: &str, message: &str| {
                let line = format_record(plugin, level, module, message);
                eprintln!("{line}");
                sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(line);
            }),
            log_filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            data_root: data.path().to_path_buf(),
            shutdown: shutdown_rx,
        });
        let client = Host::from_abi(PluginHost::for_plugin(CLIENT_ID, &shared));
        TestHost {
            runtime,
            shared,
            records,
            shutdown,
            active: Vec::new(),
            declared: Vec::new(),
            client,
            data,
        }
    }

    /// The log records plugins have sent so far, each as
    /// `LEVEL plugin=<id> <target>: <message>` (also printed to stderr). A
    /// plugin's panic is an `ERROR` record with target `panic`.
    pub fn logged(&self) -> Vec<String> {
        self.records.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Activate `P` with `config` as its `[plugin.config]` (`null` or `{}`
    /// for none), exactly as the host would: its dependencies must be
    /// active already; an error or a panic in `activate` is returned as an
    /// [`Error`] and whatever it registered is removed; a manifest whose
    /// declared services differ from what the plugin provides is an error
    /// too (the host only warns — in a test, fail).
    pub fn activate<P: Plugin>(&mut self, config: serde_json::Value) -> Result<(), Error> {
        let manifest = P::manifest().to_abi();
        let id = manifest.id.to_string();
        for dep in manifest.depends_on.iter() {
            // A plugin id, or a service an active plugin declared (as the
            // host resolves `depends_on`).
            if !self.active.iter().any(|(a, _)| a == dep.as_str())
                && !self.declared.iter().any(|d| d == dep.as_str())
            {
                return Err(Error::new(
                    codes::NOT_FOUND,
                    format!("plugin `{id}` depends on `{dep}`, which is not active in this test host"),
                ));
            }
        }
        let config = if config.is_null() { String::new() } else { config.to_string() };
        let api = PluginHost::for_plugin(&id, &self.shared);
        // As the host does: activation runs where the host's runtime is
        // current, so a plugin sharing this tokio runs its tasks here.
        let _context = self.runtime.enter();
        match dispatch_abi::plugin::activate_entry::<P>(api, RString::from(config)) {
            RResult::ROk(instance) => {
                self.active.push((id.clone(), instance));
                let declared: Vec<&str> = manifest
                    .provides
                    .iter()
                    .filter(|c| c.kind.as_str() == "service")
                    .map(|c| c.name.as_str())
                    .collect();
                self.declared.extend(declared.iter().map(|d| (*d).to_owned()));
                match self.shared.bus.service_drift(&id, &declared) {
                    None => Ok(()),
                    Some(drift) => Err(Error::new(codes::INVALID_CONFIG, drift)),
                }
            }
            RResult::RErr(e) => {
                self.shared.bus.remove_plugin(&id);
                Err(e.into())
            }
        }
    }

    /// A handle on the bus for the test itself (plugin id [`CLIENT_ID`]):
    /// call services, publish, subscribe, run hooks.
    pub fn host(&self) -> &Host {
        &self.client
    }

    /// Call `key` and wait for the answer.
    pub fn call<Req, Resp>(&self, key: &Service<Req, Resp>, request: &Req) -> Result<Resp, Error>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned + 'static,
    {
        self.block_on(self.client.call(key, request))
    }

    /// Run a future to completion on this thread (plugin futures are
    /// runtime-agnostic, as the host polls them).
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        futures::executor::block_on(fut)
    }

    /// Wait until every published event has been delivered (or `limit`
    /// passes); answers whether the bus went idle.
    pub fn settle(&self, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while self.shared.bus.events_in_flight() > 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// The root of the plugins' data directories.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Deactivate every plugin, newest first; answers each outcome.
    pub fn deactivate_all(&mut self) -> Vec<(String, Result<(), Error>)> {
        let _ = self.shutdown.send(true);
        let mut out = Vec::new();
        while let Some((id, mut instance)) = self.active.pop() {
            let result = instance.deactivate().into_result().map_err(Error::from);
            self.shared.bus.remove_plugin(&id);
            out.push((id, result));
        }
        out
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.deactivate_all();
        // Event pumps may still hold plugin futures; stop without blocking.
        let rt = std::mem::replace(
            &mut self.runtime,
            match tokio::runtime::Builder::new_current_thread().build() {
                Ok(rt) => rt,
                Err(_) => return,
            },
        );
        rt.shutdown_background();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use dispatch_abi::{Context, Plugin, PluginManifest};

    const BOOM: Service<String, String> = Service::new("testkit-boom", 1);

    #[derive(Debug)]
    struct Boom;

    impl Plugin for Boom {
        fn manifest() -> PluginManifest {
            PluginManifest::new("boom", "0.1.0").provides("service", BOOM.name())
        }
        fn activate(ctx: Context) -> Result<Self, Error> {
            ctx.host().provide_sync(
                &BOOM,
                |s: String| if s == "panic" { panic!("the plugin's own") } else { Ok(s) },
            )?;
            Ok(Boom)
        }
    }

    /// Regression (issue 31): with the plugin's rlib linked into the test,
    /// its panic hook took the test's own failed assertion for the
    /// plugin's panic and logged it as one. Only the plugin's are its own.
    #[test]
    fn a_tests_own_failed_assertion_is_not_blamed_on_the_plugin() {
        let mut host = TestHost::new();
        host.activate::<Boom>(serde_json::Value::Null).unwrap();
        let own = std::panic::catch_unwind(|| assert_eq!(1 + 1, 3, "the test's own assertion"));
        assert!(own.is_err());
        let blamed = host.logged().into_iter().filter(|r| r.contains("the test's own assertion")).count();
        assert_eq!(blamed, 0, "{:?}", host.logged());
        // The plugin's own panic is still its own.
        let e = host.call(&BOOM, &"panic".to_owned()).unwrap_err();
        assert_eq!(e.code(), codes::PANIC);
        assert!(
            host.logged().iter().any(|r| r.contains("plugin=boom") && r.contains("the plugin's own")),
            "{:?}",
            host.logged()
        );
    }
}
