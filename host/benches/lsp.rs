//! What diagnostics after an edit cost the model: the same `edit_file`
//! turn — a local OpenAI-compatible mock asks for one edit of a TypeScript
//! file, alternately into a type error and back, then answers — on
//! `dispatch serve` processes run at once and used in turn:
//!
//! * **edit only**: no `lsp` plugin;
//! * **edit + diagnostics**: the `lsp` plugin (defaults: settle 300 ms);
//! * **settle 50 ms**: the same with `settle_ms = 50`.
//!
//! on a small project (3 files) and a generated large one (MODULES modules
//! importing each other, the edited file among them), with
//! `typescript-language-server` and TypeScript from `tests/lsp-peers`
//! (`npm ci --prefix tests/lsp-peers`). Each figure is a turn's wall time
//! (median over ROUNDS; the first turn per project, which starts the
//! server, is left out and shown apart); the "wait" is the difference from
//! "edit only". The language server's resident memory (its process group:
//! `typescript-language-server` and `tsserver`) is read from
//! `GET /conversations/:id/lsp` at the end.
//!
//! Last, what the two hooks cost every other tool call: a 100-step turn of
//! `read_file` calls on "edit only" and "edit + diagnostics" (which also
//! loads `skills`: the `session.tool-result` filter runs for every call,
//! the `session.tools` filter every step), as the server's on-CPU time per
//! step (`/proc/<pid>/task/*/schedstat`), median of ROUNDS.
//!
//! `cargo build --release --workspace && cargo bench -p dispatch-host --bench lsp [-- ROUNDS MODULES]`
//! (defaults 15 400).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dispatch_test_support::bench::{cpu_ns, free_port, median, release_dir, repo_root};
use dispatch_test_support::http_client;
use dispatch_test_support::mock_openai::{finish_chunk, text_chunk, tool_call, MockServer, Reply};
use serde_json::{json, Value};

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A strict TypeScript project of `modules` modules (at least 3): each
/// imports the one before and defines a few functions and types; the
/// edited file is `src/edit.ts`.
fn project(dir: &Path, modules: usize) {
    write(
        &dir.join("tsconfig.json"),
        r#"{"compilerOptions": {"strict": true, "target": "es2020", "module": "commonjs"}, "include": ["src"]}"#,
    );
    for i in 0..modules {
        let import = if i == 0 {
            String::new()
        } else {
            format!("import {{ f{p}, T{p} }} from \"./m{p}\";\n", p = i - 1)
        };
        let mut body = import;
        body.push_str(&format!("export interface T{i} {{ id: number; name: string; next?: T{i} }}\n"));
        for k in 0..8 {
            body.push_str(&format!(
                "export function f{i}_{k}(t: T{i}): number {{\n  return t.id * {k} + t.name.length;\n}}\n"
            ));
        }
        if i > 0 {
            body.push_str(&format!(
                "export function f{i}(t: T{i}): number {{\n  const p: T{p} = {{ id: t.id, name: t.name }};\n  return f{p}(p) + 1;\n}}\n",
                p = i - 1
            ));
        } else {
            body.push_str("export function f0(t: T0): number {\n  return t.id;\n}\n");
        }
        write(&dir.join(format!("src/m{i}.ts")), &body);
    }
    let last = modules - 1;
    write(
        &dir.join("src/edit.ts"),
        &format!("import {{ f{last}, T{last} }} from \"./m{last}\";\nconst t: T{last} = {{ id: 1, name: \"a\" }};\nexport const total: number = f{last}(t);\n"),
    );
}

