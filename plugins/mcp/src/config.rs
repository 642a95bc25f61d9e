//! The plugin's configuration: MCP servers in `[plugin.config.servers]`
//! and/or a JSON file in Claude Desktop's `mcpServers` shape, compiled into
//! one list of [`Launch`]es with every error reported at once.
//!
//! Values in `env` and `headers` may name environment variables as
//! `${NAME}`: that is how secrets get in without being written into the
//! file. Values are never logged (only keys), and [`Launch`]'s `Debug`
//! hides them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dispatch_contracts::protocol::secrets::{looks_like_a_secret, placeholders, Redactor};
use serde::Deserialize;

/// `[plugin.config]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Servers by name.
    #[serde(default)]
    pub servers: BTreeMap<String, ServerConfig>,
    /// A JSON file with an `mcpServers` object (Claude Desktop's
    /// `claude_desktop_config.json`, Cursor's `mcp.json`, …). Relative to
    /// the host's working directory. Default: `$DISPATCH_MCP_CONFIG`.
    #[serde(default)]
    pub config_file: Option<PathBuf>,
    /// How long a server may take to start and initialise.
    #[serde(default = "default_start_timeout_ms")]
    pub start_timeout_ms: u64,
    /// How long a call may take before it ends with an error result
    /// (a server may override it).
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// Restarts in a row (without a healthy minute between them) before a
    /// server is marked failed.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// Worker threads of the plugin's runtime.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Read each turn's project servers (`<cwd>/.dispatch/mcp.json`, else
    /// `<cwd>/opencode.json`'s `mcp`), see [`crate::project`].
    #[serde(default = "default_project_servers")]
    pub project_servers: bool,
}

fn default_project_servers() -> bool {
    true
}

impl Default for Config {
    fn default() -> Self {
        Config {
            servers: BTreeMap::new(),
            config_file: None,
            start_timeout_ms: default_start_timeout_ms(),
            call_timeout_ms: default_call_timeout_ms(),
            max_restarts: default_max_restarts(),
            workers: default_workers(),
            project_servers: default_project_servers(),
        }
    }
}

fn default_start_timeout_ms() -> u64 {
    20_000
}
fn default_call_timeout_ms() -> u64 {
    120_000
}
fn default_max_restarts() -> u32 {
    5
}
fn default_workers() -> usize {
    1
}

/// One server in `[plugin.config.servers.<name>]`: `command` (stdio) or
/// `url` (streamable HTTP).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The program of a stdio server.
    #[serde(default)]
    pub command: Option<String>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables (`${NAME}` takes one from the host's).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Its working directory (default: the host's).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// The endpoint of a streamable-HTTP server.
    #[serde(default)]
    pub url: Option<String>,
    /// Headers sent with every request (`${NAME}` as in `env`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// This server's call timeout.
    #[serde(default)]
    pub call_timeout_ms: Option<u64>,
    /// Leave it out without deleting it.
    #[serde(default)]
    pub disabled: bool,
}

/// How to reach one server, with its secrets resolved.
#[derive(Clone, PartialEq, Eq)]
pub struct Launch {
    /// Its name.
    pub name: String,
    /// Where it is configured (`[plugin.config.servers]`, a file's path,
    /// a project's `.dispatch/mcp.json`): `configSource` in status.
    pub origin: String,
    /// The project directory whose turns use it; `None`: every turn.
    pub project: Option<PathBuf>,
    /// Stdio or HTTP.
    pub transport: Transport,
    /// Its call timeout.
    pub call_timeout: Duration,
    /// The configured secret values — each `${NAME}`'s value, every header
    /// value, each `env` value whose name looks like a credential — blotted
    /// out of everything the server's messages reach (status, tool
    /// errors, logs).
    pub secrets: Redactor,
}

