//! Repairing history so that a provider is never sent a tool call without
//! its result (which providers reject).

use std::collections::HashSet;

use crate::wire::{ChatMessage, Chunk, Role};

/// The content of a result synthesized for a call that never got one.
pub const INTERRUPTED: &str = "The tool call was interrupted before it produced a result.";

/// Give every dangling tool call a synthesized error result carrying its
/// `stepId`, placed with the results that follow the calling message (or
/// right after it). Everything else is returned unchanged, in order.
pub fn reconcile(history: &[ChatMessage]) -> Vec<ChatMessage> {
    let answered: HashSet<&str> = history
        .iter()
        .flat_map(|m| &m.chunks)
        .filter_map(|c| match c {
            Chunk::ToolResult { tool_call_id, .. } => Some(tool_call_id.as_str()),
            _ => None,
        })
        .collect();
    let mut out = Vec::with_capacity(history.len());
    let mut i = 0;
    while i < history.len() {
        let msg = &history[i];
        out.push(msg.clone());
        i += 1;
        let missing: Vec<Chunk> = msg
            .chunks
            .iter()
            .filter_map(|c| match c {
                Chunk::ToolCall { tool_call_id, tool_name, step_id, .. }
                    if !answered.contains(tool_call_id.as_str()) =>
                {
                    Some(Chunk::ToolResult {
                        tool_call_id: tool_call_id.clone(),
                        tool_name: tool_name.clone(),
                        content: INTERRUPTED.to_owned(),
                        is_error: true,
                        step_id: step_id.clone(),
                    })
                }
                _ => None,
            })
            .collect();
        if missing.is_empty() {
            continue;
        }
        // Keep the existing results of this message's calls first.
        while i < history.len() && history[i].role == Role::Tool {
            out.push(history[i].clone());
            i += 1;
        }
        out.extend(missing.into_iter().map(|chunk| ChatMessage { role: Role::Tool, chunks: vec![chunk] }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(id: &str) -> Chunk {
        Chunk::ToolCall {
            tool_call_id: id.into(),
            tool_name: "t".into(),
            input: json!({}),
            step_id: Some("turn#0".into()),
        }
    }
    fn result(id: &str) -> ChatMessage {
        ChatMessage {
            role: Role::Tool,
            chunks: vec![Chunk::ToolResult {
                tool_call_id: id.into(),
                tool_name: "t".into(),
                content: "ok".into(),
                is_error: false,
                step_id: Some("turn#0".into()),
            }],
        }
    }

    #[test]
    fn a_dangling_call_gets_a_synthesized_result_with_its_step_id() {
        let history = vec![
            ChatMessage::user("hi"),
            ChatMessage { role: Role::Assistant, chunks: vec![call("a"), call("b")] },
            result("a"),
            ChatMessage::user("next"),
        ];
        let fixed = reconcile(&history);
        assert_eq!(fixed.len(), 5);
        assert_eq!(fixed[2], result("a"));
        assert_eq!(
            fixed[3].chunks[0],
            Chunk::ToolResult {
                tool_call_id: "b".into(),
                tool_name: "t".into(),
                content: INTERRUPTED.into(),
                is_error: true,
                step_id: Some("turn#0".into()),
            }
        );
        assert_eq!(fixed[4], ChatMessage::user("next"));
    }

    #[test]
    fn complete_history_is_unchanged() {
        let history = vec![ChatMessage { role: Role::Assistant, chunks: vec![call("a")] }, result("a")];
        assert_eq!(reconcile(&history), history);
        assert!(reconcile(&[]).is_empty());
    }

    #[test]
    fn reconciling_twice_changes_nothing_more() {
        let history = vec![ChatMessage { role: Role::Assistant, chunks: vec![call("a")] }];
        let once = reconcile(&history);
        assert_eq!(reconcile(&once), once);
    }
}
