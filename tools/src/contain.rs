//! Containment: every path a file tool touches resolves inside the turn's
//! working directory.
//!
//! A path is checked twice: first lexically (`..` and absolute paths are
//! judged before the file system is asked anything, so nothing outside is
//! even probed), then after canonicalisation (a symlink — of the file
//! itself or of any parent directory — that leads outside is refused).
//! What remains is a check-then-use race with somebody swapping a
//! directory for a symlink between the two steps; the tools run with the
//! operator's rights, so this guards the model's mistakes, not a hostile
//! local user.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use dispatch_protocol::tool::ToolError;

/// Longest path accepted, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;

/// The directory a turn's file tools are confined to.
#[derive(Debug, Clone)]
pub struct Workdir {
    root: PathBuf,
}

fn refuse(msg: String) -> ToolError {
    ToolError::Failed(msg)
}

/// Resolve `.` and `..` without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

impl Workdir {
    /// The turn's working directory (`None`: the process's), which must
    /// exist.
    pub fn new(cwd: Option<&Path>) -> Result<Self, ToolError> {
        let dir = match cwd {
            Some(d) => d.to_path_buf(),
            None => std::env::current_dir()
                .map_err(|e| refuse(format!("cannot read the current directory: {e}")))?,
        };
        let root = std::fs::canonicalize(&dir)
            .map_err(|e| refuse(format!("the working directory {} is not usable: {e}", dir.display())))?;
        if !root.is_dir() {
            return Err(refuse(format!("the working directory {} is not a directory", dir.display())));
        }
        Ok(Workdir { root })
    }

    /// The canonical root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `path` as the model should see it: relative to the root when inside.
    pub fn show(&self, path: &Path) -> String {
        match path.strip_prefix(&self.root) {
            Ok(rel) if rel.as_os_str().is_empty() => ".".into(),
            Ok(rel) => rel.display().to_string(),
            Err(_) => path.display().to_string(),
        }
    }

    /// The lexical check: the path joined to the root, normalised, inside.
    fn lexical(&self, path: &str) -> Result<PathBuf, ToolError> {
        if path.is_empty() {
            return Err(ToolError::InvalidInput("`path` is empty".into()));
        }
        if path.contains('\0') {
            return Err(ToolError::InvalidInput("`path` contains a NUL byte".into()));
        }
        if path.len() > MAX_PATH_BYTES {
            return Err(ToolError::InvalidInput(format!(
                "`path` is {} bytes long; the limit is {MAX_PATH_BYTES}",
                path.len()
            )));
        }
        let joined = normalize(&self.root.join(path));
        if !joined.starts_with(&self.root) {
            return Err(refuse(format!(
                "`{path}` is outside the working directory {}; file tools only reach paths inside it",
                self.root.display()
            )));
        }
        Ok(joined)
    }

    fn inside(&self, path: &str, real: PathBuf) -> Result<PathBuf, ToolError> {
        if real.starts_with(&self.root) {
            Ok(real)
        } else {
            Err(refuse(format!(
                "`{path}` leads outside the working directory {} through a symlink (to {})",
                self.root.display(),
                real.display()
            )))
        }
    }

    /// When `dir` (inside the root, lexically) cannot be resolved: the
    /// first symlink on its way, if it leads outside — an error saying so,
    /// rather than "does not exist" (a directory swapped for a symlink to
    /// somewhere that is not there).
    fn symlink_on_the_way(&self, path: &str, dir: &Path) -> Result<(), ToolError> {
        let Ok(rel) = dir.strip_prefix(&self.root) else { return Ok(()) };
        let mut at = self.root.clone();
        for c in rel.components() {
            at.push(c);
            let Ok(meta) = at.symlink_metadata() else { return Ok(()) };
            if !meta.file_type().is_symlink() {
                continue;
            }
            let Ok(target) = std::fs::read_link(&at) else { return Ok(()) };
            let base = at.parent().unwrap_or(&self.root);
            let lands = normalize(&base.join(&target));
            if !lands.starts_with(&self.root) {
                return Err(refuse(format!(
                    "`{path}` leads outside the working directory {} through a symlink ({} -> {})",
                    self.root.display(),
                    self.show(&at),
                    target.display()
                )));
            }
            return Ok(());
        }
        Ok(())
    }

