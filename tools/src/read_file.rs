//! `read_file`: a text file with line numbers and pagination, or a
//! directory listing.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use dispatch_protocol::abort::AbortSignal;
use dispatch_protocol::tool::{Tool, ToolContext, ToolError, ToolOutput};
use dispatch_protocol::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::at;
use crate::contain::{Workdir, MAX_PATH_BYTES};
use crate::input::parse;

/// Limits, from `[plugin.config]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Lines shown when the call gives no `limit`.
    pub default_limit: u64,
    /// Most bytes of output per call; the rest is left for the next page.
    pub max_output_bytes: usize,
    /// Longer lines are cut (minified files would otherwise fill a page).
    pub max_line_chars: usize,
    /// Most directory entries listed.
    pub max_entries: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { default_limit: 2000, max_output_bytes: 100 * 1024, max_line_chars: 2000, max_entries: 1000 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    path: String,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    limit: Option<u64>,
}

/// The `read_file` tool.
#[derive(Debug, Default)]
pub struct ReadFile {
    config: Config,
}

/// How much of a file's head is searched for a NUL byte.
const SNIFF_BYTES: usize = 8192;

/// Largest file read on the caller's thread when all of it is cached.
const INLINE_BYTES: u64 = 64 * 1024;

/// The part of a call that may block, given the call's abort signal.
pub type Rest = Box<dyn FnOnce(&AbortSignal) -> Result<ToolOutput, ToolError> + Send>;

/// How far [`ReadFile::begin`] got.
pub enum Begun {
    /// The answer.
    Done(Result<ToolOutput, ToolError>),
    /// The rest of the call, which may block on the file system: run it
    /// where blocking is allowed.
    Blocking(Rest),
}

impl std::fmt::Debug for Begun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Begun::Done(r) => f.debug_tuple("Done").field(r).finish(),
            Begun::Blocking(_) => f.write_str("Blocking(..)"),
        }
    }
}

