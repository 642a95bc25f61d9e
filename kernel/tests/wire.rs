//! Golden JSON: every wire type serializes to exactly the JSON WIRE.md
//! documents and parses back to the same value.

#![allow(clippy::unwrap_used)]

use dispatch_kernel::wire::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

/// `value` serializes to `golden` and `golden` parses to `value`.
fn golden<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: T, golden: Value) {
    assert_eq!(serde_json::to_value(&value).unwrap(), golden, "serialize {value:?}");
    assert_eq!(serde_json::from_value::<T>(golden.clone()).unwrap(), value, "parse {golden}");
}

#[test]
fn roles() {
    for (r, s) in
        [(Role::System, "system"), (Role::User, "user"), (Role::Assistant, "assistant"), (Role::Tool, "tool")]
    {
        golden(r, json!(s));
    }
}

#[test]
fn chunks_every_variant() {
    golden(Chunk::Text { text: "hi".into() }, json!({"type": "text", "text": "hi"}));
    golden(Chunk::Thinking { text: "hm".into() }, json!({"type": "thinking", "text": "hm"}));
    golden(
        Chunk::ToolCall {
            tool_call_id: "c1".into(),
            tool_name: "read_file".into(),
            input: json!({"path": "a"}),
            step_id: Some("t#0".into()),
        },
        json!({"type": "tool-call", "toolCallId": "c1", "toolName": "read_file", "input": {"path": "a"}, "stepId": "t#0"}),
    );
    golden(
        Chunk::ToolCall {
            tool_call_id: "c1".into(),
            tool_name: "x".into(),
            input: json!(null),
            step_id: None,
        },
        json!({"type": "tool-call", "toolCallId": "c1", "toolName": "x", "input": null}),
    );
    golden(
        Chunk::ToolResult {
            tool_call_id: "c1".into(),
            tool_name: "x".into(),
            content: "ok".into(),
            is_error: false,
            step_id: Some("t#0".into()),
        },
        json!({"type": "tool-result", "toolCallId": "c1", "toolName": "x", "content": "ok", "isError": false, "stepId": "t#0"}),
    );
    golden(
        Chunk::Error { message: "boom".into(), code: Some("500".into()) },
        json!({"type": "error", "message": "boom", "code": "500"}),
    );
    golden(Chunk::Error { message: "boom".into(), code: None }, json!({"type": "error", "message": "boom"}));
    golden(Chunk::System { text: "be nice".into() }, json!({"type": "system", "text": "be nice"}));
    golden(
        Chunk::Image { url: "data:image/png;base64,AA".into(), mime_type: Some("image/png".into()) },
        json!({"type": "image", "url": "data:image/png;base64,AA", "mimeType": "image/png"}),
    );
}

#[test]
fn messages_and_stored_chunks() {
    golden(ChatMessage::user("hi"), json!({"role": "user", "chunks": [{"type": "text", "text": "hi"}]}));
    golden(
        StoredChunk { seq: 1, role: Role::Assistant, chunk: Chunk::text("a") },
        json!({"seq": 1, "role": "assistant", "chunk": {"type": "text", "text": "a"}}),
    );
}

#[test]
fn usage_omits_absent_cache_counters() {
    golden(
        Usage { input_tokens: 10, output_tokens: 5, ..Usage::default() },
        json!({"inputTokens": 10, "outputTokens": 5}),
    );
    golden(
        Usage {
            input_tokens: 10,
            output_tokens: 5,
            cache_read_tokens: Some(8),
            cache_write_tokens: Some(2),
            ..Usage::default()
        },
        json!({"inputTokens": 10, "outputTokens": 5, "cacheReadTokens": 8, "cacheWriteTokens": 2}),
    );
}

#[test]
fn reasoning_effort_and_status() {
    for (e, s) in [
        (ReasoningEffort::Low, "low"),
        (ReasoningEffort::Medium, "medium"),
        (ReasoningEffort::High, "high"),
        (ReasoningEffort::Xhigh, "xhigh"),
        (ReasoningEffort::Max, "max"),
    ] {
        golden(e, json!(s));
    }
    assert!(
        serde_json::from_value::<ReasoningEffort>(json!("extreme")).is_err(),
        "unknown effort is refused"
    );
    golden(ConversationStatus::Idle, json!("idle"));
}

