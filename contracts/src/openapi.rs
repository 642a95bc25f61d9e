//! The server's OpenAPI 3.1 document: each HTTP route describes its own
//! operation ([`Operation`], from the Rust types that travel, through
//! `schemars`), and [`assemble`] puts the described routes together.
//!
//! Why generated and never written by hand: a schema beside the code
//! drifts from it; one derived from the type the handler serializes cannot.
//! OpenAPI 3.1's schema dialect is JSON Schema 2020-12, `schemars`' own.

use std::collections::BTreeMap;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::http::RouteSpec;

/// Where component schemas live in the document.
const COMPONENTS: &str = "/components/schemas";

/// The schema of every error answer: `{"error": message, "code": code}`.
pub const ERROR_SCHEMA: &str = "Error";

/// One operation of the API, built from the types it reads and answers.
#[derive(Debug)]
pub struct Operation {
    op: Map<String, Value>,
    responses: Map<String, Value>,
    outputs: SchemaGenerator,
    inputs: SchemaGenerator,
}

impl Operation {
    /// An operation with a one-line summary.
    pub fn new(summary: &str) -> Operation {
        let mut op = Map::new();
        op.insert("summary".into(), json!(summary));
        let outputs = SchemaGenerator::new(
            SchemaSettings::draft2020_12().for_serialize().with(|s| s.definitions_path = COMPONENTS.into()),
        );
        // Request bodies inline their schemas: a type's input shape
        // (defaults, aliases) differs from its output shape, and both
        // cannot live under one component name.
        let inputs = SchemaGenerator::new(SchemaSettings::draft2020_12().for_deserialize().with(|s| {
            s.definitions_path = COMPONENTS.into();
            s.inline_subschemas = true;
        }));
        Operation { op, responses: Map::new(), outputs, inputs }
    }

    /// Its stable id (for generated clients and for links).
    pub fn id(mut self, operation_id: &str) -> Operation {
        self.op.insert("operationId".into(), json!(operation_id));
        self
    }

    /// A longer description (Markdown).
    pub fn description(mut self, text: &str) -> Operation {
        self.op.insert("description".into(), json!(text));
        self
    }

    /// Tag it (the document groups operations by tag).
    pub fn tag(mut self, tag: &str) -> Operation {
        self.op.insert("tags".into(), json!([tag]));
        self
    }

    fn param(mut self, param: Value) -> Operation {
        let list = self.op.entry("parameters").or_insert_with(|| json!([]));
        if let Value::Array(a) = list {
            a.push(param);
        }
        self
    }

    /// A path parameter (a string).
    pub fn path_param(self, name: &str, description: &str) -> Operation {
        self.path_param_with(name, description, json!({"type": "string", "minLength": 1}))
    }

    /// A path parameter with its own schema.
    pub fn path_param_with(self, name: &str, description: &str, schema: Value) -> Operation {
        self.param(json!({"name": name, "in": "path", "required": true, "description": description, "schema": schema}))
    }

