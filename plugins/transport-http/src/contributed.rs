//! Routes contributed by plugins (`dispatch_contracts::http`): each is a
//! bus service named after its operation (`http:GET /hello/{}`), so the
//! bus is the registry — this module only keeps a table of them, read from
//! the host's registration list and refreshed when a plugin's state
//! changes (or on a miss, in case that news has not arrived yet).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use std::convert::Infallible;

use bytes::Bytes;
use dispatch_abi::{Host, Service};
use dispatch_contracts::http::{
    HttpMethod, HttpRequest, HttpResponse, RouteRequest, RouteSpec, StreamBatch, Template, SERVICE_PREFIX,
    VERSION,
};
use dispatch_contracts::openapi::Described;
use dispatch_contracts::plugins::{PluginList, PLUGINS};
use dispatch_contracts::session::WireVersion;
use futures::SinkExt as _;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;

use crate::http::{full, json, percent_decode, query_pairs, read_body, Body, Failure, Reply};
use crate::routes::App;

/// Longest a route's answer may take.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a route's `describe` may take when the table is refreshed.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A miss refreshes the table at most this often.
const MISS_REFRESH: Duration = Duration::from_millis(250);

/// One contributed route.
#[derive(Debug, Clone)]
struct Route {
    method: HttpMethod,
    template: Template,
    path: String,
    service: String,
    /// The plugin that answers it.
    plugin: String,
    /// What it said of itself (for `/openapi.json`).
    spec: Arc<RouteSpec>,
}

/// The table, and when it must be read again.
#[derive(Debug)]
pub struct Routes {
    table: RwLock<Arc<Vec<Route>>>,
    /// Bumped by each plugin state change.
    generation: AtomicU64,
    /// The generation the table was read at.
    built: AtomicU64,
    refreshed: Mutex<Option<Instant>>,
    /// One refresh at a time; a request that finds the table stale waits
    /// for the refresh under way instead of reading the old table.
    refreshing: tokio::sync::Mutex<()>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            table: RwLock::new(Arc::new(Vec::new())),
            generation: AtomicU64::new(1),
            built: AtomicU64::new(0),
            refreshed: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }
}

impl Routes {
    /// A plugin's state changed: read the table again before the next use.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn stale(&self) -> bool {
        self.built.load(Ordering::SeqCst) != self.generation.load(Ordering::SeqCst)
    }

    fn table(&self) -> Arc<Vec<Route>> {
        Arc::clone(&self.table.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Read the registrations and describe the new routes: when the table
    /// is stale, or (`missed`) a path matched nothing and the table was
    /// not read in the last [`MISS_REFRESH`] — its plugin may have just
    /// come, ahead of the news.
    async fn refresh(&self, host: &Host, missed: bool) {
        let _one = self.refreshing.lock().await;
        let generation = self.generation.load(Ordering::SeqCst);
        let recent = self
            .refreshed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < MISS_REFRESH);
        let current = self.built.load(Ordering::SeqCst) == generation;
        // Someone else refreshed while this one waited.
        if current && (!missed || recent) {
            return;
        }
        let list: PluginList = match host.call(&PLUGINS, &serde_json::json!({})).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "no plugin list; contributed routes unchanged");
                return;
            }
        };
        let old = self.table();
        let mut routes = Vec::new();
        for reg in list
            .registrations
            .iter()
            .filter(|r| r.kind == "service" && r.version == VERSION && r.name.starts_with(SERVICE_PREFIX))
        {
            if let Some(known) = old.iter().find(|r| r.service == reg.name && r.plugin == reg.plugin) {
                routes.push(known.clone());
                continue;
            }
            let key: Service<RouteRequest, RouteSpec> = Service::named(reg.name.clone(), VERSION);
            let described =
                tokio::time::timeout(DESCRIBE_TIMEOUT, host.call(&key, &RouteRequest::Describe)).await;
            let spec = match described {
                Ok(Ok(spec)) => spec,
                Ok(Err(e)) => {
                    tracing::warn!(route = %reg.name, plugin = %reg.plugin, error = %e, "a route does not describe itself; not served");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(route = %reg.name, plugin = %reg.plugin, "a route did not describe itself in time; not served");
                    continue;
                }
            };
            match Template::parse(&spec.path) {
                Ok(template)
                    if format!("{SERVICE_PREFIX}{} {}", spec.method.as_str(), template.normalized())
                        == reg.name =>
                {
                    routes.push(Route {
                        method: spec.method,
                        template,
                        path: spec.path.clone(),
                        service: reg.name.clone(),
                        plugin: reg.plugin.clone(),
                        spec: Arc::new(spec),
                    })
                }
                _ => {
                    tracing::warn!(route = %reg.name, plugin = %reg.plugin, path = %spec.path, "a route's description does not match its name; not served")
                }
            }
        }
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(routes);
        self.built.store(generation, Ordering::SeqCst);
        *self.refreshed.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }
}

