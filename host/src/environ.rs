//! Credentials out of `/proc/<pid>/environ`.
//!
//! The kernel keeps the environment block a process was started with in
//! the process's memory, and `/proc/<pid>/environ` shows that block — not
//! the environment as it is now — to every process of the same user: to a
//! shell command the model runs, for one, whose parent is the host.
//! Unsetting or replacing a variable changes only libc's array of
//! pointers, never those bytes. So at start the host moves each credential
//! to the heap (libc's `setenv` copies it, and `std::env::var`, which is how
//! plugins read their keys, answers from the copy) and blanks its value in
//! the original block.
//!
//! What this does not stop: a process allowed to read the host's memory
//! (`/proc/<pid>/mem`, a debugger; root, or the same user where ptrace is
//! unrestricted) can still find a key the host holds. Run the host as its
//! own user (the systemd unit does) and its commands cannot.

use std::ffi::{CStr, OsStr, OsString};
use std::os::unix::ffi::OsStrExt as _;

use dispatch_contracts::protocol::secrets::{looks_like_a_secret, placeholders};

extern "C" {
    /// libc's environment: a null-terminated array of `NAME=value` strings.
    /// `mut`: libc replaces the array when a variable is added.
    static mut environ: *const *const libc::c_char;
}

/// One credential's value in the original block.
struct Found {
    name: OsString,
    value: OsString,
    /// Where its value starts, and how long it is.
    value_at: *mut u8,
    value_len: usize,
}

/// Blank, in the block `/proc/self/environ` shows, the value of every
/// variable whose name [looks like a credential](looks_like_a_secret) or is
/// one of `named` (the variables the configuration names as credentials:
/// see [`configured_credentials`]), after moving the variable to the heap.
/// Answers the names blanked.
///
/// # Safety
///
/// Call it while the process has one thread and before anything has
/// kept a pointer from `getenv`: it changes the environment (as
/// `std::env::set_var` requires) and writes to the block libc's
/// `environ` pointed into when the process started.
pub unsafe fn hide_credentials(named: &[String]) -> Vec<String> {
    let Some((start, end)) = env_block() else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries() {
        let addr = entry as usize;
        if addr < start || addr >= end {
            continue; // set after exec: not in the block /proc shows
        }
        // SAFETY: a non-null entry of `environ` is a NUL-terminated string.
        let bytes = unsafe { CStr::from_ptr(entry) }.to_bytes();
        let Some(eq) = bytes.iter().position(|&b| b == b'=') else { continue };
        // Judged on the bytes: a name need not be UTF-8.
        let name = String::from_utf8_lossy(&bytes[..eq]);
        if !(looks_like_a_secret(&name) || named.iter().any(|n| *n == name)) || eq + 1 == bytes.len() {
            continue;
        }
        found.push(Found {
            name: OsStr::from_bytes(&bytes[..eq]).to_owned(),
            value: OsStr::from_bytes(&bytes[eq + 1..]).to_owned(),
            // SAFETY: `eq + 1 < bytes.len()`: within the string.
            value_at: unsafe { entry.add(eq + 1) }.cast_mut().cast::<u8>(),
            value_len: bytes.len() - eq - 1,
        });
    }
    // Each name once, with the value `getenv` answers: its first entry's.
    let mut names: Vec<(&OsString, &OsString)> = Vec::new();
    for f in &found {
        if !names.iter().any(|(n, _)| *n == &f.name) {
            names.push((&f.name, &f.value));
        }
    }
    for (name, value) in &names {
        // `unsetenv` drops every entry of the name (a name given twice has
        // two), then `setenv` adds one fresh heap copy.
        std::env::remove_var(name);
        std::env::set_var(name, value);
    }
    // Blank only what no `environ` entry points into any more.
    let live: Vec<usize> = entries().map(|e| e as usize).collect();
    let mut hidden = Vec::new();
    for f in &found {
        // Its original `NAME=` starts that far before the value.
        let entry = f.value_at as usize - f.name.len() - 1;
        if live.contains(&entry) {
            continue;
        }
        // SAFETY: the bytes are the value part of an environment string
        // in the process's own writable start-up block, which no
        // `environ` entry points into any more; single-threaded (above).
        unsafe { std::ptr::write_bytes(f.value_at, 0, f.value_len) };
        let name = f.name.to_string_lossy().into_owned();
        if !hidden.contains(&name) {
            hidden.push(name);
        }
    }
    hidden
}

