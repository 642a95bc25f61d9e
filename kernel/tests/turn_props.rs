//! Property test: random scripted turns — text, reasoning, tool calls that
//! succeed, fail, panic or name unknown tools, usage, retryable and fatal
//! errors, aborts at random points — always keep the turn's invariants.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use dispatch_kernel::tool::{ToolError, ToolOutput};
use dispatch_kernel::wire::{AgentEvent, Chunk, FinishReason};
use proptest::prelude::*;
use serde_json::json;
use support::*;

#[derive(Debug, Clone)]
enum Gen {
    Text(String),
    Reasoning(String),
    /// Tool by index: echo, fail, boom (panics), ghost (unknown), stop (aborts the turn).
    Call(u8),
    Usage(u64, u64),
    Advance(u64),
    Retryable,
    Fatal,
    Abort,
}

fn gen_item() -> impl Strategy<Value = Gen> {
    prop_oneof![
        4 => "[a-z ]{1,6}".prop_map(Gen::Text),
        2 => "[a-z]{1,4}".prop_map(Gen::Reasoning),
        3 => (0u8..5).prop_map(Gen::Call),
        2 => (1u64..500, 1u64..100).prop_map(|(a, b)| Gen::Usage(a, b)),
        2 => (0u64..50).prop_map(Gen::Advance),
        1 => Just(Gen::Retryable),
        1 => Just(Gen::Fatal),
        1 => Just(Gen::Abort),
    ]
}

fn scenario() -> impl Strategy<Value = (Vec<Vec<Gen>>, u32)> {
    (prop::collection::vec(prop::collection::vec(gen_item(), 0..8), 1..7), 0u32..4)
}

fn build(script: &[Vec<Gen>]) -> Vec<Vec<Item>> {
    let mut n = 0;
    script
        .iter()
        .map(|step| {
            let mut items = Vec::new();
            for g in step {
                match g {
                    Gen::Text(s) => items.push(text(s)),
                    Gen::Reasoning(s) => items.push(reasoning(s)),
                    Gen::Call(k) => {
                        n += 1;
                        let name = ["echo", "fail", "boom", "ghost", "stop"][*k as usize];
                        items.push(call(&format!("call{n}"), name, json!({"n": n})));
                    }
                    Gen::Usage(a, b) => items.push(usage(*a, *b)),
                    Gen::Advance(ms) => items.push(Item::Advance(*ms)),
                    Gen::Retryable => items.push(retryable("overloaded")),
                    Gen::Fatal => items.push(fatal("bad")),
                    Gen::Abort => items.push(Item::Abort),
                }
            }
            items
        })
        .collect()
}

