//! # vision — what a model is shown of a conversation's images
//!
//! WIRE.md's "Vision". The session asks the `vision` service, before every
//! model step whose messages hold an image, what the model should see
//! instead; persisted history always keeps the images.
//!
//! - A **vision model** gets at most `imageLimit` images natively per
//!   request (0: no limit); the oldest surplus go as
//!   `"[Compacted image]: <description>"`. A description is made once per
//!   image by a vision model (the `compactionModel` setting, else the first
//!   vision model of the catalog) and kept in the store under the
//!   conversation, so it survives a restart and is never paid for twice.
//! - A **text-only model** reads a numbered placeholder per image, and is
//!   offered the `consult_vision` tool: it asks a vision model a question
//!   about image `n` (or an image file) in a new conversation and reads the
//!   answer. The numbers are this process's memory of the last request;
//!   after a restart the tool asks the user to paste the image again.
//!
//! Settings (`GET`/`PUT /settings/vision`) are global, kept in the store.

mod view;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use dispatch_abi::{Context, Error, Host, Plugin, PluginManifest};
use dispatch_contracts::catalog::{CatalogRequest, ModelList, Resolved, CATALOG};
use dispatch_contracts::http::{self, problem, HttpMethod, HttpResponse, Problem, Route};
use dispatch_contracts::openapi::Operation;
use dispatch_contracts::protocol::session::{ChatRequest, EventBatch, ImageRef, Started, TurnTools};
use dispatch_contracts::protocol::store::{MetaUpdate, StoreRequest};
use dispatch_contracts::remote::{HostCaller, RemoteProvider};
use dispatch_contracts::session::{SessionRequest, SESSION, TOOLS};
use dispatch_contracts::store::STORE;
use dispatch_contracts::tool::{BoxFuture, Tool, ToolContext, ToolError, ToolOutput, ToolServer};
use dispatch_contracts::vision::{Viewed, VisionRequest, VisionSettings, VISION};
use dispatch_kernel::provider::{Provider as _, ProviderEvent, ProviderOptions, StepRequest};
use dispatch_kernel::wire::{ChatMessage, Chunk, Role};
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

pub use view::{placeholder, NO_VISION_PLACEHOLDER};

/// The tool a text-only model consults a vision model with.
pub const CONSULT_VISION: &str = "consult_vision";
/// The store scope and key of the settings.
const SETTINGS_SCOPE: &str = "vision";
const SETTINGS_KEY: &str = "settings";
/// The store key prefix of an image's description (scope: the conversation).
const DESCRIPTION_KEY: &str = "vision.description.";
/// How long the catalog's model info is kept: listing asks every provider.
const CATALOG_KEPT: Duration = Duration::from_secs(60);
/// How long a failed description is not tried again (each step would).
const FAILURE_KEPT: Duration = Duration::from_secs(300);
/// The longest description, in tokens.
const MAX_DESCRIPTION_TOKENS: u32 = 1024;
/// Conversations whose image numbers are remembered; the oldest go first.
const NUMBERED_KEPT: usize = 1024;
/// Descriptions kept in memory (the store keeps them all).
const DESCRIPTIONS_KEPT: usize = 4096;
/// The largest image file `consult_vision` reads.
const MAX_IMAGE_FILE: u64 = 20 * 1024 * 1024;
/// How long a consultation may take before the tool gives up waiting.
const CONSULT_TIMEOUT: Duration = Duration::from_secs(600);

const DESCRIBE_SYSTEM: &str = "You describe images for a reader who cannot see them: faithfully, \
completely, and without guessing beyond what is visible.";
const DESCRIBE_INSTRUCTION: &str = "Describe this image. Copy any visible text word for word, then \
describe the objects, the layout and every detail that matters. Your description will stand in for \
the image in a conversation, so leave out nothing a reader would need.";
const CONSULT_SYSTEM: &str = "You are a vision assistant. Someone who cannot see the attached image \
asks a specific question about it: answer that question precisely and completely.";

/// `[plugin.config]` of the vision plugin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Worker threads of the plugin's runtime (default 1).
    pub workers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { workers: 1 }
    }
}

