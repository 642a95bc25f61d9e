//! Asking a model from a plugin: the kernel's [`RemoteProvider`] talks to a
//! provider service through a [`ServiceCaller`]; [`HostCaller`] is that
//! caller over the plugin's own host handle.
//!
//! Every plugin that asks a model outside a turn (a summary, an image's
//! description) needs exactly this adapter, so it lives here once.

use abi_stable::std_types::{RStr, RVec};
use dispatch_abi::Host;
use dispatch_kernel::protocol::{BoxFuture, CallError};
pub use dispatch_kernel::remote::{RemoteProvider, ServiceCaller};

/// Calls bus services by name through a plugin's [`Host`].
#[derive(Debug, Clone)]
pub struct HostCaller(pub Host);

impl ServiceCaller for HostCaller {
    fn call(&self, name: &str, version: u32, request: Vec<u8>) -> BoxFuture<Result<Vec<u8>, CallError>> {
        let fut = self.0.abi().call_service(RStr::from(name), version, RVec::from(request));
        Box::pin(async move {
            fut.await
                .into_result()
                .map(RVec::into_vec)
                .map_err(|e| CallError::new(e.code.into_string(), e.message.into_string()))
        })
    }
}
