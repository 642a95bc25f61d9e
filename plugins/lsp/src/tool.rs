//! The `lsp` tool, and the diagnostics note added after an edit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_lsp::lsp_types::{self as lsp, request as req, Diagnostic, DiagnosticSeverity};
use dispatch_contracts::tool::{BoxFuture, Tool, ToolContext, ToolError, ToolOutput};
use dispatch_tools::contain::Workdir;
use serde_json::{json, Value};

use crate::client::{uri_of, Client};
use crate::config::{self, Spec};
use crate::manager::Manager;
use crate::Settings;

/// The tool's name.
pub const NAME: &str = "lsp";
/// Items listed per answer at most (diagnostics, locations, symbols).
const MAX_ITEMS: usize = 50;
/// Characters of one answer at most.
const MAX_CHARS: usize = 16 * 1024;

const OPERATIONS: &str = "diagnostics, hover, definition, references, documentSymbols, workspaceSymbols";

/// The tool.
#[derive(Debug)]
pub struct LspTool {
    pub(crate) manager: Arc<Manager>,
    pub(crate) settings: Settings,
}

/// An existing `path` inside `cwd`, checked as the file tools check theirs
/// (lexically, then after every symlink — a language server must not be
/// pointed at a file outside through one).
pub fn resolve(cwd: &Path, path: &str) -> Result<PathBuf, String> {
    Workdir::new(Some(cwd)).and_then(|w| w.existing(path)).map_err(|e| format!("Error: {e}"))
}

/// Shown paths: relative to `cwd` when inside it.
fn shown(cwd: &Path, path: &Path) -> String {
    path.strip_prefix(cwd).map_or_else(|_| path.display().to_string(), |p| p.display().to_string())
}

/// Cut `text` to [`MAX_CHARS`], saying so.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_CHARS {
        let mut cut = MAX_CHARS;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("\n… (cut)");
    }
    text
}

fn severity_rank(d: &Diagnostic) -> u8 {
    match d.severity {
        Some(DiagnosticSeverity::ERROR) => 0,
        Some(DiagnosticSeverity::WARNING) => 1,
        Some(DiagnosticSeverity::INFORMATION) => 2,
        Some(DiagnosticSeverity::HINT) => 3,
        _ => 4,
    }
}

/// Diagnostics as lines the model reads, errors first, at most `limit`.
pub fn format_diagnostics(items: &[Diagnostic], limit: usize) -> String {
    let mut sorted: Vec<&Diagnostic> = items.iter().collect();
    sorted.sort_by_key(|d| (severity_rank(d), d.range.start.line, d.range.start.character));
    let mut lines = Vec::new();
    for d in sorted.iter().take(limit) {
        let severity = ["ERROR", "WARNING", "INFO", "HINT", "UNKNOWN"][usize::from(severity_rank(d))];
        let message = d.message.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut line =
            format!("{severity} L{}:{}: {message}", d.range.start.line + 1, d.range.start.character + 1);
        if let Some(source) = &d.source {
            line.push_str(&format!(" [{source}]"));
        }
        match &d.code {
            Some(lsp::NumberOrString::Number(n)) => line.push_str(&format!(" ({n})")),
            Some(lsp::NumberOrString::String(s)) => line.push_str(&format!(" ({s})")),
            None => {}
        }
        lines.push(line);
    }
    if sorted.len() > limit {
        lines.push(format!("… and {} more", sorted.len() - limit));
    }
    lines.join("\n")
}

/// The servers of `cwd` that handle `path`, each with its root.
pub fn servers_for(cwd: &Path, path: &Path, built_in: bool) -> (Vec<(Spec, PathBuf)>, Vec<Spec>) {
    let all = config::for_cwd(cwd, built_in);
    let dir = path.parent().unwrap_or(cwd);
    let handling = all
        .iter()
        .filter(|s| s.handles(path))
        .map(|s| (s.clone(), config::find_root(dir, cwd, &s.root_markers)))
        .collect();
    (handling, all)
}

/// What one server says about a file's diagnostics after it was synced,
/// waiting until `deadline`.
pub async fn diagnostics(
    client: &Client,
    path: &Path,
    deadline: tokio::time::Instant,
    settle: Duration,
) -> Result<Option<Vec<Diagnostic>>, String> {
    let synced = client.sync(path).await?;
    Ok(client.diagnostics_after(&synced, deadline, settle).await)
}

