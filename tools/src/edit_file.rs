//! `edit_file`: exact-string replacement in a text file, atomically.

use std::path::Path;

use dispatch_protocol::tool::{Tool, ToolContext, ToolError, ToolOutput};
use dispatch_protocol::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::contain::Workdir;
use crate::input::parse;
use crate::write_file::atomic_write;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Input {
    path: String,
    old_string: String,
    new_string: String,
    #[serde(default)]
    replace_all: bool,
}

/// The `edit_file` tool.
#[derive(Debug, Default)]
pub struct EditFile;

impl EditFile {
    /// The call, synchronously.
    pub fn edit(&self, input: Value, cwd: Option<&Path>) -> Result<ToolOutput, ToolError> {
        let input: Input = parse(input)?;
        if input.old_string.is_empty() {
            return Err(ToolError::InvalidInput(
                "`oldString` is empty; to create a file use write_file".into(),
            ));
        }
        if input.old_string == input.new_string {
            return Err(ToolError::InvalidInput("`oldString` and `newString` are the same".into()));
        }
        let wd = Workdir::new(cwd)?;
        let path = wd.existing(&input.path)?;
        let shown = wd.show(&path);
        if path.is_dir() {
            return Err(ToolError::Failed(format!("{shown} is a directory")));
        }
        if !path.is_file() {
            return Err(ToolError::Failed(format!("{shown} is not a regular file")));
        }
        let bytes =
            std::fs::read(&path).map_err(|e| ToolError::Failed(format!("cannot read {shown}: {e}")))?;
        if bytes.contains(&0) {
            return Err(ToolError::Failed(format!("{shown} looks like a binary file; edit_file edits text")));
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            ToolError::Failed(format!("{shown} is not UTF-8 text ({e}); edit_file edits text"))
        })?;
        let count = text.matches(&input.old_string).count();
        match count {
            0 => {
                return Err(ToolError::Failed(format!(
                    "`oldString` was not found in {shown} (it must match exactly, whitespace and indentation included)"
                )))
            }
            1 => {}
            n if !input.replace_all => {
                return Err(ToolError::Failed(format!(
                    "`oldString` occurs {n} times in {shown}; include more surrounding text to pick one, \
                     or pass `replaceAll: true` to replace every occurrence"
                )))
            }
            _ => {}
        }
        let edited = text.replace(&input.old_string, &input.new_string);
        atomic_write(&path, edited.as_bytes(), true, &shown)?;
        Ok(ToolOutput::ok(format!(
            "Replaced {count} occurrence{} in {shown}",
            if count == 1 { "" } else { "s" }
        )))
    }
}

impl EditFile {
    /// The name the model calls it by.
    pub const NAME: &'static str = "edit_file";
}

impl Tool for EditFile {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn description(&self) -> &str {
        "Edit a text file in the working directory by replacing an exact string. `oldString` must \
         occur exactly once (copy it from read_file output, without the line-number prefix, with \
         enough surrounding lines to be unique), unless `replaceAll` is true, which replaces every \
         occurrence. The file is written atomically."
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "File to edit, relative to the working directory"},
                "oldString": {"type": "string", "description": "The exact text to replace"},
                "newString": {"type": "string", "description": "The text to put in its place"},
                "replaceAll": {"type": "boolean", "description": "Replace every occurrence; default false"}
            },
            "required": ["path", "oldString", "newString"],
            "additionalProperties": false
        })
    }

    fn execute(&self, input: Value, ctx: ToolContext) -> BoxFuture<Result<ToolOutput, ToolError>> {
        let result = self.edit(input, ctx.cwd.as_deref());
        Box::pin(async move { result })
    }
}
