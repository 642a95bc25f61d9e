//! Small HTTP helpers: JSON answers and errors, CORS, bodies, queries.

use std::convert::Infallible;

use bytes::Bytes;
use dispatch_abi::Error;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, CONTENT_TYPE, VARY};
use hyper::{HeaderMap, Response, StatusCode};
use serde::Serialize;

/// Every answer's body type.
pub type Body = BoxBody<Bytes, Infallible>;

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// A JSON answer.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut r = Response::new(full(bytes));
            *r.status_mut() = status;
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Err(e) => {
            problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", &format!("cannot encode the answer: {e}"))
        }
    }
}

/// `{"error": message, "code": code}` with `status`.
pub fn problem(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message, "code": code });
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A failed request, ready to answer.
#[derive(Debug)]
pub struct Failure {
    /// The status.
    pub status: StatusCode,
    /// The stable code.
    pub code: String,
    /// For people.
    pub message: String,
}

impl Failure {
    /// A failure with everything spelled out.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Failure { status, code: code.to_owned(), message: message.into() }
    }

    /// `400 bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// The answer.
    pub fn response(&self) -> Response<Body> {
        problem(self.status, &self.code, &self.message)
    }
}

impl From<Error> for Failure {
    /// A bus error as HTTP: the plugin's code decides the status.
    fn from(e: Error) -> Self {
        let status = match e.code() {
            "invalid_input" | "invalid_payload" | "unknown_model" => StatusCode::BAD_REQUEST,
            "not_found" => StatusCode::NOT_FOUND,
            "conflict" | "duplicate" => StatusCode::CONFLICT,
            "forbidden" => StatusCode::FORBIDDEN,
            "payload_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            "unsupported" | "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure::new(status, e.code(), e.message())
    }
}

/// Answer or failure.
pub type Reply = Result<Response<Body>, Failure>;

/// The CORS headers of every answer. `trusted` is the request's `Origin`
/// when its page may read answers (see `dispatch_listen::Gate`): it is
/// echoed, never `*`, so a page of another site cannot read a
/// conversation even where its request got through.
pub fn cors(trusted: Option<&HeaderValue>, headers: &mut HeaderMap) {
    headers.insert(VARY, HeaderValue::from_static("Origin"));
    if let Some(o) = trusted {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
    }
    headers
        .insert("access-control-allow-methods", HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"));
    headers.insert("access-control-allow-headers", HeaderValue::from_static("Content-Type, Authorization"));
    headers.insert("access-control-expose-headers", HeaderValue::from_static("X-Conversation-Id"));
    headers.insert("access-control-max-age", HeaderValue::from_static("600"));
}

/// Whether a `Content-Type` value is JSON's (`application/json`, any
/// parameters).
pub fn is_json_type(value: Option<&HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// Read a whole body of at most `limit` bytes within `deadline`.
pub async fn read_body(
    body: Incoming,
    limit: usize,
    deadline: std::time::Duration,
) -> Result<Bytes, Failure> {
    // A declared length over the limit is refused before a byte is read:
    // a client that sent `Expect: 100-continue` gets the 413 instead of a
    // go-ahead, and no client waits out the read deadline for it.
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large(limit));
    }
    let read = tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await.map_err(|_| {
        Failure::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!("the request body did not arrive within {} ms", deadline.as_millis()),
        )
    })?;
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(limit)),
        Err(e) => Err(Failure::bad_request(format!("cannot read the request body: {e}"))),
    }
}

fn too_large(limit: usize) -> Failure {
    Failure::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body is over the limit of {limit} bytes"),
    )
}

/// Decode `%XX` escapes (and nothing else) of a path segment or query part.
pub fn percent_decode(s: &str) -> Result<String, Failure> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(b) = hex else {
                return Err(Failure::bad_request(format!("bad percent-escape in {s:?}")));
            };
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Failure::bad_request(format!("{s:?} is not UTF-8")))
}

/// The query string as decoded pairs (`+` is a space).
pub fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, Failure> {
    let Some(q) = query else { return Ok(Vec::new()) };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((percent_decode(&k.replace('+', " "))?, percent_decode(&v.replace('+', " "))?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode() {
        let pairs = query_pairs(Some("q=a%20b&limit=5&beforeSeq=0&x=1+2")).unwrap();
        assert_eq!(pairs[0], ("q".to_owned(), "a b".to_owned()));
        assert_eq!(pairs[3], ("x".to_owned(), "1 2".to_owned()));
        assert!(percent_decode("%zz").is_err());
    }
}
