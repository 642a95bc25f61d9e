//! The turn loop, one behaviour per test, against scripted fakes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use dispatch_kernel::reconcile::INTERRUPTED;
use dispatch_kernel::tool::{ToolError, ToolOutput};
use dispatch_kernel::turn::ABORTED;
use dispatch_kernel::wire::{AgentEvent, ChatMessage, Chunk, FinishReason, OutputStream, Role, Usage};
use serde_json::json;
use support::*;

fn done_reason(h: &Harness) -> FinishReason {
    match h.events().last().unwrap() {
        AgentEvent::Done { reason, .. } => reason.clone(),
        other => panic!("last event is {other:?}"),
    }
}

fn tool_results(h: &Harness) -> Vec<(String, String, bool)> {
    h.events()
        .into_iter()
        .filter_map(|e| match e {
            AgentEvent::ToolResult { tool_call_id, content, is_error, .. } => {
                Some((tool_call_id, content, is_error))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn text_and_reasoning_stream_as_deltas_and_one_assistant_message() {
    let h = Harness::new(vec![vec![
        reasoning("think"),
        reasoning("ing"),
        text("Hel"),
        text("lo"),
        finish(FinishReason::Stop),
    ]]);
    let out = h.run();
    assert_eq!(
        h.types(),
        [
            "turn-start",
            "reasoning-delta",
            "reasoning-delta",
            "text-delta",
            "text-delta",
            "step-complete",
            "done"
        ]
    );
    assert_eq!(out.reason, FinishReason::Stop);
    assert_eq!(
        out.messages,
        vec![ChatMessage {
            role: Role::Assistant,
            chunks: vec![Chunk::Thinking { text: "thinking".into() }, Chunk::Text { text: "Hello".into() }]
        }]
    );
}

#[test]
fn tool_calls_run_and_their_results_feed_the_next_step() {
    let h = Harness::new(vec![
        vec![text("let me look"), call("a", "echo", json!({"x": 1})), finish(FinishReason::ToolCalls)],
        vec![text("done"), finish(FinishReason::Stop)],
    ])
    .tools(vec![echo(true)]);
    let out = h.run();
    assert_eq!(
        h.types(),
        [
            "turn-start",
            "text-delta",
            "tool-call",
            "step-complete",
            "tool-result",
            "text-delta",
            "step-complete",
            "done"
        ]
    );
    assert_eq!(tool_results(&h), vec![("a".into(), r#"{"x":1}"#.into(), false)]);
    // The second request carried the call and its result.
    let second = &h.provider.requests.lock().unwrap()[1];
    assert_eq!(second.len(), 3);
    assert!(
        matches!(&second[2].chunks[0], Chunk::ToolResult { tool_call_id, step_id: Some(s), .. } if tool_call_id == "a" && s == "t1#0")
    );
    assert_eq!(out.messages.len(), 3, "assistant, tool result, final assistant");
    assert_eq!(out.reason, FinishReason::Stop);
    // Tools are offered to the provider by name.
    assert_eq!(h.provider.tool_names.lock().unwrap()[0], ["echo"]);
}

#[test]
fn step_ids_mark_tool_events_tool_chunks_and_usage() {
    let h = Harness::new(vec![
        vec![call("a", "echo", json!({})), usage(10, 2)],
        vec![call("b", "echo", json!({})), usage(20, 3)],
        vec![text("ok")],
    ])
    .tools(vec![echo(true)]);
    let out = h.run();
    for e in h.events() {
        match e {
            AgentEvent::ToolCall { tool_call_id, step_id, .. }
            | AgentEvent::ToolResult { tool_call_id, step_id, .. } => {
                let expected = if tool_call_id == "a" { "t1#0" } else { "t1#1" };
                assert_eq!(step_id, expected);
            }
            AgentEvent::Usage { step_id, usage, .. } => {
                let expected = if usage.input_tokens == 10 { "t1#0" } else { "t1#1" };
                assert_eq!(step_id.as_deref(), Some(expected));
            }
            _ => {}
        }
    }
    for m in &out.messages {
        for c in &m.chunks {
            if let Chunk::ToolCall { step_id, .. } | Chunk::ToolResult { step_id, .. } = c {
                assert!(step_id.as_deref().unwrap().starts_with("t1#"));
            }
        }
    }
}

#[test]
fn concurrency_safe_calls_of_one_step_run_in_parallel() {
    let (active, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let h = Harness::new(vec![
        vec![call("a", "read", json!({})), call("b", "read", json!({})), call("c", "read", json!({}))],
        vec![text("ok")],
    ])
    .tools(vec![counted("read", true, 3, Arc::clone(&active), Arc::clone(&peak))]);
    h.run();
    assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 3);
    // Results still come back in call order.
    let ids: Vec<String> = tool_results(&h).into_iter().map(|r| r.0).collect();
    assert_eq!(ids, ["a", "b", "c"]);
}

#[test]
fn parallelism_is_bounded() {
    let (active, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut h = Harness::new(vec![
        (0..6).map(|i| call(&format!("c{i}"), "read", json!({}))).collect(),
        vec![text("ok")],
    ])
    .tools(vec![counted("read", true, 3, Arc::clone(&active), Arc::clone(&peak))]);
    h.max_parallel_tools = 2;
    h.run();
    assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(tool_results(&h).len(), 6);
}

#[test]
fn a_batch_with_an_unsafe_tool_runs_in_order() {
    // Each call logs when it starts and ends, yielding in between: run
    // one after the other, in call order, the log is a, a, b, b, c, c.
    let log: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let logged = |name: &'static str, safe: bool| {
        let log = Arc::clone(&log);
        tool(name, safe, move |_, ctx| {
            let log = Arc::clone(&log);
            Box::pin(async move {
                log.lock().unwrap().push(format!("start {}", ctx.tool_call_id));
                for _ in 0..3 {
                    YieldOnce(false).await;
                }
                log.lock().unwrap().push(format!("end {}", ctx.tool_call_id));
                Ok(ToolOutput::ok("done"))
            })
        })
    };
    let h = Harness::new(vec![
        vec![call("a", "read", json!({})), call("b", "write", json!({})), call("c", "read", json!({}))],
        vec![text("ok")],
    ])
    .tools(vec![logged("read", true), logged("write", false)]);
    h.run();
    assert_eq!(*log.lock().unwrap(), ["start a", "end a", "start b", "end b", "start c", "end c"]);
}

#[test]
fn a_results_images_follow_it_in_the_tool_message_and_reach_the_next_step() {
    use dispatch_kernel::tool::ImageRef;
    let png =
        ImageRef { url: "data:image/png;base64,iVBORw0KGgo=".into(), mime_type: Some("image/png".into()) };
    let shot = {
        let png = png.clone();
        tool("shot", false, move |_, _| {
            let png = png.clone();
            Box::pin(async move { Ok(ToolOutput::ok("a screenshot").with_images(vec![png.clone(), png])) })
        })
    };
    let h = Harness::new(vec![vec![call("1", "shot", json!({}))], vec![text("seen")]]).tools(vec![shot]);
    h.run();
    // The event is the text alone (the wire's `tool-result` has no images).
    assert_eq!(tool_results(&h), vec![("1".to_owned(), "a screenshot".to_owned(), false)]);
    let second = &h.provider.requests.lock().unwrap()[1];
    let tool_message = second.last().unwrap();
    assert_eq!(tool_message.role, Role::Tool);
    let image = Chunk::Image { url: png.url.clone(), mime_type: png.mime_type.clone() };
    assert!(
        matches!(&tool_message.chunks[0], Chunk::ToolResult { content, .. } if content == "a screenshot")
    );
    assert_eq!(tool_message.chunks[1..], [image.clone(), image]);
}

#[test]
fn unknown_tool_invalid_input_failure_and_panic_are_results_the_model_reads() {
    let failing = tool("fail", false, |_, _| Box::pin(async { Err(ToolError::Failed("disk full".into())) }));
    let picky = tool("picky", false, |_, _| {
        Box::pin(async { Err(ToolError::InvalidInput("`path` is required".into())) })
    });
    let panicking = tool("boom", false, |_, _| Box::pin(async { panic!("tool exploded") }));
    let panicking_early = tool("boom-early", false, |_, _| panic!("tool exploded before its future"));
    let h = Harness::new(vec![
        vec![
            call("1", "nope", json!({})),
            call("2", "echo", json!("not an object")),
            call("3", "fail", json!({})),
            call("4", "picky", json!({})),
            call("5", "boom", json!({})),
            call("6", "boom-early", json!({})),
        ],
        vec![text("recovered")],
    ])
    .tools(vec![echo(false), failing, picky, panicking, panicking_early]);
    let out = h.run();
    let results = tool_results(&h);
    assert!(results.iter().all(|r| r.2), "all are errors: {results:?}");
    assert_eq!(results[0].1, "Unknown tool `nope`. Available tools: boom, boom-early, echo, fail, picky.");
    assert!(
        results[1].1.starts_with("Invalid input for tool `echo`: expected a JSON object"),
        "{}",
        results[1].1
    );
    assert_eq!(results[2].1, "Tool `fail` failed: disk full");
    assert_eq!(results[3].1, "Invalid input for tool `picky`: `path` is required");
    assert_eq!(results[4].1, "Tool `boom` panicked: tool exploded");
    assert_eq!(results[5].1, "Tool `boom-early` panicked: tool exploded before its future");
    assert_eq!(out.reason, FinishReason::Stop, "the turn continued");
}

#[test]
fn tool_output_streams_as_events_between_call_and_result() {
    let shell = tool("sh", false, |_, ctx| {
        Box::pin(async move {
            (ctx.output)("line 1\n", OutputStream::Stdout);
            (ctx.output)("oops\n", OutputStream::Stderr);
            Ok(ToolOutput::ok("exit 0"))
        })
    });
    let h = Harness::new(vec![vec![call("a", "sh", json!({}))], vec![text("ok")]]).tools(vec![shell]);
    h.run();
    let outputs: Vec<(String, OutputStream)> = h
        .events()
        .into_iter()
        .filter_map(|e| match e {
            AgentEvent::ToolOutput { data, stream, tool_call_id, .. } => {
                assert_eq!(tool_call_id, "a");
                Some((data, stream))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        outputs,
        vec![("line 1\n".into(), OutputStream::Stdout), ("oops\n".into(), OutputStream::Stderr)]
    );
    let types = h.types();
    let pos = |t: &str| types.iter().position(|x| x == t).unwrap();
    assert!(pos("tool-call") < pos("tool-output") && pos("tool-output") < pos("tool-result"));
}

#[test]
fn abort_before_the_first_step_ends_at_once() {
    let h = Harness::new(vec![vec![text("never")]]);
    h.abort.abort();
    let out = h.run();
    assert_eq!(h.types(), ["turn-start", "done"]);
    assert_eq!(out.reason, FinishReason::Aborted);
    assert!(h.provider.requests.lock().unwrap().is_empty());
}

#[test]
fn abort_mid_stream_keeps_the_partial_text_and_answers_every_call() {
    let h = Harness::new(vec![vec![text("partial "), call("a", "echo", json!({})), Item::Abort, Item::Hang]])
        .tools(vec![echo(true)]);
    let out = h.run();
    assert_eq!(done_reason(&h), FinishReason::Aborted);
    assert_eq!(tool_results(&h), vec![("a".into(), ABORTED.into(), true)]);
    assert_eq!(out.messages[0].chunks[0], Chunk::Text { text: "partial ".into() });
    assert!(
        matches!(&out.messages[1].chunks[0], Chunk::ToolResult { tool_call_id, is_error: true, .. } if tool_call_id == "a")
    );
    assert_eq!(h.provider.requests.lock().unwrap().len(), 1, "no further step");
}

#[test]
fn abort_mid_tool_seals_the_turn_with_a_result_for_every_call() {
    let abort = Arc::new(std::sync::Mutex::new(None::<dispatch_kernel::runtime::AbortSignal>));
    let a = Arc::clone(&abort);
    // `slow` fires the abort and then waits forever, like a hung command.
    let slow = tool("slow", true, move |_, _| {
        let signal = a.lock().unwrap().clone().unwrap();
        Box::pin(async move {
            signal.abort();
            futures::future::pending::<()>().await;
            unreachable!()
        })
    });
    let h = Harness::new(vec![
        vec![call("fast", "echo", json!({})), call("stuck", "slow", json!({}))],
        vec![text("never")],
    ])
    .tools(vec![echo(true), slow]);
    *abort.lock().unwrap() = Some(h.abort.clone());
    let out = h.run();
    assert_eq!(done_reason(&h), FinishReason::Aborted);
    let results = tool_results(&h);
    assert_eq!(results.len(), 2);
    assert_eq!(results[1], ("stuck".into(), ABORTED.into(), true));
    let calls =
        out.messages.iter().flat_map(|m| &m.chunks).filter(|c| matches!(c, Chunk::ToolCall { .. })).count();
    let answers =
        out.messages.iter().flat_map(|m| &m.chunks).filter(|c| matches!(c, Chunk::ToolResult { .. })).count();
    assert_eq!((calls, answers), (2, 2));
    assert_eq!(h.provider.requests.lock().unwrap().len(), 1);
}

#[test]
fn a_retryable_error_before_any_content_is_retried_after_a_provider_retry_event() {
    let h = Harness::new(vec![
        vec![retryable("overloaded")],
        vec![retryable("still overloaded")],
        vec![text("hi")],
    ]);
    let out = h.run();
    assert_eq!(out.reason, FinishReason::Stop);
    let retries: Vec<(u32, u64, String)> = h
        .events()
        .into_iter()
        .filter_map(|e| match e {
            AgentEvent::ProviderRetry { attempt, delay_ms, message, code, .. } => {
                assert_eq!(code.as_deref(), Some("429"));
                Some((attempt, delay_ms, message))
            }
            _ => None,
        })
        .collect();
    assert_eq!(retries, vec![(0, 100, "overloaded".into()), (1, 200, "still overloaded".into())]);
    assert_eq!(*h.sleep.slept.lock().unwrap(), [Duration::from_millis(100), Duration::from_millis(200)]);
    assert_eq!(
        h.types(),
        ["turn-start", "provider-retry", "provider-retry", "text-delta", "step-complete", "done"]
    );
}

#[test]
fn retry_after_from_the_server_is_honoured() {
    let mut e = dispatch_kernel::provider::ProviderError::retryable("slow down", Some("429".into()));
    e.retry_after = Some(Duration::from_secs(3));
    let h = Harness::new(vec![vec![Item::Fail(e)], vec![text("ok")]]);
    h.run();
    assert_eq!(*h.sleep.slept.lock().unwrap(), [Duration::from_secs(3)]);
}

#[test]
fn an_error_after_content_is_not_retried() {
    let h =
        Harness::new(vec![vec![text("half an ans"), retryable("connection reset")], vec![text("DUPLICATE")]]);
    let out = h.run();
    assert_eq!(out.reason, FinishReason::Error);
    assert_eq!(h.types(), ["turn-start", "text-delta", "error", "step-complete", "done"]);
    assert_eq!(
        out.messages[0].chunks,
        vec![
            Chunk::Text { text: "half an ans".into() },
            Chunk::Error { message: "connection reset".into(), code: Some("429".into()) }
        ]
    );
}

#[test]
fn an_exhausted_retry_budget_ends_with_error_then_done() {
    let h = Harness::new((0..5).map(|i| vec![retryable(&format!("busy {i}"))]).collect());
    let out = h.run();
    assert_eq!(out.reason, FinishReason::Error);
    assert_eq!(
        h.types(),
        [
            "turn-start",
            "provider-retry",
            "provider-retry",
            "provider-retry",
            "error",
            "step-complete",
            "done"
        ]
    );
    assert!(matches!(&h.events()[4], AgentEvent::Error { message, .. } if message == "busy 3"));
}

#[test]
fn a_fatal_error_is_not_retried() {
    let h = Harness::new(vec![vec![fatal("bad request: unknown model")], vec![text("never")]]);
    let out = h.run();
    assert_eq!(out.reason, FinishReason::Error);
    assert!(h.sleep.slept.lock().unwrap().is_empty());
    assert_eq!(h.provider.requests.lock().unwrap().len(), 1);
}

#[test]
fn a_panicking_provider_is_an_error_not_a_crash() {
    let h = Harness::new(vec![vec![text("a"), Item::Panic]]);
    let out = h.run();
    assert_eq!(out.reason, FinishReason::Error);
    assert!(h.events().iter().any(
        |e| matches!(e, AgentEvent::Error { message, .. } if message.contains("scripted provider panic"))
    ));
}

#[test]
fn calls_of_a_failed_step_are_answered_without_running() {
    let ran = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&ran);
    let counting = tool("count", false, move |_, _| {
        r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async { Ok(ToolOutput::ok("")) })
    });
    let h =
        Harness::new(vec![vec![call("a", "count", json!({})), fatal("stream broke")]]).tools(vec![counting]);
    let out = h.run();
    assert_eq!(out.reason, FinishReason::Error);
    assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(tool_results(&h).len(), 1);
}

#[test]
fn the_step_limit_ends_the_turn_with_max_steps() {
    let mut h = Harness::new((0..5).map(|i| vec![call(&format!("c{i}"), "echo", json!({}))]).collect())
        .tools(vec![echo(true)]);
    h.max_steps = 2;
    let out = h.run();
    assert_eq!(out.reason, FinishReason::MaxSteps);
    assert_eq!(h.provider.requests.lock().unwrap().len(), 2);
    assert_eq!(tool_results(&h).len(), 2, "the last step's calls still got results");
}

#[test]
fn steering_is_drained_at_the_tool_result_boundary_and_each_message_joins_the_next_call() {
    let h = Harness::new(vec![vec![call("a", "echo", json!({}))], vec![text("adjusted")]])
        .tools(vec![echo(true)]);
    h.steering.lock().unwrap().push_back(vec!["actually, use Rust".into(), "and be brief".into()]);
    let out = h.run();
    let steering: Vec<String> = h
        .events()
        .into_iter()
        .filter_map(|e| match e {
            AgentEvent::Steering { text, .. } => Some(text),
            _ => None,
        })
        .collect();
    // One message (and one event) each: joined, two large ones could be
    // more than one stored chunk may hold (issue 31).
    assert_eq!(steering, ["actually, use Rust", "and be brief"]);
    let types = h.types();
    let pos = |t: &str| types.iter().position(|x| x == t).unwrap();
    assert!(pos("tool-result") < pos("steering"));
    let second = &h.provider.requests.lock().unwrap()[1];
    let n = second.len();
    assert_eq!(
        &second[n - 2..],
        [ChatMessage::user("actually, use Rust"), ChatMessage::user("and be brief")]
    );
    assert!(out.messages.contains(&ChatMessage::user("and be brief")));
}

/// Regression (issue 31): a step that could not be saved ended the turn
/// with `done { reason: "stop" }` (or `aborted`) and the answer missing
/// from history; it ends with an `error` naming why and `reason: "error"`.
#[test]
fn a_step_that_cannot_be_saved_ends_the_turn_as_an_error() {
    let mut h = Harness::new(vec![vec![text("the answer")]]);
    h.fail_saves_after = Some(0);
    let out = h.run();
    assert_eq!(out.reason, FinishReason::Error);
    let events = h.events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, AgentEvent::Error { message, .. } if message.contains("disk is full"))),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(AgentEvent::Done { reason: FinishReason::Error, .. })),
        "{events:?}"
    );

    // A failure mid-turn stops before the next model call.
    let mut h =
        Harness::new(vec![vec![call("a", "echo", json!({}))], vec![text("never")]]).tools(vec![echo(true)]);
    h.fail_saves_after = Some(0);
    assert_eq!(h.run().reason, FinishReason::Error);
    assert_eq!(h.provider.requests.lock().unwrap().len(), 1);
}

#[test]
fn each_steps_messages_reach_the_step_sink_in_order() {
    let h = Harness::new(vec![vec![text("a"), call("x", "echo", json!({}))], vec![text("b")]])
        .tools(vec![echo(true)]);
    let out = h.run();
    let persisted: Vec<ChatMessage> = h.persisted.lock().unwrap().iter().flatten().cloned().collect();
    assert_eq!(persisted, out.messages);
    // The whole conversation after the turn: its history, then what it added.
    assert_eq!(out.history[..h.history.len()], h.history[..]);
    assert_eq!(out.history[h.history.len()..], out.messages[..]);
    assert_eq!(h.persisted.lock().unwrap().len(), 2, "one batch per step");
}

#[test]
fn metrics_come_from_the_injected_clock() {
    let slow = tool("slow", false, |_, _| Box::pin(async { Ok(ToolOutput::ok("")) }));
    let h = Harness::new(vec![
        vec![Item::Advance(30), text("a"), Item::Advance(20), call("x", "slow", json!({})), usage(100, 10)],
        vec![Item::Advance(5), text("b"), Item::Advance(5), usage(150, 20)],
    ])
    .tools(vec![slow]);
    let out = h.run();
    let steps: Vec<(Option<u64>, Option<u64>, Option<u64>)> = h
        .events()
        .into_iter()
        .filter_map(|e| match e {
            AgentEvent::StepComplete { ttft_ms, decode_ms, gen_total_ms, .. } => {
                Some((ttft_ms, decode_ms, gen_total_ms))
            }
            _ => None,
        })
        .collect();
    assert_eq!(steps, vec![(Some(30), Some(20), Some(50)), (Some(5), Some(5), Some(10))]);
    match h.events().last().unwrap() {
        AgentEvent::Done { duration_ms, usage, context_size, .. } => {
            assert_eq!(*duration_ms, Some(60));
            assert_eq!(*usage, Some(Usage { input_tokens: 250, output_tokens: 30, ..Usage::default() }));
            assert_eq!(*context_size, Some(170), "final step's input + output");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(out.metrics.steps.len(), 2);
    assert_eq!(out.metrics.steps[0].usage.input_tokens, 100);
    assert_eq!(out.metrics.context_size, Some(170));
    assert!(h.events().iter().any(|e| matches!(e, AgentEvent::ToolResult { duration_ms: Some(0), .. })));
}

#[test]
fn no_usage_means_no_usage_or_context_size_on_done() {
    let h = Harness::new(vec![vec![text("hi")]]);
    h.run();
    assert!(matches!(h.events().last().unwrap(), AgentEvent::Done { usage: None, context_size: None, .. }));
}

#[test]
fn history_is_reconciled_before_the_provider_sees_it() {
    let mut h = Harness::new(vec![vec![text("ok")]]);
    h.history = vec![
        ChatMessage::user("earlier"),
        ChatMessage {
            role: Role::Assistant,
            chunks: vec![Chunk::ToolCall {
                tool_call_id: "old".into(),
                tool_name: "echo".into(),
                input: json!({}),
                step_id: Some("t0#0".into()),
            }],
        },
        ChatMessage::user("now"),
    ];
    h.run();
    let sent = &h.provider.requests.lock().unwrap()[0];
    assert_eq!(sent.len(), 4);
    assert!(
        matches!(&sent[2].chunks[0], Chunk::ToolResult { tool_call_id, content, is_error: true, .. } if tool_call_id == "old" && content == INTERRUPTED)
    );
}

/// Regression (issue 31): `done.contextSize` was the final step's input +
/// output tokens added with `+`, which wraps (or panics in a debug build)
/// on a provider's absurd usage; it saturates.
#[test]
fn the_context_size_saturates_instead_of_wrapping() {
    let h = Harness::new(vec![vec![text("a"), usage(u64::MAX - 1, 10)]]);
    let out = h.run();
    assert_eq!(out.metrics.context_size, Some(u64::MAX));
    let done = h.events().into_iter().find_map(|e| match e {
        AgentEvent::Done { context_size, .. } => Some(context_size),
        _ => None,
    });
    assert_eq!(done, Some(Some(u64::MAX)));
}

/// At a tool-result boundary the compactor may hand back a compacted
/// history: the next step is sent that, the turn goes on, and what it
/// adds after lands after it. It is asked with the step's input + output
/// tokens, and not at all after the last step.
#[test]
fn a_compactor_replaces_the_history_at_a_tool_result_boundary_and_the_turn_goes_on() {
    let mut h = Harness::new(vec![
        vec![call("a", "echo", json!({"x": 1})), usage(100, 20), finish(FinishReason::ToolCalls)],
        vec![call("b", "echo", json!({"x": 2})), usage(150, 30), finish(FinishReason::ToolCalls)],
        vec![text("done"), usage(60, 5), finish(FinishReason::Stop)],
    ])
    .tools(vec![echo(true)]);
    let summary = ChatMessage { role: Role::System, chunks: vec![Chunk::text("summary so far")] };
    h.compact_to = Some(vec![summary.clone(), ChatMessage::user("hello")]);
    let out = h.run();
    assert_eq!(out.reason, FinishReason::Stop);
    assert_eq!(
        *h.compact_sizes.lock().unwrap(),
        [120, 180],
        "asked at both boundaries, not after the last step"
    );
    let requests = h.provider.requests.lock().unwrap();
    assert_eq!(
        requests[1],
        [summary.clone(), ChatMessage::user("hello")],
        "the second step ran on the compacted history"
    );
    assert_eq!(requests[2].len(), 4, "the compacted history, then the second step's call and result");
    assert_eq!(out.history[0], summary);
    assert_eq!(out.messages.len(), 5, "every message the turn added is still handed back to be saved");
}

/// A viewer changes what each step's request shows the model (images
/// described, placeholders) and nothing else: the history the turn keeps
/// and hands back to be saved is the real one, and a retry sends the same
/// view without asking again.
#[test]
fn a_viewer_changes_each_request_but_not_the_history() {
    let mut h = Harness::new(vec![
        vec![call("a", "echo", json!({"x": 1})), finish(FinishReason::ToolCalls)],
        vec![Item::Fail(dispatch_kernel::provider::ProviderError::retryable("overloaded", None))],
        vec![text("done"), finish(FinishReason::Stop)],
    ])
    .tools(vec![echo(true)]);
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&asked);
    h.view = Some(Arc::new(move |messages: &[ChatMessage]| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut shown = messages.to_vec();
        shown.push(ChatMessage::user(format!("[viewed {}]", messages.len())));
        Box::pin(std::future::ready(Some(shown)))
    }));
    let out = h.run();
    assert_eq!(out.reason, FinishReason::Stop);
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2, "once per step, not per attempt");
    let requests = h.provider.requests.lock().unwrap();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0].last(), Some(&ChatMessage::user("[viewed 1]")));
    assert_eq!(requests[1], requests[2], "the retry sends the same view");
    assert_eq!(requests[2].last(), Some(&ChatMessage::user("[viewed 3]")));
    assert!(
        !out.history.iter().chain(out.messages.iter()).any(|m| m == &ChatMessage::user("[viewed 1]")),
        "the view is not kept"
    );
    assert_eq!(out.history.len(), 4, "hello, the call, its result, the answer");
}