/// The entries of `environ`, read as they are now.
fn entries() -> impl Iterator<Item = *const libc::c_char> {
    // SAFETY: `environ` is null or a null-terminated array; the callers are
    // single-threaded, so nothing changes it while it is walked.
    let mut p = unsafe { std::ptr::addr_of!(environ).read() };
    std::iter::from_fn(move || {
        if p.is_null() {
            return None;
        }
        // SAFETY: `p` is within the array, at or before its terminator.
        let entry = unsafe { *p };
        if entry.is_null() {
            return None;
        }
        // SAFETY: not the terminator yet, so the next slot exists.
        p = unsafe { p.add(1) };
        Some(entry)
    })
}

/// `[env_start, env_end)` of this process: fields 50 and 51 of
/// `/proc/self/stat` (proc(5)), counted after the parenthesised command
/// name, which may itself hold spaces.
fn env_block() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    let start = fields.get(50 - 3)?.parse().ok()?;
    let end = fields.get(51 - 3)?.parse().ok()?;
    (start < end).then_some((start, end))
}

/// Largest configuration file read for names (as `plugins.toml` itself).
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The environment variables a configuration names as credentials, read
/// before the host starts: the value of every `*_env` key (`api_key_env =
/// "DEEPSEEK_KEY"`) and every `${NAME}` in a string (MCP `env` and
/// `headers`), in `plugins.toml` and in the JSON files its `config_file`
/// keys name. A name that does not look like a secret (`DEEPSEEK_KEY`) is
/// a credential all the same when the configuration uses it as one.
///
/// Best effort and silent: a file that cannot be read is the host's to
/// report a moment later, with its full diagnostics.
pub fn configured_credentials(config: &std::path::Path) -> Vec<String> {
    let mut names = Vec::new();
    let Some(text) = read_small(config) else { return names };
    let Ok(doc) = text.parse::<toml::Table>() else { return names };
    let base = config.parent().unwrap_or(std::path::Path::new("."));
    let mut files = Vec::new();
    walk_toml(&toml::Value::Table(doc), None, &mut names, &mut files);
    if let Some(f) = std::env::var_os("DISPATCH_MCP_CONFIG") {
        files.push(std::path::PathBuf::from(f));
    }
    for file in files {
        // The MCP plugin resolves a relative path against the host's
        // working directory; read it there and beside plugins.toml.
        let candidates = if file.is_absolute() { vec![file] } else { vec![file.clone(), base.join(file)] };
        for path in candidates {
            if let Some(json) =
                read_small(&path).and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            {
                walk_json(&json, &mut names);
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

fn read_small(path: &std::path::Path) -> Option<String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    // Non-blocking: opening a FIFO for reading would wait for a writer.
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES).read_to_string(&mut text).ok()?;
    Some(text)
}

fn walk_toml(
    value: &toml::Value,
    key: Option<&str>,
    names: &mut Vec<String>,
    files: &mut Vec<std::path::PathBuf>,
) {
    match value {
        toml::Value::String(s) => {
            if key.is_some_and(|k| k.ends_with("_env")) && is_name(s) {
                names.push(s.clone());
            }
            if key == Some("config_file") {
                files.push(std::path::PathBuf::from(s));
            }
            names.extend(placeholders(s).map(str::to_owned));
        }
        toml::Value::Array(items) => items.iter().for_each(|v| walk_toml(v, key, names, files)),
        toml::Value::Table(t) => t.iter().for_each(|(k, v)| walk_toml(v, Some(k), names, files)),
        _ => {}
    }
}

fn walk_json(value: &serde_json::Value, names: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => names.extend(placeholders(s).map(str::to_owned)),
        serde_json::Value::Array(items) => items.iter().for_each(|v| walk_json(v, names)),
        serde_json::Value::Object(map) => map.values().for_each(|v| walk_json(v, names)),
        _ => {}
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_configuration_names_its_credentials() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("mcp.json"),
            r#"{"mcpServers": {"gh": {"command": "x", "env": {"T": "${GH_PAT}"}}}}"#,
        )
        .unwrap();
        let config = dir.path().join("plugins.toml");
        std::fs::write(
            &config,
            r#"
[[plugin]]
path = "libdispatch_plugin_provider_openai.so"
[[plugin.config.credentials]]
name = "deepseek"
api_key_env = "DEEPSEEK_KEY"
[[plugin]]
path = "libdispatch_plugin_mcp.so"
[plugin.config]
config_file = "mcp.json"
[plugin.config.servers.remote]
url = "https://example.com/mcp"
headers = { Authorization = "Bearer ${REMOTE_AUTH}", X = "$notone ${bad name}" }
"#,
        )
        .unwrap();
        assert_eq!(configured_credentials(&config), ["DEEPSEEK_KEY", "GH_PAT", "REMOTE_AUTH"]);
        assert!(configured_credentials(&dir.path().join("missing.toml")).is_empty());
    }
}