    /// An existing file or directory inside the root, canonicalised.
    pub fn existing(&self, path: &str) -> Result<PathBuf, ToolError> {
        let joined = self.lexical(path)?;
        match std::fs::canonicalize(&joined) {
            Ok(real) => self.inside(path, real),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // A dangling symlink says "not found" too; name it.
                if joined.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
                    Err(refuse(format!("`{path}` is a symlink to something that does not exist")))
                } else {
                    Err(refuse(format!("`{path}` does not exist")))
                }
            }
            Err(e) => Err(refuse(format!("cannot resolve `{path}`: {e}"))),
        }
    }

    /// A path to create or replace: its parent directory must exist inside
    /// the root (it is not created); an existing symlink at the path must
    /// lead inside, and the answer is its target.
    pub fn writable(&self, path: &str) -> Result<PathBuf, ToolError> {
        let joined = self.lexical(path)?;
        let (Some(parent), Some(name), false) = (joined.parent(), joined.file_name(), joined == self.root)
        else {
            return Err(refuse(format!("`{path}` names the working directory itself, not a file")));
        };
        let real_parent = match std::fs::canonicalize(parent) {
            Ok(p) => self.inside(path, p)?,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // A symlink on the way whose target is missing says "not
                // found" too: one leading outside is refused as such.
                self.symlink_on_the_way(path, parent)?;
                return Err(refuse(format!(
                    "the directory {} does not exist; create it first (file tools do not create directories)",
                    self.show(parent)
                )));
            }
            Err(e) => return Err(refuse(format!("cannot resolve the directory of `{path}`: {e}"))),
        };
        if !real_parent.is_dir() {
            return Err(refuse(format!("{} is not a directory", self.show(parent))));
        }
        let target = real_parent.join(name);
        match target.symlink_metadata() {
            Ok(m) if m.file_type().is_symlink() => match std::fs::canonicalize(&target) {
                Ok(real) => self.inside(path, real),
                Err(_) => Err(refuse(format!("`{path}` is a symlink to something that does not exist"))),
            },
            _ => Ok(target),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 31): a directory swapped for a symlink to a
    /// place that does not exist made `write_file` say the directory does
    /// not exist; it leads outside, and says so.
    #[test]
    fn a_dangling_symlink_leading_outside_is_named_as_such() {
        let work = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/nonexistent-dispatch-target/dir", work.path().join("d")).unwrap();
        std::os::unix::fs::symlink("../../nowhere-else", work.path().join("rel")).unwrap();
        std::fs::create_dir(work.path().join("real")).unwrap();
        std::os::unix::fs::symlink("missing-inside", work.path().join("real/inner")).unwrap();
        let wd = Workdir::new(Some(work.path())).unwrap();
        let message = |p: &str| match wd.writable(p) {
            Err(ToolError::Failed(m)) => m,
            other => panic!("{p}: {other:?}"),
        };
        assert!(message("d/f.txt").contains("leads outside"), "{}", message("d/f.txt"));
        assert!(message("rel/f.txt").contains("leads outside"), "{}", message("rel/f.txt"));
        // A dangling symlink that stays inside: the directory is missing.
        assert!(message("real/inner/f.txt").contains("does not exist"), "{}", message("real/inner/f.txt"));
        assert!(message("nope/f.txt").contains("does not exist"));
    }

    #[test]
    fn normalize_resolves_dots_lexically() {
        assert_eq!(normalize(Path::new("/a/b/../c/./d")), PathBuf::from("/a/c/d"));
        assert_eq!(normalize(Path::new("/a/../../..")), PathBuf::from("/"));
    }
}