/// The two transports. `Debug` shows variable names, never values.
#[derive(Clone, PartialEq, Eq)]
pub enum Transport {
    /// A child process speaking JSON-RPC on stdin/stdout.
    Stdio {
        /// The program.
        command: String,
        /// Its arguments.
        args: Vec<String>,
        /// Added to the host's environment.
        env: Vec<(String, String)>,
        /// Its working directory.
        cwd: Option<PathBuf>,
    },
    /// Streamable HTTP.
    Http {
        /// The endpoint.
        url: String,
        /// Sent with every request (checked, values marked sensitive).
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
    },
}

impl Transport {
    /// `stdio` or `http`.
    pub fn kind(&self) -> &'static str {
        match self {
            Transport::Stdio { .. } => "stdio",
            Transport::Http { .. } => "http",
        }
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Stdio { command, args, env, cwd } => f
                .debug_struct("Stdio")
                .field("command", command)
                .field("args", args)
                .field("env", &env.iter().map(|(k, _)| k).collect::<Vec<_>>())
                .field("cwd", cwd)
                .finish(),
            Transport::Http { url, headers } => f
                .debug_struct("Http")
                .field("url", url)
                .field("headers", &headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
                .finish(),
        }
    }
}

impl std::fmt::Debug for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch")
            .field("name", &self.name)
            .field("transport", &self.transport)
            .field("call_timeout", &self.call_timeout)
            .finish()
    }
}

/// A server entry of a JSON file: Claude Desktop's shape, plus the fields
/// other clients add (`type`, `url`, `headers`, `disabled`); anything else
/// is ignored so an existing file works unchanged.
#[derive(Debug, Deserialize)]
struct FileServer {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    cwd: Option<PathBuf>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    disabled: bool,
}

#[derive(Debug, Deserialize)]
struct File {
    #[serde(default, rename = "mcpServers")]
    mcp_servers: BTreeMap<String, FileServer>,
}

