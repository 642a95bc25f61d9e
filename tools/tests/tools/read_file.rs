use dispatch_tools::read_file::{Config, ReadFile};
use serde_json::json;

use crate::support::*;

fn numbered(n: usize) -> String {
    (1..=n).map(|i| format!("line {i}\n")).collect()
}

#[test]
fn a_file_comes_with_line_numbers() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.txt"), "alpha\nbeta\r\ngamma").unwrap();
    let out = content(call(&ReadFile::default(), d.path(), json!({"path": "a.txt"})));
    assert_eq!(out, "     1\talpha\n     2\tbeta\n     3\tgamma\n");
}

#[test]
fn offset_and_limit_page_through_a_file_and_say_how_to_continue() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.txt"), numbered(10)).unwrap();
    let out =
        content(call(&ReadFile::default(), d.path(), json!({"path": "a.txt", "offset": 4, "limit": 3})));
    assert_eq!(
        out,
        "     4\tline 4\n     5\tline 5\n     6\tline 6\n[lines 4-6 of 10; continue with offset=7]\n"
    );
    let out = content(call(&ReadFile::default(), d.path(), json!({"path": "a.txt", "offset": 9})));
    assert!(out.ends_with("    10\tline 10\n[lines 9-10 of 10]\n"), "{out}");
    let e = err(call(&ReadFile::default(), d.path(), json!({"path": "a.txt", "offset": 11})));
    assert!(e.contains("`offset` 11 is past the end of a.txt (10 lines)"), "{e}");
    let e = err(call(&ReadFile::default(), d.path(), json!({"path": "a.txt", "offset": 0})));
    assert!(e.contains("1-based"), "{e}");
}

#[test]
fn the_output_cap_truncates_with_a_note() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("big.txt"), numbered(5000)).unwrap();
    let tool = ReadFile::new(Config { max_output_bytes: 1000, ..Config::default() });
    let out = content(call(&tool, d.path(), json!({"path": "big.txt"})));
    assert!(out.len() < 1200, "{}", out.len());
    let note = out.lines().last().unwrap();
    assert!(note.starts_with("[output capped at 1000 bytes: showing lines 1-"), "{note}");
    assert!(note.contains("of 5000; continue with offset="), "{note}");
    // The continuation picks up where the cap stopped.
    let next: u64 = note.rsplit('=').next().unwrap().trim_end_matches(']').parse().unwrap();
    let out = content(call(&tool, d.path(), json!({"path": "big.txt", "offset": next, "limit": 1})));
    assert!(out.starts_with(&format!("{next:>6}\tline {next}\n")), "{out}");
}

#[test]
fn long_lines_are_cut() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("min.js"), "x".repeat(5000)).unwrap();
    let tool = ReadFile::new(Config { max_line_chars: 100, ..Config::default() });
    let out = content(call(&tool, d.path(), json!({"path": "min.js"})));
    assert!(out.contains(&format!("{} … [line cut at 100 characters]", "x".repeat(100))), "{out}");
}

#[test]
fn a_directory_is_listed() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("src")).unwrap();
    std::fs::write(d.path().join("b.txt"), "").unwrap();
    std::fs::write(d.path().join("a.txt"), "").unwrap();
    let out = content(call(&ReadFile::default(), d.path(), json!({"path": "."})));
    assert_eq!(out, "./ (3 entries)\na.txt\nb.txt\nsrc/\n");
    let out = content(call(&ReadFile::default(), d.path(), json!({"path": "src"})));
    assert_eq!(out, "src/ is empty");
}

#[test]
fn binary_files_are_refused_with_a_message() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("x.bin"), [0x7f, b'E', b'L', b'F', 0, 1, 2]).unwrap();
    let e = err(call(&ReadFile::default(), d.path(), json!({"path": "x.bin"})));
    assert!(e.contains("x.bin looks like a binary file (7 bytes, a NUL byte at offset 4)"), "{e}");
}

#[test]
fn missing_files_and_bad_input_are_explained() {
    let d = tempfile::tempdir().unwrap();
    let e = err(call(&ReadFile::default(), d.path(), json!({"path": "nope.txt"})));
    assert!(e.contains("`nope.txt` does not exist"), "{e}");
    let e = err(call(&ReadFile::default(), d.path(), json!({})));
    assert_eq!(e, "invalid input: missing field `path`");
    let e = err(call(&ReadFile::default(), d.path(), json!({"path": "a", "limit": "ten"})));
    assert!(e.contains("invalid type: string \"ten\", expected u64"), "{e}");
}

