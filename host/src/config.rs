//! `plugins.toml`: the operator's configuration, parsed strictly and
//! compiled into a [`Plan`] that reports every problem at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Host-wide settings.
    #[serde(default)]
    pub host: HostSection,
    /// The plugins, in the order they are listed (ties in the activation
    /// order keep this order).
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<PluginEntry>,
}

/// `[host]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    /// Where plugin `path`s are resolved, relative to the config file.
    /// Default: the config file's directory.
    pub plugin_dir: Option<PathBuf>,
    /// Every `*.so` in this directory is loaded, listed or not (a
    /// `[[plugin]]` entry with its `id` gives it config, `required` or a
    /// pin). Relative to the config file; default `plugins.d`; a missing
    /// directory means none.
    pub drop_in_dir: Option<PathBuf>,
    /// Root of the plugins' data directories (each plugin gets
    /// `<data_dir>/<plugin id>`). Default: `$DISPATCH_DATA_DIR`, else
    /// `./data`. A relative path is relative to the config file.
    pub data_dir: Option<PathBuf>,
    /// `multi-thread` (default) or `current-thread`.
    #[serde(default)]
    pub runtime: RuntimeFlavor,
    /// Worker threads of the multi-thread runtime (default: the number of
    /// cores).
    pub worker_threads: Option<usize>,
    /// How long one plugin's `activate` may take (default 30000 ms).
    #[serde(default = "default_activate_ms")]
    pub activate_timeout_ms: u64,
    /// How long one plugin's `deactivate` may take (default 10000 ms).
    #[serde(default = "default_deactivate_ms")]
    pub deactivate_timeout_ms: u64,
}

impl Default for HostSection {
    fn default() -> Self {
        Self {
            plugin_dir: None,
            drop_in_dir: None,
            data_dir: None,
            runtime: RuntimeFlavor::default(),
            worker_threads: None,
            activate_timeout_ms: default_activate_ms(),
            deactivate_timeout_ms: default_deactivate_ms(),
        }
    }
}

fn default_activate_ms() -> u64 {
    30_000
}
fn default_deactivate_ms() -> u64 {
    10_000
}
fn default_true() -> bool {
    true
}

/// The host's tokio runtime flavour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeFlavor {
    /// A thread pool (default).
    #[default]
    MultiThread,
    /// Everything on the main thread (plus the blocking pool).
    CurrentThread,
}

/// One `[[plugin]]`: a file by `path`, or a plugin of the drop-in
/// directory by `id`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginEntry {
    /// A file in `plugin_dir`, or an absolute path.
    pub path: Option<PathBuf>,
    /// The id of a plugin whose file is in the drop-in directory (or
    /// listed by path elsewhere): this entry configures it.
    pub id: Option<String>,
    /// When true (the default) a failure to load or activate this plugin
    /// fails start-up.
    #[serde(default = "default_true")]
    pub required: bool,
    /// Optional pin: the file's SHA-256 in hex. A different file is refused.
    pub sha256: Option<String>,
    /// Handed to the plugin's `activate` as JSON.
    #[serde(default)]
    pub config: Option<toml::Table>,
}

/// The most worker threads `[host] worker_threads` may ask for.
pub const MAX_WORKER_THREADS: usize = 1024;

/// The largest `plugins.toml` read: far beyond any real configuration.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// A configuration ready to load: paths resolved, files checked.
#[derive(Debug)]
pub struct Plan {
    /// The config file it came from.
    pub source: PathBuf,
    /// Host settings.
    pub host: HostSection,
    /// Resolved data root.
    pub data_dir: PathBuf,
    /// The plugins: listed ones in config order, then the drop-in
    /// directory's other `*.so` files by name.
    pub plugins: Vec<PlannedPlugin>,
    /// Entries that name a plugin by id; matched against manifests once
    /// the libraries are loaded.
    pub by_id: Vec<IdEntry>,
    /// Where plugins were looked for (for "no file provides …" messages).
    pub searched: Vec<PathBuf>,
}

