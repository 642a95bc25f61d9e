//! The error type of the safe API, and the stable codes it carries.

use crate::ffi::AbiError;
use abi_stable::std_types::RString;

/// Stable error codes. Callers match on these, never on messages.
pub mod codes {
    /// No provider, subscriber or hook of that name.
    pub const NOT_FOUND: &str = "not_found";
    /// The name exists with another schema version.
    pub const VERSION_MISMATCH: &str = "version_mismatch";
    /// A second provider for a service that already has one.
    pub const DUPLICATE: &str = "duplicate";
    /// A payload that is not the JSON the receiver expects.
    pub const INVALID_PAYLOAD: &str = "invalid_payload";
    /// The plugin's config table is not what it expects.
    pub const INVALID_CONFIG: &str = "invalid_config";
    /// Code panicked; the panic was contained.
    pub const PANIC: &str = "panic";
    /// The host is shutting down or the callee went away.
    pub const UNAVAILABLE: &str = "unavailable";
    /// The request is well-formed but this provider does not support it.
    pub const UNSUPPORTED: &str = "unsupported";
    /// The request conflicts with one in progress (a second reader of a
    /// stream that is already being read).
    pub const CONFLICT: &str = "conflict";
    /// The caller may not do that (it does not own the thing it names).
    pub const FORBIDDEN: &str = "forbidden";
    /// Anything else a plugin reports.
    pub const PLUGIN: &str = "plugin";
}

/// An error from the bus or from another plugin: a stable [`codes`] value
/// plus a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    code: String,
    message: String,
}

impl Error {
    /// An error with an explicit code (prefer the constants in [`codes`]).
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code: code.into(), message: message.into() }
    }

    /// A plugin error (code [`codes::PLUGIN`]).
    pub fn msg(message: impl Into<String>) -> Self {
        Self::new(codes::PLUGIN, message)
    }

    /// The stable code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn from_panic(payload: Box<dyn std::any::Any + Send>) -> Self {
        Self::new(codes::PANIC, format!("panicked: {}", panic_message(&*payload)))
    }
}

/// Best-effort text of a panic payload (`&str` and `String` payloads).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_owned()
    }
}

impl From<AbiError> for Error {
    fn from(e: AbiError) -> Self {
        Self { code: e.code.into_string(), message: e.message.into_string() }
    }
}

impl From<Error> for AbiError {
    fn from(e: Error) -> Self {
        AbiError { code: RString::from(e.code), message: RString::from(e.message) }
    }
}

impl AbiError {
    /// Convenience constructor.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        AbiError { code: RString::from(code), message: RString::from(message.into()) }
    }
}

impl std::fmt::Display for AbiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for AbiError {}

/// Serialize an answer for the bus, as an [`Error`] when it cannot be (a
/// service whose ops answer different types returns `serde_json::Value`).
pub fn to_json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, Error> {
    serde_json::to_value(value)
        .map_err(|e| Error::new(codes::INVALID_PAYLOAD, format!("cannot encode the answer: {e}")))
}
