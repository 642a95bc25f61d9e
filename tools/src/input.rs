//! Tool input parsing: the model's JSON into a typed struct, or an
//! [`ToolError::InvalidInput`] the model can act on.

use dispatch_protocol::tool::ToolError;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Parse a tool's input. The input structs deny unknown fields, so a
/// misspelt field is named instead of silently ignored; serde's messages
/// ("missing field `path`", "invalid type: integer `3`, expected a
/// string") are what the model reads.
pub fn parse<T: DeserializeOwned>(input: Value) -> Result<T, ToolError> {
    serde_json::from_value(input).map_err(|e| ToolError::InvalidInput(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct In {
        path: String,
        limit: Option<u64>,
    }

    #[test]
    fn errors_name_the_field_and_the_problem() {
        let e = parse::<In>(serde_json::json!({})).unwrap_err();
        assert_eq!(e, ToolError::InvalidInput("missing field `path`".into()));
        let e = parse::<In>(serde_json::json!({"path": 3})).unwrap_err();
        assert_eq!(e, ToolError::InvalidInput("invalid type: integer `3`, expected a string".into()));
        let e = parse::<In>(serde_json::json!({"path": "a", "limt": 1})).unwrap_err();
        assert!(e.to_string().contains("unknown field `limt`"), "{e}");
    }
}
