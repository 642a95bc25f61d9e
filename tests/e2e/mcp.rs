//! The `mcp` plugin end to end: the real binary bridging MCP servers
//! nobody here wrote (the reference `server-everything` and
//! `server-filesystem` from npm, under Node.js, installed by
//! `scripts/test`) and our own rmcp fixture (`tests/fixtures/mcp-fixture`)
//! for the failures the reference servers cannot produce. The scripted
//! model calls the tools (`SCRIPT`'s `mcp …` and `fx …` replies).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::*;
use crate::support::*;

const MCP: &str = "libdispatch_plugin_mcp.so";

/// A reference server's launcher, installed from npm.
fn peer(name: &str) -> String {
    let bin = repo_root().join("tests/mcp-peers/node_modules/.bin").join(name);
    assert!(
        bin.exists(),
        "{} is missing: install the MCP reference servers with `npm ci --prefix tests/mcp-peers` (scripts/test does)",
        bin.display()
    );
    bin.display().to_string()
}

/// Our rmcp stdio server.
fn fixture() -> String {
    let bin = profile_dir().join("mcp-fixture");
    assert!(bin.exists(), "{} is missing: `cargo build --workspace` builds it", bin.display());
    bin.display().to_string()
}

fn say(s: &Server, conversation: &str, message: &str) -> Vec<Value> {
    let (a, events) = chat(&s.base, json!({"conversationId": conversation, "message": message}));
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(events.last().unwrap()["type"], "turn-sealed");
    events
}

/// Give conversation `c1` a directory of its own (empty: no project
/// servers), kept as long as the answer: `/mcp` lists nothing for a
/// conversation without one.
fn with_cwd(s: &Server) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().canonicalize().unwrap().display().to_string();
    let body = json!({"cwd": cwd}).to_string();
    let a = send("PUT", &format!("{}/conversations/c1/cwd", s.base), Some(&body), &[]);
    assert_eq!(a.status, 200, "{}", a.text);
    (dir, cwd)
}

/// The MCP servers as `GET /mcp/servers` reports them (the plugin's own
/// states), by name.
fn servers(s: &Server) -> Vec<Value> {
    let a = get(&format!("{}/mcp/servers", s.base));
    assert_eq!(a.status, 200, "{}", a.text);
    a.body["servers"].as_array().unwrap().clone()
}

fn server<'a>(list: &'a [Value], id: &str) -> &'a Value {
    list.iter().find(|s| s["id"] == id).unwrap_or_else(|| panic!("no server `{id}` in {list:?}"))
}

/// Poll until `id` is in `state` with at least `restarts`.
fn wait_for(s: &Server, id: &str, state: &str, restarts: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = servers(s);
        let row = server(&list, id).clone();
        if row["state"] == state && row["restarts"].as_u64().unwrap_or(0) >= restarts {
            return row;
        }
        assert!(Instant::now() < deadline, "`{id}` never reached {state} (restarts ≥ {restarts}): {row}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: i32) -> bool {
    // `kill -0` answers whether the process exists (zombies aside: none of
    // ours is reaped by us).
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.split(") ").nth(1).unwrap_or("").starts_with('Z'))
            .unwrap_or(false)
}

