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

/// Write `bytes` to `path` (inside `wd`) through a temporary file in the
/// same directory and a rename, so a reader (or a crash) sees the old file
/// or the new one, never half of it. `replace: false` refuses an existing
/// file atomically (no window between the check and the rename). A replaced
/// file keeps its permissions; a new one gets 0666 less the umask.
///
/// Everything happens relative to a handle on the parent directory opened
/// with `openat2(RESOLVE_BENEATH)` from the working directory: a symlink
/// swapped into the path after [`Workdir::writable`] checked it cannot send
/// the write outside (it could with path-based calls: 9 of 1500 racing
/// writes landed outside before).
pub(crate) fn atomic_write(
    wd: &Workdir,
    path: &Path,
    bytes: &[u8],
    replace: bool,
    shown: &str,
) -> Result<(), ToolError> {
    let fail = |what: &str, e: std::io::Error| ToolError::Failed(format!("cannot {what} {shown}: {e}"));
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(ToolError::Failed(format!("{shown} has no directory")));
    };
    let parent = beneath::open_dir(wd.root(), dir).map_err(|e| match e.raw_os_error() {
        Some(libc::EXDEV) | Some(libc::ELOOP) => {
            ToolError::Failed(format!("{shown} is outside the working directory (its directory moved)"))
        }
        _ => fail("open the directory of", e),
    })?;
    let name = std::ffi::CString::new(name.as_encoded_bytes())
        .map_err(|_| ToolError::InvalidInput(format!("{shown}: a path may not contain NUL")))?;
    let (tmp_name, mut tmp) =
        beneath::create_temp(&parent).map_err(|e| fail("create a temporary file next to", e))?;
    let written = (|| {
        tmp.write_all(bytes).map_err(|e| fail("write", e))?;
        if let Some(mode) = beneath::mode_of(&parent, &name) {
            let keep = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(mode);
            tmp.set_permissions(keep).map_err(|e| fail("keep the permissions of", e))?;
        }
        tmp.sync_all().map_err(|e| fail("flush", e))?;
        beneath::rename(&parent, &tmp_name, &name, replace).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                ToolError::Failed(format!("{shown} already exists; pass `overwrite: true` to replace it"))
            } else {
                fail("write", e)
            }
        })
    })();
    if written.is_err() {
        beneath::unlink(&parent, &tmp_name);
    }
    written
}

/// The `*at` system calls behind [`atomic_write`].
mod beneath {
    use std::ffi::{CStr, CString};
    use std::fs::File;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::path::Path;

    use crate::at::{check, cstr, openat2};

    fn open(path: &Path, flags: i32) -> io::Result<OwnedFd> {
        let c = cstr(path)?;
        // SAFETY: a valid NUL-terminated path and flags.
        let fd = check(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) }.into())?;
        // SAFETY: just opened, owned by nothing else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Open directory `dir` (inside `root`) so that resolving it can never
    /// leave `root`: `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`.
    /// A kernel without `openat2` (before Linux 5.6) gets a plain open of
    /// the checked path — the race is then closed only from here on.
    pub(super) fn open_dir(root: &Path, dir: &Path) -> io::Result<OwnedFd> {
        let flags = libc::O_DIRECTORY | libc::O_PATH;
        let root_fd = open(root, flags)?;
        let rel = dir.strip_prefix(root).map_err(|_| io::Error::from_raw_os_error(libc::EXDEV))?;
        let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
        match openat2(Some(&root_fd), rel, flags, libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => open(dir, flags),
            other => other,
        }
    }

    /// Create a new temporary file in `dir` (mode 0666 less the umask).
    pub(super) fn create_temp(dir: &OwnedFd) -> io::Result<(CString, File)> {
        for attempt in 0..100u32 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let name = CString::new(format!(".dispatch-write-{}-{nanos:x}-{attempt}", std::process::id()))
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: a valid directory fd, NUL-terminated name, valid flags.
            let fd = unsafe {
                libc::openat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                    0o666 as libc::c_uint,
                )
            };
            match check(fd.into()) {
                // SAFETY: just created, owned by nothing else.
                Ok(fd) => return Ok((name, unsafe { File::from_raw_fd(fd as i32) })),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::from(io::ErrorKind::AlreadyExists))
    }

    /// The permission bits of `name` in `dir`, if it exists (not followed
    /// if it is a symlink: a symlink's own mode is not what to keep).
    pub(super) fn mode_of(dir: &OwnedFd, name: &CStr) -> Option<u32> {
        // SAFETY: an all-zero stat is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd, NUL-terminated name, and a stat to fill.
        let ret =
            unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
        (ret == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFREG).then_some(st.st_mode & 0o7777)
    }

    /// Move `from` to `to`, both in `dir`; without `replace`, refuse an
    /// existing `to` atomically (`RENAME_NOREPLACE`).
    pub(super) fn rename(dir: &OwnedFd, from: &CStr, to: &CStr, replace: bool) -> io::Result<()> {
        let flags = if replace { 0 } else { libc::RENAME_NOREPLACE };
        // SAFETY: valid fds and NUL-terminated names.
        let ret =
            unsafe { libc::renameat2(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr(), flags) };
        check(ret.into()).map(drop)
    }

    /// Remove `name` from `dir`, ignoring errors (cleanup).
    pub(super) fn unlink(dir: &OwnedFd, name: &CStr) {
        // SAFETY: valid fd and NUL-terminated name.
        let _ = unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
    }
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
        atomic_write(&wd, &path, input.content.as_bytes(), input.overwrite, &shown)?;
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
        crate::blocking::off_thread("write_file", move || WriteFile.write(input, ctx.cwd.as_deref()))
    }
}
