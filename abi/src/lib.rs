//! # dispatch-abi — write a Dispatch plugin
//!
//! This is the only crate a Dispatch plugin depends on. A plugin is a
//! `cdylib` that implements [`Plugin`] and exports it with
//! [`export_plugin!`]; the `dispatch` host loads the `.so`, checks that it
//! was built against a compatible ABI, activates it after the plugins it
//! depends on, and connects it to the others through a typed bus:
//!
//! * **services** ([`Service`]) — request/response, exactly one provider;
//! * **events** ([`Event`]) — fire-and-forget, any number of subscribers,
//!   each isolated from the others;
//! * **hooks** ([`Hook`]) — ordered chains of filters (transform a value)
//!   and guards (may veto it).
//!
//! Payloads are JSON (via serde). Each key carries a name and a schema
//! version, so two plugins built against different versions of a contract
//! get a clear `version_mismatch` error instead of a misread value.
//!
//! ```
//! use dispatch_abi::{Context, Error, Event, Plugin, PluginManifest, Service};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! pub struct Greet { pub name: String }
//!
//! pub const GREET: Service<Greet, String> = Service::new("greeter.greet", 1);
//! pub const GREETED: Event<String> = Event::new("greeter.greeted", 1);
//!
//! pub struct Greeter;
//!
//! impl Plugin for Greeter {
//!     fn manifest() -> PluginManifest {
//!         PluginManifest::new("greeter", "0.1.0")
//!             .description("Says hello")
//!             .provides("service", GREET.name())
//!     }
//!     fn activate(ctx: Context) -> Result<Self, Error> {
//!         let host = ctx.host().clone();
//!         ctx.host().provide_sync(&GREET, move |req: Greet| {
//!             tracing::info!(name = %req.name, "greeting");
//!             host.publish(&GREETED, &req.name)?;
//!             Ok(format!("hello, {}", req.name))
//!         })?;
//!         Ok(Greeter)
//!     }
//! }
//!
//! // In the crate root of your cdylib:
//! dispatch_abi::export_plugin!(Greeter);
//! ```
//!
//! ## Rules that keep the host alive
//!
//! * Every entry point and every future this crate hands the host is wrapped
//!   so that a panic becomes an [`Error`] with code `panic`; write plain Rust
//!   and let the crate do it.
//! * Futures you return are polled by the **host's** runtime. If they need
//!   tokio (timers, sockets), spawn them on a [`runtime::PluginRuntime`]
//!   with [`runtime::PluginRuntime::run`] (your own runtime, or the host's
//!   when your plugin shares the host's tokio).
//! * Log with `tracing`; records reach the host's log tagged with your id
//!   and filtered by the host's `RUST_LOG`.
//! * Do not set a `#[global_allocator]`, and never pass std or tokio types
//!   through [`ffi`] yourself.

#![warn(missing_docs, missing_debug_implementations)]

pub mod error;
pub mod ffi;
mod host;
pub mod keys;
mod logging;
#[doc(hidden)]
pub mod plugin;
#[cfg(feature = "runtime")]
pub mod runtime;
mod scope;

pub use error::{codes, to_json, Error};
pub use ffi::{FailurePolicy, ABI_VERSION};
pub use host::{HookResult, Host, Verdict};
pub use keys::{Event, Hook, Service};
#[doc(hidden)]
pub use logging::{log_targets, redact_in_logs, std_shared_with_caller};
pub use plugin::{Context, Plugin, PluginManifest};

/// Re-exports the export macro needs; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use abi_stable;
    pub use abi_stable::std_types::RString;
    /// What the manifest entry point returns.
    pub type ManifestResult = abi_stable::std_types::RResult<crate::ffi::Manifest, crate::ffi::AbiError>;
    /// What the activate entry point returns.
    pub type ActivateResult =
        abi_stable::std_types::RResult<crate::ffi::PluginInstanceBox, crate::ffi::AbiError>;
}

#[cfg(test)]
mod tests {
    #[test]
    fn export_macro_uses_abi_stables_root_module_symbol() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader",
            "update the export_name in export_plugin! to match abi_stable"
        );
    }
}
