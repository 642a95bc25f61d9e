//! A plain-HTTP/1.1 client on hyper for the tests and benchmarks that
//! drive `dispatch serve`: one connection per request, no TLS (and so no
//! TLS crypto provider to pick), bodies streamed frame by frame.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request};
use hyper_util::rt::TokioIo;

/// An answer whose body has not been read yet.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The body, to read with [`Response::next_chunk`] or [`Response::text`].
    pub body: Incoming,
}

impl Response {
    /// The next data chunk, or `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => return Some(data),
                    Err(_) => continue,
                },
                Err(e) => panic!("the body broke off: {e}"),
            }
        }
    }

    /// The rest of the body as text.
    pub async fn text(mut self) -> String {
        let mut out = Vec::new();
        while let Some(c) = self.next_chunk().await {
            out.extend_from_slice(&c);
        }
        String::from_utf8(out).unwrap()
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Send one request to `url` (`http://host:port/path?query`).
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Response> {
    let uri: hyper::Uri = url.parse().map_err(std::io::Error::other)?;
    let authority = uri.authority().ok_or_else(|| std::io::Error::other("no host in the URL"))?.clone();
    let stream = tokio::net::TcpStream::connect(authority.as_str()).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", authority.as_str());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = Full::new(Bytes::from(body.map(<[u8]>::to_vec).unwrap_or_default()));
    let req = req.body(body).map_err(std::io::Error::other)?;
    let resp = sender.send_request(req).await.map_err(std::io::Error::other)?;
    let (parts, body) = resp.into_parts();
    Ok(Response { status: parts.status.as_u16(), headers: parts.headers, body })
}

/// `POST` a JSON body.
pub async fn post_json(url: &str, body: &str) -> std::io::Result<Response> {
    send("POST", url, &[("content-type", "application/json")], Some(body.as_bytes())).await
}

/// Poll `url` until it answers `200`; how long that took. Panics after `limit`.
pub async fn wait_ok(url: &str, limit: std::time::Duration) -> std::time::Duration {
    let start = std::time::Instant::now();
    loop {
        if let Ok(r) = send("GET", url, &[], None).await {
            if r.status == 200 {
                return start.elapsed();
            }
        }
        assert!(start.elapsed() < limit, "{url} did not answer 200 within {limit:?}");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}
