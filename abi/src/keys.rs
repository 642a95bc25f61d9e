//! Typed keys for the bus.
//!
//! A key is declared once, by the plugin that owns the name, and shared with
//! the plugins that use it (as a constant in a small crate, or copied with
//! its request/response types). It carries the name and the schema version,
//! so a plugin built against another version gets a `version_mismatch` error
//! when it binds instead of a silently misread value.

use std::fmt;
use std::marker::PhantomData;

use crate::ffi::FailurePolicy;

/// A request/response service with exactly one provider.
pub struct Service<Req, Resp> {
    name: &'static str,
    version: u32,
    _types: PhantomData<fn(Req) -> Resp>,
}

/// A fire-and-forget event with any number of subscribers.
pub struct Event<T> {
    name: &'static str,
    version: u32,
    _types: PhantomData<fn(T)>,
}

/// An ordered chain of filters and guards over a value of type `T`.
pub struct Hook<T> {
    name: &'static str,
    version: u32,
    policy: FailurePolicy,
    _types: PhantomData<fn(T) -> T>,
}

impl<Req, Resp> Service<Req, Resp> {
    /// Declare a service key.
    pub const fn new(name: &'static str, version: u32) -> Self {
        Self { name, version, _types: PhantomData }
    }
    /// The bus name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
    /// The schema version.
    pub const fn version(&self) -> u32 {
        self.version
    }
}

impl<T> Event<T> {
    /// Declare an event key.
    pub const fn new(name: &'static str, version: u32) -> Self {
        Self { name, version, _types: PhantomData }
    }
    /// The bus name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
    /// The schema version.
    pub const fn version(&self) -> u32 {
        self.version
    }
}

impl<T> Hook<T> {
    /// Declare a fail-open hook key: a failing handler is logged and skipped.
    pub const fn new(name: &'static str, version: u32) -> Self {
        Self { name, version, policy: FailurePolicy::Open, _types: PhantomData }
    }
    /// Make the hook fail-closed: a failing filter fails the run and a
    /// failing guard counts as a veto. For security-relevant chains.
    pub const fn fail_closed(self) -> Self {
        Self { policy: FailurePolicy::Closed, ..self }
    }
    /// The bus name.
    pub const fn name(&self) -> &'static str {
        self.name
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
        impl<$($p),*> Clone for $ty<$($p),*> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<$($p),*> Copy for $ty<$($p),*> {}
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
