//! What this repository's tests share, as one crate instead of files
//! included by path: [`mock_openai`] (the local OpenAI-compatible server
//! the provider tests and benchmarks start on 127.0.0.1),
//! [`process_table`] (checks that killed commands left nothing behind),
//! [`http_client`] (a plain-HTTP client for driving `dispatch serve`) and
//! [`ws_client`] (a WebSocket client for the same), [`pg`] (the test
//! PostgreSQL server, a schema per test), and [`bench`] (what the
//! benchmarks share).

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod bench;
pub mod http_client;
pub mod pg;

/// The bundled plugins' library files, in `plugins.toml`'s order: what
/// the end-to-end tests and the benchmarks start as "the product".
pub const BUNDLED_PLUGINS: &[&str] = &[
    "libdispatch_plugin_surfaces.so",
    "libdispatch_plugin_standard_surfaces.so",
    "libdispatch_plugin_models.so",
    "libdispatch_plugin_provider_scripted.so",
    "libdispatch_plugin_provider_openai.so",
    "libdispatch_plugin_store_sqlite.so",
    "libdispatch_plugin_tool_read_file.so",
    "libdispatch_plugin_tool_write_file.so",
    "libdispatch_plugin_tool_edit_file.so",
    "libdispatch_plugin_tool_shell.so",
    "libdispatch_plugin_tool_todo.so",
    "libdispatch_plugin_message_queue.so",
    "libdispatch_plugin_system_prompt.so",
    "libdispatch_plugin_mcp.so",
    "libdispatch_plugin_skills.so",
    "libdispatch_plugin_lsp.so",
    "libdispatch_plugin_session.so",
    "libdispatch_plugin_compaction.so",
    "libdispatch_plugin_cache_warming.so",
    "libdispatch_plugin_vision.so",
    "libdispatch_plugin_workspaces.so",
    "libdispatch_plugin_heartbeat.so",
    "libdispatch_plugin_provider_concurrency.so",
    "libdispatch_plugin_traces.so",
    "libdispatch_plugin_metrics.so",
    "libdispatch_plugin_otel.so",
    "libdispatch_plugin_transport_http.so",
    "libdispatch_plugin_transport_ws.so",
];
pub mod mock_openai;
pub mod process_table;
pub mod ws_client;

/// The `[host]` table of a benchmark's `plugins.toml`: libraries from
/// `plugin_dir`, data in `./data`, and the extra keys of
/// `DISPATCH_BENCH_HOST` (`;`-separated, e.g. `runtime = "current-thread"`),
/// so a benchmark can compare host settings without a code change.
pub fn host_table(plugin_dir: &std::path::Path) -> String {
    let mut table =
        format!("[host]\nplugin_dir = {:?}\ndata_dir = \"data\"\n", plugin_dir.display().to_string());
    if let Ok(extra) = std::env::var("DISPATCH_BENCH_HOST") {
        for key in extra.split(';').map(str::trim).filter(|k| !k.is_empty()) {
            table.push_str(key);
            table.push('\n');
        }
    }
    table
}

/// A `plugins.toml` with every bundled plugin from `plugin_dir`, in
/// [`BUNDLED_PLUGINS`]' order, each with the `[plugin.config]` body
/// `configs` gives it (TOML lines), for the benchmarks.
pub fn bundled_config(plugin_dir: &std::path::Path, configs: &[(&str, String)]) -> String {
    let mut toml = host_table(plugin_dir);
    for p in BUNDLED_PLUGINS {
        toml.push_str(&format!("\n[[plugin]]\npath = {p:?}\n"));
        if let Some((_, config)) = configs.iter().find(|(name, _)| name == p) {
            toml.push_str(&format!("[plugin.config]\n{config}\n"));
        }
    }
    toml
}

/// Write `<dir>/plugins.toml` for a benchmark: every bundled plugin from
/// `plugin_dir`, the scripted model reading `script`, HTTP on `port` and the
/// WebSocket on `ws_port` (0: any) of 127.0.0.1, the session's working
/// directory `dir`, and `extra` `[plugin.config]` bodies for other plugins.
/// Answers the file's path.
pub fn scripted_config(
    plugin_dir: &std::path::Path,
    dir: &std::path::Path,
    script: &std::path::Path,
    (port, ws_port): (u16, u16),
    extra: &[(&str, String)],
) -> std::path::PathBuf {
    let mut configs = vec![
        ("libdispatch_plugin_provider_scripted.so", format!("script = {:?}", script.display().to_string())),
        ("libdispatch_plugin_transport_http.so", format!("addr = [\"127.0.0.1:{port}\"]")),
        ("libdispatch_plugin_transport_ws.so", format!("addr = [\"127.0.0.1:{ws_port}\"]")),
        ("libdispatch_plugin_session.so", format!("default_cwd = {:?}", dir.display().to_string())),
    ];
    for (plugin, config) in extra {
        configs.retain(|(p, _)| p != plugin);
        configs.push((plugin, config.clone()));
    }
    let path = dir.join("plugins.toml");
    std::fs::write(&path, bundled_config(plugin_dir, &configs)).unwrap();
    path
}
