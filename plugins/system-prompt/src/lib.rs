//! # system-prompt — what the model is told before the conversation
//!
//! One global template (editable over `PUT /system-prompt`, kept in
//! `<data_dir>/template.json`), rendered with `[type:name]` variables into
//! each conversation's system prompt. A conversation keeps the prompt it
//! was first given — editing the template changes new conversations, not
//! running ones — until its working directory changes, which re-renders it
//! (the prompt describes that directory). Rendered prompts are kept in
//! `<data_dir>/resolved/` so a restart does not change them either.
//!
//! The plugin serves the `system-prompt` service (the template and the
//! variable list) and is a filter on the session's `session.system-prompt`
//! hook.
//!
//! `file:<path>` reads a file **inside the working directory** (relative
//! path, at most 64 KiB), and only when that directory lies beneath one of
//! the `file_roots` (default: the session's own default directory) — not
//! anywhere on the machine as in the original: a template is editable over
//! HTTP, a request chooses its working directory (`/` included), and the
//! prompt goes to the model.
//!
//! # Memory and disk
//!
//! Rendered prompts are kept by content: `<data_dir>/prompts/<sha256>.txt`
//! holds each distinct prompt once (the stock template renders the same
//! text for every conversation of a directory and a day), and
//! `resolved/<conversation>.json` names the one a conversation was given.
//! In memory at most `cache_entries` conversations are remembered (least
//! recently used go first), and identical prompts share one allocation.

pub mod template;
pub mod vars;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest as _, Sha256};

use dispatch_abi::{Context, Error, Host, Plugin, PluginManifest};
use dispatch_contracts::prompt::{PromptRequest, Template, Variables, PROMPT};
use dispatch_contracts::session::{PromptContext, SYSTEM_PROMPT};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The template a fresh install renders.
pub const DEFAULT_TEMPLATE: &str = "You are Dispatch, a capable assistant that works in the user's project \
through the tools offered to you. Read before you change; keep changes small and say what you did.\n\
\n\
[if file:AGENTS.md]The project's instructions (AGENTS.md):\n[file:AGENTS.md]\n\n[endif]\
Working directory: [prompt:cwd]\nToday: [system:date]. Operating system: [system:os].\n";

/// Longest template accepted, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 256 * 1024;

/// `[plugin.config]` of `system-prompt`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directories beneath which a conversation's working directory must
    /// lie for `[file:…]` to read from it (default: the session's default
    /// working directory). Requests choose their working directory; these
    /// bound what a template can put in front of the model.
    #[serde(default)]
    pub file_roots: Option<Vec<PathBuf>>,
    /// Conversations whose prompt is remembered in memory (default 1024;
    /// the others are read back from disk when they next run a turn).
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
}

fn default_cache_entries() -> usize {
    1024
}

/// What a conversation was given, as kept on disk: the working directory
/// it was rendered for and the prompt's content hash (schema 1 files kept
/// the prompt itself, and are still read).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pointer {
    cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompt: Option<String>,
}

/// A conversation's prompt in memory.
#[derive(Debug, Clone)]
struct Resolved {
    cwd: Option<String>,
    prompt: Arc<str>,
    /// When it was last asked for (a counter, for eviction).
    used: u64,
}

/// Remembered prompts, bounded: the least recently used conversation goes
/// first, and one text serves every conversation given the same prompt.
#[derive(Debug, Default)]
struct Cache {
    by_conversation: HashMap<String, Resolved>,
    /// Distinct prompts still referenced, by hash (weak: freed with the
    /// last conversation that uses them).
    texts: HashMap<String, std::sync::Weak<str>>,
    clock: u64,
}

impl Cache {
    fn get(&mut self, conversation: &str, cwd: &Option<String>) -> Option<Arc<str>> {
        self.clock += 1;
        let now = self.clock;
        let r = self.by_conversation.get_mut(conversation).filter(|r| r.cwd == *cwd)?;
        r.used = now;
        Some(Arc::clone(&r.prompt))
    }

    /// The shared text for `prompt` (hash `sha`).
    fn intern(&mut self, sha: &str, prompt: String) -> Arc<str> {
        if let Some(text) = self.texts.get(sha).and_then(std::sync::Weak::upgrade) {
            return text;
        }
        let text: Arc<str> = Arc::from(prompt);
        self.texts.insert(sha.to_owned(), Arc::downgrade(&text));
        text
    }