/// An abort while the viewer works (describing images can take a model
/// call) ends the turn as aborted at once, without a request.
#[test]
fn an_abort_during_the_viewer_ends_the_turn() {
    let mut h = Harness::new(vec![vec![text("never"), finish(FinishReason::Stop)]]);
    let abort = h.abort.clone();
    h.view = Some(Arc::new(move |_: &[ChatMessage]| {
        abort.abort();
        Box::pin(futures::future::pending())
    }));
    let out = h.run();
    assert_eq!(out.reason, FinishReason::Aborted);
    assert!(h.provider.requests.lock().unwrap().is_empty(), "nothing was sent");
    assert!(out.messages.is_empty());
}

// ---- telemetry (the observer) -----------------------------------------

fn traces(h: &Harness) -> Vec<dispatch_protocol::trace::TraceEvent> {
    h.traces.lock().unwrap().clone()
}

#[test]
fn every_request_attempt_is_traced_with_why_it_was_retried() {
    use dispatch_protocol::trace::{RequestOutcome, TraceBody};
    let h = Harness::new(vec![
        vec![retryable("overloaded")],
        vec![Item::Advance(40), text("hi"), Item::Advance(60), usage(10, 2)],
    ]);
    h.run();
    let requests: Vec<_> = traces(&h)
        .into_iter()
        .filter_map(|t| match t.body {
            TraceBody::Request {
                attempt,
                outcome,
                ttft_ms,
                decode_ms,
                usage,
                status,
                error,
                retry_delay_ms,
                ..
            } => Some((
                t.step_id,
                attempt,
                outcome,
                ttft_ms,
                decode_ms,
                usage.map(|u| u.output_tokens),
                status,
                error,
                retry_delay_ms,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        requests,
        vec![
            (
                Some("t1#0".into()),
                0,
                RequestOutcome::Retry,
                None,
                None,
                None,
                Some("429".into()),
                Some("overloaded".into()),
                Some(100)
            ),
            (Some("t1#0".into()), 1, RequestOutcome::Ok, Some(40), Some(60), Some(2), None, None, None),
        ]
    );
}

#[test]
fn tool_traces_say_how_each_call_ended() {
    use dispatch_protocol::trace::{ToolOutcome, TraceBody};
    let failing = tool("fail", false, |_, _| Box::pin(async { Err(ToolError::Failed("disk full".into())) }));
    let late =
        tool("late", false, |_, _| Box::pin(async { Ok(ToolOutput::timed_out("[timed out after 5 ms]")) }));
    let big = tool("big", false, |_, _| Box::pin(async { Ok(ToolOutput::ok("y".repeat(20_000))) }));
    let h = Harness::new(vec![
        vec![
            call("1", "echo", json!({"a": 1})),
            call("2", "fail", json!({})),
            call("3", "late", json!({})),
            call("4", "big", json!({})),
            call("5", "nope", json!({})),
        ],
        vec![text("done")],
    ])
    .tools(vec![echo(false), failing, late, big]);
    h.run();
    let tools: Vec<_> = traces(&h)
        .into_iter()
        .filter_map(|t| match t.body {
            TraceBody::Tool { tool_call_id, outcome, output, output_bytes, input, .. } => {
                Some((tool_call_id, outcome, output.len(), output_bytes, input))
            }
            _ => None,
        })
        .collect();
    assert_eq!(tools.len(), 5, "{tools:?}");
    assert_eq!(tools[0].1, ToolOutcome::Ok);
    assert_eq!(tools[0].4, json!({"a": 1}));
    assert_eq!(tools[1].1, ToolOutcome::Error);
    assert_eq!(tools[2].1, ToolOutcome::Timeout);
    assert_eq!(
        (tools[3].1, tools[3].2, tools[3].3),
        (ToolOutcome::Ok, dispatch_protocol::trace::MAX_TRACE_TEXT, 20_000)
    );
    assert_eq!(tools[4].1, ToolOutcome::Error);
}

#[test]
fn an_aborted_call_is_traced_as_aborted() {
    use dispatch_protocol::trace::{ToolOutcome, TraceBody};
    let abort = Arc::new(std::sync::Mutex::new(None::<dispatch_kernel::runtime::AbortSignal>));
    let a = Arc::clone(&abort);
    let slow = tool("slow", false, move |_, _| {
        let signal = a.lock().unwrap().clone().unwrap();
        Box::pin(async move {
            signal.abort();
            futures::future::pending::<()>().await;
            unreachable!()
        })
    });
    let h = Harness::new(vec![vec![call("stuck", "slow", json!({})), call("after", "echo", json!({}))]])
        .tools(vec![echo(false), slow]);
    *abort.lock().unwrap() = Some(h.abort.clone());
    h.run();
    let outcomes: Vec<ToolOutcome> = traces(&h)
        .into_iter()
        .filter_map(|t| match t.body {
            TraceBody::Tool { outcome, .. } => Some(outcome),
            _ => None,
        })
        .collect();
    assert_eq!(outcomes, [ToolOutcome::Aborted, ToolOutcome::Aborted]);
}

/// Regression guard: each call's trace ends when that call ended, not
/// when the step's last call did.
#[test]
fn each_tool_trace_ends_when_its_own_call_ended() {
    use dispatch_protocol::trace::TraceBody;
    let h = Harness::new(vec![
        vec![call("1", "slow_a", json!({})), call("2", "slow_b", json!({}))],
        vec![text("done")],
    ]);
    let clock = Arc::clone(&h.clock);
    let clock_b = Arc::clone(&h.clock);
    let a = tool("slow_a", false, move |_, _| {
        clock.advance(10);
        Box::pin(async { Ok(ToolOutput::ok("a")) })
    });
    let b = tool("slow_b", false, move |_, _| {
        clock_b.advance(30);
        Box::pin(async { Ok(ToolOutput::ok("b")) })
    });
    let h = h.tools(vec![a, b]);
    h.run();
    let spans: Vec<(u64, u64)> = traces(&h)
        .into_iter()
        .filter(|t| matches!(t.body, TraceBody::Tool { .. }))
        .map(|t| (t.started_at, t.ended_at))
        .collect();
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].1 - spans[0].0, 10, "{spans:?}");
    assert_eq!(spans[1].1 - spans[1].0, 30, "{spans:?}");
    assert_eq!(spans[0].1, spans[1].0, "the second starts when the first ended");
}
