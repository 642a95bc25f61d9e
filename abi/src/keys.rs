//! Typed keys for the bus.
//!
//! A key is declared once, by the plugin that owns the name, and shared with
//! the plugins that use it (the bundled plugins' keys are in
//! `dispatch-contracts`). It carries the name and the schema version, so a
//! plugin built against another version gets a `version_mismatch` error
//! when it binds instead of a silently misread value.
//!
//! Most names are known at compile time (`Service::new("store", 1)`, a
//! `const`); a name known only at run time — a provider service chosen by
//! configuration, `tool.<name>` for a tool named by its author — is an owned
//! key (`Service::named(name, 1)`), with no leaked memory.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use crate::ffi::FailurePolicy;

/// A request/response service with exactly one provider.
pub struct Service<Req, Resp> {
    name: Cow<'static, str>,
    version: u32,
    _types: PhantomData<fn(Req) -> Resp>,
}

/// A fire-and-forget event with any number of subscribers.
pub struct Event<T> {
    name: Cow<'static, str>,
    version: u32,
    _types: PhantomData<fn(T)>,
}

/// An ordered chain of filters and guards over a value of type `T`.
///
/// ```no_run
/// use dispatch_abi::{Hook, HookResult, Host, Verdict};
///
/// /// The system prompt of a turn, before it is sent.
/// pub const SYSTEM_PROMPT: Hook<String> = Hook::new("example.system-prompt", 1);
/// /// Tool calls about to run; a guard may refuse one. Fail-closed: a guard
/// /// that errors counts as a veto.
/// pub const BEFORE_TOOL: Hook<String> = Hook::new("example.before-tool", 1).fail_closed();
///
/// # async fn f(host: Host) -> Result<(), dispatch_abi::Error> {
/// host.add_filter(&SYSTEM_PROMPT, 10, |p: String| async move { Ok(format!("{p}\nBe brief.")) })?;
/// host.add_guard(&BEFORE_TOOL, 0, |tool: String| async move {
///     Ok(if tool == "run_shell" { Verdict::Veto("no shell here".into()) } else { Verdict::Allow })
/// })?;
/// match host.run_hook(&SYSTEM_PROMPT, &"You help.".to_owned()).await? {
///     HookResult::Continue(prompt) => assert!(prompt.ends_with("Be brief.")),
///     HookResult::Vetoed { plugin, reason } => tracing::warn!(%plugin, %reason, "vetoed"),
/// }
/// # Ok(()) }
/// ```
pub struct Hook<T> {
    name: Cow<'static, str>,
    version: u32,
    policy: FailurePolicy,
    _types: PhantomData<fn(T) -> T>,
}

impl<Req, Resp> Service<Req, Resp> {
    /// Declare a service key (usable in a `const`).
    pub const fn new(name: &'static str, version: u32) -> Self {
        Self { name: Cow::Borrowed(name), version, _types: PhantomData }
    }
    /// A service key whose name is known only at run time.
    pub fn named(name: impl Into<String>, version: u32) -> Self {
        Self { name: Cow::Owned(name.into()), version, _types: PhantomData }
    }
    /// The bus name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The name for a future to keep (free for `const` keys).
    pub(crate) fn name_cow(&self) -> Cow<'static, str> {
        self.name.clone()
    }
    /// The schema version.
    pub const fn version(&self) -> u32 {
        self.version
    }
}

impl<T> Event<T> {
    /// Declare an event key (usable in a `const`).
    pub const fn new(name: &'static str, version: u32) -> Self {
        Self { name: Cow::Borrowed(name), version, _types: PhantomData }
    }
    /// An event key whose name is known only at run time.
    pub fn named(name: impl Into<String>, version: u32) -> Self {
        Self { name: Cow::Owned(name.into()), version, _types: PhantomData }
    }
    /// The bus name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The schema version.
    pub const fn version(&self) -> u32 {
        self.version
    }
}

impl<T> Hook<T> {
    /// Declare a fail-open hook key: a failing handler is logged and skipped.
    pub const fn new(name: &'static str, version: u32) -> Self {
        Self { name: Cow::Borrowed(name), version, policy: FailurePolicy::Open, _types: PhantomData }
    }
    /// A fail-open hook key whose name is known only at run time.
    pub fn named(name: impl Into<String>, version: u32) -> Self {
        Self { name: Cow::Owned(name.into()), version, policy: FailurePolicy::Open, _types: PhantomData }
    }
    /// Make the hook fail-closed: a failing filter fails the run and a
    /// failing guard counts as a veto. For security-relevant chains.
    pub const fn fail_closed(mut self) -> Self {
        self.policy = FailurePolicy::Closed;
        self
    }
    /// The bus name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The name for a future to keep (free for `const` keys).
    pub(crate) fn name_cow(&self) -> Cow<'static, str> {
        self.name.clone()
    }
    /// The schema version.
    pub const fn version(&self) -> u32 {
        self.version
    }
    /// What happens when a handler fails.
    pub const fn policy(&self) -> FailurePolicy {
        self.policy
    }
}

macro_rules! key_traits {
    ($ty:ident < $($p:ident),* >, $label:literal) => {
        // Manual impls: derives would require the payload types to be
        // `Clone`/`Debug` too.
        impl<$($p),*> Clone for $ty<$($p),*> {
            fn clone(&self) -> Self {
                Self { name: self.name.clone(), ..*self }
            }
        }
        impl<$($p),*> fmt::Debug for $ty<$($p),*> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($label, "({}@{})"), self.name, self.version)
            }
        }
    };
}
key_traits!(Service<Req, Resp>, "Service");
key_traits!(Event<T>, "Event");
key_traits!(Hook<T>, "Hook");