fn wait_dead(pid: i32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "{what} (pid {pid}) is still running");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn reference_servers_tools_are_called_through_chat_and_a_broken_server_is_reported() {
    // The filesystem server comes from a Claude Desktop file, unchanged
    // (its extra keys included); the others from the plugin's table.
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("notes.txt"), "notes for the filesystem server").unwrap();
    let root = files.path().canonicalize().unwrap().display().to_string();
    let desktop = files.path().join("claude_desktop_config.json");
    std::fs::write(
        &desktop,
        json!({"globalShortcut": "Ctrl+Space", "mcpServers": {
            "filesystem": {"command": peer("mcp-server-filesystem"), "args": [root], "cwd": root, "autoApprove": []}
        }})
        .to_string(),
    )
    .unwrap();
    let mcp = format!(
        "max_restarts = 1\n\
         [plugin.config.servers.everything]\ncommand = {:?}\nenv = {{ SECRET_TOKEN = \"${{MCP_TEST_SECRET}}\" }}\n\
         [plugin.config.servers.broken]\ncommand = {:?}\nargs = [\"--fail-start\"]\n",
        peer("mcp-server-everything"),
        fixture()
    );
    let cfg = product_config_with(LOOPBACK, LOOPBACK, &[(MCP, mcp)]);
    let secret = "sekrit-7f3a91";
    let provider_key = "sk-provider-4d2c0e";
    let env = [
        ("MCP_TEST_SECRET", secret),
        ("DISPATCH_MCP_CONFIG", desktop.to_str().unwrap()),
        // Not for MCP servers: their environment is a clean one plus `env`.
        ("DISPATCH_TEST_PROVIDER_KEY", provider_key),
    ];
    let s = Server::start_with(&cfg, &env);

    let list = servers(&s);
    let everything = server(&list, "everything");
    assert_eq!(everything["state"], "connected", "{everything}");
    assert_eq!(everything["transport"], "stdio");
    assert!(everything["toolCount"].as_u64().unwrap() >= 10, "{everything}");
    let fs = server(&list, "filesystem");
    assert_eq!(fs["state"], "connected", "{fs}");
    assert!(fs["toolCount"].as_u64().unwrap() >= 10, "{fs}");
    // A conversation's view, in the states the web frontend knows.
    let (_dir, cwd) = with_cwd(&s);
    let a = get(&format!("{}/conversations/c1/mcp", s.base));
    assert_eq!(a.body["conversationId"], "c1");
    assert_eq!(a.body["cwd"], cwd, "{}", a.body);
    let rows = a.body["servers"].as_array().unwrap();
    let everything = server(rows, "everything");
    assert_eq!(
        (everything["state"].as_str(), everything["configSource"].as_str()),
        (Some("connected"), Some("[plugin.config.servers]"))
    );
    assert_eq!(server(rows, "filesystem")["configSource"], desktop.display().to_string());
    let broken = server(rows, "broken");
    assert_eq!(broken["state"], "error", "{broken}");
    assert!(broken["error"].as_str().unwrap().contains("refusing to start"), "{broken}");

    // A call with a result, through the model.
    let events = say(&s, "c1", "mcp echo");
    let r = result_of(&events);
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(r["content"], "Echo: hi from dispatch");
    let r = result_of(&say(&s, "c1", "mcp sum")).clone();
    assert!(r["content"].as_str().unwrap().contains('5'), "{r}");
    // The secret reached the server through `${MCP_TEST_SECRET}` — and a
    // server that shows it to the model has it blotted out on the way
    // (issue 31: a configured secret never comes back through a server).
    let r = result_of(&say(&s, "c1", "mcp env")).clone();
    assert!(r["content"].as_str().unwrap().contains(r#""SECRET_TOKEN": "[redacted]""#), "{r}");
    assert!(!r["content"].as_str().unwrap().contains(secret), "{r}");
    assert!(!r["content"].as_str().unwrap().contains(provider_key), "dispatch's environment leaked: {r}");
    assert!(r["content"].as_str().unwrap().contains("\"PATH\""), "{r}");
    // … and a call that streams progress: `tool-output` before the result.
    let events = say(&s, "c1", "mcp progress");
    let outputs: Vec<&str> =
        events.iter().filter(|e| e["type"] == "tool-output").map(|e| e["data"].as_str().unwrap()).collect();
    assert_eq!(outputs, ["progress 1/3\n", "progress 2/3\n", "progress 3/3\n"], "{events:?}");
    assert!(result_of(&events)["content"].as_str().unwrap().contains("completed"));

    // The filesystem server, from the Claude Desktop file: a read, and an
    // error result (outside its directory) the model reads as an error.
    let r = result_of(&say(&s, "c1", "mcp read")).clone();
    assert_eq!(r["content"], "notes for the filesystem server", "{r}");
    assert_eq!(r["isError"], false);
    let r = result_of(&say(&s, "c1", "mcp denied")).clone();
    assert_eq!(r["isError"], true, "{r}");
    assert!(r["content"].as_str().unwrap().to_lowercase().contains("access denied"), "{r}");

    // The broken server: retried, then given up, with what it said.
    let broken = wait_for(&s, "broken", "failed", 0);
    let error = broken["error"].as_str().unwrap();
    assert!(error.contains("refusing to start") && error.contains("gave up"), "{broken}");
    assert_eq!(broken["toolCount"], 0);
    // Still fine for everyone else.
    assert_eq!(result_of(&say(&s, "c2", "mcp echo"))["content"], "Echo: hi from dispatch");
    assert!(!s.log().contains(secret), "the secret was logged:\n{}", s.log());

    // `dispatch plugins --server` shows a running server's MCP servers …
    let out = run(&["plugins", "--server", &s.base], &[], Duration::from_secs(60));
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(out.stdout.contains("MCP servers:"), "{}", out.stdout);
    let row = |id: &str| out.stdout.lines().find(|l| l.trim_start().starts_with(id)).unwrap_or("").to_owned();
    assert!(row("everything").contains("connected"), "{}", out.stdout);
    assert!(row("broken").contains("failed"), "{}", out.stdout);

    // … and `dispatch plugins` lists them with their states.
    let out = run(&["plugins", "--config", cfg.to_str().unwrap()], &env, Duration::from_secs(60));
    assert!(out.stdout.contains("MCP servers:"), "{}", out.stdout);
    let row = |id: &str| out.stdout.lines().find(|l| l.trim_start().starts_with(id)).unwrap_or("").to_owned();
    assert!(row("everything").contains("connected"), "{}", out.stdout);
    assert!(row("filesystem").contains("connected"), "{}", out.stdout);
    assert!(out.stdout.contains("broken: ") && out.stdout.contains("refusing to start"), "{}", out.stdout);
    assert!(!out.stderr.contains(secret) && !out.stdout.contains(secret));
}

/// Images in a tool result reach a model that takes images, after the
/// step's results (chat completions' tool messages carry text only), and
/// are kept in the conversation: the reference server's `get-tiny-image`
/// against the local OpenAI-compatible test server.
#[test]
fn an_image_from_an_mcp_tool_is_shown_to_the_model_and_kept_in_the_history() {
    use dispatch_test_support::mock_openai::*;
    let call = Reply::sse(&[
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_img",
            "type": "function", "function": {"name": "everything__get-tiny-image", "arguments": "{}"}}]},
            "finish_reason": null}]}),
        finish_chunk("tool_calls"),
    ]);
    let mock =
        MockServer::start(vec![call, Reply::sse(&[text_chunk("The MCP logo."), finish_chunk("stop")])]);
    // A model whose name says it sees images (a text-only one would get
    // the vision plugin's placeholder instead).
    let mcp = format!("[plugin.config.servers.everything]\ncommand = {:?}\n", peer("mcp-server-everything"));
    let cfg = product_config_with(LOOPBACK, LOOPBACK, &[(MCP, mcp)]);
    let url = mock.base_url();
    let s = Server::start_with(
        &cfg,
        &[("DISPATCH_BASE_URL", &url), ("DISPATCH_API_KEY", "sk-test"), ("DISPATCH_MODEL", "gpt-4o-mock")],
    );
    let (a, events) =
        chat(&s.base, json!({"conversationId": "img", "message": "show me", "model": "openai/gpt-4o-mock"}));
    assert_eq!(a.status, 200, "{}", a.text);
    let r = result_of(&events).clone();
    assert_eq!(r["isError"], false, "{r}");
    let content = r["content"].as_str().unwrap();
    assert!(content.starts_with("Here's the image you requested:\n[image (image/png, "), "{content}");
    assert!(content.ends_with(" attached]\nThe image above is the MCP logo."), "{content}");
    assert_eq!(text_of(&events), "The MCP logo.");

    // The second request: the result, then the image in a user message.
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    let messages = reqs[1].body["messages"].as_array().unwrap().clone();
    let n = messages.len();
    assert_eq!(messages[n - 2]["role"], "tool", "{messages:?}");
    assert_eq!(messages[n - 2]["tool_call_id"], "call_img");
    assert_eq!(messages[n - 2]["content"], content);
    let image = &messages[n - 1];
    assert_eq!(image["role"], "user", "{image}");
    assert!(image["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("`everything__get-tiny-image` call call_img"));
    let data = image["content"][1]["image_url"]["url"].as_str().unwrap();
    assert!(data.starts_with("data:image/png;base64,iVBORw0KGgo"), "{image}");

    // Stored after the result, in the tool's message.
    let history = get(&format!("{}/conversations/img", s.base)).body;
    let chunks = history["chunks"].as_array().unwrap();
    let at = chunks.iter().position(|c| c["chunk"]["type"] == "tool-result").unwrap();
    let stored = &chunks[at + 1];
    assert_eq!((stored["role"].as_str(), stored["chunk"]["type"].as_str()), (Some("tool"), Some("image")));
    assert_eq!(stored["chunk"]["url"], data);
    assert_eq!(stored["chunk"]["mimeType"], "image/png");
}

#[test]
fn a_fixture_server_that_times_out_crashes_or_hangs_ends_calls_with_errors_and_is_restarted() {
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("fixture.log");
    let mcp = format!(
        "[plugin.config.servers.fx]\ncommand = {:?}\ncall_timeout_ms = 1500\nenv = {{ FIXTURE_LOG = {:?} }}\n",
        fixture(),
        log.display().to_string()
    );
    let cfg = product_config_with(LOOPBACK, LOOPBACK, &[(MCP, mcp)]);
    let mut s = Server::start(&cfg);
    let fx = server(&servers(&s), "fx").clone();
    assert_eq!(fx["state"], "connected", "{fx}");
    assert_eq!(fx["toolCount"], 9);
    let pid = |s: &Server| -> i32 {
        let r = result_of(&say(s, "fx", "fx pid")).clone();
        r["content"].as_str().unwrap().parse().unwrap_or_else(|_| panic!("not a pid: {r}"))
    };
    let first = pid(&s);

    // An error result is the model's to read.
    let r = result_of(&say(&s, "fx", "fx fail")).clone();
    assert_eq!((r["isError"].as_bool(), r["content"].as_str()), (Some(true), Some("no such widget")));
    // Progress with its messages.
    let events = say(&s, "fx", "fx progress");
    let outputs: Vec<&str> =
        events.iter().filter(|e| e["type"] == "tool-output").map(|e| e["data"].as_str().unwrap()).collect();
    assert_eq!(outputs, ["progress 1/3: step 1\n", "progress 2/3: step 2\n", "progress 3/3: step 3\n"]);

    // A timeout: an error result, the server told to cancel, and — since it
    // still answers pings — kept.
    let started = Instant::now();
    let r = result_of(&say(&s, "fx", "fx slow")).clone();
    assert_eq!(r["isError"], true);
    assert!(r["content"].as_str().unwrap().contains("did not answer within 1.5 s"), "{r}");
    assert!(started.elapsed() < Duration::from_secs(10));
    wait_file(&log, "cancelled");
    assert_eq!(pid(&s), first, "a server that answers pings is not restarted after a timeout");

    // Killed mid-call: the call ends at once with an error naming the
    // server; it is restarted and the next call works, in a new process.
    let r = result_of(&say(&s, "fx", "fx crash")).clone();
    assert_eq!(r["isError"], true);
    assert!(r["content"].as_str().unwrap().contains("the MCP server `fx`"), "{r}");
    wait_for(&s, "fx", "connected", 1);
    let second = pid(&s);
    assert_ne!(second, first);

    // Hung (not even pings answered): the call times out, the server is
    // killed (its process group) and restarted.
    let r = result_of(&say(&s, "fx", "fx freeze")).clone();
    assert!(r["content"].as_str().unwrap().contains("did not answer"), "{r}");
    wait_for(&s, "fx", "connected", 2);
    wait_dead(second, "the hung server");
    let third = pid(&s);
    assert_ne!(third, second);

    // A tool added at run time (tools/list_changed) is offered to the next
    // turn; before, the model is told it does not exist.
    let r = result_of(&say(&s, "fx", "fx extra")).clone();
    assert!(r["content"].as_str().unwrap().contains("Unknown tool `fx__extra`"), "{r}");
    say(&s, "fx", "fx add");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = result_of(&say(&s, "fx", "fx extra")).clone();
        if r["content"] == "extra ran" {
            break;
        }
        assert!(Instant::now() < deadline, "fx__extra never offered: {r}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server(&servers(&s), "fx")["toolCount"], 10);

    // An aborted turn cancels the call on the server.
    std::fs::remove_file(&log).unwrap();
    let mut stream = Stream::open(&s.base, &json!({"conversationId": "fx-stop", "message": "fx slow"}));
    stream.until("tool-call");
    std::thread::sleep(Duration::from_millis(200));
    post(&format!("{}/conversations/fx-stop/stop", s.base), "");
    let rest = stream.rest();
    assert_eq!(rest[rest.len() - 2]["reason"], "aborted", "{rest:?}");
    wait_file(&log, "cancelled");

    // Shutdown kills the server's whole process group, children included.
    let child: i32 = result_of(&say(&s, "fx", "fx child"))["content"].as_str().unwrap().parse().unwrap();
    assert!(alive(child));
    let status = s.stop_with(15);
    assert!(status.success(), "{status:?}\n{}", s.log());
    wait_dead(child, "the server's child");
    wait_dead(third, "the server");
}

#[test]
fn a_streamable_http_server_is_bridged_too() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut node = std::process::Command::new(peer("mcp-server-everything"))
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _kill = KillOnDrop(&mut node);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the HTTP MCP server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mcp = format!(
        "[plugin.config.servers.everything]\nurl = \"http://127.0.0.1:{port}/mcp\"\n\
         headers = {{ X-Test = \"${{MCP_TEST_HEADER}}\" }}\n"
    );
    let cfg = product_config_with(LOOPBACK, LOOPBACK, &[(MCP, mcp)]);
    let s = Server::start_with(&cfg, &[("MCP_TEST_HEADER", "from-env")]);
    let row = server(&servers(&s), "everything").clone();
    assert_eq!(
        (row["state"].as_str(), row["transport"].as_str()),
        (Some("connected"), Some("http")),
        "{row}"
    );
    let r = result_of(&say(&s, "h", "mcp echo")).clone();
    assert_eq!(r["content"], "Echo: hi from dispatch");
    let events = say(&s, "h", "mcp progress");
    assert_eq!(events.iter().filter(|e| e["type"] == "tool-output").count(), 3, "{events:?}");
}

#[test]
fn a_bad_mcp_configuration_names_every_problem() {
    let mcp = "[plugin.config.servers.a]\ncommand = \"x\"\nurl = \"http://h\"\n\
               [plugin.config.servers.b]\nenv = { K = \"${DISPATCH_TEST_UNSET_VAR}\" }\ncommand = \"y\"\n"
        .to_owned();
    let cfg = Config::new().plugin(MCP, &mcp).write();
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_ne!(out.code(), 0, "a required plugin failed: {}", out.stdout);
    let row = row(&rows, "mcp");
    assert_eq!(row["state"], "failed", "{row}");
    let error = row["error"].as_str().unwrap();
    assert!(error.contains("server `a`") && error.contains("not both"), "{error}");
    assert!(error.contains("`DISPATCH_TEST_UNSET_VAR`, which is not set"), "{error}");
}

#[test]
fn with_no_servers_the_plugin_offers_nothing_and_reports_an_empty_list() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let a = get(&format!("{}/conversations/nobody/mcp", s.base));
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body, json!({"conversationId": "nobody", "cwd": null, "servers": []}));
    // A turn still works, with the standard tools.
    let events = say(&s, "nobody", "read the notes");
    assert_eq!(result_of(&events)["toolName"], "read_file");
}