#[test]
fn read_file_is_concurrency_safe() {
    use dispatch_protocol::tool::Tool;
    assert!(ReadFile::default().concurrency_safe());
    assert!(!dispatch_tools::write_file::WriteFile.concurrency_safe());
    assert!(!dispatch_tools::edit_file::EditFile.concurrency_safe());
    assert!(!dispatch_tools::shell::Shell::default().concurrency_safe());
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `read_file {limit: 1}` of a file with one huge line used to hold the
/// whole line (2.1 GB for a 2 GiB file, which aborted the host under a
/// memory limit). Only what can be shown is kept now.
#[test]
fn a_huge_line_is_read_with_bounded_memory() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(d.path().join("big.txt")).unwrap();
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..128 {
        f.write_all(&chunk).unwrap();
    }
    f.write_all(b"\nsecond line\n").unwrap();
    drop(f);
    let before = peak_rss_kib();
    let out = content(call(&ReadFile::default(), d.path(), json!({"path": "big.txt", "limit": 1})));
    let grown_mib = (peak_rss_kib() - before) / 1024;
    assert!(out.starts_with("     1\taaaa"), "{}", &out[..40]);
    assert!(out.contains("[line cut at 2000 characters]"), "{}", &out[out.len() - 200..]);
    assert!(out.ends_with("[lines 1-1 of 2; continue with offset=2]\n"), "{}", &out[out.len() - 200..]);
    assert!(grown_mib < 32, "reading one 128 MiB line took {grown_mib} MiB more memory");
}

/// Reading used to go on to the end of the file whatever the page: 36 s
/// on a growing log. Past the page only a bounded amount is read to count
/// lines; beyond it the answer says "more follows".
#[test]
fn reading_stops_after_the_page_of_a_large_file() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let mut f = std::io::BufWriter::new(std::fs::File::create(d.path().join("log.txt")).unwrap());
    for i in 0..1_500_000 {
        writeln!(f, "log line {i}").unwrap();
    }
    drop(f);
    let out = content(call(&ReadFile::default(), d.path(), json!({"path": "log.txt", "limit": 2})));
    assert_eq!(
        out,
        "     1\tlog line 0\n     2\tlog line 1\n[lines 1-2; more follows, continue with offset=3]\n"
    );
}

#[test]
fn an_abort_stops_a_long_read() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.txt"), numbered(1000)).unwrap();
    let abort = dispatch_protocol::abort::AbortSignal::new();
    abort.abort();
    let r = ReadFile::default().read(json!({"path": "a.txt", "offset": 900}), Some(d.path()), &abort);
    assert_eq!(err(r), "aborted");
}

/// A file read in one call when it fits the binary sniff, and in two parts
/// otherwise: around that boundary every line, and the last, comes out
/// whole and counted.
#[test]
fn files_either_side_of_the_sniff_size_read_whole() {
    let d = tempfile::tempdir().unwrap();
    for size in [8190, 8191, 8192, 8193, 8194, 20_000] {
        // Lines of 10 bytes ("xxxxxxxxx\n"), the last one cut to fit `size`.
        let text: String = "xxxxxxxxx\n".repeat(size / 10 + 1)[..size].to_owned();
        let lines = text.lines().count();
        std::fs::write(d.path().join("f.txt"), &text).unwrap();
        let out =
            content(call(&ReadFile::default(), d.path(), json!({"path": "f.txt", "offset": lines - 1})));
        let tail = text.lines().last().unwrap();
        assert!(
            out.ends_with(&format!("{lines:>6}\t{tail}\n[lines {}-{lines} of {lines}]\n", lines - 1)),
            "{size}: {out}"
        );
    }
}

fn begun(path: &str, cwd: &std::path::Path) -> dispatch_tools::read_file::Begun {
    let abort = dispatch_protocol::abort::AbortSignal::new();
    ReadFile::default().begin(json!({ "path": path }), Some(cwd), &abort)
}

/// A small file whose path and pages are cached is answered on the
/// caller's thread, with no hop to the blocking pool; the answer is the
/// one the checked path gives (reached here with an absolute path).
#[test]
fn a_small_cached_file_is_answered_at_once_as_the_checked_path_would() {
    use dispatch_tools::read_file::Begun;
    let d = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(d.path()).unwrap();
    std::fs::create_dir(root.join("sub")).unwrap();
    let mut nul_past_sniff = "y".repeat(20_000).into_bytes();
    nul_past_sniff[15_000] = 0;
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("empty.txt", Vec::new()),
        ("no-newline.txt", b"one\ntwo".to_vec()),
        ("sniff.txt", "xxxxxxxxx\n".repeat(820).as_bytes()[..8192].to_vec()),
        ("past-sniff.txt", "xxxxxxxxx\n".repeat(3000).into_bytes()),
        ("nul-past-sniff.txt", nul_past_sniff),
        ("binary.bin", vec![1, 2, 0, 3]),
        ("sub/inner.txt", numbered(50).into_bytes()),
    ];
    for (name, bytes) in &files {
        std::fs::write(root.join(name), bytes).unwrap();
        // Once through the page cache.
        let _ = std::fs::read(root.join(name)).unwrap();
        for input in [json!({}), json!({"offset": 2, "limit": 3}), json!({"offset": 40})] {
            let mut fast = input.clone();
            fast["path"] = json!(format!("./{name}"));
            let mut slow = input.clone();
            slow["path"] = json!(root.join(name).display().to_string());
            let abort = dispatch_protocol::abort::AbortSignal::new();
            let tool = ReadFile::default();
            let Begun::Done(answer) = tool.begin(fast.clone(), Some(&root), &abort) else {
                panic!("{name} {input}: not answered at once");
            };
            let Begun::Blocking(_) = tool.begin(slow.clone(), Some(&root), &abort) else {
                panic!("{name}: an absolute path took the fast path");
            };
            let checked = tool.read(slow, Some(&root), &abort);
            assert_eq!(format!("{answer:?}"), format!("{checked:?}"), "{name} {input}");
        }
    }
}

