//! The standard tools through the real host: each tool is its own `.so`,
//! the scripted model calls them, `dispatch turn` offers them to the turn
//! over the bus, and their effects land in a real working directory.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::providers::{turn, types};
use crate::support::*;
use dispatch_test_support::process_table::{assert_no_process_with, assert_process_with};

const MODELS: &str = "libdispatch_plugin_models.so";
const SCRIPTED: &str = "libdispatch_plugin_provider_scripted.so";
const TOOLS: [&str; 5] = [
    "libdispatch_plugin_tool_read_file.so",
    "libdispatch_plugin_tool_write_file.so",
    "libdispatch_plugin_tool_edit_file.so",
    "libdispatch_plugin_tool_shell.so",
    "libdispatch_plugin_tool_todo.so",
];

fn config_with_tools() -> Config {
    let mut c = Config::new().plugin(MODELS, "").plugin(SCRIPTED, "");
    for t in TOOLS {
        c = c.plugin(t, "");
    }
    c
}

/// A script whose one reply makes one tool call per step, then answers.
fn script(dir: &std::path::Path, calls: &[Value]) -> String {
    let mut steps: Vec<Value> = calls.iter().map(|c| json!({"toolCalls": [c]})).collect();
    steps.push(json!({"text": "all done"}));
    let p = dir.join("script.json");
    std::fs::write(&p, json!({"replies": [{"steps": steps}]}).to_string()).unwrap();
    p.display().to_string()
}

