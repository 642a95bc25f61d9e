//! A plugin that owns a tokio runtime does real I/O — a timer and a TCP
//! round trip on 127.0.0.1 — when called through the bus from the host,
//! whichever runtime flavour the host runs; its logs reach the host's log
//! with its id and obey RUST_LOG.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use crate::support::*;

/// A one-connection-at-a-time echo server on 127.0.0.1: answers each line
/// with `echo: <line>`. Runs until the test process ends.
fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut line = String::new();
            if BufReader::new(&stream).read_line(&mut line).is_ok() {
                let _ = writeln!(stream, "echo: {}", line.trim_end());
            }
        }
    });
    addr
}

fn tcp_round_trip(runtime_line: &str) {
    let addr = echo_server();
    let cfg = Config::new().host_line(runtime_line).plugin("libfx_alpha.so", "").write();
    let req = format!(r#"{{"addr":"{addr}","message":"ping","delayMs":50}}"#);
    let req2 = format!(r#"{{"addr":"{addr}","message":"again","delayMs":0}}"#);
    let (out, lines) = call(&cfg, &[("fx-alpha.tcp", &req), ("fx-alpha.tcp", &req2)], &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(lines[0]["reply"], "echo: ping");
    assert!(lines[0]["elapsedMs"].as_u64().unwrap() >= 50, "the timer really waited: {lines:?}");
    assert_eq!(lines[1]["reply"], "echo: again");
}

#[test]
fn plugin_runtime_io_works_under_a_current_thread_host() {
    tcp_round_trip("runtime = \"current-thread\"");
}

#[test]
fn plugin_runtime_io_works_under_a_multi_thread_host() {
    tcp_round_trip("runtime = \"multi-thread\"\nworker_threads = 2");
}

#[test]
fn a_connection_failure_is_an_error_value() {
    // Bind then drop: the port is (very likely) closed.
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let cfg = Config::new().plugin("libfx_alpha.so", "").write();
    let (_, lines) = call(&cfg, &[("fx-alpha.tcp", &format!(r#"{{"addr":"{addr}","message":"x"}}"#))], &[]);
    assert_eq!(lines[0]["code"], "plugin");
    assert!(lines[0]["error"].as_str().unwrap().starts_with("connect 127.0.0.1:"), "{lines:?}");
}

#[test]
fn plugin_logs_carry_the_plugin_id_and_obey_rust_log() {
    let cfg = Config::new().plugin("libfx_alpha.so", "").write();

    let (out, _) = plugins_json(&cfg, &[("RUST_LOG", "info")]);
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("fixture fx-alpha activating"))
        .unwrap_or_else(|| panic!("plugin info log missing: {}", out.stderr));
    assert!(line.contains("plugin=fx-alpha") && line.contains("INFO"), "{line}");
    assert!(!out.stderr.contains("debug detail"), "debug must be filtered at info: {}", out.stderr);

    let (out, _) = plugins_json(&cfg, &[("RUST_LOG", "info,fx_common=debug")]);
    assert!(out.stderr.contains("fixture fx-alpha debug detail"), "{}", out.stderr);

    let (out, _) = plugins_json(&cfg, &[("RUST_LOG", "warn")]);
    assert!(!out.stderr.contains("fixture fx-alpha activating"), "{}", out.stderr);
}

/// The host reads `RUST_LOG` as plugins do (no regex engine): span and
/// field directives are skipped, not refused; a specification that does
/// not parse is named once and `info` used instead.
#[test]
fn the_host_reads_rust_log_as_plugins_do_and_names_an_invalid_one() {
    let cfg = Config::new().plugin("libfx_alpha.so", "").write();

    let (out, _) = plugins_json(&cfg, &[("RUST_LOG", "info,[request{id=7}]=trace,fx_common=debug")]);
    assert!(!out.stderr.contains("ignoring invalid RUST_LOG"), "{}", out.stderr);
    assert!(out.stderr.contains("fixture fx-alpha debug detail"), "{}", out.stderr);

    let (out, _) = plugins_json(&cfg, &[("RUST_LOG", "fx_common=loud")]);
    assert!(out.stderr.contains("dispatch: ignoring invalid RUST_LOG `fx_common=loud`"), "{}", out.stderr);
    assert!(out.stderr.contains("fixture fx-alpha activating"), "falls back to info: {}", out.stderr);
    assert!(!out.stderr.contains("debug detail"), "{}", out.stderr);
}
