//! `dispatch` as a client: each command against a real server running the
//! scripted model; the plain output when stdout is not a terminal, the
//! live rendering and the interactive prompt under a pseudo-terminal.

use std::process::{Command, Stdio};
use std::time::Duration;

use rexpect::process::wait::WaitStatus;
use serde_json::Value;

use crate::http::{product_config, Server, LOOPBACK};
use crate::support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// `dispatch ARGS --server <the server>`.
fn client(s: &Server, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend(["--server", &s.base]);
    run(&all, &[], LIMIT)
}

#[test]
fn each_command_against_a_real_server() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);

    let models = client(&s, &["models"]);
    assert_eq!((models.code(), models.stdout.as_str()), (0, "scripted/demo\n"), "{}", models.stderr);
    let json: Value = serde_json::from_str(&client(&s, &["models", "--json"]).stdout).unwrap();
    assert_eq!(json["models"][0], "scripted/demo");

    // A tool-calling turn: the answer on stdout, the rest on stderr, no
    // colors when nothing is a terminal.
    let chat = client(&s, &["chat", "scripted/demo", "--text", "read the notes", "-c", "c1"]);
    // (An existing id: the server's default working directory, where the notes are.)
    assert_eq!(chat.code(), 0, "{}", chat.stderr);
    assert_eq!(chat.stdout, "The notes say hello.\n");
    let err: Vec<&str> = chat.stderr.lines().collect();
    assert!(err[0].starts_with(r#"[tool] read_file {"path":"notes.txt"} → "#), "{err:?}");
    assert!(err[0].contains("hello from the notes"), "{err:?}");
    assert!(err[1].starts_with("101 tokens (90 in, 11 out, 0 cached) · 2 steps · "), "{err:?}");
    assert_eq!(err[2], "conversation c1");
    assert!(!chat.stderr.contains('\x1b'), "colors without a terminal: {:?}", chat.stderr);

    // --json: the raw events, one per line.
    let raw = client(&s, &["chat", "--text", "hi", "-c", "c2", "--json"]);
    let events: Vec<Value> = raw.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.first().unwrap()["type"], "user-message");
    assert_eq!(events.last().unwrap()["type"], "turn-sealed");
    assert_eq!(raw.stderr, "");

    let list = client(&s, &["list"]);
    let ids: Vec<&str> = list.stdout.lines().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(ids, ["c2", "c1"], "newest first: {}", list.stdout);
    assert!(list.stdout.lines().next().unwrap().contains("idle"), "{}", list.stdout);
    assert_eq!(client(&s, &["list", "c1"]).stdout.lines().count(), 1);

    let history = client(&s, &["history", "c1"]);
    let lines: Vec<&str> = history.stdout.lines().collect();
    assert_eq!(lines[0], "#1 user: read the notes");
    assert!(lines[1].starts_with("#2 assistant: [tool-call] read_file"), "{lines:?}");
    assert_eq!(lines.last().unwrap(), &"#4 assistant: The notes say hello.");
    let since = client(&s, &["history", "c1", "--since", "3", "--json"]);
    let chunks: Vec<Value> = since.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0]["seq"], 4);

    // Ids by unique prefix, as the original's CLI allows.
    assert_eq!(client(&s, &["read", "c1"]).stdout, "The notes say hello.\n");
    let ambiguous = client(&s, &["read", "c"]);
    assert_eq!(ambiguous.code(), 2, "{}", ambiguous.stderr);
    assert!(ambiguous.stderr.contains("several conversations start with \"c\""), "{}", ambiguous.stderr);

    // `chat -c` takes a unique prefix too: it continues that conversation
    // (it used to start a new one named by the prefix).
    assert_eq!(client(&s, &["chat", "--text", "hi", "-c", "prefixed-conversation"]).code(), 0);
    let more = client(&s, &["chat", "--text", "hi again", "-c", "prefixed-c"]);
    assert_eq!(more.code(), 0, "{}", more.stderr);
    assert!(more.stderr.ends_with("conversation prefixed-conversation\n"), "{}", more.stderr);
    let ids = client(&s, &["list", "prefixed"]).stdout;
    assert_eq!(ids.lines().count(), 1, "{ids}");
    let turns = client(&s, &["history", "prefixed-conversation"]).stdout;
    assert!(turns.contains("user: hi again"), "{turns}");

    assert_eq!(client(&s, &["stop", "c1"]).stdout, "no turn was running in c1\n");
    assert_eq!(client(&s, &["open", "c1"]).stdout, "asked the open clients to show c1\n");

    // send: streamed like chat; --queue on an idle conversation starts a turn.
    let sent = client(&s, &["send", "c2", "--text", "hello again"]);
    assert_eq!((sent.code(), sent.stdout.as_str()), (0, "Hello from the script.\n"), "{}", sent.stderr);
    let queued = client(&s, &["send", "c2", "--text", "and more", "--queue"]);
    assert_eq!(queued.stdout, "no turn was running: started one in c2\n");

    // A file travels inside the message, named.
    let file = cfg.parent().unwrap().join("attach.txt");
    std::fs::write(&file, "attached body").unwrap();
    let with_file = client(&s, &["chat", "--text", "see file", "-c", "c3", "--file", file.to_str().unwrap()]);
    assert_eq!(with_file.code(), 0, "{}", with_file.stderr);
    let first = client(&s, &["history", "c3"]).stdout.lines().next().unwrap().to_owned();
    assert_eq!(first, "#1 user: see file");
    assert!(client(&s, &["history", "c3", "--json"])
        .stdout
        .contains("Attached file (attach.txt):\\nattached body"));
}

