//! One agent turn: model step → tool calls → model step … → done.
//!
//! [`run_turn`] is pure and runtime-agnostic: the provider, the tools, the
//! clock, the sleep and the abort signal are injected, and everything the
//! turn does is reported as [`AgentEvent`]s through one emitter. It never
//! panics and never hangs on a broken part: a failing, panicking or unknown
//! tool becomes an error *result* the model reads (the turn continues); a
//! provider failure ends the turn with `error` then `done`; an abort ends it
//! with `done{reason:"aborted"}` at once.
//!
//! # Invariants (checked by the property test)
//!
//! * events: `turn-start`, …, `done` exactly once, last;
//! * every `tool-call` event is followed by exactly one `tool-result` with
//!   the same id, and every tool-call chunk handed back for persistence has
//!   its result chunk — also after an abort;
//! * nothing streamed is duplicated by a retry: retries happen only while
//!   the step has produced no content;
//! * `genTotalMs = ttftMs + decodeMs` when a first token was seen;
//!   `contextSize` = the final step's input + output tokens.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{self, Either};
use futures::{FutureExt as _, StreamExt as _};
use serde_json::Value;

use crate::provider::{Provider, ProviderError, ProviderEvent, ProviderOptions, StepRequest, ToolSpec};
use crate::reconcile::reconcile;
use crate::runtime::{AbortSignal, Clock, RetryPolicy, Sleep};
use crate::tool::{Tool, ToolContext, ToolError, ToolOutput};
use crate::wire::{AgentEvent, ChatMessage, Chunk, FinishReason, Role, StepMetrics, TurnMetrics, Usage};
use dispatch_protocol::trace::{
    bounded, bounded_input, RequestOutcome, ToolOutcome, TraceBody, TraceEvent, MAX_TRACE_TEXT,
};
use dispatch_protocol::BoxFuture;

/// Receives every event of the turn, in order. Called from the turn's task
/// and, for `tool-output`, from running tools.
pub type Emitter = Arc<dyn Fn(AgentEvent) + Send + Sync>;

/// Consulted at each tool-result boundary; returns queued user messages to
/// inject before the next model call. Async because the queue usually lives
/// in another plugin; an abort does not interrupt it (keep it quick).
pub type SteeringDrain = Box<dyn FnMut() -> BoxFuture<Vec<String>> + Send + Sync>;

/// Called with each step's finished messages, in order, before the next
/// step starts — for incremental persistence. An `Err` (the messages could
/// not be saved) ends the turn with an `error` event carrying its message
/// and `done { reason: "error" }`: going on would show a client a turn the
/// history does not hold.
pub type StepSink = Box<dyn FnMut(Vec<ChatMessage>) -> BoxFuture<Result<(), String>> + Send + Sync>;

/// Called at each tool-result boundary with the step's context size (its
/// input + output tokens): a new history for the rest of the turn (the
/// conversation was compacted), or `None` to go on as it is.
pub type Compactor = Box<dyn FnMut(u64) -> BoxFuture<Option<Vec<ChatMessage>>> + Send + Sync>;

/// Called before each model step with the history the step sends: what
/// the model is shown instead (images described, or replaced by
/// placeholders for a text-only model), or `None` for the history as it
/// is. Only the request changes; the history the turn keeps and hands
/// back for persistence does not. An abort interrupts it (the step then
/// ends as aborted).
pub type Viewer = Box<dyn FnMut(&[ChatMessage]) -> BoxFuture<Option<Vec<ChatMessage>>> + Send + Sync>;

/// Receives a turn's telemetry: one [`TraceEvent`] per provider request
/// (each attempt) and per tool call, with times from the turn's clock
/// (`0` without one). Called inline: keep it cheap (publish and return).
pub type Observer = Arc<dyn Fn(TraceEvent) + Send + Sync>;

/// The content of the result of a call that was cut short by an abort.
pub const ABORTED: &str = "Aborted: the turn was stopped before this tool call finished.";

