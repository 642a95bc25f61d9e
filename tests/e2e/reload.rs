//! Changing the plugins of a running server: a tool plugin dropped into
//! `plugins.d`, upgraded to a rebuilt version and removed, each applied by
//! SIGHUP, `dispatch plugins reload` or `POST /admin/plugins/reload`, with
//! turns before and after; a garbage file disturbs nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::external::build_external;
use crate::http::{chat, get, post, product_config, Server, LOOPBACK};
use crate::support::*;
use dispatch_test_support::bench::{install, word_count_variant};

/// Two builds of the word-count example: 0.1.0 as it is, and 0.2.0 whose
/// answers say so. Each from a copy with its own library name: they share
/// `target/external` with the example's own build, and a build cargo finds
/// fresh is not copied out again.
fn two_builds(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let build = |tag: &str, version: &str, words: &str| {
        let manifest = word_count_variant(dir, tag, version, words);
        let so = dir.join(format!("{tag}.so"));
        build_external(&manifest, &format!("libword_count_{tag}.so"), &so);
        so
    };
    (build("v1", "0.1.0", "{words} words,"), build("v2", "0.2.0", "{words} words (v2),"))
}

/// The word_count result of a "count" turn.
fn count_turn(s: &Server, conversation: &str) -> Value {
    let (a, events) = chat(&s.base, json!({"conversationId": conversation, "message": "count please"}));
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(events.last().unwrap()["type"], "turn-sealed", "{events:?}");
    events.into_iter().find(|e| e["type"] == "tool-result").expect("a tool result")
}

fn word_count_row(s: &Server) -> Option<Value> {
    let list = get(&format!("{}/extensions", s.base)).body;
    list["plugins"].as_array().unwrap().iter().find(|p| p["id"] == "word-count").cloned()
}

