//! # standard-surfaces — the surfaces Dispatch ships
//!
//! Three surfaces in the `surfaces` registry, each kept current from bus
//! events, so the plugins whose state they show stay unaware of any UI:
//!
//! | surface | scope | fed by | actions |
//! |---|---|---|---|
//! | `loaded-extensions` ("Loaded Extensions") | global | the host's `dispatch.plugins` / `dispatch.plugin-state` | — |
//! | `todo` ("Tasks") | conversation | `todo.changed` (the `todo_write` tool) | — |
//! | `message-queue` ("Message Queue") | conversation | `message-queue.changed` | `cancel` `{messageId}` |
//!
//! Subscribing to an event needs no publisher, so the todo and queue
//! surfaces are registered even when `tool-todo` or `message-queue` are
//! not loaded: they then stay empty. The one dependency is the registry.

use std::sync::Arc;

use dispatch_abi::{Context, Error, Host, Plugin, PluginManifest};
use dispatch_contracts::plugins::{PluginList, State, PLUGINS, PLUGIN_STATE};
use dispatch_contracts::queue::{QueueRequest, QueueState, QUEUE};
use dispatch_contracts::surface::{
    RegistryRequest, Scope, SurfaceAction, SurfaceField, SurfaceSpec, ACTION, REGISTRY,
};
use dispatch_contracts::todo::TodoList;
use serde_json::{json, Value};

/// The "Loaded Extensions" surface's id.
pub const SURFACE_ID: &str = "loaded-extensions";
/// The per-conversation task list's surface id.
pub const TODO_SURFACE: &str = "todo";
/// The per-conversation message queue's surface id.
pub const QUEUE_SURFACE: &str = "message-queue";
/// The queue surface's action that withdraws a message (`{"messageId"}`).
pub const CANCEL_ACTION: &str = "cancel";

/// Build the surface from the host's plugin list, as WIRE.md spells it: a
/// "Loaded" stat (the plugins active now) and a table (`rendererId:
/// "table"`, `{columns, rows}`) with one row per configured plugin — name,
/// version, state (with the error, for one that failed), activation order.
pub fn build_spec(list: &PluginList) -> SurfaceSpec {
    let active = list.plugins.iter().filter(|p| p.state == State::Active).count();
    let rows: Vec<Value> = list
        .plugins
        .iter()
        .map(|p| {
            json!([
                p.id,
                p.version.clone().unwrap_or_default(),
                match &p.error {
                    Some(e) => format!("{}: {e}", p.state.as_str()),
                    None => p.state.as_str().to_owned(),
                },
                p.order.map(|o| o.to_string()).unwrap_or_default(),
            ])
        })
        .collect();
    SurfaceSpec {
        id: SURFACE_ID.into(),
        region: "side".into(),
        title: "Loaded Extensions".into(),
        fields: vec![
            SurfaceField::Stat { label: "Loaded".into(), value: active.to_string() },
            SurfaceField::Custom {
                renderer_id: "table".into(),
                payload: json!({
                    "columns": ["Name", "Version", "State", "Order"],
                    "rows": rows,
                }),
            },
        ],
    }
}

/// The task list of one conversation (`rendererId: "todo"`,
/// `{todos: [{content, status}]}`); an empty list is the default every
/// conversation starts with.
pub fn todo_spec(list: Option<&TodoList>) -> SurfaceSpec {
    let todos = list.map(|l| serde_json::to_value(&l.todos).unwrap_or(Value::Null)).unwrap_or(json!([]));
    SurfaceSpec {
        id: TODO_SURFACE.into(),
        region: "side".into(),
        title: "Tasks".into(),
        fields: vec![SurfaceField::Custom { renderer_id: "todo".into(), payload: json!({ "todos": todos }) }],
    }
}

/// The messages waiting in one conversation (`rendererId:
/// "message-queue"`, `{messages: [{id, text, queuedAt}]}`).
pub fn queue_spec(state: Option<&QueueState>) -> SurfaceSpec {
    let messages =
        state.map(|s| serde_json::to_value(&s.messages).unwrap_or(Value::Null)).unwrap_or(json!([]));
    SurfaceSpec {
        id: QUEUE_SURFACE.into(),
        region: "side".into(),
        title: "Message Queue".into(),
        fields: vec![SurfaceField::Custom {
            renderer_id: "message-queue".into(),
            payload: json!({ "messages": messages }),
        }],
    }
}

/// The plugin.
#[derive(Debug)]
pub struct StandardSurfaces;

/// Register `spec` and answer the owner's token, which every update needs.
fn register(host: &Host, spec: SurfaceSpec, scope: Scope) -> Result<Arc<str>, Error> {
    let id = spec.id.clone();
    let registered = host.call_blocking(
        &REGISTRY,
        &RegistryRequest::Register { spec, scope: Some(scope), token: None, conversation_spec: None },
    )?;
    registered
        .token
        .map(Arc::from)
        .ok_or_else(|| Error::msg(format!("the surfaces registry answered no token for surface `{id}`")))
}

async fn update(
    host: Host,
    token: Arc<str>,
    spec: SurfaceSpec,
    conversation_id: Option<String>,
) -> Result<(), Error> {
    host.call(&REGISTRY, &RegistryRequest::Update { spec, token: token.to_string(), conversation_id })
        .await?;
    Ok(())
}

async fn refresh_extensions(host: Host, token: Arc<str>) -> Result<(), Error> {
    let list = host.call(&PLUGINS, &json!({})).await?;
    update(host, token, build_spec(&list), None).await
}