    fn insert(&mut self, conversation: String, cwd: Option<String>, prompt: Arc<str>, capacity: usize) {
        self.clock += 1;
        self.by_conversation.insert(conversation, Resolved { cwd, prompt, used: self.clock });
        while self.by_conversation.len() > capacity.max(1) {
            let oldest = self.by_conversation.iter().min_by_key(|(_, r)| r.used).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.by_conversation.remove(&k);
                }
                None => break,
            }
        }
        if self.texts.len() > 2 * capacity.max(1) {
            self.texts.retain(|_, t| t.strong_count() > 0);
        }
    }
}

/// The plugin's state.
#[derive(Debug)]
pub struct Prompts {
    dir: PathBuf,
    template: Mutex<Option<String>>,
    /// Prompts already rendered or read back, by conversation: every turn
    /// asks, and after the first one the answer is usually here.
    cache: Mutex<Cache>,
    capacity: usize,
    /// `file_roots`, resolved; `None` = the session's default directory.
    roots: Option<Vec<PathBuf>>,
}

/// Write `bytes` to `path` atomically (temp file + rename), so a crash
/// leaves the old file or the new one; readable by the owner only (a
/// prompt can quote the project's files).
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // Unique per write: two threads keeping the same prompt must not share one.
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("{n}.tmp"));
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(bytes)?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Create `dir` (and its parents) readable by the owner only.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// File name for a conversation id: hex, so no id can name a path.
fn key(conversation_id: &str) -> String {
    conversation_id.bytes().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl Prompts {
    /// Open (or start) the state under `dir`, with the default settings.
    pub fn open(dir: PathBuf) -> Result<Self, Error> {
        Prompts::open_with(dir, &Config { file_roots: None, cache_entries: default_cache_entries() })
    }

    /// Open (or start) the state under `dir`.
    pub fn open_with(dir: PathBuf, config: &Config) -> Result<Self, Error> {
        for sub in ["resolved", "prompts"] {
            create_private_dir(&dir.join(sub))
                .map_err(|e| Error::new("io", format!("cannot create {}: {e}", dir.display())))?;
        }
        let roots = match &config.file_roots {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|r| {
                        std::fs::canonicalize(r).map_err(|e| {
                            Error::new(
                                "invalid_config",
                                format!("system-prompt: file_roots entry {} is not usable: {e}", r.display()),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let template = match std::fs::read(dir.join("template.json")) {
            Ok(bytes) => {
                let t: Template = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::new("invalid_config", format!("{} is not a template file: {e}", dir.display()))
                })?;
                Some(t.template)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::new("io", format!("cannot read the template: {e}"))),
        };
        Ok(Prompts {
            dir,
            template: Mutex::new(template),
            cache: Mutex::new(Cache::default()),
            capacity: config.cache_entries,
            roots,
        })
    }

    /// The current template.
    pub fn template(&self) -> String {
        self.template
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| DEFAULT_TEMPLATE.to_owned())
    }

    /// Replace the template, durably.
    pub fn set_template(&self, template: String) -> Result<String, Error> {
        if template.len() > MAX_TEMPLATE_BYTES {
            return Err(Error::new(
                "invalid_input",
                format!("a template is at most {MAX_TEMPLATE_BYTES} bytes; this one is {}", template.len()),
            ));
        }
        let mut slot = self.template.lock().unwrap_or_else(PoisonError::into_inner);
        let bytes = serde_json::to_vec(&Template { template: template.clone() })
            .map_err(|e| Error::new("plugin", e.to_string()))?;
        write_atomic(&self.dir.join("template.json"), &bytes)
            .map_err(|e| Error::new("io", format!("cannot save the template: {e}")))?;
        *slot = Some(template.clone());
        Ok(template)
    }

    /// The conversation's prompt for this working directory, if it is
    /// remembered — from memory, without touching the disk.
    pub fn known(&self, ctx: &PromptContext) -> Option<String> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.get(&ctx.conversation_id, &ctx.cwd).map(|p| p.to_string())
    }

    /// How many conversations' prompts are remembered in memory.
    pub fn remembered(&self) -> usize {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).by_conversation.len()
    }

    /// The directories `[file:…]` may read beneath for `ctx`: the
    /// configured roots, else the session's configured default directory
    /// (never the process's: `/` under systemd) — and never `/` itself,
    /// which bounds nothing.
    fn roots_for(&self, ctx: &PromptContext) -> Vec<PathBuf> {
        let roots: Vec<PathBuf> = match &self.roots {
            Some(r) => r.clone(),
            None => ctx.default_cwd.iter().filter_map(|d| std::fs::canonicalize(d).ok()).collect(),
        };
        roots.into_iter().filter(|r| r.parent().is_some()).collect()
    }

    /// The prompt kept on disk for the conversation, if it was rendered
    /// for this working directory.
    fn stored(&self, path: &Path, cwd: &Option<String>) -> Option<(String, String)> {
        let pointer = std::fs::read(path).ok().and_then(|b| serde_json::from_slice::<Pointer>(&b).ok())?;
        if pointer.cwd != *cwd {
            return None;
        }
        match (pointer.sha256, pointer.prompt) {
            (Some(sha), _) if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) => {
                let text =
                    std::fs::read_to_string(self.dir.join("prompts").join(format!("{sha}.txt"))).ok()?;
                Some((sha, text))
            }
            (_, Some(prompt)) => Some((sha256_hex(&prompt), prompt)),
            _ => None,
        }
    }

    /// The prompt for this turn: the conversation's own when it has one for
    /// this working directory (in memory, else on disk from an earlier
    /// run), else a fresh rendering (then kept). May read files and run git.
    pub fn prompt_for(&self, ctx: &PromptContext) -> String {
        if let Some(p) = self.known(ctx) {
            return p;
        }
        let path = self.dir.join("resolved").join(format!("{}.json", key(&ctx.conversation_id)));
        let (sha, prompt) = match self.stored(&path, &ctx.cwd) {
            Some(found) => found,
            None => {
                let roots = self.roots_for(ctx);
                let prompt = template::render(&self.template(), &mut vars::Vars::new(ctx, &roots));
                let sha = sha256_hex(&prompt);
                if let Err(e) = self.keep(&path, &ctx.cwd, &sha, &prompt) {
                    tracing::warn!(error = %e, "cannot keep the conversation's prompt on disk");
                }
                (sha, prompt)
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let text = cache.intern(&sha, prompt);
        cache.insert(ctx.conversation_id.clone(), ctx.cwd.clone(), Arc::clone(&text), self.capacity);
        text.to_string()
    }

    /// Write the prompt's text (once per distinct prompt), then the
    /// conversation's pointer to it: a crash between leaves an unused text,
    /// never a pointer to nothing.
    fn keep(&self, pointer: &Path, cwd: &Option<String>, sha: &str, prompt: &str) -> std::io::Result<()> {
        let text = self.dir.join("prompts").join(format!("{sha}.txt"));
        if !text.is_file() {
            write_atomic(&text, prompt.as_bytes())?;
        }
        let bytes =
            serde_json::to_vec(&Pointer { cwd: cwd.clone(), sha256: Some(sha.to_owned()), prompt: None })
                .map_err(std::io::Error::other)?;
        write_atomic(pointer, &bytes)
    }
}

/// The plugin.
#[derive(Debug)]
pub struct SystemPrompt;

/// `GET`/`PUT /system-prompt` and `GET /system-prompt/variables`.
fn serve_routes(host: &Host, prompts: &Arc<Prompts>) -> Result<(), Error> {
    use dispatch_contracts::http::{problem, HttpMethod, HttpResponse, Route};
    use dispatch_contracts::openapi::Operation;
    let op = |summary: &str, id: &str| Operation::new(summary).id(id).tag("system-prompt");
    let p = Arc::clone(prompts);
    let get = Route::new(HttpMethod::Get, "/system-prompt", move |_req| {
        std::future::ready(Ok(HttpResponse::ok(&Template { template: p.template() })))
    })
    .operation(
        op("Read the system prompt's template", "getSystemPrompt").returns::<Template>(200, "The template"),
    );
    let p = Arc::clone(prompts);
    let put = Route::new(HttpMethod::Put, "/system-prompt", move |req| {
        let answer = req.body_as::<Template>().and_then(|b| {
            let template = p.set_template(b.template).map_err(problem)?;
            Ok(HttpResponse::ok(&Template { template }))
        });
        std::future::ready(answer)
    })
    .operation(
        op("Replace the system prompt's template (it may be empty)", "setSystemPrompt")
            .body::<Template>()
            .returns::<Template>(200, "The template kept")
            .error(400, &["bad_request"]),
    );
    let variables = Route::new(HttpMethod::Get, "/system-prompt/variables", |_req| {
        std::future::ready(Ok(HttpResponse::ok(&Variables { variables: vars::catalog() })))
    })
    .operation(
        op("List the variables a template may use", "getSystemPromptVariables")
            .returns::<Variables>(200, "The variables"),
    );
    dispatch_contracts::http::serve_all(host, [get, put, variables])
}

fn to_value<T: Serialize>(v: &T) -> Result<Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::new("plugin", e.to_string()))
}