/// `path` when it is relative and made of plain names only (`.` dropped):
/// inside the working directory by construction, and shown as it is
/// written. `None` for anything the checked path must judge — empty,
/// absolute, `..`, too long, a NUL.
fn plain_relative(path: &str) -> Option<PathBuf> {
    if path.is_empty() || path.len() > MAX_PATH_BYTES || path.contains('\0') {
        return None;
    }
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

impl ReadFile {
    /// With these limits.
    pub fn new(config: Config) -> Self {
        ReadFile { config }
    }

    /// The call, synchronously; checks `abort` as it reads.
    pub fn read(
        &self,
        input: Value,
        cwd: Option<&Path>,
        abort: &AbortSignal,
    ) -> Result<ToolOutput, ToolError> {
        match self.begin(input, cwd, abort) {
            Begun::Done(result) => result,
            Begun::Blocking(rest) => rest(abort),
        }
    }

    /// As much of the call as can be done without waiting for a disk:
    /// a small text file whose path and pages are in the kernel's caches
    /// is answered here, on the caller's thread (see [`at::read_cached`]);
    /// anything else — a cold or large file, a directory, a symlink, an
    /// absolute or `..` path, an error to explain — is left to
    /// [`Begun::Blocking`], the checked path of [`Workdir`]. A turn's tool
    /// calls thus skip the hop to the blocking pool in the common case
    /// without ever stalling the shared workers on I/O.
    pub fn begin(&self, input: Value, cwd: Option<&Path>, abort: &AbortSignal) -> Begun {
        let input: Input = match parse(input) {
            Ok(i) => i,
            Err(e) => return Begun::Done(Err(e)),
        };
        if input.offset == Some(0) {
            return Begun::Done(Err(ToolError::InvalidInput(
                "`offset` is 1-based: the first line is 1".into(),
            )));
        }
        if input.limit == Some(0) {
            return Begun::Done(Err(ToolError::InvalidInput("`limit` must be at least 1".into())));
        }
        let offset = input.offset.unwrap_or(1);
        let limit = input.limit.unwrap_or(self.config.default_limit);
        let tool = ReadFile::new(self.config.clone());
        let path = input.path;
        let plain = plain_relative(&path);
        let checked = move |tool: ReadFile, cwd: Option<PathBuf>| -> Begun {
            Begun::Blocking(Box::new(move |abort| tool.checked(&path, cwd.as_deref(), offset, limit, abort)))
        };
        let (Some(root), Some(rel)) = (cwd.filter(|c| c.is_absolute()), plain) else {
            return checked(tool, cwd.map(Path::to_path_buf));
        };
        if abort.is_aborted() {
            return Begun::Done(Err(ToolError::Failed("aborted".into())));
        }
        let shown = rel.display().to_string();
        match at::read_cached(root, &rel, INLINE_BYTES) {
            Ok(at::Cached::Whole { bytes }) => {
                let size = bytes.len() as u64;
                Begun::Done(tool.render(
                    &shown,
                    size,
                    bytes,
                    Box::new(std::io::empty()),
                    offset,
                    limit,
                    abort,
                ))
            }
            Ok(at::Cached::Open { file, size }) => Begun::Blocking(Box::new(move |abort| {
                tool.open_file(&shown, file, size, offset, limit, abort)
            })),
            // Not a regular file, or the fast path cannot tell (not
            // cached, not there, a symlink, an old kernel): the checked
            // path decides, and words any refusal.
            Ok(at::Cached::Other) | Err(_) => checked(tool, Some(root.to_path_buf())),
        }
    }

    /// The call through [`Workdir`]'s checks: canonical paths, every
    /// refusal explained.
    fn checked(
        &self,
        path: &str,
        cwd: Option<&Path>,
        offset: u64,
        limit: u64,
        abort: &AbortSignal,
    ) -> Result<ToolOutput, ToolError> {
        let wd = Workdir::new(cwd)?;
        let path = wd.existing(path)?;
        let kind = std::fs::metadata(&path)
            .map_err(|e| ToolError::Failed(format!("cannot read {}: {e}", wd.show(&path))))?
            .file_type();
        if kind.is_dir() {
            return self.list(&wd, &path);
        }
        if !kind.is_file() {
            // A FIFO or a device would block or never end.
            return Err(ToolError::Failed(format!("{} is not a regular file", wd.show(&path))));
        }
        let shown = wd.show(&path);
        let fail = |e: std::io::Error| ToolError::Failed(format!("cannot read {shown}: {e}"));
        let file = File::open(&path).map_err(fail)?;
        let size = file.metadata().map_err(fail)?.len();
        self.open_file(&shown, file, size, offset, limit, abort)
    }

    fn list(&self, wd: &Workdir, dir: &Path) -> Result<ToolOutput, ToolError> {
        let shown = wd.show(dir);
        let entries =
            std::fs::read_dir(dir).map_err(|e| ToolError::Failed(format!("cannot list {shown}: {e}")))?;
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                match e.file_type() {
                    Ok(t) if t.is_dir() => format!("{name}/"),
                    Ok(t) if t.is_symlink() => format!("{name}@"),
                    _ => name,
                }
            })
            .collect();
        names.sort();
        let total = names.len();
        if total == 0 {
            return Ok(ToolOutput::ok(format!("{shown}/ is empty")));
        }
        let mut out = format!("{shown}/ ({total} entries)\n");
        for name in names.iter().take(self.config.max_entries) {
            out.push_str(name);
            out.push('\n');
        }
        if total > self.config.max_entries {
            out.push_str(&format!("[{} more entries not shown]\n", total - self.config.max_entries));
        }
        Ok(ToolOutput::ok(out))
    }

    /// A regular file, open: its head is read and sniffed, then rendered.
    fn open_file(
        &self,
        shown: &str,
        mut file: File,
        size: u64,
        offset: u64,
        limit: u64,
        abort: &AbortSignal,
    ) -> Result<ToolOutput, ToolError> {
        let fail = |e: std::io::Error| ToolError::Failed(format!("cannot read {shown}: {e}"));
        // Read no further than the size says: a small file is then read
        // in one call, with no extra read to find its end.
        let sniff = size.min(SNIFF_BYTES as u64);
        let mut head = Vec::with_capacity(SNIFF_BYTES);
        (&mut file).take(sniff).read_to_end(&mut head).map_err(fail)?;
        // All of it is in `head` when it was smaller than a sniff (growth
        // since the size was taken is not shown).
        let rest: Box<dyn Read> =
            if sniff < SNIFF_BYTES as u64 { Box::new(std::io::empty()) } else { Box::new(file) };
        self.render(shown, size, head, rest, offset, limit, abort)
    }

    /// The page of a file whose first bytes are `head` (at least the sniff,
    /// or all of it) and whose remainder `rest` yields.
    #[allow(clippy::too_many_arguments)]
    fn render(
        &self,
        shown: &str,
        size: u64,
        head: Vec<u8>,
        rest: Box<dyn Read>,
        offset: u64,
        limit: u64,
        abort: &AbortSignal,
    ) -> Result<ToolOutput, ToolError> {
        let fail = |e: std::io::Error| ToolError::Failed(format!("cannot read {shown}: {e}"));
        if let Some(at) = head[..head.len().min(SNIFF_BYTES)].iter().position(|&b| b == 0) {
            return Err(ToolError::Failed(format!(
                "{shown} looks like a binary file ({size} bytes, a NUL byte at offset {at}); read_file shows text files only"
            )));
        }
        if size == 0 {
            return Ok(ToolOutput::ok(format!("{shown} is empty")));
        }
        let mut reader = BufReader::new(std::io::Cursor::new(head).chain(rest));
        let aborted = || ToolError::Failed("aborted".into());
        // A line is kept up to what can be shown (a character is at most 4
        // bytes); the rest of it is skipped, never stored.
        let keep = self.config.max_line_chars.saturating_mul(4);
        let mut out = String::new();
        let mut line = Vec::new();
        let mut number = 0u64;
        let (mut first_shown, mut last_shown) = (None, 0u64);
        let mut capped = false;
        let end = offset.saturating_add(limit);
        // The page: lines before it are skipped, and reading stops after it.
        while number + 1 < end && !capped {
            if abort.is_aborted() {
                return Err(aborted());
            }
            let Some(len) = read_line_capped(&mut reader, &mut line, keep).map_err(fail)? else { break };
            number += 1;
            if number < offset {
                continue;
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            let mut rendered = format!("{number:>6}\t");
            let cut = text.char_indices().nth(self.config.max_line_chars).map(|(at, _)| at);
            match cut {
                Some(at) => rendered.push_str(&text[..at]),
                None => rendered.push_str(text),
            }
            if cut.is_some() || len > line.len() {
                rendered.push_str(&format!(" … [line cut at {} characters]", self.config.max_line_chars));
            }
            rendered.push('\n');
            if out.len() + rendered.len() > self.config.max_output_bytes && first_shown.is_some() {
                // Not shown: the next page starts with this line.
                capped = true;
                break;
            }
            out.push_str(&rendered);
            first_shown.get_or_insert(number);
            last_shown = number;
        }
        // Count the lines after the page only within a budget: a total is
        // worth a little reading, not a 2 GB one.
        let mut total = Some(number);
        let mut counted = 0u64;
        while let Some(n) = total {
            if abort.is_aborted() {
                return Err(aborted());
            }
            if counted > COUNT_BYTES {
                total = None;
                break;
            }
            match read_line_capped(&mut reader, &mut line, 0).map_err(fail)? {
                Some(len) => {
                    counted += len as u64;
                    total = Some(n + 1);
                }
                None => break,
            }
        }
        let of = |total: Option<u64>| total.map(|t| format!(" of {t}")).unwrap_or_default();
        let Some(first) = first_shown else {
            return Err(ToolError::InvalidInput(match total {
                Some(t) => format!("`offset` {offset} is past the end of {shown} ({t} lines)"),
                None => format!("`offset` {offset} is past the end of {shown}"),
            }));
        };
        let more = total.is_none_or(|t| last_shown < t);
        let next = if more {
            format!(
                "; {}continue with offset={}",
                if total.is_none() { "more follows, " } else { "" },
                last_shown + 1
            )
        } else {
            String::new()
        };
        if capped {
            out.push_str(&format!(
                "[output capped at {} bytes: showing lines {first}-{last_shown}{}{next}]\n",
                self.config.max_output_bytes,
                of(total)
            ));
        } else if first > 1 || more {
            out.push_str(&format!("[lines {first}-{last_shown}{}{next}]\n", of(total)));
        }
        Ok(ToolOutput::ok(out))
    }
}

