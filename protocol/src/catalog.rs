//! The model catalog (the `models` service): provider plugins register the
//! credentials they serve, and the catalog resolves `<credential>/<model>`
//! to the provider service that runs it.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Requests to the `models` catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub enum CatalogRequest {
    /// A provider announces the credentials it serves (replaces an earlier
    /// registration of the same provider). Answers `{}`.
    Register {
        /// The provider's id (its plugin id).
        provider: String,
        /// Its bus service (speaks [`crate::provider::ProviderRequest`]).
        service: String,
        /// The credential names it serves.
        credentials: Vec<String>,
    },
    /// Every model of every provider; answers [`ModelList`] (the
    /// `GET /models` body).
    List,
    /// Which provider serves `model` (`<credential>/<model>`; absent = the
    /// default model); answers [`Resolved`].
    Resolve {
        /// The model, or none for the default.
        #[serde(default)]
        model: Option<String>,
    },
}

/// The catalog's `list` answer — exactly the `GET /models` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelList {
    /// `<credential>/<model>` names.
    pub models: Vec<String>,
    /// Per-model metadata, for models that have any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_info: BTreeMap<String, ModelInfo>,
}

/// Metadata of one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    /// Context window in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u64>,
    /// `true` when the model takes images (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision: Option<bool>,
    /// **(ours)** The name is an alias the operator configured: the model
    /// that answers it (so a client, and its user, can tell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias_of: Option<String>,
}

/// The catalog's `resolve` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    /// The full name, `<credential>/<model>`.
    pub model: String,
    /// The provider plugin.
    pub provider: String,
    /// Its bus service.
    pub service: String,
}
