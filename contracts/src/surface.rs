//! Surfaces: the `surfaces` registry service (provided by the `surfaces`
//! plugin) where plugins publish what a client shows, its change event, and
//! the action event a surface's owner listens to. Types in
//! [`dispatch_protocol::surface`], re-exported here.

use dispatch_abi::{Event, Service};
pub use dispatch_protocol::surface::*;

/// The registry. Schema 2: `update`, `remove` and replacing `register`
/// take the owner's token (version 1 let any caller remove any surface).
pub const REGISTRY: Service<RegistryRequest, RegistryResponse> = Service::new("surfaces", 2);
/// A surface was added, replaced or removed.
pub const CHANGED: Event<SurfaceChanged> = Event::new("surfaces.changed", 1);
/// A client invoked a field's action; the surface's owner subscribes.
pub const ACTION: Event<SurfaceAction> = Event::new("surfaces.action", 1);
