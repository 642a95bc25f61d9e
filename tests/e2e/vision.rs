//! The `vision` plugin end to end: the real binary, a real
//! OpenAI-compatible test server serving a vision model (`gpt-4o`, a
//! vision model by name) and a text-only one (`plain`), the real store.

use serde_json::{json, Value};

use dispatch_test_support::mock_openai::*;

use crate::http::{chat, get, product_config, product_config_with, send, text_of, Server, LOOPBACK};

/// A 1×1 PNG, as clients attach it.
const DOT: &str = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
const SQUARE: &str = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAYAAABytg0kAAAAEklEQVR42mP8z8BQz0AEYBxVSAAa3gH/vRgJmQAAAABJRU5ErkJggg==";

fn reply(text: &str) -> Reply {
    Reply::sse(&[text_chunk(text), finish_chunk("stop"), usage_chunk(50, 3, None)])
}

/// The product, with the test server as credential `mock` serving a
/// vision model and a text-only one.
fn config(server: &MockServer) -> crate::support::Written {
    let openai = format!(
        "[[plugin.config.credentials]]\nname = \"mock\"\nbase_url = {:?}\nmodels = [\"gpt-4o\", \"plain\"]\n",
        server.base_url()
    );
    product_config_with(LOOPBACK, LOOPBACK, &[("libdispatch_plugin_provider_openai.so", openai)])
}

fn settings(s: &Server, body: &str) -> crate::http::Answer {
    send("PUT", &format!("{}/settings/vision", s.base), Some(body), &[])
}