/// Everything one turn needs.
pub struct TurnInput<'a> {
    /// The conversation.
    pub conversation_id: String,
    /// The turn; step ids are `<turn_id>#<index>`.
    pub turn_id: String,
    /// The history, ending with the new user message. Reconciled before use.
    pub history: Vec<ChatMessage>,
    /// The model.
    pub provider: &'a dyn Provider,
    /// Per-turn provider options.
    pub options: ProviderOptions,
    /// The tools on offer.
    pub tools: Vec<Arc<dyn Tool>>,
    /// The working directory tools run in.
    pub cwd: Option<PathBuf>,
    /// Cancels the turn.
    pub abort: AbortSignal,
    /// For metrics; without it no timing fields are reported.
    pub clock: Option<Arc<dyn Clock>>,
    /// For retry backoff.
    pub sleep: Arc<dyn Sleep>,
    /// Retry schedule for retryable provider errors.
    pub retry: RetryPolicy,
    /// Most model steps in the turn; 0 = unlimited.
    pub max_steps: u32,
    /// Most tool calls run at once when a step's calls may run in parallel.
    pub max_parallel_tools: usize,
    /// Where events go.
    pub emit: Emitter,
    /// Steering messages, drained at tool-result boundaries.
    pub drain_steering: Option<SteeringDrain>,
    /// Incremental persistence of each step's messages.
    pub on_step: Option<StepSink>,
    /// Compaction at tool-result boundaries.
    pub compact: Option<Compactor>,
    /// What each step's request shows the model of the history.
    pub view: Option<Viewer>,
    /// Where request and tool traces go (`None`: nowhere, at no cost).
    pub observe: Option<Observer>,
}

/// What a turn hands back.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnOutcome {
    /// The messages the turn added (assistant, tool results, steering), in
    /// order, every tool call with its result: what to persist.
    pub messages: Vec<ChatMessage>,
    /// The whole conversation after the turn: the input history,
    /// reconciled, then `messages` — what the next turn starts from, so a
    /// caller that keeps it need not read it back.
    pub history: Vec<ChatMessage>,
    /// Why the turn ended.
    pub reason: FinishReason,
    /// Usage summed over the steps.
    pub usage: Usage,
    /// Per-step and per-turn metrics, as persisted.
    pub metrics: TurnMetrics,
}

/// A tool call as the model made it.
#[derive(Debug, Clone)]
struct Call {
    id: String,
    name: String,
    input: Value,
    dispatched_at: Option<u64>,
}

/// A call's result and how it ran, for its trace.
struct Executed {
    output: ToolOutput,
    outcome: ToolOutcome,
    started: Option<u64>,
    ended: Option<u64>,
}

impl Executed {
    /// A call that never ran.
    fn not_run(output: ToolOutput, outcome: ToolOutcome) -> Self {
        Executed { output, outcome, started: None, ended: None }
    }
}

/// One request attempt, for [`Turn::observe_request`].
struct RequestTrace<'a> {
    step_id: &'a str,
    attempt: usize,
    start: Option<u64>,
    first_token: Option<u64>,
    outcome: RequestOutcome,
    usage: Option<Usage>,
    finish: Option<FinishReason>,
    error: Option<&'a ProviderError>,
    retry_delay_ms: Option<u64>,
}

enum StepEnd {
    /// The stream finished.
    Finished(FinishReason),
    /// The provider failed for good.
    Failed,
    /// The turn was aborted.
    Aborted,
}

struct StepResult {
    end: StepEnd,
    calls: Vec<Call>,
    messages: Vec<ChatMessage>,
}

/// Await `fut` unless `abort` fires first (`None`).
async fn or_abort<F: Future>(abort: &AbortSignal, fut: F) -> Option<F::Output> {
    if abort.is_aborted() {
        return None;
    }
    let fut = std::pin::pin!(fut);
    let aborted = std::pin::pin!(abort.aborted());
    match future::select(fut, aborted).await {
        Either::Left((v, _)) => Some(v),
        Either::Right(_) => None,
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-text payload".to_owned())
}

struct Turn<'a> {
    input: TurnInput<'a>,
    messages: Vec<ChatMessage>,
    specs: Vec<ToolSpec>,
    by_name: HashMap<String, Arc<dyn Tool>>,
    steps: Vec<StepMetrics>,
}

