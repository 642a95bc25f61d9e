//! `GET /ws`: the WebSocket on the HTTP port. This plugin only does the
//! HTTP half — it asks the WebSocket transport (the `websocket` bus
//! service of `transport-ws`) to check the upgrade, answers `101`, then
//! hands the socket itself over. Without `transport-ws` loaded, `/ws`
//! answers `503` saying so.

use std::os::fd::{FromRawFd as _, IntoRawFd as _};
use std::sync::Arc;

use dispatch_abi::codes;
use dispatch_contracts::websocket::{Handshake, UpgradeRequest, WEBSOCKET};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::http::{full, Failure, Reply};
use crate::routes::App;

/// Whether the request asks to become a WebSocket.
pub fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("websocket")))
}

/// Answer an upgrade at `/ws` and hand the connection to `transport-ws`.
pub async fn upgrade(app: Arc<App>, mut req: Request<Incoming>) -> Reply {
    if !is_upgrade(&req) {
        return Err(Failure::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this is the WebSocket endpoint: connect with `Upgrade: websocket`",
        ));
    }
    let headers = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let query = req.uri().query().map(str::to_owned);
    let answer = app.host.call(&WEBSOCKET, &UpgradeRequest::Handshake { headers, query }).await;
    let handshake: Handshake = match answer {
        Ok(v) => serde_json::from_value(v).map_err(|e| {
            Failure::new(StatusCode::BAD_GATEWAY, "internal", format!("websocket handshake: {e}"))
        })?,
        Err(e) if e.code() == codes::NOT_FOUND => {
            return Err(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the WebSocket transport (transport-ws) is not loaded",
            ))
        }
        Err(e) if matches!(e.code(), "origin_forbidden" | "host_forbidden" | codes::FORBIDDEN) => {
            return Err(Failure::new(StatusCode::FORBIDDEN, e.code(), e.message()))
        }
        Err(e) if matches!(e.code(), "too_many_connections" | codes::UNAVAILABLE) => {
            return Err(Failure::new(StatusCode::SERVICE_UNAVAILABLE, e.code(), e.message()))
        }
        Err(e) if e.code() == "upgrade_required" => {
            return Err(Failure::new(StatusCode::UPGRADE_REQUIRED, e.code(), e.message()))
        }
        Err(e) => return Err(Failure::new(StatusCode::BAD_REQUEST, e.code(), e.message())),
    };
    let accept = HeaderValue::from_str(&handshake.accept).map_err(|_| {
        Failure::new(StatusCode::BAD_GATEWAY, "internal", "websocket handshake: bad accept key")
    })?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let host = app.host.clone();
    app.runner.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => return tracing::debug!(error = %e, "upgrade at /ws failed"),
        };
        // The connection is the TCP stream this plugin accepted; take it
        // back from hyper with whatever it read past the request.
        let parts = match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
            Ok(p) => p,
            Err(_) => return tracing::warn!("upgrade at /ws: not a TCP connection; dropped"),
        };
        let fd = match parts.io.into_inner().into_std() {
            Ok(s) => s.into_raw_fd(),
            Err(e) => return tracing::warn!(error = %e, "upgrade at /ws: cannot detach the socket"),
        };
        let adopt = UpgradeRequest::Adopt { ticket: handshake.ticket, fd, buffered: parts.read_buf.to_vec() };
        // Once the call reaches the WebSocket transport the descriptor is
        // its own, failure included (it closes it). A call that never got
        // there (the plugin went away) leaves it ours to close.
        if let Err(e) = host.call(&WEBSOCKET, &adopt).await {
            if e.code() == codes::NOT_FOUND || e.code() == codes::UNAVAILABLE {
                // SAFETY: the descriptor was detached above and nobody took it.
                drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
            }
            tracing::warn!(error = %e, "the WebSocket transport refused a /ws connection");
        }
    });
    let mut r = Response::new(full(""));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert("sec-websocket-accept", accept);
    Ok(r)
}
