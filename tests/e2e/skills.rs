//! The `skills` plugin end to end: `load_skill` described per turn for the
//! turn's directory (what the model is sent), both layouts, a project's
//! skills shadowing the user's, and the errors.

use std::path::Path;

use dispatch_test_support::mock_openai::*;
use serde_json::{json, Value};

use crate::http::*;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn done(text: &str) -> Reply {
    Reply::sse(&[text_chunk(text), finish_chunk("stop")])
}

/// The `load_skill` tool as a request offered it.
fn offered(request: &Request) -> Value {
    let tools = request.body["tools"].as_array().unwrap();
    tools.iter().find(|t| t["function"]["name"] == "load_skill").unwrap()["function"].clone()
}

/// The one tool result of a turn.
fn result(events: &[Value]) -> Value {
    let results: Vec<&Value> = events.iter().filter(|e| e["type"] == "tool-result").collect();
    assert_eq!(results.len(), 1, "{events:?}");
    results[0].clone()
}

#[test]
fn load_skill_lists_the_turns_skills_and_the_project_shadows_home() {
    let home = tempfile::tempdir().unwrap();
    write(&home.path().join(".skills/deploy.md"), "Deploy from home\n---\nthe home recipe");
    write(&home.path().join(".skills/ops/rollback.md"), "roll back by hand");
    write(
        &home.path().join(".claude/skills/pdf-forms/SKILL.md"),
        "---\nname: pdf\ndescription: Fills PDF forms\n---\nRun fill.py on the form.\n",
    );
    let project = tempfile::tempdir().unwrap();
    write(&project.path().join(".skills/deploy.md"), "Deploy this project\n---\nmake ship");
    let plain = tempfile::tempdir().unwrap();

    let mock = MockServer::start(vec![
        tool_call("c1", "load_skill", &json!({"name": "deploy"})),
        done("Deployed."),
        tool_call("c2", "load_skill", &json!({"name": "deploy"})),
        done("Deployed from home."),
        tool_call("c3", "load_skill", &json!({"name": "pdf"})),
        done("Filled."),
        tool_call("c4", "load_skill", &json!({"name": "../etc/passwd"})),
        done("Refused."),
        tool_call("c5", "load_skill", &json!({"name": "nope"})),
        done("Unknown."),
        tool_call("c6", "load_skill", &json!({})),
        done("Missing."),
    ]);
    let skills = format!("home = {:?}\n", home.path().display().to_string());
    let cfg = product_config_with(LOOPBACK, LOOPBACK, &[("libdispatch_plugin_skills.so", skills)]);
    let url = mock.base_url();
    let s = Server::start_with(
        &cfg,
        &[("DISPATCH_BASE_URL", &url), ("DISPATCH_API_KEY", "sk-test"), ("DISPATCH_MODEL", "mock-model")],
    );
    let say = |conversation: &str, cwd: &Path, message: &str| -> Vec<Value> {
        let body = json!({"conversationId": conversation, "message": message, "model": "openai/mock-model",
            "cwd": cwd.display().to_string()});
        let (a, events) = chat(&s.base, body);
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(events.last().unwrap()["type"], "turn-sealed", "{events:?}");
        events
    };

    // In the project: its deploy shadows the home one.
    let r = result(&say("proj", project.path(), "deploy"));
    assert_eq!((r["content"].as_str(), r["isError"].as_bool()), (Some("make ship"), Some(false)), "{r}");
    let tool = offered(&mock.requests()[0]);
    assert_eq!(
        tool["description"],
        "Load a skill by name. Available skills:\n- deploy: Deploy this project\n- pdf: Fills PDF forms\n- rollback"
    );
    assert_eq!(tool["parameters"]["properties"]["name"]["enum"], json!(["deploy", "pdf", "rollback"]));
    assert_eq!(tool["parameters"]["required"], json!(["name"]));

    // Elsewhere only the user's skills: the same name reads home's.
    let r = result(&say("plain", plain.path(), "deploy"));
    assert_eq!(r["content"], "the home recipe", "{r}");
    assert_eq!(
        offered(&mock.requests()[2])["description"],
        "Load a skill by name. Available skills:\n- deploy: Deploy from home\n- pdf: Fills PDF forms\n- rollback"
    );
    // An Agent Skill: its body, and where its files are.
    let r = result(&say("plain", plain.path(), "pdf"));
    let body = r["content"].as_str().unwrap();
    assert!(body.starts_with("Run fill.py on the form.\n"), "{body}");
    assert!(body.contains("pdf-forms"), "{body}");

    // The errors the model reads.
    let r = result(&say("plain", plain.path(), "escape"));
    assert_eq!(r["isError"], true);
    assert_eq!(
        r["content"],
        "Error: Invalid skill name \"../etc/passwd\". Name must not contain path separators or \"..\"."
    );
    let r = result(&say("plain", plain.path(), "unknown"));
    assert_eq!(
        (r["content"].as_str(), r["isError"].as_bool()),
        (Some("Error: unknown skill: nope"), Some(true))
    );
    let r = result(&say("plain", plain.path(), "missing"));
    assert_eq!(r["content"], "Error: Missing or invalid \"name\" parameter.");

    // A new skill is listed on the next turn, without a restart.
    write(&plain.path().join(".skills/new.md"), "Brand new\n---\nnew");
    mock.push(done("Seen."));
    say("plain", plain.path(), "list");
    let description = offered(mock.requests().last().unwrap())["description"].as_str().unwrap().to_owned();
    assert!(description.contains("\n- new: Brand new"), "{description}");
}
