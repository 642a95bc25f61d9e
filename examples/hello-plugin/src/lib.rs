//! # hello-plugin — a Dispatch plugin, start to finish
//!
//! Copy this crate to start your own plugin. It shows the three things most
//! plugins do:
//!
//! 1. **declare itself** — [`Plugin::manifest`]: an id, a version, what it
//!    depends on and what it provides;
//! 2. **provide a service** — `hello.greet`: a request/response function
//!    other plugins (and `dispatch call`) can use;
//! 3. **subscribe to an event** — the host's `dispatch.plugin-state`, which
//!    reports each plugin that activates or fails after this one. Its key
//!    and payload come from `dispatch-contracts`, where every bundled
//!    contract is declared once;
//! 4. **contribute an HTTP route** — `GET /hello/{name}` on the server's
//!    API (`dispatch_contracts::http`): `transport-http` routes it here,
//!    with its token, cross-site and size rules already applied, and the
//!    route leaves with the plugin;
//! 5. **test itself** — the tests at the bottom run the plugin on
//!    `dispatch-testkit`'s in-process host: no `.so`, no host binary.
//!
//! Try it:
//!
//! ```sh
//! cargo build --manifest-path examples/hello-plugin/Cargo.toml
//! dispatch call --config examples/hello-plugin/plugins.toml hello.greet '{"name":"operator"}'
//! ```

use std::sync::{Arc, Mutex, PoisonError};

use dispatch_abi::{Context, Error, Plugin, PluginManifest, Service};
use dispatch_contracts::http::{self, HttpMethod, HttpResponse, Problem, Route};
use dispatch_contracts::openapi::Operation;
use dispatch_contracts::plugins::{PluginReport, PLUGIN_STATE};
use serde::{Deserialize, Serialize};

/// The request of `hello.greet`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Greet {
    /// Who to greet.
    pub name: String,
}

/// The answer of `hello.greet`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Greeting {
    /// The greeting.
    pub text: String,
    /// Ids of the plugins this plugin saw change state since it activated.
    pub plugins_seen: Vec<String>,
}

/// The service this plugin provides. Declared as a constant with its schema
/// version: bump the version when `Greet` or `Greeting` change shape, and
/// callers built against the old one get a clear error instead of garbage.
pub const GREET: Service<Greet, Greeting> = Service::new("hello.greet", 1);

/// What `GET /hello/{name}` answers. Its JSON Schema (derived) goes into
/// the server's OpenAPI document, so it cannot drift from this type.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct HelloAnswer {
    /// The greeting.
    pub text: String,
}

/// The HTTP route this plugin adds to the server's API.
pub const ROUTE: &str = "/hello/{name}";

/// Optional `[plugin.config]` of this plugin.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The greeting word (default "Hello").
    pub greeting: Option<String>,
}

/// The plugin's state; dropped when the host deactivates it.
#[derive(Debug)]
pub struct HelloPlugin;

impl Plugin for HelloPlugin {
    fn manifest() -> PluginManifest {
        let manifest = PluginManifest::new("hello", env!("CARGO_PKG_VERSION"))
            .description("Example plugin: greets, and remembers which plugins it saw activate")
            .provides("service", GREET.name());
        http::declare(manifest, HttpMethod::Get, ROUTE)
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        // A typo in plugins.toml becomes a clear activation error.
        let config: Config = ctx.config()?;
        let word = config.greeting.unwrap_or_else(|| "Hello".to_owned());
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();

        // Event handlers run on the host's runtime: keep them quick, and
        // never block in them.
        let sink = Arc::clone(&seen);
        ctx.host().subscribe_sync(&PLUGIN_STATE, move |ev: PluginReport| {
            tracing::debug!(plugin = %ev.id, state = ev.state.as_str(), "saw a plugin change state");
            sink.lock().unwrap_or_else(PoisonError::into_inner).push(ev.id);
            Ok(())
        })?;

        // An HTTP route: `GET /hello/{name}?greeting=Howdy`, described for
        // the server's `/openapi.json` from the types it answers.
        let default_word = word.clone();
        Route::new(HttpMethod::Get, ROUTE, move |req| {
            let name = req.param("name").unwrap_or_default().trim().to_owned();
            let answer = if name.is_empty() {
                Err(Problem::new(400, "invalid_input", "the name must not be blank"))
            } else {
                let word = req.query("greeting").unwrap_or(&default_word);
                Ok(HttpResponse::ok(&HelloAnswer { text: format!("{word}, {name}!") }))
            };
            std::future::ready(answer)
        })
        .operation(
            Operation::new("Greet someone")
                .id("hello")
                .path_param("name", "Who to greet")
                .query::<String>("greeting", "The greeting word (default: the plugin's)")
                .returns::<HelloAnswer>(200, "The greeting")
                .error(400, &["invalid_input"]),
        )
        .serve(ctx.host())?;

        // A synchronous service: the answer is ready as soon as it is asked.
        ctx.host().provide_sync(&GREET, move |req: Greet| {
            if req.name.trim().is_empty() {
                // An Err goes back to the caller; the plugin keeps running.
                return Err(Error::new(dispatch_abi::codes::INVALID_PAYLOAD, "`name` must not be empty"));
            }
            tracing::info!(name = %req.name, "greeting");
            Ok(Greeting {
                text: format!("{word}, {}!", req.name),
                plugins_seen: seen.lock().unwrap_or_else(PoisonError::into_inner).clone(),
            })
        })?;
        Ok(HelloPlugin)
    }
}

