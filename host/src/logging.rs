//! The host's log output.

use tracing_subscriber::EnvFilter;

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
pub fn init(filter: &str, format: Format) {
    let env = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("dispatch: ignoring invalid RUST_LOG `{filter}`: {e}");
        EnvFilter::new("info")
    });
    let env = match "plugin=trace".parse() {
        Ok(directive) => env.add_directive(directive),
        Err(_) => env,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(env).with_writer(std::io::stderr);
    let _ = match format {
        Format::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init(),
        Format::Json => builder.json().with_current_span(false).try_init(),
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