enum Found {
    Route(Route, std::collections::BTreeMap<String, String>),
    WrongMethod(Vec<HttpMethod>),
    Missing,
}

fn lookup(table: &[Route], method: &Method, segments: &[String]) -> Found {
    let matching: Vec<(&Route, std::collections::BTreeMap<String, String>)> =
        table.iter().filter_map(|r| r.template.matches(segments).map(|p| (r, p))).collect();
    if matching.is_empty() {
        return Found::Missing;
    }
    let wanted = HttpMethod::parse(method.as_str());
    let best = matching
        .iter()
        .filter(|(r, _)| Some(r.method) == wanted)
        .max_by_key(|(r, _)| r.template.specificity());
    match best {
        Some((r, params)) => Found::Route((*r).clone(), params.clone()),
        None => {
            let mut methods: Vec<HttpMethod> = matching.iter().map(|(r, _)| r.method).collect();
            methods.sort();
            methods.dedup();
            Found::WrongMethod(methods)
        }
    }
}

/// Serve `req` with a contributed route when one matches its path; the
/// request back when none does (the caller goes on: the web directory,
/// else `404`).
pub async fn serve(app: &Arc<App>, req: Request<Incoming>) -> Result<Reply, Request<Incoming>> {
    let raw: Vec<&str> = req.uri().path().split('/').filter(|s| !s.is_empty()).collect();
    let mut segments = Vec::with_capacity(raw.len());
    for s in raw {
        match percent_decode(s) {
            Ok(d) => segments.push(d),
            Err(e) => return Ok(Err(e)),
        }
    }
    let routes = &app.contributed;
    if routes.stale() {
        routes.refresh(&app.host, false).await;
    }
    let mut found = lookup(&routes.table(), req.method(), &segments);
    if matches!(found, Found::Missing) {
        routes.refresh(&app.host, true).await;
        found = lookup(&routes.table(), req.method(), &segments);
    }
    match found {
        Found::Missing => Err(req),
        Found::WrongMethod(methods) => {
            Ok(Ok(crate::routes::not_allowed(req.method(), req.uri().path(), &methods)))
        }
        Found::Route(route, params) => Ok(answer(app, route, params, req).await),
    }
}

async fn answer(
    app: &Arc<App>,
    route: Route,
    params: std::collections::BTreeMap<String, String>,
    req: Request<Incoming>,
) -> Reply {
    let mut query = query_pairs(req.uri().query())?;
    // The transport's `default_wire`: the event format of a client that
    // does not ask, for every route that streams events.
    if app.default_wire != WireVersion::Latest && !query.iter().any(|(k, _)| k == "wire") {
        query.push(("wire".to_owned(), "0.1".to_owned()));
    }
    let path = req.uri().path().to_owned();
    let body = {
        use hyper::body::Body as _;
        if req.body().is_end_stream() {
            None
        } else {
            let bytes = read_body(req.into_body(), app.max_body, app.body_timeout).await?;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                None
            } else {
                Some(
                    serde_json::from_slice::<Value>(&bytes)
                        .map_err(|e| Failure::bad_request(format!("the body is not valid JSON: {e}")))?,
                )
            }
        }
    };
    let request =
        HttpRequest { method: route.method, path, template: route.path.clone(), params, query, body };
    let key: Service<RouteRequest, HttpResponse> = Service::named(route.service.clone(), VERSION);
    let answered =
        tokio::time::timeout(ROUTE_TIMEOUT, app.host.call(&key, &RouteRequest::Handle { request }))
            .await
            .map_err(|_| {
                Failure::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!(
                        "the route {} {} did not answer within {} s",
                        route.method.as_str(),
                        route.path,
                        ROUTE_TIMEOUT.as_secs()
                    ),
                )
            })?;
    let answer = answered?;
    let status = StatusCode::from_u16(answer.status).ok().filter(|s| s.as_u16() >= 200).ok_or_else(|| {
        Failure::new(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            format!("the route {} {} answered status {}", route.method.as_str(), route.path, answer.status),
        )
    })?;
    let mut response = match (answer.stream, answer.text) {
        (Some(stream), _) => {
            let mut r = pump(app, route.service.clone(), stream);
            *r.status_mut() = status;
            r
        }
        (None, Some(text)) => {
            let mut r = Response::new(full(text.text));
            *r.status_mut() = status;
            let kind = HeaderValue::from_str(&text.content_type)
                .unwrap_or_else(|_| HeaderValue::from_static("text/plain; charset=utf-8"));
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, kind);
            r
        }
        (None, None) if status == StatusCode::NO_CONTENT || answer.body.is_null() => {
            let mut r = Response::new(full(""));
            *r.status_mut() = status;
            r
        }
        (None, None) => json(status, &answer.body),
    };
    for (name, value) in &answer.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            response.headers_mut().insert(n, v);
        }
    }
    Ok(response)
}

