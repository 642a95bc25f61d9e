//! `write_file`: create a file (or replace one, when asked), atomically.

use std::io::Write as _;
use std::path::Path;

use dispatch_protocol::tool::{Tool, ToolContext, ToolError, ToolOutput};
use dispatch_protocol::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::contain::Workdir;
use crate::input::parse;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    path: String,
    content: String,
    #[serde(default)]
    overwrite: bool,
}

/// Write `bytes` to `path` through a temporary file in the same directory
/// and a rename, so a reader (or a crash) sees the old file or the new
/// one, never half of it. `replace: false` refuses an existing file
/// atomically (no window between the check and the rename). A replaced
/// file keeps its permissions.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8], replace: bool, shown: &str) -> Result<(), ToolError> {
    let fail = |what: &str, e: std::io::Error| ToolError::Failed(format!("cannot {what} {shown}: {e}"));
    let dir = path.parent().ok_or_else(|| ToolError::Failed(format!("{shown} has no directory")))?;
    // A new file gets 0666 less the umask, like any file a program creates
    // (tempfile's default, 0600, ignored the umask); a replaced file keeps
    // its permissions (below).
    let mut tmp = tempfile::Builder::new()
        .prefix(".dispatch-write-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(|e| fail("create a temporary file next to", e))?;
    tmp.write_all(bytes).map_err(|e| fail("write", e))?;
    if let Ok(meta) = std::fs::metadata(path) {
        tmp.as_file().set_permissions(meta.permissions()).map_err(|e| fail("keep the permissions of", e))?;
    }
    tmp.as_file().sync_all().map_err(|e| fail("flush", e))?;
    let persisted = if replace { tmp.persist(path) } else { tmp.persist_noclobber(path) };
    persisted.map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            ToolError::Failed(format!("{shown} already exists; pass `overwrite: true` to replace it"))
        } else {
            fail("write", e.error)
        }
    })?;
    Ok(())
}

/// The `write_file` tool.
#[derive(Debug, Default)]
pub struct WriteFile;

impl WriteFile {
    /// The call, synchronously.
    pub fn write(&self, input: Value, cwd: Option<&Path>) -> Result<ToolOutput, ToolError> {
        let input: Input = parse(input)?;
        let wd = Workdir::new(cwd)?;
        let path = wd.writable(&input.path)?;
        let shown = wd.show(&path);
        let existed = match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => {
                return Err(ToolError::Failed(format!("{shown} is a directory")));
            }
            Ok(_) if !input.overwrite => {
                return Err(ToolError::Failed(format!(
                    "{shown} already exists; pass `overwrite: true` to replace it (or use edit_file to change part of it)"
                )));
            }
            Ok(_) => true,
            Err(_) => false,
        };
        atomic_write(&path, input.content.as_bytes(), input.overwrite, &shown)?;
        let lines = input.content.lines().count();
        let bytes = input.content.len();
        Ok(ToolOutput::ok(format!(
            "{} {shown} ({bytes} bytes, {lines} lines)",
            if existed { "Overwrote" } else { "Created" }
        )))
    }
}

impl WriteFile {
    /// The name the model calls it by.
    pub const NAME: &'static str = "write_file";
}

impl Tool for WriteFile {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn description(&self) -> &str {
        "Create a file in the working directory with the given content. Refuses to replace an \
         existing file unless `overwrite` is true (prefer edit_file for changing part of a file). \
         The parent directory must already exist: it is not created. The file is written \
         atomically (all or nothing)."
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "File to create, relative to the working directory"},
                "content": {"type": "string", "description": "The whole content of the file"},
                "overwrite": {"type": "boolean", "description": "Replace the file if it exists; default false"}
            },
            "required": ["path", "content"],
            "additionalProperties": false
        })
    }

    fn execute(&self, input: Value, ctx: ToolContext) -> BoxFuture<Result<ToolOutput, ToolError>> {
        let result = self.write(input, ctx.cwd.as_deref());
        Box::pin(async move { result })
    }
}
