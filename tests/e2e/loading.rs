//! Every way loading and activation can fail: each names the plugin, the
//! file and the cause; the host keeps the unaffected plugins running and
//! reports dependents as skipped.

use std::time::Duration;

use crate::support::*;

const SURFACES: &str = "libdispatch_plugin_surfaces.so";
const EXTENSIONS: &str = "libdispatch_plugin_standard_surfaces.so";
const ALPHA: &str = "libfx_alpha.so";
const BETA: &str = "libfx_beta.so";

#[test]
fn bundled_plugins_activate_in_dependency_order() {
    // Listed dependent-first on purpose: the order must come from depends_on.
    let cfg = Config::new().plugin(EXTENSIONS, "").plugin(SURFACES, "").write();
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(row(&rows, "surfaces")["order"], 1);
    assert_eq!(row(&rows, "standard-surfaces")["order"], 2);
    assert_row(&rows, "standard-surfaces", "active", &[]);
    assert!(row(&rows, "surfaces")["file"].as_str().unwrap().ends_with(SURFACES));
}

/// Guards the shared runtime library (`rt/src/lib.rs`): every bundled plugin
/// links std, tokio and serde from `libdispatch_rt.so` and the toolchain's
/// libstd instead of carrying its own copies, and the binary finds both
/// through its run path alone — no library path, as an operator starts it.
#[test]
fn bundled_plugins_link_the_shared_runtime_and_the_binary_needs_no_library_path() {
    for file in dispatch_test_support::BUNDLED_PLUGINS {
        let bytes = std::fs::read(lib(file)).unwrap();
        let needed = b"libdispatch_rt.so\0";
        assert!(bytes.windows(needed.len()).any(|w| w == needed), "{file} does not link libdispatch_rt.so");
    }
    let cfg = Config::new().plugin(SURFACES, "").plugin(EXTENSIONS, "").write();
    let mut cmd = std::process::Command::new(dispatch_bin());
    hermetic(&mut cmd)
        .env_remove("LD_LIBRARY_PATH")
        .args(["plugins", "--json", "--config", cfg.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = wait(cmd.spawn().unwrap(), Duration::from_secs(60), "dispatch plugins without LD_LIBRARY_PATH");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let rows: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_row(rows["plugins"].as_array().unwrap(), "standard-surfaces", "active", &[]);
}

#[test]
fn the_table_names_every_plugin_and_every_problem() {
    let cfg = Config::new().plugin(SURFACES, "").optional("libmissing.so", "").write();
    let out = run(&["plugins", "--config", cfg.to_str().unwrap()], &[], Duration::from_secs(60));
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let header = out.stdout.lines().next().unwrap();
    for col in ["ORDER", "ID", "VERSION", "STATE", "FILE"] {
        assert!(header.contains(col), "{header}");
    }
    assert!(out.stdout.lines().any(|l| l.contains("surfaces") && l.contains("active")), "{}", out.stdout);
    assert!(out.stdout.contains("failed missing ("), "{}", out.stdout);
    assert!(out.stdout.contains("libmissing.so): file not found"), "{}", out.stdout);
}

#[test]
fn missing_files_are_all_reported_and_the_rest_still_runs() {
    let cfg = Config::new()
        .optional("libmissing_one.so", "")
        .plugin(SURFACES, "")
        .optional("libmissing_two.so", "")
        .write();
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 0, "optional failures do not fail the run: {}", out.stderr);
    assert_row(&rows, "missing_one", "failed", &["file not found"]);
    assert_row(&rows, "missing_two", "failed", &["file not found"]);
    assert_row(&rows, "surfaces", "active", &[]);
    assert!(out.stderr.contains("libmissing_one.so"), "the log names the file: {}", out.stderr);
}

#[test]
fn a_required_plugin_that_fails_makes_the_run_fail() {
    let cfg = Config::new().plugin("libmissing.so", "").plugin(SURFACES, "").write();
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 1);
    assert_row(&rows, "surfaces", "active", &[]);
}

