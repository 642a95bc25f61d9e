//! Plugins built outside the host's build: the third-party examples added
//! to a fresh plugin directory without rebuilding the host (a service
//! plugin, and a tool the scripted model calls in a turn), and a plugin
//! built against a changed copy of the interface, which must be refused.
//!
//! These tests run cargo. They share `target/external` so dependencies
//! compile once; a lock serialises them because both produce
//! `libhello_plugin.so` there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::support::*;

static EXTERNAL_BUILD: Mutex<()> = Mutex::new(());

/// Build the crate at `manifest` in `target/external` and copy its
/// `libhello_plugin.so` to `dest`.
fn build_hello(manifest: &Path, dest: &Path) {
    build_external(manifest, "libhello_plugin.so", dest);
}

/// Build the crate at `manifest` in `target/external` and copy the
/// library `file` it produces to `dest`.
pub fn build_external(manifest: &Path, file: &str, dest: &Path) {
    let _guard = EXTERNAL_BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let target = profile_dir().parent().unwrap().join("external");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "--manifest-path"])
        .arg(manifest)
        .env("CARGO_TARGET_DIR", &target)
        // As an author outside this repository builds it: without the
        // workspace's flags, so std, tokio and serde are linked into the
        // plugin, not shared with the host (rt/src/lib.rs).
        .env("CARGO_ENCODED_RUSTFLAGS", "")
        .status()
        .unwrap();
    assert!(status.success(), "building {} failed", manifest.display());
    std::fs::copy(target.join("debug").join(file), dest).unwrap();
}

