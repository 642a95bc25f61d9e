//! The OpenAI-compatible client against a local SSE server on 127.0.0.1
//! (started by each test): streaming, tool calls, usage, every error path,
//! and what the provider sends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use dispatch_contracts::protocol::provider::{ProviderError, ProviderEvent, ToolSpec};
use dispatch_contracts::protocol::wire::{ChatMessage, Chunk, FinishReason, Role, Usage};
use dispatch_plugin_provider_openai::client::{Credential, OpenAiClient, Timeouts};
use dispatch_plugin_provider_openai::convert::{request_body, Images, RequestBody};
use dispatch_test_support::mock_openai::*;
use futures::StreamExt as _;
use serde_json::{json, Value};

fn client(server: &MockServer, first_byte_ms: u64) -> OpenAiClient {
    OpenAiClient::new(
        Credential {
            name: "local".into(),
            base_url: server.base_url(),
            api_key: "sk-test-key".into(),
            models: None,
            context_windows: BTreeMap::from([("m1".to_owned(), 32_000)]),
            images: true,
            max_tokens_field: "max_tokens",
        },
        Timeouts {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_millis(first_byte_ms),
            idle: Duration::from_secs(5),
        },
    )
    .unwrap()
}

/// Run one step and collect what the provider pushed.
async fn step(c: &OpenAiClient, body: RequestBody) -> Vec<Result<ProviderEvent, ProviderError>> {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    c.clone().produce(body, tx).await;
    rx.collect().await
}

fn simple_body() -> RequestBody {
    request_body("m1", &[ChatMessage::user("hi")], &[], None, None, Images::Send)
}

fn last_error(items: &[Result<ProviderEvent, ProviderError>]) -> ProviderError {
    items.last().unwrap().clone().unwrap_err()
}

#[tokio::test]
async fn plain_text_streams_and_the_request_is_what_the_api_expects() {
    let server = MockServer::start(vec![Reply::sse(&[
        text_chunk("Hel"),
        text_chunk("lo"),
        finish_chunk("stop"),
        usage_chunk(12, 3, None),
    ])]);
    let history = vec![
        ChatMessage::user("read it"),
        ChatMessage {
            role: Role::Assistant,
            chunks: vec![Chunk::ToolCall {
                tool_call_id: "c1".into(),
                tool_name: "read_file".into(),
                input: json!({"path": "a"}),
                step_id: None,
            }],
        },
        ChatMessage {
            role: Role::Tool,
            chunks: vec![Chunk::ToolResult {
                tool_call_id: "c1".into(),
                tool_name: "read_file".into(),
                content: "A".into(),
                is_error: false,
                step_id: None,
            }],
        },
    ];
    let tools = vec![ToolSpec {
        name: "read_file".into(),
        description: "Read a file".into(),
        input_schema: json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
    }];
    let items =
        step(&client(&server, 5000), request_body("m1", &history, &tools, Some("sys"), None, Images::Send))
            .await;
    let events: Vec<ProviderEvent> = items.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        events,
        vec![
            ProviderEvent::TextDelta("Hel".into()),
            ProviderEvent::TextDelta("lo".into()),
            ProviderEvent::Usage(Usage { input_tokens: 12, output_tokens: 3, ..Usage::default() }),
            ProviderEvent::Finish(FinishReason::Stop),
        ]
    );
    let req = &server.requests()[0];
    assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/v1/chat/completions"));
    assert_eq!(req.header("authorization"), Some("Bearer sk-test-key"));
    assert_eq!(req.body["model"], "m1");
    assert_eq!(req.body["stream"], true);
    assert_eq!(req.body["stream_options"], json!({"include_usage": true}));
    assert_eq!(req.body["messages"][0], json!({"role": "system", "content": "sys"}));
    assert_eq!(req.body["messages"][2]["tool_calls"][0]["function"]["arguments"], "{\"path\":\"a\"}");
    assert_eq!(req.body["messages"][3], json!({"role": "tool", "tool_call_id": "c1", "content": "A"}));
    assert_eq!(req.body["tools"][0]["function"]["name"], "read_file");
    assert_eq!(req.body["tools"][0]["function"]["parameters"]["required"], json!(["path"]));
    assert!(req.header("openai-organization").is_none(), "no org header leaks to third parties");
}

#[tokio::test]
async fn reasoning_deltas_come_from_either_field_name() {
    let server = MockServer::start(vec![Reply::sse(&[
        json!({"choices": [{"index": 0, "delta": {"reasoning_content": "think "}}]}),
        json!({"choices": [{"index": 0, "delta": {"reasoning": "more"}}]}),
        text_chunk("answer"),
        finish_chunk("stop"),
    ])]);
    let events: Vec<ProviderEvent> =
        step(&client(&server, 5000), simple_body()).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        events,
        vec![
            ProviderEvent::ReasoningDelta("think ".into()),
            ProviderEvent::ReasoningDelta("more".into()),
            ProviderEvent::TextDelta("answer".into()),
            ProviderEvent::Finish(FinishReason::Stop),
        ]
    );
}