/// A `[[plugin]]` entry with an `id`.
#[derive(Debug, Clone)]
pub struct IdEntry {
    /// Position in the config file (0-based).
    pub index: usize,
    /// The plugin id it configures.
    pub id: String,
    /// As configured.
    pub required: bool,
    /// The config table as JSON (empty when absent).
    pub config_json: String,
    /// The pinned sha256.
    pub sha256: Option<String>,
}

/// One plugin of the plan.
#[derive(Debug)]
pub struct PlannedPlugin {
    /// Position in the config file (0-based).
    pub index: usize,
    /// The resolved file.
    pub path: PathBuf,
    /// As configured.
    pub required: bool,
    /// The config table as a JSON string (empty when absent).
    pub config_json: String,
    /// The pinned sha256, checked against the very bytes that are loaded
    /// (`loader::load`).
    pub sha256: Option<String>,
    /// A problem found before loading (missing file, hash mismatch, …);
    /// such a plugin is not loaded and is reported as failed.
    pub problem: Option<String>,
    /// Found in the drop-in directory rather than listed.
    pub drop_in: bool,
}

/// Why a configuration could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    // The reason is in the message and not a `source`: the binary prints
    // errors with their chain, which would say it twice.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys or wrong types.
    #[error("{path} is not a valid plugins.toml: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
}

impl Plan {
    /// Read and compile `path`: a regular file of at most
    /// [`MAX_CONFIG_BYTES`] (`/dev/zero` or a FIFO is refused, not read
    /// until memory runs out or forever).
    pub fn load(path: &Path) -> Result<Plan, ConfigError> {
        let read = |reason| ConfigError::Read { path: path.to_owned(), reason };
        let meta = std::fs::metadata(path).map_err(read)?;
        if !meta.is_file() {
            return Err(read(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")));
        }
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(std::fs::File::open(path).map_err(read)?, MAX_CONFIG_BYTES + 1),
            &mut text,
        )
        .map_err(read)?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(read(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("larger than {} KiB", MAX_CONFIG_BYTES / 1024),
            )));
        }
        Plan::compile(path, &text)
    }

    /// Compile config text that was read from `path`. Problems with single
    /// plugins (missing file, wrong hash, the same file listed twice) are
    /// attached to those plugins, all of them, so the operator sees every
    /// one in a single run; only an unreadable file is an error.
    pub fn compile(path: &Path, text: &str) -> Result<Plan, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            // The parser stops at the first problem; when the file is at
            // least valid TOML, each section is checked on its own so that
            // one run names them all.
            message: every_problem(text).unwrap_or_else(|| e.to_string().trim_end().to_owned()),
        })?;
        if let Some(n) = file.host.worker_threads.filter(|n| !(1..=MAX_WORKER_THREADS).contains(n)) {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                message: format!("`worker_threads` = {n} is out of range (1 to {MAX_WORKER_THREADS})"),
            });
        }
        let base = path
            .parent()
            .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
            .unwrap_or(Path::new("."))
            .to_owned();
        let plugin_dir = match &file.host.plugin_dir {
            Some(d) => base.join(d),
            None => base.clone(),
        };
        let data_dir = match &file.host.data_dir {
            Some(d) => base.join(d),
            None => std::env::var_os("DISPATCH_DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("data")),
        };

        let drop_in_dir =
            base.join(file.host.drop_in_dir.clone().unwrap_or_else(|| PathBuf::from("plugins.d")));
        let mut seen: HashMap<PathBuf, usize> = HashMap::new();
        let mut plugins = Vec::with_capacity(file.plugins.len());
        let mut by_id = Vec::new();
        for (index, entry) in file.plugins.into_iter().enumerate() {
            let config_json = match &entry.config {
                Some(table) => serde_json::to_string(table).unwrap_or_default(),
                None => String::new(),
            };
            let listed = match (entry.path, entry.id) {
                (Some(path), None) => path,
                (None, Some(id)) => {
                    by_id.push(IdEntry { index, id, required: entry.required, config_json, sha256: entry.sha256 });
                    continue;
                }
                _ => {
                    return Err(ConfigError::Parse {
                        path: path.to_owned(),
                        message: format!(
                            "plugin #{}: give exactly one of `path` (a library file) and `id` (a plugin of the drop-in directory)",
                            index + 1
                        ),
                    })
                }
            };
            let path = plugin_dir.join(&listed);
            // Recorded even when the entry has a problem, so the drop-in scan
            // does not load the same file again without its pin.
            let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            let again = seen.insert(canonical, index).map(|first| {
                format!("the same file is already listed as plugin #{} in the configuration", first + 1)
            });
            let problem = check_file(&path, entry.sha256.as_deref()).err().or(again);
            let sha256 = entry.sha256;
            plugins.push(PlannedPlugin {
                index,
                path,
                required: entry.required,
                config_json,
                sha256,
                problem,
                drop_in: false,
            });
        }
        // The drop-in directory: every `*.so` not already listed, by name.
        let mut dropped: Vec<PathBuf> = match std::fs::read_dir(&drop_in_dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "so"))
                .collect(),
            Err(_) => Vec::new(),
        };
        dropped.sort();
        let listed_count = plugins.len();
        for (n, file_path) in dropped.into_iter().enumerate() {
            let canonical = std::fs::canonicalize(&file_path).unwrap_or_else(|_| file_path.clone());
            if seen.contains_key(&canonical) {
                continue;
            }
            let problem = check_file(&file_path, None).err();
            plugins.push(PlannedPlugin {
                index: listed_count + n,
                path: file_path,
                // Not required unless an `id` entry says so.
                required: false,
                config_json: String::new(),
                sha256: None,
                problem,
                drop_in: true,
            });
        }
        let searched = vec![plugin_dir, drop_in_dir];
        Ok(Plan { source: path.to_owned(), host: file.host, data_dir, plugins, by_id, searched })
    }
}

