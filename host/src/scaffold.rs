//! `dispatch plugins new`: a plugin crate on the author-facing crates, in
//! the shape of the examples — a tool, a model provider or a bus service —
//! that builds with `cargo build` on its own and whose test passes.

use std::path::{Path, PathBuf};

/// What the plugin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A tool the model can call (`tool.<name>`).
    Tool,
    /// A model provider registered with the `models` catalog.
    Provider,
    /// A request/response service on the bus.
    Service,
}

/// Why nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name is unusable.
    #[error("plugin names are lower-case letters, digits and `-`, starting with a letter (like `word-count`); got {0:?}")]
    BadName(String),
    /// The target exists.
    #[error("{0} already exists; choose another name or --dir")]
    Exists(PathBuf),
    /// The Dispatch sources the crate depends on are not there.
    #[error("the Dispatch sources to depend on are not at {0} (this binary was built from them): pass --dispatch-src with a checkout of the same version")]
    NoSources(PathBuf),
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// What.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

const CARGO: &str = include_str!("../templates/plugin/Cargo.toml.tmpl");
const TOOL: &str = include_str!("../templates/plugin/tool.rs.tmpl");
const PROVIDER: &str = include_str!("../templates/plugin/provider.rs.tmpl");
const SERVICE: &str = include_str!("../templates/plugin/service.rs.tmpl");

/// The repository this binary was built from (its `abi/`, `contracts/`,
/// `testkit/` are what a new plugin depends on until they are published).
pub fn built_from() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn valid(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// `word-count` → `WordCount`.
fn camel(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

/// Write the crate `name` into `dir` (default `./<name>`); answers the
/// directory.
pub fn new_plugin(
    name: &str,
    kind: Kind,
    dir: Option<&Path>,
    src: Option<&Path>,
) -> Result<PathBuf, ScaffoldError> {
    if !valid(name) {
        return Err(ScaffoldError::BadName(name.to_owned()));
    }
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir));
    }
    let src = src.map_or_else(built_from, Path::to_path_buf);
    let src = std::path::absolute(&src).unwrap_or(src);
    if !src.join("abi/Cargo.toml").is_file() || !src.join("contracts/Cargo.toml").is_file() {
        return Err(ScaffoldError::NoSources(src));
    }
    let ident = name.replace('-', "_");
    let (body, kind_name, abi_features, contracts_features) = match kind {
        Kind::Tool => (TOOL, "tool", "", r#", features = ["runtime"]"#),
        Kind::Provider => {
            (PROVIDER, "provider", r#", features = ["runtime"]"#, r#", features = ["runtime"]"#)
        }
        Kind::Service => (SERVICE, "service", "", ""),
    };
    let fill = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{ident}}", &ident)
            .replace("{{lib}}", &ident)
            .replace("{{Type}}", &camel(name))
            .replace("{{kind}}", kind_name)
            .replace("{{src}}", &src.display().to_string())
            .replace("{{abi_features}}", abi_features)
            .replace("{{contracts_features}}", contracts_features)
    };
    let write = |path: PathBuf, text: String| {
        std::fs::write(&path, text).map_err(|source| ScaffoldError::Io { path, source })
    };
    std::fs::create_dir_all(dir.join("src"))
        .map_err(|source| ScaffoldError::Io { path: dir.clone(), source })?;
    write(dir.join("Cargo.toml"), fill(CARGO))?;
    write(dir.join("src/lib.rs"), fill(body))?;
    write(dir.join(".gitignore"), "/target\n".to_owned())?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_become_crate_tool_and_type_names() {
        assert_eq!(camel("word-count"), "WordCount");
        for bad in ["", "Word", "1x", "a_b", "a-", "a--b", "a b"] {
            assert!(!valid(bad), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x");
        let made = new_plugin("my-tool", Kind::Tool, Some(&target), None).unwrap();
        let lib = std::fs::read_to_string(made.join("src/lib.rs")).unwrap();
        assert!(lib.contains("pub struct MyTool;") && lib.contains("\"my_tool\""), "{lib}");
        assert!(!lib.contains("{{"), "a placeholder was left: {lib}");
        let cargo = std::fs::read_to_string(made.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("name = \"my-tool\"") && !cargo.contains("{{"), "{cargo}");
        assert!(matches!(
            new_plugin("my-tool", Kind::Tool, Some(&target), None),
            Err(ScaffoldError::Exists(_))
        ));
        assert!(matches!(
            new_plugin("other", Kind::Tool, Some(&dir.path().join("y")), Some(dir.path())),
            Err(ScaffoldError::NoSources(_))
        ));
    }
}
