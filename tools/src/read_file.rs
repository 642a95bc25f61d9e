//! `read_file`: a text file with line numbers and pagination, or a
//! directory listing.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use dispatch_protocol::abort::AbortSignal;
use dispatch_protocol::tool::{Tool, ToolContext, ToolError, ToolOutput};
use dispatch_protocol::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::contain::Workdir;
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
        let input: Input = parse(input)?;
        if input.offset == Some(0) {
            return Err(ToolError::InvalidInput("`offset` is 1-based: the first line is 1".into()));
        }
        if input.limit == Some(0) {
            return Err(ToolError::InvalidInput("`limit` must be at least 1".into()));
        }
        let wd = Workdir::new(cwd)?;
        let path = wd.existing(&input.path)?;
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
        self.file(
            &wd,
            &path,
            input.offset.unwrap_or(1),
            input.limit.unwrap_or(self.config.default_limit),
            abort,
        )
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

    fn file(
        &self,
        wd: &Workdir,
        path: &Path,
        offset: u64,
        limit: u64,
        abort: &AbortSignal,
    ) -> Result<ToolOutput, ToolError> {
        let shown = wd.show(path);
        let fail = |e: std::io::Error| ToolError::Failed(format!("cannot read {shown}: {e}"));
        let mut file = File::open(path).map_err(fail)?;
        let size = file.metadata().map_err(fail)?.len();
        // Read no further than the size says: a small file is then read
        // in one call, with no extra read to find its end.
        let sniff = size.min(SNIFF_BYTES as u64);
        let mut head = Vec::with_capacity(SNIFF_BYTES);
        (&mut file).take(sniff).read_to_end(&mut head).map_err(fail)?;
        if let Some(at) = head.iter().position(|&b| b == 0) {
            return Err(ToolError::Failed(format!(
                "{shown} looks like a binary file ({size} bytes, a NUL byte at offset {at}); read_file shows text files only"
            )));
        }
        if size == 0 {
            return Ok(ToolOutput::ok(format!("{shown} is empty")));
        }
        // All of it is in `head` when it was smaller than a sniff (growth
        // since the size was taken is not shown).
        let rest: Box<dyn Read> =
            if sniff < SNIFF_BYTES as u64 { Box::new(std::io::empty()) } else { Box::new(file) };
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
        let tool = ReadFile::new(self.config.clone());
        crate::blocking::off_thread("read_file", move || tool.read(input, ctx.cwd.as_deref(), &ctx.abort))
    }
}
