//! `run_shell` on real child processes.

use std::time::{Duration, Instant};

use dispatch_protocol::abort::AbortSignal;
use dispatch_protocol::tool::Tool;
use dispatch_protocol::wire::OutputStream;
use dispatch_tools::shell::{Config, Shell};
use serde_json::json;

use crate::support::*;
use dispatch_test_support::process_table::{assert_no_process_with, assert_process_with};

/// A marker only this test's processes carry, to find them in /proc.
fn marker(test: &str) -> String {
    format!("{}.{}", 7_000 + std::process::id() % 1000, test.len() * 37 + 11)
}

#[tokio::test]
async fn output_streams_in_order_and_the_exit_code_is_in_the_result() {
    let d = tempfile::tempdir().unwrap();
    let (ctx, streamed) = ctx(d.path(), AbortSignal::new());
    let out = Shell::default()
        .execute(json!({"command": "echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three; exit 3"}), ctx)
        .await
        .unwrap();
    assert!(out.is_error, "non-zero exit is an error result");
    assert_eq!(out.content, "one\ntwo\nthree\n[exit code 3]");
    assert_eq!(
        *streamed.lock().unwrap(),
        vec![
            ("one\n".to_owned(), OutputStream::Stdout),
            ("two\n".to_owned(), OutputStream::Stderr),
            ("three\n".to_owned(), OutputStream::Stdout)
        ]
    );
}

#[tokio::test]
async fn it_runs_in_the_working_directory() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("here.txt"), "").unwrap();
    let (ctx, _) = ctx(d.path(), AbortSignal::new());
    let out = Shell::default().execute(json!({"command": "ls"}), ctx).await.unwrap();
    assert_eq!((out.content.as_str(), out.is_error), ("here.txt\n[exit code 0]", false));
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let d = tempfile::tempdir().unwrap();
    let m = marker("a_timeout_kills_the_whole_process_group");
    let (ctx, _) = ctx(d.path(), AbortSignal::new());
    let started = Instant::now();
    let out = Shell::default()
        .execute(json!({"command": format!("sleep {m} & sleep {m}; echo never"), "timeoutMs": 300}), ctx)
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(20), "returned long after the timeout");
    assert!(out.is_error);
    assert!(
        out.content.ends_with("[timed out after 300 ms; the command's process group was killed]"),
        "{}",
        out.content
    );
    assert!(!out.content.contains("never"));
    assert_no_process_with(&m);
}

#[tokio::test]
async fn an_abort_mid_run_kills_the_group_and_returns_at_once() {
    let d = tempfile::tempdir().unwrap();
    let m = marker("an_abort_mid_run_kills_the_group_and_returns_at_once!");
    let abort = AbortSignal::new();
    let (ctx, streamed) = ctx(d.path(), abort.clone());
    let run =
        tokio::spawn(Shell::default().execute(json!({"command": format!("echo started; sleep {m}")}), ctx));
    // Abort once the command is visibly running.
    let deadline = Instant::now() + Duration::from_secs(10);
    while streamed.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no output");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_process_with(&m);
    abort.abort();
    let out = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("returned after abort")
        .unwrap()
        .unwrap();
    assert!(out.is_error);
    assert_eq!(out.content, "started\n[aborted; the command's process group was killed]");
    assert_no_process_with(&m);
}

#[tokio::test]
async fn a_background_child_holding_stdout_cannot_hold_the_call() {
    let d = tempfile::tempdir().unwrap();
    let m = marker("a_background_child_holding_stdout_cannot_hold_the_call");
    let (ctx, _) = ctx(d.path(), AbortSignal::new());
    let started = Instant::now();
    let out =
        Shell::default().execute(json!({"command": format!("sleep {m} & echo done")}), ctx).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!((out.content.as_str(), out.is_error), ("done\n[exit code 0]", false));
    assert_no_process_with(&m);
}

