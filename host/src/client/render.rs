//! Showing a turn's events as they arrive.
//!
//! The answer's text goes to stdout, everything else — reasoning, one line
//! per tool call, errors, the closing summary — to stderr. On a terminal
//! the two interleave into the live view; redirected, stdout holds just
//! the answer (`dispatch chat m --text … > answer.txt`). Colors only on a
//! terminal, and never with `NO_COLOR` set.

use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;

use serde_json::Value;

/// How a turn ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `done` with `stop`, `tool-calls` or `max-steps`.
    Finished,
    /// `done` with `error`.
    Failed,
    /// `done` with `aborted` (stopped).
    Aborted,
    /// The stream ended before `turn-sealed`.
    Cut,
}

/// Settings of a [`Renderer`].
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// Colors (stderr is a terminal and `NO_COLOR` is unset).
    pub color: bool,
    /// Show the model's reasoning.
    pub show_reasoning: bool,
}

impl Style {
    /// Decide from the environment.
    pub fn detect(show_reasoning: bool) -> Style {
        use std::io::IsTerminal as _;
        let color =
            std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Style { color, show_reasoning }
    }
}

const DIM: &str = "\x1b[2m";
const CYAN: &str = "\x1b[36m";
const RED: &str = "\x1b[31m";
const RESET: &str = "\x1b[0m";

/// Longest tool input or result shown on a tool's line, in characters.
const SUMMARY_CHARS: usize = 100;

/// One turn's rendering state.
#[derive(Debug)]
pub struct Renderer {
    style: Style,
    started: Instant,
    /// The last thing written to a terminal line was not a newline.
    mid_line: bool,
    /// Inside a dimmed reasoning run.
    reasoning: bool,
    calls: HashMap<String, (String, String)>,
    usage: (u64, u64, u64),
    steps: u64,
    ending: Option<Ending>,
    conversation: Option<String>,
}

/// Shorten to `max` characters, on one line.
pub fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

impl Renderer {
    /// A renderer for one turn.
    pub fn new(style: Style) -> Renderer {
        Renderer {
            style,
            started: Instant::now(),
            mid_line: false,
            reasoning: false,
            calls: HashMap::new(),
            usage: (0, 0, 0),
            steps: 0,
            ending: None,
            conversation: None,
        }
    }

