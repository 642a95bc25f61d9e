//! Forwarding a plugin's `tracing` events into the host's log.
//!
//! Each plugin library carries its own copy of `tracing` and therefore its
//! own global dispatcher. On activation we install, in *that* copy, a
//! subscriber that filters with the host's `RUST_LOG` (so disabled records
//! cost nothing) and forwards each record through [`HostApi::log`], where the
//! host re-emits it tagged with the plugin's id. A panic hook forwards panic
//! messages the same way, so a contained panic still shows up in the log.
//!
//! The filter is a [`Targets`], not an `EnvFilter`: `EnvFilter` brings a
//! regex engine, and every plugin library would carry (and touch at start-up)
//! its own copy — about 60 KiB of resident code per library, for span and
//! field directives nobody sets on a plugin. `target=level` directives and
//! the default level work as in the host; span/field directives are applied
//! by the host only.

use std::fmt::Write as _;
use std::sync::OnceLock;

use abi_stable::std_types::RStr;
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{span, Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};

use crate::ffi::{HostApiBox, LogLevel};

static INSTALLED: OnceLock<HostApiBox> = OnceLock::new();

/// This library's std is shared with code that is not the plugin's: set by
/// the test host, where the plugin's rlib is linked into the test binary.
static STD_SHARED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Tell this library that its std (and so its panic hook) is shared with
/// code that is not the plugin's — the test host's case: the plugin's
/// panic hook then claims only panics raised while the plugin's code runs,
/// and a test's own failed assertion is not reported as the plugin's panic.
#[doc(hidden)]
pub fn std_shared_with_caller() {
    STD_SHARED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Values blotted out of every record this library forwards (see
/// [`redact_in_logs`]); longest first.
static REDACTED: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Blot `values` out of every log record the plugin forwards from now on,
/// its dependencies' records included — for secrets the plugin cannot
/// keep out of messages it did not write (an SDK logging the error a
/// server sent back, quoting the `Authorization` header it refused).
/// Values shorter than 4 bytes are ignored.
pub fn redact_in_logs(values: impl IntoIterator<Item = String>) {
    let mut list = REDACTED.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    for v in values {
        let v = v.trim().to_owned();
        if v.len() >= 4 && !list.contains(&v) {
            list.push(v);
        }
    }
    list.sort_by_key(|v| std::cmp::Reverse(v.len()));
}

/// `text` with every value of [`redact_in_logs`] replaced by `[redacted]`.
fn redacted(mut text: String) -> String {
    let list = REDACTED.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    for v in list.iter() {
        if text.contains(v.as_str()) {
            text = text.replace(v.as_str(), "[redacted]");
        }
    }
    text
}

/// Install the forwarding subscriber and panic hook for this library. Only
/// the first call per library has an effect (one plugin per library).
pub(crate) fn install(host: &HostApiBox) {
    if INSTALLED.set(host.clone()).is_err() {
        return;
    }
    let subscriber = Forward { host: host.clone(), filter: plugin_filter(host.log_filter().as_str()) };
    // Fails only when a dispatcher is already set — e.g. a test that links
    // the plugin's rlib into a binary with its own subscriber; keep theirs.
    let _ = tracing::subscriber::set_global_default(subscriber);

    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // With std shared (`-C prefer-dynamic`: the bundled plugins), this
        // hook is one link of a process-wide chain and sees every panic;
        // it claims those raised while this plugin's code runs on the
        // thread (`scope`) and passes the rest down the chain, which ends
        // at the host's (std's default) hook. With std private to this
        // library, every panic it sees is this plugin's.
        let shared = cfg!(dispatch_shared_std) || STD_SHARED.load(std::sync::atomic::Ordering::SeqCst);
        if shared && !crate::scope::inside() {
            previous(info);
            return;
        }
        if let Some(host) = INSTALLED.get() {
            let location =
                info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            let msg = format!("panic{location}: {}", crate::error::panic_message(info.payload()));
            host.log(LogLevel::Error, RStr::from("panic"), RStr::from(msg.as_str()));
        } else {
            previous(info);
        }
    }));
}

/// The part of an `EnvFilter` specification a [`Targets`] understands:
/// directives with a span or field selector (`[span{field=1}]=debug`) are
/// left out, the rest (`info`, `dispatch=debug`, `h2=off`) kept. A
/// specification that still does not parse falls back to `info`, as the host
/// does for an invalid `RUST_LOG`.
fn plugin_filter(spec: &str) -> Targets {
    log_targets(spec).unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO))
}