/// The image URLs and the texts of a request's messages, in order.
fn parts(body: &Value) -> (Vec<String>, Vec<String>) {
    let (mut images, mut texts) = (Vec::new(), Vec::new());
    for m in body["messages"].as_array().unwrap() {
        match &m["content"] {
            Value::String(t) => texts.push(t.clone()),
            Value::Array(parts) => {
                for p in parts {
                    if let Some(u) = p["image_url"]["url"].as_str() {
                        images.push(u.to_owned());
                    }
                    if let Some(t) = p["text"].as_str() {
                        texts.push(t.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    (images, texts)
}

fn stored_images(s: &Server, id: &str) -> Vec<String> {
    let h = get(&format!("{}/conversations/{id}", s.base)).body;
    h["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["chunk"]["type"] == "image")
        .map(|c| c["chunk"]["url"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn vision_settings_merge_refuse_with_the_wire_messages_and_survive_a_restart() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let url = format!("{}/settings/vision", s.base);
    assert_eq!(get(&url).body, json!({"imageLimit": 10, "compactionModel": null}));
    let a = settings(&s, r#"{"imageLimit": 2}"#);
    assert_eq!((a.status, &a.body), (200, &json!({"imageLimit": 2, "compactionModel": null})), "{}", a.text);
    let a = settings(&s, r#"{"compactionModel": "mock/gpt-4o"}"#);
    assert_eq!(a.body, json!({"imageLimit": 2, "compactionModel": "mock/gpt-4o"}));
    // The frontend's "auto" is "".
    let a = settings(&s, r#"{"compactionModel": ""}"#);
    assert_eq!(a.body, json!({"imageLimit": 2, "compactionModel": null}));
    for (body, error) in [
        (r#"{"imageLimit": -1}"#, "imageLimit must be a non-negative integer"),
        (r#"{"imageLimit": 1.5}"#, "imageLimit must be a non-negative integer"),
        (r#"{"imageLimit": "3"}"#, "imageLimit must be a non-negative integer"),
        (r#"{"compactionModel": 5}"#, "compactionModel must be a string or null"),
        (r#"{"imageLimit": 3, "compactionModel": ["x"]}"#, "compactionModel must be a string or null"),
    ] {
        let a = settings(&s, body);
        assert_eq!((a.status, a.body["error"].as_str()), (400, Some(error)), "{body}: {}", a.text);
    }
    for body in ["[]", "3", "null"] {
        assert_eq!(settings(&s, body).status, 400, "{body}");
    }
    let a = settings(&s, r#"{"imageLimit": 0}"#);
    assert_eq!(a.body, json!({"imageLimit": 0, "compactionModel": null}), "a refused PUT changed nothing");
    drop(s);
    let s = Server::start(&cfg);
    assert_eq!(
        get(&format!("{}/settings/vision", s.base)).body,
        json!({"imageLimit": 0, "compactionModel": null})
    );
}

/// Past `imageLimit`, a vision model gets the newest images natively and
/// the older ones as descriptions, each made once by a vision model and
/// kept across a restart; the stored history keeps every image.
#[test]
fn a_vision_model_gets_the_newest_images_and_the_older_ones_described_once() {
    let server = MockServer::start(vec![
        reply("A dot."),
        reply("A tiny red dot on white."),
        reply("A square."),
        reply("Still a square."),
    ]);
    let cfg = config(&server);
    let s = Server::start(&cfg);
    assert_eq!(settings(&s, r#"{"imageLimit": 1}"#).status, 200);
    let send_image = |s: &Server, text: &str, image: Option<&str>| {
        let mut body = json!({"conversationId": "v", "message": text, "model": "mock/gpt-4o"});
        if let Some(url) = image {
            body["images"] = json!([{"url": url, "mimeType": "image/png"}]);
        }
        let (a, events) = chat(&s.base, body);
        assert_eq!(a.status, 200, "{}", a.text);
        text_of(&events)
    };
    assert_eq!(send_image(&s, "what is this?", Some(DOT)), "A dot.");
    assert_eq!(send_image(&s, "and this?", Some(SQUARE)), "A square.");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    // Within the limit: the image as it is.
    assert_eq!(parts(&reqs[0].body).0, vec![DOT.to_owned()]);
    // The description request: the old image and an instruction, no tools.
    let (images, texts) = parts(&reqs[1].body);
    assert_eq!(images, vec![DOT.to_owned()]);
    assert!(texts.iter().any(|t| t.starts_with("Describe this image")), "{texts:?}");
    assert!(reqs[1].body["tools"].is_null(), "{}", reqs[1].body);
    // The turn: the old image described, the new one native.
    let (images, texts) = parts(&reqs[2].body);
    assert_eq!(images, vec![SQUARE.to_owned()]);
    assert!(texts.iter().any(|t| t.ends_with("\n[Compacted image]: A tiny red dot on white.")), "{texts:?}");
    assert_eq!(stored_images(&s, "v"), vec![DOT.to_owned(), SQUARE.to_owned()], "history keeps the images");

    // After a restart the description comes from the store: no new request.
    drop(s);
    let s = Server::start(&cfg);
    assert_eq!(send_image(&s, "compare them", None), "Still a square.");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 4, "described once");
    let (images, texts) = parts(&reqs[3].body);
    assert_eq!(images, vec![SQUARE.to_owned()]);
    assert!(texts.iter().any(|t| t.ends_with("\n[Compacted image]: A tiny red dot on white.")), "{texts:?}");
}

/// A text-only model reads a numbered placeholder, is offered
/// `consult_vision`, and its call opens a titled conversation on a vision
/// model whose answer comes back as the result; an unknown image number is
/// an error result the model can act on.
#[test]
fn a_text_only_model_reads_placeholders_and_consults_a_vision_model() {
    let server = MockServer::start(vec![
        tool_call("call_bad", "consult_vision", &json!({"question": "What is it?", "imageIds": [7]})),
        tool_call(
            "call_ok",
            "consult_vision",
            &json!({"question": "What color is the dot?", "imageIds": [1]}),
        ),
        reply("The dot is red."),
        reply("It is red."),
    ]);
    let cfg = config(&server);
    let s = Server::start(&cfg);
    let body = json!({"conversationId": "t", "message": "what color?", "model": "mock/plain",
        "images": [{"url": DOT, "mimeType": "image/png"}]});
    let (a, events) = chat(&s.base, body);
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(text_of(&events), "It is red.");
    let results: Vec<&Value> = events.iter().filter(|e| e["type"] == "tool-result").collect();
    assert_eq!(results.len(), 2, "{events:?}");
    assert_eq!(results[0]["isError"], true);
    assert!(results[0]["content"].as_str().unwrap().contains("Image 7 is not known"), "{}", results[0]);
    assert_eq!(results[1]["isError"], false, "{}", results[1]);
    let answer = results[1]["content"].as_str().unwrap();
    let consultation = answer
        .strip_prefix("Vision consultation opened in conversation ")
        .and_then(|r| r.split_once(".\n\n"))
        .map(|(id, _)| id.to_owned())
        .unwrap_or_else(|| panic!("{answer}"));
    assert!(answer.contains("\n\nResponse: The dot is red.\n\n"), "{answer}");

    let reqs = server.requests();
    assert_eq!(reqs.len(), 4);
    // The text-only model: a placeholder, no image, and the tool.
    let (images, texts) = parts(&reqs[0].body);
    assert!(images.is_empty(), "{}", reqs[0].body);
    assert!(texts.iter().any(|t| t.contains(&placeholder_text(1))), "{texts:?}");
    let tools: Vec<&str> = reqs[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert!(tools.contains(&"consult_vision"), "{tools:?}");
    // The consultation: the vision model, the image and the question; it
    // is not offered the tool itself.
    assert_eq!(reqs[2].body["model"], "gpt-4o");
    let (images, texts) = parts(&reqs[2].body);
    assert_eq!(images, vec![DOT.to_owned()]);
    assert!(texts.contains(&"What color is the dot?".to_owned()), "{texts:?}");
    let offered = reqs[2].body["tools"].as_array().cloned().unwrap_or_default();
    assert!(offered.iter().all(|t| t["function"]["name"] != "consult_vision"), "{offered:?}");

    // The consultation is a conversation of its own, titled, in `default`.
    let list = get(&format!("{}/conversations", s.base)).body;
    let meta = list["conversations"].as_array().unwrap().iter().find(|c| c["id"] == consultation.as_str());
    let meta = meta.unwrap_or_else(|| panic!("{consultation} not listed: {list}"));
    assert_eq!(meta["title"], "IMAGE - What color is the dot?");
    assert_eq!(meta["workspaceId"], "default");
    assert_eq!(stored_images(&s, &consultation), vec![DOT.to_owned()]);
    // The asking conversation keeps its image.
    assert_eq!(stored_images(&s, "t"), vec![DOT.to_owned()]);
}

fn placeholder_text(n: usize) -> String {
    format!("[Image {n} attached — you cannot view images. Call the consult_vision tool with imageIds=[{n}]")
}

/// A cache warm shows the images as the next turn will (the placeholder
/// here), so the prefix it warms is the one the turn sends.
#[test]
fn a_warm_shows_the_images_as_the_next_turn_does() {
    let server = MockServer::start(vec![
        reply("A dot."),
        Reply::sse(&[text_chunk("."), finish_chunk("length"), usage_chunk(100, 1, Some(80))]),
        reply("Yes."),
    ]);
    let cfg = config(&server);
    let s = Server::start(&cfg);
    let body = json!({"conversationId": "w", "message": "see?", "model": "mock/plain",
        "images": [{"url": DOT, "mimeType": "image/png"}]});
    assert_eq!(chat(&s.base, body).0.status, 200);
    let warm = crate::http::post(&format!("{}/chat/warm", s.base), r#"{"conversationId": "w"}"#);
    assert_eq!(warm.status, 200, "{}", warm.text);
    assert_eq!(chat(&s.base, json!({"conversationId": "w", "message": "sure?"})).0.status, 200);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    let (probe, next) =
        (reqs[1].body["messages"].as_array().unwrap(), reqs[2].body["messages"].as_array().unwrap());
    assert_eq!(probe[..probe.len() - 1], next[..next.len() - 1]);
    assert!(parts(&reqs[1].body).1.iter().any(|t| t.contains(&placeholder_text(1))), "{}", reqs[1].body);
}
