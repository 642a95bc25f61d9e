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

/// The `NAME`s of the `${NAME}` references in a configuration value
/// (names of ASCII letters, digits and `_`): how configuration takes a
/// secret from the environment without writing it down. The MCP plugin
/// expands them; the host blanks them in its start-up environment.
///
/// ```
/// use dispatch_protocol::secrets::placeholders;
/// let names: Vec<&str> = placeholders("Bearer ${TOKEN} $x ${bad name} ${A_1}").collect();
/// assert_eq!(names, ["TOKEN", "A_1"]);
/// ```
pub fn placeholders(value: &str) -> impl Iterator<Item = &str> {
    value
        .split("${")
        .skip(1)
        .filter_map(|part| part.split_once('}').map(|(name, _)| name))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

/// Configured secret values, blotted out of any text that could echo them
/// (a server's stderr, an error a remote endpoint sent back, a log line).
///
/// Why by value and not by where they appear: a secret reaches the world
/// through messages written by someone else — an MCP server printing its
/// environment, an HTTP endpoint quoting the `Authorization` header it
/// refused — so no formatting rule on our side can keep it out; replacing
/// the bytes wherever they show up can.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Redactor {
    /// Longest first, so a value containing another is blotted whole.
    values: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} values)", self.values.len())
    }
}

impl Redactor {
    /// Values shorter than this are not secrets worth the name, and
    /// blotting them would garble ordinary text.
    pub const MIN_LEN: usize = 4;

    /// What a secret is replaced with.
    pub const MARK: &'static str = "[redacted]";

    /// Add a value (trimmed; ignored when shorter than [`Self::MIN_LEN`]).
    pub fn add(&mut self, value: &str) {
        let value = value.trim();
        if value.len() < Self::MIN_LEN || self.values.iter().any(|v| v == value) {
            return;
        }
        self.values.push(value.to_owned());
        self.values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }

    /// Add a header's value: the whole of it and, for `Scheme credentials`
    /// (`Bearer …`, `Basic …`), the credentials alone.
    pub fn add_header_value(&mut self, value: &str) {
        self.add(value);
        if let Some((_, credentials)) = value.trim().split_once(' ') {
            self.add(credentials);
        }
    }

    /// The values, longest first.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.values.iter().map(String::as_str)
    }

    /// Whether nothing is to be redacted.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `text` with every value replaced by [`Self::MARK`].
    ///
    /// ```
    /// use dispatch_protocol::secrets::Redactor;
    /// let mut r = Redactor::default();
    /// r.add_header_value("Bearer sk-live-123");
    /// assert_eq!(r.redact("401: bad header Bearer sk-live-123"), "401: bad header [redacted]");
    /// assert_eq!(r.redact("key sk-live-123 echoed"), "key [redacted] echoed");
    /// ```
    pub fn redact<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        if !self.values.iter().any(|v| text.contains(v.as_str())) {
            return std::borrow::Cow::Borrowed(text);
        }
        let mut out = text.to_owned();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), Self::MARK);
            }
        }
        std::borrow::Cow::Owned(out)
    }
}
