//! The frozen binary interface between the host and a plugin library.
//!
//! Everything in this module crosses a `.so` boundary, so it is made only of
//! `abi_stable` types and is checked, field by field, by abi_stable when a
//! library is loaded. Plugin authors normally never touch it: the safe layer
//! ([`crate::Host`], [`crate::Plugin`], [`crate::export_plugin!`]) builds and
//! consumes these types for them.
//!
//! # The append-only rule
//!
//! abi_stable's prefix types let a *plugin* carry more trailing fields than the
//! host knows, never the other way round. So the prefix parts below (marked
//! `#[sabi(last_prefix_field)]`) are decided once: a field or method may only
//! ever be *appended* after the mark, and the host must treat appended ones as
//! optional. Anything that evolves faster travels as JSON payloads tagged with
//! a name and a schema version instead.

// `#[sabi_trait]` expands to impls inside a generated const block, which the
// `non_local_definitions` lint flags; the expansion is abi_stable's, not ours.
#![allow(non_local_definitions)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult, RStr, RString, RVec},
    StableAbi,
};
use async_ffi::FfiFuture;

/// The version of this binary interface. Bumped on any change that makes an
/// old plugin unusable by a new host (or the reverse); exported by every plugin
/// as the plain symbol [`ABI_VERSION_SYMBOL`] so the host can name both
/// versions in its error before abi_stable's layout check even runs.
pub const ABI_VERSION: u32 = 1;

/// The version of the `dispatch-abi` crate the host or plugin was built with.
pub const CRATE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Name of the `u32` static every plugin exports (via [`crate::export_plugin!`]).
pub const ABI_VERSION_SYMBOL: &[u8] = b"dispatch_abi_version\0";

/// An error that crosses the boundary: a stable machine-readable `code`
/// (see [`crate::codes`]) and a human-readable `message`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct AbiError {
    /// Stable code, e.g. `not_found`, `version_mismatch`, `panic`.
    pub code: RString,
    /// One human-readable sentence (or a few) saying what went wrong.
    pub message: RString,
}

/// One thing a plugin contributes, declared in its manifest so that
/// `dispatch plugins` can show it before anything is activated.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    /// What kind of thing: `service`, `event`, `hook`, `tool`, `provider`,
    /// `transport`, `surface`, … (free-form so new kinds need no ABI change).
    pub kind: RString,
    /// Its name on the bus, e.g. `surfaces` or `read_file`.
    pub name: RString,
}

/// What a plugin is, read before `activate` is ever called.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Unique id, e.g. `surfaces`. Other plugins name it in `depends_on`.
    pub id: RString,
    /// The plugin's own version (semver by convention).
    pub version: RString,
    /// The [`ABI_VERSION`] the plugin was built against.
    pub abi_version: u32,
    /// One line for operators.
    pub description: RString,
    /// Ids of plugins that must be active before this one activates.
    pub depends_on: RVec<RString>,
    /// What the plugin contributes.
    pub provides: RVec<Capability>,
}

/// Log levels forwarded from a plugin's `tracing` events to the host.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// `tracing::Level::ERROR`
    Error = 1,
    /// `tracing::Level::WARN`
    Warn = 2,
    /// `tracing::Level::INFO`
    Info = 3,
    /// `tracing::Level::DEBUG`
    Debug = 4,
    /// `tracing::Level::TRACE`
    Trace = 5,
}

/// Whether a hook handler transforms the value or may veto it.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// Transforms the value and passes it on.
    Filter = 0,
    /// Inspects the value and either lets it through unchanged or vetoes it.
    Guard = 1,
}

/// How a hook chain treats a handler that fails (errors or panics).
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Log the failure and pass the value through unchanged (the default).
    Open = 0,
    /// Stop the chain: a failing filter fails the run, a failing guard vetoes.
    Closed = 1,
}

/// What one hook handler answers.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub enum HookReply {
    /// Continue the chain with this (possibly transformed) JSON value.
    Continue(RVec<u8>),
    /// Stop the chain: the value is refused, with a reason.
    Veto(RString),
}

/// What a whole hook chain run answers.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// Every handler let the value through; this is the final JSON value.
    Continue(RVec<u8>),
    /// A guard refused the value.
    Vetoed {
        /// The id of the plugin whose guard vetoed.
        plugin: RString,
        /// Its reason.
        reason: RString,
    },
}

/// Registration details of a hook handler.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookSpec {
    /// Lower runs first; ties run in registration order.
    pub priority: i32,
    /// Filter or guard.
    pub kind: HookKind,
}

/// A future that resolves to a JSON payload or an error.
pub type BytesFuture = FfiFuture<RResult<RVec<u8>, AbiError>>;

/// The provider side of a service: answers one JSON request.
#[sabi_trait]
pub trait ServiceHandler: Send + Sync {
    /// Answer a request. Implementations must not panic (the safe layer
    /// catches panics and turns them into [`AbiError`]s with code `panic`).
    #[sabi(last_prefix_field)]
    fn call(&self, request: RVec<u8>) -> BytesFuture;
}