/// The plugin's state, shared by the service, the routes and the tool.
struct Vision {
    host: Host,
    caller: Arc<HostCaller>,
    /// The settings once read (the store holds them; `PUT` updates both).
    settings: Mutex<Option<VisionSettings>>,
    catalog: Mutex<Option<(Instant, ModelList)>>,
    /// Descriptions by (conversation, image digest); failures with when.
    descriptions: Mutex<HashMap<(String, String), String>>,
    failures: Mutex<HashMap<(String, String), (Instant, String)>>,
    /// The images of each conversation's last text-only request, by their
    /// number − 1, and when they were numbered.
    numbered: Mutex<HashMap<String, (Instant, Vec<ImageRef>)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn digest(url: &str) -> String {
    Sha256::digest(url.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl Vision {
    async fn store<T: serde::de::DeserializeOwned>(&self, request: StoreRequest) -> Result<T, Error> {
        let v: Value = self.host.call(&STORE, &request).await?;
        serde_json::from_value(v).map_err(|e| Error::new("plugin", format!("the store answered: {e}")))
    }

    async fn settings(&self) -> Result<VisionSettings, Error> {
        if let Some(s) = lock(&self.settings).clone() {
            return Ok(s);
        }
        let request = StoreRequest::GetValue { scope: SETTINGS_SCOPE.into(), key: SETTINGS_KEY.into() };
        let v: Value = self.store(request).await?;
        // Written by us only; anything unreadable is the defaults.
        let s: VisionSettings = serde_json::from_value(v).unwrap_or_default();
        *lock(&self.settings) = Some(s.clone());
        Ok(s)
    }

    async fn put_settings(&self, s: VisionSettings) -> Result<VisionSettings, Error> {
        let value = serde_json::to_value(&s).map_err(|e| Error::new("plugin", e.to_string()))?;
        let request =
            StoreRequest::PutValue { scope: SETTINGS_SCOPE.into(), key: SETTINGS_KEY.into(), value };
        self.store::<Value>(request).await?;
        *lock(&self.settings) = Some(s.clone());
        Ok(s)
    }

    /// The catalog's models and their info, read at most once a minute.
    async fn models(&self) -> Result<ModelList, Error> {
        if let Some((_, list)) = lock(&self.catalog).as_ref().filter(|(at, _)| at.elapsed() < CATALOG_KEPT) {
            return Ok(list.clone());
        }
        let v = self.host.call(&CATALOG, &CatalogRequest::List).await?;
        let list: ModelList = serde_json::from_value(v)
            .map_err(|e| Error::new("plugin", format!("the catalog answered: {e}")))?;
        *lock(&self.catalog) = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// The vision model that describes images and answers consultations:
    /// the setting when the catalog serves it as a vision model, else the
    /// first vision model.
    async fn vision_model(&self, list: &ModelList) -> Result<Option<String>, Error> {
        let settings = self.settings().await?;
        if let Some(m) = settings.compaction_model.filter(|m| view::sees_images(list, m)) {
            return Ok(Some(m));
        }
        Ok(view::first_vision_model(list, None))
    }

    async fn view(
        &self,
        conversation_id: &str,
        model: &str,
        messages: Vec<ChatMessage>,
    ) -> Result<Viewed, Error> {
        let positions = view::image_positions(&messages);
        if positions.is_empty() {
            return Ok(Viewed::default());
        }
        let list = self.models().await?;
        if !view::sees_images(&list, model) {
            let vision = self.vision_model(&list).await?;
            let (out, images) = view::text_only(&messages, vision.is_some());
            let mut numbered = lock(&self.numbered);
            if numbered.len() >= NUMBERED_KEPT && !numbered.contains_key(conversation_id) {
                if let Some(oldest) = numbered.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| k.clone()) {
                    numbered.remove(&oldest);
                }
            }
            numbered.insert(conversation_id.to_owned(), (Instant::now(), images));
            return Ok(Viewed { messages: Some(out) });
        }
        let settings = self.settings().await?;
        let surplus = view::surplus(&positions, settings.image_limit);
        if surplus.is_empty() {
            return Ok(Viewed::default());
        }
        let describer = self.vision_model(&list).await?;
        let mut out = messages;
        for &(mi, ci) in surplus {
            let Chunk::Image { url, .. } = &out[mi].chunks[ci] else { continue };
            let text = match &describer {
                Some(d) => self.description(conversation_id, url, d).await,
                None => view::NO_DESCRIBER.to_owned(),
            };
            out[mi].chunks[ci] = Chunk::text(view::described(&text));
        }
        Ok(Viewed { messages: Some(out) })
    }

    /// The description of the image at `url` in `conversation_id`: from
    /// memory, else the store, else made by `describer` and kept in both.
    /// A failure is its own text, not kept (tried again later).
    async fn description(&self, conversation_id: &str, url: &str, describer: &str) -> String {
        let key = (conversation_id.to_owned(), digest(url));
        if let Some(d) = lock(&self.descriptions).get(&key) {
            return d.clone();
        }
        if let Some((_, e)) = lock(&self.failures).get(&key).filter(|(at, _)| at.elapsed() < FAILURE_KEPT) {
            return e.clone();
        }
        let store_key = format!("{DESCRIPTION_KEY}{}", key.1);
        let get = StoreRequest::GetValue { scope: conversation_id.to_owned(), key: store_key.clone() };
        if let Ok(Value::String(d)) = self.store::<Value>(get).await {
            self.remember(key, d.clone());
            return d;
        }
        match self.describe(url, describer).await {
            Ok(d) => {
                let put = StoreRequest::PutValue {
                    scope: conversation_id.to_owned(),
                    key: store_key,
                    value: Value::String(d.clone()),
                };
                if let Err(e) = self.store::<Value>(put).await {
                    tracing::warn!(conversation = %conversation_id, error = %e, "cannot keep an image's description");
                }
                self.remember(key, d.clone());
                d
            }
            Err(e) => {
                tracing::warn!(conversation = %conversation_id, model = %describer, error = %e, "cannot describe an image");
                let text = format!("[Image description failed: {e}]");
                lock(&self.failures).insert(key, (Instant::now(), text.clone()));
                text
            }
        }
    }

    fn remember(&self, key: (String, String), description: String) {
        let mut known = lock(&self.descriptions);
        // Bounded: the store has them all.
        if known.len() >= DESCRIPTIONS_KEPT {
            known.clear();
        }
        known.insert(key, description);
    }

    /// One request to `model`: the image and the instruction, no tools.
    async fn describe(&self, url: &str, model: &str) -> Result<String, String> {
        let v = self
            .host
            .call(&CATALOG, &CatalogRequest::Resolve { model: Some(model.to_owned()) })
            .await
            .map_err(|e| e.to_string())?;
        let resolved: Resolved = serde_json::from_value(v).map_err(|e| e.to_string())?;
        let provider = RemoteProvider::new(Arc::clone(&self.caller), &resolved, None);
        let options = ProviderOptions {
            model: Some(resolved.model.clone()),
            system_prompt: Some(DESCRIBE_SYSTEM.to_owned()),
            reasoning_effort: None,
            max_output_tokens: Some(MAX_DESCRIPTION_TOKENS),
        };
        let messages = vec![ChatMessage {
            role: Role::User,
            chunks: vec![
                Chunk::text(DESCRIBE_INSTRUCTION),
                Chunk::Image { url: url.to_owned(), mime_type: None },
            ],
        }];
        let mut stream = provider.stream(StepRequest { messages: &messages, tools: &[], options: &options });
        let mut text = String::new();
        while let Some(event) = stream.next().await {
            match event {
                Ok(ProviderEvent::TextDelta(d)) => text.push_str(&d),
                Ok(ProviderEvent::Finish(_)) => break,
                Ok(_) => {}
                Err(e) => return Err(e.message),
            }
        }
        let text = text.trim();
        Ok(if text.is_empty() { "[The description came back empty.]".to_owned() } else { text.to_owned() })
    }

    /// Whether `model` is offered `consult_vision` (it cannot see images).
    async fn offers_consult(&self, model: &str) -> bool {
        match self.models().await {
            Ok(list) => !view::sees_images(&list, model),
            // The catalog is down: the turn fails on its own.
            Err(_) => false,
        }
    }
}

// ---- consult_vision ------------------------------------------------------

struct ConsultVision(Arc<Vision>);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConsultInput {
    question: String,
    #[serde(default)]
    image_ids: Option<Vec<u64>>,
    #[serde(default)]
    path: Option<String>,
}

impl Tool for ConsultVision {
    fn name(&self) -> &str {
        CONSULT_VISION
    }

    fn description(&self) -> &str {
        "Ask a vision-capable model a specific question about an image you cannot see: an image \
         attached to this conversation (imageIds, the numbers in its placeholders) or an image file \
         (path, relative to the working directory). Opens a new conversation with that model and \
         answers its reply; follow-up questions go to that conversation."
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "question": {"type": "string", "description": "What you need to know about the image(s); be specific."},
                "imageIds": {"type": "array", "items": {"type": "integer", "minimum": 1},
                    "description": "Numbers of attached images, from their placeholders."},
                "path": {"type": "string", "description": "An image file to ask about instead (or as well)."}
            },
            "required": ["question"],
            "additionalProperties": false
        })
    }

