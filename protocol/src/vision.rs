//! The `vision` plugin's contract: what a model is shown of a
//! conversation's images (WIRE.md's "Vision").

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::wire::ChatMessage;

/// Requests to the `vision` service, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub enum VisionRequest {
    /// The messages of a model request about to be sent to `model`, which
    /// hold at least one image: what the model should see instead (images
    /// over the limit described, or placeholders for a text-only model).
    /// Answers [`Viewed`]. Asked before every model step and by a cache
    /// warm, so the same history gives the same request.
    View {
        /// The conversation.
        conversation_id: String,
        /// `<credential>/<model>` the request goes to.
        model: String,
        /// The request's messages, as the turn holds them.
        messages: Vec<ChatMessage>,
    },
}

/// The `view` answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Viewed {
    /// The messages to send instead; absent: send them as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<ChatMessage>>,
}

/// The global image settings (`GET`/`PUT /settings/vision`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VisionSettings {
    /// How many images a vision model receives natively per request; the
    /// older ones are sent as their descriptions. 0: no limit.
    pub image_limit: u64,
    /// The vision model that describes images (and answers
    /// `consult_vision`); `null`: the first vision-capable model of the
    /// catalog.
    pub compaction_model: Option<String>,
}

impl Default for VisionSettings {
    fn default() -> Self {
        VisionSettings { image_limit: DEFAULT_IMAGE_LIMIT, compaction_model: None }
    }
}

/// `imageLimit` when never set (WIRE.md).
pub const DEFAULT_IMAGE_LIMIT: u64 = 10;