/// The note added after a successful edit of `path`: the diagnostics of
/// every server handling it (nothing when they found none).
pub async fn edit_note(manager: &Manager, settings: &Settings, cwd: &Path, path: &Path) -> Option<String> {
    let (servers, _) = servers_for(cwd, path, settings.built_in);
    if servers.is_empty() {
        return None;
    }
    let deadline = tokio::time::Instant::now() + settings.diagnostics_wait;
    let shown_path = &shown(cwd, path);
    let asks = servers.iter().map(|(spec, root)| async move {
        // A start outlives this wait: the next edit finds it running.
        let client = match tokio::time::timeout_at(deadline, manager.client(spec, root, true)).await {
            Ok(Ok(c)) => c,
            // The built-in server was not asked for: where it is not
            // installed, edits say nothing of it.
            Ok(Err(_)) if spec.source == config::Source::BuiltIn && !crate::manager::installed(spec) => {
                return None
            }
            Ok(Err(e)) => {
                return Some(format!(
                    "LSP: {} is not available, so {shown_path} was not checked: {e}",
                    spec.name
                ))
            }
            Err(_) => {
                return Some(format!("LSP: {} is still starting; {shown_path} was not checked.", spec.name))
            }
        };
        match diagnostics(&client, path, deadline, settings.settle).await {
            Ok(Some(items)) if items.is_empty() => None,
            Ok(Some(items)) => Some(format!(
                "LSP diagnostics for {shown_path} ({}):\n{}",
                spec.name,
                format_diagnostics(&items, 20)
            )),
            Ok(None) => Some(format!(
                "LSP: {} did not report on {shown_path} within {} ms; diagnostics skipped.",
                spec.name,
                settings.diagnostics_wait.as_millis()
            )),
            Err(e) => Some(format!("LSP: {} could not check {shown_path}: {e}", spec.name)),
        }
    });
    let notes: Vec<String> = futures::future::join_all(asks).await.into_iter().flatten().collect();
    (!notes.is_empty()).then(|| bounded(notes.join("\n\n")))
}

/// The validated input.
struct Input {
    operation: String,
    path: Option<String>,
    position: Option<lsp::Position>,
    query: Option<String>,
}

fn parse(input: &Value) -> Result<Input, String> {
    let Some(operation) = input.get("operation").and_then(Value::as_str) else {
        return Err("Error: Missing \"operation\" parameter (must be a string).".into());
    };
    let operation = match operation {
        "documentSymbol" => "documentSymbols",
        "workspaceSymbol" => "workspaceSymbols",
        other => other,
    };
    if !OPERATIONS.split(", ").any(|o| o == operation) {
        return Err(format!("Error: Invalid operation \"{operation}\". Must be one of: {OPERATIONS}."));
    }
    let number = |key: &str| -> Result<Option<u32>, String> {
        match input.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                Some(n) if n >= 1.0 && n <= f64::from(u32::MAX) => Ok(Some(n as u32)),
                _ => Err(format!("Error: Invalid \"{key}\" parameter (must be a positive number, 1-based).")),
            },
        }
    };
    let (line, character) = (number("line")?, number("character")?);
    let path =
        input.get("path").and_then(Value::as_str).map(str::trim).filter(|p| !p.is_empty()).map(String::from);
    let query = input.get("query").and_then(Value::as_str).map(String::from);
    if operation != "workspaceSymbols" && path.is_none() {
        return Err("Error: Missing or empty \"path\" parameter (must be a non-empty string).".into());
    }
    let position = match (line, character) {
        (Some(l), Some(c)) => Some(lsp::Position::new(l - 1, c - 1)),
        _ if matches!(operation, "hover" | "definition" | "references") => {
            return Err(format!(
                "Error: \"{operation}\" requires both \"line\" and \"character\" parameters (1-based)."
            ))
        }
        _ => None,
    };
    if operation == "workspaceSymbols" && query.is_none() {
        return Err("Error: \"workspaceSymbols\" requires a \"query\" parameter.".into());
    }
    Ok(Input { operation: operation.to_owned(), path, position, query })
}

impl Tool for LspTool {
    fn name(&self) -> &str {
        NAME
    }

