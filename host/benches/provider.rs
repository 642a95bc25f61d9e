//! Provider overhead: a 10 000-token reply streamed from a local
//! OpenAI-compatible SSE server (a) through the `provider-openai` plugin —
//! async-openai, the plugin's runtime, the pull protocol over the bus, the
//! kernel's `RemoteProvider` — and (b) by a plain HTTP client reading the
//! same stream (reqwest + line splitting + one JSON parse per event).
//! Interleaved rounds; medians; tokens/s for both and the ratio.
//!
//! ```sh
//! cargo build --release --workspace && cargo bench -p dispatch-host --bench provider
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Instant;

use dispatch_host::turn::{resolve, BusCaller};
use dispatch_kernel::provider::{Provider, ProviderEvent, ProviderOptions, StepRequest};
use dispatch_kernel::remote::RemoteProvider;
use dispatch_kernel::wire::ChatMessage;
use dispatch_test_support::bench::median;
use dispatch_test_support::mock_openai::{finish_chunk, text_chunk, MockServer, Reply};
use futures::StreamExt as _;
use serde_json::Value;

const TOKENS: usize = 10_000;
const ROUNDS: usize = 9;

fn reply() -> Reply {
    let mut chunks: Vec<Value> =
        (0..TOKENS).map(|i| text_chunk(if i % 2 == 0 { "tok" } else { " " })).collect();
    chunks.push(finish_chunk("stop"));
    let sse = Reply::sse(&chunks);
    // One piece: the server is not what is measured.
    let body: String = sse.pieces.iter().map(|p| p.1.as_str()).collect();
    Reply::raw_sse(&body)
}

async fn plain(http: &reqwest::Client, url: &str) -> usize {
    let resp = http
        .post(format!("{url}/chat/completions"))
        .header("content-type", "application/json")
        .body(r#"{"model":"m","messages":[],"stream":true}"#)
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut tokens = 0;
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk.unwrap());
        while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..pos + 2).collect();
            let line = std::str::from_utf8(&event).unwrap().trim();
            let Some(data) = line.strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                return tokens;
            }
            let v: Value = serde_json::from_str(data).unwrap();
            if v["choices"][0]["delta"]["content"].is_string() {
                tokens += 1;
            }
        }
    }
    tokens
}

fn main() {
    let release = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_owned();
    assert!(
        release.join("libdispatch_plugin_provider_openai.so").exists(),
        "build the release plugins first: cargo build --release --workspace"
    );
    let server = MockServer::start((0..2 * ROUNDS + 2).map(|_| reply()).collect());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let credentials = format!(
        "[[plugin.config.credentials]]\nname = \"bench\"\nbase_url = {:?}\nmodels = [\"m\"]",
        server.base_url()
    );
    let sup = common::start_with(
        &rt,
        dir.path(),
        &release,
        &[
            ("libdispatch_plugin_models.so".into(), ""),
            ("libdispatch_plugin_provider_openai.so".into(), &credentials),
        ],
    );
    let caller = Arc::new(BusCaller(sup.shared()));
    let resolved = rt.block_on(resolve(&caller, Some("bench/m".into()))).unwrap();
    let provider = RemoteProvider::new(Arc::clone(&caller), &resolved, None);
    let http = reqwest::Client::new();
    let url = server.base_url();
    let messages = vec![ChatMessage::user("go")];
    let options = ProviderOptions::default();

    let through_plugin = || {
        rt.block_on(async {
            let req = StepRequest { messages: &messages, tools: &[], options: &options };
            let mut s = provider.stream(req);
            let mut tokens = 0;
            while let Some(item) = s.next().await {
                if let ProviderEvent::TextDelta(_) = item.unwrap() {
                    tokens += 1;
                }
            }
            tokens
        })
    };
    // Warm up both paths.
    assert_eq!(rt.block_on(plain(&http, &url)), TOKENS);
    assert_eq!(through_plugin(), TOKENS);

    let (mut a, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        assert_eq!(rt.block_on(plain(&http, &url)), TOKENS);
        let plain_tps = TOKENS as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        assert_eq!(through_plugin(), TOKENS);
        let plugin_tps = TOKENS as f64 / t.elapsed().as_secs_f64();
        a.push(plain_tps);
        b.push(plugin_tps);
        r.push(plain_tps / plugin_tps);
    }
    println!("{ROUNDS} interleaved rounds, {TOKENS}-token streamed reply from a local SSE server; medians");
    println!("plain HTTP client (reqwest + SSE split + JSON parse): {:>10.0} tokens/s", median(a));
    println!("through provider-openai plugin and the bus:           {:>10.0} tokens/s", median(b));
    println!("ratio (plain / plugin):                               {:>10.2}x", median(r));
    rt.block_on(sup.shutdown());
}
