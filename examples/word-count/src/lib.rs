//! # word-count — a third-party tool plugin
//!
//! The whole plugin: the tool's logic (`count`), the [`Tool`] that wraps it
//! for the model, and the [`Plugin`] that serves it. `tool::serve` derives
//! the bus service (`tool.word_count`) from the tool's name, runs calls on a
//! small runtime of the plugin's own, and answers the tool protocol.
//!
//! It counts either `text` or a file (`path`), and the file case shows what
//! a tool doing I/O owes the host: the read runs on `spawn_blocking` (a
//! blocking read on the runtime's own threads would stall every other call
//! they serve), the path resolves beneath the turn's `ctx.cwd` (never
//! outside it), and the call answers as soon as `ctx.abort` fires.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use dispatch_abi::{Context, Error, Plugin, PluginManifest};
use dispatch_contracts::tool::{self, BoxFuture, Tool, ToolContext, ToolError, ToolOutput, ToolServer};
use serde::Deserialize;
use serde_json::{json, Value};

/// The tool's input, strict: a misspelt field is an error the model reads.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    path: Option<String>,
}

/// Largest file counted.
const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// `rel` beneath `cwd`: relative, no `..`, and — symlinks resolved — still
/// inside.
fn beneath(cwd: &Path, rel: &str) -> Result<PathBuf, ToolError> {
    let p = Path::new(rel);
    if p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(ToolError::InvalidInput(format!("`{rel}` must be a path inside the working directory")));
    }
    let root =
        std::fs::canonicalize(cwd).map_err(|e| ToolError::Failed(format!("the working directory: {e}")))?;
    let real = std::fs::canonicalize(root.join(p)).map_err(|e| ToolError::Failed(format!("`{rel}`: {e}")))?;
    if !real.starts_with(&root) {
        return Err(ToolError::Failed(format!("`{rel}` leads outside the working directory")));
    }
    Ok(real)
}

/// Read a file of at most [`MAX_FILE_BYTES`] as text (blocking: run it on
/// `spawn_blocking`).
fn read_text(path: &Path) -> Result<String, ToolError> {
    use std::io::Read as _;
    let file =
        std::fs::File::open(path).map_err(|e| ToolError::Failed(format!("{}: {e}", path.display())))?;
    let meta = file.metadata().map_err(|e| ToolError::Failed(e.to_string()))?;
    if !meta.is_file() {
        return Err(ToolError::Failed(format!("{} is not a regular file", path.display())));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(ToolError::Failed(format!("{} is over {MAX_FILE_BYTES} bytes", path.display())));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES).read_to_end(&mut bytes).map_err(|e| ToolError::Failed(e.to_string()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
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
        "Counts the words, lines and characters of `text`, or of the file at `path` (relative to the working directory)."
    }
    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {"text": {"type": "string"}, "path": {"type": "string"}},
            "oneOf": [{"required": ["text"]}, {"required": ["path"]}]
        })
    }
    fn concurrency_safe(&self) -> bool {
        true // reads nothing, writes nothing
    }
    fn execute(&self, input: Value, ctx: ToolContext) -> BoxFuture<Result<ToolOutput, ToolError>> {
        let parsed =
            serde_json::from_value::<Input>(input).map_err(|e| ToolError::InvalidInput(e.to_string()));
        Box::pin(async move {
            let text = match parsed? {
                Input { text: Some(text), path: None } => text,
                Input { text: None, path: Some(path) } => {
                    // Outside a turn there is no working directory to be
                    // inside of: refuse rather than guess.
                    let cwd = ctx.cwd.clone().ok_or_else(|| {
                        ToolError::Failed("no working directory: `path` needs a turn's cwd".into())
                    })?;
                    let read = tokio::task::spawn_blocking(move || read_text(&beneath(&cwd, &path)?));
                    tokio::select! {
                        done = read => done.map_err(|e| ToolError::Failed(format!("the read failed: {e}")))??,
                        () = ctx.abort.aborted() => {
                            return Err(ToolError::Failed("stopped: the turn was aborted".into()));
                        }
                    }
                }
                _ => return Err(ToolError::InvalidInput("give either `text` or `path`".into())),
            };
            let (words, lines, chars) = count(&text);
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
        run_in(host, input, None)
    }

    fn run_in(host: &TestHost, input: Value, cwd: Option<String>) -> RunResult {
        let key = tool::key("word_count");
        let start = ToolRequest::Start { call_id: "c".into(), conversation_id: "v".into(), cwd, input };
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

    #[test]
    fn counts_a_file_beneath_the_working_directory_and_nothing_outside() {
        let host = started();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "one two\nthree").unwrap();
        let cwd = Some(dir.path().display().to_string());
        assert_eq!(
            run_in(&host, json!({"path": "notes.txt"}), cwd.clone()),
            RunResult::from(Ok(ToolOutput::ok("3 words, 2 lines, 13 characters")))
        );
        let RunResult::InvalidInput { .. } = run_in(&host, json!({"path": "../x"}), cwd.clone()) else {
            panic!()
        };
        let RunResult::Failed { message } = run(&host, json!({"path": "notes.txt"})) else { panic!() };
        assert!(message.contains("no working directory"), "{message}");
        let RunResult::InvalidInput { .. } = run_in(&host, json!({"text": "a", "path": "b"}), cwd) else {
            panic!()
        };
    }

    /// Regression (issue 31): built on its own (std linked into the plugin
    /// and the test alike), the plugin's panic hook took a test's own
    /// failed assertion for the plugin's panic and logged it as one.
    #[test]
    fn a_tests_own_failed_assertion_is_not_logged_as_the_plugins_panic() {
        let host = started();
        let own = std::panic::catch_unwind(|| assert_eq!(2 + 2, 5, "the test's own assertion"));
        assert!(own.is_err());
        let blamed: Vec<String> =
            host.logged().into_iter().filter(|r| r.contains("the test's own assertion")).collect();
        assert!(blamed.is_empty(), "{blamed:?}");
    }
}
