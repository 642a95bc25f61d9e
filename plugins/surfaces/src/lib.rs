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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use dispatch_abi::{codes, Context, Error, Host, Plugin, PluginManifest};
use dispatch_contracts::cluster::REMOTE_SURFACE;
use dispatch_contracts::protocol::wire::{is_valid_conversation_id, CONVERSATION_ID_RULE};
use dispatch_contracts::surface::{
    CatalogEntry, RegistryRequest, RegistryResponse, Scope, SurfaceAction, SurfaceChanged, SurfaceSpec,
    ACTION, CHANGED, REGISTRY,
};

/// The registry's state: surfaces in registration order, each with its
/// owner's token.
#[derive(Debug, Default)]
pub struct Registry {
    entries: Vec<Entry>,
    /// Orders instance updates, for eviction.
    clock: u64,
}

/// One registered surface.
#[derive(Debug)]
struct Entry {
    /// The surface's spec: for a conversation-scoped one, what a
    /// conversation without its own instance shows.
    spec: SurfaceSpec,
    scope: Option<Scope>,
    token: String,
    /// Conversation scope: what a conversation shows before its instance
    /// is set (else `spec`).
    conversation_spec: Option<SurfaceSpec>,
    /// Conversation scope: each conversation's own spec, with the clock of
    /// its last update.
    instances: HashMap<String, (SurfaceSpec, u64)>,
}

/// Conversations a conversation-scoped surface keeps an instance for; past
/// it, the least recently updated is dropped (its conversation shows the
/// default spec until the owner updates it again).
pub const MAX_INSTANCES: usize = 4096;

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

fn invalid(message: String) -> Error {
    Error::new(codes::INVALID_PAYLOAD, message)
}

impl Registry {
    /// Apply one request; answers the response and, when something
    /// changed, the event to publish.
    pub fn apply(&mut self, req: RegistryRequest) -> Result<(RegistryResponse, Option<Outgoing>), Error> {
        let none = RegistryResponse { spec: None, catalog: None, token: None };
        match req {
            RegistryRequest::Register { spec, scope, token, conversation_spec } => {
                validate(&spec)?;
                if let Some(c) = &conversation_spec {
                    validate(c)?;
                }
                let (changed, token) = match self.position(&spec.id) {
                    Some(i) => {
                        let old = &mut self.entries[i];
                        if token.as_deref() != Some(old.token.as_str()) {
                            return Err(not_owner(&spec.id));
                        }
                        let retitled = old.spec.title != spec.title
                            || old.spec.region != spec.region
                            || old.scope != scope;
                        if scope != Some(Scope::Conversation) {
                            old.instances.clear();
                        }
                        old.spec = spec.clone();
                        old.scope = scope;
                        old.conversation_spec = conversation_spec;
                        (retitled, old.token.clone())
                    }
                    None => {
                        let token = new_token()?;
                        let entry = Entry {
                            spec: spec.clone(),
                            scope,
                            token: token.clone(),
                            conversation_spec,
                            instances: HashMap::new(),
                        };
                        self.entries.push(entry);
                        (true, token)
                    }
                };
                let (mut response, out) = changed_response(spec, changed, None);
                response.token = Some(token);
                Ok((response, out))
            }
            RegistryRequest::Update { spec, token, conversation_id } => {
                validate(&spec)?;
                let i = self.owned(&spec.id, &token)?;
                if let Some(c) = conversation_id {
                    self.per_conversation(i, &c)?;
                    self.set_instance(i, c.clone(), spec.clone());
                    return Ok(changed_response(spec, false, Some(c)));
                }
                let entry = &mut self.entries[i];
                let retitled = entry.spec.title != spec.title || entry.spec.region != spec.region;
                entry.spec = spec.clone();
                Ok(changed_response(spec, retitled, None))
            }
            RegistryRequest::Remove { surface_id, token, conversation_id } => {
                let i = self.owned(&surface_id, &token)?;
                if let Some(c) = conversation_id {
                    self.per_conversation(i, &c)?;
                    let entry = &mut self.entries[i];
                    entry.instances.remove(&c);
                    return Ok(changed_response(entry.spec.clone(), false, Some(c)));
                }
                self.entries.remove(i);
                let event = SurfaceChanged {
                    surface_id,
                    spec: None,
                    catalog_changed: true,
                    conversation_id: None,
                    remote: false,
                };
                Ok((none, Some(Outgoing::Changed(event))))
            }
            RegistryRequest::Get { surface_id, conversation_id } => {
                let i = self.position(&surface_id).ok_or_else(|| unknown(&surface_id))?;
                let entry = &self.entries[i];
                let spec = match (&conversation_id, entry.scope) {
                    (Some(c), Some(Scope::Conversation)) => entry
                        .instances
                        .get(c)
                        .map(|(s, _)| s)
                        .or(entry.conversation_spec.as_ref())
                        .unwrap_or(&entry.spec),
                    _ => &entry.spec,
                };
                Ok((RegistryResponse { spec: Some(spec.clone()), ..none }, None))
            }
            RegistryRequest::Catalog => {
                Ok((RegistryResponse { catalog: Some(self.catalog()), ..none }, None))
            }
            RegistryRequest::Invoke { surface_id, action_id, payload, conversation_id } => {
                let i = self.position(&surface_id).ok_or_else(|| unknown(&surface_id))?;
                let conversation_id = match (self.entries[i].scope, conversation_id) {
                    (Some(Scope::Conversation), None) => {
                        return Err(invalid(format!(
                            "surface `{surface_id}` is per conversation: invoke it with a `conversationId`"
                        )));
                    }
                    (Some(Scope::Conversation), Some(c)) => Some(c),
                    // A global surface has one instance: whatever
                    // conversation the client was looking at is not part
                    // of the action.
                    _ => None,
                };
                let action = SurfaceAction { surface_id, action_id, payload, conversation_id };
                Ok((none, Some(Outgoing::Action(action))))
            }
            other => Err(Error::new(codes::UNSUPPORTED, format!("unsupported request {other:?}"))),
        }
    }