    fn description(&self) -> &str {
        "Ask the project's language servers about code: diagnostics (errors and warnings of a file), hover \
         (the type and documentation at a position), definition, references, documentSymbols (a file's outline) \
         and workspaceSymbols (find symbols by name). Lines and characters are 1-based, as read_file shows lines."
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "operation": {"type": "string", "enum": ["diagnostics", "hover", "definition", "references", "documentSymbols", "workspaceSymbols"],
                    "description": "What to ask."},
                "path": {"type": "string", "description": "The file, relative to the working directory (all but workspaceSymbols)."},
                "line": {"type": "integer", "minimum": 1, "description": "1-based line (hover, definition, references)."},
                "character": {"type": "integer", "minimum": 1, "description": "1-based character in the line (hover, definition, references)."},
                "query": {"type": "string", "description": "The symbol name to search for (workspaceSymbols)."}
            },
            "required": ["operation"]
        })
    }

    fn concurrency_safe(&self) -> bool {
        true
    }

    fn execute(&self, input: Value, ctx: ToolContext) -> BoxFuture<Result<ToolOutput, ToolError>> {
        let manager = Arc::clone(&self.manager);
        let settings = self.settings.clone();
        Box::pin(async move {
            let input = match parse(&input) {
                Ok(i) => i,
                Err(e) => return Ok(ToolOutput::error(e)),
            };
            let Some(cwd) = ctx.cwd.clone() else {
                return Ok(ToolOutput::error("Error: no working directory for this call."));
            };
            let abort = ctx.abort.clone();
            tokio::select! {
                out = run(&manager, &settings, &cwd, input) => Ok(match out {
                    Ok(text) => ToolOutput::ok(bounded(text)),
                    Err(e) => ToolOutput::error(bounded(e)),
                }),
                () = abort.aborted() => Ok(ToolOutput::error("Aborted.")),
            }
        })
    }
}

/// Pick the server for `path` (or the first of `cwd` for a workspace
/// query) and start it.
async fn server(
    manager: &Manager,
    settings: &Settings,
    cwd: &Path,
    path: Option<&Path>,
) -> Result<(Arc<Client>, Spec), String> {
    let probe = path.map_or_else(|| cwd.join("_"), Path::to_path_buf);
    let (handling, all) = servers_for(cwd, &probe, settings.built_in);
    if all.is_empty() {
        return Err("No language server is configured for this workspace.".into());
    }
    let (spec, root) = match (handling.into_iter().next(), path) {
        (Some(found), _) => found,
        (None, None) => (all[0].clone(), cwd.to_path_buf()),
        (None, Some(p)) => {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("(no extension)");
            let names: Vec<&str> = all.iter().map(|s| s.id.as_str()).collect();
            return Err(format!(
                "No language server here handles .{ext} files (configured: {}).",
                names.join(", ")
            ));
        }
    };
    let client = manager.client(&spec, &root, true).await?;
    Ok((client, spec))
}

