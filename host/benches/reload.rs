//! Changing plugins in a running server, on the release build (`cargo
//! build --release` first): with 11 plugins running, the time from
//! `POST /admin/plugins/reload` to its report — which returns once the new
//! plugin is active and registered on the bus — for an added plugin and for
//! an upgrade; then the memory 100 upgrade cycles leave behind (each
//! upgrade maps a new private copy of the library, never unmapped).
//!
//! `cargo bench -p dispatch-host --bench reload [-- ROUNDS CYCLES]`
//! (defaults 10 100). The word-count example is built twice (0.1.0, 0.2.0)
//! into `target/bench-external`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use dispatch_test_support::bench::{
    free_port, install, median, proc_kib, release_dir, repo_root, spawn_release_serve, word_count_variant,
};
use dispatch_test_support::http_client;

/// Build a copy of the word-count example as `version` in release, into
/// `target/bench-external`; answers the `.so`.
fn build(tag: &str, version: &str) -> PathBuf {
    let dir = repo_root().join("target/bench-external");
    let manifest = word_count_variant(&dir, tag, version, "{words} words,");
    let target = dir.join("target");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap();
    assert!(status.success());
    let so = dir.join(format!("{tag}.so"));
    std::fs::copy(target.join("release").join(format!("libword_count_{tag}.so")), &so).unwrap();
    so
}

async fn reload(port: u16) -> (Duration, String) {
    let start = Instant::now();
    let r = http_client::send("POST", &format!("http://127.0.0.1:{port}/admin/plugins/reload"), &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let text = r.text().await;
    (start.elapsed(), text)
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rounds = args.first().copied().unwrap_or(10);
    let cycles = args.get(1).copied().unwrap_or(100);
    assert!(release_dir().join("dispatch").exists(), "build first: cargo build --release");
    let (v1, v2) = (build("v1", "0.1.0"), build("v2", "0.2.0"));

    let dir = tempfile::tempdir().unwrap();
    let drop = dir.path().join("plugins.d");
    std::fs::create_dir_all(&drop).unwrap();
    let port = free_port();
    // 11 plugins: the bundled set without the optional extras.
    let mut toml = dispatch_test_support::host_table(&release_dir());
    for p in [
        "surfaces",
        "standard_surfaces",
        "models",
        "provider_scripted",
        "store_sqlite",
        "tool_read_file",
        "tool_write_file",
        "tool_edit_file",
        "tool_todo",
        "session",
        "transport_http",
    ] {
        toml.push_str(&format!("\n[[plugin]]\npath = \"libdispatch_plugin_{p}.so\"\n"));
        match p {
            "transport_http" => toml.push_str(&format!("[plugin.config]\naddr = [\"127.0.0.1:{port}\"]\n")),
            "session" => toml.push_str(&format!(
                "[plugin.config]\ndefault_cwd = {:?}\n",
                dir.path().display().to_string()
            )),
            _ => {}
        }
    }
    let cfg = dir.path().join("plugins.toml");
    std::fs::write(&cfg, toml).unwrap();
    let mut child = spawn_release_serve(&cfg);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(http_client::wait_ok(&format!("http://127.0.0.1:{port}/health"), Duration::from_secs(30)));
    let target = drop.join("libword_count.so");

    let (mut adds, mut upgrades, mut unchanged) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        install(&v1, &target);
        let (t, report) = rt.block_on(reload(port));
        assert!(report.contains("\"added\":[{\"id\":\"word-count\""), "{report}");
        adds.push(t.as_secs_f64() * 1e3);
        install(&v2, &target);
        let (t, report) = rt.block_on(reload(port));
        assert!(report.contains("\"upgraded\":[{\"id\":\"word-count\""), "{report}");
        upgrades.push(t.as_secs_f64() * 1e3);
        let (t, _) = rt.block_on(reload(port));
        unchanged.push(t.as_secs_f64() * 1e3);
        std::fs::remove_file(&target).unwrap();
        let (_, report) = rt.block_on(reload(port));
        assert!(report.contains("\"removed\":[{\"id\":\"word-count\""), "{report}");
    }
    println!("reload with 11 plugins running, median of {rounds} rounds (request -> report; the plugin is active on the bus when it returns):");
    println!("  add one plugin          {:>7.2} ms", median(adds));
    println!("  upgrade one plugin      {:>7.2} ms", median(upgrades));
    println!("  nothing changed         {:>7.2} ms", median(unchanged));

    // Memory: upgrade cycles, alternating the two builds.
    install(&v1, &target);
    rt.block_on(reload(port));
    std::thread::sleep(Duration::from_millis(300));
    let before = proc_kib(child.id(), "VmRSS:");
    for i in 0..cycles {
        install(if i % 2 == 0 { &v2 } else { &v1 }, &target);
        let (_, report) = rt.block_on(reload(port));
        assert!(report.contains("\"upgraded\""), "{report}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = proc_kib(child.id(), "VmRSS:");
    let so_kib = std::fs::metadata(&v1).unwrap().len() / 1024;
    println!(
        "{cycles} upgrade cycles: RSS {:.1} -> {:.1} MiB, {:.0} KiB per upgrade (the library file is {so_kib} KiB)",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / cycles as f64
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