    fn concurrency_safe(&self) -> bool {
        true
    }

    fn execute(&self, input: Value, ctx: ToolContext) -> BoxFuture<Result<ToolOutput, ToolError>> {
        let vision = Arc::clone(&self.0);
        Box::pin(async move {
            let input: ConsultInput =
                serde_json::from_value(input).map_err(|e| ToolError::InvalidInput(e.to_string()))?;
            if input.question.trim().is_empty() {
                return Err(ToolError::InvalidInput("`question` must not be empty".into()));
            }
            consult(&vision, input, ctx).await
        })
    }
}

async fn consult(vision: &Vision, input: ConsultInput, ctx: ToolContext) -> Result<ToolOutput, ToolError> {
    let failed = |e: Error| ToolError::Failed(e.to_string());
    let list = vision.models().await.map_err(failed)?;
    let Some(model) = vision.vision_model(&list).await.map_err(failed)? else {
        return Ok(ToolOutput::error(
            "No vision-capable model is available in the catalog. Install or configure one (e.g. kimi) \
             to enable image analysis.",
        ));
    };
    let mut images = Vec::new();
    if let Some(ids) = &input.image_ids {
        let numbered =
            lock(&vision.numbered).get(&ctx.conversation_id).map(|(_, i)| i.clone()).unwrap_or_default();
        for id in ids {
            let found =
                usize::try_from(*id).ok().and_then(|n| n.checked_sub(1)).and_then(|i| numbered.get(i));
            match found {
                Some(image) => images.push(image.clone()),
                None => {
                    return Ok(ToolOutput::error(format!(
                        "Image {id} is not known (images are numbered in this server's memory, which a \
                         restart clears): ask the user to paste the image again."
                    )))
                }
            }
        }
    }
    if let Some(path) = &input.path {
        match read_image(path, ctx.cwd.as_ref()).await {
            Ok(image) => images.push(image),
            Err(e) => return Ok(ToolOutput::error(format!("Cannot read the image file {path:?}: {e}"))),
        }
    }
    if images.is_empty() {
        return Ok(ToolOutput::error(
            "No image to ask about: give imageIds (attached images) or path (an image file).",
        ));
    }
    let id = uuid::Uuid::new_v4().to_string();
    tracing::info!(conversation = %ctx.conversation_id, consultation = %id, model = %model, images = images.len(), "consulting a vision model");
    // The conversation first, so the turn starts with its title, prompt and
    // model (the store keeps a title it was given).
    let meta = MetaUpdate {
        conversation_id: id.clone(),
        title: Some(view::consultation_title(&input.question)),
        workspace_id: Some("default".into()),
        model: Some(Some(model.clone())),
        system_prompt: Some(Some(CONSULT_SYSTEM.into())),
        ..MetaUpdate::default()
    };
    vision.store::<Value>(StoreRequest::Update(meta)).await.map_err(failed)?;
    let chat = ChatRequest {
        conversation_id: Some(id.clone()),
        message: input.question.trim().to_owned(),
        model: Some(model),
        cwd: ctx.cwd.as_ref().map(|p| p.display().to_string()),
        reasoning_effort: None,
        workspace_id: Some("default".into()),
        images: Some(images),
    };
    let v = vision.host.call(&SESSION, &SessionRequest::Chat { request: chat }).await.map_err(failed)?;
    let started: Started = serde_json::from_value(v).map_err(|e| ToolError::Failed(e.to_string()))?;
    let wait = answer(vision, &started);
    let outcome = tokio::select! {
        r = tokio::time::timeout(CONSULT_TIMEOUT, wait) => r.unwrap_or_else(|_| Err("no answer in time".to_owned())),
        () = ctx.abort.aborted() => Err("aborted".to_owned()),
    };
    match outcome {
        Ok(text) => Ok(ToolOutput::ok(view::consultation_result(&id, &text))),
        Err(e) => {
            // The consultation must not run on without anyone waiting.
            let stop = SessionRequest::Stop { conversation_id: id.clone() };
            let _ = vision.host.call(&SESSION, &stop).await;
            Ok(ToolOutput::error(format!("Vision consultation failed (conversation {id}): {e}")))
        }
    }
}

