//! A local OpenAI-compatible server for tests: listens on 127.0.0.1, records
//! every request, and answers each with the next scripted [`Reply`] —
//! status, headers, and a body sent in pieces with delays (an SSE stream),
//! optionally cut off mid-way. Plain threads and `std::net`, so any test can
//! use it, with or without an async runtime. Stops when dropped.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// One answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Body pieces, each sent after its delay.
    pub pieces: Vec<(Duration, String)>,
    /// Close the connection after the pieces without finishing the body.
    pub cut: bool,
}

impl Reply {
    /// A streamed completion: each JSON chunk as an SSE event, then `[DONE]`.
    pub fn sse(chunks: &[Value]) -> Reply {
        let mut pieces: Vec<(Duration, String)> =
            chunks.iter().map(|c| (Duration::ZERO, format!("data: {c}\n\n"))).collect();
        pieces.push((Duration::ZERO, "data: [DONE]\n\n".into()));
        Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "text/event-stream".into())],
            pieces,
            cut: false,
        }
    }

    /// Raw SSE text (for malformed lines).
    pub fn raw_sse(text: &str) -> Reply {
        Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "text/event-stream".into())],
            pieces: vec![(Duration::ZERO, text.into())],
            cut: false,
        }
    }

    /// A JSON answer with a status.
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            pieces: vec![(Duration::ZERO, body.to_string())],
            cut: false,
        }
    }

    /// Add a header.
    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }

    /// Wait before every piece.
    pub fn delay_each(mut self, d: Duration) -> Reply {
        for p in &mut self.pieces {
            p.0 = d;
        }
        self
    }

    /// Wait before the first piece (after the headers).
    pub fn delay_first(mut self, d: Duration) -> Reply {
        if let Some(p) = self.pieces.first_mut() {
            p.0 = d;
        }
        self
    }

    /// Send only the first `n` pieces, then drop the connection.
    pub fn cut_after(mut self, n: usize) -> Reply {
        self.pieces.truncate(n);
        self.cut = true;
        self
    }
}

/// A recorded request.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// The server.
pub struct MockServer {
    pub addr: String,
    replies: Arc<Mutex<VecDeque<Reply>>>,
    pub requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl MockServer {
    /// Start with a queue of replies; requests beyond it get a 500.
    pub fn start(replies: Vec<Reply>) -> MockServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        listener.set_nonblocking(true).unwrap();
        let replies = Arc::new(Mutex::new(VecDeque::from(replies)));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, q, s) = (Arc::clone(&replies), Arc::clone(&requests), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (r, q) = (Arc::clone(&r), Arc::clone(&q));
                        std::thread::spawn(move || serve(stream, &r, &q));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        MockServer { addr, replies, requests, stop }
    }

    /// The base URL clients use (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queue more replies.
    pub fn push(&self, reply: Reply) {
        self.replies.lock().unwrap().push_back(reply);
    }

    /// Requests so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(stream: TcpStream, replies: &Mutex<VecDeque<Reply>>, requests: &Mutex<Vec<Request>>) {
    stream.set_nonblocking(false).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap_or_default();
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    requests.lock().unwrap().push(Request { method, path, headers, body });

    let reply = replies.lock().unwrap().pop_front().unwrap_or_else(|| {
        Reply::json(500, serde_json::json!({"error": {"message": "mock server: no reply scripted"}}))
    });
    let mut out = stream;
    let total: usize = reply.pieces.iter().map(|p| p.1.len()).sum();
    let mut head = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", reply.status);
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if reply.cut {
        // Promise more than we send, so the cut is a broken body.
        head.push_str(&format!("Content-Length: {}\r\n\r\n", total + 1000));
    } else {
        head.push_str(&format!("Content-Length: {total}\r\n\r\n"));
    }
    if out.write_all(head.as_bytes()).is_err() {
        return;
    }
    let _ = out.flush();
    for (delay, piece) in &reply.pieces {
        std::thread::sleep(*delay);
        if out.write_all(piece.as_bytes()).is_err() {
            return;
        }
        let _ = out.flush();
    }
    if reply.cut {
        let _ = out.shutdown(std::net::Shutdown::Both);
    }
}

/// A streamed chat chunk with a text delta.
pub fn text_chunk(text: &str) -> Value {
    serde_json::json!({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
}

/// A chunk carrying a finish reason.
pub fn finish_chunk(reason: &str) -> Value {
    serde_json::json!({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
}

/// The final usage-only chunk (`stream_options.include_usage`).
pub fn usage_chunk(prompt: u64, completion: u64, cached: Option<u64>) -> Value {
    let mut usage = serde_json::json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
    if let Some(c) = cached {
        usage["prompt_tokens_details"] = serde_json::json!({"cached_tokens": c});
    }
    serde_json::json!({"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": usage})
}
