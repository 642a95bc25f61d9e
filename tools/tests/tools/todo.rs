use std::sync::{Arc, Mutex};

use dispatch_tools::todo::{Lists, OnChange, Status, TodoList, TodoWrite};
use serde_json::json;

use crate::support::*;

#[test]
fn the_list_is_replaced_whole_per_conversation_and_announced() {
    let d = tempfile::tempdir().unwrap();
    let lists = Arc::new(Lists::default());
    let seen: Arc<Mutex<Vec<TodoList>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let on_change: OnChange = Arc::new(move |l: &TodoList| sink.lock().unwrap().push(l.clone()));
    let tool = TodoWrite::new(Arc::clone(&lists), Some(on_change));
    let out = content(call(
        &tool,
        d.path(),
        json!({"todos": [
            {"content": "read the code", "status": "completed"},
            {"content": "fix the bug", "status": "in_progress"},
            {"content": "write a test", "status": "pending"}
        ]}),
    ));
    assert_eq!(out, "Task list (1/3 completed):\n[x] read the code\n[~] fix the bug\n[ ] write a test\n");
    let list = lists.get("conv-1");
    assert_eq!(list.todos.len(), 3);
    assert_eq!(list.todos[1].status, Status::InProgress);
    assert_eq!(lists.get("other").todos, vec![], "lists are per conversation");
    content(call(&tool, d.path(), json!({"todos": [{"content": "only", "status": "pending"}]})));
    assert_eq!(lists.get("conv-1").todos.len(), 1, "replaced, not appended");
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_eq!(
        serde_json::to_value(&seen.lock().unwrap()[1]).unwrap(),
        json!({"conversationId": "conv-1", "todos": [{"content": "only", "status": "pending"}]})
    );
}

#[test]
fn bad_tasks_are_explained() {
    let d = tempfile::tempdir().unwrap();
    let tool = TodoWrite::new(Arc::default(), None);
    let e = err(call(&tool, d.path(), json!({"todos": [{"content": "x", "status": "doing"}]})));
    assert!(
        e.contains("unknown variant `doing`, expected one of `pending`, `in_progress`, `completed`"),
        "{e}"
    );
    let e = err(call(&tool, d.path(), json!({"todos": [{"content": "  ", "status": "pending"}]})));
    assert!(e.contains("task #1 has empty `content`"), "{e}");
    let e = err(call(&tool, d.path(), json!({"todos": "x"})));
    assert!(e.contains("expected a sequence"), "{e}");
}
