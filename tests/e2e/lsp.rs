//! The `lsp` plugin end to end, against language servers nobody here
//! wrote (`typescript-language-server` with TypeScript, and `pyright`,
//! from npm, installed by `scripts/test`): an edit's result carries the
//! file's diagnostics; the `lsp` tool answers; `GET /conversations/:id/lsp`
//! reports the servers; a missing, crashing or idle server.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dispatch_test_support::mock_openai::*;
use serde_json::{json, Value};

use crate::http::*;
use crate::support::*;

/// The language servers' `bin` directory (npm).
fn peers_bin() -> PathBuf {
    let bin = repo_root().join("tests/lsp-peers/node_modules/.bin");
    assert!(
        bin.join("typescript-language-server").exists(),
        "{} is missing: install the language servers with `npm ci --prefix tests/lsp-peers` (scripts/test does)",
        bin.display()
    );
    bin
}

/// `PATH` with the language servers first (the built-in TypeScript server
/// is looked up there).
fn path_with_peers() -> String {
    format!("{}:{}", peers_bin().display(), std::env::var("PATH").unwrap_or_default())
}

/// A small strict TypeScript project.
fn ts_project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    write_creating(
        &p.join("tsconfig.json"),
        r#"{"compilerOptions": {"strict": true, "target": "es2020", "module": "commonjs"}}"#,
    );
    write_creating(
        &p.join("src/math.ts"),
        "export function add(a: number, b: number): number {\n  return a + b;\n}\n",
    );
    write_creating(
        &p.join("src/main.ts"),
        "import { add } from \"./math\";\nconst total: number = add(1, 2);\nconsole.log(total);\n",
    );
    dir
}

/// Pids of the processes running with `dir` as their working directory
/// whose command line mentions `what`.
fn processes_in(dir: &Path, what: &str) -> Vec<u32> {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == dir))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(what))
        })
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Setup {
    s: Server,
    mock: MockServer,
    _cfg: Written,
}

fn start(lsp: &str, replies: Vec<Reply>) -> Setup {
    start_on(lsp, replies, &path_with_peers())
}

/// … with `path` as the server's `PATH`.
fn start_on(lsp: &str, replies: Vec<Reply>, path: &str) -> Setup {
    let mock = MockServer::start(replies);
    let cfg = product_config_with(LOOPBACK, LOOPBACK, &[("libdispatch_plugin_lsp.so", lsp.to_owned())]);
    let s = Server::start_on_mock(&cfg, &mock.base_url(), &[("PATH", path)]);
    Setup { s, mock, _cfg: cfg }
}

impl Setup {
    fn say(&self, conversation: &str, cwd: &Path, message: &str) -> Vec<Value> {
        say_in(&self.s.base, conversation, cwd, message)
    }

    fn status(&self, conversation: &str) -> Value {
        let a = get(&format!("{}/conversations/{conversation}/lsp", self.s.base));
        assert_eq!(a.status, 200, "{}", a.text);
        a.body
    }
}

