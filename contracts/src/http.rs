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

use std::sync::Arc;

use dispatch_abi::{codes, Error, Host, PluginManifest, Service};
pub use dispatch_protocol::http::*;
use dispatch_protocol::BoxFuture;
use serde_json::value::RawValue;
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

/// Declare in a manifest that the plugin answers HTTP routes, whichever
/// they are (`http:*`): for a plugin with many routes.
pub fn declare_routes(manifest: PluginManifest) -> PluginManifest {
    manifest.provides("service", format!("{SERVICE_PREFIX}*"))
}

/// What a route handler answers.
pub type RouteResult = Result<HttpResponse, Problem>;

type HandleFn = dyn Fn(HttpRequest) -> BoxFuture<RouteResult> + Send + Sync;
type PullFn = dyn Fn(Value, u64) -> BoxFuture<Result<StreamBatch, Error>> + Send + Sync;

/// One HTTP operation a plugin answers: its spec, its handler and, for an
/// NDJSON answer, how the transport pulls the lines.
///
/// ```ignore
/// Route::new(HttpMethod::Get, "/things/{id}", move |req| async move {
///     Ok(HttpResponse::ok(&json!({"id": req.param("id")})))
/// })
/// .operation(Operation::new("Read a thing").path_param("id", "The thing's id").returns::<Thing>(200, "The thing"))
/// .serve(ctx.host())?;
/// ```
pub struct Route {
    spec: RouteSpec,
    handle: Arc<HandleFn>,
    pull: Option<Arc<PullFn>>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route").field("spec", &self.spec).finish_non_exhaustive()
    }
}

