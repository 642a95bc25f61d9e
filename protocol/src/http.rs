//! HTTP routes contributed by plugins: the contract between a plugin that
//! answers an HTTP operation and the transport that serves it.
//!
//! Why a bus service per operation: the bus is then the registry. A second
//! plugin claiming the same method and path is refused when it activates
//! (the bus names both), and a plugin's routes leave with it — on a reload,
//! a failure or a stop — with nothing for the transport to track. The
//! service's name is the operation: `http:<METHOD> <template>` with the
//! template's parameters written `{}` (`http:GET /hello/{}`), so two
//! templates that differ only in parameter names are one operation.
//!
//! The transport applies the shared rules once (access token, cross-site
//! gate, body limits and deadlines, JSON errors, CORS) and sends the
//! answering plugin a parsed [`HttpRequest`]; the plugin answers an
//! [`HttpResponse`].

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The prefix of every route service's name.
pub const SERVICE_PREFIX: &str = "http:";

/// The schema version of route services.
pub const VERSION: u32 = 1;

/// The methods a route may answer (the ones CORS allows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
#[non_exhaustive]
pub enum HttpMethod {
    /// `GET`.
    Get,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `DELETE`.
    Delete,
}

impl HttpMethod {
    /// The method's name as HTTP spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Delete => "DELETE",
        }
    }

    /// The method named `name` (upper case), if a route may answer it.
    pub fn parse(name: &str) -> Option<HttpMethod> {
        match name {
            "GET" => Some(HttpMethod::Get),
            "POST" => Some(HttpMethod::Post),
            "PUT" => Some(HttpMethod::Put),
            "DELETE" => Some(HttpMethod::Delete),
            _ => None,
        }
    }
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Matches itself.
    Literal(String),
    /// Matches any one non-empty segment; named.
    Param(String),
}

/// A path template: `/workspaces/{id}/heartbeat`.
///
/// Rules, checked by [`Template::parse`]: it starts with `/`; each segment
/// is a literal of `A-Z a-z 0-9 . _ ~ -` or a whole-segment `{name}` of
/// `a-z A-Z 0-9 _`; names are unique; the first segment is a literal and
/// not one the transport keeps for itself (`ws`, `admin`, `openapi.json`);
/// no empty segment and no trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
}

/// First path segments a plugin may not claim.
pub const RESERVED: &[&str] = &["ws", "admin", "openapi.json"];

impl Template {
    /// Parse and check a template.
    pub fn parse(path: &str) -> Result<Template, String> {
        let Some(rest) = path.strip_prefix('/') else {
            return Err(format!("route path {path:?} must start with `/`"));
        };
        let mut segments = Vec::new();
        for raw in rest.split('/') {
            if raw.is_empty() {
                return Err(format!("route path {path:?} has an empty segment (or a trailing `/`)"));
            }
            if let Some(name) = raw.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !ok {
                    return Err(format!(
                        "route path {path:?}: parameter `{raw}` must be `{{name}}` of a-z, 0-9, _"
                    ));
                }
                if segments.iter().any(|s| matches!(s, Segment::Param(n) if n == name)) {
                    return Err(format!("route path {path:?} names parameter `{name}` twice"));
                }
                segments.push(Segment::Param(name.to_owned()));
            } else {
                let ok = raw.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b));
                if !ok {
                    return Err(format!("route path {path:?}: segment `{raw}` must be a literal of A-Z a-z 0-9 . _ ~ - or a whole `{{name}}`"));
                }
                segments.push(Segment::Literal(raw.to_owned()));
            }
        }
        match segments.first() {
            Some(Segment::Literal(first)) if RESERVED.contains(&first.as_str()) => {
                Err(format!("route path {path:?}: `/{first}` is the transport's own"))
            }
            Some(Segment::Literal(_)) => Ok(Template { segments }),
            _ => Err(format!("route path {path:?} must start with a literal segment")),
        }
    }

    /// The template with its parameters written `{}`: what identifies the
    /// operation (`/hello/{}`).
    pub fn normalized(&self) -> String {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => format!("/{l}"),
                Segment::Param(_) => "/{}".to_owned(),
            })
            .collect()
    }

    /// The segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Match already-split, percent-decoded path segments: the parameters
    /// by name, or `None`.
    pub fn matches(&self, path: &[String]) -> Option<BTreeMap<String, String>> {
        if path.len() != self.segments.len() {
            return None;
        }
        let mut params = BTreeMap::new();
        for (seg, value) in self.segments.iter().zip(path) {
            match seg {
                Segment::Literal(l) if l == value => {}
                Segment::Literal(_) => return None,
                Segment::Param(_) if value.is_empty() => return None,
                Segment::Param(name) => {
                    params.insert(name.clone(), value.clone());
                }
            }
        }
        Some(params)
    }

    /// How specific the template is, for choosing among several that match
    /// one path: literals count before parameters, left to right.
    pub fn specificity(&self) -> Vec<bool> {
        self.segments.iter().map(|s| matches!(s, Segment::Literal(_))).collect()
    }
}

