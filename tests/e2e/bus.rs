//! The bus across `.so` boundaries: events between plugins, hook chains,
//! and panics inside handlers, which must stay inside the plugin.

use crate::support::*;

const ALPHA: &str = "libfx_alpha.so";
const BETA: &str = "libfx_beta.so";

#[test]
fn events_cross_libraries_and_a_panicking_subscriber_does_not_stop_the_others() {
    let cfg = Config::new()
        .plugin(ALPHA, "subscribe = \"fx.ping\"\nsubscriber_panics = true")
        .plugin(BETA, "subscribe = \"fx.ping\"")
        .write();
    let (out, lines) = call(
        &cfg,
        &[
            ("fx-alpha.publish", r#"{"event":"fx.ping","payload":1}"#),
            ("fx-alpha.publish", r#"{"event":"fx.ping","payload":{"n":2}}"#),
            ("fx-beta.received", r#"{"min":2}"#),
            ("fx-alpha.received", r#"{"min":0}"#),
        ],
        &[],
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(lines[2]["received"], serde_json::json!([1, {"n": 2}]), "{lines:?}");
    assert_eq!(lines[3]["received"], serde_json::json!([]));
    // The contained panic is logged, attributed to the plugin.
    let panic_line = out
        .stderr
        .lines()
        .find(|l| l.contains("fixture subscriber panics on purpose"))
        .unwrap_or_else(|| panic!("panic not logged: {}", out.stderr));
    assert!(panic_line.contains("plugin=fx-alpha"), "{panic_line}");
    assert!(out.stderr.contains("event subscriber failed"), "{}", out.stderr);
}

#[test]
fn a_panicking_filter_is_skipped_and_the_chain_continues() {
    let cfg = Config::new()
        .plugin(ALPHA, "filter = \"fx.text\"\nfilter_panics = true\nfilter_priority = 0")
        .plugin(BETA, "filter = \"fx.text\"\nfilter_append = \"+beta\"\nfilter_priority = 1")
        .write();
    let (out, lines) = call(&cfg, &[("fx-beta.run-hook", r#"{"hook":"fx.text","value":"in"}"#)], &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(lines[0]["value"], "in+beta");
    assert!(out.stderr.contains("fixture filter panics on purpose"), "{}", out.stderr);
    assert!(out.stderr.contains("fail-open"), "{}", out.stderr);
}

#[test]
fn filters_from_several_libraries_run_in_priority_order() {
    let cfg = Config::new()
        .plugin(ALPHA, "filter = \"fx.text\"\nfilter_append = \"+alpha\"\nfilter_priority = 10")
        .plugin(BETA, "filter = \"fx.text\"\nfilter_append = \"+beta\"\nfilter_priority = -10")
        .write();
    let (_, lines) = call(&cfg, &[("fx-alpha.run-hook", r#"{"hook":"fx.text","value":"x"}"#)], &[]);
    assert_eq!(lines[0]["value"], "x+beta+alpha");
}

#[test]
fn a_panic_inside_a_service_call_is_an_error_for_the_caller_and_the_host_lives() {
    let cfg = Config::new().plugin(ALPHA, "").write();
    let (out, lines) = call(&cfg, &[("fx-alpha.panic", "{}"), ("fx-alpha.received", r#"{"min":0}"#)], &[]);
    assert_eq!(out.code(), 1, "a failed call makes `dispatch call` exit 1");
    assert_eq!(lines[0]["code"], "panic");
    assert!(lines[0]["error"].as_str().unwrap().contains("fixture service panics on purpose"));
    assert_eq!(lines[1]["received"], serde_json::json!([]), "the next call still works");
    assert!(out.stderr.contains("plugin stopped"), "orderly shutdown after the panic: {}", out.stderr);
}

#[test]
fn a_bad_request_is_a_clear_error_not_a_crash() {
    let cfg = Config::new().plugin(ALPHA, "").write();
    let (_, lines) = call(&cfg, &[("fx-alpha.publish", r#"{"nope":true}"#), ("no.such.service", "{}")], &[]);
    assert_eq!(lines[0]["code"], "invalid_payload");
    assert!(lines[0]["error"].as_str().unwrap().contains("invalid request for service `fx-alpha.publish`"));
    assert_eq!(lines[1]["code"], "not_found");
}

#[test]
fn the_surfaces_plugins_use_each_other_and_the_host_through_the_bus() {
    let cfg = Config::new()
        .plugin("libdispatch_plugin_surfaces.so", "")
        .plugin("libdispatch_plugin_standard_surfaces.so", "")
        .plugin(ALPHA, "")
        .write();
    let (out, lines) = call(
        &cfg,
        &[
            ("surfaces@2", r#"{"op":"catalog"}"#),
            ("surfaces@2", r#"{"op":"get","surfaceId":"loaded-extensions"}"#),
        ],
        &[],
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(
        lines[0]["catalog"],
        serde_json::json!([
            {"id": "loaded-extensions", "region": "side", "title": "Loaded Extensions", "scope": "global"},
            {"id": "todo", "region": "side", "title": "Tasks", "scope": "conversation"},
            {"id": "message-queue", "region": "side", "title": "Message Queue", "scope": "conversation"}
        ])
    );
    // fx-alpha activated after standard-surfaces: it appears through the
    // host's plugin-state event and the surface's refresh.
    let fields = &lines[1]["spec"]["fields"];
    assert_eq!(fields[0]["value"], "3", "{fields}");
    let rows = fields[1]["payload"]["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(names, ["surfaces", "standard-surfaces", "fx-alpha"]);
}

/// `dispatch call … | head -1` used to panic on the broken pipe.
#[test]
fn a_closed_stdout_ends_dispatch_call_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::Duration;
    let cfg = Config::new().plugin("libdispatch_plugin_surfaces.so", "").write();
    let mut args = vec!["call".to_owned(), "--config".into(), cfg.to_str().unwrap().into()];
    for _ in 0..2000 {
        args.push("surfaces@2".into());
        args.push(r#"{"op":"catalog"}"#.into());
    }
    let mut child = Command::new(dispatch_bin())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains("catalog"), "{first}");
    // The reader is gone now, as `head -1` would be.
    let out = wait(child, Duration::from_secs(60), "dispatch call into a closed pipe");
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert_eq!(out.code(), 141, "{}", out.stderr);
}