    /// Set conversation `c`'s instance of entry `i`, dropping the least
    /// recently updated one past [`MAX_INSTANCES`].
    fn set_instance(&mut self, i: usize, c: String, spec: SurfaceSpec) {
        self.clock += 1;
        let entry = &mut self.entries[i];
        entry.instances.insert(c, (spec, self.clock));
        if entry.instances.len() > MAX_INSTANCES {
            if let Some(oldest) = entry.instances.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| k.clone())
            {
                entry.instances.remove(&oldest);
            }
        }
    }

    /// Take a conversation's instance as another host of the cluster set
    /// it: the owner there proved its token, and the owner here (the same
    /// plugin, configured alike) would have set the same. Answers the
    /// change to publish, marked `remote` so it is not relayed back; none
    /// when this host has no such conversation-scoped surface (it runs
    /// other plugins) or the change is not an instance's.
    pub fn mirror(&mut self, changed: SurfaceChanged) -> Option<Outgoing> {
        let (Some(c), Some(spec)) = (changed.conversation_id, changed.spec) else { return None };
        let i = self.position(&changed.surface_id)?;
        if spec.id != changed.surface_id || self.per_conversation(i, &c).is_err() {
            return None;
        }
        self.set_instance(i, c.clone(), spec.clone());
        let (_, out) = changed_response(spec, false, Some(c));
        out.map(|o| match o {
            Outgoing::Changed(e) => Outgoing::Changed(SurfaceChanged { remote: true, ..e }),
            other => other,
        })
    }

    /// Check that entry `i` is conversation-scoped and `c` a conversation
    /// id.
    fn per_conversation(&self, i: usize, c: &str) -> Result<(), Error> {
        let entry = &self.entries[i];
        if entry.scope != Some(Scope::Conversation) {
            return Err(invalid(format!(
                "surface `{}` is global: it has no per-conversation instances",
                entry.spec.id
            )));
        }
        if !is_valid_conversation_id(c) {
            return Err(invalid(format!("`{c}` is not a conversation id: {CONVERSATION_ID_RULE}")));
        }
        Ok(())
    }

    /// The position of surface `id` if `token` is its owner's.
    fn owned(&self, id: &str, token: &str) -> Result<usize, Error> {
        let i = self.position(id).ok_or_else(|| unknown(id))?;
        if self.entries[i].token != token {
            return Err(not_owner(id));
        }
        Ok(i)
    }

    /// The catalog, in registration order.
    pub fn catalog(&self) -> Vec<CatalogEntry> {
        self.entries
            .iter()
            .map(|e| CatalogEntry {
                id: e.spec.id.clone(),
                region: e.spec.region.clone(),
                title: e.spec.title.clone(),
                scope: e.scope,
            })
            .collect()
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.spec.id == id)
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