/// The bus service name of the operation `method` `path` (a template).
pub fn service_name(method: HttpMethod, path: &str) -> Result<String, String> {
    Ok(format!("{SERVICE_PREFIX}{} {}", method.as_str(), Template::parse(path)?.normalized()))
}

/// Requests to a route service, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub enum RouteRequest {
    /// What the route is; answers [`RouteSpec`].
    Describe,
    /// Answer one request; answers [`HttpResponse`].
    Handle {
        /// The request, parsed.
        request: HttpRequest,
    },
    /// The next lines of an NDJSON answer the route began with
    /// [`HttpResponse::stream`]; answers [`StreamBatch`].
    Pull {
        /// What the route put in [`HttpResponse::stream`], as it was.
        stream: Value,
        /// Where to go on from: 0, then each batch's `next`.
        from: u64,
    },
}

/// What a route says of itself (`describe`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// Its method.
    pub method: HttpMethod,
    /// Its path template, with the parameters' names.
    pub path: String,
    /// Its OpenAPI 3.1 Operation Object (summary, parameters, request
    /// body, responses), for the server's API description.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub operation: Value,
    /// The schemas `operation` refers to (`#/components/schemas/<name>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub schemas: BTreeMap<String, Value>,
}

/// A request as the transport hands it to a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRequest {
    /// The method.
    pub method: HttpMethod,
    /// The path as requested (not decoded).
    pub path: String,
    /// The template it matched.
    pub template: String,
    /// The template's parameters, percent-decoded.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// The query's pairs, decoded, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<(String, String)>,
    /// The JSON body, when one was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

impl HttpRequest {
    /// A path parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// A query parameter (the first of that name).
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A route's answer: a status and a JSON body — or, with `stream`, an
/// NDJSON body the transport pulls line by line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpResponse {
    /// The status (200–599).
    pub status: u16,
    /// The JSON body (`null`: none). Ignored with `stream`.
    #[serde(default)]
    pub body: Value,
    /// Extra headers (`X-Conversation-Id`); the transport sets the content
    /// type, CORS and caching ones itself.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Answer `application/x-ndjson`: the transport sends the route
    /// [`RouteRequest::Pull`] with this value until a batch is `ended`, and
    /// writes each line as it arrives. The client leaving stops the pulls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Value>,
    /// A body that is not JSON, sent as it is with its content type
    /// (Prometheus' text format, say); `body` is then ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextBody>,
}

/// A non-JSON answer body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TextBody {
    /// Its `Content-Type`.
    pub content_type: String,
    /// The body.
    pub text: String,
}

/// Lines of an NDJSON answer (`pull`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamBatch {
    /// The lines, each one JSON value, in order (none while waiting timed
    /// out: pull again).
    pub lines: Vec<Box<serde_json::value::RawValue>>,
    /// The `from` of the next pull.
    pub next: u64,
    /// Nothing more will come.
    pub ended: bool,
}

impl HttpResponse {
    /// `status` with `body` as JSON.
    pub fn json(status: u16, body: &impl Serialize) -> HttpResponse {
        HttpResponse {
            status,
            body: serde_json::to_value(body).unwrap_or(Value::Null),
            headers: BTreeMap::new(),
            stream: None,
            text: None,
        }
    }