fn results(events: &[Value]) -> Vec<(String, String, bool)> {
    events
        .iter()
        .filter(|e| e["type"] == "tool-result")
        .map(|e| {
            (
                e["toolName"].as_str().unwrap().to_owned(),
                e["content"].as_str().unwrap().to_owned(),
                e["isError"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

#[test]
fn every_tool_runs_through_the_host_contained_to_the_working_directory() {
    let cfg = config_with_tools();
    let work = cfg.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let s = script(
        cfg.dir.path(),
        &[
            json!({"name": "write_file", "input": {"path": "notes.txt", "content": "hello\nworld\n"}}),
            json!({"name": "edit_file", "input": {"path": "notes.txt", "oldString": "world", "newString": "there"}}),
            json!({"name": "read_file", "input": {"path": "notes.txt"}}),
            json!({"name": "read_file", "input": {"path": "../plugins.toml"}}),
            json!({"name": "write_file", "input": {"path": "/tmp/escape.txt", "content": "x"}}),
            json!({"name": "run_shell", "input": {"command": "echo out; sleep 0.1; echo err >&2; sleep 0.1; cat notes.txt; exit 2"}}),
            json!({"name": "todo_write", "input": {"todos": [{"content": "ship it", "status": "in_progress"}]}}),
            json!({"name": "read_file", "input": {"pth": "typo"}}),
        ],
    );
    let cfg = cfg.write();
    let (out, events) =
        turn(&cfg, &["--cwd", work.to_str().unwrap(), "go"], &[("DISPATCH_SCRIPT", s.as_str())]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let r = results(&events);
    assert_eq!(r.len(), 8, "{r:?}");
    assert_eq!(r[0], ("write_file".into(), "Created notes.txt (12 bytes, 2 lines)".into(), false));
    assert_eq!(r[1], ("edit_file".into(), "Replaced 1 occurrence in notes.txt".into(), false));
    assert_eq!(r[2], ("read_file".into(), "     1\thello\n     2\tthere\n".into(), false));
    assert!(r[3].2 && r[3].1.contains("`../plugins.toml` is outside the working directory"), "{:?}", r[3]);
    assert!(r[4].2 && r[4].1.contains("is outside the working directory"), "{:?}", r[4]);
    assert!(!std::path::Path::new("/tmp/escape.txt").exists());
    assert_eq!(r[5], ("run_shell".into(), "out\nerr\nhello\nthere\n[exit code 2]".into(), true));
    assert_eq!(r[6], ("todo_write".into(), "Task list (0/1 completed):\n[~] ship it\n".into(), false));
    assert!(r[7].2 && r[7].1.contains("unknown field `pth`"), "{:?}", r[7]);
    assert_eq!(std::fs::read_to_string(work.join("notes.txt")).unwrap(), "hello\nthere\n");
    // The shell's output was streamed as tool-output events before its result.
    let shell_call =
        events.iter().find(|e| e["type"] == "tool-call" && e["toolName"] == "run_shell").unwrap();
    let id = &shell_call["toolCallId"];
    let pos = |pred: &dyn Fn(&Value) -> bool| events.iter().position(pred).unwrap();
    let first_output = pos(&|e| e["type"] == "tool-output" && e["toolCallId"] == *id);
    let result = pos(&|e| e["type"] == "tool-result" && e["toolCallId"] == *id);
    assert!(first_output < result);
    let streamed: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["type"] == "tool-output" && e["toolCallId"] == *id)
        .map(|e| (e["stream"].as_str().unwrap(), e["data"].as_str().unwrap()))
        .collect();
    assert!(streamed.contains(&("stderr", "err\n")), "{streamed:?}");
    assert_eq!(types(&events).last(), Some(&"turn-sealed"));
}

#[test]
fn an_operator_can_leave_a_tool_out() {
    // Only read_file loaded: a call to run_shell is an unknown tool.
    let cfg = Config::new().plugin(MODELS, "").plugin(SCRIPTED, "").plugin(TOOLS[0], "");
    let s = script(cfg.dir.path(), &[json!({"name": "run_shell", "input": {"command": "true"}})]);
    let cfg = cfg.write();
    let (out, events) = turn(&cfg, &["go"], &[("DISPATCH_SCRIPT", s.as_str())]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let r = results(&events);
    assert!(r[0].2 && r[0].1.contains("run_shell"), "{r:?}");
    // --no-tools offers none at all.
    let (_, events) = turn(&cfg, &["--no-tools", "go"], &[("DISPATCH_SCRIPT", s.as_str())]);
    assert!(results(&events)[0].2);
}

#[test]
fn the_tool_protocol_and_the_todo_service_answer_on_the_bus() {
    let cfg = config_with_tools().write();
    let start = json!({"op": "start", "callId": "c1", "conversationId": "conv-9", "input": {"todos": [{"content": "a", "status": "pending"}]}});
    let (out, lines) = call(
        &cfg,
        &[
            ("tool.read_file", r#"{"op":"spec"}"#),
            ("tool.todo_write", &start.to_string()),
            ("tool.todo_write", r#"{"op":"next","runId":1}"#),
            ("todo", r#"{"op":"get","conversationId":"conv-9"}"#),
            ("tool.todo_write", r#"{"op":"next","runId":1}"#),
        ],
        &[],
    );
    assert_eq!(lines.len(), 5, "{}", out.stderr);
    assert_eq!(lines[0]["name"], "read_file");
    assert_eq!(lines[0]["concurrencySafe"], true);
    assert_eq!(lines[0]["inputSchema"]["required"], json!(["path"]));
    assert_eq!(lines[1], json!({"runId": 1}));
    assert_eq!(lines[2]["result"]["kind"], "output");
    assert_eq!(
        lines[3],
        json!({"conversationId": "conv-9", "todos": [{"content": "a", "status": "pending"}]})
    );
    // A finished run is forgotten.
    assert_eq!(lines[4]["code"], "not_found", "{:?}", lines[4]);
    assert!(lines[4]["error"].as_str().unwrap_or_default().contains("no open stream 1"), "{:?}", lines[4]);
}

/// Start `dispatch turn` on `script` and read its events until the first
/// `tool-output`, then wait for the process carrying `marker` to exist.
/// Answers the child, the rest of its stdout, and the events so far.
fn turn_until_tool_output(
    cfg: &std::path::Path,
    script: &str,
    marker: &str,
) -> (std::process::Child, std::io::Lines<BufReader<std::process::ChildStdout>>, Vec<Value>) {
    let mut child = Command::new(dispatch_bin())
        .args(["turn", "--config", cfg.to_str().unwrap(), "go"])
        .env("DISPATCH_SCRIPT", script)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut events: Vec<Value> = Vec::new();
    for line in lines.by_ref() {
        let e: Value = serde_json::from_str(&line.unwrap()).unwrap();
        let started = e["type"] == "tool-output";
        events.push(e);
        if started {
            break;
        }
    }
    assert_process_with(marker);
    (child, lines, events)
}

/// Every terminating signal — Ctrl-C, `timeout(1)`'s SIGTERM, a closed
/// terminal's SIGHUP — aborts the turn, kills the running command's process
/// group, and ends the process with 128 + the signal. SIGTERM and SIGHUP
/// used to kill the host on the spot and leave the command running; a
/// Ctrl-C'd turn used to exit 0.
#[test]
fn a_terminating_signal_during_a_shell_command_aborts_the_turn_and_kills_the_process_group() {
    for (signal, number) in [("INT", 2), ("TERM", 15), ("HUP", 1)] {
        let cfg = config_with_tools();
        let marker = format!("{}.{}{number}", 8_000 + std::process::id() % 1000, 4242);
        let s = script(
            cfg.dir.path(),
            &[
                json!({"name": "run_shell", "input": {"command": format!("echo started; sleep {marker} & sleep {marker}")}}),
            ],
        );
        let cfg = cfg.write();
        // Once the command's first output is out, send the signal.
        let (child, lines, mut events) = turn_until_tool_output(&cfg, &s, &marker);
        let sent = Instant::now();
        let flag = format!("-{signal}");
        assert!(Command::new("kill")
            .args([flag.as_str(), &child.id().to_string()])
            .status()
            .unwrap()
            .success());
        events.extend(lines.map(|l| serde_json::from_str::<Value>(&l.unwrap()).unwrap()));
        let status = wait(child, Duration::from_secs(30), "dispatch turn after a signal").status;
        assert!(sent.elapsed() < Duration::from_secs(20), "SIG{signal}: the turn did not end at once");
        let done = events.iter().find(|e| e["type"] == "done").expect("a done event");
        assert_eq!(done["reason"], "aborted", "SIG{signal}");
        let result = events.iter().find(|e| e["type"] == "tool-result").unwrap();
        assert_eq!(result["isError"], true);
        assert_eq!(status.code(), Some(128 + number), "SIG{signal}");
        assert_no_process_with(&marker);
    }
}

#[test]
fn a_working_directory_that_is_a_file_is_refused() {
    let cfg = config_with_tools();
    let file = cfg.dir.path().join("not-a-dir.txt");
    std::fs::write(&file, "x").unwrap();
    let cfg = cfg.write();
    let (out, _) = turn(&cfg, &["--cwd", file.to_str().unwrap(), "go"], &[]);
    assert_eq!(out.code(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("is not a directory"), "{}", out.stderr);
}

#[test]
fn the_model_cannot_read_the_provider_api_keys_through_run_shell() {
    let cfg = config_with_tools();
    let s = script(cfg.dir.path(), &[json!({"name": "run_shell", "input": {"command": "env"}})]);
    let work = cfg.dir.path().to_str().unwrap().to_owned();
    let cfg = cfg.write();
    let env = [
        ("DISPATCH_SCRIPT", s.as_str()),
        ("DISPATCH_API_KEY", "sk-e2e-dispatch-secret"),
        ("OPENROUTER_API_KEY", "sk-e2e-openrouter-secret"),
    ];
    let (out, events) = turn(&cfg, &["--cwd", &work, "go"], &env);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let r = results(&events);
    assert_eq!(r[0].0, "run_shell");
    assert!(r[0].1.contains("PATH="), "{}", r[0].1);
    assert!(!out.stdout.contains("sk-e2e-"), "a credential reached the transcript: {}", r[0].1);
}

/// `/proc/<pid>/environ` shows a process's environment as it was at exec,
/// whatever the process later does with it, to any process of the same
/// user — and to a command the model runs. The host blanks credential
/// values there at start (keeping them for its plugins), so neither its
/// own block nor any other process's on the machine gives a key away
/// (root could still read the host's memory; don't run agents as root).
#[test]
fn the_model_cannot_read_the_provider_api_keys_through_proc_environ() {
    let cfg = config_with_tools();
    // Keys of this test alone: hosts other tests start at the same time
    // show theirs in the moment between exec and `main`.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let nonce = format!("{}x{nanos}", std::process::id());
    let (key, other) = (format!("sk-proc-{nonce}-a"), format!("sk-proc-{nonce}-b"));
    let command = format!(
        "tr '\\0' '\\n' < /proc/$PPID/environ | grep -c '^DISPATCH_API_KEY=' ; \
         cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c sk-proc-{nonce}-"
    );
    let s = script(cfg.dir.path(), &[json!({"name": "run_shell", "input": {"command": command}})]);
    let work = cfg.dir.path().to_str().unwrap().to_owned();
    let cfg = cfg.write();
    let env = [
        ("DISPATCH_SCRIPT", s.as_str()),
        ("DISPATCH_API_KEY", key.as_str()),
        ("OPENROUTER_API_KEY", other.as_str()),
    ];
    let (out, events) = turn(&cfg, &["--cwd", &work, "go"], &env);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let r = results(&events);
    assert_eq!(r[0].0, "run_shell");
    let counts: Vec<&str> = r[0].1.lines().filter(|l| l.trim().parse::<u32>().is_ok()).collect();
    // The command's parent is the host, and its block still names the
    // variable (so the check reads the right process)...
    assert_eq!(counts.first().map(|c| c.trim()), Some("1"), "{}", r[0].1);
    // ... but no process's block holds a key.
    assert_eq!(counts.get(1).map(|c| c.trim()), Some("0"), "a credential is readable: {}", r[0].1);
}

/// Regression (issue 31): a provider key in a variable whose name does not
/// look like a credential (`api_key_env = "DEEPSEEK_KEY"`), or one an MCP
/// server's `${NAME}` takes, stayed readable in the host's start-up block.
/// The host blanks every variable its configuration names as a credential.
#[test]
fn variables_the_configuration_names_as_credentials_are_blanked_whatever_their_names() {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let nonce = format!("{}x{nanos}", std::process::id());
    let cfg = config_with_tools()
        .plugin(
            "libdispatch_plugin_provider_openai.so",
            "[[plugin.config.credentials]]\nname = \"deepseek\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_env = \"DEEPSEEK_KEY\"",
        )
        .plugin(
            "libdispatch_plugin_mcp.so",
            "max_restarts = 0\n[plugin.config.servers.remote]\nurl = \"http://127.0.0.1:9/mcp\"\nheaders = { X-Auth = \"${REMOTE_AUTH}\" }",
        );
    let command = format!(
        "tr '\\0' '\\n' < /proc/$PPID/environ | grep -c -E '^(DEEPSEEK_KEY|REMOTE_AUTH)=' ; \
         tr '\\0' '\\n' < /proc/$PPID/environ | grep -c named-{nonce}-"
    );
    let s = script(cfg.dir.path(), &[json!({"name": "run_shell", "input": {"command": command}})]);
    let work = cfg.dir.path().to_str().unwrap().to_owned();
    let cfg = cfg.write();
    let (deepseek, remote) = (format!("named-{nonce}-deepseek"), format!("named-{nonce}-remote"));
    let env = [
        ("DISPATCH_SCRIPT", s.as_str()),
        ("DEEPSEEK_KEY", deepseek.as_str()),
        ("REMOTE_AUTH", remote.as_str()),
    ];
    let (out, events) = turn(&cfg, &["--cwd", &work, "go"], &env);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let r = results(&events);
    assert_eq!(r[0].0, "run_shell");
    let counts: Vec<&str> = r[0].1.lines().map(str::trim).filter(|l| l.parse::<u32>().is_ok()).collect();
    assert_eq!(counts.first(), Some(&"2"), "{}", r[0].1);
    assert_eq!(counts.get(1), Some(&"0"), "a configured credential is readable: {}", r[0].1);
}

/// Every plugin is loaded from a private in-memory copy; a command the
/// model runs must not inherit a descriptor per plugin (review of issue
/// 31: the copies were made without close-on-exec).
#[test]
fn a_shell_command_inherits_no_plugin_copy() {
    let cfg = config_with_tools();
    let command = "ls -l /proc/self/fd/ | grep -c dispatch-plugin || true";
    let s = script(cfg.dir.path(), &[json!({"name": "run_shell", "input": {"command": command}})]);
    let work = cfg.dir.path().to_str().unwrap().to_owned();
    let cfg = cfg.write();
    let (out, events) = turn(&cfg, &["--cwd", &work, "go"], &[("DISPATCH_SCRIPT", s.as_str())]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let r = results(&events);
    assert_eq!(r[0].0, "run_shell");
    let counts: Vec<&str> = r[0].1.lines().map(str::trim).filter(|l| l.parse::<u32>().is_ok()).collect();
    assert_eq!(counts.first(), Some(&"0"), "plugin copies leaked into the command: {}", r[0].1);
}

/// A credential given twice in the environment — a launcher that appends
/// `NAME=value` instead of replacing it — is blanked in both entries of the
/// start-up block. glibc's `setenv` replaces only a name's first entry, so
/// the second stayed readable in `/proc/<pid>/environ` until the host unset
/// the name (every entry) before setting it once. `std::process::Command`
/// cannot pass a name twice, so the host is started with `posix_spawn` and
/// an environment array written out by hand.
#[test]
fn a_credential_given_twice_is_blanked_in_both_entries() {
    let cfg = config_with_tools();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let nonce = format!("{}x{nanos}", std::process::id());
    let command = format!(
        "tr '\\0' '\\n' < /proc/$PPID/environ | grep -c '^DISPATCH_API_KEY=' ; \
         tr '\\0' '\\n' < /proc/$PPID/environ | grep -c sk-twice-{nonce}-"
    );
    let s = script(cfg.dir.path(), &[json!({"name": "run_shell", "input": {"command": command}})]);
    let work = cfg.dir.path().to_str().unwrap().to_owned();
    let (out, err) = (cfg.dir.path().join("stdout"), cfg.dir.path().join("stderr"));
    let cfg = cfg.write();
    let mut env: Vec<String> = std::env::vars()
        .filter(|(k, _)| !k.starts_with("DISPATCH_") && k != "RUST_LOG")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.push(format!("DISPATCH_SCRIPT={s}"));
    env.push(format!("DISPATCH_API_KEY=sk-twice-{nonce}-first"));
    env.push(format!("DISPATCH_API_KEY=sk-twice-{nonce}-second"));
    let args = ["turn", "--config", cfg.to_str().unwrap(), "--cwd", &work, "go"];
    let code = spawn_with_environment(&args, &env, &out, &err, Duration::from_secs(60));
    let stderr = std::fs::read_to_string(&err).unwrap();
    assert_eq!(code, 0, "{stderr}");
    let events: Vec<Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let r = results(&events);
    assert_eq!(r[0].0, "run_shell", "{stderr}");
    let counts: Vec<&str> = r[0].1.lines().map(str::trim).filter(|l| l.parse::<u32>().is_ok()).collect();
    // Both entries are still in the block (the check reads the right
    // process, and the host was given the name twice)...
    assert_eq!(counts.first(), Some(&"2"), "{}", r[0].1);
    // ... and neither value.
    assert_eq!(counts.get(1), Some(&"0"), "a credential is readable: {}", r[0].1);
}

/// Run `dispatch ARGS` with exactly the environment entries `env` (a name
/// may repeat), its output in the files `out` and `err`; its exit code.
fn spawn_with_environment(
    args: &[&str],
    env: &[String],
    out: &std::path::Path,
    err: &std::path::Path,
    limit: Duration,
) -> i32 {
    use std::ffi::CString;
    let c = |s: &str| CString::new(s).unwrap();
    let bin = c(dispatch_bin().to_str().unwrap());
    let argv: Vec<CString> = std::iter::once(bin.clone()).chain(args.iter().map(|a| c(a))).collect();
    let envp: Vec<CString> = env.iter().map(|e| c(e)).collect();
    let ptrs = |v: &[CString]| -> Vec<*mut libc::c_char> {
        v.iter().map(|s| s.as_ptr().cast_mut()).chain(std::iter::once(std::ptr::null_mut())).collect()
    };
    let (argv_p, envp_p) = (ptrs(&argv), ptrs(&envp));
    let (out, err, null) = (c(out.to_str().unwrap()), c(err.to_str().unwrap()), c("/dev/null"));
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer handed to posix_spawn points into the CStrings
    // above, which outlive the call; the file actions are initialised
    // before use and destroyed after.
    let rc = unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        assert_eq!(libc::posix_spawn_file_actions_init(&mut actions), 0);
        let w = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
        libc::posix_spawn_file_actions_addopen(&mut actions, 0, null.as_ptr(), libc::O_RDONLY, 0);
        libc::posix_spawn_file_actions_addopen(&mut actions, 1, out.as_ptr(), w, 0o600);
        libc::posix_spawn_file_actions_addopen(&mut actions, 2, err.as_ptr(), w, 0o600);
        let rc = libc::posix_spawn(
            &mut pid,
            bin.as_ptr(),
            &actions,
            std::ptr::null(),
            argv_p.as_ptr(),
            envp_p.as_ptr(),
        );
        libc::posix_spawn_file_actions_destroy(&mut actions);
        rc
    };
    assert_eq!(rc, 0, "posix_spawn: {}", std::io::Error::from_raw_os_error(rc));
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: `pid` is this process's child; `status` is a valid out-pointer.
        let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if got == pid {
            assert!(libc::WIFEXITED(status), "dispatch did not exit normally: status {status}");
            return libc::WEXITSTATUS(status);
        }
        if Instant::now() > deadline {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("`dispatch {}` hung: still running after {limit:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A host killed outright (SIGKILL: no cleanup code runs) used to leave
/// the running command behind; the command's process now dies with it.
#[test]
fn a_command_dies_with_a_host_killed_outright() {
    let cfg = config_with_tools();
    let marker = format!("{}.{}", 8_000 + std::process::id() % 1000, 6161);
    let s = script(
        cfg.dir.path(),
        &[json!({"name": "run_shell", "input": {"command": format!("echo started; exec sleep {marker}")}})],
    );
    let cfg = cfg.write();
    let (mut child, _, _) = turn_until_tool_output(&cfg, &s, &marker);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_no_process_with(&marker);
}