fn changed_response(
    spec: SurfaceSpec,
    catalog_changed: bool,
    conversation_id: Option<String>,
) -> (RegistryResponse, Option<Outgoing>) {
    let event = SurfaceChanged {
        surface_id: spec.id.clone(),
        spec: Some(spec.clone()),
        catalog_changed,
        conversation_id,
        remote: false,
    };
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
        let (host, r) = (ctx.host().clone(), Arc::clone(&registry));
        ctx.host().provide_sync(&REGISTRY, move |req| {
            let (resp, out) = r.lock().unwrap_or_else(PoisonError::into_inner).apply(req)?;
            if let Some(out) = out {
                publish(&host, out)?;
            }
            Ok(resp)
        })?;
        // Several hosts on one store: what another host's plugins set for a
        // conversation shows here too. No cluster, no such event.
        let host = ctx.host().clone();
        ctx.host().subscribe_sync(&REMOTE_SURFACE, move |changed| {
            let out = registry.lock().unwrap_or_else(PoisonError::into_inner).mirror(changed);
            match out {
                Some(out) => publish(&host, out),
                None => Ok(()),
            }
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
        let (resp, out) = r
            .apply(RegistryRequest::Register {
                spec: spec(id, title),
                scope,
                token: None,
                conversation_spec: None,
            })
            .unwrap();
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
        let (resp, _) =
            r.apply(RegistryRequest::Get { surface_id: "b".into(), conversation_id: None }).unwrap();
        assert_eq!(resp.spec.unwrap().title, "B");
        r.apply(RegistryRequest::Remove { surface_id: "a".into(), token: token_a, conversation_id: None })
            .unwrap();
        assert_eq!(r.catalog().len(), 1);
    }

    /// Any bus caller could remove or overwrite another plugin's surface.
    /// Only the registration's token holder can now.
    #[test]
    fn only_the_owner_updates_removes_or_replaces_a_surface() {
        let mut r = Registry::default();
        let (token, _) = register(&mut r, "a", "A", None);
        let stranger = "0".repeat(32);
        let e = r
            .apply(RegistryRequest::Remove {
                surface_id: "a".into(),
                token: stranger.clone(),
                conversation_id: None,
            })
            .unwrap_err();
        assert_eq!(e.code(), codes::FORBIDDEN);
        let e = r
            .apply(RegistryRequest::Update {
                spec: spec("a", "Hijacked"),
                token: stranger.clone(),
                conversation_id: None,
            })
            .unwrap_err();
        assert_eq!(e.code(), codes::FORBIDDEN);
        let hijack = RegistryRequest::Register {
            spec: spec("a", "Hijacked"),
            scope: None,
            token: None,
            conversation_spec: None,
        };
        assert_eq!(r.apply(hijack).unwrap_err().code(), codes::FORBIDDEN);
        assert_eq!(r.catalog()[0].title, "A", "untouched");
        // The owner can replace it, keeping its token.
        let again = RegistryRequest::Register {
            spec: spec("a", "A2"),
            scope: None,
            token: Some(token.clone()),
            conversation_spec: None,
        };
        assert_eq!(r.apply(again).unwrap().0.token.as_deref(), Some(token.as_str()));
        r.apply(RegistryRequest::Remove { surface_id: "a".into(), token, conversation_id: None }).unwrap();
        assert!(r.catalog().is_empty());
    }

    #[test]
    fn update_of_values_only_does_not_change_the_catalog() {
        let mut r = Registry::default();
        let (token, _) = register(&mut r, "a", "A", None);
        let (_, out) = r
            .apply(RegistryRequest::Update {
                spec: spec("a", "A"),
                token: token.clone(),
                conversation_id: None,
            })
            .unwrap();
        assert!(matches!(out, Some(Outgoing::Changed(SurfaceChanged { catalog_changed: false, .. }))));
        let (_, out) = r
            .apply(RegistryRequest::Update { spec: spec("a", "Renamed"), token, conversation_id: None })
            .unwrap();
        assert!(matches!(out, Some(Outgoing::Changed(SurfaceChanged { catalog_changed: true, .. }))));
    }

    #[test]
    fn unknown_surfaces_and_empty_ids_are_clear_errors() {
        let mut r = Registry::default();
        let e = r
            .apply(RegistryRequest::Update {
                spec: spec("ghost", "G"),
                token: String::new(),
                conversation_id: None,
            })
            .unwrap_err();
        assert_eq!(e.code(), codes::NOT_FOUND);
        assert_eq!(e.message(), "no surface with id `ghost` is registered");
        let e = r
            .apply(RegistryRequest::Register {
                spec: spec(" ", "x"),
                scope: None,
                token: None,
                conversation_spec: None,
            })
            .unwrap_err();
        assert_eq!(e.code(), codes::INVALID_PAYLOAD);
        assert!(r
            .apply(RegistryRequest::Invoke {
                surface_id: "ghost".into(),
                action_id: "a".into(),
                payload: serde_json::Value::Null,
                conversation_id: None,
            })
            .is_err());
    }

    fn get(r: &mut Registry, id: &str, conversation: Option<&str>) -> SurfaceSpec {
        let req =
            RegistryRequest::Get { surface_id: id.into(), conversation_id: conversation.map(Into::into) };
        r.apply(req).unwrap().0.spec.unwrap()
    }

    #[test]
    fn a_conversation_scoped_surface_keeps_one_instance_per_conversation() {
        let mut r = Registry::default();
        let (token, _) = register(&mut r, "todo", "Tasks", Some(Scope::Conversation));
        let update = |c: &str, title: &str| RegistryRequest::Update {
            spec: spec("todo", title),
            token: token.clone(),
            conversation_id: Some(c.into()),
        };
        let (_, out) = r.apply(update("c1", "Tasks")).unwrap();
        let Some(Outgoing::Changed(e)) = out else { panic!("{out:?}") };
        assert_eq!((e.conversation_id.as_deref(), e.catalog_changed), (Some("c1"), false));
        let mut own = spec("todo", "Tasks");
        own.fields = vec![SurfaceField::Stat { label: "n".into(), value: "2".into() }];
        r.apply(RegistryRequest::Update {
            spec: own.clone(),
            token: token.clone(),
            conversation_id: Some("c2".into()),
        })
        .unwrap();
        assert_eq!(get(&mut r, "todo", Some("c2")), own);
        // Conversations without an instance, and the surface itself, show
        // the default spec.
        assert_eq!(get(&mut r, "todo", Some("c3")), spec("todo", "Tasks"));
        assert_eq!(get(&mut r, "todo", None), spec("todo", "Tasks"));
        // Removing an instance reverts that conversation to the default.
        let (_, out) = r
            .apply(RegistryRequest::Remove {
                surface_id: "todo".into(),
                token: token.clone(),
                conversation_id: Some("c2".into()),
            })
            .unwrap();
        assert!(matches!(out, Some(Outgoing::Changed(SurfaceChanged { conversation_id: Some(_), .. }))));
        assert_eq!(get(&mut r, "todo", Some("c2")), spec("todo", "Tasks"));
        assert_eq!(r.catalog().len(), 1, "the surface itself stays");
        // Invoking needs the conversation, and carries it to the owner.
        let invoke = |c: Option<&str>| RegistryRequest::Invoke {
            surface_id: "todo".into(),
            action_id: "clear".into(),
            payload: serde_json::Value::Null,
            conversation_id: c.map(Into::into),
        };
        assert_eq!(r.apply(invoke(None)).unwrap_err().code(), codes::INVALID_PAYLOAD);
        let (_, out) = r.apply(invoke(Some("c1"))).unwrap();
        let Some(Outgoing::Action(a)) = out else { panic!("{out:?}") };
        assert_eq!(a.conversation_id.as_deref(), Some("c1"));
        // Bad conversation ids are refused.
        let e = r.apply(update("../x", "Tasks")).unwrap_err();
        assert_eq!(e.code(), codes::INVALID_PAYLOAD);
    }

    #[test]
    fn a_global_surface_has_no_instances_and_its_actions_carry_no_conversation() {
        let mut r = Registry::default();
        let (token, _) = register(&mut r, "g", "G", Some(Scope::Global));
        let e = r
            .apply(RegistryRequest::Update {
                spec: spec("g", "G"),
                token,
                conversation_id: Some("c1".into()),
            })
            .unwrap_err();
        assert_eq!(e.code(), codes::INVALID_PAYLOAD);
        assert!(e.message().contains("is global"), "{e}");
        assert_eq!(get(&mut r, "g", Some("c1")), spec("g", "G"));
        let (_, out) = r
            .apply(RegistryRequest::Invoke {
                surface_id: "g".into(),
                action_id: "a".into(),
                payload: serde_json::Value::Null,
                conversation_id: Some("c1".into()),
            })
            .unwrap();
        let Some(Outgoing::Action(a)) = out else { panic!("{out:?}") };
        assert_eq!(a.conversation_id, None);
    }

    #[test]
    fn instances_beyond_the_cap_drop_the_least_recently_updated() {
        let mut r = Registry::default();
        let (token, _) = register(&mut r, "q", "Q", Some(Scope::Conversation));
        for i in 0..=MAX_INSTANCES {
            let mut s = spec("q", "Q");
            s.fields = vec![SurfaceField::Stat { label: "i".into(), value: i.to_string() }];
            r.apply(RegistryRequest::Update {
                spec: s,
                token: token.clone(),
                conversation_id: Some(format!("c{i}")),
            })
            .unwrap();
        }
        assert_eq!(get(&mut r, "q", Some("c0")), spec("q", "Q"), "the oldest went back to the default");
        assert_ne!(get(&mut r, "q", Some("c1")), spec("q", "Q"));
        assert_ne!(get(&mut r, "q", Some(&format!("c{MAX_INSTANCES}"))), spec("q", "Q"));
    }

    #[test]
    fn another_hosts_instance_is_mirrored_marked_remote_and_global_ones_are_not() {
        let mut r = Registry::default();
        register(&mut r, "todo", "Tasks", Some(Scope::Conversation));
        register(&mut r, "stats", "Stats", Some(Scope::Global));
        let mut theirs = spec("todo", "Tasks");
        theirs.fields = vec![SurfaceField::Stat { label: "n".into(), value: "7".into() }];
        let changed = |id: &str, spec: SurfaceSpec, c: Option<&str>| SurfaceChanged {
            surface_id: id.into(),
            spec: Some(spec),
            catalog_changed: false,
            conversation_id: c.map(Into::into),
            remote: false,
        };
        let out = r.mirror(changed("todo", theirs.clone(), Some("c1")));
        let Some(Outgoing::Changed(e)) = out else { panic!("{out:?}") };
        assert!(e.remote, "a mirrored change is marked remote, so no relay sends it back");
        assert_eq!(e.conversation_id.as_deref(), Some("c1"));
        assert_eq!(get(&mut r, "todo", Some("c1")), theirs);
        // Not this host's to mirror: a global surface, an unknown one, a
        // change without a conversation, a spec under another id.
        assert!(r.mirror(changed("stats", spec("stats", "x"), Some("c1"))).is_none());
        assert_eq!(get(&mut r, "stats", None), spec("stats", "Stats"));
        assert!(r.mirror(changed("ghost", spec("ghost", "x"), Some("c1"))).is_none());
        assert!(r.mirror(changed("todo", spec("todo", "x"), None)).is_none());
        assert!(r.mirror(changed("todo", spec("stats", "x"), Some("c2"))).is_none());
        assert_eq!(get(&mut r, "todo", Some("c2")), spec("todo", "Tasks"));
    }
}
