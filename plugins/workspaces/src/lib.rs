//! # workspaces — the `/workspaces` routes
//!
//! WIRE.md "Workspaces". A workspace groups conversations and gives them
//! defaults (a working directory, a computer); the store keeps it (so
//! every store serves it, and several hosts share it), this plugin answers
//! its routes:
//!
//! | route | does |
//! |---|---|
//! | `GET /workspaces` | every workspace with its conversation count, most recently active first, `default` always |
//! | `PUT /workspaces/:id` | create on miss (`{title?, defaultCwd?}`); an existing one answered unchanged |
//! | `GET /workspaces/:id` | one (`404` when unknown) |
//! | `PUT /workspaces/:id/title`, `/default-cwd`, `/default-computer` | set a field, creating on miss |
//! | `PUT`/`DELETE /workspaces/:id/star` | star, unstar |
//! | `DELETE /workspaces/:id` | close every conversation of it as `POST …/close` does, move them to `default`, forget it |
//!
//! The session resolves a turn's working directory against its workspace's
//! `defaultCwd` by asking the store itself, so it works without this
//! plugin; without it these routes answer `503`.

use dispatch_abi::runtime::{PluginRuntime, Runner};
use dispatch_abi::{codes, Context, Error, Host, Plugin, PluginManifest};
use dispatch_contracts::http::{self, problem, HttpMethod, HttpRequest, HttpResponse, Problem, Route};
use dispatch_contracts::openapi::Operation;
use dispatch_contracts::protocol::store::{Listing, MetaUpdate, StoreRequest};
use dispatch_contracts::protocol::wire::ConversationStatus;
use dispatch_contracts::session::{SessionRequest, SESSION};
use dispatch_contracts::store::STORE;
use dispatch_contracts::workspace::{
    is_valid_slug, Workspace, WorkspaceDeleted, WorkspaceList, WorkspaceUpdate, DEFAULT_WORKSPACE, DELETED,
    SLUG_RULE,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

/// The plugin.
pub struct Workspaces {
    runtime: Option<PluginRuntime>,
}

impl std::fmt::Debug for Workspaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspaces").finish_non_exhaustive()
    }
}

/// The `:id` of the path, a slug, else WIRE.md's `400 invalid_slug`.
fn slug(req: &HttpRequest) -> Result<String, Problem> {
    let id = req.param("id").unwrap_or_default();
    if is_valid_slug(id) {
        Ok(id.to_owned())
    } else {
        Err(Problem::new(400, "invalid_slug", SLUG_RULE))
    }
}

/// The body as an object: WIRE.md's 400 for anything else.
fn object(req: &HttpRequest) -> Result<Map<String, Value>, Problem> {
    match &req.body {
        Some(Value::Object(o)) => Ok(o.clone()),
        _ => Err(Problem::new(400, "invalid_body", "Request body must be a JSON object")),
    }
}