impl Plugin for SystemPrompt {
    fn manifest() -> PluginManifest {
        dispatch_contracts::http::declare_routes(
            PluginManifest::new("system-prompt", env!("CARGO_PKG_VERSION"))
                .description("The system prompt: a template with variables, rendered once per conversation")
                .provides("service", PROMPT.name())
                .provides("hook", SYSTEM_PROMPT.name()),
        )
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let config: Config = ctx.config()?;
        let host: Host = ctx.host().clone();
        let prompts = Arc::new(Prompts::open_with(host.data_dir(), &config)?);
        let p = Arc::clone(&prompts);
        host.provide_sync(&PROMPT, move |request| match request {
            PromptRequest::Get => to_value(&Template { template: p.template() }),
            PromptRequest::Set { template } => to_value(&Template { template: p.set_template(template)? }),
            PromptRequest::Variables => to_value(&Variables { variables: vars::catalog() }),
            PromptRequest::Render { template, context } => {
                let roots = p.roots_for(&context);
                let rendered = template::render(&template, &mut vars::Vars::new(&context, &roots));
                to_value(&Template { template: rendered })
            }
            _ => Err(Error::new("unsupported", "this system-prompt does not know that op")),
        })?;
        serve_routes(&host, &prompts)?;
        host.add_filter(&SYSTEM_PROMPT, 0, move |mut ctx: PromptContext| {
            // Every turn after a conversation's first: answered from memory.
            let known = prompts.known(&ctx);
            let prompts = Arc::clone(&prompts);
            async move {
                if let Some(p) = known {
                    ctx.prompt = p;
                    return Ok(ctx);
                }
                // Rendering may read files and run git: off the caller's thread.
                let (tx, rx) = futures::channel::oneshot::channel();
                std::thread::Builder::new()
                    .name("system-prompt".into())
                    .spawn(move || {
                        ctx.prompt = prompts.prompt_for(&ctx);
                        let _ = tx.send(ctx);
                    })
                    .map_err(|e| Error::new("io", format!("cannot start a thread: {e}")))?;
                rx.await.map_err(|_| Error::new("plugin", "rendering the system prompt failed"))
            }
        })?;
        Ok(SystemPrompt)
    }
}

