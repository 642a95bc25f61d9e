//! The store plugin through the real host: the `store` service, its errors,
//! and a store that cannot open its file.

use serde_json::json;

use crate::support::*;

const STORE: &str = "libdispatch_plugin_store_sqlite.so";

#[test]
fn the_store_service_appends_windows_and_lists_through_the_bus() {
    let cfg = Config::new().plugin(STORE, "").write();
    let (out, lines) = call(
        &cfg,
        &[
            (
                "store",
                r#"{"op":"append","conversationId":"c1","role":"user","turnId":"t1","chunks":[{"type":"text","text":"Hello store"}]}"#,
            ),
            (
                "store",
                r#"{"op":"append","conversationId":"c1","role":"assistant","turnId":"t1","chunks":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}"#,
            ),
            ("store", r#"{"op":"history","conversationId":"c1","sinceSeq":1}"#),
            ("store", r#"{"op":"history","conversationId":"c1","limit":1}"#),
            ("store", r#"{"op":"list"}"#),
            (
                "store",
                r#"{"op":"update","conversationId":"c1","model":"scripted/demo","reasoningEffort":"high"}"#,
            ),
            ("store", r#"{"op":"history","conversationId":"ghost"}"#),
        ],
        &[],
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(lines[0], json!({"seqs": [1]}));
    assert_eq!(lines[1], json!({"seqs": [2, 3]}));
    assert_eq!(
        lines[2],
        json!({"chunks": [{"seq": 2, "role": "assistant", "chunk": {"type": "text", "text": "a"}},
                          {"seq": 3, "role": "assistant", "chunk": {"type": "text", "text": "b"}}], "latestSeq": 3})
    );
    assert_eq!(lines[3]["chunks"][0]["seq"], 3);
    assert_eq!(lines[4]["conversations"][0]["id"], "c1");
    assert_eq!(lines[4]["conversations"][0]["title"], "Hello store");
    assert_eq!(lines[4]["conversations"][0]["status"], "idle");
    assert_eq!(lines[5]["model"], "scripted/demo");
    assert_eq!(lines[5]["reasoningEffort"], "high");
    assert_eq!(lines[6], json!({"chunks": [], "latestSeq": 0}));
    // It survived the host: a new process sees the same data.
    let (_, lines) = call(&cfg, &[("store", r#"{"op":"history","conversationId":"c1"}"#)], &[]);
    assert_eq!(lines[0]["latestSeq"], 3);
}

#[test]
fn bad_requests_are_clear_errors() {
    let cfg = Config::new().plugin(STORE, "max_chunk_bytes = 64").write();
    let (out, lines) = call(
        &cfg,
        &[
            (
                "store",
                r#"{"op":"append","conversationId":"bad id","role":"user","chunks":[{"type":"text","text":"x"}]}"#,
            ),
            (
                "store",
                &format!(
                    r#"{{"op":"append","conversationId":"c","role":"user","chunks":[{{"type":"text","text":"{}"}}]}}"#,
                    "y".repeat(100)
                ),
            ),
            ("store", r#"{"op":"append","conversationId":"c","role":"robot","chunks":[]}"#),
            ("store", r#"{"op":"explode"}"#),
        ],
        &[],
    );
    assert_eq!(out.code(), 1);
    assert_eq!(lines[0]["code"], "invalid_payload");
    assert!(
        lines[0]["error"].as_str().unwrap().starts_with("invalid conversation id \"bad id\""),
        "{lines:?}"
    );
    assert_eq!(lines[1]["error"], "chunk #0 is 125 bytes, over the limit of 64 bytes");
    assert_eq!(lines[2]["code"], "invalid_payload");
    assert!(lines[3]["error"].as_str().unwrap().contains("unknown variant `explode`"), "{lines:?}");
}

#[test]
fn a_store_that_cannot_open_its_file_fails_activation_with_the_path() {
    let c = Config::new();
    let corrupt = c.dir.path().join("corrupt.db");
    std::fs::write(&corrupt, vec![7u8; 4096]).unwrap();
    let cfg = c.plugin(STORE, &format!("path = {:?}", corrupt.display().to_string())).write();
    let (out, rows) = plugins_json(&cfg, &[]);
    assert_eq!(out.code(), 1);
    assert_row(
        &rows,
        "store-sqlite",
        "failed",
        &["cannot open the database", "corrupt.db", "not a database"],
    );
}

/// `dispatch call store …` beside a running `serve` on the same database
/// made most appends fail with `UNIQUE constraint failed`. The second
/// process's store now refuses to open, naming the process that holds it.
#[test]
fn a_second_process_on_the_same_store_is_refused_naming_the_first() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::Duration;
    let cfg = Config::new().plugin(STORE, "").write();
    let mut serve = Command::new(dispatch_bin())
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(serve.stderr.take().unwrap()).lines();
    assert!(
        lines.by_ref().map_while(Result::ok).any(|l| l.contains("dispatch is serving")),
        "the first host never served"
    );
    let (out, answers) = call(&cfg, &[("store", r#"{"op":"history","conversationId":"c1"}"#)], &[]);
    let _ = Command::new("kill").args(["-TERM", &serve.id().to_string()]).status();
    std::thread::spawn(move || lines.for_each(drop));
    let _ = wait(serve, Duration::from_secs(20), "the first host");
    assert_eq!(out.code(), 1, "{}", out.stderr);
    assert_eq!(answers[0]["code"], "not_found", "{answers:?}");
    assert!(
        out.stderr.contains("already in use by another process") && out.stderr.contains("(pid "),
        "{}",
        out.stderr
    );
}