/// `RUST_LOG` read the way plugins read it (see `plugin_filter`), or why
/// it does not parse. The host filters its own records with it too, so one
/// specification means the same on both sides (and the host needs no
/// regex engine either).
#[doc(hidden)]
pub fn log_targets(spec: &str) -> Result<Targets, String> {
    let kept: Vec<&str> =
        spec.split(',').map(str::trim).filter(|d| !d.is_empty() && !d.contains(['[', '{'])).collect();
    if kept.is_empty() {
        // `Targets` reads "" as the empty target at TRACE, i.e. everything.
        return Ok(Targets::new().with_default(LevelFilter::INFO));
    }
    kept.join(",").parse().map_err(|e| format!("{e}"))
}

/// The plugin's subscriber: filters, then forwards each event to the host.
///
/// Not a `tracing_subscriber::Registry` with a layer: the registry keeps
/// span data in a slab whose shard table (4096 pointers, 32 KiB) is written
/// on creation — in every plugin library, for spans nobody reads here. Span
/// fields are not forwarded, so spans need no storage: every span gets the
/// same id and entering one does nothing.
struct Forward {
    host: HostApiBox,
    filter: Targets,
}

impl Subscriber for Forward {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        // Decided once per callsite: a disabled record costs one branch.
        if self.enabled(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        self.filter.would_enable(meta.target(), meta.level())
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        let levels = self.filter.iter().map(|(_, level)| level);
        Some(levels.chain(self.filter.default_level()).max().unwrap_or(LevelFilter::OFF))
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut render = Render::default();
        event.record(&mut render);
        render.message.push_str(&render.fields);
        let message = redacted(render.message);
        let meta = event.metadata();
        self.host.log(level_of(meta.level()), RStr::from(meta.target()), RStr::from(message.as_str()));
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

fn level_of(level: &Level) -> LogLevel {
    match *level {
        Level::ERROR => LogLevel::Error,
        Level::WARN => LogLevel::Warn,
        Level::INFO => LogLevel::Info,
        Level::DEBUG => LogLevel::Debug,
        _ => LogLevel::Trace,
    }
}

/// Renders `message` first, then `key=value` pairs, like the fmt layer does.
#[derive(Default)]
struct Render {
    message: String,
    fields: String,
}

impl Visit for Render {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={:?}", field.name(), value);
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={:?}", field.name(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::plugin_filter;

    #[test]
    fn target_directives_and_the_default_level_are_kept() {
        let f = plugin_filter("warn,dispatch_plugin_mcp=debug, h2=off");
        assert!(f.would_enable("dispatch_plugin_mcp::server", &Level::DEBUG));
        assert!(!f.would_enable("dispatch_plugin_mcp::server", &Level::TRACE));
        assert!(f.would_enable("anything", &Level::WARN));
        assert!(!f.would_enable("anything", &Level::INFO));
        assert!(!f.would_enable("h2::proto", &Level::ERROR));
    }

    #[test]
    fn span_and_field_directives_are_left_to_the_host() {
        // Kept whole, this would not parse (and fall back to `info`).
        let f = plugin_filter("warn,dispatch=debug,[request{id=7}]=trace,my_crate[span]=debug");
        assert!(f.would_enable("dispatch", &Level::DEBUG));
        assert!(!f.would_enable("x", &Level::INFO));
        assert!(!f.would_enable("my_crate", &Level::DEBUG));
    }

    #[test]
    fn a_filter_of_span_directives_only_is_info_not_everything() {
        let f = plugin_filter("[request]=debug");
        assert!(f.would_enable("x", &Level::INFO));
        assert!(!f.would_enable("x", &Level::TRACE));
        assert!(plugin_filter("").would_enable("x", &Level::INFO));
        assert!(!plugin_filter(" , ").would_enable("x", &Level::DEBUG));
    }

    #[test]
    fn a_filter_that_does_not_parse_falls_back_to_info() {
        let f = plugin_filter("dispatch=loud");
        assert!(f.would_enable("dispatch", &Level::INFO));
        assert!(!f.would_enable("dispatch", &Level::DEBUG));
    }
}