    fn paint(&self, color: &str, text: &str) -> String {
        if self.style.color {
            format!("{color}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }

    /// End the current line (text or reasoning) before a line of our own.
    fn break_line(&mut self, out: &mut dyn Write, err: &mut dyn Write) {
        if self.reasoning {
            let _ = writeln!(err, "{}", if self.style.color { RESET } else { "" });
            self.reasoning = false;
        }
        if self.mid_line {
            let _ = writeln!(out);
            let _ = out.flush();
            self.mid_line = false;
        }
    }

    /// Show one event.
    pub fn event(&mut self, e: &Value, out: &mut dyn Write, err: &mut dyn Write) {
        if self.conversation.is_none() {
            self.conversation = e["conversationId"].as_str().map(str::to_owned);
        }
        let text = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
        match e["type"].as_str().unwrap_or_default() {
            "text-delta" => {
                if self.reasoning {
                    let _ = write!(err, "{}", if self.style.color { RESET } else { "" });
                    let _ = writeln!(err);
                    self.reasoning = false;
                }
                let delta = text("delta");
                let _ = write!(out, "{delta}");
                let _ = out.flush();
                if !delta.is_empty() {
                    self.mid_line = !delta.ends_with('\n');
                }
            }
            "reasoning-delta" if self.style.show_reasoning => {
                if !self.reasoning {
                    self.break_line(out, err);
                    let _ = write!(err, "{}", if self.style.color { DIM } else { "" });
                    self.reasoning = true;
                }
                let _ = write!(err, "{}", text("delta"));
                let _ = err.flush();
            }
            "tool-call" => {
                let input = one_line(&e["input"].to_string(), SUMMARY_CHARS);
                self.calls.insert(text("toolCallId"), (text("toolName"), input));
            }
            "tool-result" => {
                self.break_line(out, err);
                let (name, input) = self
                    .calls
                    .remove(&text("toolCallId"))
                    .unwrap_or_else(|| (text("toolName"), String::new()));
                let content =
                    e["content"].as_str().map(str::to_owned).unwrap_or_else(|| e["content"].to_string());
                let verdict = if e["isError"].as_bool() == Some(true) {
                    self.paint(RED, &format!("error: {}", one_line(&content, SUMMARY_CHARS)))
                } else {
                    format!("{} bytes: {}", content.len(), one_line(&content, SUMMARY_CHARS / 2))
                };
                let line = format!("[tool] {name} {input} → {verdict}");
                let _ = writeln!(err, "{}", self.paint(CYAN, &line));
                let _ = err.flush();
            }
            "usage" => {
                let u = &e["usage"];
                self.usage.0 += u["inputTokens"].as_u64().unwrap_or(0);
                self.usage.1 += u["outputTokens"].as_u64().unwrap_or(0);
                self.usage.2 += u["cacheReadTokens"].as_u64().unwrap_or(0);
            }
            "step-complete" => self.steps += 1,
            "provider-retry" => {
                self.break_line(out, err);
                let line = format!(
                    "[retry {}] {} (again in {} ms)",
                    e["attempt"].as_u64().unwrap_or(0) + 1,
                    text("message"),
                    e["delayMs"].as_u64().unwrap_or(0)
                );
                let _ = writeln!(err, "{}", self.paint(DIM, &line));
            }
            "steering" => {
                self.break_line(out, err);
                let line = format!("[queued message] {}", one_line(&text("text"), SUMMARY_CHARS));
                let _ = writeln!(err, "{}", self.paint(DIM, &line));
            }
            "error" => {
                self.break_line(out, err);
                let _ = writeln!(err, "{}", self.paint(RED, &format!("error: {}", text("message"))));
            }
            "done" => {
                self.ending = Some(match e["reason"].as_str() {
                    Some("error") => Ending::Failed,
                    Some("aborted") => Ending::Aborted,
                    _ => Ending::Finished,
                });
                if let Some(u) = e.get("usage").filter(|u| u.is_object()) {
                    // The turn's own total wins over our sum of steps.
                    self.usage = (
                        u["inputTokens"].as_u64().unwrap_or(self.usage.0),
                        u["outputTokens"].as_u64().unwrap_or(self.usage.1),
                        u["cacheReadTokens"].as_u64().unwrap_or(self.usage.2),
                    );
                }
            }
            _ => {}
        }
    }

    /// How the turn ended (after `turn-sealed`, or the stream's end).
    pub fn ending(&self, sealed: bool) -> Ending {
        match (self.ending, sealed) {
            (Some(e), true) => e,
            _ => Ending::Cut,
        }
    }

    /// The conversation the events belonged to.
    pub fn conversation(&self) -> Option<&str> {
        self.conversation.as_deref()
    }

    /// The closing line: tokens, cache hits, steps, time.
    pub fn summary(&mut self, out: &mut dyn Write, err: &mut dyn Write) {
        self.break_line(out, err);
        let (input, output, cached) = self.usage;
        let mut line = format!(
            "{} tokens ({input} in, {output} out, {cached} cached) · {} step{} · {:.1} s",
            input + output,
            self.steps,
            if self.steps == 1 { "" } else { "s" },
            self.started.elapsed().as_secs_f64()
        );
        match self.ending {
            Some(Ending::Aborted) => line.push_str(" · stopped"),
            Some(Ending::Failed) => line.push_str(" · failed"),
            _ => {}
        }
        let _ = writeln!(err, "{}", self.paint(DIM, &line));
        let _ = err.flush();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn render(events: &[Value], show_reasoning: bool) -> (String, String, Renderer) {
        let mut r = Renderer::new(Style { color: false, show_reasoning });
        let (mut out, mut err) = (Vec::new(), Vec::new());
        for e in events {
            r.event(e, &mut out, &mut err);
        }
        r.summary(&mut out, &mut err);
        (String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap(), r)
    }

    #[test]
    fn the_answer_goes_to_stdout_and_the_rest_to_stderr() {
        let events = [
            json!({"type": "user-message", "conversationId": "c", "text": "hi"}),
            json!({"type": "reasoning-delta", "delta": "hmm"}),
            json!({"type": "text-delta", "delta": "Let me look."}),
            json!({"type": "tool-call", "toolCallId": "t1", "toolName": "read_file", "input": {"path": "a.txt"}}),
            json!({"type": "tool-result", "toolCallId": "t1", "toolName": "read_file", "content": "hello\nworld", "isError": false}),
            json!({"type": "usage", "usage": {"inputTokens": 30, "outputTokens": 5}}),
            json!({"type": "step-complete"}),
            json!({"type": "text-delta", "delta": "It says hello."}),
            json!({"type": "usage", "usage": {"inputTokens": 60, "outputTokens": 6, "cacheReadTokens": 20}}),
            json!({"type": "step-complete"}),
            json!({"type": "done", "reason": "stop"}),
            json!({"type": "turn-sealed"}),
        ];
        let (out, err, r) = render(&events, false);
        assert_eq!(out, "Let me look.\nIt says hello.\n");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines[0], r#"[tool] read_file {"path":"a.txt"} → 11 bytes: hello world"#);
        assert!(lines[1].starts_with("101 tokens (90 in, 11 out, 20 cached) · 2 steps · "), "{err}");
        assert!(!err.contains("hmm"), "reasoning is hidden by default");
        assert_eq!((r.ending(true), r.ending(false)), (Ending::Finished, Ending::Cut));
        assert_eq!(r.conversation(), Some("c"));

        let (_, err, _) = render(&events, true);
        assert!(err.starts_with("hmm\n"), "{err:?}");
    }

    #[test]
    fn errors_and_stops_say_so() {
        let events = [
            json!({"type": "tool-call", "toolCallId": "t", "toolName": "run_shell", "input": {"command": "x".repeat(300)}}),
            json!({"type": "tool-result", "toolCallId": "t", "toolName": "run_shell", "content": "boom", "isError": true}),
            json!({"type": "error", "message": "the provider failed"}),
            json!({"type": "done", "reason": "error"}),
        ];
        let (out, err, r) = render(&events, false);
        assert_eq!(out, "");
        assert!(err.contains("→ error: boom"), "{err}");
        assert!(err.lines().next().unwrap().chars().count() < 140, "tool lines are kept short: {err}");
        assert!(err.contains("error: the provider failed"));
        assert!(err.contains("· failed"));
        assert_eq!(r.ending(true), Ending::Failed);
        let (_, err, r) = render(&[json!({"type": "done", "reason": "aborted"})], false);
        assert!(err.contains("· stopped"));
        assert_eq!(r.ending(true), Ending::Aborted);
    }
}
