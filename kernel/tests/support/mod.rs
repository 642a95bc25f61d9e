//! Fakes for the turn loop: a scripted provider, a manual clock, an instant
//! sleep, configurable tools, and an event recorder. No real time passes.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dispatch_kernel::protocol::BoxFuture;
use dispatch_kernel::provider::{Provider, ProviderError, ProviderEvent, ProviderOptions, StepRequest};
use dispatch_kernel::runtime::{AbortSignal, Clock, RetryPolicy, Sleep};
use dispatch_kernel::tool::{Tool, ToolContext, ToolError, ToolOutput};
use dispatch_kernel::turn::{run_turn, TurnInput, TurnOutcome};
use dispatch_kernel::wire::{AgentEvent, ChatMessage, FinishReason, Usage};
use futures::stream::BoxStream;
use serde_json::{json, Value};

/// One item of a scripted provider attempt.
#[derive(Clone, Debug)]
pub enum Item {
    Event(ProviderEvent),
    Fail(ProviderError),
    /// Move the fake clock forward.
    Advance(u64),
    /// Never yield again (until the turn is aborted).
    Hang,
    /// Fire the turn's abort signal, then continue.
    Abort,
    /// Panic inside the stream.
    Panic,
}

pub fn text(s: &str) -> Item {
    Item::Event(ProviderEvent::TextDelta(s.into()))
}
pub fn reasoning(s: &str) -> Item {
    Item::Event(ProviderEvent::ReasoningDelta(s.into()))
}
pub fn call(id: &str, name: &str, input: Value) -> Item {
    Item::Event(ProviderEvent::ToolCall { id: id.into(), name: name.into(), input })
}
pub fn usage(input: u64, output: u64) -> Item {
    Item::Event(ProviderEvent::Usage(Usage {
        input_tokens: input,
        output_tokens: output,
        ..Usage::default()
    }))
}
pub fn finish(r: FinishReason) -> Item {
    Item::Event(ProviderEvent::Finish(r))
}
pub fn retryable(msg: &str) -> Item {
    Item::Fail(ProviderError::retryable(msg, Some("429".into())))
}
pub fn fatal(msg: &str) -> Item {
    Item::Fail(ProviderError::fatal(msg, Some("400".into())))
}

#[derive(Default)]
pub struct FakeClock(AtomicU64);
impl FakeClock {
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}
impl Clock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Returns at once, recording the wait and moving the clock.
pub struct FakeSleep {
    pub clock: Arc<FakeClock>,
    pub slept: Mutex<Vec<Duration>>,
}
impl Sleep for FakeSleep {
    fn sleep(&self, d: Duration) -> BoxFuture<()> {
        self.slept.lock().unwrap().push(d);
        self.clock.advance(u64::try_from(d.as_millis()).unwrap());
        Box::pin(async {})
    }
}

/// Plays one script per `stream` call (a retry consumes the next one);
/// with no script left it just finishes.
pub struct ScriptedProvider {
    attempts: Mutex<VecDeque<Vec<Item>>>,
    clock: Arc<FakeClock>,
    abort: AbortSignal,
    /// The history each call was given.
    pub requests: Mutex<Vec<Vec<ChatMessage>>>,
    pub tool_names: Mutex<Vec<Vec<String>>>,
}

impl Provider for ScriptedProvider {
    fn stream<'a>(&'a self, request: StepRequest<'a>) -> BoxStream<'a, Result<ProviderEvent, ProviderError>> {
        self.requests.lock().unwrap().push(request.messages.to_vec());
        self.tool_names.lock().unwrap().push(request.tools.iter().map(|t| t.name.clone()).collect());
        let items: VecDeque<Item> = self.attempts.lock().unwrap().pop_front().unwrap_or_default().into();
        let clock = Arc::clone(&self.clock);
        let abort = self.abort.clone();
        Box::pin(futures::stream::unfold(items, move |mut items| {
            let clock = Arc::clone(&clock);
            let abort = abort.clone();
            async move {
                loop {
                    match items.pop_front()? {
                        Item::Event(e) => return Some((Ok(e), items)),
                        Item::Fail(e) => {
                            items.clear();
                            return Some((Err(e), items));
                        }
                        Item::Advance(ms) => clock.advance(ms),
                        Item::Hang => futures::future::pending::<()>().await,
                        Item::Abort => abort.abort(),
                        Item::Panic => panic!("scripted provider panic"),
                    }
                }
            }
        }))
    }
}