#[tokio::test]
async fn two_parallel_tool_calls_split_across_many_chunks_are_assembled() {
    let tc = |v: Value| json!({"choices": [{"index": 0, "delta": {"tool_calls": [v]}}]});
    let server = MockServer::start(vec![Reply::sse(&[
        tc(json!({"index": 0, "id": "call_a", "type": "function", "function": {"name": "read_file", "arguments": ""}})),
        tc(json!({"index": 1, "id": "call_b", "type": "function", "function": {"name": "read_", "arguments": "{\"pa"}})),
        tc(json!({"index": 0, "function": {"arguments": "{\"path\":"}})),
        tc(json!({"index": 1, "function": {"name": "file", "arguments": "th\": \"b.txt\"}"}})),
        tc(json!({"index": 0, "function": {"arguments": " \"a.txt\"}"}})),
        finish_chunk("tool_calls"),
        usage_chunk(50, 20, None),
    ])
    .delay_each(Duration::from_millis(5))]);
    let events: Vec<ProviderEvent> =
        step(&client(&server, 5000), simple_body()).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        events,
        vec![
            ProviderEvent::ToolCall {
                id: "call_a".into(),
                name: "read_file".into(),
                input: json!({"path": "a.txt"})
            },
            ProviderEvent::ToolCall {
                id: "call_b".into(),
                name: "read_file".into(),
                input: json!({"path": "b.txt"})
            },
            ProviderEvent::Usage(Usage { input_tokens: 50, output_tokens: 20, ..Usage::default() }),
            ProviderEvent::Finish(FinishReason::ToolCalls),
        ]
    );
}

#[tokio::test]
async fn usage_includes_cached_prompt_tokens() {
    let server = MockServer::start(vec![Reply::sse(&[
        text_chunk("x"),
        finish_chunk("stop"),
        usage_chunk(1000, 10, Some(800)),
    ])]);
    let events: Vec<ProviderEvent> =
        step(&client(&server, 5000), simple_body()).await.into_iter().map(Result::unwrap).collect();
    assert!(events.contains(&ProviderEvent::Usage(Usage {
        input_tokens: 1000,
        output_tokens: 10,
        cache_read_tokens: Some(800),
        cache_write_tokens: None,
        reasoning_tokens: None
    })));
}

#[tokio::test]
async fn http_429_is_retryable_and_carries_retry_after() {
    let server = MockServer::start(vec![Reply::json(
        429,
        json!({"error": {"message": "Rate limit reached", "type": "rate_limit"}}),
    )
    .header("Retry-After", "7")]);
    let err = last_error(&step(&client(&server, 5000), simple_body()).await);
    assert!(err.retryable);
    assert_eq!(err.code.as_deref(), Some("429"));
    assert_eq!(err.message, "HTTP 429: Rate limit reached");
    assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
    assert_eq!(server.requests().len(), 1, "the client itself never retries");
}

#[tokio::test]
async fn retry_after_of_1e20_is_clamped_not_a_panic() {
    // It used to panic in `Duration::from_secs_f64`, and the step then
    // looked like a successful empty answer.
    let server = MockServer::start(vec![
        Reply::json(429, json!({"error": {"message": "slow"}})).header("Retry-After", "1e20")
    ]);
    let err = last_error(&step(&client(&server, 5000), simple_body()).await);
    assert!(err.retryable);
    assert_eq!(err.retry_after, Some(dispatch_plugin_provider_openai::client::MAX_RETRY_AFTER));
}

#[tokio::test]
async fn a_huge_error_body_is_read_only_up_to_the_cap() {
    // 80 KiB arrive at once; the rest would follow only after the client's
    // idle timeout (5 s). Reading the whole body used to wait for it, time
    // out and lose the message; capped, the message is there at once.
    let server = MockServer::start(vec![Reply {
        status: 500,
        headers: vec![("Content-Type".into(), "text/plain".into())],
        pieces: vec![(Duration::ZERO, "x".repeat(80 * 1024)), (Duration::from_secs(8), "tail".into())],
        cut: false,
    }]);
    let err = last_error(&step(&client(&server, 5000), simple_body()).await);
    assert!(err.message.starts_with("HTTP 500: xxxx"), "{}", &err.message[..err.message.len().min(80)]);
    assert!(err.message.len() < 1000, "the message is truncated for people: {}", err.message.len());
}

