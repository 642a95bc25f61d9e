//! Routes contributed by plugins (`dispatch_contracts::http`): each is a
//! bus service named after its operation (`http:GET /hello/{}`), so the
//! bus is the registry — this module only keeps a table of them, read from
//! the host's registration list and refreshed when a plugin's state
//! changes (or on a miss, in case that news has not arrived yet).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use dispatch_abi::{Host, Service};
use dispatch_contracts::http::{
    HttpMethod, HttpRequest, HttpResponse, RouteRequest, RouteSpec, Template, SERVICE_PREFIX, VERSION,
};
use dispatch_contracts::plugins::{PluginList, PLUGINS};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;

use crate::http::{full, json, percent_decode, query_pairs, read_body, Failure, Reply};
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
}

/// The table, and when it must be read again.
#[derive(Debug)]
pub struct Routes {
    table: RwLock<Arc<Vec<Route>>>,
    stale: AtomicBool,
    refreshed: Mutex<Option<Instant>>,
    /// One refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            table: RwLock::new(Arc::new(Vec::new())),
            stale: AtomicBool::new(true),
            refreshed: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }
}

impl Routes {
    /// A plugin's state changed: read the table again before the next use.
    pub fn invalidate(&self) {
        self.stale.store(true, Ordering::SeqCst);
    }

    fn table(&self) -> Arc<Vec<Route>> {
        Arc::clone(&self.table.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Read the registrations and describe the new routes.
    async fn refresh(&self, host: &Host) {
        let _one = self.refreshing.lock().await;
        self.stale.store(false, Ordering::SeqCst);
        *self.refreshed.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
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
            if let Some(known) = old.iter().find(|r| r.service == reg.name) {
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
                        path: spec.path,
                        service: reg.name.clone(),
                    })
                }
                _ => {
                    tracing::warn!(route = %reg.name, plugin = %reg.plugin, path = %spec.path, "a route's description does not match its name; not served")
                }
            }
        }
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(routes);
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
            // Not a path any template could name.
            Err(_) => return Err(req),
        }
    }
    let routes = &app.contributed;
    if routes.stale.load(Ordering::SeqCst) {
        routes.refresh(&app.host).await;
    }
    let mut found = lookup(&routes.table(), req.method(), &segments);
    if matches!(found, Found::Missing) {
        // Its plugin may have just come: its news may not have arrived.
        let recent = routes
            .refreshed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < MISS_REFRESH);
        if !recent {
            routes.refresh(&app.host).await;
            found = lookup(&routes.table(), req.method(), &segments);
        }
    }
    match found {
        Found::Missing => Err(req),
        Found::WrongMethod(methods) => {
            let list: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
            let mut r = Failure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} is not allowed on {}; use {}", req.method(), req.uri().path(), list.join(", ")),
            )
            .response();
            if let Ok(v) = HeaderValue::from_str(&format!("{}, OPTIONS", list.join(", "))) {
                r.headers_mut().insert(ALLOW, v);
            }
            Ok(Ok(r))
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
    let query = query_pairs(req.uri().query())?;
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
    if status == StatusCode::NO_CONTENT || answer.body.is_null() {
        let mut r = Response::new(full(""));
        *r.status_mut() = status;
        return Ok(r);
    }
    Ok(json(status, &answer.body))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn route(method: HttpMethod, path: &str) -> Route {
        Route { method, template: Template::parse(path).unwrap(), path: path.into(), service: path.into() }
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