type ToolFn = dyn Fn(Value, ToolContext) -> BoxFuture<Result<ToolOutput, ToolError>> + Send + Sync;

/// A tool whose behaviour is a closure.
pub struct FnTool {
    pub name: String,
    pub safe: bool,
    pub f: Box<ToolFn>,
}
impl Tool for FnTool {
    fn name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> &str {
        "a test tool"
    }
    fn input_schema(&self) -> Value {
        json!({"type": "object"})
    }
    fn concurrency_safe(&self) -> bool {
        self.safe
    }
    fn execute(&self, input: Value, ctx: ToolContext) -> BoxFuture<Result<ToolOutput, ToolError>> {
        (self.f)(input, ctx)
    }
}

pub fn tool(
    name: &str,
    safe: bool,
    f: impl Fn(Value, ToolContext) -> BoxFuture<Result<ToolOutput, ToolError>> + Send + Sync + 'static,
) -> Arc<dyn Tool> {
    Arc::new(FnTool { name: name.into(), safe, f: Box::new(f) })
}

/// `echo`: answers its input as text.
pub fn echo(safe: bool) -> Arc<dyn Tool> {
    tool("echo", safe, |input, _| Box::pin(async move { Ok(ToolOutput::ok(input.to_string())) }))
}

/// A tool that counts how many of its calls run at once; each call yields
/// `yields` times before answering.
pub fn counted(
    name: &str,
    safe: bool,
    yields: usize,
    active: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
) -> Arc<dyn Tool> {
    tool(name, safe, move |_, _| {
        let (active, peak) = (Arc::clone(&active), Arc::clone(&peak));
        Box::pin(async move {
            let now = active.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            for _ in 0..yields {
                YieldOnce(false).await;
            }
            active.fetch_sub(1, Ordering::SeqCst);
            Ok(ToolOutput::ok("done"))
        })
    })
}

/// Pending once, then ready: lets other futures in a `buffered` run.
pub struct YieldOnce(pub bool);
impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.0 {
            std::task::Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }
}

/// A configured turn, ready to run.
pub struct Harness {
    pub clock: Arc<FakeClock>,
    pub sleep: Arc<FakeSleep>,
    pub provider: ScriptedProvider,
    pub abort: AbortSignal,
    pub events: Arc<Mutex<Vec<AgentEvent>>>,
    pub tools: Vec<Arc<dyn Tool>>,
    pub history: Vec<ChatMessage>,
    pub retry: RetryPolicy,
    pub max_steps: u32,
    pub max_parallel_tools: usize,
    pub steering: Arc<Mutex<VecDeque<Vec<String>>>>,
    pub persisted: Arc<Mutex<Vec<Vec<ChatMessage>>>>,
    /// Saves after this many succeeded fail (a full disk, a chunk over the
    /// store's limit).
    pub fail_saves_after: Option<usize>,
    /// The history the compactor hands back at the first tool-result
    /// boundary (none: no compactor).
    pub compact_to: Option<Vec<ChatMessage>>,
    /// The context sizes the compactor was called with.
    pub compact_sizes: Arc<Mutex<Vec<u64>>>,
    /// The viewer each step's request passes through (none: no viewer).
    pub view: Option<ViewFn>,
    /// What the turn's observer received.
    pub traces: Arc<Mutex<Vec<dispatch_protocol::trace::TraceEvent>>>,
}

