//! `dispatch chat <model>` without `--text`: a prompt where each line is a
//! message and the reply streams in. Ctrl-C while a turn runs stops that
//! turn (the prompt returns); Ctrl-C twice at the prompt, or Ctrl-D,
//! leaves. Commands start with `/` (`/help`).

use std::io::Write as _;
use std::path::Path;

use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

use super::http::Server;
use super::render::Style;
use super::{check_dir, exit, history_line, run_turn, Failure, Outcome, Show, TurnRequest};

const HELP: &str = "\
Type a message and press Enter; the reply streams in.
  Ctrl-C         stop the running turn (at the prompt: twice to leave)
  Ctrl-D         leave
  /stop          stop the conversation's running turn
  /model M       use model M from the next message on (see `dispatch models`)
  /cwd DIR       run tools in DIR from the next message on
  /history       print this conversation's history
  /new           start a new conversation
  /help          this text";

/// Run the prompt until the user leaves.
pub fn run(
    runtime: &tokio::runtime::Runtime,
    server: &Server,
    mut request: TurnRequest,
    style: Style,
) -> Outcome {
    let mut editor = DefaultEditor::new()
        .map_err(|e| Failure { code: exit::USAGE, message: format!("no terminal for the prompt: {e}") })?;
    let conversation = request.conversation.clone();
    eprintln!(
        "dispatch chat: {} on {}{} — /help for commands, Ctrl-D to leave",
        request.model.as_deref().unwrap_or("the default model"),
        server.url(),
        conversation.map(|c| format!(", conversation {c}")).unwrap_or_default()
    );
    let mut interrupted_once = false;
    loop {
        let line = match editor.readline("> ") {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => {
                if interrupted_once {
                    return Ok(exit::OK);
                }
                interrupted_once = true;
                eprintln!("(Ctrl-C again or Ctrl-D to leave)");
                continue;
            }
            Err(ReadlineError::Eof) => return Ok(exit::OK),
            Err(e) => {
                return Err(Failure { code: exit::TURN_FAILED, message: format!("the prompt failed: {e}") })
            }
        };
        interrupted_once = false;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        if let Some(command) = line.strip_prefix('/') {
            let (name, arg) = command.split_once(' ').map_or((command, ""), |(n, a)| (n, a.trim()));
            if let Err(f) = slash(runtime, server, &mut request, name, arg) {
                eprintln!("{}", f.message);
            }
            continue;
        }
        request.message = line.to_owned();
        let show = Show { json: false, style, open: false };
        match runtime.block_on(run_turn(server, &request, show)) {
            Ok((_, conversation, _)) => {
                if !conversation.is_empty() {
                    request.conversation = Some(conversation);
                }
            }
            // Not fatal: say it and keep the prompt.
            Err(f) => eprintln!("{}", f.message),
        }
        let _ = std::io::stdout().flush();
    }
}

fn slash(
    runtime: &tokio::runtime::Runtime,
    server: &Server,
    request: &mut TurnRequest,
    name: &str,
    arg: &str,
) -> Result<(), Failure> {
    let usage = |m: &str| Failure { code: exit::USAGE, message: m.to_owned() };
    match name {
        "help" => eprintln!("{HELP}"),
        "model" if !arg.is_empty() => {
            request.model = Some(arg.to_owned());
            eprintln!("model: {arg}");
        }
        "model" => return Err(usage("/model needs a model, e.g. /model scripted/demo")),
        "cwd" if !arg.is_empty() => {
            let dir = check_dir(Path::new(arg))?;
            eprintln!("working directory: {dir}");
            request.cwd = Some(dir);
        }
        "cwd" => return Err(usage("/cwd needs a directory")),
        "new" => {
            request.conversation = None;
            eprintln!("a new conversation starts with the next message");
        }
        "stop" | "history" => {
            let Some(id) = request.conversation.clone() else {
                return Err(usage("no conversation yet: send a message first"));
            };
            if name == "stop" {
                runtime.block_on(super::stop(server, &id))?;
            } else {
                let answer = runtime.block_on(server.json("GET", &format!("/conversations/{id}"), None))?;
                for c in answer["chunks"].as_array().into_iter().flatten() {
                    println!("{}", history_line(c));
                }
            }
        }
        "quit" | "exit" => std::process::exit(i32::from(exit::OK)),
        other => return Err(usage(&format!("unknown command /{other} (/help lists them)"))),
    }
    Ok(())
}
