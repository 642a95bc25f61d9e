//! The host's log output.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The filter the host logs with and hands to plugins: `RUST_LOG`, or
/// `info` when unset.
pub fn filter_string() -> String {
    std::env::var("RUST_LOG").ok().filter(|s| !s.trim().is_empty()).unwrap_or_else(|| "info".to_owned())
}

/// How log records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// One human-readable line per record (colors on a terminal).
    #[default]
    Text,
    /// One JSON object per record (`timestamp`, `level`, `fields`,
    /// `target`), for journald/log shippers.
    Json,
}

/// Install the stderr subscriber. Records forwarded from plugins (target
/// `plugin`) are always let through here: each plugin already applied the
/// same filter to its own targets, and our filter cannot see them.
///
/// The filter is a [`Targets`], read exactly as plugins read it
/// ([`dispatch_abi::log_targets`]: span and field directives are ignored),
/// not an `EnvFilter`, whose regex engine was the largest thing the host
/// touched at start-up.
pub fn init(filter: &str, format: Format) {
    let targets = dispatch_abi::log_targets(filter).unwrap_or_else(|e| {
        eprintln!("dispatch: ignoring invalid RUST_LOG `{filter}`: {e}");
        Targets::new().with_default(LevelFilter::INFO)
    });
    let targets = targets.with_target("plugin", LevelFilter::TRACE);
    let builder = tracing_subscriber::fmt().with_max_level(LevelFilter::TRACE).with_writer(std::io::stderr);
    let _ = match format {
        Format::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .finish()
            .with(targets)
            .try_init(),
        Format::Json => builder.json().with_current_span(false).finish().with(targets).try_init(),
    };
}

/// Re-emit one record a plugin forwarded, tagged with the plugin's id (the
/// host's [`dispatch_bus::hostapi::LogSink`]).
pub fn plugin_record(plugin: &str, level: dispatch_abi::ffi::LogLevel, module: &str, message: &str) {
    use dispatch_abi::ffi::LogLevel;
    let (plugin, module) = (tracing::field::display(plugin), tracing::field::display(module));
    // The plugin filtered with our filter already; `plugin` is always
    // enabled in the host's filter (see `init`).
    match level {
        LogLevel::Error => tracing::error!(target: "plugin", plugin, module, "{message}"),
        LogLevel::Warn => tracing::warn!(target: "plugin", plugin, module, "{message}"),
        LogLevel::Info => tracing::info!(target: "plugin", plugin, module, "{message}"),
        LogLevel::Debug => tracing::debug!(target: "plugin", plugin, module, "{message}"),
        LogLevel::Trace => tracing::trace!(target: "plugin", plugin, module, "{message}"),
    }
}
