//! Which browsers' requests a transport serves: the cross-site rule of
//! `WIRE.md` ("Cross-site requests") and the check on `Host` that stops DNS
//! rebinding, shared by the HTTP and WebSocket transports.
//!
//! Why both: with no access token the server trusts whoever can reach its
//! port, which on loopback means every program of the machine — and every
//! web page the user's browser opens. A page cannot read a foreign answer
//! without CORS, but it can *send*: a "simple" `POST` (`text/plain`, a
//! form) needs no preflight. So without a token a request from a page is
//! served only when that page belongs to this machine; and since a DNS
//! rebinding attack makes a foreign page's own host name resolve to
//! `127.0.0.1` (its requests are then same-origin), the `Host` a request
//! names must be one the server is known by.

use std::net::IpAddr;

/// The transport's rule for browsers, decided once at activation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    /// A token is configured: it is the gate, and any origin may send.
    token: bool,
    /// Every origin is listed (`"*"`): the operator's explicit choice.
    any_origin: bool,
    /// Origins listed in the configuration, lower-cased.
    origins: Vec<String>,
    /// Host names served besides IP addresses, `localhost` and this
    /// machine's name, lower-cased.
    hosts: Vec<String>,
    /// This machine's name, lower-cased (when it can be read).
    hostname: Option<String>,
}

/// Why a request was refused, ready for a `403`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The stable code: `host_forbidden` or `origin_forbidden`.
    pub code: &'static str,
    /// For people: what was refused and how to allow it.
    pub message: String,
}

impl Gate {
    /// The rule for a transport: `token` is whether one is configured,
    /// `origins` the configured list (`cors_origins`, `allowed_origins`;
    /// `"*"` allows any), `hosts` the configured extra host names.
    pub fn new(token: bool, origins: Option<&[String]>, hosts: &[String]) -> Gate {
        let origins = origins.unwrap_or_default();
        Gate {
            token,
            any_origin: origins.iter().any(|o| o.trim() == "*"),
            origins: origins.iter().map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase()).collect(),
            hosts: hosts.iter().map(|h| h.trim().to_ascii_lowercase()).collect(),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty()),
        }
    }

    /// Whether a token is configured.
    pub fn has_token(&self) -> bool {
        self.token
    }

    /// Check the `Host` a request names (no check with a token: the token
    /// is the gate, and a rebinding page does not have it). Served: no
    /// `Host` (an HTTP/1.0 client; browsers always send one), an IP
    /// address (a rebinding attack needs a name), `localhost` and its
    /// subdomains (RFC 6761: never resolved through DNS), this machine's
    /// name, and the configured `allowed_hosts`.
    pub fn check_host(&self, host: Option<&str>) -> Result<(), Refused> {
        if self.token {
            return Ok(());
        }
        let Some(raw) = host else { return Ok(()) };
        let name = host_name(raw);
        let known = name.parse::<IpAddr>().is_ok()
            || is_localhost(&name)
            || self.hostname.as_deref() == Some(name.as_str())
            || self.hosts.contains(&name);
        if known {
            Ok(())
        } else {
            Err(Refused {
                code: "host_forbidden",
                message: format!(
                    "this server is not known as {raw:?}: without an access token it answers only requests \
                     for localhost, an IP address or this machine's name (a web page on another name could \
                     be a DNS rebinding attack); add the name to `allowed_hosts`, or set a token"
                ),
            })
        }
    }

    /// Whether a page of `origin` may send requests (no `Origin` — curl,
    /// the CLI, scripts — always may). With a token any origin may; without
    /// one: an origin of this machine (`localhost`, a loopback address, any
    /// port), the host the request itself names (the page the server
    /// serves from its `web_dir`, or the HTTP port's page opening the
    /// WebSocket port), or a listed one.
    pub fn check_origin(&self, origin: Option<&str>, host: Option<&str>) -> Result<(), Refused> {
        let Some(origin) = origin else { return Ok(()) };
        if self.token || self.origin_trusted(origin, host) {
            return Ok(());
        }
        Err(Refused {
            code: "origin_forbidden",
            message: format!(
                "a page from {origin} may not use this server: without an access token only pages of this \
                 machine may; list the origin in the transport's origins (`cors_origins` for HTTP, \
                 `allowed_origins` for the WebSocket), or set a token"
            ),
        })
    }

    /// Both checks a browser's request passes first — its `Host`, then its
    /// `Origin` — as the transports apply them.
    pub fn check(&self, origin: Option<&str>, host: Option<&str>) -> Result<(), Refused> {
        self.check_host(host)?;
        self.check_origin(origin, host)
    }

    /// Whether `origin` is one whose pages may read answers (CORS): this
    /// machine's, the request's own host, or a listed one — with or
    /// without a token.
    pub fn origin_trusted(&self, origin: &str, host: Option<&str>) -> bool {
        let lower = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if self.any_origin || self.origins.contains(&lower) {
            return true;
        }
        let Some((scheme, rest)) = lower.split_once("://") else { return false };
        if scheme != "http" && scheme != "https" {
            return false;
        }
        let name = host_name(rest);
        if is_localhost(&name) || name.parse::<IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback()) {
            return true;
        }
        host.is_some_and(|h| host_name(h) == name)
    }
}

