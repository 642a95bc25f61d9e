//! Running as a service: the systemd unit, readiness notification, JSON
//! logs, and failing loudly when a required plugin cannot start.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use serde_json::Value;

use crate::http::{product_config, Server, LOOPBACK};
use crate::support::*;

fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let Ok(which) = std::process::Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed here: the unit file is not verified");
        return;
    };
    assert!(which.status.success());
    let unit = std::fs::read_to_string(repo_root().join("dist/dispatch.service")).unwrap();
    // verify checks that ExecStart exists: point it at this build.
    let unit = unit.replace("/usr/local/bin/dispatch", dispatch_bin().to_str().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dispatch.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // It exits 0 on settings it ignores; those are warnings on stderr.
    let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains("dispatch.service")).collect();
    assert!(complaints.is_empty(), "{stderr}");
}

#[test]
fn serve_tells_systemd_when_it_is_ready_and_when_it_stops_and_logs_json_on_request() {
    let cfg = product_config(LOOPBACK);
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut s = Server::start_with(
        &cfg,
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap()), ("DISPATCH_LOG_FORMAT", "json")],
    );
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).unwrap();
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    let active = format!("STATUS=serving, {} plugins active", dispatch_test_support::BUNDLED_PLUGINS.len());
    assert!(ready.contains(&active), "{ready:?}");

    let status = s.stop_with(15);
    assert!(status.success(), "{status:?}");
    let n = socket.recv(&mut buf).unwrap();
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");

    // Every log line was one JSON object.
    let log = s.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    // (A plugin's record arrives with its fields already in the message.)
    let listening =
        |l: &Value| l["fields"]["message"].as_str().is_some_and(|m| m.starts_with("HTTP listening"));
    assert!(lines.iter().any(listening), "{log}");
    assert!(lines.iter().all(|l| l["level"].is_string()), "{log}");
}

#[test]
fn serve_exits_non_zero_naming_a_required_plugin_that_cannot_start() {
    let cfg = Config::new()
        .plugin("libdispatch_plugin_surfaces.so", "")
        .plugin("libdispatch_plugin_no_such_thing.so", "")
        .write();
    let out = run(&["serve", "--config", cfg.to_str().unwrap()], &[], Duration::from_secs(60));
    assert_eq!(out.code(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("required plugins are not active"), "{}", out.stderr);
    assert!(out.stderr.contains("libdispatch_plugin_no_such_thing.so"), "{}", out.stderr);
}