#[test]
fn a_file_that_is_not_a_dynamic_library_is_refused() {
    let c = Config::new().plugin(SURFACES, "");
    let junk = c.dir.path().join("libjunk.so");
    std::fs::write(&junk, "this is not an ELF file\n").unwrap();
    let cfg = c.optional(junk.to_str().unwrap(), "").write();
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_row(&rows, "junk", "failed", &["not a loadable dynamic library"]);
    assert_eq!(row(&rows, "junk")["file"], junk.to_str().unwrap());
    assert_row(&rows, "surfaces", "active", &[]);
}

#[test]
fn a_library_without_the_root_module_is_refused() {
    let cfg = Config::new().optional("libfx_noroot.so", "").plugin(SURFACES, "").write();
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_row(&rows, "fx_noroot", "failed", &["not a Dispatch plugin", "no root module"]);
}

#[test]
fn activate_returning_an_error_fails_the_plugin_and_skips_its_dependents() {
    let cfg = Config::new().plugin(ALPHA, "fail = \"error\"").optional(BETA, "").plugin(SURFACES, "").write();
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 1, "fx-alpha is required");
    assert_row(&rows, "fx-alpha", "failed", &["activate failed", "fixture refuses to activate"]);
    assert_row(&rows, "fx-beta", "skipped", &["dependency `fx-alpha` is failed"]);
    assert_row(&rows, "surfaces", "active", &[]);
    assert!(
        out.stderr.contains("fixture refuses to activate") && out.stderr.contains("libfx_alpha.so"),
        "{}",
        out.stderr
    );
}

#[test]
fn activate_panicking_is_contained() {
    let cfg = Config::new().optional(ALPHA, "fail = \"panic\"").plugin(SURFACES, "").write();
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_row(&rows, "fx-alpha", "failed", &["panicked", "fixture activate panics on purpose"]);
    assert_row(&rows, "surfaces", "active", &[]);
}

#[test]
fn a_failed_activation_leaves_nothing_registered() {
    // fx-alpha registers its services and then fails: none may remain.
    let cfg = Config::new()
        .optional(ALPHA, "fail = \"error\"\nprovide = \"fx.shared\"")
        .plugin(SURFACES, "")
        .write();
    let (out, lines) = call(&cfg, &[("fx.shared", "{}"), ("fx-alpha.panic", "{}")], &[]);
    assert_eq!(out.code(), 1);
    assert_eq!(lines[0]["code"], "not_found", "{:?}", lines);
    assert_eq!(lines[1]["code"], "not_found", "{:?}", lines);
}

#[test]
fn a_slow_activate_hits_the_deadline() {
    let cfg = Config::new()
        .host_line("activate_timeout_ms = 300")
        .optional(ALPHA, "activate_sleep_ms = 5000")
        .plugin(SURFACES, "")
        .write();
    let started = std::time::Instant::now();
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_row(&rows, "fx-alpha", "failed", &["did not finish within 300 ms"]);
    assert!(started.elapsed() < Duration::from_secs(5), "the host waited for the slow plugin");
}

#[test]
fn a_duplicate_plugin_id_is_refused_naming_both_files() {
    let c = Config::new().plugin(ALPHA, "");
    let copy = c.dir.path().join("libfx_alpha_copy.so");
    std::fs::copy(lib(ALPHA), &copy).unwrap();
    let cfg = c.optional(copy.to_str().unwrap(), "").write();
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let alpha: Vec<_> = rows.iter().filter(|r| r["id"] == "fx-alpha").collect();
    assert_eq!(alpha.len(), 2);
    assert_eq!(alpha[0]["state"], "active");
    assert_eq!(alpha[1]["state"], "failed");
    let err = alpha[1]["error"].as_str().unwrap();
    assert!(err.contains("duplicate plugin id `fx-alpha`") && err.contains("libfx_alpha.so"), "{err}");
    assert!(alpha[1]["file"].as_str().unwrap().ends_with("libfx_alpha_copy.so"));
}

