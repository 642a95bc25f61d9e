//! The `system-prompt` contract: the global template a new conversation's
//! system prompt is rendered from, and the variables it may use.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Requests to the `system-prompt` service, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub enum PromptRequest {
    /// The template; answers [`Template`].
    Get,
    /// Replace the template (may be empty: no system prompt); answers
    /// [`Template`]. Conversations that already have a prompt keep it.
    Set {
        /// The new template.
        template: String,
    },
    /// The variables a template may use; answers [`Variables`].
    Variables,
    /// Render `template` with this context's values (what a turn's prompt
    /// would be if `template` were the global one); answers [`Template`].
    /// For a plugin that prompts a model with a template of its own (a
    /// heartbeat's system and task prompts).
    Render {
        /// The template.
        template: String,
        /// The conversation, model and directory its variables describe.
        context: crate::session::PromptContext,
    },
}

/// The template — the `GET`/`PUT /system-prompt` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Template {
    /// `[type:name]` placeholders and `[if type:name]…[else]…[endif]`.
    pub template: String,
}

/// One variable a template may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Variable {
    /// `system`, `prompt`, `git`, `file`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its name (`<path>` for the family of `file:` variables).
    pub name: String,
    /// What it holds.
    pub description: String,
    /// A family whose names the template chooses (`file:<path>`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dynamic: bool,
}

/// The `GET /system-prompt/variables` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Variables {
    /// Every variable.
    pub variables: Vec<Variable>,
}
