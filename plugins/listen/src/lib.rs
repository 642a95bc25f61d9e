//! # dispatch-listen — the transports' listening rules, in one place
//!
//! The HTTP and WebSocket transports listen the same way: addresses from
//! config, else an environment variable, else IPv4 and IPv6 loopback on
//! their port; an access token from config or `$DISPATCH_TOKEN`; a
//! non-loopback address refused without a token unless the operator opts
//! out (with a warning); a large accept backlog; IPv6 loopback best effort.

pub mod gate;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use dispatch_abi::runtime::PluginRuntime;
use dispatch_abi::{codes, Error};

pub use gate::{Gate, Refused};

/// What one transport asks for.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    /// The plugin id, for messages.
    pub plugin: &'a str,
    /// What it serves, for the warning ("HTTP", "the WebSocket").
    pub serves: &'a str,
    /// `[plugin.config] addr`.
    pub addr: Option<Vec<String>>,
    /// The variable read when `addr` is absent (comma-separated).
    pub env_var: &'a str,
    /// The port of the loopback defaults.
    pub default_port: u16,
    /// Whether an empty list is allowed (listen nowhere of its own).
    pub allow_none: bool,
    /// `[plugin.config] token`.
    pub token: Option<String>,
    /// `[plugin.config] allow_unauthenticated`.
    pub allow_unauthenticated: bool,
}

/// The outcome: where to listen, whether those are the defaults, the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The addresses.
    pub addrs: Vec<SocketAddr>,
    /// They are the loopback defaults (IPv6 is then best effort).
    pub defaults: bool,
    /// The access token, when one is set.
    pub token: Option<String>,
}

fn config_error(message: String) -> Error {
    Error::new(codes::INVALID_CONFIG, message)
}

/// Resolve addresses and token and apply the exposure rule.
pub fn access(spec: &Spec<'_>) -> Result<Access, Error> {
    let listed: Option<Vec<String>> = spec.addr.clone().or_else(|| {
        std::env::var(spec.env_var)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
    });
    let (addrs, defaults) = match listed {
        None => (
            vec![
                SocketAddr::new(IpAddr::from([127, 0, 0, 1]), spec.default_port),
                SocketAddr::new(IpAddr::from(Ipv6Addr::LOCALHOST), spec.default_port),
            ],
            true,
        ),
        Some(list) => {
            let mut out = Vec::new();
            let mut bad = Vec::new();
            for a in list.iter().filter(|a| !a.is_empty()) {
                match a.parse::<SocketAddr>() {
                    Ok(s) => out.push(s),
                    Err(_) => bad.push(a.clone()),
                }
            }
            if !bad.is_empty() || (out.is_empty() && !spec.allow_none) {
                return Err(config_error(format!(
                    "{}: not a listen address (want IP:PORT, e.g. 127.0.0.1:{port} or [::1]:{port}): {}",
                    spec.plugin,
                    if bad.is_empty() { "none given".to_owned() } else { bad.join(", ") },
                    port = spec.default_port,
                )));
            }
            (out, false)
        }
    };
    let token = spec
        .token
        .clone()
        .or_else(|| std::env::var("DISPATCH_TOKEN").ok())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let exposed: Vec<String> =
        addrs.iter().filter(|a| !a.ip().is_loopback()).map(ToString::to_string).collect();
    if !exposed.is_empty() && token.is_none() {
        if !spec.allow_unauthenticated {
            return Err(config_error(format!(
                "{}: {} is not a loopback address; set an access token (`token` or \
                 $DISPATCH_TOKEN), or `allow_unauthenticated = true` to serve it open on purpose",
                spec.plugin,
                exposed.join(", ")
            )));
        }
        tracing::warn!(
            addresses = %exposed.join(", "),
            "serving {} WITHOUT authentication on a non-loopback address (allow_unauthenticated = true): \
             anyone who can reach it can run tools on this machine",
            spec.serves
        );
    }
    Ok(Access { addrs, defaults, token })
}

/// Most connections waiting to be accepted. The usual default (128)
/// overflows when a couple of hundred clients connect at once, and each
/// overflowed SYN costs its client a one-second retransmit.
pub const BACKLOG: u32 = 4096;

/// Bind every address now, so a taken port fails activation with a clear
/// message; the default IPv6 loopback is skipped when IPv6 is off.
pub fn bind(
    runtime: &PluginRuntime,
    plugin: &str,
    access: &Access,
) -> Result<Vec<tokio::net::TcpListener>, Error> {
    let mut listeners = Vec::new();
    for addr in &access.addrs {
        match listen(runtime, *addr) {
            Ok(l) => listeners.push(l),
            Err(e) if access.defaults && addr.is_ipv6() => {
                tracing::info!(%addr, error = %e, "IPv6 loopback unavailable; serving IPv4 only");
            }
            Err(e) => return Err(Error::new("io", format!("{plugin}: cannot listen on {addr}: {e}"))),
        }
    }
    Ok(listeners)
}

fn listen(runtime: &PluginRuntime, addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    // Registering with the reactor needs the runtime's context.
    let _entered = runtime.handle().enter();
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Compare without an early exit, so timing does not reveal a prefix.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(addr: Option<Vec<&str>>) -> Spec<'static> {
        Spec {
            plugin: "t",
            serves: "T",
            addr: addr.map(|v| v.into_iter().map(str::to_owned).collect()),
            env_var: "DISPATCH_LISTEN_TEST_UNSET",
            default_port: 7,
            allow_none: false,
            token: Some("k".into()),
            allow_unauthenticated: false,
        }
    }

    #[test]
    fn addresses_default_to_both_loopbacks_and_bad_ones_are_named() {
        let a = access(&spec(None)).unwrap();
        assert!(a.defaults && a.addrs.len() == 2 && a.addrs.iter().all(|s| s.ip().is_loopback()));
        let e = access(&spec(Some(vec!["nope"]))).unwrap_err();
        assert!(e.message().contains("not a listen address") && e.message().contains("nope"), "{e:?}");
        assert!(access(&spec(Some(vec![]))).is_err());
        assert!(access(&Spec { allow_none: true, ..spec(Some(vec![])) }).is_ok());
        let open = Spec { token: None, ..spec(Some(vec!["0.0.0.0:1"])) };
        if std::env::var_os("DISPATCH_TOKEN").is_none() {
            assert!(access(&open).unwrap_err().message().contains("not a loopback address"));
            assert!(access(&Spec { allow_unauthenticated: true, ..open }).is_ok());
        }
        assert!(
            constant_time_eq(b"abc", b"abc")
                && !constant_time_eq(b"abc", b"abd")
                && !constant_time_eq(b"a", b"ab")
        );
    }
}
