//! The host side of [`HostApi`]: what each plugin's handle does when the
//! plugin calls it. One [`PluginHost`] per plugin, all sharing one bus.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;

use crate as bus;
use crate::{Bus, BusError, ChainOutcome, EventSink, HookStep, StepReply};
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RStr, RString, RVec};
use async_ffi::{FfiFuture, FutureExt as _};
use dispatch_abi::codes;
use dispatch_abi::ffi::{
    AbiError, BytesFuture, EventHandlerBox, FailurePolicy, HookHandlerBox, HookKind, HookOutcome, HookReply,
    HookSpec, HostApi, HostApiBox, HostApi_TO, LogLevel, ServiceHandlerBox,
};

/// The bus as a host instantiates it.
pub type HostBus = Bus<ServiceHandlerBox>;

/// Where plugins' log records go: `(plugin id, level, module, message)`.
/// The `dispatch` binary re-emits them through its `tracing` subscriber.
/// (An in-process host must not: there the plugin and the host share one
/// `tracing` dispatcher, and re-emitting would loop back into the plugin's
/// forwarding layer.)
pub type LogSink = Arc<dyn Fn(&str, LogLevel, &str, &str) + Send + Sync>;

/// State shared by every plugin's handle.
pub struct Shared {
    /// The bus.
    pub bus: HostBus,
    /// Receives every plugin's log records.
    pub log: LogSink,
    /// `RUST_LOG` as the host uses it, handed to plugins.
    pub log_filter: String,
    /// Root of the plugins' data directories.
    pub data_root: PathBuf,
    /// Flips to `true` when shutdown begins.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// One plugin's handle on the host.
#[derive(Clone)]
pub struct PluginHost {
    id: RString,
    shared: Arc<Shared>,
}

impl PluginHost {
    /// The FFI object handed to the plugin `id`'s `activate`.
    pub fn for_plugin(id: &str, shared: &Arc<Shared>) -> HostApiBox {
        HostApi_TO::from_value(PluginHost { id: RString::from(id), shared: Arc::clone(shared) }, TD_Opaque)
    }
}

/// The ABI error (with its stable code) for a bus refusal.
pub fn bus_error(e: BusError) -> AbiError {
    let code = match &e {
        BusError::NotFound { .. } => codes::NOT_FOUND,
        BusError::VersionMismatch { .. } => codes::VERSION_MISMATCH,
        BusError::DuplicateProvider { .. } => codes::DUPLICATE,
        _ => codes::PLUGIN,
    };
    AbiError::new(code, e.to_string())
}

fn ready<T: Send + 'static>(v: T) -> FfiFuture<T> {
    std::future::ready(v).into_ffi()
}

/// Host code called from a plugin through an `extern "C"` function must not
/// unwind (that aborts the process); this turns a host bug into an error.
fn shield<T>(what: &str, f: impl FnOnce() -> RResult<T, AbiError>) -> RResult<T, AbiError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        RResult::RErr(AbiError::new(
            codes::PANIC,
            format!("host bug: {what} panicked: {}", dispatch_abi::error::panic_message(&*p)),
        ))
    })
}

struct FfiSink(EventHandlerBox);
impl EventSink for FfiSink {
    fn deliver(&self, payload: Arc<[u8]>) -> bus::BoxFuture<Result<(), String>> {
        let fut = self.0.on_event(RVec::from(payload.to_vec()));
        Box::pin(async move { fut.await.into_result().map_err(|e| e.to_string()) })
    }
}