/// The consultation turn's text, once it is sealed; its error when it
/// produced no text.
async fn answer(vision: &Vision, started: &Started) -> Result<String, String> {
    let (mut from, mut text, mut error) = (0, String::new(), None);
    loop {
        let request = SessionRequest::Events {
            conversation_id: started.conversation_id.clone(),
            turn_id: started.turn_id.clone(),
            from,
            wire: None,
            wait_ms: Some(30_000),
        };
        let v = vision.host.call(&SESSION, &request).await.map_err(|e| e.to_string())?;
        let batch: EventBatch = serde_json::from_value(v).map_err(|e| e.to_string())?;
        for raw in &batch.events {
            let event: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
            match event["type"].as_str() {
                Some("text-delta") => text.push_str(event["delta"].as_str().unwrap_or_default()),
                Some("error") => error = event["message"].as_str().map(str::to_owned),
                _ => {}
            }
        }
        from = batch.next;
        if batch.sealed {
            break;
        }
    }
    match error {
        Some(e) if text.trim().is_empty() => Err(e),
        _ => Ok(text),
    }
}

/// An image file as a `data:` URL.
async fn read_image(path: &str, cwd: Option<&PathBuf>) -> Result<ImageRef, String> {
    let p = PathBuf::from(path);
    let p = match cwd {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p,
    };
    let meta = tokio::fs::metadata(&p).await.map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a file".into());
    }
    if meta.len() > MAX_IMAGE_FILE {
        return Err(format!("{} bytes is more than the {MAX_IMAGE_FILE} an image may have", meta.len()));
    }
    let bytes = tokio::fs::read(&p).await.map_err(|e| e.to_string())?;
    let mime = view::mime_of(&p);
    let url = format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes));
    Ok(ImageRef { url, mime_type: Some(mime.to_owned()) })
}