/// A directory or computer field: a non-empty string sets it, anything
/// else (absent, `null`, another type, `""`) clears it.
fn clearable(body: &Map<String, Value>, field: &str) -> Option<String> {
    body.get(field).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

async fn store<T: DeserializeOwned>(host: &Host, req: StoreRequest) -> Result<T, Problem> {
    let v = host.call(&STORE, &req).await.map_err(problem)?;
    serde_json::from_value(v)
        .map_err(|e| Problem::new(500, "internal", format!("the store answered something unexpected: {e}")))
}

async fn put(host: &Host, update: WorkspaceUpdate) -> Result<HttpResponse, Problem> {
    let w: Workspace = store(host, StoreRequest::PutWorkspace(update)).await?;
    Ok(HttpResponse::ok(&w))
}

/// Close every conversation of workspace `id` as `POST …/close` does, in
/// `default` by then (so the broadcast names it), and forget the
/// workspace; answers how many there were.
async fn delete(host: &Host, id: String) -> Result<HttpResponse, Problem> {
    if id == DEFAULT_WORKSPACE {
        return Err(Problem::new(409, "default_workspace", "The \"default\" workspace cannot be deleted"));
    }
    let listing: Listing = store(host, StoreRequest::List { prefix: None, status: None }).await?;
    let mine: Vec<String> =
        listing.conversations.into_iter().filter(|c| c.workspace_id == id).map(|c| c.id).collect();
    for conversation_id in &mine {
        let moved = MetaUpdate {
            conversation_id: conversation_id.clone(),
            workspace_id: Some(DEFAULT_WORKSPACE.to_owned()),
            ..MetaUpdate::default()
        };
        let _: Value = store(host, StoreRequest::Update(moved)).await?;
        let close = SessionRequest::Close { conversation_id: conversation_id.clone() };
        match host.call(&SESSION, &close).await {
            Ok(_) => {}
            // No session on this host: nothing runs; the status is the
            // store's to keep.
            Err(e) if e.code() == codes::NOT_FOUND => {
                let closed = MetaUpdate {
                    conversation_id: conversation_id.clone(),
                    status: Some(ConversationStatus::Closed),
                    ..MetaUpdate::default()
                };
                let _: Value = store(host, StoreRequest::Update(closed)).await?;
            }
            Err(e) => return Err(problem(e)),
        }
    }
    let _: Value = store(host, StoreRequest::DeleteWorkspace { id: id.clone() }).await?;
    let deleted = WorkspaceDeleted { workspace_id: id, closed_count: mine.len() as u64 };
    if let Err(e) = host.publish(&DELETED, &deleted) {
        tracing::warn!(error = %e, "cannot announce the deleted workspace");
    }
    Ok(HttpResponse::ok(&deleted))
}

fn op(summary: &str, id: &str) -> Operation {
    Operation::new(summary).id(id).tag("workspaces")
}

/// A workspace slug, as JSON Schema.
const SLUG_PATTERN: &str = "^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$";

fn with_id(o: Operation) -> Operation {
    o.path_param_with(
        "id",
        "The workspace's slug (1–40 of a-z 0-9 -, no hyphen at either end)",
        json!({"type": "string", "pattern": SLUG_PATTERN}),
    )
}

/// A route whose handler runs on the plugin's runtime with the host.
fn route<F, Fut>(host: &Host, runner: &Runner, method: HttpMethod, path: &str, handler: F) -> Route
where
    F: Fn(Host, HttpRequest) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<HttpResponse, Problem>> + Send + 'static,
{
    let host = host.clone();
    Route::on_runtime(runner, method, path, move |req| handler(host.clone(), req))
}

fn routes(host: &Host, runner: &Runner) -> Vec<Route> {
    use HttpMethod::{Delete, Get, Put};
    let object_body = |props: Value| json!({"type": "object", "properties": props});
    vec![
        route(host, runner, Get, "/workspaces", |host, _req| async move {
            let list: WorkspaceList = store(&host, StoreRequest::Workspaces).await?;
            Ok(HttpResponse::ok(&list))
        })
        .operation(
            op("List the workspaces, most recently active first", "listWorkspaces").returns::<WorkspaceList>(
                200,
                "Every workspace with its conversation count; `default` always",
            ),
        ),
        route(host, runner, Put, "/workspaces/{id}", |host, req| async move {
            let id = slug(&req)?;
            // Absent or not an object: `{}` (the frontend sends `{}` on
            // every visit).
            let body = match &req.body {
                Some(Value::Object(o)) => o.clone(),
                _ => Map::new(),
            };
            let title = body.get("title").and_then(Value::as_str).map(str::trim).filter(|t| !t.is_empty());
            let default_cwd = match body.get("defaultCwd") {
                Some(Value::String(_) | Value::Null) => Some(clearable(&body, "defaultCwd")),
                _ => None,
            };
            let update = WorkspaceUpdate {
                id,
                create_only: true,
                title: title.map(str::to_owned),
                default_cwd,
                ..WorkspaceUpdate::default()
            };
            put(&host, update).await
        })
        .operation(
            with_id(op("Create a workspace if it does not exist", "ensureWorkspace"))
                .body_with(
                    json!({"description": "Optional `{title?: string, defaultCwd?: string | null}`, used only \
                        when the workspace is created; anything else (or no body) counts as `{}`"}),
                    false,
                )
                .returns::<Workspace>(200, "The workspace (an existing one unchanged)")
                .error(400, &["invalid_slug"]),
        ),
        route(host, runner, Get, "/workspaces/{id}", |host, req| async move {
            let id = req.param("id").unwrap_or_default().to_owned();
            let found: Option<Workspace> = if is_valid_slug(&id) {
                store(&host, StoreRequest::GetWorkspace { id }).await?
            } else {
                None
            };
            found
                .map(|w| HttpResponse::ok(&w))
                .ok_or_else(|| Problem::new(404, "not_found", "Workspace not found"))
        })
        .operation(
            with_id(op("Read a workspace", "getWorkspace"))
                .returns::<Workspace>(200, "The workspace (`default` even when never persisted)")
                .error(404, &["not_found"]),
        ),
        route(host, runner, Put, "/workspaces/{id}/title", |host, req| async move {
            let id = slug(&req)?;
            let body = object(&req)?;
            let title = body.get("title").and_then(Value::as_str).map(str::trim).filter(|t| !t.is_empty());
            let Some(title) = title else {
                return Err(Problem::new(
                    400,
                    "invalid_body",
                    "Field 'title' is required and must be a non-empty string",
                ));
            };
            put(&host, WorkspaceUpdate { id, title: Some(title.to_owned()), ..WorkspaceUpdate::default() })
                .await
        })
        .operation(
            with_id(op("Rename a workspace (created if missing)", "setWorkspaceTitle"))
                .body_with(
                    json!({"type": "object", "required": ["title"],
                           "properties": {"title": {"type": "string", "pattern": "\\S"}}}),
                    true,
                )
                .returns::<Workspace>(200, "The workspace")
                .error(400, &["invalid_slug", "invalid_body"]),
        ),
        route(host, runner, Put, "/workspaces/{id}/default-cwd", |host, req| async move {
            let id = slug(&req)?;
            let body = object(&req)?;
            let update = WorkspaceUpdate {
                id,
                default_cwd: Some(clearable(&body, "defaultCwd")),
                ..Default::default()
            };
            put(&host, update).await
        })
        .operation(
            with_id(op(
                "Set or clear a workspace's default directory (created if missing)",
                "setWorkspaceDefaultCwd",
            ))
            .description("A non-empty string sets it; anything else clears it. Not checked as a path.")
            .body_with(
                object_body(json!({"defaultCwd": {"description": "A non-empty string sets it; anything else clears it"}})),
                true,
            )
            .returns::<Workspace>(200, "The workspace")
            .error(400, &["invalid_slug", "invalid_body"]),
        ),
        route(host, runner, Put, "/workspaces/{id}/default-computer", |host, req| async move {
            let id = slug(&req)?;
            let body = object(&req)?;
            let update = WorkspaceUpdate {
                id,
                default_computer_id: Some(clearable(&body, "computerId")),
                ..Default::default()
            };
            put(&host, update).await
        })
        .operation(
            with_id(op(
                "Set or clear a workspace's default computer (created if missing)",
                "setWorkspaceDefaultComputer",
            ))
            .description("A non-empty string (an SSH alias, not checked) sets it; anything else clears it.")
            .body_with(
                object_body(json!({"computerId": {"description": "A non-empty string sets it; anything else clears it"}})),
                true,
            )
            .returns::<Workspace>(200, "The workspace")
            .error(400, &["invalid_slug", "invalid_body"]),
        ),
        route(host, runner, Put, "/workspaces/{id}/star", |host, req| async move {
            let id = slug(&req)?;
            put(&host, WorkspaceUpdate { id, starred: Some(true), ..Default::default() }).await
        })
        .operation(
            with_id(op("Star a workspace: its turns go first for a busy provider", "starWorkspace"))
                .returns::<Workspace>(200, "The workspace")
                .error(400, &["invalid_slug"]),
        ),
        route(host, runner, Delete, "/workspaces/{id}/star", |host, req| async move {
            let id = slug(&req)?;
            put(&host, WorkspaceUpdate { id, starred: Some(false), ..Default::default() }).await
        })
        .operation(
            with_id(op("Unstar a workspace", "unstarWorkspace"))
                .returns::<Workspace>(200, "The workspace")
                .error(400, &["invalid_slug"]),
        ),
        route(host, runner, Delete, "/workspaces/{id}", |host, req| async move {
            let id = slug(&req)?;
            delete(&host, id).await
        })
        .operation(
            with_id(op("Delete a workspace, closing its conversations", "deleteWorkspace"))
                .description(
                    "Every conversation of it is closed as POST /conversations/{id}/close does (a running \
                     turn aborted) and moved to `default`; an unknown id answers closedCount 0.",
                )
                .returns::<WorkspaceDeleted>(200, "How many conversations were closed")
                .error(400, &["invalid_slug"])
                .error(409, &["default_workspace"]),
        ),
    ]
}

impl Plugin for Workspaces {
    fn manifest() -> PluginManifest {
        http::declare_routes(
            PluginManifest::new("workspaces", env!("CARGO_PKG_VERSION"))
                .description("Workspaces: their routes, kept in the store")
                .depends_on(STORE.name())
                .provides("event", DELETED.name()),
        )
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let host = ctx.host().clone();
        let runtime = PluginRuntime::new("workspaces", 1)?;
        http::serve_all(&host, routes(&host, &runtime.runner()))?;
        Ok(Workspaces { runtime: Some(runtime) })
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        if let Some(mut r) = self.runtime.take() {
            r.shutdown(std::time::Duration::from_secs(5));
        }
        Ok(())
    }
}

dispatch_abi::export_plugin!(Workspaces);
