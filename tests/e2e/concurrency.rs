//! Provider concurrency's routes (WIRE.md "Provider concurrency") through
//! the real binary: limits and cooldowns set, read, removed and kept
//! across a restart, the status the frontend polls, and WIRE.md's
//! messages.

use serde_json::json;

use crate::http::{get, product_config, send, Server, LOOPBACK};

#[test]
fn limits_and_cooldowns_are_kept_and_shown_as_wire_md_says() {
    let cfg = product_config(LOOPBACK);
    let mut s = Server::start(&cfg);
    let url = |p: &str| format!("{}/concurrency{p}", s.base);
    assert_eq!(get(&url("/limits")).body, json!({"limits": []}));
    assert_eq!(get(&url("/status")).body, json!({"providers": []}));
    let none = get(&url("/limits/openrouter"));
    assert_eq!(
        (none.status, none.body["error"].as_str(), none.body["code"].as_str()),
        (404, Some("No concurrency limit configured for this provider"), Some("not_configured"))
    );
    let none = get(&url("/cooldown/openrouter"));
    assert_eq!(
        (none.status, none.body["error"].as_str()),
        (404, Some("No concurrency configuration for this provider"))
    );

    // A cooldown may come before a limit.
    let cooled = send("PUT", &url("/cooldown/openrouter"), Some(r#"{"cooldownMs": 1200}"#), &[]);
    assert_eq!(cooled.body, json!({"providerId": "openrouter", "cooldownMs": 1200}), "{}", cooled.text);
    assert_eq!(get(&url("/status")).body, json!({"providers": []}), "a cooldown alone is not a limit");
    let limited = send("PUT", &url("/limits/openrouter"), Some(r#"{"limit": 3}"#), &[]);
    assert_eq!(limited.body, json!({"providerId": "openrouter", "limit": 3}), "{}", limited.text);
    assert_eq!(send("PUT", &url("/limits/local"), Some(r#"{"limit": 2.0}"#), &[]).status, 200);
    assert_eq!(
        get(&url("/cooldown/local")).body,
        json!({"providerId": "local", "cooldownMs": 350}),
        "the default"
    );

    for (path, body, message) in [
        ("/limits/x", r#"{"limit": 0}"#, "Body must be { limit: <positive integer> }"),
        ("/limits/x", r#"{"limit": 1.5}"#, "Body must be { limit: <positive integer> }"),
        ("/limits/x", r#"{}"#, "Body must be { limit: <positive integer> }"),
        ("/cooldown/x", r#"{"cooldownMs": -1}"#, "Body must be { cooldownMs: <non-negative integer> }"),
        ("/cooldown/x", r#"{"cooldownMs": "5"}"#, "Body must be { cooldownMs: <non-negative integer> }"),
    ] {
        let refused = send("PUT", &url(path), Some(body), &[]);
        assert_eq!((refused.status, refused.body["error"].as_str()), (400, Some(message)), "{path} {body}");
    }

    // Kept across a restart.
    s.stop_with(15);
    let s = Server::start(&cfg);
    let url = |p: &str| format!("{}/concurrency{p}", s.base);
    assert_eq!(
        get(&url("/limits")).body,
        json!({"limits": [{"providerId": "local", "limit": 2}, {"providerId": "openrouter", "limit": 3}]})
    );
    let status = get(&url("/status")).body;
    assert_eq!(
        status["providers"][1],
        json!({"providerId": "openrouter", "limit": 3, "inFlight": 0, "queued": 0, "paused": false,
               "cooldownMs": 1200, "autoReduced": false})
    );

    // Removing a limit: the provider runs unlimited; a second removal is a 404.
    let removed = send("DELETE", &url("/limits/local"), None, &[]);
    assert_eq!(removed.body, json!({"ok": true, "providerId": "local"}));
    assert_eq!(send("DELETE", &url("/limits/local"), None, &[]).status, 404);
    assert_eq!(get(&url("/cooldown/local")).status, 404, "nothing is configured for it any more");
    assert_eq!(get(&url("/limits")).body["limits"].as_array().unwrap().len(), 1);
}