/// Run one turn. Emits `turn-start` first and `done` last; the caller
/// emits `user-message` before and `turn-sealed` after persisting.
pub async fn run_turn(input: TurnInput<'_>) -> TurnOutcome {
    let specs = input
        .tools
        .iter()
        .map(|t| ToolSpec {
            name: t.name().to_owned(),
            description: t.description().to_owned(),
            input_schema: t.input_schema(),
        })
        .collect();
    let by_name = input.tools.iter().map(|t| (t.name().to_owned(), Arc::clone(t))).collect();
    let messages = reconcile(&input.history);
    let mut turn = Turn { input, messages, specs, by_name, steps: Vec::new() };
    turn.run().await
}

impl Turn<'_> {
    fn now(&self) -> Option<u64> {
        self.input.clock.as_ref().map(|c| c.now_ms())
    }

    fn emit(&self, event: AgentEvent) {
        (self.input.emit)(event);
    }

    /// Append a text or reasoning delta to the step's chunks (extending the
    /// last chunk of the same kind) and report it.
    fn delta(&self, chunks: &mut Vec<Chunk>, delta: String, reasoning: bool) {
        match (chunks.last_mut(), reasoning) {
            (Some(Chunk::Text { text }), false) | (Some(Chunk::Thinking { text }), true) => {
                text.push_str(&delta)
            }
            (_, false) => chunks.push(Chunk::Text { text: delta.clone() }),
            (_, true) => chunks.push(Chunk::Thinking { text: delta.clone() }),
        }
        let (conversation_id, turn_id) = self.ids();
        self.emit(if reasoning {
            AgentEvent::ReasoningDelta { conversation_id, turn_id, delta }
        } else {
            AgentEvent::TextDelta { conversation_id, turn_id, delta }
        });
    }

    /// Hand finished messages to the step sink; `false` (after an `error`
    /// event naming why) when they could not be saved.
    async fn save(&mut self, messages: Vec<ChatMessage>) -> bool {
        let Some(sink) = self.input.on_step.as_mut() else { return true };
        match sink(messages).await {
            Ok(()) => true,
            Err(message) => {
                let (conversation_id, turn_id) = self.ids();
                self.emit(AgentEvent::Error {
                    conversation_id,
                    turn_id,
                    message,
                    code: Some("store".into()),
                });
                false
            }
        }
    }

    fn ids(&self) -> (String, String) {
        (self.input.conversation_id.clone(), self.input.turn_id.clone())
    }

    async fn run(&mut self) -> TurnOutcome {
        let started = self.now();
        let (conversation_id, turn_id) = self.ids();
        self.emit(AgentEvent::TurnStart {
            conversation_id: conversation_id.clone(),
            turn_id: turn_id.clone(),
        });

        let mut added: Vec<ChatMessage> = Vec::new();
        let mut total = Usage::default();
        let mut index: u32 = 0;
        let reason = loop {
            if self.input.abort.is_aborted() {
                break FinishReason::Aborted;
            }
            let step = self.run_step(index).await;
            let step_usage = self.steps.last().map(|s| s.usage).unwrap_or_default();
            total = total + step_usage;
            for m in &step.messages {
                self.messages.push(m.clone());
            }
            added.extend(step.messages.iter().cloned());
            if !step.messages.is_empty() && !self.save(step.messages).await {
                break FinishReason::Error;
            }
            match step.end {
                StepEnd::Aborted => {
                    break FinishReason::Aborted;
                }
                StepEnd::Failed => {
                    break FinishReason::Error;
                }
                StepEnd::Finished(r) if step.calls.is_empty() => {
                    break r;
                }
                StepEnd::Finished(_) => {}
            }
            if self.input.abort.is_aborted() {
                break FinishReason::Aborted;
            }
            if self.input.max_steps > 0 && index + 1 >= self.input.max_steps {
                break FinishReason::MaxSteps;
            }
            // Tool-result boundary: queued user text joins the next call.
            let drained = match self.input.drain_steering.as_mut() {
                Some(drain) => drain().await,
                None => Vec::new(),
            };
            // Each queued message stays a user message of its own: joined,
            // several could exceed what one stored chunk may hold.
            let drained: Vec<ChatMessage> = drained
                .into_iter()
                .filter(|t| !t.trim().is_empty())
                .map(|text| {
                    self.emit(AgentEvent::Steering {
                        conversation_id: conversation_id.clone(),
                        turn_id: turn_id.clone(),
                        text: text.clone(),
                    });
                    ChatMessage::user(text)
                })
                .collect();
            if !drained.is_empty() {
                self.messages.extend(drained.iter().cloned());
                added.extend(drained.iter().cloned());
                if !self.save(drained).await {
                    break FinishReason::Error;
                }
            }
            // Past the window's threshold: the rest of the turn runs on
            // the compacted history (everything so far is saved).
            let size = step_usage.input_tokens.saturating_add(step_usage.output_tokens);
            if let (Some(compact), true) = (self.input.compact.as_mut(), size > 0) {
                if let Some(history) = compact(size).await {
                    self.messages = history;
                }
            }
            index += 1;
        };

        let duration_ms = match (started, self.now()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let reported = total.is_reported();
        let context_size = self
            .steps
            .last()
            .filter(|_| reported)
            .map(|s| s.usage.input_tokens.saturating_add(s.usage.output_tokens));
        self.emit(AgentEvent::Done {
            conversation_id,
            turn_id: turn_id.clone(),
            reason: reason.clone(),
            duration_ms,
            usage: reported.then_some(total),
            context_size,
        });
        TurnOutcome {
            messages: added,
            history: std::mem::take(&mut self.messages),
            reason,
            usage: total,
            metrics: TurnMetrics {
                turn_id,
                usage: total,
                duration_ms,
                steps: std::mem::take(&mut self.steps),
                context_size,
            },
        }
    }

    async fn run_step(&mut self, index: u32) -> StepResult {
        let (conversation_id, turn_id) = self.ids();
        let step_id = format!("{turn_id}#{index}");
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut calls: Vec<Call> = Vec::new();
        let mut usage = Usage::default();
        let mut finish = FinishReason::Stop;
        let mut had_content = false;
        let mut attempt = 0usize;
        let mut waited = Duration::ZERO;
        let mut start;
        let mut first_token: Option<u64> = None;
        // The attempt whose trace is not yet out, and why it failed.
        let mut open_attempt = false;
        let mut failure_seen: Option<ProviderError> = None;

        // What the model is shown of the history: once per step, the
        // same for each retry.
        let (viewed, aborted_early) = match self.input.view.as_mut() {
            Some(view) => match or_abort(&self.input.abort, view(&self.messages)).await {
                Some(viewed) => (viewed, false),
                None => (None, true),
            },
            None => (None, false),
        };

        let end = 'attempts: loop {
            start = self.now();
            if aborted_early {
                break 'attempts StepEnd::Aborted;
            }
            open_attempt = true;
            let messages = viewed.as_deref().unwrap_or(&self.messages);
            let request = StepRequest { messages, tools: &self.specs, options: &self.input.options };
            let opened = std::panic::catch_unwind(AssertUnwindSafe(|| self.input.provider.stream(request)));
            let failure: Option<ProviderError> = match opened {
                Err(p) => {
                    Some(ProviderError::fatal(format!("the provider panicked: {}", panic_text(&*p)), None))
                }
                Ok(mut stream) => loop {
                    let next = AssertUnwindSafe(stream.next()).catch_unwind();
                    let Some(item) = or_abort(&self.input.abort, next).await else {
                        break 'attempts StepEnd::Aborted;
                    };
                    let event = match item {
                        Err(p) => {
                            break Some(ProviderError::fatal(
                                format!("the provider panicked: {}", panic_text(&*p)),
                                None,
                            ))
                        }
                        Ok(None) => break None,
                        Ok(Some(Err(e))) => break Some(e),
                        Ok(Some(Ok(ev))) => ev,
                    };
                    match event {
                        ProviderEvent::TextDelta(delta) | ProviderEvent::ReasoningDelta(delta)
                            if delta.is_empty() => {}
                        ProviderEvent::TextDelta(delta) => {
                            had_content = true;
                            first_token = first_token.or(self.now());
                            self.delta(&mut chunks, delta, false);
                        }
                        ProviderEvent::ReasoningDelta(delta) => {
                            had_content = true;
                            first_token = first_token.or(self.now());
                            self.delta(&mut chunks, delta, true);
                        }
                        ProviderEvent::ToolCall { id, name, input } => {
                            had_content = true;
                            chunks.push(Chunk::ToolCall {
                                tool_call_id: id.clone(),
                                tool_name: name.clone(),
                                input: input.clone(),
                                step_id: Some(step_id.clone()),
                            });
                            self.emit(AgentEvent::ToolCall {
                                conversation_id: conversation_id.clone(),
                                turn_id: turn_id.clone(),
                                step_id: step_id.clone(),
                                tool_call_id: id.clone(),
                                tool_name: name.clone(),
                                input: input.clone(),
                            });
                            calls.push(Call { id, name, input, dispatched_at: self.now() });
                        }
                        ProviderEvent::Usage(u) => {
                            had_content = true;
                            usage = usage + u;
                            self.emit(AgentEvent::Usage {
                                conversation_id: conversation_id.clone(),
                                turn_id: turn_id.clone(),
                                usage: u,
                                step_id: Some(step_id.clone()),
                            });
                        }
                        ProviderEvent::Finish(r) => finish = r,
                    }
                },
            };
            let Some(error) = failure else {
                break StepEnd::Finished(finish);
            };
            // Retry only while nothing of this step reached anyone.
            if error.retryable && !had_content {
                if let Some(delay) = self.input.retry.delay_for(attempt, error.retry_after, waited) {
                    let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                    self.observe_request(RequestTrace {
                        step_id: &step_id,
                        attempt,
                        start,
                        first_token: None,
                        outcome: RequestOutcome::Retry,
                        usage: None,
                        finish: None,
                        error: Some(&error),
                        retry_delay_ms: Some(delay_ms),
                    });
                    open_attempt = false;
                    self.emit(AgentEvent::ProviderRetry {
                        conversation_id: conversation_id.clone(),
                        turn_id: turn_id.clone(),
                        attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                        delay_ms,
                        message: error.message.clone(),
                        code: error.code.clone(),
                    });
                    if or_abort(&self.input.abort, self.input.sleep.sleep(delay)).await.is_none() {
                        break StepEnd::Aborted;
                    }
                    waited += delay;
                    attempt += 1;
                    continue;
                }
            }
            chunks.push(Chunk::Error { message: error.message.clone(), code: error.code.clone() });
            self.emit(AgentEvent::Error {
                conversation_id: conversation_id.clone(),
                turn_id: turn_id.clone(),
                message: error.message.clone(),
                code: error.code.clone(),
            });
            failure_seen = Some(error);
            break StepEnd::Failed;
        };
        if open_attempt {
            let (outcome, finish) = match &end {
                StepEnd::Finished(r) => (RequestOutcome::Ok, Some(r.clone())),
                StepEnd::Failed => (RequestOutcome::Error, None),
                StepEnd::Aborted => (RequestOutcome::Aborted, None),
            };
            self.observe_request(RequestTrace {
                step_id: &step_id,
                attempt,
                start,
                first_token,
                outcome,
                usage: usage.is_reported().then_some(usage),
                finish,
                error: failure_seen.as_ref(),
                retry_delay_ms: None,
            });
        }

        // Step timing.
        let end_ms = self.now();
        let gen_total_ms = match (start, end_ms) {
            (Some(s), Some(e)) => Some(e.saturating_sub(s)),
            _ => None,
        };
        let (ttft_ms, decode_ms) = match (start, first_token, end_ms) {
            (Some(s), Some(f), Some(e)) => (Some(f.saturating_sub(s)), Some(e.saturating_sub(f))),
            _ => (None, None),
        };
        self.emit(AgentEvent::StepComplete {
            conversation_id: conversation_id.clone(),
            turn_id: turn_id.clone(),
            step_id: step_id.clone(),
            ttft_ms,
            decode_ms,
            gen_total_ms,
        });
        self.steps.push(StepMetrics { step_id: step_id.clone(), usage, ttft_ms, decode_ms, gen_total_ms });

        // Tool calls: run them, or say why they did not run. Either way each
        // gets exactly one result.
        let outputs: Vec<Executed> = match end {
            StepEnd::Finished(_) => self.dispatch(&calls).await,
            StepEnd::Aborted => {
                calls.iter().map(|_| Executed::not_run(aborted(), ToolOutcome::Aborted)).collect()
            }
            StepEnd::Failed => calls
                .iter()
                .map(|_| {
                    Executed::not_run(
                        ToolOutput::error("Not run: the model's response failed before the step completed."),
                        ToolOutcome::Error,
                    )
                })
                .collect(),
        };
        let end = match end {
            // An abort during the tools ends the turn as aborted too.
            StepEnd::Finished(_) if self.input.abort.is_aborted() => StepEnd::Aborted,
            other => other,
        };

        let mut messages = Vec::new();
        if !chunks.is_empty() {
            messages.push(ChatMessage { role: Role::Assistant, chunks });
        }
        for (call, executed) in calls.iter().zip(outputs) {
            let now = self.now();
            let duration_ms = match (call.dispatched_at, now) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            };
            if let Some(observe) = &self.input.observe {
                let (input, input_bytes) = bounded_input(&call.input);
                let (output, output_bytes) = bounded(&executed.output.content, MAX_TRACE_TEXT);
                let ended_at = executed.ended.or(now).unwrap_or(0);
                observe(TraceEvent {
                    conversation_id: conversation_id.clone(),
                    turn_id: turn_id.clone(),
                    step_id: Some(step_id.clone()),
                    started_at: executed.started.unwrap_or(ended_at),
                    ended_at,
                    body: TraceBody::Tool {
                        tool_call_id: call.id.clone(),
                        tool_name: call.name.clone(),
                        plugin: None,
                        input,
                        input_bytes,
                        output,
                        output_bytes,
                        outcome: executed.outcome,
                        step_usage: usage.is_reported().then_some(usage),
                    },
                });
            }
            let out = executed.output;
            self.emit(AgentEvent::ToolResult {
                conversation_id: conversation_id.clone(),
                turn_id: turn_id.clone(),
                step_id: step_id.clone(),
                tool_call_id: call.id.clone(),
                tool_name: call.name.clone(),
                content: out.content.clone(),
                is_error: out.is_error,
                duration_ms,
            });
            // A result's images follow it in its message: the provider
            // shows them to the model after the results, as its API allows.
            let mut chunks = Vec::with_capacity(1 + out.images.len());
            chunks.push(Chunk::ToolResult {
                tool_call_id: call.id.clone(),
                tool_name: call.name.clone(),
                content: out.content,
                is_error: out.is_error,
                step_id: Some(step_id.clone()),
            });
            chunks
                .extend(out.images.into_iter().map(|i| Chunk::Image { url: i.url, mime_type: i.mime_type }));
            messages.push(ChatMessage { role: Role::Tool, chunks });
        }
        StepResult { end, calls, messages }
    }

    /// Run a step's calls: in parallel (bounded) when every tool in the
    /// batch is concurrency-safe, otherwise one after the other. Results
    /// come back in call order.
    async fn dispatch(&self, calls: &[Call]) -> Vec<Executed> {
        let parallel = calls.len() > 1
            && calls.iter().all(|c| self.by_name.get(&c.name).is_none_or(|t| t.concurrency_safe()));
        if parallel {
            let limit = self.input.max_parallel_tools.max(1);
            // Boxed as `dyn Future + Send`: without it the compiler cannot
            // prove the turn's future `Send` for every lifetime of `c` (the
            // closure's higher-ranked signature), and a turn could not be
            // spawned on a multi-thread runtime.
            type CallFuture<'f> = std::pin::Pin<Box<dyn Future<Output = Executed> + Send + 'f>>;
            let futs: Vec<CallFuture<'_>> =
                calls.iter().map(|c| Box::pin(self.execute(c)) as CallFuture<'_>).collect();
            futures::stream::iter(futs).buffered(limit).collect().await
        } else {
            let mut out = Vec::with_capacity(calls.len());
            for c in calls {
                out.push(self.execute(c).await);
            }
            out
        }
    }

    /// One call, with every failure turned into an error result, and
    /// when it started.
    async fn execute(&self, call: &Call) -> Executed {
        let started = self.now();
        let output = self.run_call(call).await;
        let outcome = if output.content == ABORTED && output.is_error {
            ToolOutcome::Aborted
        } else if output.timed_out {
            ToolOutcome::Timeout
        } else if output.is_error {
            ToolOutcome::Error
        } else {
            ToolOutcome::Ok
        };
        Executed { output, outcome, started, ended: self.now() }
    }

    /// Report one provider request to the observer.
    fn observe_request(&self, r: RequestTrace<'_>) {
        let Some(observe) = &self.input.observe else { return };
        let ended_at = self.now().unwrap_or(0);
        let started_at = r.start.unwrap_or(ended_at);
        let (ttft_ms, decode_ms) = match r.first_token {
            Some(f) => (Some(f.saturating_sub(started_at)), Some(ended_at.saturating_sub(f))),
            None => (None, None),
        };
        observe(TraceEvent {
            conversation_id: self.input.conversation_id.clone(),
            turn_id: self.input.turn_id.clone(),
            step_id: Some(r.step_id.to_owned()),
            started_at,
            ended_at,
            body: TraceBody::Request {
                // The kernel does not know the model's name: the caller's
                // observer fills it in.
                model: String::new(),
                attempt: u32::try_from(r.attempt).unwrap_or(u32::MAX),
                outcome: r.outcome,
                ttft_ms,
                decode_ms,
                usage: r.usage,
                finish: r.finish,
                status: r.error.and_then(|e| e.code.clone()),
                error: r.error.map(|e| e.message.clone()),
                retry_delay_ms: r.retry_delay_ms,
            },
        });
    }

    async fn run_call(&self, call: &Call) -> ToolOutput {
        let Some(tool) = self.by_name.get(&call.name) else {
            let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
            names.sort_unstable();
            return error_output(format!(
                "Unknown tool `{}`. Available tools: {}.",
                call.name,
                if names.is_empty() { "none".to_owned() } else { names.join(", ") }
            ));
        };
        if !call.input.is_object() {
            return error_output(format!(
                "Invalid input for tool `{}`: expected a JSON object, got {}.",
                call.name,
                truncate(&call.input.to_string(), 200)
            ));
        }
        if self.input.abort.is_aborted() {
            return aborted();
        }
        let emit = Arc::clone(&self.input.emit);
        let (conversation_id, turn_id, tool_call_id) =
            (self.input.conversation_id.clone(), self.input.turn_id.clone(), call.id.clone());
        let output: crate::tool::OutputSink = Arc::new(move |data: &str, stream| {
            emit(AgentEvent::ToolOutput {
                conversation_id: conversation_id.clone(),
                turn_id: turn_id.clone(),
                tool_call_id: tool_call_id.clone(),
                data: data.to_owned(),
                stream,
            });
        });
        let ctx = ToolContext {
            tool_call_id: call.id.clone(),
            conversation_id: self.input.conversation_id.clone(),
            cwd: self.input.cwd.clone(),
            abort: self.input.abort.clone(),
            output,
        };
        let started = std::panic::catch_unwind(AssertUnwindSafe(|| tool.execute(call.input.clone(), ctx)));
        let fut = match started {
            Ok(f) => f,
            Err(p) => return error_output(format!("Tool `{}` panicked: {}", call.name, panic_text(&*p))),
        };
        match or_abort(&self.input.abort, AssertUnwindSafe(fut).catch_unwind()).await {
            None => aborted(),
            Some(Err(p)) => error_output(format!("Tool `{}` panicked: {}", call.name, panic_text(&*p))),
            Some(Ok(Ok(out))) => out,
            Some(Ok(Err(ToolError::InvalidInput(msg)))) => {
                error_output(format!("Invalid input for tool `{}`: {msg}", call.name))
            }
            Some(Ok(Err(ToolError::Failed(msg)))) => {
                error_output(format!("Tool `{}` failed: {msg}", call.name))
            }
        }
    }
}

fn error_output(content: String) -> ToolOutput {
    ToolOutput::error(content)
}

fn aborted() -> ToolOutput {
    error_output(ABORTED.to_owned())
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Regression guard, checked at compile time: a turn's future is `Send`, so
/// the session can spawn it on a multi-thread runtime. (A closure over
/// borrowed calls once made it `Send` only for one lifetime.)
#[cfg(test)]
#[allow(dead_code)]
fn turn_future_is_send(input: TurnInput<'static>) -> impl Future<Output = TurnOutcome> + Send {
    run_turn(input)
}