/// A client pressed cancel on a queued message: withdraw it from the
/// queue. The queue's change event then updates the surface.
async fn on_action(host: Host, action: SurfaceAction) -> Result<(), Error> {
    if action.surface_id != QUEUE_SURFACE {
        return Ok(());
    }
    if action.action_id != CANCEL_ACTION {
        return Err(Error::new(
            dispatch_abi::codes::INVALID_PAYLOAD,
            format!(
                "the message-queue surface has no action `{}` (only `{CANCEL_ACTION}`)",
                action.action_id
            ),
        ));
    }
    let message_id = action.payload.get("messageId").and_then(Value::as_str);
    let (Some(conversation_id), Some(message_id)) = (action.conversation_id, message_id) else {
        return Err(Error::new(
            dispatch_abi::codes::INVALID_PAYLOAD,
            "cancel needs the conversation and a payload `{\"messageId\": \"…\"}`",
        ));
    };
    let request = QueueRequest::Cancel { conversation_id, message_id: message_id.to_owned() };
    host.call(&QUEUE, &request).await?;
    Ok(())
}

impl Plugin for StandardSurfaces {
    fn manifest() -> PluginManifest {
        PluginManifest::new("standard-surfaces", env!("CARGO_PKG_VERSION"))
            .description(
                "The surfaces Dispatch ships: Loaded Extensions, each conversation's tasks and message queue",
            )
            .depends_on("surfaces")
            .provides("surface", SURFACE_ID)
            .provides("surface", TODO_SURFACE)
            .provides("surface", QUEUE_SURFACE)
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let host = ctx.host().clone();
        host.require(&REGISTRY)?;

        let list = host.call_blocking(&PLUGINS, &json!({}))?;
        let token = register(&host, build_spec(&list), Scope::Global)?;
        let h = host.clone();
        host.subscribe(&PLUGIN_STATE, move |_changed| refresh_extensions(h.clone(), Arc::clone(&token)))?;

        let token = register(&host, todo_spec(None), Scope::Conversation)?;
        let h = host.clone();
        host.subscribe(&dispatch_contracts::todo::CHANGED, move |list: TodoList| {
            let conversation = list.conversation_id.clone();
            update(h.clone(), Arc::clone(&token), todo_spec(Some(&list)), Some(conversation))
        })?;

        let token = register(&host, queue_spec(None), Scope::Conversation)?;
        let h = host.clone();
        host.subscribe(&dispatch_contracts::queue::CHANGED, move |state: QueueState| {
            let conversation = state.conversation_id.clone();
            update(h.clone(), Arc::clone(&token), queue_spec(Some(&state)), Some(conversation))
        })?;
        let h = host.clone();
        host.subscribe(&ACTION, move |action| on_action(h.clone(), action))?;

        tracing::info!(
            plugins = list.plugins.len(),
            "surfaces registered: loaded-extensions, todo, message-queue"
        );
        Ok(StandardSurfaces)
    }
}

dispatch_abi::export_plugin!(StandardSurfaces);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_table_has_one_row_per_plugin_aligned_to_the_columns() {
        let list: PluginList = serde_json::from_value(json!({"plugins": [
            {"id": "surfaces", "version": "0.1.0", "state": "active", "order": 1},
            {"id": "broken", "state": "failed", "error": "file not found"}
        ]}))
        .unwrap();
        let spec = build_spec(&list);
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["fields"][0], json!({"kind": "stat", "label": "Loaded", "value": "1"}));
        assert_eq!(v["fields"][1]["payload"]["columns"], json!(["Name", "Version", "State", "Order"]));
        assert_eq!(v["fields"][1]["rendererId"], "table");
        assert_eq!(
            v["fields"][1]["payload"]["rows"],
            json!([["surfaces", "0.1.0", "active", "1"], ["broken", "", "failed: file not found", ""]])
        );
    }

    #[test]
    fn todo_and_queue_surfaces_carry_the_payloads_the_frontend_renders() {
        let list: TodoList = serde_json::from_value(json!({"conversationId": "c", "todos": [
            {"content": "read", "status": "completed"}, {"content": "write", "status": "in_progress"}
        ]}))
        .unwrap();
        let v = serde_json::to_value(todo_spec(Some(&list))).unwrap();
        assert_eq!(v["id"], "todo");
        assert_eq!(v["title"], "Tasks");
        assert_eq!(
            v["fields"][0],
            json!({"kind": "custom", "rendererId": "todo", "payload": {"todos": [
                {"content": "read", "status": "completed"}, {"content": "write", "status": "in_progress"}
            ]}})
        );
        assert_eq!(
            serde_json::to_value(todo_spec(None)).unwrap()["fields"][0]["payload"],
            json!({"todos": []})
        );

        let state: QueueState = serde_json::from_value(json!({"conversationId": "c", "messages": [
            {"id": "m1", "text": "also this", "queuedAt": 5}
        ]}))
        .unwrap();
        let v = serde_json::to_value(queue_spec(Some(&state))).unwrap();
        assert_eq!((v["id"].as_str(), v["title"].as_str()), (Some("message-queue"), Some("Message Queue")));
        assert_eq!(
            v["fields"][0],
            json!({"kind": "custom", "rendererId": "message-queue", "payload": {"messages": [
                {"id": "m1", "text": "also this", "queuedAt": 5}
            ]}})
        );
    }
}