/// Whatever the fast path cannot judge without the checks — a symlink, a
/// directory, a FIFO, a missing or a large file, a path with `..` — goes to
/// the blocking, checked path, which words the answer as before.
#[test]
fn what_the_fast_path_cannot_judge_goes_to_the_checked_path() {
    use dispatch_tools::read_file::Begun;
    let d = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(d.path()).unwrap();
    std::fs::create_dir(root.join("dir")).unwrap();
    std::fs::write(root.join("dir/target.txt"), "inside\n").unwrap();
    std::os::unix::fs::symlink("dir/target.txt", root.join("link.txt")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("out.txt")).unwrap();
    std::fs::write(root.join("big.txt"), numbered(20_000)).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(root.join("pipe")).status().unwrap().success());
    let abort = dispatch_protocol::abort::AbortSignal::new();
    for (path, expect) in [
        ("link.txt", Ok("     1\tinside\n".to_owned())),
        ("out.txt", Err("leads outside the working directory")),
        ("dir", Ok("dir/ (1 entries)\ntarget.txt\n".to_owned())),
        ("pipe", Err("pipe is not a regular file")),
        ("nope.txt", Err("`nope.txt` does not exist")),
        ("dir/../dir/target.txt", Ok("     1\tinside\n".to_owned())),
        (
            "big.txt",
            Ok("     1\tline 1\n     2\tline 2\n[lines 1-2 of 20000; continue with offset=3]\n".to_owned()),
        ),
    ] {
        let input = json!({"path": path, "limit": 2});
        let Begun::Blocking(rest) = ReadFile::default().begin(input, Some(&root), &abort) else {
            panic!("{path}: answered without the checked path");
        };
        match (rest(&abort), expect) {
            (Ok(out), Ok(want)) => assert_eq!(out.content, want, "{path}"),
            (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{path}: {e}"),
            (got, want) => panic!("{path}: {got:?}, expected {want:?}"),
        }
    }
    // An empty path is the checked path's to refuse; a bad offset is
    // refused at once, whatever the file system holds.
    let Begun::Blocking(rest) = begun("", &root) else { panic!("an empty path took the fast path") };
    assert!(err(rest(&abort)).contains("`path` is empty"));
    let Begun::Done(Err(e)) =
        ReadFile::default().begin(json!({"path": "big.txt", "offset": 0}), Some(&root), &abort)
    else {
        panic!("a bad offset was not refused at once");
    };
    assert!(e.to_string().contains("1-based"), "{e}");
}

/// The fast path judges a file's type before it opens it for reading, as
/// the checked path does: opening a device or a FIFO can have effects of
/// its own (here: it releases a writer waiting for a reader). A writer
/// blocked on opening a FIFO in the working directory is still waiting
/// after `read_file` has refused the FIFO.
#[test]
fn the_fast_path_never_opens_what_is_not_a_regular_file() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let d = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(d.path()).unwrap();
    let fifo = root.join("pipe");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let opened = Arc::new(AtomicBool::new(false));
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let writer = {
        let (fifo, opened) = (fifo.clone(), opened.clone());
        // Blocks until some reader opens the FIFO.
        std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid_tx.send(unsafe { libc::gettid() }).unwrap();
            let f = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            opened.store(true, Ordering::SeqCst);
            drop(f);
        })
    };
    // Wait until the writer is inside its open (`/proc/…/syscall` starts
    // with the number of the call a blocked thread is in), so that a
    // reader's open would release it.
    let tid = tid_rx.recv().unwrap();
    let openat = format!("{} ", libc::SYS_openat);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).unwrap().starts_with(&openat) {
        assert!(std::time::Instant::now() < deadline, "the writer never blocked in open");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let abort = dispatch_protocol::abort::AbortSignal::new();
    let answer = ReadFile::default().read(json!({"path": "pipe"}), Some(&root), &abort);
    assert!(err(answer).contains("pipe is not a regular file"));
    // Had anything opened the FIFO for reading, the writer would have been
    // released by now (its open returns as the reader's does).
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!opened.load(Ordering::SeqCst), "read_file opened the FIFO");
    // Release the writer.
    drop(std::fs::File::open(&fifo).unwrap());
    writer.join().unwrap();
    assert!(opened.load(Ordering::SeqCst));
}
