//! `edit_file`: exact-string replacement in a text file, atomically.

use std::path::Path;

use dispatch_protocol::tool::{Tool, ToolContext, ToolError, ToolOutput};
use dispatch_protocol::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::contain::Workdir;
use crate::input::parse;
use crate::write_file::atomic_write;

/// The largest file `edit_file` reads, and the largest it writes.
pub const MAX_EDIT_BYTES: usize = 16 * 1024 * 1024;

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
        let fail = |e: std::io::Error| ToolError::Failed(format!("cannot read {shown}: {e}"));
        let size = std::fs::metadata(&path).map_err(fail)?.len();
        if size > MAX_EDIT_BYTES as u64 {
            return Err(ToolError::Failed(format!(
                "{shown} is {size} bytes; edit_file edits files of at most {} MiB",
                MAX_EDIT_BYTES >> 20
            )));
        }
        let mut bytes = Vec::new();
        // Bounded even if the file grows after the size check.
        std::io::Read::read_to_end(
            &mut std::io::Read::take(std::fs::File::open(&path).map_err(fail)?, MAX_EDIT_BYTES as u64 + 1),
            &mut bytes,
        )
        .map_err(fail)?;
        if bytes.len() > MAX_EDIT_BYTES {
            return Err(ToolError::Failed(format!(
                "{shown} grew past {} MiB while being read",
                MAX_EDIT_BYTES >> 20
            )));
        }
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
        // The result's size is known before it is built: refuse rather than
        // allocate (a 1 MB file of single-character matches times a 4 KB
        // replacement would be 4 GB).
        let result_len = (text.len() - count * input.old_string.len()) as u128
            + count as u128 * input.new_string.len() as u128;
        if result_len > MAX_EDIT_BYTES as u128 {
            return Err(ToolError::Failed(format!(
                "replacing {count} occurrence{} would make {shown} {result_len} bytes; edit_file writes at most {} MiB",
                if count == 1 { "" } else { "s" },
                MAX_EDIT_BYTES >> 20
            )));
        }
        let edited = text.replace(&input.old_string, &input.new_string);
        atomic_write(&wd, &path, edited.as_bytes(), true, &shown)?;
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
        crate::blocking::off_thread("edit_file", move || EditFile.edit(input, ctx.cwd.as_deref()))
    }
}