/// Boxed [`ServiceHandler`] as it crosses the boundary.
pub type ServiceHandlerBox = ServiceHandler_TO<'static, RBox<()>>;

/// The subscriber side of an event.
#[sabi_trait]
pub trait EventHandler: Send + Sync {
    /// Handle one event. A failure is logged by the host and does not affect
    /// other subscribers.
    #[sabi(last_prefix_field)]
    fn on_event(&self, payload: RVec<u8>) -> FfiFuture<RResult<(), AbiError>>;
}

/// Boxed [`EventHandler`] as it crosses the boundary.
pub type EventHandlerBox = EventHandler_TO<'static, RBox<()>>;

/// One handler in a hook chain.
#[sabi_trait]
pub trait HookHandler: Send + Sync {
    /// Look at (and for filters, transform) one JSON value.
    #[sabi(last_prefix_field)]
    fn handle(&self, value: RVec<u8>) -> FfiFuture<RResult<HookReply, AbiError>>;
}

/// Boxed [`HookHandler`] as it crosses the boundary.
pub type HookHandlerBox = HookHandler_TO<'static, RBox<()>>;

/// What the host offers a plugin. Each plugin receives its own instance, which
/// knows the plugin's id: everything the plugin registers or logs is
/// attributed to it without the plugin being able to claim another id.
#[sabi_trait]
pub trait HostApi: Clone + Send + Sync {
    /// The id of the plugin this instance belongs to.
    fn plugin_id(&self) -> RString;

    /// Emit a log record into the host's log, tagged with the plugin id.
    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>);

    /// The host's log filter (`RUST_LOG` syntax), so a plugin filters locally
    /// and does not pay for records the host would drop.
    fn log_filter(&self) -> RString;

    /// The directory where the plugin may keep its files (created on demand).
    fn data_dir(&self) -> RString;

    /// Become the one provider of service `name` at schema `version`.
    fn provide_service(
        &self,
        name: RStr<'_>,
        version: u32,
        handler: ServiceHandlerBox,
    ) -> RResult<(), AbiError>;

    /// Check that service `name` exists at schema `version`; answers the
    /// provider's plugin id. Used to bind once and fail early.
    fn lookup_service(&self, name: RStr<'_>, version: u32) -> RResult<RString, AbiError>;

    /// Call service `name` at schema `version` with a JSON request.
    fn call_service(&self, name: RStr<'_>, version: u32, request: RVec<u8>) -> BytesFuture;

    /// Subscribe to event `name` at schema `version`.
    fn subscribe(&self, name: RStr<'_>, version: u32, handler: EventHandlerBox) -> RResult<(), AbiError>;

    /// Publish event `name` at schema `version`. Never waits for subscribers.
    fn publish(&self, name: RStr<'_>, version: u32, payload: RVec<u8>) -> RResult<(), AbiError>;

    /// Add a handler to hook chain `name` at schema `version`.
    fn register_hook(
        &self,
        name: RStr<'_>,
        version: u32,
        spec: HookSpec,
        handler: HookHandlerBox,
    ) -> RResult<(), AbiError>;

    /// Run hook chain `name` over a JSON value. With no handlers registered
    /// the value comes back unchanged.
    fn run_hook(
        &self,
        name: RStr<'_>,
        version: u32,
        policy: FailurePolicy,
        value: RVec<u8>,
    ) -> FfiFuture<RResult<HookOutcome, AbiError>>;

    /// Resolves when the host starts shutting down.
    #[sabi(last_prefix_field)]
    fn shutdown_signal(&self) -> FfiFuture<()>;
}

/// The host handle as it crosses the boundary.
pub type HostApiBox = HostApi_TO<'static, RBox<()>>;

/// An activated plugin, as the host holds it.
#[sabi_trait]
pub trait PluginInstance: Send {
    /// Release resources (stop runtimes, flush files). Called once, in reverse
    /// activation order, with a deadline; the library stays loaded.
    #[sabi(last_prefix_field)]
    fn deactivate(&mut self) -> RResult<(), AbiError>;
}

/// An activated plugin as it crosses the boundary.
pub type PluginInstanceBox = PluginInstance_TO<'static, RBox<()>>;

/// The root module every plugin library exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
// Two function pointers; a Debug impl would add nothing, and the layout is
// frozen, so leave the derives alone.
#[allow(missing_debug_implementations)]
pub struct PluginMod {
    /// The plugin's manifest. Must be cheap and side-effect free.
    pub manifest: extern "C" fn() -> RResult<Manifest, AbiError>,

    /// Activate the plugin: register services, subscriptions and hooks on
    /// `host`; `config` is the plugin's `[plugin.config]` table as JSON.
    #[sabi(last_prefix_field)]
    pub activate: extern "C" fn(host: HostApiBox, config: RString) -> RResult<PluginInstanceBox, AbiError>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "dispatch_plugin";
    const NAME: &'static str = "dispatch_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
