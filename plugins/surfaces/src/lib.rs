//! # surfaces — the surface registry
//!
//! Plugins describe data they want a client to show as *surfaces*
//! ([`SurfaceSpec`]); this plugin keeps them, answers the catalog, and
//! publishes every change on `surfaces.changed` so transports (the
//! WebSocket) can push updates. A client's action invocation is published
//! on `surfaces.action` for the surface's owner to handle.
//!
//! Bus contract (`dispatch_contracts::surface`):
//! service `surfaces` with requests tagged by `op` — `register`, `update`,
//! `remove`, `get`, `catalog`, `invoke`.

use std::sync::{Arc, Mutex, PoisonError};

use dispatch_abi::{codes, Context, Error, Host, Plugin, PluginManifest};
use dispatch_contracts::surface::{
    CatalogEntry, RegistryRequest, RegistryResponse, Scope, SurfaceAction, SurfaceChanged, SurfaceSpec,
    ACTION, CHANGED, REGISTRY,
};

/// The registry's state: surfaces in registration order, each with its
/// owner's token.
#[derive(Debug, Default)]
pub struct Registry {
    entries: Vec<(SurfaceSpec, Option<Scope>, String)>,
}

/// 128 random bits, hex: an owner's token.
fn new_token() -> Result<String, Error> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::msg(format!("cannot make a surface token: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn not_owner(id: &str) -> Error {
    Error::new(
        codes::FORBIDDEN,
        format!("surface `{id}` belongs to another registration: its token does not match"),
    )
}

impl Registry {
    /// Apply one request; answers the response and, when something
    /// changed, the event to publish.
    pub fn apply(&mut self, req: RegistryRequest) -> Result<(RegistryResponse, Option<Outgoing>), Error> {
        let none = RegistryResponse { spec: None, catalog: None, token: None };
        match req {
            RegistryRequest::Register { spec, scope, token } => {
                validate(&spec)?;
                let (changed, token) = match self.position(&spec.id) {
                    Some(i) => {
                        let old = &self.entries[i];
                        if token.as_deref() != Some(old.2.as_str()) {
                            return Err(not_owner(&spec.id));
                        }
                        let retitled =
                            old.0.title != spec.title || old.0.region != spec.region || old.1 != scope;
                        let token = old.2.clone();
                        self.entries[i] = (spec.clone(), scope, token.clone());
                        (retitled, token)
                    }
                    None => {
                        let token = new_token()?;
                        self.entries.push((spec.clone(), scope, token.clone()));
                        (true, token)
                    }
                };
                let (mut response, out) = changed_response(spec, changed);
                response.token = Some(token);
                Ok((response, out))
            }
            RegistryRequest::Update { spec, token } => {
                validate(&spec)?;
                let i = self.owned(&spec.id, &token)?;
                let retitled =
                    self.entries[i].0.title != spec.title || self.entries[i].0.region != spec.region;
                self.entries[i].0 = spec.clone();
                Ok(changed_response(spec, retitled))
            }
            RegistryRequest::Remove { surface_id, token } => {
                let i = self.owned(&surface_id, &token)?;
                self.entries.remove(i);
                let event = SurfaceChanged { surface_id, spec: None, catalog_changed: true };
                Ok((none, Some(Outgoing::Changed(event))))
            }
            RegistryRequest::Get { surface_id } => {
                let i = self.position(&surface_id).ok_or_else(|| unknown(&surface_id))?;
                Ok((RegistryResponse { spec: Some(self.entries[i].0.clone()), ..none }, None))
            }
            RegistryRequest::Catalog => {
                Ok((RegistryResponse { catalog: Some(self.catalog()), ..none }, None))
            }
            RegistryRequest::Invoke { surface_id, action_id, payload } => {
                self.position(&surface_id).ok_or_else(|| unknown(&surface_id))?;
                Ok((none, Some(Outgoing::Action(SurfaceAction { surface_id, action_id, payload }))))
            }
            other => Err(Error::new(codes::UNSUPPORTED, format!("unsupported request {other:?}"))),
        }
    }

    /// The position of surface `id` if `token` is its owner's.
    fn owned(&self, id: &str, token: &str) -> Result<usize, Error> {
        let i = self.position(id).ok_or_else(|| unknown(id))?;
        if self.entries[i].2 != token {
            return Err(not_owner(id));
        }
        Ok(i)
    }

    /// The catalog, in registration order.
    pub fn catalog(&self) -> Vec<CatalogEntry> {
        self.entries
            .iter()
            .map(|(s, scope, _)| CatalogEntry {
                id: s.id.clone(),
                region: s.region.clone(),
                title: s.title.clone(),
                scope: *scope,
            })
            .collect()
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.entries.iter().position(|(s, _, _)| s.id == id)
    }
}

/// An event a registry change produces.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// Publish on `surfaces.changed`.
    Changed(SurfaceChanged),
    /// Publish on `surfaces.action`.
    Action(SurfaceAction),
}

fn changed_response(spec: SurfaceSpec, catalog_changed: bool) -> (RegistryResponse, Option<Outgoing>) {
    let event = SurfaceChanged { surface_id: spec.id.clone(), spec: Some(spec.clone()), catalog_changed };
    (RegistryResponse { spec: Some(spec), catalog: None, token: None }, Some(Outgoing::Changed(event)))
}

fn unknown(id: &str) -> Error {
    Error::new(codes::NOT_FOUND, format!("no surface with id `{id}` is registered"))
}

fn validate(spec: &SurfaceSpec) -> Result<(), Error> {
    if spec.id.trim().is_empty() {
        return Err(Error::new(codes::INVALID_PAYLOAD, "a surface needs a non-empty `id`"));
    }
    Ok(())
}