    /// `status` with a non-JSON body of `content_type`.
    pub fn text(status: u16, content_type: &str, text: String) -> HttpResponse {
        HttpResponse {
            status,
            body: Value::Null,
            headers: BTreeMap::new(),
            stream: None,
            text: Some(TextBody { content_type: content_type.to_owned(), text }),
        }
    }

    /// `200` with `body` as JSON.
    pub fn ok(body: &impl Serialize) -> HttpResponse {
        HttpResponse::json(200, body)
    }

    /// An error answer in the wire's shape: `{"error": message, "code": code}`.
    pub fn problem(status: u16, code: &str, message: &str) -> HttpResponse {
        HttpResponse::json(status, &serde_json::json!({"error": message, "code": code}))
    }

    /// A `200` NDJSON answer pulled with `stream` (see [`HttpResponse::stream`]).
    pub fn ndjson(stream: Value) -> HttpResponse {
        HttpResponse {
            status: 200,
            body: Value::Null,
            headers: BTreeMap::new(),
            stream: Some(stream),
            text: None,
        }
    }

    /// The answer with one more header.
    pub fn header(mut self, name: &str, value: &str) -> HttpResponse {
        self.headers.insert(name.to_owned(), value.to_owned());
        self
    }
}

/// A request that failed, as HTTP: a status, a stable code and a message
/// for people — answered as `{"error": message, "code": code}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct Problem {
    /// The status (400–599).
    pub status: u16,
    /// The stable code (`bad_request`, `not_found`, …).
    pub code: String,
    /// For people.
    pub message: String,
}

impl Problem {
    /// A problem with everything spelled out.
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Problem {
        Problem { status, code: code.to_owned(), message: message.into() }
    }

    /// `400 bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Problem {
        Problem::new(400, "bad_request", message)
    }

    /// A bus error's code as HTTP: the status its code means
    /// ([`status_of_code`]), the code and message kept.
    pub fn from_code(code: &str, message: &str) -> Problem {
        Problem::new(status_of_code(code), code, message)
    }

    /// The answer.
    pub fn response(&self) -> HttpResponse {
        HttpResponse::problem(self.status, &self.code, &self.message)
    }
}

/// The HTTP status a bus error code means: `invalid_input`,
/// `invalid_payload`, `unknown_model` 400; `not_found` 404; `conflict`,
/// `duplicate` 409; `forbidden` 403; `payload_too_large` 413;
/// `unsupported`, `unavailable` 503; anything else 500.
pub fn status_of_code(code: &str) -> u16 {
    match code {
        "invalid_input" | "invalid_payload" | "unknown_model" | "bad_request" => 400,
        "not_found" => 404,
        "conflict" | "duplicate" => 409,
        "forbidden" => 403,
        "payload_too_large" => 413,
        "unsupported" | "unavailable" => 503,
        _ => 500,
    }
}

impl HttpRequest {
    /// The body as `T`: absent or blank, not an object, or not a `T` are
    /// each a `400` saying which.
    pub fn body_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, Problem> {
        let Some(value) = &self.body else {
            return Err(Problem::bad_request("the request body is empty; send a JSON object"));
        };
        if !value.is_object() {
            return Err(Problem::bad_request("the body must be a JSON object"));
        }
        T::deserialize(value).map_err(|e| Problem::bad_request(format!("invalid request: {e}")))
    }

    /// The path parameter `name` as a conversation id, checked against
    /// the store's rule: a bad one is a `400` before anything is called.
    pub fn conversation_id(&self, name: &str) -> Result<String, Problem> {
        let id = self.param(name).unwrap_or_default();
        if crate::wire::is_valid_conversation_id(id) {
            Ok(id.to_owned())
        } else {
            Err(Problem::bad_request(format!(
                "invalid conversation id {id:?}: {}",
                crate::wire::CONVERSATION_ID_RULE
            )))
        }
    }