#[test]
fn an_unknown_dependency_is_reported() {
    let cfg = Config::new().optional(BETA, "").plugin(SURFACES, "").write();
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_row(&rows, "fx-beta", "failed", &["depends on `fx-alpha`, which is not listed"]);
}

#[test]
fn a_dependency_cycle_is_reported_as_the_whole_chain() {
    let cfg = Config::new()
        .optional("libfx_cycle_a.so", "")
        .optional("libfx_cycle_b.so", "")
        .plugin(SURFACES, "")
        .write();
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    for id in ["fx-cycle-a", "fx-cycle-b"] {
        assert_row(&rows, id, "failed", &["dependency cycle: fx-cycle-a -> fx-cycle-b -> fx-cycle-a"]);
    }
    assert_row(&rows, "surfaces", "active", &[]);
}

#[test]
fn a_service_provided_twice_fails_the_second_provider() {
    let cfg = Config::new()
        .plugin(ALPHA, "provide = \"fx.shared\"")
        .optional(BETA, "provide = \"fx.shared\"")
        .write();
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_row(&rows, "fx-alpha", "active", &[]);
    assert_row(
        &rows,
        "fx-beta",
        "failed",
        &["service `fx.shared` is already provided by plugin `fx-alpha`; plugin `fx-beta` cannot provide it too"],
    );
    let (_, lines) = call(&cfg, &[("fx.shared", "{}")], &[]);
    assert_eq!(lines[0]["from"], "fx-alpha");
}

#[test]
fn a_service_asked_for_with_the_wrong_schema_version_is_refused_at_bind_time() {
    let cfg = Config::new()
        .plugin(ALPHA, "provide = \"fx.shared\"\nprovide_version = 2")
        .optional(BETA, "require = { service = \"fx.shared\", version = 1 }")
        .write();
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_row(
        &rows,
        "fx-beta",
        "failed",
        &["service `fx.shared` is at schema version 2 (declared by plugin `fx-alpha`), but version 1 was asked for"],
    );
    // And a call at the wrong version gets the same clear error.
    let (_, lines) = call(&cfg, &[("fx.shared@1", "{}"), ("fx.shared@2", "{}")], &[]);
    assert_eq!(lines[0]["code"], "version_mismatch");
    assert!(lines[0]["error"].as_str().unwrap().contains("schema version 2"), "{lines:?}");
    assert_eq!(lines[1]["from"], "fx-alpha");
}

#[test]
fn a_pinned_sha256_refuses_a_swapped_file() {
    let wrong = "0".repeat(64);
    let good = sha256(&lib(SURFACES));
    let cfg = Config::new()
        .raw(&format!("\n[[plugin]]\npath = {SURFACES:?}\nsha256 = {good:?}\n"))
        .raw(&format!("\n[[plugin]]\npath = {ALPHA:?}\nrequired = false\nsha256 = {wrong:?}\n"))
        .write();
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_row(&rows, "surfaces", "active", &[]);
    assert_row(&rows, "fx_alpha", "failed", &["sha256 mismatch", "refusing a swapped binary"]);
}

