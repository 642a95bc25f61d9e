//! `tool::serve` and `provider::serve` on the real bus, through the test
//! host: the serving side of both pull protocols.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use dispatch_abi::{codes, Context, Error, Plugin, PluginManifest};
use dispatch_contracts::protocol::wire::{ChatMessage, Chunk, FinishReason, OutputStream};
use dispatch_contracts::provider::{
    self, Batch, BoxFuture, ContextRef, EventSender, ModelEntry, ModelProvider, Opened, ProviderEvent,
    ProviderRequest, ProviderServer, Registration, StepSpec, ToolSpec,
};
use dispatch_contracts::tool::{
    self, OutputPiece, RunBatch, RunResult, Started, Tool, ToolContext, ToolError, ToolOutput, ToolRequest,
    ToolServer,
};
use dispatch_testkit::TestHost;
use serde_json::{json, Value};

/// `echo` prints its text then answers it; `boom` panics; `wait` waits
/// for its abort signal; `slow` answers after a one-second timer; `where` answers the name of the thread it ran on;
/// `tidy` waits for its abort signal, then cleans up (adds its input's
/// `tag` to [`TIDIED`]: tests run in parallel, each looks for its own tag).
struct Fixture(&'static str);

static TIDIED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl Tool for Fixture {
    fn name(&self) -> &str {
        self.0
    }
    fn description(&self) -> &str {
        "fixture"
    }
    fn input_schema(&self) -> Value {
        json!({"type": "object"})
    }
    fn execute(&self, input: Value, ctx: ToolContext) -> BoxFuture<Result<ToolOutput, ToolError>> {
        let name = self.0;
        Box::pin(async move {
            match name {
                "boom" => panic!("asked to"),
                "wait" => {
                    ctx.abort.aborted().await;
                    Ok(ToolOutput::ok("stopped"))
                }
                "where" => {
                    // A tokio timer: only works inside the plugin's runtime.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let thread = std::thread::current().name().unwrap_or_default().to_owned();
                    Ok(ToolOutput::ok(thread))
                }
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Ok(ToolOutput::ok("slept"))
                }
                "tidy" => {
                    ctx.abort.aborted().await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    TIDIED.lock().unwrap().push(input["tag"].as_str().unwrap_or_default().to_owned());
                    Ok(ToolOutput::ok("tidied"))
                }
                _ => {
                    let text = input["text"].as_str().unwrap_or_default().to_owned();
                    (ctx.output)(&text, OutputStream::Stdout);
                    Ok(ToolOutput::ok(text))
                }
            }
        })
    }
}

macro_rules! tool_plugin {
    ($ty:ident, $id:literal, $tool:literal) => {
        struct $ty(ToolServer);
        impl Plugin for $ty {
            fn manifest() -> PluginManifest {
                tool::manifest($id, "0.0.0", $tool)
            }
            fn activate(ctx: Context) -> Result<Self, Error> {
                Ok($ty(tool::serve(ctx.host(), Arc::new(Fixture($tool)), 1)?))
            }
            fn deactivate(&mut self) -> Result<(), Error> {
                self.0.stop();
                Ok(())
            }
        }
    };
}
tool_plugin!(EchoPlugin, "echo-plugin", "echo");
tool_plugin!(OtherEchoPlugin, "other-echo-plugin", "echo");
tool_plugin!(BoomPlugin, "boom-plugin", "boom");
tool_plugin!(WaitPlugin, "wait-plugin", "wait");
tool_plugin!(WherePlugin, "where-plugin", "where");
tool_plugin!(TidyPlugin, "tidy-plugin", "tidy");
tool_plugin!(SlowPlugin, "slow-plugin", "slow");

/// Regression guard for calls driven by their reader: a call runs on the
/// thread that waits in `next` (no hop onto the plugin's runtime and back),
/// inside the plugin runtime's context (its timers work).
#[test]
fn a_call_runs_on_the_readers_thread_inside_the_plugins_runtime() {
    let mut host = TestHost::new();
    host.activate::<WherePlugin>(Value::Null).unwrap();
    let id = start(&host, "where", json!({}));
    let result = loop {
        if let Some(r) = next(&host, "where", id).unwrap().result {
            break r;
        }
    };
    let here = std::thread::current().name().unwrap().to_owned();
    assert_eq!(result, RunResult::from(Ok(ToolOutput::ok(here))));
}