#[tokio::test]
async fn http_500_is_retryable_with_the_servers_message() {
    let server =
        MockServer::start(vec![Reply::json(500, json!({"error": {"message": "upstream exploded"}}))]);
    let err = last_error(&step(&client(&server, 5000), simple_body()).await);
    assert!(err.retryable);
    assert_eq!(err.message, "HTTP 500: upstream exploded");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn other_4xx_are_fatal_with_the_servers_message() {
    let server = MockServer::start(vec![Reply::json(
        400,
        json!({"error": {"message": "model `m1` does not exist", "code": "model_not_found"}}),
    )]);
    let err = last_error(&step(&client(&server, 5000), simple_body()).await);
    assert!(!err.retryable);
    assert_eq!(err.code.as_deref(), Some("400"));
    assert_eq!(err.message, "HTTP 400: model `m1` does not exist");
}

#[tokio::test]
async fn a_non_json_error_body_is_reported_as_text() {
    let server = MockServer::start(vec![Reply {
        status: 502,
        headers: vec![],
        pieces: vec![(Duration::ZERO, "Bad Gateway".into())],
        cut: false,
    }]);
    let err = last_error(&step(&client(&server, 5000), simple_body()).await);
    assert!(err.retryable);
    assert_eq!(err.message, "HTTP 502: Bad Gateway");
}

#[tokio::test]
async fn a_malformed_sse_line_is_an_error_not_a_hang() {
    let server = MockServer::start(vec![Reply::raw_sse(&format!(
        "data: {}\n\ndata: {{not json\n\ndata: [DONE]\n\n",
        text_chunk("ok")
    ))]);
    let items = step(&client(&server, 5000), simple_body()).await;
    assert_eq!(items[0], Ok(ProviderEvent::TextDelta("ok".into())));
    let err = last_error(&items);
    assert!(err.message.contains("malformed stream line"), "{}", err.message);
    assert!(!err.retryable);
}

#[tokio::test]
async fn a_connection_dropped_mid_stream_is_an_error() {
    let server =
        MockServer::start(vec![
            Reply::sse(&[text_chunk("par"), text_chunk("tial"), finish_chunk("stop")]).cut_after(2)
        ]);
    let items = step(&client(&server, 5000), simple_body()).await;
    assert_eq!(items[0], Ok(ProviderEvent::TextDelta("par".into())));
    let err = last_error(&items);
    assert!(err.retryable, "{err:?}");
}

#[tokio::test]
async fn a_slow_first_token_hits_the_first_byte_timeout() {
    let server = MockServer::start(vec![
        Reply::sse(&[text_chunk("late"), finish_chunk("stop")]).delay_first(Duration::from_millis(1500))
    ]);
    let started = std::time::Instant::now();
    let err = last_error(&step(&client(&server, 300), simple_body()).await);
    assert!(started.elapsed() < Duration::from_millis(1200), "it waited for the slow server");
    assert!(err.retryable);
    assert!(err.message.contains("first-byte timeout"), "{}", err.message);
}

#[tokio::test]
async fn a_slow_first_token_within_the_timeout_is_fine() {
    let server = MockServer::start(vec![
        Reply::sse(&[text_chunk("late"), finish_chunk("stop")]).delay_first(Duration::from_millis(200))
    ]);
    let items = step(&client(&server, 3000), simple_body()).await;
    assert_eq!(items[0], Ok(ProviderEvent::TextDelta("late".into())));
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    let server = MockServer::start(vec![]);
    let mut c = client(&server, 5000);
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    c = OpenAiClient::new(
        Credential { base_url: format!("http://{closed}/v1"), ..c.credential().clone() },
        Timeouts {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_secs(5),
            idle: Duration::from_secs(5),
        },
    )
    .unwrap();
    let err = last_error(&step(&c, simple_body()).await);
    assert!(err.retryable);
    assert!(err.message.starts_with("cannot connect to http://127.0.0.1:"), "{}", err.message);
}

#[tokio::test]
async fn models_come_from_the_server_with_configured_context_windows() {
    let server = MockServer::start(vec![Reply::json(
        200,
        json!({"object": "list", "data": [{"id": "m1"}, {"id": "m2"}]}),
    )]);
    let models = client(&server, 5000).models().await.unwrap();
    let names: Vec<(String, Option<u64>)> = models.into_iter().map(|m| (m.name, m.context_window)).collect();
    assert_eq!(names, vec![("local/m1".into(), Some(32_000)), ("local/m2".into(), None)]);
    assert_eq!(server.requests()[0].path, "/v1/models");
}

/// A server that echoes the request's headers put the bearer key into the
/// error event; userinfo in the base URL showed in errors and logs.
#[tokio::test]
async fn secrets_never_reach_an_error_message() {
    let server = MockServer::start(vec![Reply::json(
        401,
        json!({"error": {"message": "invalid key; you sent Authorization: Bearer sk-test-key"}}),
    )]);
    let err = last_error(&step(&client(&server, 5000), simple_body()).await);
    assert!(err.message.starts_with("HTTP 401: invalid key"), "{}", err.message);
    assert!(!err.message.contains("sk-test-key"), "{}", err.message);
    assert!(err.message.contains("[redacted]"), "{}", err.message);

    let credential = Credential {
        name: "local".into(),
        base_url: "http://admin:hunter22@127.0.0.1:9/v1".into(),
        api_key: String::new(),
        models: None,
        context_windows: BTreeMap::new(),
        images: true,
        max_tokens_field: "max_tokens",
    };
    assert!(!format!("{credential:?}").contains("hunter22"));
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        first_byte: Duration::from_secs(5),
        idle: Duration::from_secs(5),
    };
    let c = OpenAiClient::new(credential, timeouts).unwrap();
    let err = last_error(&step(&c, simple_body()).await);
    assert!(!err.message.contains("hunter22") && !err.message.contains("admin:"), "{}", err.message);
    assert!(err.message.contains("127.0.0.1:9"), "{}", err.message);
}
