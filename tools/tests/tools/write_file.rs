use std::os::unix::fs::PermissionsExt as _;

use dispatch_tools::write_file::WriteFile;
use serde_json::json;

use crate::support::*;

#[test]
fn creates_a_file() {
    let d = tempfile::tempdir().unwrap();
    let out = content(call(&WriteFile, d.path(), json!({"path": "new.txt", "content": "a\nb\n"})));
    assert_eq!(out, "Created new.txt (4 bytes, 2 lines)");
    assert_eq!(std::fs::read_to_string(d.path().join("new.txt")).unwrap(), "a\nb\n");
}

#[test]
fn refuses_to_overwrite_unless_asked_and_keeps_permissions() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("run.sh");
    std::fs::write(&p, "old").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o750)).unwrap();
    let e = err(call(&WriteFile, d.path(), json!({"path": "run.sh", "content": "new"})));
    assert!(e.contains("run.sh already exists; pass `overwrite: true`"), "{e}");
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "old");
    let out =
        content(call(&WriteFile, d.path(), json!({"path": "run.sh", "content": "new", "overwrite": true})));
    assert!(out.starts_with("Overwrote run.sh"), "{out}");
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
    assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o750);
}

#[test]
fn does_not_create_parent_directories_and_says_so() {
    let d = tempfile::tempdir().unwrap();
    let e = err(call(&WriteFile, d.path(), json!({"path": "a/b/c.txt", "content": "x"})));
    assert!(e.contains("the directory a/b does not exist; create it first"), "{e}");
    assert!(!d.path().join("a").exists());
}

#[test]
fn writes_atomically_leaving_no_temporary_file() {
    let d = tempfile::tempdir().unwrap();
    content(call(&WriteFile, d.path(), json!({"path": "f.txt", "content": "x".repeat(100_000)})));
    let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("f.txt")]);
    // A directory in the way is not replaced.
    std::fs::create_dir(d.path().join("dir")).unwrap();
    let e = err(call(&WriteFile, d.path(), json!({"path": "dir", "content": "x", "overwrite": true})));
    assert!(e.contains("dir is a directory"), "{e}");
}

#[test]
fn bad_input_is_explained() {
    let d = tempfile::tempdir().unwrap();
    assert_eq!(
        err(call(&WriteFile, d.path(), json!({"path": "x"}))),
        "invalid input: missing field `content`"
    );
    let e = err(call(&WriteFile, d.path(), json!({"path": "x", "content": "y", "overwrite": "yes"})));
    assert!(e.contains("invalid type: string \"yes\", expected a boolean"), "{e}");
}

/// New files used to be created 0600 whatever the umask.
#[test]
fn a_new_file_gets_the_umask_default_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    content(call(&WriteFile, d.path(), json!({"path": "new.txt", "content": "x"})));
    std::fs::File::create(d.path().join("reference.txt")).unwrap();
    let mode = |name: &str| std::fs::metadata(d.path().join(name)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("new.txt"), mode("reference.txt"));
}