#[test]
fn every_agent_event() {
    let (c, t) = ("c1".to_owned(), "t1".to_owned());
    let u = Usage { input_tokens: 3, output_tokens: 4, ..Usage::default() };
    let cases: Vec<(AgentEvent, Value)> = vec![
        (
            AgentEvent::UserMessage { conversation_id: c.clone(), turn_id: t.clone(), text: "hi".into() },
            json!({"type": "user-message", "conversationId": "c1", "turnId": "t1", "text": "hi"}),
        ),
        (
            AgentEvent::TurnStart { conversation_id: c.clone(), turn_id: t.clone() },
            json!({"type": "turn-start", "conversationId": "c1", "turnId": "t1"}),
        ),
        (
            AgentEvent::TextDelta { conversation_id: c.clone(), turn_id: t.clone(), delta: "x".into() },
            json!({"type": "text-delta", "conversationId": "c1", "turnId": "t1", "delta": "x"}),
        ),
        (
            AgentEvent::ReasoningDelta { conversation_id: c.clone(), turn_id: t.clone(), delta: "y".into() },
            json!({"type": "reasoning-delta", "conversationId": "c1", "turnId": "t1", "delta": "y"}),
        ),
        (
            AgentEvent::ToolCall {
                conversation_id: c.clone(),
                turn_id: t.clone(),
                step_id: "t1#0".into(),
                tool_call_id: "k".into(),
                tool_name: "sh".into(),
                input: json!({"cmd": "ls"}),
            },
            json!({"type": "tool-call", "conversationId": "c1", "turnId": "t1", "stepId": "t1#0", "toolCallId": "k", "toolName": "sh", "input": {"cmd": "ls"}}),
        ),
        (
            AgentEvent::ToolOutput {
                conversation_id: c.clone(),
                turn_id: t.clone(),
                tool_call_id: "k".into(),
                data: "out".into(),
                stream: OutputStream::Stderr,
            },
            json!({"type": "tool-output", "conversationId": "c1", "turnId": "t1", "toolCallId": "k", "data": "out", "stream": "stderr"}),
        ),
        (
            AgentEvent::ToolResult {
                conversation_id: c.clone(),
                turn_id: t.clone(),
                step_id: "t1#0".into(),
                tool_call_id: "k".into(),
                tool_name: "sh".into(),
                content: "ok".into(),
                is_error: false,
                duration_ms: Some(12),
            },
            json!({"type": "tool-result", "conversationId": "c1", "turnId": "t1", "stepId": "t1#0", "toolCallId": "k", "toolName": "sh", "content": "ok", "isError": false, "durationMs": 12}),
        ),
        (
            AgentEvent::Usage {
                conversation_id: c.clone(),
                turn_id: t.clone(),
                usage: u,
                step_id: Some("t1#0".into()),
            },
            json!({"type": "usage", "conversationId": "c1", "turnId": "t1", "usage": {"inputTokens": 3, "outputTokens": 4}, "stepId": "t1#0"}),
        ),
        (
            AgentEvent::StepComplete {
                conversation_id: c.clone(),
                turn_id: t.clone(),
                step_id: "t1#0".into(),
                ttft_ms: Some(1),
                decode_ms: Some(2),
                gen_total_ms: Some(3),
            },
            json!({"type": "step-complete", "conversationId": "c1", "turnId": "t1", "stepId": "t1#0", "ttftMs": 1, "decodeMs": 2, "genTotalMs": 3}),
        ),
        (
            AgentEvent::StepComplete {
                conversation_id: c.clone(),
                turn_id: t.clone(),
                step_id: "t1#0".into(),
                ttft_ms: None,
                decode_ms: None,
                gen_total_ms: None,
            },
            json!({"type": "step-complete", "conversationId": "c1", "turnId": "t1", "stepId": "t1#0"}),
        ),
        (
            AgentEvent::ProviderRetry {
                conversation_id: c.clone(),
                turn_id: t.clone(),
                attempt: 0,
                delay_ms: 1000,
                message: "HTTP 429".into(),
                code: Some("429".into()),
            },
            json!({"type": "provider-retry", "conversationId": "c1", "turnId": "t1", "attempt": 0, "delayMs": 1000, "message": "HTTP 429", "code": "429"}),
        ),
        (
            AgentEvent::Steering { conversation_id: c.clone(), turn_id: t.clone(), text: "also".into() },
            json!({"type": "steering", "conversationId": "c1", "turnId": "t1", "text": "also"}),
        ),
        (
            AgentEvent::Error {
                conversation_id: c.clone(),
                turn_id: t.clone(),
                message: "bad".into(),
                code: None,
            },
            json!({"type": "error", "conversationId": "c1", "turnId": "t1", "message": "bad"}),
        ),
        (
            AgentEvent::Done {
                conversation_id: c.clone(),
                turn_id: t.clone(),
                reason: FinishReason::ToolCalls,
                duration_ms: Some(5),
                usage: Some(u),
                context_size: Some(7),
            },
            json!({"type": "done", "conversationId": "c1", "turnId": "t1", "reason": "tool-calls", "durationMs": 5, "usage": {"inputTokens": 3, "outputTokens": 4}, "contextSize": 7}),
        ),
        (
            AgentEvent::Done {
                conversation_id: c.clone(),
                turn_id: t.clone(),
                reason: FinishReason::Aborted,
                duration_ms: None,
                usage: None,
                context_size: None,
            },
            json!({"type": "done", "conversationId": "c1", "turnId": "t1", "reason": "aborted"}),
        ),
        (
            AgentEvent::TurnSealed { conversation_id: c.clone(), turn_id: t.clone() },
            json!({"type": "turn-sealed", "conversationId": "c1", "turnId": "t1"}),
        ),
        (
            AgentEvent::Status { conversation_id: c, status: "active".into() },
            json!({"type": "status", "conversationId": "c1", "status": "active"}),
        ),
    ];
    for (event, json) in cases {
        assert_eq!(event.type_name(), json["type"].as_str().unwrap());
        golden(event, json);
    }
}

