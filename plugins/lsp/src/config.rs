//! Which language servers serve a working directory: `<cwd>/.dispatch/lsp.json`,
//! else `<cwd>/opencode.json`'s `lsp` key, else the built-in TypeScript
//! server — each read on every use, so an edited file counts at once. A
//! file that does not parse counts as naming no server.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

/// Where a server's configuration came from (`configSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// `<cwd>/.dispatch/lsp.json`.
    Dispatch,
    /// `<cwd>/opencode.json`, key `lsp`.
    Opencode,
    /// The built-in TypeScript server.
    BuiltIn,
}

impl Source {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Dispatch => ".dispatch/lsp.json",
            Source::Opencode => "opencode.json",
            Source::BuiltIn => "built-in",
        }
    }
}

/// One server, ready to start.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Its id (the configuration key unless it says otherwise).
    pub id: String,
    /// Its display name.
    pub name: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Added to the server's environment.
    pub env: BTreeMap<String, String>,
    /// The file extensions it handles, lower case with their dot.
    pub extensions: Vec<String>,
    /// Files whose directory is a project root.
    pub root_markers: Vec<String>,
    /// `initializationOptions`, and the answer to `workspace/configuration`.
    pub initialization: Option<Value>,
    /// A sidecar command run beside the server (a file watcher, a source
    /// map generator).
    pub watch: Option<Vec<String>>,
    /// Where it was configured.
    pub source: Source,
}

impl Spec {
    /// Whether it handles `path` (by extension).
    pub fn handles(&self, path: &Path) -> bool {
        let Some(ext) = path.extension().and_then(|e| e.to_str()) else { return false };
        let ext = format!(".{}", ext.to_ascii_lowercase());
        self.extensions.contains(&ext)
    }
}

/// One entry of a configuration file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    extensions: Vec<String>,
    #[serde(default)]
    root_markers: Vec<String>,
    #[serde(default)]
    initialization: Option<Value>,
    #[serde(default)]
    watch: Option<Vec<String>>,
    /// opencode's switch to turn a server off.
    #[serde(default)]
    disabled: bool,
}

/// The servers `entries` (a JSON object by key) name; entries that do not
/// parse are left out (and logged).
fn servers(entries: &Value, source: Source) -> Vec<Spec> {
    let Some(entries) = entries.as_object() else { return Vec::new() };
    let mut specs = Vec::new();
    for (key, value) in entries {
        let entry = match Entry::deserialize(value) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(server = %key, source = source.as_str(), error = %e, "a language server entry is left out");
                continue;
            }
        };
        if entry.disabled || entry.command.is_empty() {
            continue;
        }
        let extensions = entry
            .extensions
            .iter()
            .map(|e| e.trim().to_ascii_lowercase())
            .filter(|e| !e.is_empty() && e != ".")
            .map(|e| if e.starts_with('.') { e } else { format!(".{e}") })
            .collect();
        let id = entry.id.unwrap_or_else(|| key.clone());
        specs.push(Spec {
            name: entry.name.unwrap_or_else(|| id.clone()),
            id,
            command: entry.command,
            env: entry.env,
            extensions,
            root_markers: entry.root_markers,
            initialization: entry.initialization,
            watch: entry.watch,
            source,
        });
    }
    specs
}

/// A JSON file's value, when it exists and parses.
fn read_json(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "not JSON; it names no language server");
            None
        }
    }
}

/// The built-in TypeScript / JavaScript server.
pub fn built_in() -> Spec {
    Spec {
        id: "typescript".into(),
        name: "TypeScript".into(),
        command: vec!["typescript-language-server".into(), "--stdio".into()],
        env: BTreeMap::new(),
        extensions: [".ts", ".tsx", ".mts", ".cts", ".js", ".jsx", ".mjs", ".cjs"].map(String::from).to_vec(),
        root_markers: vec!["tsconfig.json".into(), "package.json".into()],
        initialization: None,
        watch: None,
        source: Source::BuiltIn,
    }
}

