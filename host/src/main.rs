//! `dispatch` — the Dispatch host.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dispatch_host::config::{Plan, RuntimeFlavor};
use dispatch_host::signals::{self, Terminate};
use dispatch_host::supervisor::{Settings, Supervisor};
use dispatch_host::turn::BusCaller;
use dispatch_host::{client, logging, report};
use dispatch_kernel::remote::ServiceCaller as _;

/// `--effort` values, checked before anything is sent (a usage error, not
/// the server's refusal).
const EFFORTS: [&str; 5] = dispatch_kernel::wire::ReasoningEffort::NAMES;

#[derive(Parser)]
#[command(
    name = "dispatch",
    version,
    about = "An LLM agent runtime made of a minimal kernel and plugins",
    after_help = "Client commands (models, chat, send, read, list, stop, history, open) talk to a running \
                  `dispatch serve` at --server / $DISPATCH_SERVER (default http://127.0.0.1:24203), with \
                  $DISPATCH_TOKEN as its access token. Exit codes: 0 done, 1 the turn failed, 2 usage, \
                  3 server unreachable, 4 the server refused, 5 the turn was stopped, 130 interrupted."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum PluginsAction {
    /// Make a new plugin crate (on the author-facing crates, like the
    /// examples) that builds with `cargo build` and whose test passes.
    New {
        /// The plugin's name: lower-case letters, digits and `-`.
        name: String,
        /// What it is.
        #[arg(long, value_enum, default_value = "tool")]
        kind: dispatch_host::scaffold::Kind,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The Dispatch checkout to depend on (default: the one this binary
        /// was built from).
        #[arg(long)]
        dispatch_src: Option<PathBuf>,
    },
    /// Make a running server re-read its configuration and drop-in
    /// directory and apply the difference (what SIGHUP does); prints the
    /// report.
    Reload {
        #[command(flatten)]
        remote: Remote,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum WorkspacesAction {
    /// Every workspace, most recently active first (`*`: starred).
    List,
    /// One workspace, whole.
    Show {
        /// Its id (slug).
        id: String,
    },
    /// Retitle a workspace (created if missing).
    Rename {
        /// Its id (slug).
        id: String,
        /// The new title.
        title: String,
    },
    /// Set a workspace's default directory (created if missing); without
    /// DIR, clear it.
    SetCwd {
        /// Its id (slug).
        id: String,
        /// The directory, on the server's machine (not checked).
        dir: Option<String>,
    },
    /// Delete a workspace: its conversations are closed (a running turn
    /// aborted) and moved to `default`.
    Delete {
        /// Its id (slug).
        id: String,
    },
}

/// Where the server is.
#[derive(clap::Args, Clone)]
struct Remote {
    /// The server's URL.
    #[arg(long, env = "DISPATCH_SERVER", default_value = client::DEFAULT_SERVER)]
    server: String,
}

#[derive(Subcommand)]
enum Command {
    /// Load and activate the configured plugins and run until SIGINT or SIGTERM (SIGHUP reloads the plugins).
    Serve {
        /// The plugin configuration.
        #[arg(long, short, default_value = "plugins.toml")]
        config: PathBuf,
        /// How log records are written to stderr.
        #[arg(long, value_enum, env = "DISPATCH_LOG_FORMAT", default_value = "text")]
        log_format: logging::Format,
    },
    /// Load and activate exactly as `serve` would, print what happened to
    /// each plugin, deactivate and exit: 0 when every required plugin is
    /// active, 1 otherwise.
    Plugins {
        /// The plugin configuration.
        #[arg(long, short, default_value = "plugins.toml")]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Show a running server's plugins instead (its `GET /extensions`).
        #[arg(long)]
        server: Option<String>,
        #[command(subcommand)]
        action: Option<PluginsAction>,
    },
    /// Print the server's OpenAPI 3.1 document for a configuration — what
    /// `GET /openapi.json` would answer — without starting a server: the
    /// plugins start as for `plugins`, but no transport listens and their
    /// data directory is a scratch one (a store configured with its own
    /// `path` still opens it).
    Openapi {
        /// The plugin configuration.
        #[arg(long, short, default_value = "plugins.toml")]
        config: PathBuf,
    },
    /// Start the plugins, call services on the bus, print each answer as one
    /// JSON line, and stop. Arguments come in pairs: `NAME[@VERSION] JSON`.
    Call {
        /// The plugin configuration.
        #[arg(long, short, default_value = "plugins.toml")]
        config: PathBuf,
        /// `service[@version] request-json`, repeated.
        #[arg(required = true, num_args = 2.., value_names = ["SERVICE[@VERSION]", "JSON"])]
        calls: Vec<String>,
    },
    /// Start the plugins, run one agent turn on MESSAGE and print its events
    /// as NDJSON (one JSON object per line), then stop. Exits 1 when the turn
    /// ends in an error.
    Turn {
        /// The plugin configuration.
        #[arg(long, short, default_value = "plugins.toml")]
        config: PathBuf,
        /// `<credential>/<model>`; default: the catalog's default model.
        #[arg(long, short)]
        model: Option<String>,
        /// Most model steps (0 = unlimited).
        #[arg(long, default_value_t = 0)]
        max_steps: u32,
        /// The working directory the tools are confined to (default: the
        /// current directory).
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// Offer the model no tools, even if tool plugins are loaded.
        #[arg(long)]
        no_tools: bool,
        /// The user message.
        message: String,
    },
    /// List the models the server offers (`<credential>/<model>`).
    Models {
        #[command(flatten)]
        remote: Remote,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Talk to a model: with --text (or a file, or piped stdin) send one
    /// message and stream the reply; without, open an interactive prompt.
    Chat {
        #[command(flatten)]
        remote: Remote,
        /// `<credential>/<model>` (see `dispatch models`); default: the
        /// conversation's, else the server's default.
        model: Option<String>,
        /// The message.
        #[arg(long, short)]
        text: Option<String>,
        /// Continue this conversation (default: a new one).
        #[arg(long, short)]
        conversation: Option<String>,
        /// The workspace a new conversation is created in (default:
        /// `default`); its default directory applies unless --cwd is given.
        #[arg(long, short)]
        workspace: Option<String>,
        /// The tools' working directory (default for a new conversation on
        /// a server on this machine: this directory; else the
        /// conversation's, else the server's).
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// Reasoning effort.
        #[arg(long, value_parser = EFFORTS)]
        effort: Option<String>,
        /// Attach a text file (repeatable).
        #[arg(long, short)]
        file: Vec<PathBuf>,
        /// Ask the web frontend to open the conversation.
        #[arg(long)]
        open: bool,
        /// Show the model's reasoning (dimmed).
        #[arg(long)]
        show_reasoning: bool,
        /// Print the raw events (NDJSON) instead.
        #[arg(long)]
        json: bool,
    },
    /// Send a message to an existing conversation and stream the reply, or
    /// queue it for the running turn.
    Send {
        #[command(flatten)]
        remote: Remote,
        /// The conversation (id or unique id prefix).
        id: String,
        /// The message.
        #[arg(long, short)]
        text: Option<String>,
        /// Attach a text file (repeatable).
        #[arg(long, short)]
        file: Vec<PathBuf>,
        /// Queue it for the running turn (or start one if none runs).
        #[arg(long)]
        queue: bool,
        /// Find ID among this workspace's conversations.
        #[arg(long, short)]
        workspace: Option<String>,
        /// Ask the web frontend to open the conversation.
        #[arg(long)]
        open: bool,
        /// The tools' working directory.
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// Reasoning effort.
        #[arg(long, value_parser = EFFORTS)]
        effort: Option<String>,
        /// Show the model's reasoning (dimmed).
        #[arg(long)]
        show_reasoning: bool,
        /// Print the raw events (NDJSON) instead.
        #[arg(long)]
        json: bool,
    },
    /// Print a conversation's last answer (waiting for a running turn to end).
    Read {
        #[command(flatten)]
        remote: Remote,
        /// The conversation (id or unique id prefix).
        id: String,
    },
    /// List conversations, newest activity first.
    List {
        #[command(flatten)]
        remote: Remote,
        /// Only ids starting with this.
        prefix: Option<String>,
        /// Only these statuses (comma-separated; default active,idle).
        #[arg(long)]
        status: Option<String>,
        /// Every status, closed ones included.
        #[arg(long)]
        all: bool,
        /// Only this workspace's.
        #[arg(long, short)]
        workspace: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Stop a conversation's running turn.
    Stop {
        #[command(flatten)]
        remote: Remote,
        /// The conversation (id or unique id prefix).
        id: String,
    },
    /// Print a conversation's history.
    History {
        #[command(flatten)]
        remote: Remote,
        /// The conversation (id or unique id prefix).
        id: String,
        /// Only what came after this sequence number.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// One stored chunk (JSON) per line.
        #[arg(long)]
        json: bool,
    },
    /// Compact a conversation: its old part summarized by a model, its
    /// whole history kept in a new archive conversation.
    Compact {
        #[command(flatten)]
        remote: Remote,
        /// The conversation (id or unique id prefix).
        id: String,
        /// Messages to keep after the summary.
        #[arg(long, default_value_t = 10)]
        keep: u64,
        /// The model that summarizes (default: the conversation's).
        #[arg(long, short)]
        model: Option<String>,
    },
    /// Workspaces: list them (the default), or show, rename, set the
    /// default directory of, or delete one.
    Workspaces {
        /// The server's URL.
        #[arg(long, global = true, env = "DISPATCH_SERVER", default_value = client::DEFAULT_SERVER)]
        server: String,
        /// Print the server's JSON (a list: one workspace per line).
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: Option<WorkspacesAction>,
    },
    /// Print a conversation's turn traces: a line per model request, its
    /// tool calls nested, durations right-aligned (needs the `traces`
    /// plugin on the server).
    Traces {
        #[command(flatten)]
        remote: Remote,
        /// The conversation (id or unique id prefix).
        id: String,
        /// Only this turn's.
        #[arg(long)]
        turn: Option<String>,
        /// One trace (the server's JSON) per line.
        #[arg(long)]
        json: bool,
    },
    /// Ask the web frontend to open a conversation.
    Open {
        #[command(flatten)]
        remote: Remote,
        /// The conversation (id or unique id prefix).
        id: String,
    },
}

fn main() -> ExitCode {
    // Parsing the command line starts no thread and keeps no pointer into
    // the environment (clap copies what it reads).
    let cli = Cli::parse();
    let named = match &cli.command {
        Command::Serve { config, .. }
        | Command::Plugins { config, .. }
        | Command::Call { config, .. }
        | Command::Openapi { config }
        | Command::Turn { config, .. } => dispatch_host::environ::configured_credentials(config),
        _ => Vec::new(),
    };
    // SAFETY: still one thread, and nothing has kept a pointer from getenv.
    let hidden = unsafe { dispatch_host::environ::hide_credentials(&named) };
    if let Command::Plugins { action: Some(PluginsAction::New { name, kind, dir, dispatch_src }), .. } =
        &cli.command
    {
        return match dispatch_host::scaffold::new_plugin(name, *kind, dir.as_deref(), dispatch_src.as_deref())
        {
            Ok(dir) => {
                println!(
                    "created {} — build it with: cargo build --release --manifest-path {}/Cargo.toml",
                    dir.display(),
                    dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("dispatch: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if is_client(&cli.command) {
        return client_main(cli.command);
    }
    let filter = logging::filter_string();
    let format = match &cli.command {
        Command::Serve { log_format, .. } => *log_format,
        _ => logging::Format::Text,
    };
    logging::init(&filter, format);
    if !hidden.is_empty() {
        tracing::debug!(variables = ?hidden, "credentials blanked in /proc/self/environ (kept for the plugins)");
    }
    match run(cli, filter) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dispatch: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli, log_filter: String) -> anyhow::Result<ExitCode> {
    let config = match &cli.command {
        Command::Serve { config, .. }
        | Command::Plugins { config, .. }
        | Command::Call { config, .. }
        | Command::Openapi { config }
        | Command::Turn { config, .. } => config.clone(),
        _ => unreachable!("client commands return early"),
    };
    let mut plan = Plan::load(&config)?;
    // `dispatch openapi` only asks routes to describe themselves: its
    // plugins keep their files in a throwaway directory, so it runs beside
    // a live server without touching (or locking) its data.
    let _scratch = match &cli.command {
        Command::Openapi { .. } => {
            let dir = tempfile::tempdir().context("cannot make a scratch data directory")?;
            plan.data_dir = dir.path().to_owned();
            Some(dir)
        }
        _ => None,
    };
    let runtime = match plan.host.runtime {
        // Its blocking pool's threads carry the name too (the main thread
        // keeps the process's).
        RuntimeFlavor::CurrentThread => {
            tokio::runtime::Builder::new_current_thread().thread_name("dispatch").enable_all().build()
        }
        RuntimeFlavor::MultiThread => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = plan.host.worker_threads {
                b.worker_threads(n.max(1));
            }
            b.thread_name("dispatch").enable_all().build()
        }
    }
    .context("cannot start the async runtime")?;
    // `serve`'s stop: set by the signal task below, read by start-up (an
    // activation under way gives up, the rest are skipped) and the loop.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let serving = matches!(cli.command, Command::Serve { .. });
    let settings = Settings {
        activate_timeout: Duration::from_millis(plan.host.activate_timeout_ms),
        deactivate_timeout: Duration::from_millis(plan.host.deactivate_timeout_ms),
        log_filter,
        leave_out: match cli.command {
            Command::Turn { .. } => Some(dispatch_host::supervisor::beside_the_session as _),
            Command::Openapi { .. } => Some(dispatch_host::supervisor::no_transports as _),
            _ => None,
        },
        stop: serving.then(|| stop_rx.clone()),
    };
    let code = runtime.block_on(async move {
        // Listen before anything starts: a terminating signal during
        // start-up must not kill the host with its plugins' processes
        // running. (`plugins` keeps the default action: it only loads and
        // reports, and must stay interruptible.)
        let mut terminate = match cli.command {
            Command::Plugins { .. } => None,
            _ => Some(Terminate::listen().context("cannot listen for signals")?),
        };
        // `serve` hears its signals from the start: SIGINT/SIGTERM set the
        // stop (start-up included — an MCP server that takes its time to
        // start must not hold a SIGTERM for its whole start timeout),
        // SIGHUP asks for a reload.
        let (hup_tx, hup_rx) = tokio::sync::mpsc::channel::<()>(4);
        let stopped_by = Arc::new(std::sync::atomic::AtomicI32::new(0));
        if serving {
            if let Some(mut t) = terminate.take() {
                let by = Arc::clone(&stopped_by);
                tokio::spawn(async move {
                    loop {
                        match t.stop_or_reload().await {
                            Some(n) => {
                                by.store(n, std::sync::atomic::Ordering::SeqCst);
                                let _ = stop_tx.send(true);
                                break;
                            }
                            None => {
                                let _ = hup_tx.try_send(());
                            }
                        }
                    }
                });
            }
        }
        // `serve` answers reloads; the service is on the bus before any
        // transport can take a request for it.
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
        let reload = matches!(cli.command, Command::Serve { .. }).then_some(reload_tx);
        let mut sup = Supervisor::start_with_reload(plan, settings, reload).await;
        let code = match (cli.command, terminate) {
            (Command::Serve { config, .. }, None) => {
                let signals = Signals { stop: stop_rx, by: stopped_by, reload: hup_rx };
                serve(&mut sup, &config, signals, reload_rx).await
            }
            (Command::Plugins { json, .. }, _) => {
                let reports = sup.reports_snapshot();
                let mcp = mcp_servers(&sup).await;
                if json {
                    let mut body = serde_json::json!({
                        "plugins": reports,
                        "registrations": sup.bus().registrations(),
                    });
                    if let Some(servers) = &mcp {
                        body["mcpServers"] = serde_json::json!(servers);
                    }
                    emit(&serde_json::to_string_pretty(&body).unwrap_or_default());
                } else {
                    let mut text = report::table(&reports);
                    if let Some(servers) = &mcp {
                        text.push('\n');
                        text.push_str(&report::mcp_table(servers));
                    }
                    emit(text.trim_end());
                }
                Ok(if sup.required_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
            }
            (Command::Openapi { .. }, Some(mut terminate)) => {
                tokio::select! {
                    code = openapi(&sup) => code,
                    n = terminate.first() => Ok(signals::exit_code(n)),
                }
            }
            (Command::Call { calls, .. }, Some(mut terminate)) => {
                tokio::select! {
                    code = call(&sup, &calls) => code,
                    // Deactivation below stops whatever the calls started.
                    n = terminate.first() => Ok(signals::exit_code(n)),
                }
            }
            (Command::Turn { model, message, max_steps, cwd, no_tools, .. }, Some(terminate)) => {
                let abort = dispatch_kernel::runtime::AbortSignal::new();
                let fired = terminate.abort_on_signal(abort.clone());
                let request = dispatch_host::turn::TurnRequest { model, message, max_steps, cwd, no_tools };
                let result = dispatch_host::turn::run(sup.shared(), request, abort).await;
                match (result, fired.load(std::sync::atomic::Ordering::SeqCst)) {
                    // Ended by a signal: say so in the exit code.
                    (_, n) if n != 0 => Ok(signals::exit_code(n)),
                    (Ok(outcome), _) if outcome.reason == dispatch_kernel::wire::FinishReason::Error => {
                        Ok(ExitCode::FAILURE)
                    }
                    (Ok(_), _) => Ok(ExitCode::SUCCESS),
                    (Err(e), _) => {
                        eprintln!("dispatch: {e}");
                        Ok(ExitCode::FAILURE)
                    }
                }
            }
            // Every command but `plugins` listens (above); client commands
            // returned before the host started.
            _ => unreachable!("no signal listener for a command that needs one"),
        };
        sup.shutdown().await;
        code
    });
    // Plugin threads that ignored their deadline must not keep us alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// What `serve` hears of its signals (the task in `run` listens).
struct Signals {
    /// `true` once SIGINT or SIGTERM came.
    stop: tokio::sync::watch::Receiver<bool>,
    /// Which one.
    by: Arc<std::sync::atomic::AtomicI32>,
    /// One message per SIGHUP.
    reload: tokio::sync::mpsc::Receiver<()>,
}

async fn serve(
    sup: &mut Supervisor,
    config: &std::path::Path,
    mut signals: Signals,
    mut reload_rx: tokio::sync::mpsc::Receiver<
        tokio::sync::oneshot::Sender<dispatch_host::supervisor::ReloadReport>,
    >,
) -> anyhow::Result<ExitCode> {
    if *signals.stop.borrow() {
        // Stopped during start-up: a clean stop, whatever did not start.
        let n = signals.by.load(std::sync::atomic::Ordering::SeqCst);
        tracing::info!(signal = n, "stopped during start-up; shutting down");
        return Ok(ExitCode::SUCCESS);
    }
    if !sup.required_ok() {
        let failed: Vec<String> = sup
            .reports_snapshot()
            .into_iter()
            .filter(|r| r.required && r.state != dispatch_host::supervisor::State::Active)
            .map(|r| format!("{} ({}): {}", r.id, r.file, r.error.unwrap_or_default()))
            .collect();
        eprintln!("dispatch: required plugins are not active:\n  {}", failed.join("\n  "));
        return Ok(ExitCode::FAILURE);
    }
    let active =
        sup.reports_snapshot().iter().filter(|r| r.state == dispatch_host::supervisor::State::Active).count();
    tracing::info!(active, "dispatch is serving; SIGINT or SIGTERM stops it, SIGHUP reloads the plugins");
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("serving, {active} plugins active")),
    ]);
    let n = loop {
        tokio::select! {
            _ = signals.stop.wait_for(|s| *s) => break signals.by.load(std::sync::atomic::Ordering::SeqCst),
            Some(()) = signals.reload.recv() => {
                tracing::info!("SIGHUP: reloading the plugins");
                reload(sup, config).await;
            }
            Some(reply) = reload_rx.recv() => {
                // Its asker gave up (a request queued during start-up
                // whose client left): nothing to answer.
                if reply.is_closed() {
                    continue;
                }
                let report = reload(sup, config).await;
                let _ = reply.send(report);
            }
        }
    };
    tracing::info!(signal = n, "shutting down");
    notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping: sealing running turns"),
    ]);
    // A requested stop is a clean exit for a service manager.
    Ok(ExitCode::SUCCESS)
}

fn is_client(command: &Command) -> bool {
    match command {
        Command::Plugins { server, action, .. } => {
            server.is_some() || matches!(action, Some(PluginsAction::Reload { .. }))
        }
        Command::Serve { .. } | Command::Call { .. } | Command::Turn { .. } | Command::Openapi { .. } => {
            false
        }
        _ => true,
    }
}

/// The client commands: no plugins, one small runtime, errors as one line.
fn client_main(command: Command) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dispatch: cannot start the async runtime: {e}");
            return ExitCode::from(client::exit::TURN_FAILED);
        }
    };
    match client_command(&runtime, command) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("dispatch: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn client_command(runtime: &tokio::runtime::Runtime, command: Command) -> client::Outcome {
    use std::io::{IsTerminal as _, Read as _};
    match command {
        Command::Models { remote, json } => {
            runtime.block_on(client::models(&client::server(&remote.server)?, json))
        }
        Command::Chat {
            remote,
            model,
            text,
            conversation,
            workspace,
            cwd,
            effort,
            file,
            open,
            show_reasoning,
            json,
        } => {
            let server = client::server(&remote.server)?;
            // `-c` takes an id or a unique prefix of one, like every command.
            let conversation = match conversation {
                Some(c) => Some(runtime.block_on(client::resolve(&server, &c))?),
                None => None,
            };
            // A new conversation on this machine starts here, unless a
            // workspace was named: its default directory then applies.
            let cwd = match (cwd, &conversation) {
                (Some(dir), _) => Some(client::check_dir(&dir)?),
                (None, None) if workspace.is_none() => client::default_cwd(&server),
                (None, _) => None,
            };
            let style = client::render::Style::detect(show_reasoning);
            let mut request =
                client::TurnRequest { conversation, message: String::new(), model, cwd, effort, workspace };
            let piped = text.is_none() && file.is_empty() && !std::io::stdin().is_terminal();
            if text.is_none() && file.is_empty() && !piped {
                return client::interactive::run(runtime, &server, request, style);
            }
            let mut text = text;
            if piped {
                let mut input = String::new();
                std::io::stdin().read_to_string(&mut input).map_err(|e| client::Failure {
                    code: client::exit::USAGE,
                    message: format!("cannot read the message from stdin: {e}"),
                })?;
                text = Some(input);
            }
            request.message = client::compose(text.as_deref(), &file)?;
            let show = client::Show { json, style, open };
            let (ending, _, interrupted) = runtime.block_on(client::run_turn(&server, &request, show))?;
            Ok(client::turn_code(ending, interrupted))
        }
        Command::Send {
            remote,
            id,
            text,
            file,
            queue,
            workspace,
            open,
            cwd,
            effort,
            show_reasoning,
            json,
        } => {
            let server = client::server(&remote.server)?;
            let cwd = cwd.as_deref().map(client::check_dir).transpose()?;
            let message = client::compose(text.as_deref(), &file)?;
            let show = client::Show { json, style: client::render::Style::detect(show_reasoning), open };
            let request = client::SendRequest { id, message, queue, cwd, effort, workspace };
            runtime.block_on(client::send(&server, request, show))
        }
        Command::Read { remote, id } => runtime.block_on(client::read(&client::server(&remote.server)?, &id)),
        Command::List { remote, prefix, status, all, workspace, json } => runtime.block_on(client::list(
            &client::server(&remote.server)?,
            prefix.as_deref(),
            status.as_deref(),
            workspace.as_deref(),
            all,
            json,
        )),
        Command::Workspaces { server, json, action } => {
            let action = match action.unwrap_or(WorkspacesAction::List) {
                WorkspacesAction::List => client::WorkspaceAction::List,
                WorkspacesAction::Show { id } => client::WorkspaceAction::Show(id),
                WorkspacesAction::Rename { id, title } => client::WorkspaceAction::Rename(id, title),
                WorkspacesAction::SetCwd { id, dir } => client::WorkspaceAction::SetCwd(id, dir),
                WorkspacesAction::Delete { id } => client::WorkspaceAction::Delete(id),
            };
            runtime.block_on(client::workspaces(&client::server(&server)?, action, json))
        }
        Command::Stop { remote, id } => runtime.block_on(client::stop(&client::server(&remote.server)?, &id)),
        Command::History { remote, id, since, json } => {
            runtime.block_on(client::history(&client::server(&remote.server)?, &id, since, json))
        }
        Command::Open { remote, id } => runtime.block_on(client::open(&client::server(&remote.server)?, &id)),
        Command::Traces { remote, id, turn, json } => runtime.block_on(client::traces::traces(
            &client::server(&remote.server)?,
            &id,
            turn.as_deref(),
            json,
        )),
        Command::Compact { remote, id, keep, model } => {
            runtime.block_on(client::compact(&client::server(&remote.server)?, &id, keep, model.as_deref()))
        }
        Command::Plugins { action: Some(PluginsAction::Reload { remote, json }), .. } => {
            runtime.block_on(client::reload(&client::server(&remote.server)?, json))
        }
        Command::Plugins { server: Some(url), json, .. } => {
            runtime.block_on(client::plugins(&client::server(&url)?, json))
        }
        _ => unreachable!("host commands are handled by run()"),
    }
}

/// Re-read the configuration and apply it; a configuration that cannot
/// be read changes nothing and is the report's one failure.
async fn reload(sup: &mut Supervisor, config: &std::path::Path) -> dispatch_host::supervisor::ReloadReport {
    notify(&[sd_notify::NotifyState::Reloading]);
    let report = match Plan::load(config) {
        Ok(plan) => sup.reload(plan).await,
        Err(e) => {
            tracing::error!(error = %e, "reload refused: the configuration cannot be used; nothing changed");
            dispatch_host::supervisor::ReloadReport {
                failed: vec![dispatch_host::supervisor::ReloadChange {
                    id: "plugins.toml".into(),
                    file: config.display().to_string(),
                    version: None,
                    reason: Some(format!("{e}; nothing was changed")),
                }],
                ..Default::default()
            }
        }
    };
    notify(&[sd_notify::NotifyState::Ready]);
    report
}

/// Tell systemd (`Type=notify`) where we stand; nothing without
/// `$NOTIFY_SOCKET`.
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(false, state) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
}

/// Print one line on stdout; `false` when stdout is gone (a closed pipe),
/// which must not panic the host as `println!` would.
fn emit(line: &str) -> bool {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}

/// The MCP servers of an active `mcp` plugin, as it reports them; `None`
/// when none is loaded (or it cannot say).
async fn mcp_servers(sup: &Supervisor) -> Option<Vec<dispatch_contracts::mcp::ServerStatus>> {
    let key = dispatch_contracts::mcp::SERVERS;
    let answer = BusCaller(sup.shared()).call(key.name(), key.version(), b"{}".to_vec()).await.ok()?;
    serde_json::from_slice::<dispatch_contracts::mcp::Servers>(&answer).ok().map(|s| s.servers)
}

/// `dispatch openapi`: every route service on the bus describes itself;
/// the document is assembled as `transport-http` assembles it.
async fn openapi(sup: &Supervisor) -> anyhow::Result<ExitCode> {
    use dispatch_contracts::http::{RouteSpec, SERVICE_PREFIX, VERSION};
    use dispatch_contracts::openapi::{assemble, transport_operations, Described};
    let caller = BusCaller(sup.shared());
    let mut routes = Vec::new();
    let describe = serde_json::to_vec(&dispatch_contracts::http::RouteRequest::Describe)?;
    for reg in sup.bus().registrations() {
        if reg.kind != "service" || reg.version != VERSION || !reg.name.starts_with(SERVICE_PREFIX) {
            continue;
        }
        let answer = caller.call(&reg.name, VERSION, describe.clone()).await.map_err(|e| {
            anyhow::anyhow!(
                "the route `{}` of plugin `{}` does not describe itself: {}",
                reg.name,
                reg.plugin,
                e.message
            )
        })?;
        let spec: RouteSpec = serde_json::from_slice(&answer).with_context(|| {
            format!("the route `{}` of plugin `{}` describes itself wrongly", reg.name, reg.plugin)
        })?;
        routes.push(Described { spec, plugin: reg.plugin });
    }
    routes.extend(transport_operations());
    let doc = assemble(env!("CARGO_PKG_VERSION"), &routes);
    if !emit(&serde_json::to_string_pretty(&doc)?) {
        return Ok(ExitCode::from(141));
    }
    // The transports were left out on purpose; a required plugin that
    // failed means routes are missing from the document.
    let failed: Vec<String> = sup
        .reports_snapshot()
        .into_iter()
        .filter(|r| r.required && r.state == dispatch_contracts::plugins::State::Failed)
        .map(|r| format!("{}: {}", r.id, r.error.unwrap_or_default()))
        .collect();
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("dispatch: the document lacks the routes of plugins that failed: {}", failed.join("; "));
        Ok(ExitCode::FAILURE)
    }
}

async fn call(sup: &Supervisor, args: &[String]) -> anyhow::Result<ExitCode> {
    if args.len() % 2 != 0 {
        anyhow::bail!("`dispatch call` takes pairs of SERVICE[@VERSION] JSON; got {} arguments", args.len());
    }
    let caller = BusCaller(sup.shared());
    let mut all_ok = true;
    for pair in args.chunks(2) {
        let (target, body) = (&pair[0], &pair[1]);
        let (name, version) = match target.split_once('@') {
            Some((n, v)) => (n, v.parse::<u32>().with_context(|| format!("bad version in `{target}`"))?),
            None => (target.as_str(), 1),
        };
        let request: serde_json::Value =
            serde_json::from_str(body).with_context(|| format!("the request for `{target}` is not JSON"))?;
        let bytes = serde_json::to_vec(&request)?;
        let answer = caller
            .call(name, version, bytes)
            .await
            .map_err(|e| serde_json::json!({"error": e.message, "code": e.code}));
        let line = match answer {
            Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(v) => v.to_string(),
                Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
            },
            Err(err) => {
                all_ok = false;
                err.to_string()
            }
        };
        if !emit(&line) {
            // The reader went away (`| head -1`): stop, as a SIGPIPE would.
            return Ok(ExitCode::from(141));
        }
    }
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