#[tokio::test]
async fn huge_output_is_capped_with_a_note() {
    let d = tempfile::tempdir().unwrap();
    let shell = Shell::new(Config { max_output_bytes: 10_000, ..Config::default() });
    let (ctx, streamed) = ctx(d.path(), AbortSignal::new());
    let out = shell
        .execute(json!({"command": "i=0; while [ $i -lt 20000 ]; do echo line-$i; i=$((i+1)); done"}), ctx)
        .await
        .unwrap();
    assert!(!out.is_error);
    assert!(out.content.len() < 11_000, "{}", out.content.len());
    assert!(out.content.starts_with("line-0\nline-1\n"));
    assert!(out.content.contains("bytes of output omitted"), "{}", &out.content[..200]);
    assert!(out.content.ends_with("line-19999\n[exit code 0]"));
    let streamed = streamed.lock().unwrap();
    let total: usize =
        streamed.iter().filter(|(_, s)| *s == OutputStream::Stdout).map(|(t, _)| t.len()).sum();
    assert!(total <= 10_000, "streaming stops at the cap: {total}");
    assert!(streamed.last().unwrap().0.contains("streaming stopped at 10000 bytes"));
}

#[tokio::test]
async fn bad_input_is_explained() {
    let d = tempfile::tempdir().unwrap();
    let run = |input| {
        let (ctx, _) = ctx(d.path(), AbortSignal::new());
        Shell::default().execute(input, ctx)
    };
    assert_eq!(run(json!({})).await.unwrap_err().to_string(), "invalid input: missing field `command`");
    let e = run(json!({"command": "true", "timeoutMs": "soon"})).await.unwrap_err().to_string();
    assert!(e.contains("invalid type: string \"soon\", expected u64"), "{e}");
    let e = run(json!({"command": "true", "timeoutMs": 99_999_999})).await.unwrap_err().to_string();
    assert!(e.contains("over the limit of 600000 ms"), "{e}");
    let e = run(json!({"command": "  "})).await.unwrap_err().to_string();
    assert!(e.contains("`command` is empty"), "{e}");
}

#[test]
fn the_command_environment_is_an_allowlist_without_credentials() {
    let host_env = |name: &str| -> Option<std::ffi::OsString> {
        match name {
            "PATH" => Some("/usr/bin".into()),
            "HOME" => Some("/home/op".into()),
            "DISPATCH_API_KEY" => Some("sk-leak".into()),
            "OPENROUTER_API_KEY" => Some("sk-leak-2".into()),
            "EDITOR" => Some("vi".into()),
            _ => None,
        }
    };
    let config = Config {
        env_passthrough: vec!["EDITOR".into()],
        env: [("CI".to_owned(), "1".to_owned())].into(),
        ..Config::default()
    };
    let env = config.command_env(host_env);
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["PATH", "HOME", "EDITOR", "CI"]);
    // An operator cannot opt a credential in.
    let bad = Config { env_passthrough: vec!["DISPATCH_API_KEY".into()], ..Config::default() };
    let e = bad.validate().unwrap_err();
    assert!(e.contains("`DISPATCH_API_KEY`"), "{e}");
    assert!(bad.command_env(host_env).iter().all(|(k, _)| k != "DISPATCH_API_KEY"));
}

#[tokio::test]
async fn a_command_sees_only_the_allowlisted_environment() {
    let d = tempfile::tempdir().unwrap();
    let shell =
        Shell::new(Config { env: [("FIXED".to_owned(), "yes".to_owned())].into(), ..Config::default() });
    let (ctx, _) = ctx(d.path(), AbortSignal::new());
    let out = shell.execute(json!({"command": "env"}), ctx).await.unwrap();
    let names: Vec<&str> = out.content.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
    assert!(names.contains(&"FIXED") && names.contains(&"PATH"), "{names:?}");
    for n in &names {
        assert!(
            ["FIXED", "PWD", "SHLVL", "_", "OLDPWD", dispatch_tools::shell::RUN_MARKER].contains(n)
                || dispatch_tools::shell::BASE_ENV.contains(n),
            "`{n}` is not on the allowlist: {names:?}"
        );
    }
}

/// A command that leaves the call's process group (`setsid`) used to keep
/// running after the call, the turn and the host.
#[tokio::test]
async fn a_command_that_leaves_the_process_group_is_killed_too() {
    let d = tempfile::tempdir().unwrap();
    let m = format!("{}.{}", 7_000 + std::process::id() % 1000, 5151);
    let (ctx, _) = ctx(d.path(), AbortSignal::new());
    let command = format!(
        "setsid sleep {m} > /dev/null 2>&1 < /dev/null & setsid -f sleep {m} > /dev/null 2>&1; echo started"
    );
    let out = Shell::default().execute(json!({"command": command}), ctx).await.unwrap();
    assert!(out.content.starts_with("started"), "{}", out.content);
    assert_no_process_with(&m);
}