/// `localhost` or a name under it.
fn is_localhost(name: &str) -> bool {
    name == "localhost" || name.ends_with(".localhost")
}

/// The name part of a `Host` value or an origin's authority, lower-cased,
/// without the port, brackets or a trailing dot (`[::1]:80` → `::1`).
fn host_name(authority: &str) -> String {
    let a = authority.trim();
    let a = a.rsplit_once('@').map_or(a, |(_, h)| h);
    let name = if let Some(rest) = a.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        a.split(':').next().unwrap_or_default()
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn open() -> Gate {
        Gate::new(false, None, &[])
    }

    #[test]
    fn hosts_a_rebinding_page_would_name_are_refused_without_a_token() {
        let g = open();
        for ok in
            ["localhost:24203", "LOCALHOST", "127.0.0.1:24203", "[::1]:24203", "app.localhost", "10.1.2.3"]
        {
            assert!(g.check_host(Some(ok)).is_ok(), "{ok}");
        }
        assert!(g.check_host(None).is_ok());
        let refused = g.check_host(Some("evil.example:24203")).unwrap_err();
        assert_eq!(refused.code, "host_forbidden");
        assert!(refused.message.contains("allowed_hosts"), "{}", refused.message);
        assert!(g.check_host(Some("localhost.evil.example")).is_err());
        let listed = Gate::new(false, None, &["Dispatch.Internal".into()]);
        assert!(listed.check_host(Some("dispatch.internal:24203")).is_ok());
        assert!(Gate::new(true, None, &[]).check_host(Some("evil.example")).is_ok());
    }

    #[test]
    fn only_this_machines_pages_may_send_without_a_token() {
        let g = open();
        for ok in
            ["http://localhost:5173", "http://127.0.0.1:24203", "http://[::1]:24203", "https://LOCALHOST"]
        {
            assert!(g.check_origin(Some(ok), Some("localhost:24203")).is_ok(), "{ok}");
        }
        assert!(g.check_origin(None, Some("localhost")).is_ok());
        for bad in
            ["https://evil.example", "http://localhost.evil.example", "null", "file://", "ftp://localhost"]
        {
            let r = g.check_origin(Some(bad), Some("localhost:24203")).unwrap_err();
            assert_eq!(r.code, "origin_forbidden", "{bad}");
        }
        // The page served from web_dir, opened by the machine's address.
        assert!(g.check_origin(Some("http://192.168.1.5:24203"), Some("192.168.1.5:24205")).is_ok());
        let listed = Gate::new(false, Some(&["https://app.example/".into()]), &[]);
        assert!(listed.check_origin(Some("https://APP.example"), None).is_ok());
        assert!(Gate::new(false, Some(&["*".into()]), &[])
            .check_origin(Some("https://x.example"), None)
            .is_ok());
        let token = Gate::new(true, None, &[]);
        assert!(token.check_origin(Some("https://x.example"), None).is_ok());
        assert!(!token.origin_trusted("https://x.example", None), "a token does not make an origin readable");
    }
}
