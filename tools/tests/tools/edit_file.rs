use dispatch_tools::edit_file::EditFile;
use serde_json::json;

use crate::support::*;

fn file(text: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("f.rs"), text).unwrap();
    d
}

fn read(d: &tempfile::TempDir) -> String {
    std::fs::read_to_string(d.path().join("f.rs")).unwrap()
}

#[test]
fn replaces_a_unique_string() {
    let d = file("fn a() {}\nfn b() {}\n");
    let out =
        content(call(&EditFile, d.path(), json!({"path": "f.rs", "oldString": "fn b", "newString": "fn c"})));
    assert_eq!(out, "Replaced 1 occurrence in f.rs");
    assert_eq!(read(&d), "fn a() {}\nfn c() {}\n");
}

#[test]
fn zero_or_several_matches_are_errors_naming_the_count() {
    let d = file("x = 1\nx = 2\nx = 3\n");
    let e = err(call(&EditFile, d.path(), json!({"path": "f.rs", "oldString": "y", "newString": "z"})));
    assert!(e.contains("`oldString` was not found in f.rs"), "{e}");
    let e = err(call(&EditFile, d.path(), json!({"path": "f.rs", "oldString": "x =", "newString": "y ="})));
    assert!(e.contains("`oldString` occurs 3 times in f.rs"), "{e}");
    assert_eq!(read(&d), "x = 1\nx = 2\nx = 3\n", "nothing written on error");
    let out = content(call(
        &EditFile,
        d.path(),
        json!({"path": "f.rs", "oldString": "x =", "newString": "y =", "replaceAll": true}),
    ));
    assert_eq!(out, "Replaced 3 occurrences in f.rs");
    assert_eq!(read(&d), "y = 1\ny = 2\ny = 3\n");
}

#[test]
fn bad_input_is_explained() {
    let d = file("abc");
    let e = err(call(&EditFile, d.path(), json!({"path": "f.rs", "oldString": "", "newString": "x"})));
    assert!(e.contains("`oldString` is empty"), "{e}");
    let e = err(call(&EditFile, d.path(), json!({"path": "f.rs", "oldString": "a", "newString": "a"})));
    assert!(e.contains("are the same"), "{e}");
    let e = err(call(&EditFile, d.path(), json!({"path": "f.rs", "old": "a", "newString": "b"})));
    assert!(e.starts_with("invalid input: unknown field `old`"), "{e}");
    std::fs::write(d.path().join("b.bin"), [1, 0, 2]).unwrap();
    let e = err(call(&EditFile, d.path(), json!({"path": "b.bin", "oldString": "a", "newString": "b"})));
    assert!(e.contains("binary"), "{e}");
}

/// `replaceAll` of a 1-character match in a 1 MB file with a 4 KB string
/// used to build a 4 GB string. The result's size is checked first.
#[test]
fn an_edit_whose_result_would_be_huge_is_refused_before_it_is_built() {
    let d = file(&"a".repeat(1 << 20));
    let r = call(
        &EditFile,
        d.path(),
        json!({"path": "f.rs", "oldString": "a", "newString": "b".repeat(4096), "replaceAll": true}),
    );
    let e = err(r);
    assert!(e.contains("1048576 occurrences") && e.contains("at most 16 MiB"), "{e}");
    assert_eq!(read(&d).len(), 1 << 20, "the file is untouched");
}