fn check_file(path: &Path, pin: Option<&str>) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "file not found".to_owned(),
        _ => format!("cannot read the file: {e}"),
    })?;
    if !meta.is_file() {
        return Err("not a regular file".to_owned());
    }
    // The hash itself is checked when the library is loaded, against the
    // bytes that are loaded; here only the pin's form.
    if let Some(pin) = pin {
        let pin = pin.trim();
        if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("sha256 pin `{pin}` is not 64 hexadecimal digits"));
        }
    }
    Ok(())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every problem of a file that is valid TOML but not a valid
/// configuration — each unknown key of each section, else the section's
/// first wrong value — each with its line; `None` when there are fewer than
/// two (the parser's own message, with its excerpt, says it best) or the
/// file is not TOML at all.
fn every_problem(text: &str) -> Option<String> {
    /// The file's sections as plain TOML, with where each starts.
    #[derive(Deserialize)]
    struct Sections {
        host: Option<toml::Spanned<toml::Table>>,
        #[serde(default)]
        plugin: Vec<toml::Spanned<toml::Table>>,
    }
    let top: toml::Table = toml::from_str(text).ok()?;
    let sections: Sections = toml::from_str(text).ok()?;
    let line = |at: usize| text[..at.min(text.len())].matches('\n').count() + 1;
    let mut problems = Vec::new();
    let known = struct_fields::<ConfigFile>();
    for key in top.keys().filter(|k| !known.contains(&k.as_str())) {
        problems.push(format!("unknown key `{key}` at the top level, expected one of {}", quoted(known)));
    }
    let mut check =
        |place: String, table: toml::Table, known: &[&str], typed: fn(toml::Table) -> Option<String>| {
            let unknown: Vec<&String> = table.keys().filter(|k| !known.contains(&k.as_str())).collect();
            if unknown.is_empty() {
                problems.extend(typed(table).map(|e| format!("{place}: {e}")));
            } else {
                for key in unknown {
                    problems.push(format!("{place}: unknown key `{key}`, expected one of {}", quoted(known)));
                }
            }
        };
    fn typed<T: serde::de::DeserializeOwned>(table: toml::Table) -> Option<String> {
        toml::Value::Table(table).try_into::<T>().err().map(|e| e.to_string().trim_end().to_owned())
    }
    if let Some(host) = sections.host {
        let place = format!("line {}, [host]", line(host.span().start));
        check(place, host.into_inner(), struct_fields::<HostSection>(), typed::<HostSection>);
    }
    for (n, entry) in sections.plugin.into_iter().enumerate() {
        let place = format!("line {}, [[plugin]] #{}", line(entry.span().start), n + 1);
        check(place, entry.into_inner(), struct_fields::<PluginEntry>(), typed::<PluginEntry>);
    }
    (problems.len() > 1).then(|| format!("{} problems:\n  {}", problems.len(), problems.join("\n  ")))
}