#[test]
fn a_malformed_config_is_refused_before_anything_loads() {
    let path = Config::new().plugin(SURFACES, "").write();
    let text = std::fs::read_to_string(&*path).unwrap().replace("required = true", "requird = true");
    std::fs::write(&*path, text).unwrap();
    let out = run(&["plugins", "--config", path.to_str().unwrap()], &[], Duration::from_secs(30));
    assert_eq!(out.code(), 2);
    assert!(
        out.stderr.contains("not a valid plugins.toml") && out.stderr.contains("requird"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("plugin active"), "nothing may be activated: {}", out.stderr);
}

/// The file is swapped after the configuration was read and before the
/// library is loaded. The host used to hash the path when it read the
/// configuration and `dlopen` the path again later, so a swap in between
/// loaded an unpinned library; now the hashed bytes are the loaded bytes.
#[test]
fn a_file_swapped_after_the_configuration_was_read_is_refused_by_its_pin() {
    use dispatch_host::config::Plan;
    use dispatch_host::supervisor::{Settings, Supervisor};

    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("libpinned.so");
    std::os::unix::fs::symlink(lib(SURFACES), &link).unwrap();
    let cfg = dir.path().join("plugins.toml");
    let text =
        format!("[[plugin]]\npath = {:?}\nrequired = false\nsha256 = {:?}\n", link, sha256(&lib(SURFACES)));
    let plan = Plan::compile(&cfg, &text).unwrap();
    assert_eq!(plan.plugins[0].problem, None);

    // The swap: the pinned name now leads to another plugin.
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(lib(ALPHA), &link).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let reports = rt.block_on(async {
        let settings = Settings {
            activate_timeout: Duration::from_secs(10),
            deactivate_timeout: Duration::from_secs(10),
            log_filter: "warn".into(),
            leave_out: None,
            stop: None,
        };
        let sup = Supervisor::start(plan, settings).await;
        let reports = sup.reports_snapshot();
        sup.shutdown().await;
        reports
    });
    assert_eq!(reports.len(), 1);
    let error = reports[0].error.as_deref().unwrap_or_default();
    assert!(error.contains("sha256 mismatch"), "the swapped library was loaded: {:?}", reports[0]);
    assert_ne!(reports[0].id, "fx-alpha");
}

/// `--config /dev/zero` used to be read until memory ran out, and a FIFO
/// blocked start-up forever; a configuration must be a regular file.
#[test]
fn a_config_that_is_not_a_regular_file_is_refused_at_once() {
    let out = run(&["plugins", "--config", "/dev/zero"], &[], Duration::from_secs(30));
    assert_eq!(out.code(), 2, "{}", out.stderr);
    // Said once: the reason used to be printed again as the error's cause.
    assert_eq!(out.stderr.trim_end(), "dispatch: cannot read /dev/zero: not a regular file");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("plugins.toml");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let out = run(&["plugins", "--config", fifo.to_str().unwrap()], &[], Duration::from_secs(30));
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(out.stderr.contains("not a regular file"), "{}", out.stderr);
}

/// `readers = 4294967295` and `worker_threads = 20000` used to abort the
/// whole host; they are configuration errors of their plugin.
#[test]
fn absurd_counts_in_a_plugins_config_fail_that_plugin_only() {
    let cfg = Config::new()
        .plugin(SURFACES, "")
        .optional("libdispatch_plugin_store_sqlite.so", "readers = 4294967295")
        .optional("libdispatch_plugin_models.so", "")
        .optional("libdispatch_plugin_provider_openai.so", "worker_threads = 20000")
        .write();
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_row(&rows, "surfaces", "active", &[]);
    assert_row(&rows, "store-sqlite", "failed", &["`readers` = 4294967295 is out of range"]);
    assert_row(&rows, "provider-openai", "failed", &["cannot have 20000 worker threads"]);
}

/// A `plugins.d` beside the configuration, holding copies of `files`.
fn drop_in(cfg: &std::path::Path, files: &[(&str, &str)]) -> std::path::PathBuf {
    let dir = cfg.parent().unwrap().join("plugins.d");
    std::fs::create_dir_all(&dir).unwrap();
    for (from, to) in files {
        std::fs::copy(lib(from), dir.join(to)).unwrap();
    }
    dir
}

#[test]
fn every_library_in_the_drop_in_directory_is_loaded_and_a_garbage_file_is_only_reported() {
    let cfg = Config::new().plugin(SURFACES, "").write();
    let dir = drop_in(&cfg, &[(ALPHA, "libfx_alpha.so")]);
    std::fs::write(dir.join("libgarbage.so"), b"not a library").unwrap();
    std::fs::write(dir.join("README.txt"), b"not even a .so").unwrap();
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 0, "a broken drop-in is not required: {}", out.stderr);
    assert_row(&rows, "fx-alpha", "active", &[]);
    assert!(row(&rows, "fx-alpha")["file"].as_str().unwrap().ends_with("plugins.d/libfx_alpha.so"));
    assert_row(&rows, "garbage", "failed", &["not a loadable dynamic library"]);
    assert_eq!(rows.len(), 3, "{rows:?}");
}