// Exports the root module the host loads. Every entry point it generates
// catches panics, so a bug here becomes an error, not a crashed host.
dispatch_abi::export_plugin!(HelloPlugin);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use dispatch_contracts::plugins::State;
    use dispatch_testkit::TestHost;
    use serde_json::json;
    use std::time::Duration;

    fn started(config: serde_json::Value) -> TestHost {
        let mut host = TestHost::new();
        host.activate::<HelloPlugin>(config).unwrap();
        host
    }

    #[test]
    fn greets_with_the_configured_word() {
        let host = started(json!({"greeting": "Howdy"}));
        let answer = host.call(&GREET, &Greet { name: "operator".into() }).unwrap();
        assert_eq!(answer.text, "Howdy, operator!");
    }

    #[test]
    fn an_empty_name_is_an_error_for_the_caller() {
        let host = started(json!({}));
        let e = host.call(&GREET, &Greet { name: " ".into() }).unwrap_err();
        assert_eq!(e.code(), dispatch_abi::codes::INVALID_PAYLOAD);
        assert!(e.message().contains("`name`"), "{e}");
    }

    #[test]
    fn remembers_the_plugins_it_saw_change_state() {
        let host = started(json!({}));
        let report = PluginReport {
            id: "other".into(),
            version: None,
            file: String::new(),
            order: Some(2),
            state: State::Active,
            error: None,
            required: true,
            description: String::new(),
            depends_on: vec![],
            provides: vec![],
            activate_ms: None,
        };
        host.host().publish(&PLUGIN_STATE, &report).unwrap();
        assert!(host.settle(Duration::from_secs(5)));
        let answer = host.call(&GREET, &Greet { name: "x".into() }).unwrap();
        assert_eq!(answer.plugins_seen, vec!["other".to_owned()]);
    }

    #[test]
    fn answers_its_http_route() {
        use dispatch_contracts::http::{HttpRequest, RouteRequest};
        let host = started(json!({}));
        let key = http::key(HttpMethod::Get, ROUTE).unwrap();
        let request = |name: &str, query: Vec<(String, String)>| RouteRequest::Handle {
            request: HttpRequest {
                method: HttpMethod::Get,
                path: format!("/hello/{name}"),
                template: ROUTE.into(),
                params: [("name".to_owned(), name.to_owned())].into(),
                query,
                body: None,
            },
        };
        let answer: HttpResponse =
            serde_json::from_value(host.call(&key, &request("operator", vec![])).unwrap()).unwrap();
        assert_eq!((answer.status, answer.body["text"].as_str()), (200, Some("Hello, operator!")));
        let howdy = vec![("greeting".to_owned(), "Howdy".to_owned())];
        let answer: HttpResponse =
            serde_json::from_value(host.call(&key, &request("x", howdy)).unwrap()).unwrap();
        assert_eq!(answer.body["text"], "Howdy, x!");
        let blank: HttpResponse =
            serde_json::from_value(host.call(&key, &request(" ", vec![])).unwrap()).unwrap();
        assert_eq!(blank.status, 400);
    }

    #[test]
    fn a_misspelt_config_key_fails_activation() {
        let mut host = TestHost::new();
        let e = host.activate::<HelloPlugin>(json!({"greting": "Hi"})).unwrap_err();
        assert_eq!(e.code(), dispatch_abi::codes::INVALID_CONFIG);
        assert!(e.message().contains("greting"), "{e}");
    }
}