// ---- routes --------------------------------------------------------------

/// A partial settings body, validated field by field (WIRE.md's messages).
fn merge(mut s: VisionSettings, body: Option<&Value>) -> Result<VisionSettings, Problem> {
    let Some(Value::Object(body)) = body else {
        return Err(Problem::bad_request("the body must be a JSON object"));
    };
    if let Some(v) = body.get("imageLimit") {
        s.image_limit = v
            .as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f <= 1e15).map(|f| f as u64))
            .ok_or_else(|| Problem::bad_request("imageLimit must be a non-negative integer"))?;
    }
    if let Some(v) = body.get("compactionModel") {
        s.compaction_model = match v {
            Value::Null => None,
            Value::String(m) if m.trim().is_empty() => None,
            Value::String(m) => Some(m.trim().to_owned()),
            _ => return Err(Problem::bad_request("compactionModel must be a string or null")),
        };
    }
    Ok(s)
}

fn settings_op(summary: &str, id: &str) -> Operation {
    Operation::new(summary).id(id).tag("vision")
}

fn routes(v: &Arc<Vision>, tools: &ToolServer) -> Vec<Route> {
    let (v1, r1) = (Arc::clone(v), tools.runner().clone());
    let get = Route::new(HttpMethod::Get, "/settings/vision", move |_req| {
        let v = Arc::clone(&v1);
        let answer = r1.run(async move { v.settings().await });
        async move { answer.await.map(|s| HttpResponse::ok(&s)).map_err(problem) }
    })
    .operation(settings_op("Read the image settings", "getVisionSettings").returns::<VisionSettings>(
        200,
        "The settings (imageLimit 10 and compactionModel null when never set)",
    ));
    let (v2, r2) = (Arc::clone(v), tools.runner().clone());
    let put = Route::new(HttpMethod::Put, "/settings/vision", move |req| {
        let v = Arc::clone(&v2);
        let answer = r2.run(async move {
            let merged = match merge(v.settings().await?, req.body.as_ref()) {
                Ok(s) => s,
                Err(p) => return Ok(Err(p)),
            };
            Ok(Ok(HttpResponse::ok(&v.put_settings(merged).await?)))
        });
        async move { answer.await.unwrap_or_else(|e| Err(problem(e))) }
    })
    .operation(
        settings_op("Change the image settings", "setVisionSettings")
            .body_with(
                json!({
                    "type": "object",
                    "properties": {
                        "imageLimit": {"type": "integer", "minimum": 0,
                            "description": "Images a vision model receives natively per request; 0: no limit"},
                        "compactionModel": {"type": ["string", "null"],
                            "description": "The vision model that describes older images; null or \"\": the first vision model"}
                    }
                }),
                true,
            )
            .returns::<VisionSettings>(200, "The merged settings")
            .error(400, &["bad_request"]),
    );
    vec![get, put]
}