/// An NDJSON answer: pull the route's lines and write each batch as it
/// comes. The client leaving stops the pulls (what produces the lines —
/// a turn — goes on).
fn pump(app: &Arc<App>, service: String, stream: Value) -> Response<Body> {
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
    let host = app.host.clone();
    app.runner.spawn(async move {
        let key: Service<RouteRequest, StreamBatch> = Service::named(service, VERSION);
        let mut from = 0u64;
        loop {
            let request = RouteRequest::Pull { stream: stream.clone(), from };
            let batch = match host.call(&key, &request).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, route = %key.name(), "an NDJSON stream broke off");
                    return;
                }
            };
            if !batch.lines.is_empty() {
                let mut chunk = Vec::with_capacity(batch.lines.iter().map(|l| l.get().len() + 1).sum());
                for l in &batch.lines {
                    chunk.extend_from_slice(l.get().as_bytes());
                    chunk.push(b'\n');
                }
                if tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.is_err() {
                    return;
                }
            }
            if batch.ended {
                return;
            }
            from = batch.next;
        }
    });
    let mut response = Response::new(StreamBody::new(rx).boxed());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The server's OpenAPI document: the transport's own operations and
/// every contributed route's, as they describe themselves now.
pub async fn openapi(app: &Arc<App>) -> Value {
    let routes = &app.contributed;
    routes.refresh(&app.host, false).await;
    let mut described: Vec<Described> = routes
        .table()
        .iter()
        .map(|r| Described { spec: (*r.spec).clone(), plugin: r.plugin.clone() })
        .collect();
    described.extend(dispatch_contracts::openapi::transport_operations());
    dispatch_contracts::openapi::assemble(env!("CARGO_PKG_VERSION"), &described)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn route(method: HttpMethod, path: &str) -> Route {
        let spec =
            RouteSpec { method, path: path.into(), operation: Value::Null, schemas: Default::default() };
        Route {
            method,
            template: Template::parse(path).unwrap(),
            path: path.into(),
            service: path.into(),
            plugin: "p".into(),
            spec: Arc::new(spec),
        }
    }

    fn segs(p: &str) -> Vec<String> {
        p.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect()
    }

    #[test]
    fn the_most_specific_template_of_the_method_wins_and_others_are_a_405() {
        let table = vec![
            route(HttpMethod::Get, "/w/{id}"),
            route(HttpMethod::Get, "/w/default"),
            route(HttpMethod::Put, "/w/{id}"),
        ];
        match lookup(&table, &Method::GET, &segs("/w/default")) {
            Found::Route(r, p) => assert_eq!((r.path.as_str(), p.len()), ("/w/default", 0)),
            _ => panic!("no route"),
        }
        match lookup(&table, &Method::GET, &segs("/w/x")) {
            Found::Route(r, p) => assert_eq!((r.path.as_str(), p["id"].as_str()), ("/w/{id}", "x")),
            _ => panic!("no route"),
        }
        match lookup(&table, &Method::DELETE, &segs("/w/x")) {
            Found::WrongMethod(m) => assert_eq!(m, [HttpMethod::Get, HttpMethod::Put]),
            _ => panic!("not a 405"),
        }
        assert!(matches!(lookup(&table, &Method::GET, &segs("/w")), Found::Missing));
    }
}