#[test]
fn an_id_entry_configures_a_drop_in_plugin_and_may_require_or_pin_it() {
    // Its config reaches it: this one makes it refuse to activate.
    let cfg = Config::new()
        .plugin(SURFACES, "")
        .raw("\n[[plugin]]\nid = \"fx-alpha\"\nrequired = false\n[plugin.config]\nfail = \"error\"\n")
        .write();
    drop_in(&cfg, &[(ALPHA, "libfx_alpha.so")]);
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_row(&rows, "fx-alpha", "failed", &["fixture refuses to activate"]);

    // Required: the same failure fails the run.
    let cfg =
        Config::new().raw("\n[[plugin]]\nid = \"fx-alpha\"\n[plugin.config]\nfail = \"error\"\n").write();
    drop_in(&cfg, &[(ALPHA, "libfx_alpha.so")]);
    assert_eq!(plugins_json(&cfg, &[]).0.code(), 1);

    // A matching pin: loaded from a sealed copy of exactly those bytes.
    let good = sha256(&lib(ALPHA));
    let cfg = Config::new().raw(&format!("\n[[plugin]]\nid = \"fx-alpha\"\nsha256 = {good:?}\n")).write();
    drop_in(&cfg, &[(ALPHA, "libfx_alpha.so")]);
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_row(&rows, "fx-alpha", "active", &[]);

    // A pin that does not match is refused.
    let wrong = "0".repeat(64);
    let cfg = Config::new().raw(&format!("\n[[plugin]]\nid = \"fx-alpha\"\nsha256 = {wrong:?}\n")).write();
    drop_in(&cfg, &[(ALPHA, "libfx_alpha.so")]);
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 1);
    assert_row(&rows, "fx-alpha", "failed", &["sha256 mismatch"]);
}

#[test]
fn an_id_no_file_provides_is_an_error_naming_the_directories_searched() {
    let cfg = Config::new().plugin(SURFACES, "").raw("\n[[plugin]]\nid = \"fx-nowhere\"\n").write();
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 1, "{}", out.stderr);
    let drop_dir = cfg.parent().unwrap().join("plugins.d");
    assert_row(
        &rows,
        "fx-nowhere",
        "failed",
        &["no plugin file provides id `fx-nowhere`", drop_dir.to_str().unwrap()],
    );
    assert_row(&rows, "surfaces", "active", &[]);
}

#[test]
fn two_files_with_one_id_are_refused_naming_both() {
    let cfg = Config::new().plugin(SURFACES, "").write();
    let dir = drop_in(&cfg, &[(ALPHA, "libfx_alpha.so"), (ALPHA, "libfx_alpha_copy.so")]);
    let (_, rows) = plugins_json(&cfg, &[]);
    let alphas: Vec<&serde_json::Value> = rows.iter().filter(|r| r["id"] == "fx-alpha").collect();
    assert_eq!(alphas.len(), 2, "{rows:?}");
    let refused = alphas.iter().find(|r| r["state"] == "failed").expect("one of them refused");
    let error = refused["error"].as_str().unwrap();
    assert!(error.contains("duplicate plugin id `fx-alpha`"), "{error}");
    assert!(error.contains(dir.join("libfx_alpha.so").to_str().unwrap()), "{error}");
    assert!(refused["file"].as_str().unwrap().ends_with("libfx_alpha_copy.so"));

    // `path` and `id` together is a configuration error.
    let both = Config::new().raw("\n[[plugin]]\npath = \"x.so\"\nid = \"x\"\n").write();
    let out = run(&["plugins", "--config", both.to_str().unwrap()], &[], Duration::from_secs(60));
    assert_eq!(out.code(), 2);
    assert!(out.stderr.contains("exactly one of `path`"), "{}", out.stderr);
}
