//! What the benchmarks share: the release build's paths, a server started
//! from it, medians and percentiles, a process's memory, and the two
//! builds of the word-count example that reloads swap between.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository root")
}

/// `target/release`, where `cargo build --release` leaves the binary and
/// the plugins — or `$DISPATCH_BENCH_RELEASE`, another build directory (a
/// different profile, an older commit), so two builds can be measured side
/// by side on the same machine.
pub fn release_dir() -> PathBuf {
    std::env::var_os("DISPATCH_BENCH_RELEASE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release"))
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The release `dispatch serve` on `config`, quiet but for warnings.
pub fn spawn_release_serve(config: &Path) -> Child {
    Command::new(release_dir().join("dispatch"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// The median (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The `p` percentile (0 to 1) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// A `/proc/<pid>/status` memory field (`VmRSS:`, `VmHWM:`), in KiB.
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Put `from` at `to` as an installer does: a new file, renamed in place.
pub fn install(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// Write a copy of the word-count example under `dir` as version
/// `version`, with its own package and library name (`word_count_<tag>`:
/// builds that share a target directory must not overwrite each other's
/// library, and one cargo finds fresh is not copied out again), its answers
/// starting with `words` in place of `{words} words,`. Answers its
/// `Cargo.toml`; the library it builds is `libword_count_<tag>.so`.
pub fn word_count_variant(dir: &Path, tag: &str, version: &str, words: &str) -> PathBuf {
    let example = repo_root().join("examples/word-count");
    let src = dir.join(format!("word-count-{tag}"));
    std::fs::create_dir_all(src.join("src")).unwrap();
    let root = repo_root().display().to_string();
    let cargo = std::fs::read_to_string(example.join("Cargo.toml"))
        .unwrap()
        .replace("version = \"0.1.0\"", &format!("version = {version:?}"))
        .replace("name = \"word-count\"", &format!("name = \"word-count-{tag}\""))
        .replace("[lib]\n", &format!("[lib]\nname = \"word_count_{tag}\"\n"))
        .replace("../../", &format!("{root}/"));
    std::fs::write(src.join("Cargo.toml"), cargo).unwrap();
    let lib = std::fs::read_to_string(example.join("src/lib.rs")).unwrap().replace("{words} words,", words);
    std::fs::write(src.join("src/lib.rs"), lib).unwrap();
    std::fs::copy(example.join("Cargo.lock"), src.join("Cargo.lock")).unwrap();
    src.join("Cargo.toml")
}

/// CPU time every thread of `pid` has used so far, in ns (the first field
/// of each `/proc/<pid>/task/*/schedstat`): what a request costs a server,
/// steadier than its latency on a shared machine.
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        .sum()
}

/// Write `<dir>/plugins.toml` for the release build: the `[host]` table
/// ([`crate::host_table`]) and `plugins` in order, each with its
/// `[plugin.config]` body (TOML lines; empty for none). Answers its path.
pub fn write_plugins_toml<P: AsRef<str>>(dir: &Path, plugins: &[(P, String)]) -> PathBuf {
    let mut toml = crate::host_table(&release_dir());
    for (p, c) in plugins {
        toml.push_str(&format!("\n[[plugin]]\npath = {:?}\n", p.as_ref()));
        if !c.is_empty() {
            toml.push_str(&format!("[plugin.config]\n{c}\n"));
        }
    }
    let path = dir.join("plugins.toml");
    std::fs::write(&path, toml).unwrap();
    path
}