/// The plugin.
pub struct Surfaces;

fn publish(host: &Host, out: Outgoing) -> Result<(), Error> {
    match out {
        Outgoing::Changed(e) => host.publish(&CHANGED, &e),
        Outgoing::Action(a) => host.publish(&ACTION, &a),
    }
}

impl Plugin for Surfaces {
    fn manifest() -> PluginManifest {
        PluginManifest::new("surfaces", env!("CARGO_PKG_VERSION"))
            .description("The surface registry: what plugins show clients, and the catalog of it")
            .provides("service", REGISTRY.name())
            .provides("event", CHANGED.name())
            .provides("event", ACTION.name())
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let registry = Arc::new(Mutex::new(Registry::default()));
        let host = ctx.host().clone();
        ctx.host().provide_sync(&REGISTRY, move |req| {
            let (resp, out) = registry.lock().unwrap_or_else(PoisonError::into_inner).apply(req)?;
            if let Some(out) = out {
                publish(&host, out)?;
            }
            Ok(resp)
        })?;
        Ok(Surfaces)
    }
}

dispatch_abi::export_plugin!(Surfaces);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use dispatch_contracts::surface::SurfaceField;

    fn spec(id: &str, title: &str) -> SurfaceSpec {
        SurfaceSpec {
            id: id.into(),
            region: "side".into(),
            title: title.into(),
            fields: vec![SurfaceField::Stat { label: "n".into(), value: "1".into() }],
        }
    }

    fn register(r: &mut Registry, id: &str, title: &str, scope: Option<Scope>) -> (String, Option<Outgoing>) {
        let (resp, out) =
            r.apply(RegistryRequest::Register { spec: spec(id, title), scope, token: None }).unwrap();
        (resp.token.unwrap(), out)
    }

    #[test]
    fn register_get_catalog_remove() {
        let mut r = Registry::default();
        let (token_a, out) = register(&mut r, "a", "A", Some(Scope::Global));
        assert!(matches!(out, Some(Outgoing::Changed(SurfaceChanged { catalog_changed: true, .. }))));
        let (token_b, _) = register(&mut r, "b", "B", None);
        assert_eq!(token_a.len(), 32);
        assert_ne!(token_a, token_b);
        let (resp, _) = r.apply(RegistryRequest::Catalog).unwrap();
        let ids: Vec<_> = resp.catalog.unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["a", "b"]);
        let (resp, _) = r.apply(RegistryRequest::Get { surface_id: "b".into() }).unwrap();
        assert_eq!(resp.spec.unwrap().title, "B");
        r.apply(RegistryRequest::Remove { surface_id: "a".into(), token: token_a }).unwrap();
        assert_eq!(r.catalog().len(), 1);
    }

    /// Any bus caller could remove or overwrite another plugin's surface.
    /// Only the registration's token holder can now.
    #[test]
    fn only_the_owner_updates_removes_or_replaces_a_surface() {
        let mut r = Registry::default();
        let (token, _) = register(&mut r, "a", "A", None);
        let stranger = "0".repeat(32);
        let e =
            r.apply(RegistryRequest::Remove { surface_id: "a".into(), token: stranger.clone() }).unwrap_err();
        assert_eq!(e.code(), codes::FORBIDDEN);
        let e = r
            .apply(RegistryRequest::Update { spec: spec("a", "Hijacked"), token: stranger.clone() })
            .unwrap_err();
        assert_eq!(e.code(), codes::FORBIDDEN);
        let hijack = RegistryRequest::Register { spec: spec("a", "Hijacked"), scope: None, token: None };
        assert_eq!(r.apply(hijack).unwrap_err().code(), codes::FORBIDDEN);
        assert_eq!(r.catalog()[0].title, "A", "untouched");
        // The owner can replace it, keeping its token.
        let again =
            RegistryRequest::Register { spec: spec("a", "A2"), scope: None, token: Some(token.clone()) };
        assert_eq!(r.apply(again).unwrap().0.token.as_deref(), Some(token.as_str()));
        r.apply(RegistryRequest::Remove { surface_id: "a".into(), token }).unwrap();
        assert!(r.catalog().is_empty());
    }

    #[test]
    fn update_of_values_only_does_not_change_the_catalog() {
        let mut r = Registry::default();
        let (token, _) = register(&mut r, "a", "A", None);
        let (_, out) =
            r.apply(RegistryRequest::Update { spec: spec("a", "A"), token: token.clone() }).unwrap();
        assert!(matches!(out, Some(Outgoing::Changed(SurfaceChanged { catalog_changed: false, .. }))));
        let (_, out) = r.apply(RegistryRequest::Update { spec: spec("a", "Renamed"), token }).unwrap();
        assert!(matches!(out, Some(Outgoing::Changed(SurfaceChanged { catalog_changed: true, .. }))));
    }

    #[test]
    fn unknown_surfaces_and_empty_ids_are_clear_errors() {
        let mut r = Registry::default();
        let e =
            r.apply(RegistryRequest::Update { spec: spec("ghost", "G"), token: String::new() }).unwrap_err();
        assert_eq!(e.code(), codes::NOT_FOUND);
        assert_eq!(e.message(), "no surface with id `ghost` is registered");
        let e = r
            .apply(RegistryRequest::Register { spec: spec(" ", "x"), scope: None, token: None })
            .unwrap_err();
        assert_eq!(e.code(), codes::INVALID_PAYLOAD);
        assert!(r
            .apply(RegistryRequest::Invoke {
                surface_id: "ghost".into(),
                action_id: "a".into(),
                payload: serde_json::Value::Null
            })
            .is_err());
    }
}
