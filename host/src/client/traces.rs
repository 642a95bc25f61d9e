//! `dispatch traces`: a conversation's turn traces as a timeline — a line
//! per model request (its step), the step's tool calls nested under it,
//! durations right-aligned — or the server's JSON, one trace per line.

use serde_json::Value;

use super::{encode, exit, resolve_existing, say, Outcome, Server};

/// The width the text of a line is padded to before its duration.
const WIDTH: usize = 72;

/// `dispatch traces ID [--turn T] [--json]`: every page, oldest first.
pub async fn traces(server: &Server, id: &str, turn: Option<&str>, as_json: bool) -> Outcome {
    let id = resolve_existing(server, id).await?;
    let mut cursor: Option<String> = None;
    let mut shown = 0usize;
    loop {
        let mut path = format!("/conversations/{id}/traces?limit=200");
        if let Some(t) = turn {
            path.push_str(&format!("&turnId={}", encode(t)));
        }
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = server.json("GET", &path, None).await?;
        for t in page["traces"].as_array().into_iter().flatten() {
            shown += 1;
            let line = if as_json { t.to_string() } else { line(t) };
            if !say(&line) {
                return Ok(exit::OK);
            }
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    if shown == 0 && !as_json {
        say(&format!("no traces for {id}{}", turn.map(|t| format!(" turn {t}")).unwrap_or_default()));
    }
    Ok(exit::OK)
}

fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.2} s", ms as f64 / 1000.0)
    }
}

fn usage(u: &Value) -> String {
    let mut parts = vec![format!("in {}", u["inputTokens"]), format!("out {}", u["outputTokens"])];
    for (key, name) in
        [("cacheReadTokens", "cached"), ("cacheWriteTokens", "cache-write"), ("reasoningTokens", "reasoning")]
    {
        if let Some(n) = u[key].as_u64() {
            parts.push(format!("{name} {n}"));
        }
    }
    parts.join(" ")
}

/// `text`, padded, then `ms` right-aligned.
fn timed(text: String, ms: Option<u64>) -> String {
    match ms {
        Some(ms) => format!("{text:<WIDTH$} {:>9}", duration(ms)),
        None => text,
    }
}

/// One trace as a line of the timeline.
pub fn line(t: &Value) -> String {
    let s = |k: &str| t[k].as_str().unwrap_or_default();
    let step = s("stepId").rsplit_once('#').map(|(_, n)| format!("#{n}")).unwrap_or_default();
    let ms = t["durationMs"].as_u64();
    match s("kind") {
        "context" => {
            let tools = t["tools"].as_array().map_or(0, Vec::len);
            let prompt = t["systemPrompt"].as_str().map_or(0, |p| p.chars().count());
            format!(
                "turn {} · {} · {tools} tools offered · system prompt {prompt} chars",
                s("turnId"),
                s("model")
            )
        }
        "request" => {
            let mut text = format!("  step {step:<4} {} {}", s("model"), s("outcome"));
            if let Some(n) = t["attempt"].as_u64().filter(|n| *n > 0) {
                text.push_str(&format!(" (retry {n})"));
            }
            if !t["usage"].is_null() {
                text.push_str(&format!(" · {}", usage(&t["usage"])));
            }
            if let Some(f) = t["ttftMs"].as_u64() {
                text.push_str(&format!(" · ttft {}", duration(f)));
            }
            if let Some(e) = t["error"].as_str() {
                let status = t["status"].as_str().map(|c| format!("{c} ")).unwrap_or_default();
                text.push_str(&format!(" · {status}{}", e.chars().take(80).collect::<String>()));
            }
            timed(text, ms)
        }
        "tool" => {
            let plugin = t["plugin"].as_str().map(|p| format!(" ({p})")).unwrap_or_default();
            let cut = match (t["outputBytes"].as_u64(), t["output"].as_str().map(str::len)) {
                (Some(whole), Some(kept)) if whole > kept as u64 => {
                    format!(" · output {whole} B, trace keeps {kept}")
                }
                _ => String::new(),
            };
            timed(format!("      ↳ {} {}{plugin}{cut}", s("toolName"), s("outcome")), ms)
        }
        "turn" => {
            let cache =
                t["cacheHitRate"].as_f64().map(|r| format!(" · cache {:.0}%", r * 100.0)).unwrap_or_default();
            let usage =
                if t["usage"].is_null() { String::new() } else { format!(" · {}", usage(&t["usage"])) };
            let count = |key: &str, one: &str| {
                let n = t[key].as_u64().unwrap_or(0);
                format!("{n} {one}{}", if n == 1 { "" } else { "s" })
            };
            timed(
                format!(
                    "  end {} · {} · {}{usage}{cache}",
                    s("reason"),
                    count("steps", "step"),
                    count("toolCalls", "tool call")
                ),
                ms,
            )
        }
        other => timed(format!("  {other}"), ms),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn steps_are_lines_tools_nest_and_durations_align() {
        let request =
            line(&json!({"kind": "request", "stepId": "t#0", "model": "m", "outcome": "ok", "attempt": 0,
            "usage": {"inputTokens": 10, "outputTokens": 2, "cacheReadTokens": 8}, "durationMs": 1234}));
        let tool =
            line(&json!({"kind": "tool", "stepId": "t#0", "toolName": "run_shell", "outcome": "timeout",
            "plugin": "tool-shell", "output": "x", "outputBytes": 9, "durationMs": 35}));
        assert!(request.starts_with("  step #0   m ok · in 10 out 2 cached 8"), "{request}");
        assert!(request.ends_with("   1.23 s"), "{request}");
        assert!(
            tool.starts_with("      ↳ run_shell timeout (tool-shell) · output 9 B, trace keeps 1"),
            "{tool}"
        );
        assert_eq!(request.chars().count(), tool.chars().count(), "durations right-aligned");
        let retry =
            line(&json!({"kind": "request", "stepId": "t#1", "model": "m", "outcome": "retry", "attempt": 1,
            "status": "429", "error": "slow down", "durationMs": 5}));
        assert!(retry.contains("retry (retry 1) · 429 slow down"), "{retry}");
    }
}
