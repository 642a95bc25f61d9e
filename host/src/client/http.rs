//! The client's HTTP: one connection per request to a `dispatch serve`
//! (plain `http://`; put TLS in front with a proxy or an SSH tunnel),
//! errors a person can act on.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the address.
    #[error("cannot reach the Dispatch server at {url} ({reason}); is `dispatch serve` running? (set --server or $DISPATCH_SERVER)")]
    Unreachable {
        /// The server URL tried.
        url: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// The server answered with an error.
    #[error("{message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The server's stable error code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server's answer was not what this client understands, or the
    /// connection broke off.
    #[error("{0}")]
    Protocol(String),
    /// The server URL is unusable.
    #[error("{0}")]
    BadUrl(String),
}

/// Where the server is and how to authenticate.
#[derive(Debug, Clone)]
pub struct Server {
    base: String,
    authority: String,
    token: Option<String>,
}

/// How long connecting may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Server {
    /// A server at `url` (`http://host:port`, a path prefix allowed).
    pub fn new(url: &str, token: Option<String>) -> Result<Server, ClientError> {
        let trimmed = url.trim();
        let rest = match trimmed.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => {
                return Err(ClientError::BadUrl(format!(
                    "the server URL {url:?} uses {scheme}://; this client speaks plain http:// (put TLS in front with a proxy, or use an SSH tunnel)"
                )))
            }
            None => trimmed,
        };
        let rest = rest.trim_end_matches('/');
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(ClientError::BadUrl(format!("the server URL {url:?} has no host")));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let base = format!("http://{rest}");
        Ok(Server { base, authority, token: token.filter(|t| !t.trim().is_empty()) })
    }

    /// The base URL, for messages.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Send a request; any status is an answer here.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable { url: self.base.clone(), reason };
        let connect = tokio::net::TcpStream::connect(&self.authority);
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))),
        };
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let prefix = self.base.split_once("://").and_then(|(_, r)| r.split_once('/')).map(|(_, p)| p);
        let uri = match prefix {
            Some(p) => format!("/{p}{path}"),
            None => path.to_owned(),
        };
        let mut req = Request::builder().method(method).uri(uri).header("host", &self.authority);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let bytes = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(bytes)).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| unreachable(e.to_string()))?;
        let (parts, body) = resp.into_parts();
        Ok(Response { status: parts.status.as_u16(), headers: parts.headers, body, buf: Vec::new() })
    }

    /// Send a request and decode a 2xx JSON answer; other statuses are
    /// [`ClientError::Refused`] with the server's message.
    pub async fn json(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let resp = self.send(method, path, body).await?;
        resp.into_json().await
    }
}

/// An answer whose body has not been read yet.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: hyper::HeaderMap,
    body: Incoming,
    buf: Vec<u8>,
}

impl Response {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
                Some(Err(e)) => return Err(ClientError::Protocol(format!("the answer broke off: {e}"))),
            }
        }
    }

    /// The whole body.
    pub async fn bytes(mut self) -> Result<Vec<u8>, ClientError> {
        let mut out = std::mem::take(&mut self.buf);
        while let Some(c) = self.chunk().await? {
            out.extend_from_slice(&c);
        }
        Ok(out)
    }

    /// A 2xx JSON body, or the server's error.
    pub async fn into_json(self) -> Result<Value, ClientError> {
        let status = self.status;
        let bytes = self.bytes().await?;
        let value: Option<Value> = serde_json::from_slice(&bytes).ok();
        if (200..300).contains(&status) {
            return value.ok_or_else(|| {
                ClientError::Protocol(format!("the server answered {status} with a body that is not JSON"))
            });
        }
        Err(refusal(status, value.as_ref(), &bytes))
    }

    /// The next line of an NDJSON body, parsed; `None` at the end.
    pub async fn next_line(&mut self) -> Result<Option<Value>, ClientError> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let line = &line[..line.len() - 1];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(line).map(Some).map_err(|e| {
                    ClientError::Protocol(format!("the server sent a line that is not JSON: {e}"))
                });
            }
            match self.chunk().await? {
                Some(c) => self.buf.extend_from_slice(&c),
                None if self.buf.iter().all(u8::is_ascii_whitespace) => return Ok(None),
                None => {
                    let rest = std::mem::take(&mut self.buf);
                    return serde_json::from_slice(&rest)
                        .map(Some)
                        .map_err(|e| ClientError::Protocol(format!("the stream ended inside a line: {e}")));
                }
            }
        }
    }
}

/// The server's `{error, code}` as an error.
pub fn refusal(status: u16, body: Option<&Value>, raw: &[u8]) -> ClientError {
    let message =
        body.and_then(|v| v.get("error")).and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| {
            format!("the server answered {status}: {}", String::from_utf8_lossy(raw).trim())
        });
    let code = body.and_then(|v| v.get("code")).and_then(Value::as_str).unwrap_or("http_error").to_owned();
    ClientError::Refused { status, code, message }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn server_urls_need_a_host_and_plain_http() {
        let s = Server::new("http://127.0.0.1:24203/", None).unwrap();
        assert_eq!((s.url(), s.authority.as_str()), ("http://127.0.0.1:24203", "127.0.0.1:24203"));
        assert_eq!(Server::new("localhost", None).unwrap().authority, "localhost:80");
        assert_eq!(Server::new("http://[::1]:24203", None).unwrap().authority, "[::1]:24203");
        assert!(Server::new("https://example.com", None).unwrap_err().to_string().contains("plain http"));
        assert!(Server::new("http://", None).is_err());
    }
}
