//! The host's log output.

use tracing_subscriber::EnvFilter;

/// The filter the host logs with and hands to plugins: `RUST_LOG`, or
/// `info` when unset.
pub fn filter_string() -> String {
    std::env::var("RUST_LOG").ok().filter(|s| !s.trim().is_empty()).unwrap_or_else(|| "info".to_owned())
}

/// Install the stderr subscriber. Records forwarded from plugins (target
/// `plugin`) are always let through here: each plugin already applied the
/// same filter to its own targets, and our filter cannot see them.
pub fn init(filter: &str) {
    let env = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("dispatch: ignoring invalid RUST_LOG `{filter}`: {e}");
        EnvFilter::new("info")
    });
    let env = match "plugin=trace".parse() {
        Ok(directive) => env.add_directive(directive),
        Err(_) => env,
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