    /// An optional query parameter of type `T`.
    pub fn query<T: JsonSchema>(mut self, name: &str, description: &str) -> Operation {
        let schema = self.inputs.subschema_for::<T>().to_value();
        self.param(json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema}))
    }

    /// An optional query number as [`crate::http::HttpRequest::query_number`]
    /// reads it: an integer of at least `min`, or blank (= left out).
    pub fn query_number(self, name: &str, description: &str, min: u64) -> Operation {
        let schema = json!({"anyOf": [
            {"type": "integer", "minimum": min, "maximum": u64::MAX},
            {"type": "string", "pattern": "^\\s*$"}
        ]});
        self.query_with(name, description, schema)
    }

    /// An optional query parameter with its own schema.
    pub fn query_with(self, name: &str, description: &str, schema: Value) -> Operation {
        self.param(json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema}))
    }

    /// A query parameter the operation cannot do without, with its schema.
    pub fn query_required(self, name: &str, description: &str, schema: Value) -> Operation {
        self.param(json!({"name": name, "in": "query", "required": true, "description": description, "schema": schema}))
    }

    /// A JSON request body of type `T` (required).
    pub fn body<T: JsonSchema>(mut self) -> Operation {
        let schema = self.inputs.subschema_for::<T>().to_value();
        self.op.insert(
            "requestBody".into(),
            json!({"required": true, "content": {"application/json": {"schema": schema}}}),
        );
        self
    }

    /// A JSON request body with its own schema; `required` false when it
    /// may be left out.
    pub fn body_with(mut self, schema: Value, required: bool) -> Operation {
        self.op.insert(
            "requestBody".into(),
            json!({"required": required, "content": {"application/json": {"schema": schema}}}),
        );
        self
    }

    /// A JSON answer of type `T` with `status`.
    pub fn returns<T: JsonSchema>(mut self, status: u16, description: &str) -> Operation {
        let schema = self.outputs.subschema_for::<T>().to_value();
        self.returns_with(status, description, schema)
    }

    /// A JSON answer with its own schema.
    pub fn returns_with(mut self, status: u16, description: &str, schema: Value) -> Operation {
        self.responses.insert(
            status.to_string(),
            json!({"description": description, "content": {"application/json": {"schema": schema}}}),
        );
        self
    }

    /// A text answer of `content_type` (not JSON: Prometheus' exposition
    /// format, say).
    pub fn returns_text(mut self, status: u16, content_type: &str, description: &str) -> Operation {
        self.responses.insert(
            status.to_string(),
            json!({"description": description, "content": {content_type: {"schema": {"type": "string"}}}}),
        );
        self
    }

    /// An NDJSON answer (`200`), each line a `T`.
    pub fn returns_ndjson<T: JsonSchema>(mut self, description: &str) -> Operation {
        let schema = self.outputs.subschema_for::<T>().to_value();
        self.responses.insert(
            "200".into(),
            json!({"description": description, "content": {"application/x-ndjson": {"itemSchema": schema, "schema": {"type": "string"}}}}),
        );
        self
    }

    /// An answer header of the `status` answer (declare the answer first).
    pub fn response_header(mut self, status: u16, name: &str, description: &str) -> Operation {
        if let Some(Value::Object(r)) = self.responses.get_mut(&status.to_string()) {
            let headers = r.entry("headers").or_insert_with(|| json!({}));
            if let Value::Object(h) = headers {
                h.insert(name.into(), json!({"description": description, "schema": {"type": "string"}}));
            }
        }
        self
    }

    /// An error answer with `status`, and the codes it carries.
    pub fn error(mut self, status: u16, codes: &[&str]) -> Operation {
        let description = format!("`{}`", codes.join("`, `"));
        let schema = json!({"$ref": format!("#{COMPONENTS}/{ERROR_SCHEMA}")});
        let merged = match self.responses.get(&status.to_string()) {
            // Two calls for one status: list every code.
            Some(Value::Object(r)) => {
                let old = r.get("description").and_then(Value::as_str).unwrap_or("");
                format!("{old}, {description}")
            }
            _ => description,
        };
        self.responses.insert(
            status.to_string(),
            json!({"description": merged, "content": {"application/json": {"schema": schema}}}),
        );
        self
    }

    /// The Operation Object and the component schemas it refers to.
    pub fn into_parts(mut self) -> (Value, BTreeMap<String, Value>) {
        self.op.insert("responses".into(), Value::Object(self.responses));
        let mut schemas: BTreeMap<String, Value> = self.outputs.take_definitions(true).into_iter().collect();
        for (name, schema) in self.inputs.take_definitions(true) {
            schemas.entry(name).or_insert(schema);
        }
        (Value::Object(self.op), schemas)
    }
}

/// The `Error` component: every error answer's shape.
pub fn error_schema() -> Value {
    json!({
        "type": "object",
        "description": "Every error answer. `code` is stable; `error` is for people.",
        "properties": {
            "error": {"type": "string", "description": "What went wrong, for people."},
            "code": {"type": "string", "description": "The stable code (bad_request, not_found, conflict, unavailable, …)."}
        },
        "required": ["error", "code"]
    })
}

/// A route as the document shows it: its spec and the plugin that serves it.
#[derive(Debug, Clone)]
pub struct Described {
    /// What the route said of itself.
    pub spec: RouteSpec,
    /// The plugin that answers it (`x-dispatch-plugin`).
    pub plugin: String,
}

