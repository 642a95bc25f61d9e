//! Every file tool refuses paths that lead outside the working directory.

use std::os::unix::fs::symlink;
use std::path::Path;

use dispatch_protocol::tool::Tool;
use dispatch_tools::edit_file::EditFile;
use dispatch_tools::read_file::ReadFile;
use dispatch_tools::write_file::WriteFile;
use serde_json::{json, Value};

use crate::support::*;

/// A working directory `work` next to an `outside` directory holding
/// `secret.txt`, with symlinks from inside to outside.
struct Layout {
    _root: tempfile::TempDir,
    work: std::path::PathBuf,
    outside: std::path::PathBuf,
}

fn layout() -> Layout {
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("work");
    let outside = root.path().join("outside");
    std::fs::create_dir(&work).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "secret").unwrap();
    std::fs::write(work.join("ok.txt"), "fine").unwrap();
    symlink("/etc", work.join("etc")).unwrap();
    symlink(&outside, work.join("linkdir")).unwrap();
    symlink(outside.join("secret.txt"), work.join("secret-link.txt")).unwrap();
    symlink("ok.txt", work.join("inner-link.txt")).unwrap();
    Layout { _root: root, work, outside }
}

/// Each tool with the input that would touch `path`.
fn attempts(path: &str) -> Vec<(Box<dyn Tool>, Value)> {
    vec![
        (Box::new(ReadFile::default()), json!({"path": path})),
        (Box::new(WriteFile), json!({"path": path, "content": "pwned", "overwrite": true})),
        (Box::new(EditFile), json!({"path": path, "oldString": "secret", "newString": "pwned"})),
    ]
}

fn refused(work: &Path, path: &str, expect: &str) {
    for (tool, input) in attempts(path) {
        let e = err(call(tool.as_ref(), work, input));
        assert!(e.contains(expect), "{} on {path:?}: {e}", tool.name());
    }
}

fn secret_untouched(l: &Layout) {
    assert_eq!(std::fs::read_to_string(l.outside.join("secret.txt")).unwrap(), "secret");
    assert_eq!(std::fs::read_dir(&l.outside).unwrap().count(), 1, "nothing created outside");
}

#[test]
fn dot_dot_is_refused() {
    let l = layout();
    refused(&l.work, "../outside/secret.txt", "is outside the working directory");
    refused(&l.work, "sub/../../outside/secret.txt", "is outside the working directory");
    secret_untouched(&l);
}

#[test]
fn absolute_paths_outside_are_refused_and_inside_allowed() {
    let l = layout();
    refused(&l.work, "/etc/passwd", "is outside the working directory");
    refused(&l.work, l.outside.join("secret.txt").to_str().unwrap(), "is outside the working directory");
    let inside = l.work.join("ok.txt");
    let out = content(call(&ReadFile::default(), &l.work, json!({"path": inside.to_str().unwrap()})));
    assert!(out.contains("fine"), "{out}");
    secret_untouched(&l);
}

#[test]
fn a_symlink_to_etc_is_refused() {
    let l = layout();
    refused(&l.work, "etc/passwd", "through a symlink");
    refused(&l.work, "secret-link.txt", "through a symlink");
    secret_untouched(&l);
}

#[test]
fn a_symlinked_parent_directory_is_refused() {
    let l = layout();
    refused(&l.work, "linkdir/secret.txt", "through a symlink");
    // Creating a new file through the linked directory, too.
    let e = err(call(&WriteFile, &l.work, json!({"path": "linkdir/new.txt", "content": "x"})));
    assert!(e.contains("through a symlink"), "{e}");
    secret_untouched(&l);
}

#[test]
fn a_symlink_that_stays_inside_is_followed() {
    let l = layout();
    let out = content(call(&ReadFile::default(), &l.work, json!({"path": "inner-link.txt"})));
    assert!(out.contains("fine"), "{out}");
    content(call(
        &EditFile,
        &l.work,
        json!({"path": "inner-link.txt", "oldString": "fine", "newString": "good"}),
    ));
    assert_eq!(std::fs::read_to_string(l.work.join("ok.txt")).unwrap(), "good");
    assert!(std::fs::symlink_metadata(l.work.join("inner-link.txt")).unwrap().file_type().is_symlink());
}

#[test]
fn nul_bytes_and_very_long_paths_are_refused() {
    let l = layout();
    refused(&l.work, "ok.txt\0/../../outside", "contains a NUL byte");
    let long = "a/".repeat(3000);
    refused(&l.work, &long, "bytes long; the limit is 4096");
    // Under the limit but with a 300-byte name: the file system's own
    // error, as a message.
    let e = err(call(&ReadFile::default(), &l.work, json!({"path": "x".repeat(300)})));
    assert!(e.contains("File name too long"), "{e}");
}

#[test]
fn a_missing_working_directory_is_an_error() {
    let l = layout();
    let e = err(call(&ReadFile::default(), &l.work.join("gone"), json!({"path": "ok.txt"})));
    assert!(e.contains("the working directory") && e.contains("is not usable"), "{e}");
}

#[test]
fn the_working_directory_itself_is_not_a_file_to_write() {
    let l = layout();
    for path in [".", "sub/..", ""] {
        let e = err(call(&WriteFile, &l.work, json!({"path": path, "content": "x"})));
        assert!(
            e.contains("names the working directory itself") || e.contains("`path` is empty"),
            "{path:?}: {e}"
        );
    }
}

#[test]
fn a_fifo_is_refused_instead_of_blocking() {
    let l = layout();
    let fifo = l.work.join("pipe");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let e = err(call(&ReadFile::default(), &l.work, json!({"path": "pipe"})));
    assert!(e.contains("pipe is not a regular file"), "{e}");
    let e = err(call(&EditFile, &l.work, json!({"path": "pipe", "oldString": "a", "newString": "b"})));
    assert!(e.contains("pipe is not a regular file"), "{e}");
}

/// A directory swapped for a symlink to the outside between the check and
/// the write used to let writes land outside (9 of 1500 racing writes).
/// Writes now resolve beneath a handle on the working directory.
#[test]
fn a_directory_swapped_for_a_symlink_during_writes_never_lets_one_out() {
    use dispatch_tools::write_file::WriteFile;
    let work = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let root = work.path().to_path_buf();
    std::fs::create_dir(root.join("d")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (root, target, stop) = (root.clone(), outside.path().to_path_buf(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // d: a real directory, then briefly a symlink to the outside.
                if std::fs::rename(root.join("d"), root.join("d.real")).is_ok() {
                    let _ = std::os::unix::fs::symlink(&target, root.join("d"));
                    std::thread::yield_now();
                    let _ = std::fs::remove_file(root.join("d"));
                    let _ = std::fs::rename(root.join("d.real"), root.join("d"));
                }
            }
        })
    };
    for i in 0..1500 {
        let _ = call(&WriteFile, &root, json!({"path": format!("d/f{i}.txt"), "content": "x"}));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper.join().unwrap();
    let escaped: Vec<_> =
        std::fs::read_dir(outside.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(escaped.is_empty(), "{} writes landed outside: {escaped:?}", escaped.len());
}