fn content(e: &AgentEvent) -> bool {
    matches!(
        e,
        AgentEvent::TextDelta { .. }
            | AgentEvent::ReasoningDelta { .. }
            | AgentEvent::ToolCall { .. }
            | AgentEvent::Usage { .. }
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_turns_keep_every_invariant((script, max_steps) in scenario()) {
        let stop_signal: Arc<std::sync::Mutex<Option<dispatch_kernel::runtime::AbortSignal>>> = Arc::default();
        let s = Arc::clone(&stop_signal);
        let mut h = Harness::new(build(&script)).tools(vec![
            tool("echo", true, |_, _| Box::pin(async { Ok(ToolOutput::ok("echo")) })),
            tool("fail", true, |_, _| Box::pin(async { Err(ToolError::Failed("nope".into())) })),
            tool("boom", false, |_, _| Box::pin(async { panic!("boom") })),
            tool("stop", false, move |_, _| {
                let sig = s.lock().unwrap().clone().unwrap();
                Box::pin(async move {
                    sig.abort();
                    futures::future::pending::<()>().await;
                    unreachable!()
                })
            }),
        ]);
        *stop_signal.lock().unwrap() = Some(h.abort.clone());
        h.max_steps = max_steps;
        let out = h.run();
        let events = h.events();

        // Framing: turn-start first, done exactly once and last.
        let starts = matches!(events.first(), Some(AgentEvent::TurnStart { .. }));
        prop_assert!(starts, "turn-start is not first");
        let dones = events.iter().filter(|e| matches!(e, AgentEvent::Done { .. })).count();
        prop_assert_eq!(dones, 1);
        let Some(AgentEvent::Done { reason, usage, context_size, .. }) = events.last() else {
            return Err(TestCaseError::fail("done is not last"));
        };
        prop_assert_eq!(reason, &out.reason);

        // Every tool-call event has exactly one later tool-result.
        let mut calls: HashMap<String, usize> = HashMap::new();
        let mut results: HashMap<String, usize> = HashMap::new();
        for (i, e) in events.iter().enumerate() {
            match e {
                AgentEvent::ToolCall { tool_call_id, .. } => {
                    prop_assert!(calls.insert(tool_call_id.clone(), i).is_none());
                }
                AgentEvent::ToolResult { tool_call_id, .. } => {
                    let at = calls.get(tool_call_id).copied();
                    prop_assert!(at.is_some_and(|c| c < i), "result before/without its call");
                    prop_assert!(results.insert(tool_call_id.clone(), i).is_none(), "two results");
                }
                _ => {}
            }
        }
        prop_assert_eq!(calls.len(), results.len());

        // The same holds for what is handed back for persistence.
        let chunk_calls: Vec<&String> = out.messages.iter().flat_map(|m| &m.chunks).filter_map(|c| match c {
            Chunk::ToolCall { tool_call_id, .. } => Some(tool_call_id), _ => None }).collect();
        let chunk_results: Vec<&String> = out.messages.iter().flat_map(|m| &m.chunks).filter_map(|c| match c {
            Chunk::ToolResult { tool_call_id, .. } => Some(tool_call_id), _ => None }).collect();
        let mut a = chunk_calls.clone(); a.sort();
        let mut b = chunk_results.clone(); b.sort();
        prop_assert_eq!(a, b);

        // No content is duplicated by a retry: a retry only ever follows a
        // stretch of the step with no content, and streamed text equals
        // persisted text.
        let mut since_step_start = false;
        for e in &events {
            match e {
                AgentEvent::TurnStart { .. } | AgentEvent::StepComplete { .. } => since_step_start = false,
                AgentEvent::ProviderRetry { .. } => prop_assert!(!since_step_start, "retry after content"),
                e if content(e) => since_step_start = true,
                _ => {}
            }
        }
        let streamed: String = events.iter().filter_map(|e| match e {
            AgentEvent::TextDelta { delta, .. } => Some(delta.as_str()), _ => None }).collect();
        let persisted: String = out.messages.iter().flat_map(|m| &m.chunks).filter_map(|c| match c {
            Chunk::Text { text } => Some(text.as_str()), _ => None }).collect();
        prop_assert_eq!(streamed, persisted);

        // Metrics are consistent.
        let mut last_step_usage = (0u64, 0u64);
        let mut step_usage = (0u64, 0u64);
        for e in &events {
            match e {
                AgentEvent::Usage { usage, .. } => {
                    step_usage.0 += usage.input_tokens;
                    step_usage.1 += usage.output_tokens;
                }
                AgentEvent::StepComplete { ttft_ms, decode_ms, gen_total_ms, .. } => {
                    if let (Some(t), Some(d)) = (ttft_ms, decode_ms) {
                        prop_assert_eq!(gen_total_ms.unwrap(), t + d);
                    }
                    last_step_usage = step_usage;
                    step_usage = (0, 0);
                }
                _ => {}
            }
        }
        match usage {
            Some(_) => prop_assert_eq!(*context_size, Some(last_step_usage.0 + last_step_usage.1)),
            None => prop_assert_eq!(*context_size, None),
        }

        // The step limit holds.
        if max_steps > 0 {
            prop_assert!(h.provider.requests.lock().unwrap().len() as u64 <= u64::from(max_steps) + 3 * u64::from(max_steps),
                "retries aside, no more steps than the limit");
            let steps = events.iter().filter(|e| matches!(e, AgentEvent::StepComplete { .. })).count();
            let _ = &steps;
            prop_assert!(steps <= max_steps as usize);
        }
        if out.reason == FinishReason::Aborted {
            prop_assert!(h.abort.is_aborted());
        }
    }
}
