//! Kernel overhead per step: a 100-step turn against an instant provider
//! (one text delta, one tool call, usage per step) and a no-op tool, with
//! events going to a no-op emitter. Everything measured is the turn loop.
//!
//! ```sh
//! cargo bench -p dispatch-kernel --bench turn
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dispatch_kernel::protocol::BoxFuture;
use dispatch_kernel::provider::{Provider, ProviderError, ProviderEvent, ProviderOptions, StepRequest};
use dispatch_kernel::runtime::{AbortSignal, Clock, RetryPolicy, Sleep};
use dispatch_kernel::tool::{Tool, ToolContext, ToolError, ToolOutput};
use dispatch_kernel::turn::{run_turn, TurnInput};
use dispatch_kernel::wire::{ChatMessage, FinishReason, Usage};
use futures::stream::BoxStream;
use serde_json::{json, Value};

const STEPS: usize = 100;

/// Calls the no-op tool on every step but the last, which answers.
struct Instant {
    step: AtomicUsize,
}

impl Provider for Instant {
    fn stream<'a>(&'a self, _: StepRequest<'a>) -> BoxStream<'a, Result<ProviderEvent, ProviderError>> {
        let n = self.step.fetch_add(1, Ordering::Relaxed);
        let mut events = vec![
            Ok(ProviderEvent::TextDelta("working on it".into())),
            Ok(ProviderEvent::Usage(Usage { input_tokens: 1000, output_tokens: 20, ..Usage::default() })),
        ];
        if n + 1 < STEPS {
            events.push(Ok(ProviderEvent::ToolCall {
                id: format!("call-{n}"),
                name: "noop".into(),
                input: json!({"i": n}),
            }));
            events.push(Ok(ProviderEvent::Finish(FinishReason::ToolCalls)));
        } else {
            events.push(Ok(ProviderEvent::Finish(FinishReason::Stop)));
        }
        Box::pin(futures::stream::iter(events))
    }
}

struct Noop;
impl Tool for Noop {
    fn name(&self) -> &str {
        "noop"
    }
    fn description(&self) -> &str {
        "does nothing"
    }
    fn input_schema(&self) -> Value {
        json!({"type": "object"})
    }
    fn concurrency_safe(&self) -> bool {
        true
    }
    fn execute(&self, _: Value, _: ToolContext) -> BoxFuture<Result<ToolOutput, ToolError>> {
        Box::pin(async { Ok(ToolOutput::ok("ok")) })
    }
}

struct Zero;
impl Clock for Zero {
    fn now_ms(&self) -> u64 {
        0
    }
}
impl Sleep for Zero {
    fn sleep(&self, _: Duration) -> BoxFuture<()> {
        Box::pin(async {})
    }
}

fn turn(c: &mut Criterion) {
    let tools: Vec<Arc<dyn Tool>> = vec![Arc::new(Noop)];
    let mut g = c.benchmark_group("kernel_turn");
    g.throughput(Throughput::Elements(STEPS as u64));
    g.bench_function("100_steps_instant_provider_noop_tool", |b| {
        b.iter(|| {
            let provider = Instant { step: AtomicUsize::new(0) };
            let input = TurnInput {
                conversation_id: "c".into(),
                turn_id: "t".into(),
                history: vec![ChatMessage::user("go")],
                provider: &provider,
                options: ProviderOptions::default(),
                tools: tools.clone(),
                cwd: None,
                abort: AbortSignal::new(),
                clock: Some(Arc::new(Zero)),
                sleep: Arc::new(Zero),
                retry: RetryPolicy::default(),
                max_steps: 0,
                max_parallel_tools: 4,
                emit: Arc::new(|e| {
                    std::hint::black_box(e);
                }),
                drain_steering: None,
                on_step: None,
                compact: None,
                view: None,
                observe: None,
            };
            let out = futures::executor::block_on(run_turn(input));
            assert_eq!(out.metrics.steps.len(), STEPS);
            out
        })
    });
    g.finish();
}

criterion_group!(benches, turn);
criterion_main!(benches);