#[test]
fn done_reasons_round_trip_including_ones_this_version_does_not_know() {
    for r in
        ["stop", "tool-calls", "length", "content-filter", "max-steps", "error", "aborted", "something-new"]
    {
        let parsed: FinishReason = serde_json::from_value(json!(r)).unwrap();
        assert_eq!(serde_json::to_value(&parsed).unwrap(), json!(r));
    }
    assert_eq!(FinishReason::parse("something-new"), FinishReason::Other("something-new".into()));
}

#[test]
fn an_unknown_event_type_parses_into_the_unknown_case_and_keeps_its_json() {
    let raw = json!({"type": "hologram", "conversationId": "c1", "turnId": "t1", "depth": 3});
    let e: AgentEvent = serde_json::from_value(raw.clone()).unwrap();
    assert_eq!(e, AgentEvent::Unknown(raw.clone()));
    assert_eq!(e.type_name(), "hologram");
    assert_eq!(serde_json::to_value(&e).unwrap(), raw, "re-serializes as received");
}

#[test]
fn a_known_event_with_a_missing_field_is_not_silently_accepted_as_known() {
    // `text-delta` without `delta` is not a valid text-delta; it must not
    // turn into one with an empty delta.
    let e: AgentEvent =
        serde_json::from_value(json!({"type": "text-delta", "conversationId": "c", "turnId": "t"})).unwrap();
    assert!(matches!(e, AgentEvent::Unknown(_)));
}

#[test]
fn metrics_and_conversation_meta() {
    let u = Usage { input_tokens: 1, output_tokens: 2, ..Usage::default() };
    golden(
        TurnMetrics {
            turn_id: "t1".into(),
            usage: u,
            duration_ms: Some(9),
            steps: vec![StepMetrics {
                step_id: "t1#0".into(),
                usage: u,
                ttft_ms: Some(1),
                decode_ms: None,
                gen_total_ms: Some(4),
            }],
            context_size: Some(3),
        },
        json!({"turnId": "t1", "usage": {"inputTokens": 1, "outputTokens": 2}, "durationMs": 9,
               "steps": [{"stepId": "t1#0", "usage": {"inputTokens": 1, "outputTokens": 2}, "ttftMs": 1, "genTotalMs": 4}],
               "contextSize": 3}),
    );
    golden(
        ConversationMeta {
            id: "c1".into(),
            created_at: 1_700_000_000_000,
            last_activity_at: 1_700_000_000_500,
            title: "Hello".into(),
            status: ConversationStatus::Active,
            workspace_id: "default".into(),
            compacted_from: None,
        },
        json!({"id": "c1", "createdAt": 1_700_000_000_000u64, "lastActivityAt": 1_700_000_000_500u64, "title": "Hello", "status": "active", "workspaceId": "default"}),
    );
}

#[test]
fn chunks_with_missing_fields_or_unknown_types_are_refused_clearly() {
    let e = serde_json::from_value::<Chunk>(json!({"type": "tool-call", "toolName": "x", "input": {}}))
        .unwrap_err();
    assert!(e.to_string().contains("missing field `toolCallId` in a `tool-call` chunk"), "{e}");
    let e = serde_json::from_value::<Chunk>(json!({"type": "hologram"})).unwrap_err();
    assert!(e.to_string().contains("unknown chunk type `hologram`"), "{e}");
    // A null tool input is an input, not a missing one.
    let c: Chunk = serde_json::from_value(
        json!({"type": "tool-call", "toolCallId": "a", "toolName": "x", "input": null}),
    )
    .unwrap();
    assert!(matches!(c, Chunk::ToolCall { input: Value::Null, .. }));
}