/// Wait until `path` holds `text`.
fn wait_file(path: &PathBuf, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if std::fs::read_to_string(path).is_ok_and(|t| t.contains(text)) {
            return;
        }
        assert!(Instant::now() < deadline, "{} never said {text:?}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Regression (issue 31): an expanded `${NAME}` or a header's value came
/// back through a server's stderr tail and a remote server's echoed error
/// — into `GET /conversations/:id/mcp`, tool errors the model sees, and
/// the log. Every configured secret value is blotted out everywhere.
#[test]
fn configured_secrets_never_come_back_through_a_servers_messages() {
    // An HTTP "server" that refuses every request, quoting the header it got.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = vec![0u8; 65536];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            let auth = request
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                .unwrap_or("none")
                .to_owned();
            let body = format!("refused: your header was {auth}");
            let _ = write!(
                stream,
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let (token, key) = (format!("tok-{nanos}-remote"), format!("key-{nanos}-stdio"));
    let mcp = format!(
        "max_restarts = 0\n\
         [plugin.config.servers.remote]\nurl = \"http://127.0.0.1:{port}/mcp\"\n\
         headers = {{ Authorization = \"Bearer ${{MCP_REMOTE_TOKEN}}\" }}\n\
         [plugin.config.servers.chatty]\ncommand = \"sh\"\n\
         args = [\"-c\", \"echo my key is $THE_KEY >&2; exit 3\"]\n\
         env = {{ THE_KEY = \"${{MCP_STDIO_KEY}}\" }}\n"
    );
    let cfg = product_config_with(LOOPBACK, LOOPBACK, &[(MCP, mcp)]);
    let s = Server::start_with(
        &cfg,
        &[("MCP_REMOTE_TOKEN", &token), ("MCP_STDIO_KEY", &key), ("RUST_LOG", "debug")],
    );
    let remote = wait_for(&s, "remote", "failed", 0);
    let chatty = wait_for(&s, "chatty", "failed", 0);
    let (remote_error, chatty_error) = (remote["error"].as_str().unwrap(), chatty["error"].as_str().unwrap());
    // The messages are still there to read, with the secrets blotted out.
    assert!(chatty_error.contains("my key is [redacted]"), "{chatty_error}");
    assert!(!remote_error.contains(&token), "{remote_error}");
    assert!(!chatty_error.contains(&key), "{chatty_error}");
    let _cwd = with_cwd(&s);
    let a = get(&format!("{}/conversations/c1/mcp", s.base));
    assert!(a.text.contains("chatty"), "{}", a.text);
    assert!(!a.text.contains(&token) && !a.text.contains(&key), "{}", a.text);
    // A call to a failed server: the error the model sees names why, without them.
    let events = say(&s, "c1", "mcp echo");
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains(&token) && !text.contains(&key), "{text}");
    let log = s.log();
    assert!(log.contains("my key is [redacted]"), "the stderr line is logged, blotted: {log}");
    assert!(!log.contains(&token) && !log.contains(&key), "a secret reached the log:\n{log}");
}

/// Regression (issue 31): SIGTERM while an MCP server was starting waited
/// for its whole start timeout (20 s) before the host stopped. The host
/// tells the plugin being activated to give up and skips the rest.
#[test]
fn sigterm_while_an_mcp_server_starts_stops_the_host_at_once() {
    use std::io::{BufRead as _, BufReader};
    let mcp = "[plugin.config.servers.sleepy]\ncommand = \"sleep\"\nargs = [\"60\"]\n".to_owned();
    let cfg = product_config_with(LOOPBACK, LOOPBACK, &[(MCP, mcp)]);
    let mut cmd = std::process::Command::new(dispatch_bin());
    hermetic(
        cmd.args(["serve", "--config", cfg.to_str().unwrap()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped()),
    );
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // system-prompt is activated just before mcp in the product order.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line =
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("no start-up log");
        if line.contains("plugin active") && line.contains("system-prompt") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    // SAFETY: kill with a valid pid of our own child and signal number.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(15),
            "the host did not stop within 15 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = signalled.elapsed();
    let log: Vec<String> = rx.try_iter().collect();
    assert!(took < Duration::from_secs(5), "stopped {took:?} after SIGTERM; log:\n{}", log.join("\n"));
    assert!(status.success(), "{status:?}; log:\n{}", log.join("\n"));
}

/// Regression guard for the per-project servers: a project's
/// `.dispatch/mcp.json` server is started by its first turn, used by its
/// conversations and offered to no other project; `opencode.json`'s shape
/// is read; a broken project file is reported, never fatal.
#[test]
fn a_projects_own_servers_serve_its_conversations_only() {
    use dispatch_test_support::mock_openai::*;
    let everything = peer("mcp-server-everything");
    let project = tempfile::tempdir().unwrap();
    let a_dir = project.path().canonicalize().unwrap();
    std::fs::create_dir(a_dir.join(".dispatch")).unwrap();
    std::fs::write(
        a_dir.join(".dispatch/mcp.json"),
        json!({"servers": {"proj": {"command": everything}, "nothere": {"command": "/nonexistent/mcp-server"}}}).to_string(),
    )
    .unwrap();
    let other = tempfile::tempdir().unwrap();
    let b_dir = other.path().canonicalize().unwrap();
    std::fs::write(
        b_dir.join("opencode.json"),
        json!({"mcp": {"od": {"type": "local", "command": [everything], "enabled": true}}}).to_string(),
    )
    .unwrap();
    let broken = tempfile::tempdir().unwrap();
    let c_dir = broken.path().canonicalize().unwrap();
    std::fs::create_dir(c_dir.join(".dispatch")).unwrap();
    std::fs::write(c_dir.join(".dispatch/mcp.json"), "{\"servers\": ").unwrap();

    let mock = MockServer::start(vec![
        tool_call("c1", "proj__echo", &json!({"message": "from the project"})),
        text_reply("Echoed."),
        text_reply("B."),
        text_reply("C."),
        text_reply("Changed."),
    ]);
    let cfg = product_config_with(LOOPBACK, LOOPBACK, &[(MCP, "start_timeout_ms = 15000\n".to_owned())]);
    let s = Server::start_on_mock(&cfg, &mock.base_url(), &[]);
    let say = |id: &str, cwd: &Path, message: &str| say_in(&s.base, id, cwd, message);
    let status = |id: &str| -> Vec<Value> {
        let a = get(&format!("{}/conversations/{id}/mcp", s.base));
        assert_eq!(a.status, 200, "{}", a.text);
        a.body["servers"].as_array().unwrap().clone()
    };
    let offered = |request: &dispatch_test_support::mock_openai::Request| -> Vec<String> {
        request.body["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
            .collect()
    };

    // Before a turn there: configured, not started.
    let put = send(
        "PUT",
        &format!("{}/conversations/a/cwd", s.base),
        Some(&json!({"cwd": a_dir}).to_string()),
        &[],
    );
    assert_eq!(put.status, 200, "{}", put.text);
    let rows = status("a");
    let proj = server(&rows, "proj");
    assert_eq!(
        (proj["state"].as_str(), proj["toolCount"].as_u64()),
        (Some("disconnected"), Some(0)),
        "{proj}"
    );
    assert_eq!(proj["configSource"], ".dispatch/mcp.json");

    // Its first turn starts it; the model is offered its tools and calls one.
    let events = say("a", &a_dir, "echo");
    let r = result_of(&events);
    assert_eq!(r["content"], "Echo: from the project", "{r}");
    let tools = offered(&mock.requests()[0]);
    assert!(tools.contains(&"proj__echo".to_owned()), "{tools:?}");
    assert!(!tools.iter().any(|t| t.starts_with("od__")), "{tools:?}");
    let rows = status("a");
    let proj = server(&rows, "proj");
    assert_eq!(proj["state"], "connected", "{proj}");
    assert!(proj["toolCount"].as_u64().unwrap() >= 10, "{proj}");
    let missing = server(&rows, "nothere");
    assert_eq!(missing["state"], "error", "{missing}");
    assert!(missing["error"].as_str().unwrap().contains("/nonexistent/mcp-server"), "{missing}");

    // Another project: its own (opencode.json) server, not the first one's.
    say("b", &b_dir, "hello");
    let tools = offered(&mock.requests()[2]);
    assert!(tools.iter().any(|t| t.starts_with("od__")), "{tools:?}");
    assert!(!tools.iter().any(|t| t.starts_with("proj__")), "{tools:?}");
    let rows = status("b");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0]["id"].as_str(), rows[0]["state"].as_str()), (Some("od"), Some("connected")));
    assert_eq!(rows[0]["configSource"], "opencode.json");

    // A broken project file: reported, and the turn goes on.
    say("c", &c_dir, "hello");
    let rows = status("c");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0]["id"].as_str(), rows[0]["state"].as_str()),
        (Some(".dispatch/mcp.json"), Some("error"))
    );
    assert!(rows[0]["error"].as_str().unwrap().contains("not valid JSON"), "{rows:?}");

    // The first project's file changes: its old server goes, tools and
    // process, and the new one serves its next turn.
    let old_pid = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == a_dir))
        .expect("the project server runs in its project");
    std::fs::write(
        a_dir.join(".dispatch/mcp.json"),
        json!({"servers": {"next": {"command": everything}}}).to_string(),
    )
    .unwrap();
    say("a", &a_dir, "hello again");
    let tools = offered(mock.requests().last().unwrap());
    assert!(tools.contains(&"next__echo".to_owned()), "{tools:?}");
    assert!(!tools.iter().any(|t| t.starts_with("proj__")), "{tools:?}");
    wait_dead(old_pid, "the replaced project server");
    let rows = status("a");
    assert_eq!(rows.iter().map(|r| r["id"].as_str().unwrap()).collect::<Vec<_>>(), ["next"], "{rows:?}");
}