/// The servers for `cwd`, in precedence order (see the module
/// documentation); `built_in` false leaves the TypeScript fallback out.
pub fn for_cwd(cwd: &Path, built_in: bool) -> Vec<Spec> {
    if let Some(file) = read_json(&cwd.join(".dispatch").join("lsp.json")) {
        let specs = servers(&file["servers"], Source::Dispatch);
        if !specs.is_empty() {
            return specs;
        }
    }
    if let Some(file) = read_json(&cwd.join("opencode.json")) {
        let specs = servers(&file["lsp"], Source::Opencode);
        if !specs.is_empty() {
            return specs;
        }
    }
    if built_in {
        vec![self::built_in()]
    } else {
        Vec::new()
    }
}

/// The nearest directory from `start` up to `cwd` holding one of
/// `markers`; `cwd` when none does (or `start` is outside it).
pub fn find_root(start: &Path, cwd: &Path, markers: &[String]) -> std::path::PathBuf {
    if !start.starts_with(cwd) {
        return cwd.to_path_buf();
    }
    let mut dir = start;
    loop {
        if markers.iter().any(|m| dir.join(m).exists()) {
            return dir.to_path_buf();
        }
        match dir.parent() {
            Some(parent) if dir != cwd => dir = parent,
            _ => return cwd.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_project_file_wins_then_opencode_then_the_built_in() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path();
        assert_eq!(for_cwd(cwd, true), vec![built_in()]);
        assert!(for_cwd(cwd, false).is_empty());
        std::fs::write(
            cwd.join("opencode.json"),
            r#"{"lsp": {"pyright": {"command": ["pyright-langserver", "--stdio"], "extensions": ["py", ".PYI"]}}}"#,
        )
        .unwrap();
        let specs = for_cwd(cwd, true);
        assert_eq!(specs.len(), 1);
        assert_eq!((specs[0].id.as_str(), specs[0].name.as_str()), ("pyright", "pyright"));
        assert_eq!(specs[0].extensions, [".py", ".pyi"]);
        assert_eq!(specs[0].source, Source::Opencode);
        assert!(specs[0].handles(Path::new("/x/a.PY")));

        std::fs::create_dir(cwd.join(".dispatch")).unwrap();
        // Broken: counts as none, the next source applies.
        std::fs::write(cwd.join(".dispatch/lsp.json"), "{not json").unwrap();
        assert_eq!(for_cwd(cwd, true)[0].source, Source::Opencode);
        std::fs::write(
            cwd.join(".dispatch/lsp.json"),
            r#"{"servers": {"ts": {"id": "tsls", "name": "TS", "command": ["tsls"], "extensions": [".ts"],
                "rootMarkers": ["package.json"], "initialization": {"a": 1}},
               "bad": {"command": "not a list"}}}"#,
        )
        .unwrap();
        let specs = for_cwd(cwd, true);
        assert_eq!(specs.len(), 1, "{specs:?}");
        assert_eq!((specs[0].id.as_str(), specs[0].name.as_str()), ("tsls", "TS"));
        assert_eq!(specs[0].source.as_str(), ".dispatch/lsp.json");
        assert_eq!(specs[0].initialization, Some(serde_json::json!({"a": 1})));
    }

    #[test]
    fn a_root_is_the_nearest_marked_directory_inside_the_cwd() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path();
        std::fs::create_dir_all(cwd.join("pkg/src")).unwrap();
        std::fs::write(cwd.join("pkg/package.json"), "{}").unwrap();
        let markers = vec!["package.json".to_owned()];
        assert_eq!(find_root(&cwd.join("pkg/src"), cwd, &markers), cwd.join("pkg"));
        assert_eq!(find_root(cwd, cwd, &markers), cwd);
        assert_eq!(find_root(Path::new("/elsewhere"), cwd, &markers), cwd);
    }
}
