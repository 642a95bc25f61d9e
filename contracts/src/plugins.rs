//! The host's own contracts, provided by the host under the plugin id
//! `dispatch`. Types in [`dispatch_protocol::plugins`], re-exported here.
//!
//! ```no_run
//! # fn f(host: &dispatch_abi::Host) -> Result<(), dispatch_abi::Error> {
//! use dispatch_contracts::plugins::{PLUGINS, PLUGIN_STATE, PluginReport};
//! let list = host.call_blocking(&PLUGINS, &serde_json::json!({}))?;
//! tracing::info!(count = list.plugins.len(), "plugins configured");
//! host.subscribe_sync(&PLUGIN_STATE, |report: PluginReport| {
//!     tracing::info!(plugin = %report.id, state = report.state.as_str(), "state changed");
//!     Ok(())
//! })?;
//! # Ok(()) }
//! ```

use dispatch_abi::{Event, Service};
pub use dispatch_protocol::plugins::*;
use serde_json::Value;

/// Every configured plugin (any request; send `{}`).
pub const PLUGINS: Service<Value, PluginList> = Service::new("dispatch.plugins", 1);
/// One plugin changed state.
pub const PLUGIN_STATE: Event<PluginReport> = Event::new("dispatch.plugin-state", 1);
/// Re-read the configuration and the drop-in directory and apply the
/// difference to the running plugins (any request; send `{}`). Provided by
/// `dispatch serve` only.
pub const RELOAD: Service<Value, ReloadReport> = Service::new("dispatch.reload", 1);
/// A reload of the plugin set finished (whether asked over the bus, by
/// SIGHUP or by the admin route): what it did.
pub const RELOADED: Event<ReloadReport> = Event::new("dispatch.reloaded", 1);
/// The plugin id the host provides these under.
pub const HOST_ID: &str = "dispatch";
