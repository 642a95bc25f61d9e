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
//! path, at most 64 KiB) — not anywhere on the machine as in the original:
//! a template is editable over HTTP, and the prompt goes to the model.

pub mod template;
pub mod vars;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

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

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Resolved {
    cwd: Option<String>,
    prompt: String,
}

/// The plugin's state.
#[derive(Debug)]
pub struct Prompts {
    dir: PathBuf,
    template: Mutex<Option<String>>,
    /// Prompts already rendered or read back, by conversation: every turn
    /// asks, and after the first one the answer is here.
    resolved: Mutex<HashMap<String, Resolved>>,
}

/// Write `bytes` to `path` atomically (temp file + rename), so a crash
/// leaves the old file or the new one.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// File name for a conversation id: hex, so no id can name a path.
fn key(conversation_id: &str) -> String {
    conversation_id.bytes().map(|b| format!("{b:02x}")).collect()
}

impl Prompts {
    /// Open (or start) the state under `dir`.
    pub fn open(dir: PathBuf) -> Result<Self, Error> {
        std::fs::create_dir_all(dir.join("resolved"))
            .map_err(|e| Error::new("io", format!("cannot create {}: {e}", dir.display())))?;
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
        Ok(Prompts { dir, template: Mutex::new(template), resolved: Mutex::new(HashMap::new()) })
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

    /// The conversation's prompt for this working directory, if it has
    /// been rendered already — from memory, without touching the disk.
    pub fn known(&self, ctx: &PromptContext) -> Option<String> {
        let resolved = self.resolved.lock().unwrap_or_else(PoisonError::into_inner);
        resolved.get(&ctx.conversation_id).filter(|r| r.cwd == ctx.cwd).map(|r| r.prompt.clone())
    }

    /// The prompt for this turn: the conversation's own when it has one for
    /// this working directory (in memory, else on disk from an earlier
    /// run), else a fresh rendering (then kept). May read files and run git.
    pub fn prompt_for(&self, ctx: &PromptContext) -> String {
        if let Some(p) = self.known(ctx) {
            return p;
        }
        let path = self.dir.join("resolved").join(format!("{}.json", key(&ctx.conversation_id)));
        let stored = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Resolved>(&b).ok());
        let keep = match stored.filter(|r| r.cwd == ctx.cwd) {
            Some(r) => r,
            None => {
                let prompt = template::render(&self.template(), &mut vars::Vars::new(ctx));
                let keep = Resolved { cwd: ctx.cwd.clone(), prompt };
                let written = serde_json::to_vec(&keep)
                    .map_err(std::io::Error::other)
                    .and_then(|b| write_atomic(&path, &b));
                if let Err(e) = written {
                    tracing::warn!(error = %e, "cannot keep the conversation's prompt on disk");
                }
                keep
            }
        };
        let prompt = keep.prompt.clone();
        self.resolved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(ctx.conversation_id.clone(), keep);
        prompt
    }
}

/// The plugin.
#[derive(Debug)]
pub struct SystemPrompt;

fn to_value<T: Serialize>(v: &T) -> Result<Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::new("plugin", e.to_string()))
}

impl Plugin for SystemPrompt {
    fn manifest() -> PluginManifest {
        PluginManifest::new("system-prompt", env!("CARGO_PKG_VERSION"))
            .description("The system prompt: a template with variables, rendered once per conversation")
            .provides("service", PROMPT.name())
            .provides("hook", SYSTEM_PROMPT.name())
    }

    fn activate(ctx: Context) -> Result<Self, Error> {
        let host: Host = ctx.host().clone();
        let prompts = Arc::new(Prompts::open(host.data_dir())?);
        let p = Arc::clone(&prompts);
        host.provide_sync(&PROMPT, move |request| match request {
            PromptRequest::Get => to_value(&Template { template: p.template() }),
            PromptRequest::Set { template } => to_value(&Template { template: p.set_template(template)? }),
            PromptRequest::Variables => to_value(&Variables { variables: vars::catalog() }),
            _ => Err(Error::new("unsupported", "this system-prompt does not know that op")),
        })?;
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