impl Route {
    /// The operation `method` `path` (a template), answered by `handler`.
    /// The future is polled by the host's runtime: work that needs tokio
    /// runs on the plugin's own (`PluginRuntime::run`).
    pub fn new<F, Fut>(method: HttpMethod, path: &str, handler: F) -> Route
    where
        F: Fn(HttpRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = RouteResult> + Send + 'static,
    {
        Route {
            spec: RouteSpec {
                method,
                path: path.to_owned(),
                operation: Value::Null,
                schemas: Default::default(),
            },
            handle: Arc::new(move |req| Box::pin(handler(req))),
            pull: None,
        }
    }

    /// [`Route::new`] whose handler runs on the plugin's own runtime
    /// (`runner`), for handlers that need tokio (timers, the plugin's
    /// tasks); a runner that is stopping answers `unavailable`.
    #[cfg(feature = "runtime")]
    pub fn on_runtime<F, Fut>(
        runner: &dispatch_abi::runtime::Runner,
        method: HttpMethod,
        path: &str,
        handler: F,
    ) -> Route
    where
        F: Fn(HttpRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = RouteResult> + Send + 'static,
    {
        let (runner, handler) = (runner.clone(), Arc::new(handler));
        Route::new(method, path, move |req| {
            let handler = Arc::clone(&handler);
            let answer = runner.run(async move { Ok(handler(req).await) });
            async move { answer.await.unwrap_or_else(|e| Err(problem(e))) }
        })
    }

    /// Describe it for the server's OpenAPI document.
    pub fn operation(mut self, operation: crate::openapi::Operation) -> Route {
        let (operation, schemas) = operation.into_parts();
        self.spec.operation = operation;
        self.spec.schemas = schemas;
        self
    }

    /// Its NDJSON lines: `pull(stream, from)` answers the lines after
    /// `from` of the stream a handler began with [`HttpResponse::ndjson`]
    /// (waiting a while for at least one).
    pub fn streaming<P, Fut>(mut self, pull: P) -> Route
    where
        P: Fn(Value, u64) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<StreamBatch, Error>> + Send + 'static,
    {
        self.pull = Some(Arc::new(move |stream, from| Box::pin(pull(stream, from))));
        self
    }

    /// The spec it describes itself with.
    pub fn spec(&self) -> &RouteSpec {
        &self.spec
    }

    /// Answer it on the bus. Refused when the template is not one, or
    /// another plugin answers the same method and path already (naming it).
    pub fn serve(self, host: &Host) -> Result<(), Error> {
        let key = key(self.spec.method, &self.spec.path)?;
        if let Ok(owner) = host.require(&key) {
            return Err(Error::new(
                codes::DUPLICATE,
                format!(
                    "the HTTP route {} {} is already served by plugin `{owner}`",
                    self.spec.method.as_str(),
                    self.spec.path
                ),
            ));
        }
        let Route { spec, handle, pull } = self;
        // Answers go out as raw JSON: an NDJSON batch's lines are passed
        // through as they came, never parsed into a tree and written again
        // (that cost a chat turn ~0.1 ms).
        let raw = |v: &dyn erased::Raw| v.raw().map_err(|e| Error::new(codes::PLUGIN, e.to_string()));
        let described = raw(&spec)?;
        let key: Service<RouteRequest, Box<RawValue>> = Service::named(key.name().to_owned(), VERSION);
        host.provide(&key, move |request: RouteRequest| -> BoxFuture<Result<Box<RawValue>, Error>> {
            match request {
                RouteRequest::Describe => {
                    let d = described.clone();
                    Box::pin(async move { Ok(d) })
                }
                RouteRequest::Handle { request } => {
                    let fut = handle(request);
                    Box::pin(async move {
                        let answer = fut.await.unwrap_or_else(|p| p.response());
                        raw(&answer)
                    })
                }
                RouteRequest::Pull { stream, from } => match &pull {
                    Some(pull) => {
                        let fut = pull(stream, from);
                        Box::pin(async move { raw(&fut.await?) })
                    }
                    None => {
                        Box::pin(async { Err(Error::new(codes::UNSUPPORTED, "this route does not stream")) })
                    }
                },
                other => {
                    let e = Error::new(codes::UNSUPPORTED, format!("this route does not know {other:?}"));
                    Box::pin(async move { Err(e) })
                }
            }
        })
    }
}

/// Serializing to a raw JSON value through `&dyn`.
mod erased {
    use serde_json::value::RawValue;

    pub trait Raw {
        fn raw(&self) -> Result<Box<RawValue>, serde_json::Error>;
    }

    impl<T: serde::Serialize> Raw for T {
        fn raw(&self) -> Result<Box<RawValue>, serde_json::Error> {
            serde_json::value::to_raw_value(self)
        }
    }
}

/// Answer every route of `routes` (see [`Route::serve`]); stops at the
/// first refused.
pub fn serve_all(host: &Host, routes: impl IntoIterator<Item = Route>) -> Result<(), Error> {
    routes.into_iter().try_for_each(|r| r.serve(host))
}

/// Answer the route `spec` with a synchronous `handler`, on the host's
/// runtime (keep it quick: hand blocking work to a thread). An error from
/// the handler is answered as JSON with the status its code means
/// ([`status_of_code`]). Refused as [`Route::serve`] is.
pub fn serve_sync<F>(host: &Host, spec: RouteSpec, handler: F) -> Result<(), Error>
where
    F: Fn(HttpRequest) -> Result<HttpResponse, Error> + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    let route = Route::new(spec.method, &spec.path, move |req| {
        let answer = handler(req).map_err(|e| Problem::from_code(e.code(), e.message()));
        std::future::ready(answer)
    });
    Route { spec, ..route }.serve(host)
}

/// A bus error as an HTTP problem: the status its code means
/// ([`status_of_code`]), code and message kept. For `map_err`.
pub fn problem(e: Error) -> Problem {
    Problem::from_code(e.code(), e.message())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use dispatch_abi::{Context, Plugin};
    use dispatch_testkit::TestHost;

    fn spec() -> RouteSpec {
        RouteSpec {
            method: HttpMethod::Get,
            path: "/things/{id}".into(),
            operation: Value::Null,
            schemas: Default::default(),
        }
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
