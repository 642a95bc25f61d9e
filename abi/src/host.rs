//! The safe, typed face of [`HostApi`](crate::ffi::HostApi) for plugin code.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RStr, RVec};
use async_ffi::{FfiFuture, FutureExt as _};
use futures::FutureExt as _;
use serde::{de::DeserializeOwned, Serialize};

use crate::error::{codes, Error};
use crate::ffi::{
    AbiError, BytesFuture, EventHandler, EventHandler_TO, HookHandler, HookHandler_TO, HookKind, HookOutcome,
    HookReply, HookSpec, HostApiBox, ServiceHandler, ServiceHandler_TO,
};
use crate::keys::{Event, Hook, Service};

/// The host, as a plugin sees it. Cheap to clone; clones share the handle.
///
/// Everything registered through it is attributed to the plugin that
/// received it in [`crate::Plugin::activate`].
#[derive(Clone)]
pub struct Host {
    api: HostApiBox,
}

/// A guard's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let the value through.
    Allow,
    /// Refuse it, with a reason for the caller.
    Veto(String),
}

/// The result of running a hook chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookResult<T> {
    /// Every handler let the value through; the (transformed) value.
    Continue(T),
    /// A guard refused the value.
    Vetoed {
        /// The plugin whose guard vetoed.
        plugin: String,
        /// Its reason.
        reason: String,
    },
}

/// What a payload is, for error messages. Rendered only on error: the
/// success path of a call must not allocate a message it never shows.
#[derive(Clone, Copy)]
enum What<'a> {
    Request(&'a str),
    Response(&'a str),
    Event(&'a str),
    Hook(&'a str),
}

impl std::fmt::Display for What<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            What::Request(n) => write!(f, "request for service `{n}`"),
            What::Response(n) => write!(f, "response of service `{n}`"),
            What::Event(n) => write!(f, "payload of event `{n}`"),
            What::Hook(n) => write!(f, "value of hook `{n}`"),
        }
    }
}

/// Serialize a value for the bus.
fn encode<T: Serialize>(what: What, value: &T) -> Result<RVec<u8>, Error> {
    serde_json::to_vec(value)
        .map(RVec::from)
        .map_err(|e| Error::new(codes::INVALID_PAYLOAD, format!("cannot encode {what}: {e}")))
}

/// Parse a value from the bus, naming what it was in the error.
fn decode<T: DeserializeOwned>(what: What, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::new(codes::INVALID_PAYLOAD, format!("invalid {what}: {e}")))
}

/// Run `fut` to completion, turning a panic into an [`Error`] with code
/// `panic`, and hand it across the boundary. Every future this crate gives
/// the host goes through here, so no panic ever unwinds into the host.
pub(crate) fn contain<T, F>(fut: F) -> FfiFuture<RResult<T, AbiError>>
where
    F: Future<Output = Result<T, Error>> + Send + 'static,
    T: 'static,
{
    async move {
        match AssertUnwindSafe(crate::scope::Scoped::inside(fut)).catch_unwind().await {
            Ok(Ok(v)) => RResult::ROk(v),
            Ok(Err(e)) => RResult::RErr(e.into()),
            Err(panic) => RResult::RErr(Error::from_panic(panic).into()),
        }
    }
    .into_ffi()
}

/// Call `make` (which builds a future) with panics contained, both while
/// building and while polling.
fn contain_call<T, F, Fut>(make: F) -> FfiFuture<RResult<T, AbiError>>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, Error>> + Send + 'static,
    T: Send + 'static,
{
    let made = {
        let _scope = crate::scope::enter();
        catch_unwind(AssertUnwindSafe(make))
    };
    match made {
        Ok(fut) => contain(fut),
        Err(panic) => {
            let err: AbiError = Error::from_panic(panic).into();
            async move { RResult::RErr(err) }.into_ffi()
        }
    }
}

struct ServiceFn<F>(F);
impl<F> ServiceHandler for ServiceFn<F>
where
    F: Fn(RVec<u8>) -> BytesFuture + Send + Sync,
{
    fn call(&self, request: RVec<u8>) -> BytesFuture {
        (self.0)(request)
    }
}

struct EventFn<F>(F);
impl<F> EventHandler for EventFn<F>
where
    F: Fn(RVec<u8>) -> FfiFuture<RResult<(), AbiError>> + Send + Sync,
{
    fn on_event(&self, payload: RVec<u8>) -> FfiFuture<RResult<(), AbiError>> {
        (self.0)(payload)
    }
}

