//! Prometheus metrics through the real binary, scraped by a real
//! Prometheus (Debian's `prometheus`, which `.ci/run` installs): the
//! target is up, and queries over Prometheus' HTTP API return the counts
//! of scripted turns — a tool call, a retried request.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::{chat, get, product_config, Server, LOOPBACK};

/// A Prometheus scraping `target` every 500 ms, killed when dropped.
struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let binary = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("Prometheus is not installed: `apt-get install prometheus` (.ci/run does)");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 500ms\n  evaluation_interval: 500ms\nscrape_configs:\n  - job_name: dispatch\n    \
                 scrape_interval: 500ms\n    scrape_timeout: 400ms\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let port = dispatch_test_support::bench::free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "Prometheus did not listen on {port} within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Prometheus { child, base: format!("http://127.0.0.1:{port}"), _dir: dir }
    }

    /// The value of an instant query's first sample, if any.
    fn value(&self, query: &str) -> Option<f64> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let a = get(&format!("{}/api/v1/query?query={encoded}", self.base));
        if a.status != 200 {
            return None;
        }
        a.body["data"]["result"][0]["value"][1].as_str().and_then(|v| v.parse().ok())
    }

    /// Wait until `query` answers `want`.
    fn wait_for(&self, query: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = None;
        while Instant::now() < deadline {
            last = self.value(query);
            if last == Some(want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let log = std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default();
        panic!(
            "Prometheus answered {last:?} to {query}, not {want}\n{}",
            log.lines().rev().take(10).collect::<Vec<_>>().join("\n")
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_real_prometheus_scrapes_the_counts_of_scripted_turns() {
    let cfg = product_config(LOOPBACK);
    let s = Server::start(&cfg);
    let scrape = get(&format!("{}/metrics", s.base));
    assert_eq!(scrape.status, 200);
    assert_eq!(scrape.headers["content-type"], "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert!(
        scrape.text.lines().any(|l| l == "dispatch_plugin_state{plugin=\"session\",state=\"active\"} 1"),
        "{}",
        scrape.text
    );
    assert!(scrape.text.ends_with("# EOF\n"));

    let prometheus = Prometheus::start(s.base.trim_start_matches("http://"));
    prometheus.wait_for("up{job=\"dispatch\"}", 1.0);

    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("notes.txt"), "hello").unwrap();
    for message in ["read the notes", "flaky please"] {
        let (a, events) =
            chat(&s.base, json!({"conversationId": "prom", "message": message, "cwd": work.path()}));
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(events.last().unwrap()["type"], "turn-sealed");
    }
    prometheus.wait_for("sum(dispatch_turns_ended_total{reason=\"stop\"})", 2.0);
    prometheus.wait_for("sum(dispatch_turns_started_total)", 2.0);
    prometheus.wait_for("dispatch_turns_active", 0.0);
    prometheus.wait_for("sum(dispatch_steps_total)", 3.0);
    prometheus.wait_for("dispatch_tool_call_duration_seconds_count{tool=\"read_file\",outcome=\"ok\"}", 1.0);
    prometheus.wait_for("sum(dispatch_provider_retries_total{cause=\"429\"})", 1.0);
    prometheus.wait_for("sum(dispatch_tokens_total{kind=\"input\",model=\"scripted/demo\"}) >= bool 90", 1.0);
    prometheus.wait_for("sum(dispatch_store_append_duration_seconds_count{outcome=\"ok\"}) >= bool 3", 1.0);
    let labels = get(&format!("{}/api/v1/labels", prometheus.base));
    let names: Vec<Value> = labels.body["data"].as_array().cloned().unwrap_or_default();
    assert!(
        !names.contains(&json!("conversation_id")) && !names.contains(&json!("conversation")),
        "{names:?}"
    );
}
