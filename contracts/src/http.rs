//! HTTP routes contributed by plugins (types in
//! [`dispatch_protocol::http`], re-exported here): a plugin answers an HTTP
//! operation of the server's API as a bus service, and `transport-http`
//! routes requests to it.
//!
//! ```ignore
//! // In the manifest:
//! http::declare(PluginManifest::new("hello", "0.1.0"), HttpMethod::Get, "/hello/{name}")
//! // In activate:
//! http::serve_sync(ctx.host(), RouteSpec { method: HttpMethod::Get, path: "/hello/{name}".into(),
//!     operation: json!({"summary": "Greet someone"}) }, |req| {
//!     Ok(HttpResponse::json(200, &json!({"text": format!("Hello, {}!", req.param("name").unwrap_or(""))})))
//! })?;
//! ```
//!
//! The route appears when the plugin activates and leaves with it (a
//! reload, a failure, a stop). Two plugins claiming one method and path:
//! the second fails to activate, naming both.

use dispatch_abi::{codes, Error, Host, PluginManifest, Service};
pub use dispatch_protocol::http::*;
use serde_json::Value;

/// The bus key of the operation `method` `path` (a template), or why the
/// template is not one.
pub fn key(method: HttpMethod, path: &str) -> Result<Service<RouteRequest, Value>, Error> {
    let name = service_name(method, path).map_err(|e| Error::new(codes::INVALID_CONFIG, e))?;
    Ok(Service::named(name, VERSION))
}

/// Declare in a manifest that the plugin answers `method` `path`. A
/// template that is not one is left out here and refused by
/// [`serve`] with the reason.
pub fn declare(manifest: PluginManifest, method: HttpMethod, path: &str) -> PluginManifest {
    match service_name(method, path) {
        Ok(name) => manifest.provides("service", &name),
        Err(_) => manifest,
    }
}

/// Answer the route `spec` with `handler`, on the host's runtime (keep it
/// quick: hand blocking work to a thread). An error from the handler is
/// answered as JSON with the status its code means (`invalid_input` 400,
/// `not_found` 404, …). Refused when the template is not one, or another
/// plugin answers the same method and path already (naming it).
pub fn serve_sync<F>(host: &Host, spec: RouteSpec, handler: F) -> Result<(), Error>
where
    F: Fn(HttpRequest) -> Result<HttpResponse, Error> + Send + Sync + 'static,
{
    let key = key(spec.method, &spec.path)?;
    if let Ok(owner) = host.require(&key) {
        return Err(Error::new(
            codes::DUPLICATE,
            format!(
                "the HTTP route {} {} is already served by plugin `{owner}`",
                spec.method.as_str(),
                spec.path
            ),
        ));
    }
    host.provide_sync(&key, move |request: RouteRequest| match request {
        RouteRequest::Describe => {
            serde_json::to_value(&spec).map_err(|e| Error::new(codes::PLUGIN, e.to_string()))
        }
        RouteRequest::Handle { request } => {
            let answer = handler(request)?;
            serde_json::to_value(answer).map_err(|e| Error::new(codes::PLUGIN, e.to_string()))
        }
        other => Err(Error::new(codes::UNSUPPORTED, format!("this route does not know {other:?}"))),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use dispatch_abi::{Context, Plugin};
    use dispatch_testkit::TestHost;

    fn spec() -> RouteSpec {
        RouteSpec { method: HttpMethod::Get, path: "/things/{id}".into(), operation: Value::Null }
    }

    macro_rules! route_plugin {
        ($ty:ident, $id:literal, $path:literal) => {
            #[derive(Debug)]
            struct $ty;
            impl Plugin for $ty {
                fn manifest() -> PluginManifest {
                    declare(PluginManifest::new($id, "0.1.0"), HttpMethod::Get, $path)
                }
                fn activate(ctx: Context) -> Result<Self, Error> {
                    let spec = RouteSpec { path: $path.into(), ..spec() };
                    serve_sync(ctx.host(), spec, |req| {
                        Ok(HttpResponse::json(200, &serde_json::json!({"id": req.param("id")})))
                    })?;
                    Ok($ty)
                }
            }
        };
    }
    route_plugin!(First, "first", "/things/{id}");
    route_plugin!(Second, "second", "/things/{thing}");

    /// Two plugins claiming one method and path — whatever they name the
    /// parameter — is an activation error of the second, naming the first.
    #[test]
    fn a_second_plugin_claiming_a_route_fails_to_activate_naming_the_first() {
        let mut host = TestHost::new();
        host.activate::<First>(Value::Null).unwrap();
        let e = host.activate::<Second>(Value::Null).unwrap_err();
        assert_eq!(e.code(), codes::DUPLICATE, "{e}");
        assert!(e.message().contains("GET /things/{thing}") && e.message().contains("`first`"), "{e}");
        // The first still answers, and describes itself.
        let key = key(HttpMethod::Get, "/things/{x}").unwrap();
        let spec: RouteSpec =
            serde_json::from_value(host.call(&key, &RouteRequest::Describe).unwrap()).unwrap();
        assert_eq!(spec.path, "/things/{id}");
        assert!(key.name().starts_with("http:GET /things/{}"));
    }

    #[test]
    fn a_template_that_is_not_one_is_refused_with_the_reason() {
        let e = key(HttpMethod::Get, "/ws/x").unwrap_err();
        assert!(e.message().contains("transport's own"), "{e}");
        assert!(key(HttpMethod::Put, "no-slash").is_err());
    }
}