/// After the page, how many more bytes are read to count the file's lines
/// (beyond it the answer says "more follows" instead of a total).
const COUNT_BYTES: u64 = 8 * 1024 * 1024;

/// Read one line (through its newline) from `reader`, keeping at most `cap`
/// bytes of it in `keep` and skipping the rest without storing it. Answers
/// the line's full length, or `None` at the end of the file.
fn read_line_capped(
    reader: &mut impl BufRead,
    keep: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<Option<usize>> {
    keep.clear();
    let mut len = 0;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok((len > 0).then_some(len));
        }
        let (n, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = cap.saturating_sub(keep.len());
        keep.extend_from_slice(&buf[..n.min(room)]);
        reader.consume(n);
        len += n;
        if done {
            return Ok(Some(len));
        }
    }
}

impl ReadFile {
    /// The name the model calls it by.
    pub const NAME: &'static str = "read_file";
}

impl Tool for ReadFile {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn description(&self) -> &str {
        "Read a text file from the working directory, with line numbers (`   12\\tcode`). \
         Long files come in pages: pass `offset` (1-based first line) and `limit` (number of lines) \
         to read further; the end of the output says how to continue. A directory path lists its \
         entries (directories end with `/`). Binary files are refused. Paths are relative to the \
         working directory and must stay inside it."
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "File or directory, relative to the working directory"},
                "offset": {"type": "integer", "minimum": 1, "description": "First line to show (1-based); default 1"},
                "limit": {"type": "integer", "minimum": 1, "description": format!("Number of lines to show; default {}", self.config.default_limit)}
            },
            "required": ["path"],
            "additionalProperties": false
        })
    }

    fn concurrency_safe(&self) -> bool {
        true
    }

    fn execute(&self, input: Value, ctx: ToolContext) -> BoxFuture<Result<ToolOutput, ToolError>> {
        // An abort is noticed between lines.
        match self.begin(input, ctx.cwd.as_deref(), &ctx.abort) {
            Begun::Done(result) => Box::pin(std::future::ready(result)),
            Begun::Blocking(rest) => crate::blocking::off_thread("read_file", move || rest(&ctx.abort)),
        }
    }
}
