//! Workspaces (types in [`dispatch_protocol::workspace`], re-exported
//! here; kept by the store). The `workspaces` plugin serves their routes
//! and announces a deletion, so what a workspace owns elsewhere (its
//! heartbeat) goes with it.

use dispatch_abi::Event;
pub use dispatch_protocol::workspace::*;

/// A workspace was deleted: its conversations are closed and in
/// `default` by now.
pub const DELETED: Event<WorkspaceDeleted> = Event::new("workspace.deleted", 1);