#[test]
fn failures_are_one_line_with_exit_codes_scripts_can_rely_on() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);

    let unknown = client(&s, &["chat", "nope/x", "--text", "hi"]);
    assert_eq!(unknown.code(), 4);
    assert_eq!(unknown.stderr.lines().count(), 1, "{}", unknown.stderr);
    assert!(
        unknown.stderr.starts_with("dispatch: the server refused (400 unknown_model): "),
        "{}",
        unknown.stderr
    );

    let nothing = run(&["models", "--server", "http://127.0.0.1:9"], &[], LIMIT);
    assert_eq!(nothing.code(), 3);
    assert!(
        nothing.stderr.contains("cannot reach the Dispatch server at http://127.0.0.1:9"),
        "{}",
        nothing.stderr
    );

    assert_eq!(run(&["read"], &[], LIMIT).code(), 2, "a missing argument is a usage error");
    // An unknown effort is the command line's mistake (it used to be sent
    // and refused by the server: exit 4).
    let effort = run(&["chat", "--effort", "bogus", "--text", "hi", "--server", &s.base], &[], LIMIT);
    assert_eq!(effort.code(), 2, "{}", effort.stderr);
    assert!(effort.stderr.contains("possible values: low, medium, high, xhigh, max"), "{}", effort.stderr);
    let empty = client(&s, &["chat", "--text", "  "]);
    assert_eq!(empty.code(), 2);
    assert!(empty.stderr.contains("nothing to send"), "{}", empty.stderr);
    // A command on a conversation that must exist names the id instead of
    // starting an empty one (`send` used to create it).
    let unknown = client(&s, &["history", "never-written"]);
    assert_eq!(unknown.code(), 2, "{}", unknown.stderr);
    assert!(unknown.stderr.contains(r#"no conversation is "never-written""#), "{}", unknown.stderr);
    assert_eq!(client(&s, &["send", "never-written", "--text", "hi"]).code(), 2);
    assert!(!client(&s, &["list"]).stdout.contains("never-written"), "send created the conversation");

    // A turn stopped from elsewhere: exit 5.
    let mut slow = Command::new(dispatch_bin())
        .args(["chat", "--text", "slow please", "-c", "s1", "--server", &s.base])
        .env_remove("DISPATCH_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_active(&s, "s1");
    assert_eq!(client(&s, &["stop", "s1"]).stdout, "stopped the running turn of s1\n");
    let status = slow.wait().unwrap();
    assert_eq!(status.code(), Some(5));

    // Ctrl-C (SIGINT) asks the server to stop the turn, then leaves: 130.
    let slow = Command::new(dispatch_bin())
        .args(["chat", "--text", "slow please", "-c", "s2", "--server", &s.base])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_active(&s, "s2");
    let int = Command::new("kill").args(["-INT", &slow.id().to_string()]).status().unwrap();
    assert!(int.success());
    let out = wait(slow, LIMIT, "chat interrupted");
    assert_eq!(out.code(), 130, "{}", out.stderr);
    assert!(out.stderr.contains("stopping the turn"), "{}", out.stderr);
    let meta = client(&s, &["list", "s2", "--json"]).stdout;
    assert!(meta.contains("\"status\":\"idle\""), "the turn was stopped on the server: {meta}");

    // With a token on the server, the client sends $DISPATCH_TOKEN.
    drop(s);
    let s = Server::start_with(&cfg, &[("DISPATCH_TOKEN", "t0k3n")]);
    let refused = client(&s, &["models"]);
    assert_eq!(refused.code(), 4);
    assert!(refused.stderr.contains("401"), "{}", refused.stderr);
    let ok = run(&["models", "--server", &s.base], &[("DISPATCH_TOKEN", "t0k3n")], LIMIT);
    assert_eq!(ok.stdout, "scripted/demo\n");
}

/// Wait until the conversation's turn runs.
fn wait_active(s: &Server, id: &str) {
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let status = crate::http::get(&format!("{}/conversations/{id}/status", s.base));
        if status.body["isActive"] == true {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{id} never became active");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pty(s: &Server, args: &[&str]) -> rexpect::session::PtySession {
    let mut cmd = Command::new(dispatch_bin());
    cmd.args(args).args(["--server", &s.base]).env_remove("NO_COLOR").env_remove("DISPATCH_TOKEN");
    rexpect::session::spawn_command(cmd, Some(30_000)).unwrap()
}

#[test]
fn on_a_terminal_the_turn_renders_live_with_colors() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let mut p = pty(&s, &["chat", "scripted/demo", "--text", "read the notes", "-c", "tty"]);
    p.exp_string("\x1b[36m[tool] read_file").unwrap();
    p.exp_string("The notes say hello.").unwrap();
    p.exp_string("\x1b[2m").unwrap();
    p.exp_string("conversation tty").unwrap();
    p.exp_eof().unwrap();
    assert!(matches!(p.process().wait().unwrap(), WaitStatus::Exited(_, 0)));
}

#[test]
fn the_interactive_session_streams_replies_and_ctrl_c_stops_a_turn_not_the_program() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let mut p = pty(&s, &["chat", "scripted/demo"]);
    p.exp_string("/help").unwrap();
    p.exp_string("> ").unwrap();
    p.send_line("hello").unwrap();
    p.exp_string("Hello from the script.").unwrap();
    p.exp_string("conversation ").unwrap();
    let (_, id) = p.exp_regex("[0-9a-f-]{36}").unwrap();
    p.exp_string("> ").unwrap();

    // Ctrl-C during a slow turn stops it; the prompt comes back.
    p.send_line("slow please").unwrap();
    p.exp_string("one").unwrap();
    p.send_control('c').unwrap();
    p.exp_string("stopping the turn").unwrap();
    p.exp_string("stopped").unwrap();
    p.exp_string("> ").unwrap();

    // The conversation goes on in the same id; /history shows it.
    p.send_line("/history").unwrap();
    p.exp_string("#1 user: hello").unwrap();
    p.exp_string("> ").unwrap();
    p.send_line("/model nope/x").unwrap();
    p.exp_string("model: nope/x").unwrap();
    p.exp_string("> ").unwrap();
    p.send_line("hi").unwrap();
    p.exp_string("unknown credential").unwrap();
    p.exp_string("> ").unwrap();
    // Ctrl-D leaves.
    p.send_control('d').unwrap();
    p.exp_eof().unwrap();
    assert!(matches!(p.process().wait().unwrap(), WaitStatus::Exited(_, 0)));

    let turns = crate::http::get(&format!("{}/conversations/{id}/metrics", s.base)).body;
    assert_eq!(turns["turns"].as_array().unwrap().len(), 2, "{turns}");
}

/// Regression (issue 31): `dispatch plugins --server URL --json` carried
/// only the plugin list, while the local form also lists every
/// registration on the bus; both carry them now, hooks with their
/// priorities.
#[test]
fn plugins_json_from_a_running_server_lists_the_registrations_with_hook_priorities() {
    let cfg = crate::http::product_config(crate::http::LOOPBACK);
    let s = crate::http::Server::start(&cfg);
    let out = run(&["plugins", "--server", &s.base, "--json"], &[], Duration::from_secs(60));
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let regs = v["registrations"].as_array().expect("registrations");
    let hook = |name: &str, plugin: &str| {
        regs.iter()
            .find(|r| r["kind"] == "hook" && r["name"] == name && r["plugin"] == plugin)
            .unwrap_or_else(|| panic!("no {name} hook of {plugin} in {regs:?}"))
            .clone()
    };
    assert_eq!(hook("session.tools", "mcp")["priority"], -100);
    assert_eq!(hook("session.system-prompt", "system-prompt")["priority"], 0);
    assert!(regs
        .iter()
        .any(|r| r["kind"] == "service" && r["name"] == "store" && r["plugin"] == "store-sqlite"));
    assert!(v["plugins"].as_array().unwrap().len() >= 17);
}

/// `dispatch workspaces` and `--workspace` on `chat`, `send` and `list`.
#[test]
fn workspaces_from_the_command_line() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "hello from the workspace").unwrap();
    let dir_text = dir.path().display().to_string();

    let made = client(&s, &["workspaces", "set-cwd", "team", &dir_text]);
    assert_eq!(made.code(), 0, "{}", made.stderr);
    assert!(made.stdout.starts_with("team\n"), "{}", made.stdout);
    assert!(made.stdout.contains(&format!("default cwd:      {dir_text}")), "{}", made.stdout);
    let renamed = client(&s, &["workspaces", "rename", "team", "The Team"]);
    assert!(renamed.stdout.contains("title:            The Team"), "{}", renamed.stdout);

    // A new conversation in the workspace runs in its directory (no
    // --cwd: the caller's directory is not sent then).
    let chat = client(&s, &["chat", "--text", "read the notes", "-c", "t1", "--workspace", "team"]);
    assert_eq!(chat.code(), 0, "{}", chat.stderr);
    assert!(chat.stderr.contains("hello from the workspace"), "{}", chat.stderr);
    let other = client(&s, &["chat", "--text", "hi", "-c", "t2"]);
    assert_eq!(other.code(), 0, "{}", other.stderr);

    let listed = client(&s, &["list", "--workspace", "team"]);
    let ids: Vec<&str> = listed.stdout.lines().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(ids, ["t1"], "{}", listed.stdout);
    // `send --workspace` finds the id among that workspace's only.
    let sent = client(&s, &["send", "t", "--workspace", "team", "--text", "hi again"]);
    assert_eq!(sent.code(), 0, "{}", sent.stderr);
    let missing = client(&s, &["send", "t2", "--workspace", "team", "--text", "x"]);
    assert_eq!(missing.code(), 2, "{}", missing.stderr);
    assert!(missing.stderr.contains("no conversation of workspace \"team\""), "{}", missing.stderr);

    let all = client(&s, &["workspaces"]);
    let first = all.stdout.lines().next().unwrap();
    assert!(first.starts_with(" team") && first.contains("   1 conv"), "most recent first: {}", all.stdout);
    assert!(all.stdout.lines().any(|l| l.trim_start().starts_with("default")), "{}", all.stdout);
    let json: Vec<Value> = client(&s, &["workspaces", "--json"])
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let team = json.iter().find(|w| w["id"] == "team").unwrap();
    assert_eq!((team["title"].as_str(), team["conversationCount"].as_u64()), (Some("The Team"), Some(1)));

    let bad = client(&s, &["workspaces", "show", "Not_A_Slug"]);
    assert_ne!(bad.code(), 0);
    let deleted = client(&s, &["workspaces", "delete", "team"]);
    assert_eq!(deleted.code(), 0, "{}", deleted.stderr);
    assert_eq!(deleted.stdout, "deleted workspace team: 1 conversations closed and moved to default\n");
    let refused = client(&s, &["workspaces", "delete", "default"]);
    assert_ne!(refused.code(), 0);
    assert!(refused.stderr.contains("The \"default\" workspace cannot be deleted"), "{}", refused.stderr);
    let cleared = client(&s, &["workspaces", "set-cwd", "spare"]);
    assert!(cleared.stdout.contains("default cwd:      -"), "{}", cleared.stdout);
}
