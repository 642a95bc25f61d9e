//! `dispatch turn`: one agent turn from the command line, through the bus —
//! the model catalog resolves the model, the provider plugin streams it, the
//! kernel runs the turn, and every event is printed as one JSON line (the
//! same NDJSON the HTTP transport will stream).

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use abi_stable::std_types::RVec;
use dispatch_contracts::catalog::{CatalogRequest, CATALOG};
use dispatch_kernel::protocol::CallError;
use dispatch_kernel::protocol::{BoxFuture, Spawner};
use dispatch_kernel::provider::ProviderOptions;
use dispatch_kernel::remote::{RemoteProvider, Resolved, ServiceCaller};
use dispatch_kernel::runtime::{AbortSignal, MonotonicClock, RetryPolicy, Sleep};
use dispatch_kernel::tool::Tool;
use dispatch_kernel::toolbus::{RemoteTool, TOOL_PREFIX};
use dispatch_kernel::turn::{run_turn, TurnInput, TurnOutcome};
use dispatch_kernel::wire::{AgentEvent, ChatMessage};

use dispatch_bus::hostapi::{bus_error, Shared};

/// Calls services on the host's bus (the host's own client).
pub struct BusCaller(pub Arc<Shared>);

impl ServiceCaller for BusCaller {
    fn call(&self, name: &str, version: u32, request: Vec<u8>) -> BoxFuture<Result<Vec<u8>, CallError>> {
        match self.0.bus.service(name, version) {
            Ok(handler) => {
                let fut = handler.call(RVec::from(request));
                Box::pin(async move {
                    fut.await
                        .into_result()
                        .map(|b| b.to_vec())
                        .map_err(|e| CallError::new(e.code.into_string(), e.message.into_string()))
                })
            }
            Err(e) => {
                let e = bus_error(e);
                Box::pin(std::future::ready(Err(CallError::new(
                    e.code.into_string(),
                    e.message.into_string(),
                ))))
            }
        }
    }
}

struct TokioSleep;
impl Sleep for TokioSleep {
    fn sleep(&self, d: Duration) -> BoxFuture<()> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// Why a turn could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TurnError(pub String);

/// Resolve `model` through the catalog.
pub async fn resolve(caller: &BusCaller, model: Option<String>) -> Result<Resolved, TurnError> {
    let req = serde_json::to_vec(&CatalogRequest::Resolve { model }).map_err(|e| TurnError(e.to_string()))?;
    let bytes = caller
        .call(CATALOG.name(), CATALOG.version(), req)
        .await
        .map_err(|e| TurnError(format!("cannot resolve the model ({}): {}", e.code, e.message)))?;
    serde_json::from_slice(&bytes).map_err(|e| TurnError(format!("the catalog answered invalid JSON: {e}")))
}

/// Every tool on the bus: each service named `tool.*`, described by its
/// `spec`. A tool service that cannot describe itself is left out with a
/// warning rather than failing the turn.
pub async fn tools(caller: &Arc<BusCaller>, spawn: &Spawner) -> Vec<Arc<dyn Tool>> {
    let mut names: Vec<String> = caller
        .0
        .bus
        .registrations()
        .into_iter()
        .filter(|r| r.kind == "service" && r.name.starts_with(TOOL_PREFIX))
        .map(|r| r.name)
        .collect();
    names.sort();
    let mut tools: Vec<Arc<dyn Tool>> = Vec::new();
    for name in names {
        match RemoteTool::connect(Arc::clone(caller), &name, Some(Arc::clone(spawn))).await {
            Ok(t) => tools.push(Arc::new(t)),
            Err(e) => tracing::warn!(service = %name, error = %e, "tool left out"),
        }
    }
    tools
}

/// What `dispatch turn` runs.
#[derive(Debug, Clone, Default)]
pub struct TurnRequest {
    /// `<credential>/<model>`, else the catalog's default.
    pub model: Option<String>,
    /// The user message.
    pub message: String,
    /// Most steps (0 = unlimited).
    pub max_steps: u32,
    /// The working directory of the turn's tools (else the process's).
    pub cwd: Option<std::path::PathBuf>,
    /// Offer no tools.
    pub no_tools: bool,
}

/// Run one turn and print its events as NDJSON on stdout. `abort` ends it
/// early (the binary fires it on SIGINT, SIGTERM and SIGHUP).
pub async fn run(
    shared: Arc<Shared>,
    request: TurnRequest,
    abort: AbortSignal,
) -> Result<TurnOutcome, TurnError> {
    let TurnRequest { model, message, max_steps, cwd, no_tools } = request;
    let caller = Arc::new(BusCaller(shared));
    let resolved = resolve(&caller, model).await?;
    let handle = tokio::runtime::Handle::current();
    let spawn: Spawner = Arc::new(move |f| {
        handle.spawn(f);
    });
    let cwd = match cwd {
        Some(d) => {
            let dir = std::fs::canonicalize(&d).map_err(|e| {
                TurnError(format!("the working directory {} is not usable: {e}", d.display()))
            })?;
            if !dir.is_dir() {
                return Err(TurnError(format!("the working directory {} is not a directory", d.display())));
            }
            Some(dir)
        }
        None => std::env::current_dir().ok(),
    };
    let tools = if no_tools { Vec::new() } else { tools(&caller, &spawn).await };
    let provider = RemoteProvider::new(Arc::clone(&caller), &resolved, Some(spawn));
    let conversation_id = format!("cli-{}", std::process::id());
    let turn_id = format!("turn-{}", std::process::id());
    let emit = Arc::new(|event: AgentEvent| {
        let mut out = std::io::stdout().lock();
        if let Ok(line) = serde_json::to_string(&event) {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    });
    emit(AgentEvent::UserMessage {
        conversation_id: conversation_id.clone(),
        turn_id: turn_id.clone(),
        text: message.clone(),
    });
    let outcome = run_turn(TurnInput {
        conversation_id: conversation_id.clone(),
        turn_id: turn_id.clone(),
        history: vec![ChatMessage::user(message)],
        provider: &provider,
        options: ProviderOptions { model: Some(resolved.model.clone()), ..ProviderOptions::default() },
        tools,
        cwd,
        abort,
        clock: Some(Arc::new(MonotonicClock::start())),
        sleep: Arc::new(TokioSleep),
        retry: RetryPolicy::default(),
        max_steps,
        max_parallel_tools: 4,
        emit: emit.clone(),
        drain_steering: None,
        on_step: None,
        compact: None,
        view: None,
        observe: None,
    })
    .await;
    emit(AgentEvent::TurnSealed { conversation_id, turn_id });
    Ok(outcome)
}
