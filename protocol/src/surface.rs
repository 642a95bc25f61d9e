//! Surfaces: the typed, frontend-agnostic description of data a plugin
//! shows a client (`SurfaceSpec` in WIRE.md), and the bus contract of the
//! `surfaces` registry plugin. Shared here so first-party plugins agree on
//! the JSON without linking each other.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A reference to an action a field can invoke.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActionRef {
    /// The action's id within its surface.
    pub action_id: String,
}

/// One option of a selector field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SurfaceOption {
    /// The value sent back when chosen.
    pub value: String,
    /// What a person sees.
    pub label: String,
}

/// A field: a semantic value, not a widget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum SurfaceField {
    /// A boolean plus the action that flips it.
    Toggle {
        /// Label.
        label: String,
        /// Current value.
        value: bool,
        /// Flips it.
        action: ActionRef,
    },
    /// A ratio in [0, 1].
    Progress {
        /// Label.
        label: String,
        /// The ratio.
        value: f64,
    },
    /// An enum choice.
    Selector {
        /// Label.
        label: String,
        /// Current value.
        value: String,
        /// The choices.
        options: Vec<SurfaceOption>,
        /// Sets it.
        action: ActionRef,
    },
    /// A number the client may set, within bounds.
    Number {
        /// Label.
        label: String,
        /// Current value.
        value: f64,
        /// Lowest allowed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        /// Highest allowed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
        /// Increment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<f64>,
        /// Unit shown beside it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unit: Option<String>,
        /// Sets it.
        action: ActionRef,
    },
    /// A read-only labelled value.
    Stat {
        /// Label.
        label: String,
        /// The value, as text.
        value: String,
    },
    /// An action trigger.
    Button {
        /// Label.
        label: String,
        /// What it does.
        action: ActionRef,
    },
    /// Anything else: clients with a renderer for `renderer_id` show it,
    /// others skip it.
    Custom {
        /// Which renderer.
        renderer_id: String,
        /// Its data.
        payload: serde_json::Value,
    },
}

/// A surface: ordered fields mounted in a region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SurfaceSpec {
    /// Unique id.
    pub id: String,
    /// Placement hint (`side`, …).
    pub region: String,
    /// Title.
    pub title: String,
    /// The fields, in order.
    pub fields: Vec<SurfaceField>,
}

/// Whether a surface is global or per conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Scope {
    /// One for the whole server.
    Global,
    /// One per conversation.
    Conversation,
}

/// A catalog entry: discovery metadata, no field data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// Surface id.
    pub id: String,
    /// Placement hint.
    pub region: String,
    /// Title.
    pub title: String,
    /// Scope, when declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
}

/// A request to the registry service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub enum RegistryRequest {
    /// Add a surface; answers its spec and the owner's `token`. Replacing a
    /// registered surface of the same id needs that surface's token.
    Register {
        /// The surface.
        spec: SurfaceSpec,
        /// Its scope.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<Scope>,
        /// The token of the surface being replaced (none for a new one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Conversation scope: what a conversation shows before its own
        /// instance is set (`spec` is then what a client shows with no
        /// conversation at all). Absent: `spec` for both.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conversation_spec: Option<SurfaceSpec>,
    },
    /// Replace the spec of a registered surface (the owner only). For a
    /// conversation-scoped surface, with `conversation_id`: that
    /// conversation's spec; without: the spec of conversations that have
    /// none of their own.
    Update {
        /// The new spec (its `id` names the surface).
        spec: SurfaceSpec,
        /// The token `register` answered.
        token: String,
        /// Which conversation's instance (conversation scope only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conversation_id: Option<String>,
    },
    /// Remove a surface (the owner only); with `conversation_id`, only that
    /// conversation's instance (it then shows the default spec again).
    Remove {
        /// Which.
        surface_id: String,
        /// The token `register` answered.
        token: String,
        /// Which conversation's instance.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conversation_id: Option<String>,
    },
    /// The current spec of one surface (of one conversation, for a
    /// conversation-scoped one).
    Get {
        /// Which.
        surface_id: String,
        /// Which conversation (ignored for a global surface).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conversation_id: Option<String>,
    },
    /// Every registered surface's catalog entry.
    Catalog,
    /// Invoke a field's action: published to the owner as [`SurfaceAction`].
    Invoke {
        /// Which surface.
        surface_id: String,
        /// Which action.
        action_id: String,
        /// The new value, if any.
        #[serde(default)]
        payload: serde_json::Value,
        /// Which conversation's instance (required for a
        /// conversation-scoped surface).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conversation_id: Option<String>,
    },
}

/// The registry's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryResponse {
    /// For `get`, `register`, `update`: the surface's spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<SurfaceSpec>,
    /// For `catalog`: the entries, in registration order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<Vec<CatalogEntry>>,
    /// For `register`: the owner's token, which `update`, `remove` and a
    /// replacing `register` must present. The bus does not say who calls a
    /// service, so ownership is this capability: keep it to yourself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Published on every change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SurfaceChanged {
    /// Which surface.
    pub surface_id: String,
    /// Its new spec; absent when it was removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<SurfaceSpec>,
    /// True when the catalog changed (added, removed, retitled).
    pub catalog_changed: bool,
    /// The conversation whose instance changed (conversation scope); none
    /// for the surface itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// True when the change was made on another host and relayed here (a
    /// cluster relays only its own hosts' changes, so none travels twice).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remote: bool,
}

/// Published when a client invokes an action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SurfaceAction {
    /// Which surface.
    pub surface_id: String,
    /// Which action.
    pub action_id: String,
    /// The value sent.
    pub payload: serde_json::Value,
    /// The conversation whose instance it was invoked on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_serialize_as_the_wire_contract_spells_them() {
        let spec = SurfaceSpec {
            id: "s".into(),
            region: "side".into(),
            title: "T".into(),
            fields: vec![
                SurfaceField::Toggle {
                    label: "On".into(),
                    value: true,
                    action: ActionRef { action_id: "flip".into() },
                },
                SurfaceField::Custom {
                    renderer_id: "table".into(),
                    payload: json!({"columns": ["A"], "rows": [["x"]]}),
                },
            ],
        };
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            v,
            json!({"id": "s", "region": "side", "title": "T", "fields": [
                {"kind": "toggle", "label": "On", "value": true, "action": {"actionId": "flip"}},
                {"kind": "custom", "rendererId": "table", "payload": {"columns": ["A"], "rows": [["x"]]}}
            ]})
        );
        assert_eq!(serde_json::from_value::<SurfaceSpec>(v).unwrap(), spec);
    }

    #[test]
    fn registry_requests_are_tagged_by_op() {
        let r: RegistryRequest = serde_json::from_value(json!({"op": "get", "surfaceId": "x"})).unwrap();
        assert_eq!(r, RegistryRequest::Get { surface_id: "x".into(), conversation_id: None });
        let v =
            json!({"kind": "number", "label": "Temp", "value": 0.5, "max": 2.0, "action": {"actionId": "t"}});
        let f: SurfaceField = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&f).unwrap(), v);
        assert!(serde_json::from_value::<RegistryRequest>(json!({"op": "explode"})).is_err());
    }
}