async fn run(manager: &Manager, settings: &Settings, cwd: &Path, input: Input) -> Result<String, String> {
    let path = input.path.as_deref().map(|p| resolve(cwd, p)).transpose()?;
    if let Some(p) = &path {
        if !p.is_file() {
            return Err(format!("Error: {} is not a file.", shown(cwd, p)));
        }
    }
    let (client, spec) = server(manager, settings, cwd, path.as_deref()).await?;
    let timeout = settings.diagnostics_wait;
    let text_document = |p: &Path| -> Result<lsp::TextDocumentIdentifier, String> {
        Ok(lsp::TextDocumentIdentifier { uri: uri_of(p)? })
    };
    if let Some(p) = &path {
        if input.operation != "diagnostics" {
            client.sync(p).await?;
        }
    }
    let position_params = |p: &Path| -> Result<lsp::TextDocumentPositionParams, String> {
        Ok(lsp::TextDocumentPositionParams {
            text_document: text_document(p)?,
            position: input.position.unwrap_or_default(),
        })
    };
    match (input.operation.as_str(), path.as_deref()) {
        ("diagnostics", Some(p)) => {
            let deadline = tokio::time::Instant::now() + timeout;
            match diagnostics(&client, p, deadline, settings.settle).await? {
                Some(items) if items.is_empty() => Ok(format!("No diagnostics for {}.", shown(cwd, p))),
                Some(items) => Ok(format_diagnostics(&items, MAX_ITEMS)),
                None => Err(format!(
                    "{} did not report diagnostics for {} within {} ms.",
                    spec.name,
                    shown(cwd, p),
                    timeout.as_millis()
                )),
            }
        }
        ("hover", Some(p)) => {
            let params = lsp::HoverParams {
                text_document_position_params: position_params(p)?,
                work_done_progress_params: Default::default(),
            };
            let hover = client.request::<req::HoverRequest>(params, timeout).await?;
            Ok(hover
                .map(|h| hover_text(&h.contents))
                .filter(|t| !t.trim().is_empty())
                .unwrap_or_else(|| "No hover information at that position.".into()))
        }
        ("definition", Some(p)) => {
            let params = lsp::GotoDefinitionParams {
                text_document_position_params: position_params(p)?,
                work_done_progress_params: Default::default(),
                partial_result_params: Default::default(),
            };
            let found = client.request::<req::GotoDefinition>(params, timeout).await?;
            let locations = match found {
                None => Vec::new(),
                Some(lsp::GotoDefinitionResponse::Scalar(l)) => vec![l],
                Some(lsp::GotoDefinitionResponse::Array(ls)) => ls,
                Some(lsp::GotoDefinitionResponse::Link(links)) => links
                    .into_iter()
                    .map(|l| lsp::Location { uri: l.target_uri, range: l.target_selection_range })
                    .collect(),
            };
            Ok(locations_text(cwd, locations, "No definition found.").await)
        }
        ("references", Some(p)) => {
            let params = lsp::ReferenceParams {
                text_document_position: position_params(p)?,
                work_done_progress_params: Default::default(),
                partial_result_params: Default::default(),
                context: lsp::ReferenceContext { include_declaration: true },
            };
            let found = client.request::<req::References>(params, timeout).await?.unwrap_or_default();
            Ok(locations_text(cwd, found, "No references found.").await)
        }
        ("documentSymbols", Some(p)) => {
            let params = lsp::DocumentSymbolParams {
                text_document: text_document(p)?,
                work_done_progress_params: Default::default(),
                partial_result_params: Default::default(),
            };
            let mut lines = Vec::new();
            match client.request::<req::DocumentSymbolRequest>(params, timeout).await? {
                None => {}
                Some(lsp::DocumentSymbolResponse::Flat(symbols)) => {
                    for s in symbols {
                        lines.push(format!("{:?} {} (L{})", s.kind, s.name, s.location.range.start.line + 1));
                    }
                }
                Some(lsp::DocumentSymbolResponse::Nested(symbols)) => outline(&symbols, 0, &mut lines),
            }
            Ok(list_text(lines, "No symbols found."))
        }
        ("workspaceSymbols", _) => {
            let params = lsp::WorkspaceSymbolParams {
                query: input.query.unwrap_or_default(),
                work_done_progress_params: Default::default(),
                partial_result_params: Default::default(),
            };
            let mut lines = Vec::new();
            match client.request::<req::WorkspaceSymbolRequest>(params, timeout).await? {
                None => {}
                Some(lsp::WorkspaceSymbolResponse::Flat(symbols)) => {
                    for s in symbols {
                        lines.push(format!("{:?} {} — {}", s.kind, s.name, location_text(cwd, &s.location)));
                    }
                }
                Some(lsp::WorkspaceSymbolResponse::Nested(symbols)) => {
                    for s in symbols {
                        let at = match &s.location {
                            lsp::OneOf::Left(l) => location_text(cwd, l),
                            lsp::OneOf::Right(l) => {
                                l.uri.to_file_path().map_or_else(|()| l.uri.to_string(), |p| shown(cwd, &p))
                            }
                        };
                        lines.push(format!("{:?} {} — {at}", s.kind, s.name));
                    }
                }
            }
            Ok(list_text(lines, "No symbols found."))
        }
        _ => Err("Error: this operation needs a \"path\".".into()),
    }
}

fn hover_text(contents: &lsp::HoverContents) -> String {
    let marked = |m: &lsp::MarkedString| match m {
        lsp::MarkedString::String(s) => s.clone(),
        lsp::MarkedString::LanguageString(l) => format!("```{}\n{}\n```", l.language, l.value),
    };
    match contents {
        lsp::HoverContents::Scalar(m) => marked(m),
        lsp::HoverContents::Array(ms) => ms.iter().map(marked).collect::<Vec<_>>().join("\n\n"),
        lsp::HoverContents::Markup(m) => m.value.clone(),
    }
}

/// `path:line:col: <the line's text>`.
fn location_text(cwd: &Path, l: &lsp::Location) -> String {
    let (line, col) = (l.range.start.line + 1, l.range.start.character + 1);
    match l.uri.to_file_path() {
        Ok(p) => {
            let text = std::fs::read_to_string(&p)
                .ok()
                .and_then(|t| t.lines().nth(l.range.start.line as usize).map(|s| s.trim().to_owned()))
                .unwrap_or_default();
            let text: String = text.chars().take(200).collect();
            format!("{}:{line}:{col}: {text}", shown(cwd, &p)).trim_end().to_owned()
        }
        Err(()) => format!("{}:{line}:{col}", l.uri),
    }
}