/// A test viewer.
pub type ViewFn = Arc<dyn Fn(&[ChatMessage]) -> BoxFuture<Option<Vec<ChatMessage>>> + Send + Sync>;

impl Harness {
    pub fn new(attempts: Vec<Vec<Item>>) -> Self {
        let clock = Arc::new(FakeClock::default());
        let abort = AbortSignal::new();
        Harness {
            sleep: Arc::new(FakeSleep { clock: Arc::clone(&clock), slept: Mutex::default() }),
            provider: ScriptedProvider {
                attempts: Mutex::new(attempts.into()),
                clock: Arc::clone(&clock),
                abort: abort.clone(),
                requests: Mutex::default(),
                tool_names: Mutex::default(),
            },
            clock,
            abort,
            events: Arc::default(),
            tools: Vec::new(),
            history: vec![ChatMessage::user("hello")],
            retry: RetryPolicy {
                delays: vec![
                    Duration::from_millis(100),
                    Duration::from_millis(200),
                    Duration::from_millis(400),
                ],
                budget: Duration::from_secs(10),
            },
            max_steps: 0,
            max_parallel_tools: 4,
            steering: Arc::default(),
            persisted: Arc::default(),
            fail_saves_after: None,
            compact_to: None,
            compact_sizes: Arc::default(),
            view: None,
            traces: Arc::default(),
        }
    }

    pub fn tools(mut self, tools: Vec<Arc<dyn Tool>>) -> Self {
        self.tools = tools;
        self
    }

    pub fn run(&self) -> TurnOutcome {
        let events = Arc::clone(&self.events);
        let steering = Arc::clone(&self.steering);
        let persisted = Arc::clone(&self.persisted);
        let fail_after = self.fail_saves_after;
        let input = TurnInput {
            conversation_id: "c1".into(),
            turn_id: "t1".into(),
            history: self.history.clone(),
            provider: &self.provider,
            options: ProviderOptions::default(),
            tools: self.tools.clone(),
            cwd: None,
            abort: self.abort.clone(),
            clock: Some(Arc::clone(&self.clock) as Arc<dyn Clock>),
            sleep: Arc::clone(&self.sleep) as Arc<dyn Sleep>,
            retry: self.retry.clone(),
            max_steps: self.max_steps,
            max_parallel_tools: self.max_parallel_tools,
            emit: Arc::new(move |e| events.lock().unwrap().push(e)),
            drain_steering: Some(Box::new(move || {
                let next = steering.lock().unwrap().pop_front().unwrap_or_default();
                Box::pin(std::future::ready(next))
            })),
            compact: self.compact_to.clone().map(|replacement| {
                let sizes = Arc::clone(&self.compact_sizes);
                let mut once = Some(replacement);
                let compact: dispatch_kernel::turn::Compactor = Box::new(move |size| {
                    sizes.lock().unwrap().push(size);
                    Box::pin(std::future::ready(once.take()))
                });
                compact
            }),
            view: self.view.clone().map(|f| {
                let view: dispatch_kernel::turn::Viewer = Box::new(move |m| f(m));
                view
            }),
            observe: Some({
                let traces = Arc::clone(&self.traces);
                Arc::new(move |t| traces.lock().unwrap().push(t))
            }),
            on_step: Some(Box::new(move |msgs| {
                let mut saved = persisted.lock().unwrap();
                let result = if fail_after.is_some_and(|n| saved.len() >= n) {
                    Err("the disk is full".to_owned())
                } else {
                    saved.push(msgs);
                    Ok(())
                };
                Box::pin(std::future::ready(result))
            })),
        };
        futures::executor::block_on(run_turn(input))
    }

    pub fn events(&self) -> Vec<AgentEvent> {
        self.events.lock().unwrap().clone()
    }

    /// The event types, in order.
    pub fn types(&self) -> Vec<String> {
        self.events().iter().map(|e| e.type_name().to_owned()).collect()
    }
}