struct FfiStep(HookHandlerBox);
impl HookStep for FfiStep {
    fn run(&self, value: Vec<u8>) -> bus::BoxFuture<Result<StepReply, String>> {
        let fut = self.0.handle(RVec::from(value));
        Box::pin(async move {
            match fut.await.into_result() {
                Ok(HookReply::Continue(v)) => Ok(StepReply::Continue(v.into_vec())),
                Ok(HookReply::Veto(r)) => Ok(StepReply::Veto(r.into_string())),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

impl HostApi for PluginHost {
    fn plugin_id(&self) -> RString {
        self.id.clone()
    }

    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>) {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            (self.shared.log)(self.id.as_str(), level, target.as_str(), message.as_str())
        }));
    }

    fn log_filter(&self) -> RString {
        RString::from(self.shared.log_filter.as_str())
    }

    fn data_dir(&self) -> RString {
        let dir = self.shared.data_root.join(self.id.as_str());
        // Readable by the host's user only: conversations, prompts and
        // whatever else plugins keep are the user's.
        let created = {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)
        };
        if let Err(e) = created {
            tracing::warn!(plugin = %self.id, dir = %dir.display(), error = %e, "cannot create the plugin's data directory");
        }
        RString::from(dir.to_string_lossy().into_owned())
    }

    fn provide_service(
        &self,
        name: RStr<'_>,
        version: u32,
        handler: ServiceHandlerBox,
    ) -> RResult<(), AbiError> {
        shield("provide_service", || {
            self.shared.bus.provide(&self.id, name.as_str(), version, handler).map_err(bus_error).into()
        })
    }

    fn lookup_service(&self, name: RStr<'_>, version: u32) -> RResult<RString, AbiError> {
        shield("lookup_service", || {
            self.shared.bus.provider_of(name.as_str(), version).map(RString::from).map_err(bus_error).into()
        })
    }

    fn call_service(&self, name: RStr<'_>, version: u32, request: RVec<u8>) -> BytesFuture {
        // The hot path: hand back the provider's own future, no re-boxing.
        match self.shared.bus.service(name.as_str(), version) {
            Ok(handler) => handler.call(request),
            Err(e) => ready(RResult::RErr(bus_error(e))),
        }
    }

    fn subscribe(&self, name: RStr<'_>, version: u32, handler: EventHandlerBox) -> RResult<(), AbiError> {
        shield("subscribe", || {
            self.shared
                .bus
                .subscribe(&self.id, name.as_str(), version, Arc::new(FfiSink(handler)))
                .map_err(bus_error)
                .into()
        })
    }

    fn publish(&self, name: RStr<'_>, version: u32, payload: RVec<u8>) -> RResult<(), AbiError> {
        shield("publish", || {
            self.shared
                .bus
                .publish(&self.id, name.as_str(), version, payload.into_vec())
                .map(|_| ())
                .map_err(bus_error)
                .into()
        })
    }

    fn register_hook(
        &self,
        name: RStr<'_>,
        version: u32,
        spec: HookSpec,
        handler: HookHandlerBox,
    ) -> RResult<(), AbiError> {
        shield("register_hook", || {
            let kind = match spec.kind {
                HookKind::Filter => bus::HookKind::Filter,
                HookKind::Guard => bus::HookKind::Guard,
            };
            self.shared
                .bus
                .add_hook(&self.id, name.as_str(), version, spec.priority, kind, Arc::new(FfiStep(handler)))
                .map_err(bus_error)
                .into()
        })
    }

    fn run_hook(
        &self,
        name: RStr<'_>,
        version: u32,
        policy: FailurePolicy,
        value: RVec<u8>,
    ) -> FfiFuture<RResult<HookOutcome, AbiError>> {
        let policy = match policy {
            FailurePolicy::Open => bus::FailurePolicy::Open,
            FailurePolicy::Closed => bus::FailurePolicy::Closed,
        };
        let fut = self.shared.bus.run_hook(name.as_str(), version, policy, value.into_vec());
        async move {
            match fut.await {
                Ok(ChainOutcome::Continue(v)) => RResult::ROk(HookOutcome::Continue(RVec::from(v))),
                Ok(ChainOutcome::Vetoed { plugin, reason }) => {
                    RResult::ROk(HookOutcome::Vetoed { plugin: plugin.into(), reason: reason.into() })
                }
                Err(e) => RResult::RErr(bus_error(e)),
            }
        }
        .into_ffi()
    }

    fn shutdown_signal(&self) -> FfiFuture<()> {
        let mut rx = self.shared.shutdown.clone();
        async move {
            // `watch` needs no runtime, so any executor may poll this.
            let _ = rx.wait_for(|down| *down).await;
        }
        .into_ffi()
    }
}
