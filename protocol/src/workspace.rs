//! Workspaces (WIRE.md "Workspaces"): a named group of conversations with
//! defaults of its own (a working directory, a computer), and a star that
//! puts its turns first when providers are busy. Kept by the store (the
//! `workspaces`, `getWorkspace`, `putWorkspace` and `deleteWorkspace` ops
//! of [`crate::store::StoreRequest`]), so every store serves them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The workspace every conversation belongs to unless told otherwise; it
/// always exists (synthesized when never persisted) and cannot be deleted.
pub const DEFAULT_WORKSPACE: &str = "default";

/// What a workspace id must look like (it is the frontend's URL `/<id>`).
pub const SLUG_RULE: &str =
    "Workspace id must be a valid slug (lowercase alphanumeric + hyphens, 1–40 chars)";

/// Whether `id` is a workspace slug: `^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$`.
pub fn is_valid_slug(id: &str) -> bool {
    let b = id.as_bytes();
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=40).contains(&b.len())
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter().all(|c| edge(c) || *c == b'-')
}

/// A workspace, as every route answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Workspace {
    /// Its slug (immutable).
    pub id: String,
    /// What it is called (defaults to the id).
    pub title: String,
    /// Its conversations' working directory when they name none, or a
    /// relative one's base; `null`: the server's default.
    pub default_cwd: Option<String>,
    /// The computer (an SSH alias) its conversations use; `null`: this one.
    pub default_computer_id: Option<String>,
    /// Starred: its turns go first when a provider's slots are scarce.
    pub starred: bool,
    /// Epoch ms it was created (`0` for a `default` never persisted).
    pub created_at: u64,
    /// Epoch ms of the latest activity in any of its conversations.
    pub last_activity_at: u64,
}

impl Workspace {
    /// `id` as it is before anything is set: titled by its id, no
    /// defaults, not starred, timestamps `0`.
    pub fn synthesized(id: &str) -> Workspace {
        Workspace {
            id: id.to_owned(),
            title: id.to_owned(),
            default_cwd: None,
            default_computer_id: None,
            starred: false,
            created_at: 0,
            last_activity_at: 0,
        }
    }
}

/// A workspace in the list: with how many conversations it holds (any
/// status, archives included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceEntry {
    /// The workspace.
    #[serde(flatten)]
    pub workspace: Workspace,
    /// Its conversations.
    pub conversation_count: u64,
}

/// `GET /workspaces`, and the store's `workspaces` answer: most recently
/// active first, `default` always among them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceList {
    /// The workspaces.
    pub workspaces: Vec<WorkspaceEntry>,
}

/// Create or change a workspace (the store's `putWorkspace`); absent
/// fields are left alone, a new workspace gets [`Workspace::synthesized`]'s
/// values for them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkspaceUpdate {
    /// The workspace.
    pub id: String,
    /// Only create it: an existing workspace is answered unchanged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create_only: bool,
    /// New title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// New default directory (`Some(None)` clears).
    #[serde(
        default,
        deserialize_with = "crate::store::double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_cwd: Option<Option<String>>,
    /// New default computer (`Some(None)` clears).
    #[serde(
        default,
        deserialize_with = "crate::store::double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_computer_id: Option<Option<String>>,
    /// Star or unstar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starred: Option<bool>,
}

/// `DELETE /workspaces/:id`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceDeleted {
    /// The workspace.
    pub workspace_id: String,
    /// Its conversations, closed and moved to `default`.
    pub closed_count: u64,
}

/// A turn's working directory as WIRE.md resolves it: `conversation`, the
/// conversation's own (raw: as sent), else the workspace's `defaultCwd`,
/// else the server's default; an absolute one stands alone, a relative one
/// is taken from the workspace's directory (else the server's). `None` when
/// nothing names one.
pub fn effective_cwd(
    conversation: Option<&str>,
    workspace: Option<&str>,
    server: Option<&std::path::Path>,
) -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    let base = workspace.map(str::trim).filter(|w| !w.is_empty()).map(PathBuf::from);
    let base = base.or_else(|| server.map(std::path::Path::to_path_buf));
    match conversation.map(str::trim).filter(|c| !c.is_empty()) {
        None => base,
        Some(c) if c.starts_with('/') => Some(PathBuf::from(c)),
        Some(c) => Some(base?.join(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cwd_resolves_against_the_workspace_then_the_server() {
        use std::path::{Path, PathBuf};
        let server = Some(Path::new("/srv/default"));
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(effective_cwd(None, None, server), p("/srv/default"));
        assert_eq!(effective_cwd(None, Some("/ws"), server), p("/ws"));
        assert_eq!(effective_cwd(Some("/abs"), Some("/ws"), server), p("/abs"));
        assert_eq!(effective_cwd(Some("sub/dir"), Some("/ws"), server), p("/ws/sub/dir"));
        assert_eq!(effective_cwd(Some("sub"), None, server), p("/srv/default/sub"));
        assert_eq!(effective_cwd(Some("  "), Some(""), server), p("/srv/default"));
        assert_eq!(effective_cwd(Some("sub"), None, None), None);
        assert_eq!(effective_cwd(None, None, None), None);
    }

    #[test]
    fn slugs_are_what_the_frontend_routes_on() {
        for good in ["default", "a", "0", "my-team", "a1-b2", &"x".repeat(40)] {
            assert!(is_valid_slug(good), "{good:?}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a b", "é", &"x".repeat(41), "a/b"] {
            assert!(!is_valid_slug(bad), "{bad:?}");
        }
    }
}
