//! # extensions-surface — the "Loaded Extensions" surface
//!
//! Shows every configured plugin — name, version, state, activation order,
//! error — as a surface in the `surfaces` registry, kept current as the
//! host reports plugin state changes. It uses two other parties through the
//! bus only: the host's `dispatch.plugins` service and `dispatch.plugin-state`
//! event, and the `surfaces` plugin's registry service.

use dispatch_abi::{Context, Error, Host, Plugin, PluginManifest};
use dispatch_contracts::plugins::{PluginList, State, PLUGINS, PLUGIN_STATE};
use dispatch_contracts::surface::{RegistryRequest, Scope, SurfaceField, SurfaceSpec, REGISTRY};
use serde_json::{json, Value};

/// The surface's id.
pub const SURFACE_ID: &str = "loaded-extensions";

/// Build the surface from the host's plugin list: an "Active" count and a
/// table (`rendererId: "table"`, `{columns, rows}`) with one row per plugin.
pub fn build_spec(list: &PluginList) -> SurfaceSpec {
    let active = list.plugins.iter().filter(|p| p.state == State::Active).count();
    let rows: Vec<Value> = list
        .plugins
        .iter()
        .map(|p| {
            json!([
                p.id,
                p.version.clone().unwrap_or_default(),
                p.state.as_str(),
                p.order.map(|o| o.to_string()).unwrap_or_default(),
                p.error.clone().unwrap_or_default(),
            ])
        })
        .collect();
    SurfaceSpec {
        id: SURFACE_ID.into(),
        region: "side".into(),
        title: "Loaded Extensions".into(),
        fields: vec![
            SurfaceField::Stat {
                label: "Loaded".into(),
                value: format!("{active} of {}", list.plugins.len()),
            },
            SurfaceField::Custom {
                renderer_id: "table".into(),
                payload: json!({
                    "columns": ["Name", "Version", "State", "Order", "Error"],
                    "rows": rows,
                }),
            },
        ],
    }
}

/// The plugin.
#[derive(Debug)]
pub struct ExtensionsSurface;

async fn refresh(host: Host, token: std::sync::Arc<str>) -> Result<(), Error> {
    let list = host.call(&PLUGINS, &json!({})).await?;
    let update =
        RegistryRequest::Update { spec: build_spec(&list), token: token.to_string(), conversation_id: None };
    host.call(&REGISTRY, &update).await?;
    Ok(())
}

impl Plugin for ExtensionsSurface {
    fn manifest() -> PluginManifest {
        PluginManifest::new("extensions-surface", env!("CARGO_PKG_VERSION"))
            .description("The Loaded Extensions surface: every plugin, its version and state")
            .depends_on("surfaces")
            .provides("surface", SURFACE_ID)
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let host = ctx.host().clone();
        host.require(&REGISTRY)?;
        let list = host.call_blocking(&PLUGINS, &json!({}))?;
        let registered = host.call_blocking(
            &REGISTRY,
            &RegistryRequest::Register { spec: build_spec(&list), scope: Some(Scope::Global), token: None },
        )?;
        // The registry's proof that the surface is ours, for every update.
        let token: std::sync::Arc<str> = registered
            .token
            .ok_or_else(|| Error::msg("the surfaces registry answered no token for our surface"))?
            .into();
        let h = host.clone();
        host.subscribe(&PLUGIN_STATE, move |_changed| refresh(h.clone(), std::sync::Arc::clone(&token)))?;
        tracing::info!(surface = SURFACE_ID, plugins = list.plugins.len(), "surface registered");
        Ok(ExtensionsSurface)
    }
}

dispatch_abi::export_plugin!(ExtensionsSurface);

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
        assert_eq!(v["fields"][0], json!({"kind": "stat", "label": "Loaded", "value": "1 of 2"}));
        assert_eq!(v["fields"][1]["rendererId"], "table");
        assert_eq!(
            v["fields"][1]["payload"]["rows"],
            json!([["surfaces", "0.1.0", "active", "1", ""], ["broken", "", "failed", "", "file not found"]])
        );
    }
}
