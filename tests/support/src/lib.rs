//! What this repository's tests share, as one crate instead of files
//! included by path: [`mock_openai`] (the local OpenAI-compatible server
//! the provider tests and benchmarks start on 127.0.0.1) and
//! [`process_table`] (checks that killed commands left nothing behind), and
//! [`http_client`] (a plain-HTTP client for driving `dispatch serve`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod http_client;

/// The bundled plugins' library files, in `plugins.toml`'s order: what
/// the end-to-end tests and the benchmarks start as "the product".
pub const BUNDLED_PLUGINS: &[&str] = &[
    "libdispatch_plugin_surfaces.so",
    "libdispatch_plugin_extensions_surface.so",
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
    "libdispatch_plugin_session.so",
    "libdispatch_plugin_transport_http.so",
];
pub mod mock_openai;
pub mod process_table;
