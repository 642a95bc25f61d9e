//! The `websocket` contract: how a listener that is not the WebSocket
//! transport's own (the HTTP transport's `/ws` route) hands an upgraded
//! connection to it, so one plugin serves every WebSocket client whichever
//! port it came in on.
//!
//! Two steps, because the `101 Switching Protocols` answer must be written
//! by the listener that parsed the request: `handshake` checks the request
//! and answers the `Sec-WebSocket-Accept` value and a single-use `ticket`;
//! once the 101 is written, `adopt` passes the socket's file descriptor
//! (the transport takes ownership, in this process) and any bytes already
//! read past the request. Access control stays with the listener: it
//! checks its own token before the handshake.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Requests to the `websocket` service, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub enum UpgradeRequest {
    /// Check an upgrade request; answers [`Handshake`], or `invalid_input`
    /// with the reason (not a WebSocket request, unknown wire version).
    Handshake {
        /// The request headers (name, value); names in any case.
        headers: Vec<(String, String)>,
        /// The URL's query string, without `?` (`wire=0.1`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        query: Option<String>,
    },
    /// Take over an upgraded connection; answers `{}`. From this call on,
    /// `fd` belongs to the transport (it is closed on any error).
    Adopt {
        /// From [`Handshake`]; valid once, for a few seconds.
        ticket: String,
        /// The connected TCP socket.
        fd: i32,
        /// Bytes the listener read past the request (the client's first
        /// frames, when it did not wait for the 101).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        buffered: Vec<u8>,
    },
}

/// The answer to [`UpgradeRequest::Handshake`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Handshake {
    /// The `Sec-WebSocket-Accept` header value.
    pub accept: String,
    /// Present it to `adopt`.
    pub ticket: String,
}

/// The `websocket.connections` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Connections {
    /// Open now.
    pub open: u64,
}