/// The first [`MAX_ITEMS`] locations, each with its line read from disk
/// (off the async threads).
async fn locations_text(cwd: &Path, locations: Vec<lsp::Location>, none: &'static str) -> String {
    let total = locations.len();
    let cwd = cwd.to_path_buf();
    let shown = tokio::task::spawn_blocking(move || {
        locations.iter().take(MAX_ITEMS).map(|l| location_text(&cwd, l)).collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let mut text = list_text(shown, none);
    if total > MAX_ITEMS {
        text.push_str(&format!("\n… and {} more", total - MAX_ITEMS));
    }
    text
}

fn list_text(mut lines: Vec<String>, none: &str) -> String {
    if lines.is_empty() {
        return none.to_owned();
    }
    let total = lines.len();
    lines.truncate(MAX_ITEMS);
    if total > MAX_ITEMS {
        lines.push(format!("… and {} more", total - MAX_ITEMS));
    }
    lines.join("\n")
}

fn outline(symbols: &[lsp::DocumentSymbol], depth: usize, lines: &mut Vec<String>) {
    for s in symbols {
        lines.push(format!("{}{:?} {} (L{})", "  ".repeat(depth), s.kind, s.name, s.range.start.line + 1));
        if let Some(children) = &s.children {
            outline(children, depth + 1, lines);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_checked_with_messages_the_model_can_act_on() {
        let err = |v: Value| parse(&v).err().unwrap();
        assert_eq!(err(json!({})), "Error: Missing \"operation\" parameter (must be a string).");
        assert!(err(json!({"operation": "rename"})).starts_with("Error: Invalid operation \"rename\""));
        assert_eq!(
            err(json!({"operation": "hover", "path": "a.ts", "line": 1})),
            "Error: \"hover\" requires both \"line\" and \"character\" parameters (1-based)."
        );
        assert_eq!(
            err(json!({"operation": "hover", "path": "a.ts", "line": 0, "character": 1})),
            "Error: Invalid \"line\" parameter (must be a positive number, 1-based)."
        );
        assert!(err(json!({"operation": "diagnostics"})).contains("\"path\""));
        assert!(err(json!({"operation": "workspaceSymbols"})).contains("\"query\""));
        let ok = parse(&json!({"operation": "documentSymbol", "path": "a.ts"})).unwrap();
        assert_eq!(ok.operation, "documentSymbols");
        let ok = parse(&json!({"operation": "hover", "path": "a.ts", "line": 3, "character": 7})).unwrap();
        assert_eq!(ok.position, Some(lsp::Position::new(2, 6)));
    }

    #[test]
    fn paths_stay_inside_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().canonicalize().unwrap();
        std::fs::create_dir(cwd.join("src")).unwrap();
        std::fs::write(cwd.join("a.ts"), "").unwrap();
        assert_eq!(resolve(&cwd, "src/../a.ts").unwrap(), cwd.join("a.ts"));
        assert!(resolve(&cwd, "../q/a.ts").is_err());
        assert!(resolve(&cwd, "/etc/passwd").is_err());
        // Through a symlink: refused too.
        std::os::unix::fs::symlink("/etc/passwd", cwd.join("out.ts")).unwrap();
        assert!(
            resolve(&cwd, "out.ts").unwrap_err().contains("through a symlink"),
            "{:?}",
            resolve(&cwd, "out.ts")
        );
    }

    #[test]
    fn errors_come_first_and_the_list_is_bounded() {
        let d = |line, severity, message: &str| Diagnostic {
            range: lsp::Range::new(lsp::Position::new(line, 4), lsp::Position::new(line, 5)),
            severity,
            message: message.into(),
            source: Some("ts".into()),
            code: Some(lsp::NumberOrString::Number(2322)),
            ..Default::default()
        };
        let items = [
            d(9, Some(DiagnosticSeverity::WARNING), "unused"),
            d(2, Some(DiagnosticSeverity::ERROR), "Type 'string' is\n  not assignable"),
            d(1, Some(DiagnosticSeverity::HINT), "hint"),
        ];
        assert_eq!(
            format_diagnostics(&items, 2),
            "ERROR L3:5: Type 'string' is not assignable [ts] (2322)\nWARNING L10:5: unused [ts] (2322)\n… and 1 more"
        );
    }
}
