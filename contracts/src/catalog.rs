//! The model catalog: the `models` service (provided by the `models`
//! plugin). Provider plugins register their credentials; the session and
//! the transports list models and resolve `<credential>/<model>` to the
//! provider service that runs it. Types in
//! [`dispatch_protocol::catalog`], re-exported here.
//!
//! ```no_run
//! # fn f(host: &dispatch_abi::Host) -> Result<(), dispatch_abi::Error> {
//! use dispatch_contracts::catalog;
//! let resolved = catalog::resolve(host, Some("scripted/demo"))?;
//! assert_eq!(resolved.provider, "provider-scripted");
//! # Ok(()) }
//! ```

use dispatch_abi::{Error, Host, Service};
pub use dispatch_protocol::catalog::*;
use serde_json::Value;

/// The `models` service. Answers differ by op (see [`CatalogRequest`]).
pub const CATALOG: Service<CatalogRequest, Value> = Service::new("models", 1);

fn decode<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, Error> {
    serde_json::from_value(value).map_err(|e| {
        Error::new(
            dispatch_abi::codes::INVALID_PAYLOAD,
            format!("invalid answer of the `models` service: {e}"),
        )
    })
}

/// Register `credentials` as served by `service` of plugin `provider`
/// (replacing an earlier registration of the same provider). Blocking:
/// call it from `activate`.
pub fn register(host: &Host, provider: &str, service: &str, credentials: Vec<String>) -> Result<(), Error> {
    let req =
        CatalogRequest::Register { provider: provider.to_owned(), service: service.to_owned(), credentials };
    host.call_blocking(&CATALOG, &req).map(drop)
}

/// Resolve `model` (`None`: the default model). Blocking.
pub fn resolve(host: &Host, model: Option<&str>) -> Result<Resolved, Error> {
    let req = CatalogRequest::Resolve { model: model.map(str::to_owned) };
    decode(host.call_blocking(&CATALOG, &req)?)
}

/// Every model of every provider. Blocking.
pub fn list(host: &Host) -> Result<ModelList, Error> {
    decode(host.call_blocking(&CATALOG, &CatalogRequest::List)?)
}
