//! Workspaces (types in [`dispatch_protocol::workspace`], re-exported
//! here; kept by the store). The `workspaces` plugin serves their routes
//! and announces a deletion, so what a workspace owns elsewhere (its
//! heartbeat) goes with it.

use dispatch_abi::Event;
pub use dispatch_protocol::workspace::*;

/// A workspace was deleted: its conversations are closed and in
/// `default` by now.
pub const DELETED: Event<WorkspaceDeleted> = Event::new("workspace.deleted", 1);

/// A conversation's own working directory, as the per-project status
/// routes (`/conversations/:id/lsp`, `…/mcp`) report it: `None` when the
/// conversation has no persisted cwd of its own (an unknown conversation,
/// or one that only inherits its workspace's `defaultCwd`); otherwise the
/// effective directory, a relative one resolved against the workspace's
/// default as the session resolves it.
pub async fn conversation_cwd(
    host: &dispatch_abi::Host,
    conversation_id: &str,
) -> Result<Option<std::path::PathBuf>, dispatch_abi::Error> {
    use crate::store::{Details, StoreRequest, STORE};
    let details_of: dispatch_abi::Service<StoreRequest, Option<Details>> =
        dispatch_abi::Service::named(STORE.name(), STORE.version());
    let workspace_of: dispatch_abi::Service<StoreRequest, Option<Workspace>> =
        dispatch_abi::Service::named(STORE.name(), STORE.version());
    let get = StoreRequest::Get { conversation_id: conversation_id.to_owned() };
    let details = host.call(&details_of, &get).await?;
    let Some(details) = details else { return Ok(None) };
    let Some(own) = details.cwd.filter(|c| !c.trim().is_empty()) else { return Ok(None) };
    let get = StoreRequest::GetWorkspace { id: details.meta.workspace_id };
    // A workspace that cannot be read leaves a relative cwd unresolved.
    let workspace = host.call(&workspace_of, &get).await.ok().flatten();
    let cwd = effective_cwd(Some(&own), workspace.and_then(|w| w.default_cwd).as_deref(), None);
    // As the session resolves a turn's: symlinks and `..` resolved, so a
    // plugin keyed by the turn's directory finds the same one.
    Ok(cwd.map(|c| std::fs::canonicalize(&c).unwrap_or(c)))
}