struct HookFn<F>(F);
impl<F> HookHandler for HookFn<F>
where
    F: Fn(RVec<u8>) -> FfiFuture<RResult<HookReply, AbiError>> + Send + Sync,
{
    fn handle(&self, value: RVec<u8>) -> FfiFuture<RResult<HookReply, AbiError>> {
        (self.0)(value)
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("plugin_id", &self.plugin_id()).finish_non_exhaustive()
    }
}

impl Host {
    /// Wrap the raw handle the host passed to `activate`.
    pub fn from_abi(api: HostApiBox) -> Self {
        Self { api }
    }

    /// The raw handle, for the rare plugin that needs the FFI layer.
    pub fn abi(&self) -> &HostApiBox {
        &self.api
    }

    /// This plugin's id.
    pub fn plugin_id(&self) -> String {
        self.api.plugin_id().into_string()
    }

    /// Where this plugin may keep files. The host creates it on first use.
    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(self.api.data_dir().into_string())
    }

    /// Become the provider of `key`, answering with an async function.
    ///
    /// The returned future is polled by the *host's* runtime: if it needs
    /// tokio (timers, sockets), run it on the plugin's own runtime with
    /// [`crate::runtime::PluginRuntime::run`].
    pub fn provide<Req, Resp, F, Fut>(&self, key: &Service<Req, Resp>, handler: F) -> Result<(), Error>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + 'static,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Error>> + Send + 'static,
    {
        let name: Arc<str> = key.name().into();
        let wrapped = move |request: RVec<u8>| -> BytesFuture {
            contain_call(|| {
                let parsed = decode::<Req>(What::Request(&name), &request);
                let fut = parsed.map(&handler);
                let name = Arc::clone(&name);
                async move {
                    let resp = fut?.await?;
                    encode(What::Response(&name), &resp)
                }
            })
        };
        let obj = ServiceHandler_TO::from_value(ServiceFn(wrapped), TD_Opaque);
        self.api
            .provide_service(RStr::from(key.name()), key.version(), obj)
            .into_result()
            .map_err(Error::from)
    }

    /// Become the provider of `key`, answering synchronously. The cheapest
    /// kind of service: no thread hop, the answer is ready on first poll.
    pub fn provide_sync<Req, Resp, F>(&self, key: &Service<Req, Resp>, handler: F) -> Result<(), Error>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req) -> Result<Resp, Error> + Send + Sync + 'static,
    {
        self.provide(key, move |req| std::future::ready(handler(req)))
    }

    /// Check that `key` is provided at the right schema version; answers the
    /// provider's plugin id. Call it in `activate` to fail early and clearly.
    pub fn require<Req, Resp>(&self, key: &Service<Req, Resp>) -> Result<String, Error> {
        self.api
            .lookup_service(RStr::from(key.name()), key.version())
            .into_result()
            .map(|s| s.into_string())
            .map_err(Error::from)
    }

    /// Call the service `key`. The future is runtime-agnostic.
    pub fn call<Req, Resp>(
        &self,
        key: &Service<Req, Resp>,
        request: &Req,
    ) -> impl Future<Output = Result<Resp, Error>> + Send + 'static
    where
        Req: Serialize,
        Resp: DeserializeOwned + 'static,
    {
        let name = key.name();
        let fut = encode(What::Request(name), request).map(|bytes| {
            // The host may run the provider's handler right here.
            let _scope = crate::scope::leave();
            self.api.call_service(RStr::from(name), key.version(), bytes)
        });
        // Only an error message needs the name past this point.
        let name = key.name_cow();
        async move {
            let bytes = crate::scope::Scoped::outside(fut?).await.into_result()?;
            decode(What::Response(&name), &bytes)
        }
    }

    /// Call the service `key` and wait for the answer on this thread.
    ///
    /// For synchronous code such as `activate` (which the host runs on a
    /// blocking thread). Never call it from inside a future.
    pub fn call_blocking<Req, Resp>(&self, key: &Service<Req, Resp>, request: &Req) -> Result<Resp, Error>
    where
        Req: Serialize,
        Resp: DeserializeOwned + 'static,
    {
        futures::executor::block_on(self.call(key, request))
    }

    /// Subscribe to `key` with an async handler. Events reach each
    /// subscriber in publication order; a failing handler is logged by the
    /// host and the next event is delivered as usual.
    pub fn subscribe<T, F, Fut>(&self, key: &Event<T>, handler: F) -> Result<(), Error>
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let name: Arc<str> = key.name().into();
        let wrapped = move |payload: RVec<u8>| {
            contain_call(|| {
                let fut = decode::<T>(What::Event(&name), &payload).map(&handler);
                async move { fut?.await }
            })
        };
        let obj = EventHandler_TO::from_value(EventFn(wrapped), TD_Opaque);
        self.api.subscribe(RStr::from(key.name()), key.version(), obj).into_result().map_err(Error::from)
    }

    /// Subscribe to `key` with a synchronous handler.
    pub fn subscribe_sync<T, F>(&self, key: &Event<T>, handler: F) -> Result<(), Error>
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(T) -> Result<(), Error> + Send + Sync + 'static,
    {
        self.subscribe(key, move |v| std::future::ready(handler(v)))
    }

    /// Publish an event. Returns once it is queued for every subscriber.
    pub fn publish<T: Serialize>(&self, key: &Event<T>, value: &T) -> Result<(), Error> {
        let bytes = encode(What::Event(key.name()), value)?;
        let _scope = crate::scope::leave();
        self.api.publish(RStr::from(key.name()), key.version(), bytes).into_result().map_err(Error::from)
    }

    /// Add a filter to the chain `key`: it receives the value and returns
    /// the value for the next handler. Lower `priority` runs first.
    pub fn add_filter<T, F, Fut>(&self, key: &Hook<T>, priority: i32, filter: F) -> Result<(), Error>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, Error>> + Send + 'static,
    {
        let name: Arc<str> = key.name().into();
        let wrapped = move |value: RVec<u8>| {
            contain_call(|| {
                let fut = decode::<T>(What::Hook(&name), &value).map(&filter);
                let name = Arc::clone(&name);
                async move {
                    let out = fut?.await?;
                    encode(What::Hook(&name), &out).map(HookReply::Continue)
                }
            })
        };
        self.register_hook(key, priority, HookKind::Filter, wrapped)
    }

    /// Add a guard to the chain `key`: it may veto the value. Lower
    /// `priority` runs first.
    pub fn add_guard<T, F, Fut>(&self, key: &Hook<T>, priority: i32, guard: F) -> Result<(), Error>
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Verdict, Error>> + Send + 'static,
    {
        let name: Arc<str> = key.name().into();
        let wrapped = move |value: RVec<u8>| {
            contain_call(|| {
                let fut = decode::<T>(What::Hook(&name), &value).map(&guard);
                async move {
                    Ok(match fut?.await? {
                        // The chain keeps the value it already has; no need
                        // to send it back.
                        Verdict::Allow => HookReply::Continue(RVec::new()),
                        Verdict::Veto(reason) => HookReply::Veto(reason.into()),
                    })
                }
            })
        };
        self.register_hook(key, priority, HookKind::Guard, wrapped)
    }

    fn register_hook<T, F>(&self, key: &Hook<T>, priority: i32, kind: HookKind, f: F) -> Result<(), Error>
    where
        F: Fn(RVec<u8>) -> FfiFuture<RResult<HookReply, AbiError>> + Send + Sync + 'static,
    {
        let obj = HookHandler_TO::from_value(HookFn(f), TD_Opaque);
        self.api
            .register_hook(RStr::from(key.name()), key.version(), HookSpec { priority, kind }, obj)
            .into_result()
            .map_err(Error::from)
    }

    /// Run the chain `key` over `value`.
    pub fn run_hook<T>(
        &self,
        key: &Hook<T>,
        value: &T,
    ) -> impl Future<Output = Result<HookResult<T>, Error>> + Send + 'static
    where
        T: Serialize + DeserializeOwned + 'static,
    {
        let name = key.name();
        let fut = encode(What::Hook(name), value).map(|bytes| {
            let _scope = crate::scope::leave();
            self.api.run_hook(RStr::from(name), key.version(), key.policy(), bytes)
        });
        let name = key.name_cow();
        async move {
            match fut.map(crate::scope::Scoped::outside)?.await.into_result()? {
                HookOutcome::Continue(bytes) => decode(What::Hook(&name), &bytes).map(HookResult::Continue),
                HookOutcome::Vetoed { plugin, reason } => {
                    Ok(HookResult::Vetoed { plugin: plugin.into_string(), reason: reason.into_string() })
                }
            }
        }
    }

    /// Resolves when the host begins shutting down: stop accepting work.
    pub fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        self.api.shutdown_signal()
    }
}