fn quoted(keys: &[&str]) -> String {
    keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
}

/// The keys a derived `Deserialize` struct accepts, as serde names them
/// (renames applied): asked of the derive itself, so the list cannot drift
/// from the struct.
fn struct_fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Fields<'a>(&'a mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for Fields<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("only the field names are asked for"))
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("only the field names are asked for"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
            unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    // Always an error: the point is the names it saw on the way.
    let _ = T::deserialize(Fields(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parser stops at the first problem; the operator used to fix one
    /// key per run.
    #[test]
    fn every_section_with_a_problem_is_named_in_one_run() {
        let text = "[host]\nplugin_dirr = \"x\"\nfoo = 1\n\n[[plugin]]\npath = \"a.so\"\n\n\
                    [[plugin]]\npath = \"b.so\"\nrequird = true\n\n[[plugin]]\npath = 7\n";
        let msg = Plan::compile(Path::new("/x/plugins.toml"), text).unwrap_err().to_string();
        assert!(msg.contains("4 problems"), "{msg}");
        assert!(
            msg.contains("line 1, [host]: unknown key `plugin_dirr`, expected one of `plugin_dir`"),
            "{msg}"
        );
        assert!(msg.contains("line 1, [host]: unknown key `foo`"), "{msg}");
        assert!(msg.contains("line 8, [[plugin]] #2: unknown key `requird`"), "{msg}");
        assert!(msg.contains("[[plugin]] #3: invalid type"), "{msg}");
        assert_eq!(struct_fields::<PluginEntry>(), ["path", "id", "required", "sha256", "config"]);
        assert_eq!(struct_fields::<ConfigFile>(), ["host", "plugin"]);
        assert!(!msg.contains("#1"), "a good entry is not a problem: {msg}");
        // A single problem keeps the parser's own message and excerpt.
        let one = Plan::compile(Path::new("/x/plugins.toml"), "[host]\nplugin_dirr = \"x\"\n").unwrap_err();
        assert!(!one.to_string().contains("problems"), "{one}");
        // So does text that is not TOML.
        let bad = Plan::compile(Path::new("/x/plugins.toml"), "[host\n").unwrap_err();
        assert!(bad.to_string().contains("line 1"), "{bad}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_location() {
        let err = Plan::compile(Path::new("/x/plugins.toml"), "[host]\nplugin_dirr = \"x\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("plugin_dirr"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn every_missing_file_is_reported_not_just_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("plugins.toml");
        let plan = Plan::compile(&cfg, "[[plugin]]\npath = \"a.so\"\n[[plugin]]\npath = \"b.so\"\n").unwrap();
        let problems: Vec<_> = plan.plugins.iter().map(|p| p.problem.clone().unwrap()).collect();
        assert_eq!(problems, ["file not found", "file not found"]);
        assert_eq!(plan.plugins[1].path, dir.path().join("b.so"));
    }

    /// `worker_threads = 20000` used to abort the host trying to start them.
    #[test]
    fn an_absurd_worker_thread_count_is_a_config_error() {
        let cfg = Path::new("/nonexistent/plugins.toml");
        let e = Plan::compile(cfg, "[host]\nworker_threads = 20000\n").unwrap_err();
        assert!(e.to_string().contains("`worker_threads` = 20000 is out of range"), "{e}");
        assert!(Plan::compile(cfg, "[host]\nworker_threads = 0\n").is_err());
        assert!(Plan::compile(cfg, "[host]\nworker_threads = 4\n").is_ok());
    }

    #[test]
    fn a_pin_must_be_a_sha256_and_is_kept_for_the_loader() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.so"), b"abc").unwrap();
        let good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let cfg = dir.path().join("plugins.toml");
        let ok = Plan::compile(&cfg, &format!("[[plugin]]\npath = \"p.so\"\nsha256 = \"{good}\"\n")).unwrap();
        assert_eq!(ok.plugins[0].problem, None);
        assert_eq!(ok.plugins[0].sha256.as_deref(), Some(good));
        let bad = Plan::compile(&cfg, "[[plugin]]\npath = \"p.so\"\nsha256 = \"00\"\n").unwrap();
        assert!(bad.plugins[0].problem.as_deref().unwrap().contains("not 64 hexadecimal digits"));
    }

    #[test]
    fn the_same_file_twice_is_a_problem_of_the_second_listing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.so"), b"x").unwrap();
        let cfg = dir.path().join("plugins.toml");
        let plan = Plan::compile(&cfg, "[[plugin]]\npath = \"p.so\"\n[[plugin]]\npath = \"p.so\"\n").unwrap();
        assert_eq!(plan.plugins[0].problem, None);
        assert!(plan.plugins[1].problem.as_deref().unwrap().contains("plugin #1"));
    }

    #[test]
    fn plugin_config_becomes_json_and_required_defaults_to_true() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("plugins.toml");
        let plan =
            Plan::compile(&cfg, "[[plugin]]\npath = \"p.so\"\n[plugin.config]\nx = 1\ny = \"z\"\n").unwrap();
        assert!(plan.plugins[0].required);
        let v: serde_json::Value = serde_json::from_str(&plan.plugins[0].config_json).unwrap();
        assert_eq!(v, serde_json::json!({"x": 1, "y": "z"}));
    }

    #[test]
    fn drop_in_files_follow_the_listed_ones_by_name_and_id_entries_wait_for_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let drop = dir.path().join("plugins.d");
        std::fs::create_dir(&drop).unwrap();
        for f in ["b.so", "a.so", "notes.txt", "listed.so"] {
            std::fs::write(drop.join(f), b"x").unwrap();
        }
        let cfg = dir.path().join("plugins.toml");
        let text = "[[plugin]]\npath = \"plugins.d/listed.so\"\n[[plugin]]\nid = \"b\"\nrequired = false\n";
        let plan = Plan::compile(&cfg, text).unwrap();
        let files: Vec<(String, bool)> = plan
            .plugins
            .iter()
            .map(|p| (p.path.file_name().unwrap().to_string_lossy().into_owned(), p.drop_in))
            .collect();
        assert_eq!(files, [("listed.so".into(), false), ("a.so".into(), true), ("b.so".into(), true)]);
        assert!(plan.plugins[1..].iter().all(|p| !p.required), "drop-ins are optional by default");
        assert_eq!(plan.by_id.len(), 1);
        assert_eq!((plan.by_id[0].id.as_str(), plan.by_id[0].required), ("b", false));
        assert_eq!(plan.searched, [dir.path().to_path_buf(), drop.clone()]);

        // A missing directory is no drop-ins; `drop_in_dir` moves it.
        let none = Plan::compile(&cfg, "[host]\ndrop_in_dir = \"elsewhere\"\n").unwrap();
        assert!(none.plugins.is_empty());
        // Exactly one of path and id.
        assert!(Plan::compile(&cfg, "[[plugin]]\nrequired = true\n")
            .unwrap_err()
            .to_string()
            .contains("exactly one"));
    }
}