/// The plugin.
pub struct VisionPlugin {
    tools: ToolServer,
}

impl std::fmt::Debug for VisionPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VisionPlugin").finish_non_exhaustive()
    }
}

impl Plugin for VisionPlugin {
    fn manifest() -> PluginManifest {
        http::declare_routes(
            PluginManifest::new("vision", env!("CARGO_PKG_VERSION"))
                .description("Shows each model what it can take of a conversation's images")
                .depends_on(STORE.name())
                .depends_on("models")
                .depends_on("session")
                .provides("service", VISION.name())
                .provides("service", dispatch_contracts::tool::service_name(CONSULT_VISION)),
        )
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let config: Config = ctx.config()?;
        let host = ctx.host().clone();
        let tools = ToolServer::new(&host, "vision", config.workers.max(1))?;
        let vision = Arc::new(Vision {
            host: host.clone(),
            caller: Arc::new(HostCaller(host.clone())),
            settings: Mutex::default(),
            catalog: Mutex::default(),
            descriptions: Mutex::default(),
            failures: Mutex::default(),
            numbered: Mutex::default(),
        });
        http::serve_all(&host, routes(&vision, &tools))?;
        let (v, runner) = (Arc::clone(&vision), tools.runner().clone());
        host.provide(&VISION, move |request: VisionRequest| {
            let v = Arc::clone(&v);
            runner.run(async move {
                match request {
                    VisionRequest::View { conversation_id, model, messages } => {
                        v.view(&conversation_id, &model, messages).await
                    }
                    other => {
                        Err(Error::new("unsupported", format!("the vision service does not know {other:?}")))
                    }
                }
            })
        })?;
        tools.add(Arc::new(ConsultVision(Arc::clone(&vision))))?;
        // Offered to the models that cannot see (after the others extend
        // the list, before filters that narrow it).
        let (v, runner) = (Arc::clone(&vision), tools.runner().clone());
        host.add_filter(&TOOLS, -90, move |mut turn: TurnTools| {
            let v = Arc::clone(&v);
            let runner = runner.clone();
            async move {
                let model = turn.model.clone();
                // The runner fails only while stopping: offer nothing then.
                let offer =
                    runner.run(async move { Ok(v.offers_consult(&model).await) }).await.unwrap_or(false);
                if !offer {
                    turn.tools.retain(|n| n != CONSULT_VISION);
                } else if !turn.tools.iter().any(|n| n == CONSULT_VISION) {
                    turn.tools.push(CONSULT_VISION.to_owned());
                }
                Ok(turn)
            }
        })?;
        Ok(VisionPlugin { tools })
    }

    fn deactivate(&mut self) -> Result<(), Error> {
        self.tools.stop();
        Ok(())
    }
}

dispatch_abi::export_plugin!(VisionPlugin);