/// The OpenAPI 3.1 document of `routes`, for server `version`. Each
/// operation names its plugin (`x-dispatch-plugin`); the error shape is
/// the `Error` component; operations in the document are sorted by path
/// and method, so the same server answers the same bytes.
pub fn assemble(version: &str, routes: &[Described]) -> Value {
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut schemas: BTreeMap<String, Value> = BTreeMap::new();
    schemas.insert(ERROR_SCHEMA.into(), error_schema());
    for r in routes {
        let mut op = match &r.spec.operation {
            Value::Object(o) => o.clone(),
            _ => Map::new(),
        };
        if !op.contains_key("responses") {
            op.insert("responses".into(), json!({"default": {"description": "Not described by its plugin"}}));
        }
        // Every path parameter must be declared: add the ones a plugin left out.
        let declared: Vec<String> = op
            .get("parameters")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter().filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_owned)).collect()
            })
            .unwrap_or_default();
        let mut extra = Vec::new();
        for seg in r.spec.path.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if !declared.iter().any(|d| d == name) {
                    extra.push(
                        json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}),
                    );
                }
            }
        }
        if !extra.is_empty() {
            if let Value::Array(a) = op.entry("parameters").or_insert_with(|| json!([])) {
                a.extend(extra);
            }
        }
        op.insert("x-dispatch-plugin".into(), json!(r.plugin));
        for (name, schema) in &r.spec.schemas {
            schemas.entry(name.clone()).or_insert_with(|| schema.clone());
        }
        paths
            .entry(r.spec.path.clone())
            .or_default()
            .insert(r.spec.method.as_str().to_ascii_lowercase(), Value::Object(op));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Dispatch",
            "version": version,
            "description": "The HTTP API of a Dispatch server: the routes of the plugins it has loaded. Errors are `{\"error\", \"code\"}`; see WIRE.md.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// The operations `transport-http` answers itself (`/health`,
/// `/extensions`, `/openapi.json`, the WebSocket upgrade at `/ws`): here,
/// beside the assembly, so `dispatch openapi` describes them without
/// starting the transport.
pub fn transport_operations() -> Vec<Described> {
    use crate::http::HttpMethod;
    use crate::plugins::PluginList;
    #[derive(serde::Serialize, JsonSchema)]
    struct Health {
        ok: bool,
    }

    let own = |path: &str, op: Operation| {
        let (operation, schemas) = op.into_parts();
        Described {
            spec: RouteSpec { method: HttpMethod::Get, path: path.into(), operation, schemas },
            plugin: "transport-http".into(),
        }
    };
    vec![
        own(
            "/health",
            Operation::new("Whether the server can serve (its store answers)")
                .id("health")
                .tag("server")
                .returns::<Health>(200, "`{\"ok\": true}`")
                // `{"ok": false, "error", "code": "unavailable"}`: the store
                // cannot be reached.
                .error(503, &["unavailable"]),
        ),
        own(
            "/extensions",
            Operation::new("List the loaded plugins and what they registered")
                .id("listExtensions")
                .tag("server")
                .returns::<PluginList>(200, "The plugins, in activation order"),
        ),
        own(
            "/openapi.json",
            Operation::new("This document").id("openapi").tag("server").returns_with(
                200,
                "The OpenAPI 3.1 document of the routes loaded now",
                json!({"type": "object"}),
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::http::HttpMethod;

    #[derive(serde::Serialize, serde::Deserialize, JsonSchema)]
    struct Inner {
        n: u32,
    }

    #[derive(serde::Serialize, serde::Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    struct Thing {
        thing_id: String,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[test]
    fn an_operation_refers_to_its_answers_schemas_and_the_document_holds_them() {
        let (op, schemas) = Operation::new("Read a thing")
            .id("getThing")
            .path_param("id", "Its id")
            .body::<Thing>()
            .returns::<Thing>(200, "The thing")
            .error(404, &["not_found"])
            .into_parts();
        assert_eq!(
            op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Thing"
        );
        assert_eq!(
            op["responses"]["404"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Error"
        );
        // The request body is inline, in its input shape: `inner` may be left out.
        let body = &op["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(body["required"], json!(["thingId"]), "{body}");
        assert!(schemas.contains_key("Thing") && schemas.contains_key("Inner"), "{schemas:?}");
        let spec =
            RouteSpec { method: HttpMethod::Get, path: "/things/{id}/{part}".into(), operation: op, schemas };
        let doc = assemble("1.0", &[Described { spec, plugin: "things".into() }]);
        let get = &doc["paths"]["/things/{id}/{part}"]["get"];
        assert_eq!(get["x-dispatch-plugin"], "things");
        assert_eq!(get["parameters"].as_array().unwrap().len(), 2, "the undeclared `part` is added");
        assert!(doc["components"]["schemas"]["Error"].is_object());
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