struct Server {
    label: &'static str,
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &Path, port: u16, lsp: Option<&str>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut plugins = vec![
        ("libdispatch_plugin_models.so", String::new()),
        ("libdispatch_plugin_provider_openai.so", String::new()),
        ("libdispatch_plugin_store_sqlite.so", String::new()),
        ("libdispatch_plugin_tool_edit_file.so", String::new()),
        ("libdispatch_plugin_tool_read_file.so", String::new()),
    ];
    if let Some(c) = lsp {
        plugins.push(("libdispatch_plugin_lsp.so", c.to_owned()));
        plugins.push(("libdispatch_plugin_skills.so", String::new()));
    }
    plugins.push(("libdispatch_plugin_session.so", format!("default_cwd = {:?}", dir.display().to_string())));
    plugins.push(("libdispatch_plugin_transport_http.so", format!("addr = [\"127.0.0.1:{port}\"]")));
    dispatch_test_support::bench::write_plugins_toml(dir, &plugins)
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rounds = args.first().copied().unwrap_or(15);
    let modules = args.get(1).copied().unwrap_or(400).max(3);
    let bin = repo_root().join("tests/lsp-peers/node_modules/.bin");
    assert!(bin.join("typescript-language-server").exists(), "run `npm ci --prefix tests/lsp-peers` first");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mock = MockServer::start(Vec::new());
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let setups: [(&'static str, Option<&str>); 3] =
        [("edit only", None), ("edit + diagnostics", Some("")), ("settle 50 ms", Some("settle_ms = 50"))];
    let servers: Vec<Server> = setups
        .iter()
        .enumerate()
        .map(|(i, (label, lsp))| {
            let port = free_port();
            let cfg = config(&dir.path().join(format!("s{i}")), port, *lsp);
            let child = Command::new(release_dir().join("dispatch"))
                .args(["serve", "--config", cfg.to_str().unwrap()])
                .env("DISPATCH_BASE_URL", mock.base_url())
                .env("DISPATCH_API_KEY", "bench")
                .env("DISPATCH_MODEL", "mock-model")
                .env("RUST_LOG", "warn")
                .env("PATH", &path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            rt.block_on(http_client::wait_ok(
                &format!("http://127.0.0.1:{port}/health"),
                Duration::from_secs(30),
            ));
            Server { label, child, port }
        })
        .collect();

    // One project copy per server and size, so no server sees another's edits.
    for (size, n) in [("small", 3usize), ("large", modules)] {
        let mut walls: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
        let mut firsts = vec![0.0; servers.len()];
        let roots: Vec<PathBuf> = (0..servers.len())
            .map(|i| {
                let root = dir.path().join(format!("{size}-{i}"));
                project(&root, n);
                root.canonicalize().unwrap()
            })
            .collect();
        let broken = std::sync::atomic::AtomicBool::new(false);
        let turn = |i: usize, s: &Server, conversation: &str| -> (f64, String) {
            let was = broken.fetch_xor(true, std::sync::atomic::Ordering::Relaxed);
            let (old, new) = if was {
                ("{ id: 1, name: 1 }", "{ id: 1, name: \"a\" }")
            } else {
                ("{ id: 1, name: \"a\" }", "{ id: 1, name: 1 }")
            };
            mock.push(tool_call(
                "e",
                "edit_file",
                &json!({"path": "src/edit.ts", "oldString": old, "newString": new}),
            ));
            mock.push(Reply::sse(&[text_chunk("done"), finish_chunk("stop")]));
            let body =
                json!({"conversationId": conversation, "message": "edit", "model": "openai/mock-model",
                "cwd": roots[i].display().to_string()})
                .to_string();
            let start = Instant::now();
            let text = rt.block_on(async {
                let r = http_client::post_json(&format!("http://127.0.0.1:{}/chat", s.port), &body)
                    .await
                    .unwrap();
                assert_eq!(r.status, 200);
                r.text().await
            });
            assert!(text.contains("turn-sealed"), "{text}");
            (start.elapsed().as_secs_f64() * 1e3, text)
        };
        for k in 0..servers.len() {
            for (i, s) in servers.iter().enumerate() {
                // Every server's copy alternates on its own: reset per server.
                if i == k {
                    broken.store(false, std::sync::atomic::Ordering::Relaxed);
                    let (ms, text) = turn(i, s, &format!("{size}-first"));
                    firsts[i] = ms;
                    if i > 0 {
                        assert!(text.contains("LSP diagnostics for src/edit.ts"), "no diagnostics: {text}");
                    }
                    for round in 0..rounds {
                        let (ms, text) = turn(i, s, &format!("{size}-r{round}"));
                        if i > 0 && round % 2 == 0 {
                            assert!(
                                !text.contains("LSP diagnostics"),
                                "a fixed file still had diagnostics: {text}"
                            );
                        }
                        walls[i].push(ms);
                    }
                }
            }
        }
        let base = median(walls[0].clone());
        println!("{size} project ({n} modules), {rounds} edits each, turn wall time (median):");
        for (i, s) in servers.iter().enumerate() {
            let m = median(walls[i].clone());
            println!(
                "  {:<20} {:>8.1} ms   wait {:>6.1} ms   {:>5.2}× edit only   first turn {:>7.1} ms",
                s.label,
                m,
                m - base,
                m / base,
                firsts[i]
            );
        }
        for s in servers.iter().skip(1) {
            let status: Value = rt.block_on(async {
                let r = http_client::send(
                    "GET",
                    &format!("http://127.0.0.1:{}/conversations/{size}-first/lsp", s.port),
                    &[],
                    None,
                )
                .await
                .unwrap();
                serde_json::from_str(&r.text().await).unwrap()
            });
            let rss = status["servers"][0]["rssBytes"].as_u64().unwrap_or(0);
            println!(
                "  {:<20} language server memory: {:.0} MiB (RSS of its process group)",
                s.label,
                rss as f64 / 1048576.0
            );
        }
    }

    // The hooks' cost on calls that are not edits.
    let steps = 100;
    let read_step = |i: usize| tool_call(&format!("r{i}"), "read_file", &json!({"path": "plugins.toml"}));
    let cpu_turn = |s: &Server, conversation: &str| -> f64 {
        for i in 0..steps {
            mock.push(read_step(i));
        }
        mock.push(Reply::sse(&[text_chunk("done"), finish_chunk("stop")]));
        let before = cpu_ns(s.child.id());
        let body = json!({"conversationId": conversation, "message": "read", "model": "openai/mock-model"})
            .to_string();
        let text = rt.block_on(async {
            let r =
                http_client::post_json(&format!("http://127.0.0.1:{}/chat", s.port), &body).await.unwrap();
            r.text().await
        });
        assert!(text.contains("turn-sealed"), "{text}");
        (cpu_ns(s.child.id()) - before) as f64 / 1e3 / (steps + 1) as f64
    };
    let (plain, hooked) = (&servers[0], &servers[1]);
    cpu_turn(plain, "cpu-warm");
    cpu_turn(hooked, "cpu-warm");
    let (mut a, mut b, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (x, y) = if round % 2 == 0 {
            let x = cpu_turn(plain, &format!("cpu{round}"));
            (x, cpu_turn(hooked, &format!("cpu{round}")))
        } else {
            let y = cpu_turn(hooked, &format!("cpu{round}"));
            (cpu_turn(plain, &format!("cpu{round}")), y)
        };
        a.push(x);
        b.push(y);
        ratio.push(y / x);
    }
    println!("read_file steps, server CPU per step (median of {rounds} turns of {steps} steps):");
    println!("  {:<20} {:>8.1} µs", plain.label, median(a));
    println!(
        "  {:<20} {:>8.1} µs   {:>5.3}× edit only (lsp + skills loaded)",
        hooked.label,
        median(b),
        median(ratio)
    );
}