/// Compile the configuration: read the JSON file (if any), merge it with
/// the table (a name in both is an error), resolve `${NAME}`s through
/// `lookup`, and check every server — all problems in one error, one per
/// line.
pub fn compile(
    config: &Config,
    env_file: Option<PathBuf>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Launch>, String> {
    let mut errors = Vec::new();
    let mut entries: BTreeMap<String, (ServerConfig, String)> = BTreeMap::new();
    for (name, server) in &config.servers {
        entries.insert(name.clone(), (server.clone(), "[plugin.config.servers]".to_owned()));
    }
    if let Some(path) = config.config_file.clone().or(env_file) {
        match read_file(&path) {
            Ok(file) => {
                let origin = path.display().to_string();
                for (name, s) in file.mcp_servers {
                    if entries.contains_key(&name) {
                        errors.push(format!(
                            "server `{name}` is defined both in [plugin.config.servers] and in {origin}"
                        ));
                        continue;
                    }
                    match s.kind.as_deref() {
                        None | Some("stdio" | "http" | "streamable-http" | "streamableHttp") => {}
                        Some("sse") => {
                            errors.push(format!(
                                "server `{name}` ({origin}): the old HTTP+SSE transport is not supported; use its streamable-HTTP endpoint"
                            ));
                            continue;
                        }
                        Some(other) => {
                            errors.push(format!("server `{name}` ({origin}): unknown type `{other}`"));
                            continue;
                        }
                    }
                    let server = ServerConfig {
                        command: s.command,
                        args: s.args,
                        env: s.env,
                        cwd: s.cwd,
                        url: s.url,
                        headers: s.headers,
                        call_timeout_ms: None,
                        disabled: s.disabled,
                    };
                    entries.insert(name, (server, origin.clone()));
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if config.start_timeout_ms == 0 || config.call_timeout_ms == 0 {
        errors.push("start_timeout_ms and call_timeout_ms must be above 0".to_owned());
    }
    let mut launches = Vec::new();
    for (name, (server, origin)) in entries {
        if server.disabled {
            continue;
        }
        let mut problem = |what: String| errors.push(format!("server `{name}` ({origin}): {what}"));
        let mut secrets = Redactor::default();
        for v in server.env.values().chain(server.headers.values()) {
            for var in placeholders(v) {
                if let Some(value) = lookup(var) {
                    secrets.add(&value);
                }
            }
        }
        if name.is_empty() || name.chars().any(char::is_control) {
            problem("a server needs a printable name".to_owned());
            continue;
        }
        let mut resolve = |map: &BTreeMap<String, String>, what: &str| -> Vec<(String, String)> {
            map.iter()
                .map(|(k, v)| match expand(v, lookup) {
                    Ok(v) => (k.clone(), v),
                    Err(var) => {
                        problem(format!(
                            "{what} `{k}` names the environment variable `{var}`, which is not set"
                        ));
                        (k.clone(), String::new())
                    }
                })
                .collect()
        };
        let transport = match (&server.command, &server.url) {
            (Some(command), None) => {
                let env = resolve(&server.env, "env");
                if !server.headers.is_empty() {
                    problem("`headers` is for `url` servers".to_owned());
                }
                if command.trim().is_empty() {
                    problem("`command` is empty".to_owned());
                }
                Transport::Stdio {
                    command: command.clone(),
                    args: server.args.clone(),
                    env,
                    cwd: server.cwd.clone(),
                }
            }
            (None, Some(url)) => {
                let headers = resolve(&server.headers, "header");
                if !server.args.is_empty() || !server.env.is_empty() || server.cwd.is_some() {
                    problem("`args`, `env` and `cwd` are for `command` servers".to_owned());
                }
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    problem(format!("`url` must be http:// or https://, not `{url}`"));
                }
                let mut valid = Vec::with_capacity(headers.len());
                // A credential-carrying header's whole value (besides each
                // `${NAME}`'s value, added above); `Accept: application/json`
                // is not a secret to blot out of every message.
                for (k, v) in &headers {
                    let name = k.to_ascii_lowercase();
                    if looks_like_a_secret(&name) || name.contains("auth") || name.contains("key") {
                        secrets.add_header_value(v);
                    }
                }
                for (k, v) in &headers {
                    match (http::HeaderName::from_bytes(k.as_bytes()), http::HeaderValue::from_str(v)) {
                        (Err(_), _) => problem(format!("`{k}` is not a valid header name")),
                        (_, Err(_)) => {
                            problem(format!("the value of header `{k}` is not a valid header value"))
                        }
                        (Ok(name), Ok(mut value)) => {
                            value.set_sensitive(true);
                            valid.push((name, value));
                        }
                    }
                }
                Transport::Http { url: url.clone(), headers: valid }
            }
            (Some(_), Some(_)) => {
                problem("set `command` (a stdio server) or `url` (an HTTP server), not both".to_owned());
                continue;
            }
            (None, None) => {
                problem("set `command` (a stdio server) or `url` (an HTTP server)".to_owned());
                continue;
            }
        };
        let call_timeout_ms = server.call_timeout_ms.unwrap_or(config.call_timeout_ms);
        if call_timeout_ms == 0 {
            problem("call_timeout_ms must be above 0".to_owned());
        }
        if let Transport::Stdio { env, .. } = &transport {
            for (_, v) in env.iter().filter(|(k, _)| looks_like_a_secret(k)) {
                secrets.add(v);
            }
        }
        launches.push(Launch {
            name,
            origin: origin.clone(),
            project: None,
            transport,
            call_timeout: Duration::from_millis(call_timeout_ms),
            secrets,
        });
    }
    if errors.is_empty() {
        Ok(launches)
    } else {
        Err(errors.join("\n"))
    }
}

fn read_file(path: &Path) -> Result<File, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the MCP configuration file {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("the MCP configuration file {} is not valid: {e}", path.display()))
}

/// Replace each `${NAME}` in `value` with the variable's value; the name
/// of the first unset variable is the error. `$` alone stays as it is.
fn expand(value: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        out.push_str(&lookup(name).ok_or_else(|| name.to_owned())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cret".to_owned())
    }

    fn table(toml_text: &str) -> Config {
        let value: serde_json::Value = toml_to_json(toml_text);
        serde_json::from_value(value).unwrap()
    }

    fn toml_to_json(text: &str) -> serde_json::Value {
        // The host hands plugins their table as JSON; tests write JSON too.
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn variables_are_expanded_and_unset_ones_named() {
        assert_eq!(expand("Bearer ${TOKEN}", &env).unwrap(), "Bearer s3cret");
        assert_eq!(expand("a $b ${TOKEN}${TOKEN} c", &env).unwrap(), "a $b s3crets3cret c");
        assert_eq!(expand("${NOPE}", &env).unwrap_err(), "NOPE");
        assert_eq!(expand("unclosed ${TOKEN", &env).unwrap(), "unclosed ${TOKEN");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let config = table(
            r#"{"servers": {
                "both": {"command": "x", "url": "http://h"},
                "neither": {},
                "badurl": {"url": "ftp://h"},
                "secret": {"command": "x", "env": {"K": "${MISSING}"}},
                "ok": {"command": "x", "env": {"K": "${TOKEN}"}}
            }}"#,
        );
        let err = compile(&config, None, &env).unwrap_err();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 4, "{err}");
        assert!(err.contains("server `both`") && err.contains("not both"), "{err}");
        assert!(err.contains("server `neither`"), "{err}");
        assert!(err.contains("`url` must be http:// or https://"), "{err}");
        assert!(err.contains("`MISSING`, which is not set"), "{err}");
        assert!(!err.contains("s3cret"), "a secret leaked into an error: {err}");
    }

    #[test]
    fn a_claude_desktop_file_is_read_unchanged_and_merged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("claude_desktop_config.json");
        std::fs::write(
            &path,
            r#"{"globalShortcut": "x", "mcpServers": {
                "fs": {"command": "npx", "args": ["-y", "server-filesystem", "/tmp"], "env": {"T": "${TOKEN}"}, "autoApprove": []},
                "web": {"type": "http", "url": "https://mcp.example/mcp", "headers": {"Authorization": "Bearer ${TOKEN}"}},
                "off": {"command": "x", "disabled": true}
            }}"#,
        )
        .unwrap();
        let config = table(r#"{"servers": {"local": {"command": "./srv"}}}"#);
        let launches = compile(&config, Some(path.clone()), &env).unwrap();
        let names: Vec<&str> = launches.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["fs", "local", "web"]);
        assert_eq!(
            launches[0].transport,
            Transport::Stdio {
                command: "npx".into(),
                args: vec!["-y".into(), "server-filesystem".into(), "/tmp".into()],
                env: vec![("T".into(), "s3cret".into())],
                cwd: None,
            }
        );
        let Transport::Http { headers, .. } = &launches[2].transport else { panic!("not http") };
        let headers: Vec<(&str, &str)> =
            headers.iter().map(|(k, v)| (k.as_str(), v.to_str().unwrap())).collect();
        assert_eq!(headers, [("authorization", "Bearer s3cret")]);
        assert!(!format!("{launches:?}").contains("s3cret"), "Debug shows a secret");

        // A name in both places is an error, as is an unreadable file.
        let config = table(r#"{"servers": {"fs": {"command": "./srv"}}}"#);
        assert!(compile(&config, Some(path), &env).unwrap_err().contains("defined both"));
        let missing = dir.path().join("nope.json");
        assert!(compile(&Config::default(), Some(missing), &env).unwrap_err().contains("cannot read"));
    }

    #[test]
    fn unknown_keys_in_the_table_are_refused() {
        let value = toml_to_json(r#"{"servers": {"a": {"command": "x", "argz": []}}}"#);
        let err = serde_json::from_value::<Config>(value).unwrap_err().to_string();
        assert!(err.contains("argz"), "{err}");
    }
}
