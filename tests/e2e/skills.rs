//! The `skills` plugin end to end: `load_skill` described per turn for the
//! turn's directory (what the model is sent), both layouts, a project's
//! skills shadowing the user's, and the errors.

use std::path::Path;

use dispatch_test_support::mock_openai::*;
use serde_json::{json, Value};

use crate::http::*;
use crate::support::write_creating;

/// The `load_skill` tool as a request offered it.
fn offered(request: &Request) -> Value {
    let tools = request.body["tools"].as_array().unwrap();
    tools.iter().find(|t| t["function"]["name"] == "load_skill").unwrap()["function"].clone()
}

#[test]
fn load_skill_lists_the_turns_skills_and_the_project_shadows_home() {
    let home = tempfile::tempdir().unwrap();
    write_creating(&home.path().join(".skills/deploy.md"), "Deploy from home\n---\nthe home recipe");
    write_creating(&home.path().join(".skills/ops/rollback.md"), "roll back by hand");
    write_creating(
        &home.path().join(".claude/skills/pdf-forms/SKILL.md"),
        "---\nname: pdf\ndescription: Fills PDF forms\n---\nRun fill.py on the form.\n",
    );
    let project = tempfile::tempdir().unwrap();
    write_creating(&project.path().join(".skills/deploy.md"), "Deploy this project\n---\nmake ship");
    let plain = tempfile::tempdir().unwrap();

    let mock = MockServer::start(vec![
        tool_call("c1", "load_skill", &json!({"name": "deploy"})),
        text_reply("Deployed."),
        tool_call("c2", "load_skill", &json!({"name": "deploy"})),
        text_reply("Deployed from home."),
        tool_call("c3", "load_skill", &json!({"name": "pdf"})),
        text_reply("Filled."),
        tool_call("c4", "load_skill", &json!({"name": "../etc/passwd"})),
        text_reply("Refused."),
        tool_call("c5", "load_skill", &json!({"name": "nope"})),
        text_reply("Unknown."),
        tool_call("c6", "load_skill", &json!({})),
        text_reply("Missing."),
    ]);
    let skills = format!("home = {:?}\n", home.path().display().to_string());
    let cfg = product_config_with(LOOPBACK, LOOPBACK, &[("libdispatch_plugin_skills.so", skills)]);
    let s = Server::start_on_mock(&cfg, &mock.base_url(), &[]);
    let say = |conversation: &str, cwd: &Path, message: &str| say_in(&s.base, conversation, cwd, message);

    // In the project: its deploy shadows the home one.
    let r = result_of(&say("proj", project.path(), "deploy")).clone();
    assert_eq!((r["content"].as_str(), r["isError"].as_bool()), (Some("make ship"), Some(false)), "{r}");
    let tool = offered(&mock.requests()[0]);
    assert_eq!(
        tool["description"],
        "Load a skill by name. Available skills:\n- deploy: Deploy this project\n- pdf: Fills PDF forms\n- rollback"
    );
    assert_eq!(tool["parameters"]["properties"]["name"]["enum"], json!(["deploy", "pdf", "rollback"]));
    assert_eq!(tool["parameters"]["required"], json!(["name"]));

    // Elsewhere only the user's skills: the same name reads home's.
    let r = result_of(&say("plain", plain.path(), "deploy")).clone();
    assert_eq!(r["content"], "the home recipe", "{r}");
    assert_eq!(
        offered(&mock.requests()[2])["description"],
        "Load a skill by name. Available skills:\n- deploy: Deploy from home\n- pdf: Fills PDF forms\n- rollback"
    );
    // An Agent Skill: its body, and where its files are.
    let r = result_of(&say("plain", plain.path(), "pdf")).clone();
    let body = r["content"].as_str().unwrap();
    assert!(body.starts_with("Run fill.py on the form.\n"), "{body}");
    assert!(body.contains("pdf-forms"), "{body}");

    // The errors the model reads.
    let r = result_of(&say("plain", plain.path(), "escape")).clone();
    assert_eq!(r["isError"], true);
    assert_eq!(
        r["content"],
        "Error: Invalid skill name \"../etc/passwd\". Name must not contain path separators or \"..\"."
    );
    let r = result_of(&say("plain", plain.path(), "unknown")).clone();
    assert_eq!(
        (r["content"].as_str(), r["isError"].as_bool()),
        (Some("Error: unknown skill: nope"), Some(true))
    );
    let r = result_of(&say("plain", plain.path(), "missing")).clone();
    assert_eq!(r["content"], "Error: Missing or invalid \"name\" parameter.");

    // A new skill is listed on the next turn, without a restart.
    write_creating(&plain.path().join(".skills/new.md"), "Brand new\n---\nnew");
    mock.push(text_reply("Seen."));
    say("plain", plain.path(), "list");
    let description = offered(mock.requests().last().unwrap())["description"].as_str().unwrap().to_owned();
    assert!(description.contains("\n- new: Brand new"), "{description}");
}
