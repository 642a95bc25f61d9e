//! A WebSocket client for the tests and benchmarks that drive the
//! WebSocket transport (tokio-tungstenite, plain `ws://`).

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
pub use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
pub use tokio_tungstenite::tungstenite::protocol::CloseFrame;
pub use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// What a read turned up.
#[derive(Debug)]
pub enum Read {
    /// A JSON text message.
    Json(Value),
    /// The server closed, with its close frame if it sent one.
    Closed(Option<CloseFrame>),
    /// Nothing within the deadline.
    Timeout,
}

/// A connected client.
#[derive(Debug)]
pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Connect to `url` (`ws://…`) with extra request headers.
    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<WsClient, String> {
        let mut request = url.into_client_request().map_err(|e| e.to_string())?;
        for (k, v) in headers {
            let name = hyper::header::HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
            request.headers_mut().insert(name, v.parse().map_err(|_| "bad header value".to_owned())?);
        }
        let (stream, _) = tokio_tungstenite::connect_async(request).await.map_err(|e| e.to_string())?;
        Ok(WsClient { stream })
    }

    /// Connect to `url`.
    pub async fn connect(url: &str) -> Result<WsClient, String> {
        WsClient::connect_with(url, &[]).await
    }

    /// Connect with a 4 KiB receive buffer: a client that stops reading
    /// then backs up into the server quickly, not after megabytes.
    pub async fn connect_small_buffer(url: &str) -> Result<WsClient, String> {
        let request = url.into_client_request().map_err(|e| e.to_string())?;
        let uri = request.uri();
        let addr = format!("{}:{}", uri.host().unwrap_or("127.0.0.1"), uri.port_u16().unwrap_or(80));
        let addr: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
        let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket.set_recv_buffer_size(4096).map_err(|e| e.to_string())?;
        let tcp = socket.connect(addr).await.map_err(|e| e.to_string())?;
        let (stream, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp))
            .await
            .map_err(|e| e.to_string())?;
        Ok(WsClient { stream })
    }

    /// Send a JSON message.
    pub async fn send(&mut self, value: &Value) {
        self.stream.send(Message::Text(value.to_string().into())).await.expect("send a message");
    }

    /// Send any frame.
    pub async fn send_raw(&mut self, message: Message) -> Result<(), String> {
        self.stream.send(message).await.map_err(|e| e.to_string())
    }

    /// The next JSON message, a close, or a timeout; pings are skipped.
    pub async fn read(&mut self, within: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return Read::Timeout,
                Ok(n) => n,
            };
            match next {
                None => return Read::Closed(None),
                Some(Err(_)) => return Read::Closed(None),
                Some(Ok(Message::Close(frame))) => return Read::Closed(frame),
                Some(Ok(Message::Text(t))) => {
                    return Read::Json(serde_json::from_str(t.as_str()).expect("the server sends JSON"))
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next JSON message; panics on a close or after 30 s.
    pub async fn next(&mut self) -> Value {
        match self.read(Duration::from_secs(30)).await {
            Read::Json(v) => v,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Messages until one `pick` accepts (included), skipping none.
    pub async fn until(&mut self, pick: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let v = match self.read(Duration::from_secs(30)).await {
                Read::Json(v) => v,
                other => panic!("expected a message, got {other:?}; received so far: {out:#?}"),
            };
            let done = pick(&v);
            out.push(v);
            if done {
                return out;
            }
        }
    }

    /// The `chat.delta` events until `turn-sealed` (included), other
    /// messages dropped.
    pub async fn turn(&mut self) -> Vec<Value> {
        let all = self.until(|v| v["type"] == "chat.delta" && v["event"]["type"] == "turn-sealed").await;
        all.into_iter().filter(|v| v["type"] == "chat.delta").map(|v| v["event"].clone()).collect()
    }

    /// Close politely.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}