#[test]
fn an_edit_into_a_type_error_carries_its_diagnostic_and_the_lsp_tool_answers() {
    let project = ts_project();
    let root = project.path().canonicalize().unwrap();
    let edit = |old: &str, new: &str| json!({"path": "src/main.ts", "oldString": old, "newString": new});
    let lsp = |input: Value| tool_call("l", "lsp", &input);
    let setup = start(
        "",
        vec![
            tool_call("e1", "edit_file", &edit("add(1, 2)", "add(1, \"2\")")),
            text_reply("Broke it."),
            tool_call("e2", "edit_file", &edit("add(1, \"2\")", "add(1, 2)")),
            text_reply("Fixed it."),
            lsp(json!({"operation": "hover", "path": "src/main.ts", "line": 2, "character": 23})),
            text_reply("Hovered."),
            lsp(json!({"operation": "definition", "path": "src/main.ts", "line": 2, "character": 23})),
            text_reply("Found."),
            lsp(json!({"operation": "references", "path": "src/math.ts", "line": 1, "character": 17})),
            text_reply("Referenced."),
            lsp(json!({"operation": "documentSymbols", "path": "src/math.ts"})),
            text_reply("Outlined."),
            lsp(json!({"operation": "diagnostics", "path": "src/main.ts"})),
            text_reply("Clean."),
            lsp(json!({"operation": "workspaceSymbols", "query": "add"})),
            text_reply("Searched."),
            lsp(json!({"operation": "hover", "path": "src/main.ts", "line": 2})),
            text_reply("Refused."),
            text_reply("No cwd."),
        ],
    );

    // Into a type error: the result ends with the diagnostic, its line.
    let r = result_of(&setup.say("ts", &root, "break it")).clone();
    assert_eq!(r["isError"], false, "{r}");
    let content = r["content"].as_str().unwrap();
    assert!(content.contains("LSP diagnostics for src/main.ts (TypeScript):\nERROR L2:"), "{content}");
    assert!(content.contains("(2345)"), "{content}");
    assert!(content.contains("not assignable to parameter of type 'number'"), "{content}");
    // And back: no diagnostics, no note.
    let r = result_of(&setup.say("ts", &root, "fix it")).clone();
    assert!(!r["content"].as_str().unwrap().contains("LSP"), "{r}");

    let answer = |message: &str| -> String {
        let r = result_of(&setup.say("ts", &root, message)).clone();
        assert_eq!(r["isError"], false, "{r}");
        r["content"].as_str().unwrap().to_owned()
    };
    let hover = answer("hover");
    assert!(hover.contains("add(a: number, b: number): number"), "{hover}");
    let definition = answer("definition");
    assert!(definition.starts_with("src/math.ts:1:17: export function add("), "{definition}");
    let references = answer("references");
    assert!(
        references.contains("src/math.ts:1:17:") && references.contains("src/main.ts:2:23:"),
        "{references}"
    );
    let symbols = answer("symbols");
    assert!(symbols.contains("Function add (L1)"), "{symbols}");
    assert_eq!(answer("diagnostics"), "No diagnostics for src/main.ts.");
    let found = answer("workspace symbols");
    assert!(found.contains("Function add — src/math.ts:1:1: export function add("), "{found}");
    let r = result_of(&setup.say("ts", &root, "bad hover")).clone();
    assert_eq!(r["isError"], true);
    assert_eq!(
        r["content"],
        "Error: \"hover\" requires both \"line\" and \"character\" parameters (1-based)."
    );

    // The frontend's view: the built-in server, connected.
    let status = setup.status("ts");
    assert_eq!(status["conversationId"], "ts");
    assert_eq!(status["cwd"], root.display().to_string());
    let servers = status["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1, "{status}");
    let ts = &servers[0];
    assert_eq!((ts["id"].as_str(), ts["state"].as_str()), (Some("typescript"), Some("connected")), "{ts}");
    assert_eq!(ts["configSource"], "built-in");
    assert_eq!(ts["root"], root.display().to_string());
    assert!(ts["extensions"].as_array().unwrap().contains(&json!(".ts")), "{ts}");
    assert!(ts["rssBytes"].as_u64().unwrap() > 1_000_000, "{ts}");
    assert!(ts.get("error").is_none(), "{ts}");

    // A conversation without a directory of its own: nothing.
    let (a, _) = chat(
        &setup.s.base,
        json!({"conversationId": "nocwd", "message": "hi", "model": "openai/mock-model"}),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(setup.status("nocwd"), json!({"conversationId": "nocwd", "cwd": null, "servers": []}));
    assert_eq!(
        setup.status("never-seen"),
        json!({"conversationId": "never-seen", "cwd": null, "servers": []})
    );
    // The model saw the diagnostics it was sent.
    let reqs = setup.mock.requests();
    let sent = reqs[1].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "tool")
        .unwrap()
        .clone();
    assert!(sent["content"].as_str().unwrap().contains("ERROR L2:"), "{sent}");
}

#[test]
fn a_missing_crashing_or_idle_server_is_reported_and_turns_go_on() {
    let project = ts_project();
    let root = project.path().canonicalize().unwrap();
    let config = |servers: Value| {
        write_creating(&root.join(".dispatch/lsp.json"), &json!({"servers": servers}).to_string())
    };
    config(json!({"ghost": {"command": ["no-such-language-server", "--stdio"], "extensions": [".ts"]},
        "dies": {"name": "Dies", "command": ["sh", "-c", "echo dying >&2; exit 3"], "extensions": [".py"]}}));
    let setup = start(
        "idle_timeout_ms = 1500\nretry_after_ms = 60000",
        vec![
            text_reply("Hi."),
            tool_call(
                "w",
                "write_file",
                &json!({"path": "src/new.ts", "content": "export const x: number = 1;\n"}),
            ),
            text_reply("Written anyway."),
            tool_call("l", "lsp", &json!({"operation": "diagnostics", "path": "src/main.ts"})),
            text_reply("Told."),
        ],
    );
    setup.say("p", &root, "hi");
    let status = setup.status("p");
    let servers = status["servers"].as_array().unwrap();
    let ghost = servers.iter().find(|s| s["id"] == "ghost").unwrap();
    assert_eq!(ghost["state"], "error", "{ghost}");
    assert_eq!(ghost["configSource"], ".dispatch/lsp.json");
    let error = ghost["error"].as_str().unwrap();
    assert!(
        error.starts_with("ghost [from .dispatch/lsp.json]: cannot start `no-such-language-server --stdio`"),
        "{error}"
    );
    let dies = servers.iter().find(|s| s["id"] == "dies").unwrap();
    assert_eq!((dies["name"].as_str(), dies["state"].as_str()), (Some("Dies"), Some("error")), "{dies}");
    let error = dies["error"].as_str().unwrap();
    assert!(error.contains("exit status: 3") && error.ends_with("(its stderr: dying)"), "{dies}");

    // The turn goes on: the write succeeds and says the file was not checked.
    let r = result_of(&setup.say("p", &root, "write")).clone();
    assert_eq!(r["isError"], false, "{r}");
    let content = r["content"].as_str().unwrap();
    assert!(
        content.contains("LSP: ghost is not available, so src/new.ts was not checked: ghost [from"),
        "{content}"
    );
    let r = result_of(&setup.say("p", &root, "ask")).clone();
    assert_eq!(r["isError"], true);
    assert!(
        r["content"].as_str().unwrap().starts_with("ghost [from .dispatch/lsp.json]: cannot start"),
        "{r}"
    );

    // A fixed configuration is tried at once, not after the retry delay.
    let tsls = peers_bin().join("typescript-language-server").display().to_string();
    config(
        json!({"ghost": {"name": "TS", "command": [tsls, "--stdio"], "extensions": [".ts"], "rootMarkers": ["tsconfig.json"],
            "watch": ["sh", "-c", "touch watch-ran; exec sleep 600"]}}),
    );
    let status = setup.status("p");
    let ghost = &status["servers"][0];
    assert_eq!(ghost["state"], "connected", "{status}");
    let pids = processes_in(&root, "typescript-language-server");
    assert!(!pids.is_empty(), "no server process in {}", root.display());
    // Its `watch` sidecar runs beside it.
    wait_until("the sidecar runs", Duration::from_secs(10), || {
        root.join("watch-ran").exists() && !processes_in(&root, "sleep").is_empty()
    });

    // Killed: restarted (after its back-off), as new processes.
    for pid in &pids {
        // SAFETY: a plain signal to a child process of the server under test.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    wait_until("it is restarted", Duration::from_secs(20), || {
        let now = processes_in(&root, "typescript-language-server");
        setup.status("p")["servers"][0]["state"] == "connected"
            && !now.is_empty()
            && now.iter().all(|p| !pids.contains(p))
    });

    // Idle: shut down after idle_timeout_ms, its processes gone.
    wait_until("the idle server is shut down, its sidecar too", Duration::from_secs(15), || {
        processes_in(&root, "typescript-language-server").is_empty()
            && processes_in(&root, "sleep").is_empty()
    });
    assert_eq!(setup.status("p")["servers"][0]["state"], "connected", "started again on use");
}

