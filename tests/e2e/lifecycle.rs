//! `dispatch serve`: starts, runs until SIGTERM/SIGINT, and deactivates in
//! reverse activation order.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::*;

fn serve_until_signal(signal: &str) -> Output {
    serve_with_signals(&[signal])
}

/// Start `serve`, then send each signal in turn; every one but the last is
/// a SIGHUP whose reload is waited for.
fn serve_with_signals(signals: &[&str]) -> Output {
    let cfg = Config::new()
        .plugin("libdispatch_plugin_standard_surfaces.so", "")
        .plugin("libdispatch_plugin_surfaces.so", "")
        .plugin("libfx_alpha.so", "")
        .write();
    let (child, rx, reader) = spawn_serve(&cfg);
    rx.recv_timeout(Duration::from_secs(30)).expect("the host never said it was serving");
    let (last, before) = signals.split_last().unwrap();
    for signal in before {
        let status = Command::new("kill").args([*signal, &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        rx.recv_timeout(Duration::from_secs(30)).expect("the host never said it reloaded");
    }
    let status = Command::new("kill").args([*last, &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let mut out = wait(child, Duration::from_secs(20), "dispatch serve after a signal");
    out.stderr = reader.join().unwrap();
    out
}

/// `dispatch serve` on `cfg`; the receiver hears "serving" and each
/// "plugins reloaded", the thread answers the whole log once it exits.
fn spawn_serve(
    cfg: &std::path::Path,
) -> (std::process::Child, mpsc::Receiver<()>, std::thread::JoinHandle<String>) {
    let mut child = hermetic(&mut Command::new(dispatch_bin()))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if line.contains("dispatch is serving") || line.contains("plugins reloaded") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    (child, rx, reader)
}

fn assert_reverse_shutdown(out: &Output) {
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let position = |needle: &str| {
        out.stderr.find(needle).unwrap_or_else(|| panic!("{needle:?} not in the log:\n{}", out.stderr))
    };
    let stopped = |id: &str| position(&format!("plugin stopped plugin={id}"));
    // Activation: surfaces, then extensions-surface, then fx-alpha (config
    // order breaks the tie between independent plugins).
    assert!(stopped("fx-alpha") < stopped("standard-surfaces"));
    assert!(stopped("standard-surfaces") < stopped("surfaces"));
    assert!(position("shutting down") < stopped("fx-alpha"));
}

#[test]
fn sigterm_deactivates_in_reverse_activation_order() {
    assert_reverse_shutdown(&serve_until_signal("-TERM"));
}

#[test]
fn sigint_deactivates_in_reverse_activation_order() {
    assert_reverse_shutdown(&serve_until_signal("-INT"));
}

#[test]
fn serve_refuses_to_start_when_a_required_plugin_fails() {
    let cfg = Config::new()
        .plugin("libdispatch_plugin_surfaces.so", "")
        .plugin("libfx_alpha.so", "fail = \"error\"")
        .write();
    let out = run(&["serve", "--config", cfg.to_str().unwrap()], &[], Duration::from_secs(30));
    assert_eq!(out.code(), 1);
    assert!(out.stderr.contains("required plugins are not active"), "{}", out.stderr);
    assert!(out.stderr.contains("fx-alpha") && out.stderr.contains("libfx_alpha.so"), "{}", out.stderr);
    assert!(out.stderr.contains("plugin stopped plugin=surfaces"), "what started is stopped: {}", out.stderr);
}

#[test]
fn a_hanging_deactivate_hits_its_deadline_and_the_rest_still_stop() {
    let cfg = Config::new()
        .host_line("deactivate_timeout_ms = 300")
        .plugin("libdispatch_plugin_surfaces.so", "")
        .plugin("libfx_alpha.so", "deactivate_sleep_ms = 30000")
        .write();
    let started = std::time::Instant::now();
    let out = run(&["plugins", "--config", cfg.to_str().unwrap()], &[], Duration::from_secs(20));
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(10), "the host waited for the hung deactivate");
    assert!(out.stderr.contains("deactivate did not finish within 300 ms"), "{}", out.stderr);
    assert!(out.stderr.contains("plugin stopped plugin=surfaces"), "{}", out.stderr);
}

/// SIGHUP used to take `serve` down with its default action (no
/// deactivation at all); it now reloads the plugins — with nothing changed,
/// nothing stops — and the server goes on until SIGTERM.
#[test]
fn sighup_reloads_without_stopping_anything_and_sigterm_then_stops_in_reverse_order() {
    let out = serve_with_signals(&["-HUP", "-TERM"]);
    assert!(
        out.stderr.contains("plugins reloaded added=0 removed=0 upgraded=0 restarted=0 failed=0 unchanged=3"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("stopped for a reload"), "{}", out.stderr);
    assert_reverse_shutdown(&out);
}

/// Removing a plugin others depend on: the dependents stop first, then it;
/// a dependent that is still configured stays down (reported), the rest
/// runs on.
#[test]
fn a_reload_that_removes_a_dependency_stops_its_dependents_first() {
    let cfg = Config::new()
        .plugin("libdispatch_plugin_surfaces.so", "")
        .optional("libfx_alpha.so", "")
        .optional("libfx_beta.so", "")
        .write();
    let (child, rx, reader) = spawn_serve(&cfg);
    rx.recv_timeout(Duration::from_secs(30)).expect("serving");
    let pid = child.id().to_string();
    // A changed [plugin.config] restarts just that plugin.
    let text = std::fs::read_to_string(&*cfg).unwrap();
    let beta = "path = \"libfx_beta.so\"\nrequired = false\n";
    assert!(text.contains(beta), "{text}");
    std::fs::write(&*cfg, text.replace(beta, &format!("{beta}[plugin.config]\nfilter_append = \"!\"\n")))
        .unwrap();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    rx.recv_timeout(Duration::from_secs(30)).expect("reloaded");
    // Then fx-alpha's entry names a file that is not there.
    let text = std::fs::read_to_string(&*cfg).unwrap();
    std::fs::write(&*cfg, text.replace("path = \"libfx_alpha.so\"", "path = \"libfx_alpha_gone.so\""))
        .unwrap();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    rx.recv_timeout(Duration::from_secs(30)).expect("reloaded");
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = wait(child, Duration::from_secs(20), "serve after a reload");
    let log = reader.join().unwrap();
    assert_eq!(out.code(), 0, "{log}");
    assert!(
        log.contains("plugins reloaded added=0 removed=0 upgraded=0 restarted=1 failed=0 unchanged=2"),
        "{log}"
    );
    let at = |needle: &str| log.find(needle).unwrap_or_else(|| panic!("{needle:?} not in:\n{log}"));
    // (fx-beta also stopped for its restart, earlier: its last stop counts,
    // and there must be two.)
    assert_eq!(log.matches("plugin stopped for a reload plugin=fx-beta").count(), 2, "{log}");
    let beta_last = log.rfind("plugin stopped for a reload plugin=fx-beta").unwrap();
    assert!(beta_last < at("plugin stopped for a reload plugin=fx-alpha"), "{log}");
    // fx-alpha's entry now names a missing file: removed, and a failed row;
    // fx-beta cannot come back without it.
    assert!(
        log.contains("plugins reloaded added=0 removed=1 upgraded=0 restarted=0 failed=2 unchanged=1"),
        "{log}"
    );
    assert!(log.contains("plugin `fx-beta` depends on `fx-alpha`"), "{log}");
    assert!(log.contains("plugin stopped plugin=surfaces"), "{log}");
}