dispatch_abi::export_plugin!(SystemPrompt);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ctx(id: &str, cwd: &Path) -> PromptContext {
        PromptContext {
            conversation_id: id.into(),
            model: "m/m".into(),
            cwd: Some(cwd.display().to_string()),
            default_cwd: Some(cwd.display().to_string()),
            tools: Vec::new(),
            prompt: String::new(),
        }
    }

    /// Regression (issue 31): every conversation's rendered prompt stayed in
    /// memory and got a file of its own — with a 60 KB AGENTS.md, 3000
    /// conversations took 200 MB of RSS and 188 MB of files, never given back.
    #[test]
    fn remembered_prompts_are_bounded_and_identical_ones_are_kept_once() {
        let data = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        std::fs::write(work.path().join("AGENTS.md"), "x".repeat(60_000)).unwrap();
        let prompts =
            Prompts::open_with(data.path().to_owned(), &Config { file_roots: None, cache_entries: 8 })
                .unwrap();
        let first = prompts.prompt_for(&ctx("c0", work.path()));
        assert!(first.contains(&"x".repeat(60_000)), "AGENTS.md is in the prompt");
        for i in 1..50 {
            assert_eq!(prompts.prompt_for(&ctx(&format!("c{i}"), work.path())), first);
        }
        assert!(prompts.remembered() <= 8, "{} remembered", prompts.remembered());
        let texts = std::fs::read_dir(data.path().join("prompts")).unwrap().count();
        assert_eq!(texts, 1, "one file for one distinct prompt");
        let disk: u64 = std::fs::read_dir(data.path().join("resolved"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(disk < 50 * 1024, "the pointers are small: {disk} bytes");

        // A forgotten conversation keeps its prompt: read back from disk,
        // even after the template (or AGENTS.md) changed.
        std::fs::write(work.path().join("AGENTS.md"), "changed").unwrap();
        prompts.set_template("new template".into()).unwrap();
        assert_eq!(prompts.prompt_for(&ctx("c0", work.path())), first);
        // And after a restart.
        let again = Prompts::open(data.path().to_owned()).unwrap();
        assert_eq!(again.prompt_for(&ctx("c3", work.path())), first);
        assert_eq!(again.prompt_for(&ctx("new", work.path())), "new template");
    }

    #[test]
    fn prompt_files_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let data = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let prompts = Prompts::open(data.path().join("system-prompt")).unwrap();
        prompts.set_template("hello".into()).unwrap();
        prompts.prompt_for(&ctx("c", work.path()));
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = data.path().join("system-prompt");
        assert_eq!(mode(dir.join("prompts")), 0o700);
        assert_eq!(mode(dir.join("template.json")), 0o600);
        let pointer = std::fs::read_dir(dir.join("resolved")).unwrap().next().unwrap().unwrap().path();
        assert_eq!(mode(pointer), 0o600);
    }
}