#[test]
fn a_tool_plugin_is_added_upgraded_and_removed_in_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = two_builds(dir.path());
    let cfg = product_config(LOOPBACK);
    let drop_dir = cfg.parent().unwrap().join("plugins.d");
    std::fs::create_dir_all(&drop_dir).unwrap();
    let s = Server::start(&cfg);

    // Not there yet: the model's call fails, the turn goes on.
    let before = count_turn(&s, "r1");
    assert_eq!(before["isError"], true, "{before}");

    // Dropped in, SIGHUP: the next turn calls it.
    install(&v1, &drop_dir.join("libword_count.so"));
    let hup = std::process::Command::new("kill").args(["-HUP", &s.pid().to_string()]).status().unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while word_count_row(&s).is_none_or(|r| r["state"] != "active") {
        assert!(Instant::now() < deadline, "never active after SIGHUP; log:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let added = count_turn(&s, "r2");
    assert_eq!(
        (added["content"].as_str(), added["isError"].as_bool()),
        (Some("3 words, 1 lines, 13 characters"), Some(false))
    );
    assert!(s.log().contains("plugins reloaded"), "{}", s.log());

    // A new build, through the CLI: the new version answers.
    install(&v2, &drop_dir.join("libword_count.so"));
    let out = run(&["plugins", "reload", "--server", &s.base], &[], Duration::from_secs(60));
    assert_eq!(out.code(), 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("upgraded  word-count 0.2.0"), "{}", out.stdout);
    assert_eq!(word_count_row(&s).unwrap()["version"], "0.2.0");
    assert_eq!(count_turn(&s, "r3")["content"], "3 words (v2), 1 lines, 13 characters");

    // Garbage dropped in: reported, nothing else disturbed.
    std::fs::write(drop_dir.join("libgarbage.so"), b"not a library").unwrap();
    let report = post(&format!("{}/admin/plugins/reload", s.base), "");
    assert_eq!(report.status, 200, "{}", report.text);
    let failed = report.body["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{}", report.body);
    assert!(
        failed[0]["reason"].as_str().unwrap().contains("not a loadable dynamic library"),
        "{}",
        report.body
    );
    assert!(report.body["unchanged"].as_u64().unwrap() >= 17, "{}", report.body);
    // Named by its own path, not the private copy's `/proc/self/fd/N`.
    let reason = failed[0]["reason"].as_str().unwrap();
    assert!(reason.contains("libgarbage.so (its private copy)"), "{reason}");
    assert!(!reason.contains("/proc/self/fd"), "{reason}");
    // Still there at the next reload: still reported (it used to vanish
    // from the report, and the CLI said nothing failed).
    let out = run(&["plugins", "reload", "--server", &s.base], &[], Duration::from_secs(60));
    assert_eq!(out.code(), 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("unchanged since it failed"), "{}", out.stdout);
    assert_eq!(count_turn(&s, "r4")["content"], "3 words (v2), 1 lines, 13 characters");

    // Removed: gone from the bus and the list; turns still work.
    std::fs::remove_file(drop_dir.join("libword_count.so")).unwrap();
    std::fs::remove_file(drop_dir.join("libgarbage.so")).unwrap();
    let report = post(&format!("{}/admin/plugins/reload", s.base), "").body;
    let removed: Vec<&str> =
        report["removed"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(removed, ["word-count"], "{report}");
    assert!(word_count_row(&s).is_none());
    let after = count_turn(&s, "r5");
    assert_eq!(after["isError"], true, "{after}");
}

/// Removing a plugin while a turn's call to it runs: the call ends as an
/// error result for the model and the turn goes on to seal.
#[test]
fn removing_a_plugin_during_its_slow_call_ends_the_call_with_an_error_and_the_turn_seals() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let mut stream = crate::http::Stream::open(
        &s.base,
        &json!({"conversationId": "gone-tool", "message": "shell started"}),
    );
    // Its first output line: the command is running (it sleeps 1.5 s next).
    // (`tool-call` would be too early: it is sent while the model's reply
    // streams, before the call starts.)
    stream.until("tool-output");
    // The configuration without the shell tool.
    let text = std::fs::read_to_string(&*cfg).unwrap();
    let without =
        text.replace("\n[[plugin]]\npath = \"libdispatch_plugin_tool_shell.so\"\nrequired = true\n", "\n");
    assert_ne!(without, text, "the shell tool's entry was not found in:\n{text}");
    std::fs::write(&*cfg, without).unwrap();
    let answer = post(&format!("{}/admin/plugins/reload", s.base), "");
    let report = answer.body;
    let removed: Vec<&str> = report["removed"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: {}", answer.status, answer.text))
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(removed, ["tool-shell"], "{report}");
    let rest = stream.rest();
    let result = rest.iter().find(|e| e["type"] == "tool-result").unwrap_or_else(|| panic!("{rest:?}"));
    assert_eq!(result["isError"], true, "{result}");
    // Whichever way the call ended (its command's process group killed,
    // or its stream gone first), the model is told why.
    let content = result["content"].as_str().unwrap();
    assert!(content.contains("the tool's plugin was stopped during this call (a plugin reload"), "{result}");
    assert_eq!(rest.last().unwrap()["type"], "turn-sealed", "{rest:?}");
    // And the next turn runs without it.
    let (a, events) = chat(&s.base, json!({"conversationId": "gone-tool", "message": "hi"}));
    assert_eq!(a.status, 200);
    assert_eq!(events.last().unwrap()["type"], "turn-sealed");
}

/// After a reload restarts a tool, shutdown still stops the session
/// before the tools, as the configuration lists them: the restarted tool
/// used to be the last activated and so the first stopped.
#[test]
fn after_a_reload_shutdown_still_stops_the_session_before_a_restarted_tool() {
    let cfg = product_config(LOOPBACK);
    let mut s = Server::start(&cfg);
    let text = std::fs::read_to_string(&*cfg).unwrap();
    let entry = "\n[[plugin]]\npath = \"libdispatch_plugin_tool_shell.so\"\nrequired = true\n";
    let reconfigured = text.replace(entry, &format!("{entry}[plugin.config]\ndefault_timeout_ms = 60000\n"));
    assert_ne!(reconfigured, text, "the shell tool's entry was not found in:\n{text}");
    std::fs::write(&*cfg, reconfigured).unwrap();
    let report = post(&format!("{}/admin/plugins/reload", s.base), "").body;
    let restarted: Vec<&str> =
        report["restarted"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(restarted, ["tool-shell"], "{report}");
    assert!(s.stop_with(15).success(), "{}", s.log());
    let log = s.log();
    let stopped = |id: &str| {
        log.lines()
            .position(|l| l.ends_with(&format!("supervisor: plugin stopped plugin={id}")))
            .unwrap_or_else(|| panic!("no stop of {id} in:\n{log}"))
    };
    assert!(stopped("session") < stopped("tool-shell"), "{log}");
    assert!(stopped("transport-http") < stopped("session"), "{log}");
    assert!(stopped("session") < stopped("store-sqlite"), "{log}");
}

/// A provider dropped into a running server: its models appear in
/// `GET /models` and a turn can use them.
#[test]
fn a_provider_added_by_a_reload_serves_its_models() {
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("reload-provider");
    let made = run(
        &["plugins", "new", "reload-provider", "--kind", "provider", "--dir", crate_dir.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(made.code(), 0, "{}", made.stderr);
    let so = dir.path().join("libreload_provider.so");
    build_external(&crate_dir.join("Cargo.toml"), "libreload_provider.so", &so);

    let cfg = product_config(LOOPBACK);
    let drop_dir = cfg.parent().unwrap().join("plugins.d");
    std::fs::create_dir_all(&drop_dir).unwrap();
    let s = Server::start(&cfg);
    let models = |s: &Server| get(&format!("{}/models", s.base)).body["models"].clone();
    assert!(!models(&s).as_array().unwrap().iter().any(|m| m == "reload_provider/echo"));
    install(&so, &drop_dir.join("libreload_provider.so"));
    let report = post(&format!("{}/admin/plugins/reload", s.base), "").body;
    assert_eq!(report["added"][0]["id"], "reload-provider", "{report}");
    assert!(models(&s).as_array().unwrap().iter().any(|m| m == "reload_provider/echo"), "{}", models(&s));
    let (a, events) = chat(&s.base, json!({"message": "hello there", "model": "reload_provider/echo"}));
    assert_eq!(a.status, 200, "{}", a.text);
    let text: String =
        events.iter().filter(|e| e["type"] == "text-delta").map(|e| e["delta"].as_str().unwrap()).collect();
    assert_eq!(text, "You said: hello there");
}

/// Regression: `dispatch.reload` used to join the bus only after every
/// plugin had activated and the serve loop began, while the HTTP
/// transport answered as soon as it was active — a reload asked for in
/// that window was a `404 not_found` (seen in CI as a flaky test).
#[test]
fn a_reload_asked_for_as_soon_as_the_server_listens_is_answered() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let answer = post(&format!("{}/admin/plugins/reload", s.base), "");
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(answer.body["unchanged"].as_u64().unwrap() > 0, "{}", answer.text);
    assert_eq!(answer.body["removed"], json!([]), "{}", answer.text);
}

/// Regression (issue 31): `cp other.so plugin.so` over a loaded plugin —
/// what an operator does to "update" it — writes into the pages the host
/// has mapped, and the host died with SIGSEGV, cutting every live stream.
/// Every plugin now runs from a private copy: turns keep running on the
/// old code, and the next reload loads the new file.
#[test]
fn a_plugin_file_overwritten_in_place_under_load_disturbs_nothing_until_the_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = two_builds(dir.path());
    let cfg = product_config(LOOPBACK);
    let drop_dir = cfg.parent().unwrap().join("plugins.d");
    std::fs::create_dir_all(&drop_dir).unwrap();
    let target = drop_dir.join("libword_count.so");
    install(&v1, &target);
    let s = Server::start(&cfg);
    let deadline = Instant::now() + Duration::from_secs(30);
    while word_count_row(&s).is_none_or(|r| r["state"] != "active") {
        assert!(Instant::now() < deadline, "the dropped-in plugin never became active; log:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }

    // Six conversations calling the plugin turn after turn while the file
    // is overwritten in place (same inode: `std::fs::copy` truncates and
    // writes, as `cp` does).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..6)
        .map(|n| {
            let base = s.base.clone();
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut turns = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let id = format!("inplace-{n}");
                    let (a, events) = chat(&base, json!({"conversationId": id, "message": "count please"}));
                    assert_eq!(a.status, 200, "{}", a.text);
                    assert_eq!(events.last().unwrap()["type"], "turn-sealed", "{events:?}");
                    let result = events.iter().find(|e| e["type"] == "tool-result").unwrap();
                    assert_eq!(result["content"], "3 words, 1 lines, 13 characters", "{result}");
                    turns += 1;
                }
                turns
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&target).unwrap());
    std::fs::copy(&v2, &target).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&target).unwrap()), inode);
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in workers {
        let turns = w.join().expect("a stream broke off: the host crashed?");
        assert!(turns > 0);
    }
    assert_eq!(get(&format!("{}/health", s.base)).status, 200, "log:\n{}", s.log());

    // The reload sees the changed file and loads it.
    let report = post(&format!("{}/admin/plugins/reload", s.base), "");
    assert_eq!(report.status, 200, "{}", report.text);
    assert_eq!(word_count_row(&s).unwrap()["version"], "0.2.0", "{}", report.body);
    assert_eq!(count_turn(&s, "inplace-after")["content"], "3 words (v2), 1 lines, 13 characters");
}