/// A call nobody reads any more still gets to clean up: cancelled before
/// its first `next`, it is handed to the plugin's runtime and runs there,
/// its abort signal fired.
#[test]
fn a_cancelled_call_finishes_on_the_runtime_and_cleans_up() {
    let mut host = TestHost::new();
    host.activate::<TidyPlugin>(Value::Null).unwrap();
    let id = start(&host, "tidy", json!({"tag": "cancelled unread"}));
    host.call(&tool::key("tidy"), &ToolRequest::Cancel { run_id: id }).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !TIDIED.lock().unwrap().iter().any(|t| t == "cancelled unread") {
        assert!(std::time::Instant::now() < deadline, "the cancelled call never cleaned up");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(next(&host, "tidy", id).unwrap_err().code(), codes::NOT_FOUND);
}

/// Stops its server, then — still inside `deactivate`, where the bus keeps
/// its services — tries to start a call, and records what it was told.
struct StartsAfterStop(ToolServer, dispatch_abi::Host);

static AFTER_STOP: std::sync::Mutex<Option<Result<Value, Error>>> = std::sync::Mutex::new(None);

impl Plugin for StartsAfterStop {
    fn manifest() -> PluginManifest {
        tool::manifest("late-plugin", "0.0.0", "late")
    }
    fn activate(ctx: Context) -> Result<Self, Error> {
        Ok(StartsAfterStop(tool::serve(ctx.host(), Arc::new(Fixture("late")), 1)?, ctx.host().clone()))
    }
    fn deactivate(&mut self) -> Result<(), Error> {
        self.0.stop();
        let req = ToolRequest::Start {
            call_id: "c".into(),
            conversation_id: "v".into(),
            cwd: None,
            input: json!({}),
        };
        *AFTER_STOP.lock().unwrap() = Some(self.1.call_blocking(&tool::key("late"), &req));
        Ok(())
    }
}

/// Regression guard: a call started between a tool server's stop and the
/// removal of its services is refused, not run in a shut-down runtime.
#[test]
fn a_call_started_after_the_server_stopped_is_refused() {
    let mut host = TestHost::new();
    host.activate::<StartsAfterStop>(Value::Null).unwrap();
    assert!(host.deactivate_all().iter().all(|(_, r)| r.is_ok()));
    let answer = AFTER_STOP.lock().unwrap().take().expect("deactivate ran");
    let e = answer.unwrap_err();
    assert_eq!(e.code(), codes::UNAVAILABLE, "{e}");
    assert!(e.message().contains("stopping"), "{e}");
}

/// Regression guard: a second reader of a run is refused without polling
/// the call — polling it would take its wake-ups (here: its timer's) from
/// the real reader, which would then wait forever.
#[test]
fn a_second_reader_is_refused_and_the_first_still_gets_the_result() {
    let mut host = TestHost::new();
    host.activate::<SlowPlugin>(Value::Null).unwrap();
    let id = start(&host, "slow", json!({}));
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = host.host().clone();
    std::thread::spawn(move || {
        let batch = reader.call_blocking(&tool::key("slow"), &ToolRequest::Next { run_id: id });
        let _ = tx.send(batch.map(|v| serde_json::from_value::<RunBatch>(v).unwrap()));
    });
    // The first reader now waits on the call's one-second timer.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(next(&host, "slow", id).unwrap_err().code(), codes::CONFLICT);
    let batch = rx.recv_timeout(Duration::from_secs(10)).expect("the first reader was never woken").unwrap();
    assert_eq!(batch.result, Some(RunResult::from(Ok(ToolOutput::ok("slept")))));
}

fn start(host: &TestHost, name: &str, input: Value) -> u64 {
    let req = ToolRequest::Start { call_id: "c".into(), conversation_id: "v".into(), cwd: None, input };
    let v = host.call(&tool::key(name), &req).unwrap();
    serde_json::from_value::<Started>(v).unwrap().run_id
}

fn next(host: &TestHost, name: &str, run_id: u64) -> Result<RunBatch, Error> {
    host.call(&tool::key(name), &ToolRequest::Next { run_id }).map(|v| serde_json::from_value(v).unwrap())
}

#[test]
fn a_served_tool_streams_output_then_its_result_and_forgets_the_run() {
    let mut host = TestHost::new();
    host.activate::<EchoPlugin>(Value::Null).unwrap();
    let spec = host.call(&tool::key("echo"), &ToolRequest::Spec).unwrap();
    assert_eq!(spec["name"], "echo");
    let id = start(&host, "echo", json!({"text": "hi"}));
    let mut output = Vec::new();
    let result = loop {
        let batch = next(&host, "echo", id).unwrap();
        output.extend(batch.output);
        if let Some(r) = batch.result {
            break r;
        }
    };
    assert_eq!(output, vec![OutputPiece { stream: OutputStream::Stdout, text: "hi".into() }]);
    assert_eq!(
        result,
        RunResult::Output { content: "hi".into(), is_error: false, images: vec![], timed_out: false }
    );
    assert_eq!(next(&host, "echo", id).unwrap_err().code(), codes::NOT_FOUND);
}

#[test]
fn a_panicking_tool_answers_an_error_result_and_the_plugin_keeps_serving() {
    let mut host = TestHost::new();
    host.activate::<BoomPlugin>(Value::Null).unwrap();
    for _ in 0..2 {
        let id = start(&host, "boom", json!({}));
        let batch = next(&host, "boom", id).unwrap();
        assert_eq!(
            batch.result,
            Some(RunResult::Failed { message: "the `boom` tool panicked: asked to".into() })
        );
    }
}

#[test]
fn cancel_fires_the_abort_signal_and_forgets_the_run() {
    let mut host = TestHost::new();
    host.activate::<WaitPlugin>(Value::Null).unwrap();
    let id = start(&host, "wait", json!({}));
    host.call(&tool::key("wait"), &ToolRequest::Cancel { run_id: id }).unwrap();
    assert_eq!(next(&host, "wait", id).unwrap_err().code(), codes::NOT_FOUND);
}

#[test]
fn a_second_plugin_serving_the_same_tool_name_is_refused_naming_both() {
    let mut host = TestHost::new();
    host.activate::<EchoPlugin>(Value::Null).unwrap();
    let e = host.activate::<OtherEchoPlugin>(Value::Null).unwrap_err();
    assert_eq!(e.code(), codes::DUPLICATE);
    assert!(e.message().contains("echo-plugin") && e.message().contains("other-echo-plugin"), "{e}");
    // The first one still answers.
    assert_eq!(host.call(&tool::key("echo"), &ToolRequest::Spec).unwrap()["name"], "echo");
}

#[test]
fn an_unknown_op_is_refused_as_an_invalid_payload_naming_the_ops() {
    let mut host = TestHost::new();
    host.activate::<EchoPlugin>(Value::Null).unwrap();
    let key = dispatch_abi::Service::<Value, Value>::named("tool.echo", tool::VERSION);
    let e = host.call(&key, &json!({"op": "explode"})).unwrap_err();
    assert_eq!(e.code(), codes::INVALID_PAYLOAD);
    assert!(e.message().contains("unknown variant `explode`"), "{e}");
    let e = host.call(&key, &json!({"op": "next", "runId": 1, "extra": true})).unwrap_err();
    assert!(e.message().contains("unknown field `extra`"), "{e}");
}

/// Streams `text`, then finishes — unless it is `"silent"`, which stops
/// without a finish event.
struct Script;

impl ModelProvider for Script {
    fn models(&self) -> BoxFuture<Vec<ModelEntry>> {
        Box::pin(async { vec![ModelEntry { name: "fx/model".into(), context_window: None, vision: None }] })
    }
    fn open(&self, step: StepSpec<'_>, events: EventSender) -> Result<BoxFuture<()>, Error> {
        if step.model != "fx/model" {
            return Err(Error::new(codes::NOT_FOUND, format!("unknown model `{}`", step.model)));
        }
        let silent = step.system_prompt == Some("silent");
        Ok(Box::pin(async move {
            let _ = events.unbounded_send(Ok(ProviderEvent::TextDelta("hello".into())));
            if !silent {
                let _ = events.unbounded_send(Ok(ProviderEvent::Finish(FinishReason::Stop)));
            }
        }))
    }
}

struct ScriptPlugin(ProviderServer);
impl Plugin for ScriptPlugin {
    fn manifest() -> PluginManifest {
        PluginManifest::new("fx-provider", "0.0.0").provides("service", "provider.fx")
    }
    fn activate(ctx: Context) -> Result<Self, Error> {
        let registration = Registration {
            provider: "fx-provider".into(),
            service: "provider.fx".into(),
            credentials: vec![],
        };
        let runtime = dispatch_abi::runtime::PluginRuntime::new("fx-provider", 1)?;
        Ok(ScriptPlugin(provider::serve(ctx.host(), registration, Arc::new(Script), runtime)?))
    }
    fn deactivate(&mut self) -> Result<(), Error> {
        self.0.stop();
        Ok(())
    }
}

/// Describes what `open` saw: the history's length, the tools, the system
/// prompt, and how many steps the memo has seen.
struct Describe;

impl ModelProvider for Describe {
    fn models(&self) -> BoxFuture<Vec<ModelEntry>> {
        Box::pin(async { Vec::new() })
    }
    fn open(&self, step: StepSpec<'_>, events: EventSender) -> Result<BoxFuture<()>, Error> {
        let steps = step.memo.get::<usize>();
        *steps += 1;
        let last = match step.messages.last().map(|m| &m.chunks[..]) {
            Some([Chunk::Text { text }]) => text.clone(),
            _ => String::new(),
        };
        let seen = format!(
            "{} messages, last {last}, {} tools, prompt {:?}, memo {steps}",
            step.messages.len(),
            step.tools.len(),
            step.system_prompt.unwrap_or("")
        );
        Ok(Box::pin(async move {
            let _ = events.unbounded_send(Ok(ProviderEvent::TextDelta(seen)));
            let _ = events.unbounded_send(Ok(ProviderEvent::Finish(FinishReason::Stop)));
        }))
    }
}

struct DescribePlugin(ProviderServer);
impl Plugin for DescribePlugin {
    fn manifest() -> PluginManifest {
        PluginManifest::new("fx-describe", "0.0.0").provides("service", "provider.describe")
    }
    fn activate(ctx: Context) -> Result<Self, Error> {
        let registration = Registration {
            provider: "fx-describe".into(),
            service: "provider.describe".into(),
            credentials: vec![],
        };
        let runtime = dispatch_abi::runtime::PluginRuntime::new("fx-describe", 1)?;
        Ok(DescribePlugin(provider::serve(ctx.host(), registration, Arc::new(Describe), runtime)?))
    }
    fn deactivate(&mut self) -> Result<(), Error> {
        self.0.stop();
        Ok(())
    }
}

/// Opens a step of `provider.describe` and answers the text it streamed.
fn describe(host: &TestHost, texts: &[&str], context: Option<(u64, u64)>) -> Result<String, Error> {
    let key = provider::key("provider.describe");
    let open = ProviderRequest::Open {
        model: "d/m".into(),
        messages: texts.iter().map(|t| ChatMessage::user(*t)).collect(),
        tools: vec![ToolSpec { name: "t".into(), description: "d".into(), input_schema: json!({}) }],
        system_prompt: Some("sp".into()),
        reasoning_effort: None,
        max_output_tokens: None,
        context: context.map(|(id, base)| ContextRef { id, base }),
    };
    let Opened { stream_id } = serde_json::from_value(host.call(&key, &open)?).unwrap();
    let b: Batch = serde_json::from_value(host.call(&key, &ProviderRequest::Next { stream_id })?).unwrap();
    match &b.events[0] {
        ProviderEvent::TextDelta(t) => Ok(t.clone()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_context_keeps_the_history_so_a_step_sends_only_its_new_messages() {
    let mut host = TestHost::new();
    host.activate::<DescribePlugin>(Value::Null).unwrap();
    assert_eq!(
        describe(&host, &["a", "b"], Some((7, 0))).unwrap(),
        "2 messages, last b, 1 tools, prompt \"sp\", memo 1"
    );
    // Continued: the provider sees the whole history, and its memo.
    assert_eq!(
        describe(&host, &["c"], Some((7, 2))).unwrap(),
        "3 messages, last c, 1 tools, prompt \"sp\", memo 2"
    );
    assert_eq!(
        describe(&host, &[], Some((7, 3))).unwrap(),
        "3 messages, last c, 1 tools, prompt \"sp\", memo 3"
    );
    // Without a context: a step on its own, with a fresh memo.
    assert_eq!(describe(&host, &["x"], None).unwrap(), "1 messages, last x, 1 tools, prompt \"sp\", memo 1");
    // A base that does not match what the provider holds, or an unknown
    // id: refused as lost, and the context is gone.
    let e = describe(&host, &["d"], Some((7, 2))).unwrap_err();
    assert_eq!(e.code(), provider::CONTEXT_LOST);
    assert!(e.message().contains("holds 3 messages"), "{e}");
    let e = describe(&host, &["d"], Some((7, 3))).unwrap_err();
    assert_eq!(e.code(), provider::CONTEXT_LOST);
    assert!(e.message().contains("not held"), "{e}");
    // Restarted with base 0, then released.
    assert_eq!(
        describe(&host, &["a"], Some((7, 0))).unwrap(),
        "1 messages, last a, 1 tools, prompt \"sp\", memo 1"
    );
    host.call(&provider::key("provider.describe"), &ProviderRequest::Release { context: 7 }).unwrap();
    let e = describe(&host, &["b"], Some((7, 1))).unwrap_err();
    assert_eq!(e.code(), provider::CONTEXT_LOST);
}

#[test]
fn beyond_the_cap_the_least_recently_used_context_is_forgotten() {
    let mut host = TestHost::new();
    host.activate::<DescribePlugin>(Value::Null).unwrap();
    let n = provider::MAX_CONTEXTS as u64;
    for id in 1..=n {
        describe(&host, &["a"], Some((id, 0))).unwrap();
    }
    // Context 1 is used again, so 2 is now the least recently used.
    describe(&host, &["b"], Some((1, 1))).unwrap();
    describe(&host, &["a"], Some((n + 1, 0))).unwrap();
    let e = describe(&host, &["b"], Some((2, 1))).unwrap_err();
    assert_eq!(e.code(), provider::CONTEXT_LOST);
    for id in [1, 3, n, n + 1] {
        let base = if id == 1 { 2 } else { 1 };
        assert!(describe(&host, &[], Some((id, base))).is_ok(), "context {id} was kept");
    }
}

fn step(host: &TestHost, model: &str, system_prompt: &str) -> Result<Vec<Batch>, Error> {
    let key = provider::key("provider.fx");
    let open = ProviderRequest::Open {
        model: model.into(),
        messages: vec![],
        tools: vec![],
        system_prompt: Some(system_prompt.into()),
        reasoning_effort: None,
        max_output_tokens: None,
        context: None,
    };
    let Opened { stream_id } = serde_json::from_value(host.call(&key, &open)?).unwrap();
    let mut batches = Vec::new();
    loop {
        let b: Batch =
            serde_json::from_value(host.call(&key, &ProviderRequest::Next { stream_id })?).unwrap();
        let done = b.done;
        batches.push(b);
        if done {
            return Ok(batches);
        }
    }
}

#[test]
fn a_served_provider_streams_a_step_to_its_finish() {
    let mut host = TestHost::new();
    host.activate::<ScriptPlugin>(Value::Null).unwrap();
    let events: Vec<ProviderEvent> =
        step(&host, "fx/model", "").unwrap().into_iter().flat_map(|b| b.events).collect();
    assert_eq!(
        events,
        vec![ProviderEvent::TextDelta("hello".into()), ProviderEvent::Finish(FinishReason::Stop)]
    );
    let e = step(&host, "fx/other", "").unwrap_err();
    assert_eq!(e.code(), codes::NOT_FOUND);
}

#[test]
fn a_provider_that_ends_a_step_without_finishing_it_reports_an_error() {
    let mut host = TestHost::new();
    host.activate::<ScriptPlugin>(Value::Null).unwrap();
    let batches = step(&host, "fx/model", "silent").unwrap();
    let last = batches.last().unwrap();
    let err = last.error.as_ref().expect("an error, not a silent success");
    assert!(err.message.contains("without finishing"), "{err:?}");
    assert!(!err.retryable);
    assert!(host.settle(Duration::from_secs(1)));
}

/// The tool server of the running `ToolSetPlugin`, for the test to change.
static TOOL_SET: std::sync::Mutex<Option<Arc<ToolServer>>> = std::sync::Mutex::new(None);

/// A plugin whose tools come and go while it runs (as an MCP bridge's).
struct ToolSetPlugin(Arc<ToolServer>);
impl Plugin for ToolSetPlugin {
    fn manifest() -> PluginManifest {
        PluginManifest::new("tool-set", "0.0.0").provides("service", "tool.*")
    }
    fn activate(ctx: Context) -> Result<Self, Error> {
        let server = Arc::new(ToolServer::new(ctx.host(), "tool-set", 1)?);
        server.add(Arc::new(Fixture("echo")))?;
        *TOOL_SET.lock().unwrap() = Some(Arc::clone(&server));
        Ok(ToolSetPlugin(server))
    }
    fn deactivate(&mut self) -> Result<(), Error> {
        self.0.stop();
        Ok(())
    }
}

#[test]
fn a_tool_server_adds_replaces_and_withdraws_tools_while_it_runs() {
    let mut host = TestHost::new();
    let changed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = Arc::clone(&changed);
    host.host()
        .subscribe_sync(&tool::CHANGED, move |c: tool::ToolsChanged| {
            seen.lock().unwrap().extend(c.tools);
            Ok(())
        })
        .unwrap();
    host.activate::<ToolSetPlugin>(Value::Null).unwrap();
    let set = TOOL_SET.lock().unwrap().clone().unwrap();
    assert_eq!(set.names(), ["echo"]);

    // A new tool gets its own service.
    set.add(Arc::new(Fixture("wait"))).unwrap();
    assert_eq!(set.names(), ["echo", "wait"]);
    assert_eq!(host.call(&tool::key("wait"), &ToolRequest::Spec).unwrap()["name"], "wait");
    assert!(changed.lock().unwrap().is_empty(), "a new tool is not a change");

    // Replacing one is announced; calls run the new one.
    set.add(Arc::new(Fixture("echo"))).unwrap();
    let id = start(&host, "echo", json!({"text": "again"}));
    let result = loop {
        if let Some(r) = next(&host, "echo", id).unwrap().result {
            break r;
        }
    };
    assert_eq!(
        result,
        RunResult::Output { content: "again".into(), is_error: false, images: vec![], timed_out: false }
    );

    // A withdrawn tool's service answers that it is gone, and it can come back.
    assert!(set.remove("wait"));
    assert!(!set.remove("wait"));
    let e = host.call(&tool::key("wait"), &ToolRequest::Spec).unwrap_err();
    assert_eq!(e.code(), codes::NOT_FOUND);
    assert!(e.message().contains("the tool `wait` is no longer offered"), "{e}");
    let req =
        ToolRequest::Start { call_id: "c".into(), conversation_id: "v".into(), cwd: None, input: json!({}) };
    assert_eq!(host.call(&tool::key("wait"), &req).unwrap_err().code(), codes::NOT_FOUND);
    assert_eq!(set.names(), ["echo"]);
    set.add(Arc::new(Fixture("wait"))).unwrap();
    assert_eq!(host.call(&tool::key("wait"), &ToolRequest::Spec).unwrap()["name"], "wait");

    assert!(host.settle(Duration::from_secs(5)));
    assert_eq!(*changed.lock().unwrap(), ["echo", "wait"]);
    host.deactivate_all();
}