#[test]
fn a_second_language_from_opencode_json_reports_its_own_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let pyright = peers_bin().join("pyright-langserver").display().to_string();
    write_creating(
        &root.join("opencode.json"),
        &json!({"lsp": {"pyright": {"command": [pyright, "--stdio"], "extensions": [".py"]}}}).to_string(),
    );
    let setup = start(
        "",
        vec![
            tool_call(
                "w",
                "write_file",
                &json!({"path": "app.py", "content": "def f(x: int) -> int:\n    return x\n\nf(\"no\")\n"}),
            ),
            text_reply("Written."),
        ],
    );
    let r = result_of(&setup.say("py", &root, "write")).clone();
    let content = r["content"].as_str().unwrap();
    assert!(content.contains("LSP diagnostics for app.py (pyright):\nERROR L4:3:"), "{content}");
    let status = setup.status("py");
    assert_eq!(status["servers"][0]["configSource"], "opencode.json", "{status}");
    assert_eq!(status["servers"][0]["state"], "connected", "{status}");
}

/// Regression guard: where `typescript-language-server` is not installed,
/// the built-in server nobody asked for adds nothing to edits (a
/// configured server that is missing does: the test above).
#[test]
fn without_the_built_in_server_installed_edits_say_nothing_of_it() {
    let project = ts_project();
    let root = project.path().canonicalize().unwrap();
    let setup = start_on(
        "",
        vec![
            tool_call(
                "w",
                "write_file",
                &json!({"path": "src/new.ts", "content": "export const x: number = \"no\";\n"}),
            ),
            text_reply("Written."),
        ],
        "/usr/bin:/bin",
    );
    let r = result_of(&setup.say("plain", &root, "write")).clone();
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(r["content"], "Created src/new.ts (31 bytes, 1 lines)", "nothing added: {r}");
    let status = setup.status("plain");
    let ts = &status["servers"][0];
    assert_eq!((ts["id"].as_str(), ts["state"].as_str()), (Some("typescript"), Some("error")), "{status}");
    assert!(
        ts["error"]
            .as_str()
            .unwrap()
            .starts_with("typescript [from built-in]: cannot start `typescript-language-server --stdio`"),
        "{status}"
    );
}