    /// A query number: absent or blank → `None`; else an integer ≥ `min`,
    /// or a `400` naming the parameter.
    pub fn query_number(&self, name: &str, min: u64) -> Result<Option<u64>, Problem> {
        match self.query(name) {
            // `?limit=` is the parameter left out, as the original server and
            // the frontend's URL building read it.
            None => Ok(None),
            Some(v) if v.trim().is_empty() => Ok(None),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if n >= min => Ok(Some(n)),
                _ => Err(Problem::bad_request(format!(
                    "`{name}` must be an integer of at least {min}; got {v:?}"
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(p: &str) -> Vec<String> {
        p.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect()
    }

    #[test]
    fn templates_are_checked_and_matched() {
        let t = Template::parse("/workspaces/{id}/heartbeat").unwrap();
        assert_eq!(t.normalized(), "/workspaces/{}/heartbeat");
        let p = t.matches(&segs("/workspaces/w1/heartbeat")).unwrap();
        assert_eq!(p["id"], "w1");
        assert!(t.matches(&segs("/workspaces/w1")).is_none());
        assert!(t.matches(&segs("/workspaces/w1/other")).is_none());
        for bad in
            ["workspaces", "/", "/a//b", "/a/", "/{id}", "/a/{x}/{x}", "/a/b{c}", "/ws/x", "/admin", "/a b"]
        {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(service_name(HttpMethod::Get, "/hello/{name}").unwrap(), "http:GET /hello/{}");
        assert!(
            Template::parse("/a/b").unwrap().specificity() > Template::parse("/a/{x}").unwrap().specificity()
        );
    }

    #[test]
    fn query_numbers_and_bodies_are_checked_with_a_400_naming_the_problem() {
        let req = |query: &[(&str, &str)], body: Option<Value>| HttpRequest {
            method: HttpMethod::Get,
            path: "/x".into(),
            template: "/x".into(),
            params: BTreeMap::new(),
            query: query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body,
        };
        let r = req(&[("limit", "5"), ("beforeSeq", "0"), ("sinceSeq", " ")], None);
        assert_eq!(r.query_number("limit", 1).unwrap(), Some(5));
        let e = r.query_number("beforeSeq", 1).unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (400, "bad_request"));
        assert!(e.message.contains("`beforeSeq` must be an integer of at least 1"), "{e}");
        assert_eq!(r.query_number("sinceSeq", 0).unwrap(), None, "blank is left out");
        assert_eq!(r.query_number("absent", 0).unwrap(), None);

        #[derive(Debug, Deserialize)]
        struct Body {
            #[allow(dead_code)]
            n: u32,
        }
        assert!(r.body_as::<Body>().unwrap_err().message.contains("empty"));
        let e = req(&[], Some(serde_json::json!([1]))).body_as::<Body>().unwrap_err();
        assert!(e.message.contains("must be a JSON object"), "{e}");
        let e = req(&[], Some(serde_json::json!({"n": "x"}))).body_as::<Body>().unwrap_err();
        assert!(e.message.starts_with("invalid request: "), "{e}");
        assert!(req(&[], Some(serde_json::json!({"n": 3}))).body_as::<Body>().is_ok());
        assert_eq!(status_of_code("not_found"), 404);
        assert_eq!(status_of_code("whatever"), 500);
    }

    #[test]
    fn requests_and_answers_are_camel_case_json() {
        let req = RouteRequest::Handle {
            request: HttpRequest {
                method: HttpMethod::Get,
                path: "/hello/J%C3%BCrgen".into(),
                template: "/hello/{name}".into(),
                params: [("name".to_owned(), "Jürgen".to_owned())].into(),
                query: vec![("greeting".into(), "Howdy".into())],
                body: None,
            },
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(v["op"], "handle");
        assert_eq!(v["request"]["method"], "GET");
        assert_eq!(serde_json::from_value::<RouteRequest>(v).unwrap(), req);
        assert_eq!(
            serde_json::to_value(HttpResponse::problem(404, "not_found", "no")).unwrap(),
            serde_json::json!({"status": 404, "body": {"error": "no", "code": "not_found"}})
        );
    }
}
