//! # word-count — a third-party tool plugin
//!
//! The whole plugin: the tool's logic (`count`), the [`Tool`] that wraps it
//! for the model, and the [`Plugin`] that serves it. `tool::serve` derives
//! the bus service (`tool.word_count`) from the tool's name, runs calls on a
//! small runtime of the plugin's own, and answers the tool protocol.

use std::sync::Arc;

use dispatch_abi::{Context, Error, Plugin, PluginManifest};
use dispatch_contracts::tool::{self, BoxFuture, Tool, ToolContext, ToolError, ToolOutput, ToolServer};
use serde::Deserialize;
use serde_json::{json, Value};

/// The tool's input, strict: a misspelt field is an error the model reads.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    text: String,
}

/// Words, lines and characters of `text`.
pub fn count(text: &str) -> (usize, usize, usize) {
    (text.split_whitespace().count(), text.lines().count(), text.chars().count())
}

/// The tool.
#[derive(Debug)]
pub struct WordCount;

impl Tool for WordCount {
    fn name(&self) -> &str {
        "word_count"
    }
    fn description(&self) -> &str {
        "Counts the words, lines and characters of `text`."
    }
    fn input_schema(&self) -> Value {
        json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]})
    }
    fn concurrency_safe(&self) -> bool {
        true // reads nothing, writes nothing
    }
    fn execute(&self, input: Value, _ctx: ToolContext) -> BoxFuture<Result<ToolOutput, ToolError>> {
        let parsed =
            serde_json::from_value::<Input>(input).map_err(|e| ToolError::InvalidInput(e.to_string()));
        Box::pin(async move {
            let (words, lines, chars) = count(&parsed?.text);
            Ok(ToolOutput::ok(format!("{words} words, {lines} lines, {chars} characters")))
        })
    }
}

/// The plugin.
#[derive(Debug)]
pub struct WordCountPlugin(ToolServer);

impl Plugin for WordCountPlugin {
    fn manifest() -> PluginManifest {
        tool::manifest("word-count", env!("CARGO_PKG_VERSION"), "word_count")
            .description("Counts words, lines and characters")
    }
    fn activate(ctx: Context) -> Result<Self, Error> {
        Ok(WordCountPlugin(tool::serve(ctx.host(), Arc::new(WordCount), 1)?))
    }
    fn deactivate(&mut self) -> Result<(), Error> {
        self.0.stop();
        Ok(())
    }
}

dispatch_abi::export_plugin!(WordCountPlugin);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use dispatch_contracts::tool::{RunBatch, RunResult, Started, ToolDescription, ToolRequest};
    use dispatch_testkit::TestHost;

    fn run(host: &TestHost, input: Value) -> RunResult {
        let key = tool::key("word_count");
        let start = ToolRequest::Start { call_id: "c".into(), conversation_id: "v".into(), cwd: None, input };
        let Started { run_id } = serde_json::from_value(host.call(&key, &start).unwrap()).unwrap();
        loop {
            let batch: RunBatch =
                serde_json::from_value(host.call(&key, &ToolRequest::Next { run_id }).unwrap()).unwrap();
            if let Some(result) = batch.result {
                return result;
            }
        }
    }

    fn started() -> TestHost {
        let mut host = TestHost::new();
        host.activate::<WordCountPlugin>(Value::Null).unwrap();
        host
    }

    #[test]
    fn describes_itself_under_its_own_name() {
        let host = started();
        let spec: ToolDescription =
            serde_json::from_value(host.call(&tool::key("word_count"), &ToolRequest::Spec).unwrap()).unwrap();
        assert_eq!((spec.name.as_str(), spec.concurrency_safe), ("word_count", true));
    }

    #[test]
    fn counts_through_the_bus() {
        let host = started();
        assert_eq!(
            run(&host, json!({"text": "one two\nthree"})),
            RunResult::from(Ok(ToolOutput::ok("3 words, 2 lines, 13 characters")))
        );
    }

    #[test]
    fn a_misspelt_field_is_invalid_input_for_the_model() {
        let host = started();
        let RunResult::InvalidInput { message } = run(&host, json!({"txt": "a"})) else { panic!() };
        assert!(message.contains("unknown field `txt`"), "{message}");
    }
}
