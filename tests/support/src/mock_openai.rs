//! A local OpenAI-compatible server for tests: listens on 127.0.0.1, records
//! every request, and answers each with the next scripted [`Reply`] —
//! status, headers, and a body sent in pieces with delays (an SSE stream),
//! optionally cut off mid-way. Plain threads and `std::net`, so any test can
//! use it, with or without an async runtime. Connections are kept alive as
//! real endpoints keep them. Stops when dropped.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    busy: Arc<AtomicU64>,
}

impl MockServer {
    /// Start with a queue of replies; requests beyond it get a 500.
    pub fn start(replies: Vec<Reply>) -> MockServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let replies = Arc::new(Mutex::new(VecDeque::from(replies)));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let busy = Arc::new(AtomicU64::new(0));
        let (r, q, s, b) =
            (Arc::clone(&replies), Arc::clone(&requests), Arc::clone(&stop), Arc::clone(&busy));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let (r, q, b) = (Arc::clone(&r), Arc::clone(&q), Arc::clone(&b));
                    std::thread::spawn(move || serve(stream, &r, &q, &b));
                }
            }
        });
        MockServer { addr, replies, requests, stop, busy }
    }

    /// Time spent handling requests so far (reading each one after its
    /// first line, answering it; delays excluded): what a benchmark
    /// subtracts as the mock's own cost.
    pub fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy.load(Ordering::Relaxed))
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
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn serve(
    stream: TcpStream,
    replies: &Mutex<VecDeque<Reply>>,
    requests: &Mutex<Vec<Request>>,
    busy: &AtomicU64,
) {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    // One request after another on the connection, until the client
    // closes it or a reply cuts it.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let started = Instant::now();
        let Some(reply) = read_request(&line, &mut reader, replies, requests) else {
            return;
        };
        let mut spent = started.elapsed();
        let done = answer(&mut out, &reply, &mut spent);
        busy.fetch_add(u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        if !done {
            return;
        }
    }
}

/// Reads the rest of a request, records it, and picks its reply.
fn read_request(
    line: &str,
    reader: &mut BufReader<TcpStream>,
    replies: &Mutex<VecDeque<Reply>>,
    requests: &Mutex<Vec<Request>>,
) -> Option<Reply> {
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return None;
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
    reader.read_exact(&mut body).ok()?;
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    requests.lock().unwrap().push(Request { method, path, headers, body });
    Some(replies.lock().unwrap().pop_front().unwrap_or_else(|| {
        Reply::json(500, serde_json::json!({"error": {"message": "mock server: no reply scripted"}}))
    }))
}

/// Sends `reply`; false when the connection is over (a cut, or the
/// client went away). `spent` grows by the time spent writing.
fn answer(out: &mut TcpStream, reply: &Reply, spent: &mut Duration) -> bool {
    let started = Instant::now();
    let total: usize = reply.pieces.iter().map(|p| p.1.len()).sum();
    let mut head = format!("HTTP/1.1 {} X\r\n", reply.status);
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if reply.cut {
        // Promise more than we send, so the cut is a broken body.
        head.push_str(&format!("Connection: close\r\nContent-Length: {}\r\n\r\n", total + 1000));
    } else {
        head.push_str(&format!("Content-Length: {total}\r\n\r\n"));
    }
    if out.write_all(head.as_bytes()).is_err() {
        return false;
    }
    let _ = out.flush();
    *spent += started.elapsed();
    for (delay, piece) in &reply.pieces {
        std::thread::sleep(*delay);
        let started = Instant::now();
        if out.write_all(piece.as_bytes()).is_err() {
            return false;
        }
        let _ = out.flush();
        *spent += started.elapsed();
    }
    if reply.cut {
        let _ = out.shutdown(std::net::Shutdown::Both);
        return false;
    }
    true
}

/// A streamed reply of `text`, the turn's last step.
pub fn text_reply(text: &str) -> Reply {
    Reply::sse(&[text_chunk(text), finish_chunk("stop")])
}

/// A streamed reply that calls tool `name` with `args`, as call `id`.
pub fn tool_call(id: &str, name: &str, args: &Value) -> Reply {
    Reply::sse(&[
        serde_json::json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": id, "type": "function",
            "function": {"name": name, "arguments": args.to_string()}}]}, "finish_reason": null}]}),
        finish_chunk("tool_calls"),
    ])
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
