//! Which environment variables are credentials.
//!
//! Whatever a model can make a process print reaches the model: a shell
//! command's output, an MCP server's answers, `/proc/<pid>/environ` of
//! any process of the same user. Everything that hands an environment on
//! — the shell tool, the host itself at start — asks the same question.

/// What a process started on the model's behalf (a shell command, an MCP
/// server, git) keeps of the host's environment: the host's values of
/// these, where set. Everything else — provider credentials above all —
/// is left out.
pub const BASE_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TMPDIR",
    "TZ",
];

/// The host's values of [`BASE_ENV`] that are set: what a process started
/// on the model's behalf gets after `env_clear` (`cmd.envs(base_env())`).
pub fn base_env() -> impl Iterator<Item = (&'static str, std::ffi::OsString)> {
    BASE_ENV.iter().filter_map(|&name| std::env::var_os(name).map(|v| (name, v)))
}

/// Whether a variable name looks like a credential (`DISPATCH_API_KEY`,
/// `*_API_KEY`, `*TOKEN*`, `*SECRET*`, `*PASSWORD*`, `*CREDENTIAL*`),
/// case-insensitively.
///
/// ```
/// use dispatch_protocol::secrets::looks_like_a_secret;
/// assert!(looks_like_a_secret("OPENROUTER_API_KEY"));
/// assert!(looks_like_a_secret("dispatch_token"));
/// assert!(!looks_like_a_secret("PATH"));
/// ```
pub fn looks_like_a_secret(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    ["API_KEY", "APIKEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL"].iter().any(|w| n.contains(w))
}