#[test]
fn a_third_party_tool_is_offered_to_the_model_without_recompiling_the_host() {
    let host_hash = sha256(&dispatch_bin());
    let plugin_dir = tempfile::tempdir().unwrap();
    let so = plugin_dir.path().join("libword_count.so");
    build_external(&repo_root().join("examples/word-count/Cargo.toml"), "libword_count.so", &so);

    let cfg = Config::new()
        .plugin("libdispatch_plugin_models.so", "")
        .plugin("libdispatch_plugin_provider_scripted.so", "")
        .plugin(so.to_str().unwrap(), "");
    let script = cfg.dir.path().join("script.json");
    std::fs::write(
        &script,
        serde_json::json!({"replies": [{"steps": [
            {"toolCalls": [{"name": "word_count", "input": {"text": "to be or not to be"}}]},
            {"text": "six words"}
        ]}]})
        .to_string(),
    )
    .unwrap();
    let cfg = cfg.write();
    let (out, events) =
        crate::providers::turn(&cfg, &["count them"], &[("DISPATCH_SCRIPT", script.to_str().unwrap())]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let result = events.iter().find(|e| e["type"] == "tool-result").unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(result["toolName"], "word_count");
    assert_eq!(result["content"], "6 words, 1 lines, 18 characters");
    assert!(!result["isError"].as_bool().unwrap_or(false));
    assert_eq!(events.last().unwrap()["type"], "turn-sealed", "{events:?}");
    assert_eq!(sha256(&dispatch_bin()), host_hash, "the host binary must not change");
}

#[test]
fn the_example_plugin_is_added_without_recompiling_the_host() {
    let host_hash = sha256(&dispatch_bin());

    // A fresh plugin directory with just the example, built on its own.
    let plugin_dir = tempfile::tempdir().unwrap();
    let so = plugin_dir.path().join("libhello_plugin.so");
    build_hello(&repo_root().join("examples/hello-plugin/Cargo.toml"), &so);

    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("plugins.toml");
    std::fs::write(
        &cfg,
        format!(
            "[host]\nplugin_dir = {:?}\n\n[[plugin]]\npath = \"libhello_plugin.so\"\n[plugin.config]\ngreeting = \"Howdy\"\n",
            plugin_dir.path().display().to_string()
        ),
    )
    .unwrap();

    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_row(&rows, "hello", "active", &[]);
    assert_eq!(row(&rows, "hello")["file"], so.to_str().unwrap());

    let (out, lines) =
        call(&cfg, &[("hello.greet", r#"{"name":"operator"}"#), ("hello.greet", r#"{"name":" "}"#)], &[]);
    assert_eq!(lines[0]["text"], "Howdy, operator!", "{}", out.stderr);
    assert_eq!(lines[1]["code"], "invalid_payload");

    assert_eq!(sha256(&dispatch_bin()), host_hash, "the host binary must not change");
}

/// Copy `abi/` into `dir`, optionally editing the copy's `ffi.rs`, and
/// write next to it the smallest plugin (`hello`, depending on that copy
/// alone). Answers the plugin's manifest path.
fn interface_copy(dir: &Path, edit: Option<(&str, &str)>) -> PathBuf {
    let root = repo_root();
    let abi = dir.join("dispatch-abi");
    copy_tree(&root.join("abi"), &abi);
    if let Some((from, to)) = edit {
        let ffi = abi.join("src/ffi.rs");
        let text = std::fs::read_to_string(&ffi).unwrap();
        assert!(text.contains(from), "the interface no longer has {from:?}; update this test");
        std::fs::write(&ffi, text.replacen(from, to, 1)).unwrap();
    }
    let plugin = dir.join("hello-plugin");
    std::fs::create_dir_all(plugin.join("src")).unwrap();
    std::fs::write(
        plugin.join("Cargo.toml"),
        "[package]\nname = \"hello-plugin\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\ndispatch-abi = { path = \"../dispatch-abi\" }\n\n\
         [workspace]\n",
    )
    .unwrap();
    std::fs::write(
        plugin.join("src/lib.rs"),
        "use dispatch_abi::{Context, Error, Plugin, PluginManifest};\n\
         pub struct Hello;\n\
         impl Plugin for Hello {\n\
             fn manifest() -> PluginManifest { PluginManifest::new(\"hello\", \"0.1.0\") }\n\
             fn activate(_ctx: Context) -> Result<Self, Error> { Ok(Hello) }\n\
         }\n\
         dispatch_abi::export_plugin!(Hello);\n",
    )
    .unwrap();
    // Pin the dependencies to the ones this repository builds with.
    std::fs::copy(root.join("examples/hello-plugin/Cargo.lock"), plugin.join("Cargo.lock")).unwrap();
    plugin.join("Cargo.toml")
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "target" {
            continue;
        }
        let dest = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

#[test]
fn a_plugin_built_against_a_changed_interface_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let plugins = tempfile::tempdir().unwrap();

    // Control: an unchanged copy of the interface loads fine, so what the
    // host refuses below is the change, not the copying.
    let same = work.path().join("same");
    build_hello(&interface_copy(&same, None), &plugins.path().join("libhello_same.so"));
    // The change: two fields of the manifest struct swapped, ABI version
    // left as it was — what an unreviewed interface edit looks like. It
    // compiles, and without the layout check the host would misread every
    // manifest.
    let version = "    /// The plugin's own version (semver by convention).\n    pub version: RString,\n";
    let abi_version =
        "    /// The [`ABI_VERSION`] the plugin was built against.\n    pub abi_version: u32,\n";
    let changed = work.path().join("changed");
    build_hello(
        &interface_copy(
            &changed,
            Some((&format!("{version}{abi_version}"), &format!("{abi_version}{version}"))),
        ),
        &plugins.path().join("libhello_changed.so"),
    );

    for (file, expect_active) in [("libhello_same.so", true), ("libhello_changed.so", false)] {
        let cfg = plugins.path().join(format!("{file}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[host]\nplugin_dir = {:?}\n[[plugin]]\npath = {file:?}\nrequired = false\n[[plugin]]\npath = {:?}\n",
                plugins.path().display().to_string(),
                lib("libdispatch_plugin_surfaces.so").display().to_string()
            ),
        )
        .unwrap();
        let (out, rows) = plugins_json(&cfg, &[]);
        assert_eq!(out.code(), 0, "{}", out.stderr);
        assert_row(&rows, "surfaces", "active", &[]);
        if expect_active {
            assert_row(&rows, "hello", "active", &[]);
        } else {
            assert_row(
                &rows,
                "hello_changed",
                "failed",
                &[
                    "incompatible binary interface",
                    "plugin ABI 1",
                    "this host speaks ABI 1",
                    "rebuild it against dispatch-abi",
                ],
            );
            assert!(out.stderr.contains("libhello_changed.so"), "{}", out.stderr);
        }
    }
}

/// `dispatch plugins new` for each kind: the crate builds on its own, its
/// generated test passes, and the host loads the `.so` and reaches it on
/// the bus.
#[test]
fn a_scaffolded_plugin_of_each_kind_builds_passes_its_test_and_is_loaded_by_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let target = profile_dir().parent().unwrap().join("external");
    for (kind, name, call, answer) in [
        ("tool", "scaffold-tool", ("tool.scaffold_tool", r#"{"op":"spec"}"#), r#""name":"scaffold_tool""#),
        (
            "service",
            "scaffold-service",
            ("scaffold_service.greet", r#"{"name":"operator"}"#),
            "Hello, operator!",
        ),
        ("provider", "scaffold-provider", ("models", r#"{"op":"list"}"#), "scaffold_provider/echo"),
    ] {
        let crate_dir = dir.path().join(name);
        let made = run(
            &["plugins", "new", name, "--kind", kind, "--dir", crate_dir.to_str().unwrap()],
            &[],
            std::time::Duration::from_secs(30),
        );
        assert_eq!(made.code(), 0, "{}", made.stderr);
        let manifest = crate_dir.join("Cargo.toml");
        let lib = format!("lib{}.so", name.replace('-', "_"));
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        build_external(&manifest, &lib, &plugins.join(&lib));
        {
            let _guard = EXTERNAL_BUILD.lock().unwrap_or_else(|e| e.into_inner());
            let test = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["test", "--quiet", "--manifest-path"])
                .arg(&manifest)
                .env("CARGO_TARGET_DIR", &target)
                .output()
                .unwrap();
            assert!(test.status.success(), "{kind}: {}", String::from_utf8_lossy(&test.stderr));
        }
        let mut config = Config::new();
        if kind == "provider" {
            config = config.plugin("libdispatch_plugin_models.so", "");
        }
        let cfg = config.plugin(plugins.join(&lib).to_str().unwrap(), "").write();
        let out = run(
            &["call", "--config", cfg.to_str().unwrap(), call.0, call.1],
            &[],
            std::time::Duration::from_secs(60),
        );
        assert_eq!(out.code(), 0, "{kind}: {}", out.stderr);
        assert!(out.stdout.contains(answer), "{kind}: {}", out.stdout);
    }
}

/// Issue 39, first part: a plugin contributes an HTTP route. The example
/// plugin, built on its own, is dropped into a running server: after the
/// reload `GET /hello/{name}` answers — with the transport's rules applied
/// (405 for another method, the cross-site gate) — and after it is removed
/// the route is gone.
#[test]
fn a_plugins_http_route_appears_and_disappears_with_it() {
    use crate::http::{get, post, product_config, send, Server, LOOPBACK};
    let build = tempfile::tempdir().unwrap();
    let so = build.path().join("libhello_plugin.so");
    build_hello(&repo_root().join("examples/hello-plugin/Cargo.toml"), &so);
    let cfg = product_config(LOOPBACK);
    let drop_dir = cfg.parent().unwrap().join("plugins.d");
    std::fs::create_dir_all(&drop_dir).unwrap();
    let s = Server::start(&cfg);
    let url = |p: &str| format!("{}{p}", s.base);

    let before = get(&url("/hello/operator"));
    assert_eq!((before.status, before.body["code"].as_str()), (404, Some("not_found")), "{}", before.text);

    dispatch_test_support::bench::install(&so, &drop_dir.join("libhello_plugin.so"));
    let reload = post(&url("/admin/plugins/reload"), "");
    assert_eq!(reload.status, 200, "{}", reload.text);
    let hello = get(&url("/hello/operator"));
    assert_eq!(
        (hello.status, hello.body["text"].as_str()),
        (200, Some("Hello, operator!")),
        "{}",
        hello.text
    );
    let howdy = get(&url("/hello/J%C3%BCrgen?greeting=Howdy"));
    assert_eq!(howdy.body["text"], "Howdy, Jürgen!", "{}", howdy.text);
    let blank = get(&url("/hello/%20"));
    assert_eq!((blank.status, blank.body["code"].as_str()), (400, Some("invalid_input")), "{}", blank.text);
    let wrong = send("POST", &url("/hello/x"), Some("{}"), &[]);
    assert_eq!(wrong.status, 405, "{}", wrong.text);
    assert_eq!(wrong.headers["allow"], "GET, OPTIONS");
    let foreign = send("GET", &url("/hello/x"), None, &[("origin", "https://evil.example")]);
    assert_eq!(foreign.status, 403, "{}", foreign.text);
    // The server's API description has it, named after its plugin, with the
    // schema of what it answers.
    let doc = get(&url("/openapi.json")).body;
    let op = &doc["paths"]["/hello/{name}"]["get"];
    assert_eq!(op["x-dispatch-plugin"], "hello", "{op}");
    let answer = &op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"];
    assert_eq!(answer, "#/components/schemas/HelloAnswer");
    assert_eq!(doc["components"]["schemas"]["HelloAnswer"]["required"], serde_json::json!(["text"]));

    std::fs::remove_file(drop_dir.join("libhello_plugin.so")).unwrap();
    assert_eq!(post(&url("/admin/plugins/reload"), "").status, 200);
    let after = get(&url("/hello/operator"));
    assert_eq!(after.status, 404, "{}", after.text);
    assert!(get(&url("/openapi.json")).body["paths"]["/hello/{name}"].is_null());
}
