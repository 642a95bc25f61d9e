//! Several `dispatch serve` hosts on one PostgreSQL database
//! (store-postgres): the real binaries, the real server, a schema per test.

use serde_json::{json, Value};

use dispatch_test_support::pg::{url, Schema};

use std::time::{Duration, Instant};

use crate::http::{chat, get, kinds, post, product_config_on, text_of, Server, Stream, LOOPBACK};

fn host_config(schema: &Schema) -> crate::support::Written {
    host_config_with(schema, "")
}

fn host_config_with(schema: &Schema, extra: &str) -> crate::support::Written {
    let store = format!("url = {:?}\nschema = {:?}\nmax_chunk_bytes = 16777216\n{extra}", url(), schema.name);
    product_config_on(LOOPBACK, LOOPBACK, &[], Some(("libdispatch_plugin_store_postgres.so", store)))
}

fn chunks(s: &Server, id: &str) -> Vec<Value> {
    let a = get(&format!("{}/conversations/{id}", s.base));
    assert_eq!(a.status, 200, "{}", a.text);
    a.body["chunks"].as_array().unwrap().clone()
}

/// A conversation started on one host is read and continued on the other:
/// one log, seqs continuing, the list and metadata the same on both; a
/// host killed with SIGKILL loses nothing it acknowledged.
#[test]
fn two_hosts_on_one_database_serve_the_same_conversations() {
    let schema = Schema::new();
    let (cfg_a, cfg_b) = (host_config(&schema), host_config(&schema));
    let mut a = Server::start(&cfg_a);
    let b = Server::start(&cfg_b);
    let (answer, events) = chat(&a.base, json!({"conversationId": "shared", "message": "hello"}));
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(!text_of(&events).is_empty(), "{events:?}");
    let on_a = chunks(&a, "shared");
    assert_eq!(chunks(&b, "shared"), on_a, "host B reads host A's turn");

    let (answer, _) = chat(&b.base, json!({"conversationId": "shared", "message": "and again"}));
    assert_eq!(answer.status, 200, "{}", answer.text);
    let all = chunks(&a, "shared");
    assert!(all.len() > on_a.len(), "host A reads host B's turn");
    for (i, c) in all.iter().enumerate() {
        assert_eq!(c["seq"], i as u64 + 1, "one gap-free log: {all:?}");
    }
    let list = |s: &Server| get(&format!("{}/conversations", s.base)).body["conversations"].clone();
    assert_eq!(list(&a), list(&b));
    assert_eq!(list(&a)[0]["title"], "hello");

    // SIGKILL: what A acknowledged is there for B.
    let (answer, _) = chat(&a.base, json!({"conversationId": "last", "message": "remember this"}));
    assert_eq!(answer.status, 200);
    let acknowledged = chunks(&a, "last");
    a.stop_with(9);
    assert_eq!(chunks(&b, "last"), acknowledged);
    // The `store` dependency of the session is satisfied by store-postgres.
    let ext = get(&format!("{}/extensions", b.base)).body;
    let active =
        |id: &str| ext["plugins"].as_array().unwrap().iter().any(|e| e["id"] == id && e["state"] == "active");
    assert!(active("store-postgres") && active("session") && !active("store-sqlite"), "{ext}");
}

/// One turn per conversation across the hosts: while host A runs a turn, a
/// message for it on host B is the same `409` as on one host, naming A;
/// a stop sent to B reaches the turn on A; once it sealed, B runs the next.
#[test]
fn a_turn_on_one_host_is_refused_and_stopped_from_another() {
    let schema = Schema::new();
    let (cfg_a, cfg_b) = (host_config(&schema), host_config(&schema));
    let (a, b) = (Server::start(&cfg_a), Server::start(&cfg_b));
    let mut stream = Stream::open(&a.base, &json!({"conversationId": "busy", "message": "slow please"}));
    assert_eq!(stream.status, 200);
    stream.until("text-delta");
    let (second, _) = chat(&b.base, json!({"conversationId": "busy", "message": "me too"}));
    assert_eq!((second.status, second.body["code"].as_str()), (409, Some("conflict")), "{}", second.text);
    let error = second.body["error"].as_str().unwrap();
    // Each host says which it is; the refusal names the one running the turn.
    let host_of =
        |s: &Server| get(&format!("{}/extensions", s.base)).body["host"].as_str().unwrap().to_owned();
    let (host_a, host_b) = (host_of(&a), host_of(&b));
    assert_ne!(host_a, host_b);
    assert!(error.contains(&format!("already has a turn running (on {host_a}, turn ")), "{error}");

    let stop = post(&format!("{}/conversations/busy/stop", b.base), "");
    assert_eq!(stop.body, json!({"conversationId": "busy", "abortedTurn": true}), "{}", stop.text);
    let rest = stream.rest();
    let k = kinds(&rest);
    assert_eq!(k.last(), Some(&"turn-sealed"), "{k:?}");
    assert!(rest.iter().any(|e| e["type"] == "done" && e["reason"] == "aborted"), "{rest:?}");
    // The claim is released at the seal: the next turn runs on B.
    let (next, events) = chat(&b.base, json!({"conversationId": "busy", "message": "hello again"}));
    assert_eq!(next.status, 200, "{}", next.text);
    assert_eq!(kinds(&events).last(), Some(&"turn-sealed"));
    // Nothing runs anywhere: a stop is a no-op on both.
    for s in [&a, &b] {
        let stop = post(&format!("{}/conversations/busy/stop", s.base), "");
        assert_eq!(stop.body["abortedTurn"], false, "{}", stop.text);
    }
}

/// SIGKILL of the host running a turn: its claim lapses with its lease (1 s
/// here), and another host then runs the next turn on the conversation,
/// whose history holds the killed turn's saved part.
#[test]
fn a_conversation_whose_host_died_mid_turn_is_taken_over_within_the_lease() {
    let schema = Schema::new();
    let lease = "claim_lease_ms = 1000";
    let (cfg_a, cfg_b) = (host_config_with(&schema, lease), host_config_with(&schema, lease));
    let (mut a, b) = (Server::start(&cfg_a), Server::start(&cfg_b));
    let mut stream = Stream::open(&a.base, &json!({"conversationId": "orphan", "message": "slow please"}));
    stream.until("text-delta");
    a.stop_with(9);
    let killed = Instant::now();
    let taken = loop {
        let (answer, events) =
            chat(&b.base, json!({"conversationId": "orphan", "message": "are you there?"}));
        if answer.status == 200 {
            break (killed.elapsed(), events);
        }
        assert_eq!(answer.status, 409, "{}", answer.text);
        assert!(killed.elapsed() < Duration::from_secs(10), "still claimed 10 s after its host died");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(taken.0 >= Duration::from_millis(500), "taken over before the lease ran out: {:?}", taken.0);
    // The failover time, for BENCHMARKS.md (`-- --nocapture`).
    eprintln!("failover: the next turn ran on host B {} ms after host A was killed", taken.0.as_millis());
    assert_eq!(kinds(&taken.1).last(), Some(&"turn-sealed"));
    let history = chunks(&b, "orphan");
    assert_eq!(history[0]["chunk"]["text"], "slow please", "the killed turn's message was saved");
    assert!(history.iter().any(|c| c["chunk"]["text"] == "are you there?"));
}

/// A TCP relay to the test database that can be cut and restored: the
/// database "going away" for one host only, without stopping the server
/// every other test uses.
struct Relay {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn start() -> Relay {
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::<TcpStream>::new()));
        let (up2, open2) = (up.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused at once
                }
                let Ok(server) = TcpStream::connect("127.0.0.1:5432") else { continue };
                let mut all = open2.lock().unwrap();
                all.push(client.try_clone().unwrap());
                all.push(server.try_clone().unwrap());
                for (mut from, mut to) in
                    [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { port, up, open }
    }

    fn url(&self) -> String {
        url().replacen("127.0.0.1:5432", &format!("127.0.0.1:{}", self.port), 1)
    }

    /// Every connection through the relay closes, new ones are refused.
    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn poll(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(20), "{what}: not within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A host whose database goes away is not ready (`/health` 503), refuses a
/// turn with a clear error instead of hanging, and serves again once the
/// database is back — no restart.
#[test]
fn a_host_that_loses_its_database_is_unready_and_recovers_without_a_restart() {
    let schema = Schema::new();
    let relay = Relay::start();
    let store = format!(
        "url = {:?}\nschema = {:?}\nconnect_timeout_ms = 1000\nstatement_timeout_ms = 5000\n",
        relay.url(),
        schema.name
    );
    let cfg =
        product_config_on(LOOPBACK, LOOPBACK, &[], Some(("libdispatch_plugin_store_postgres.so", store)));
    let s = Server::start(&cfg);
    let health = || get(&format!("{}/health", s.base));
    assert_eq!(health().body, json!({"ok": true}));
    let (answer, _) = chat(&s.base, json!({"conversationId": "away", "message": "hello"}));
    assert_eq!(answer.status, 200, "{}", answer.text);

    // Cut mid-turn: the step cannot be saved, and the turn ends with an
    // error event saying so (and seals) instead of hanging.
    let mut stream = Stream::open(&s.base, &json!({"conversationId": "midway", "message": "slow please"}));
    stream.until("text-delta");
    relay.cut();
    let rest = stream.rest();
    assert_eq!(kinds(&rest).last(), Some(&"turn-sealed"), "{rest:?}");
    let error =
        rest.iter().find(|e| e["type"] == "error").unwrap_or_else(|| panic!("no error event: {rest:?}"));
    assert!(error["message"].as_str().unwrap().contains("could not be saved"), "{error}");
    poll("/health says 503", || health().status == 503);
    let unready = health();
    assert_eq!(unready.body["ok"], false);
    assert!(
        unready.body["error"].as_str().unwrap().starts_with("the store is not ready"),
        "{}",
        unready.text
    );
    let (refused, _) = chat(&s.base, json!({"conversationId": "away", "message": "still there?"}));
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert!(!refused.body["error"].as_str().unwrap_or_default().is_empty(), "{}", refused.text);

    relay.restore();
    poll("/health is ok again", || health().status == 200);
    let (again, events) = chat(&s.base, json!({"conversationId": "away", "message": "back?"}));
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(kinds(&events).last(), Some(&"turn-sealed"));
    let texts: Vec<Value> = chunks(&s, "away").iter().map(|c| c["chunk"]["text"].clone()).collect();
    assert!(texts.contains(&json!("hello")) && texts.contains(&json!("back?")), "{texts:?}");
    assert!(!texts.contains(&json!("still there?")), "the refused message was not half saved");
}

/// Live events cross hosts: a turn that runs on host A is watched from host
/// B's WebSocket — every event, identical and in order, a watcher who
/// joins mid-turn replayed from the start — B's clients hear its status
/// changes, and a `/last` waiter on B gets its answer.
#[test]
fn a_turn_on_one_host_is_watched_live_from_another() {
    use dispatch_test_support::ws_client::WsClient;
    let schema = Schema::new();
    let (cfg_a, cfg_b) = (host_config(&schema), host_config(&schema));
    let (a, b) = (Server::start(&cfg_a), Server::start(&cfg_b));
    crate::http::rt().block_on(async {
        let mut early = WsClient::connect(&b.ws()).await.unwrap();
        assert_eq!(early.next().await["type"], "catalog");
        early.send(&json!({"type": "chat.subscribe", "conversationId": "live"})).await;
        // The chat subscription is in place once the server answered a
        // request sent after it (a surface subscription's snapshot).
        early.send(&json!({"type": "subscribe", "surfaceId": "loaded-extensions"})).await;
        early.until(|v| v["spec"].is_object()).await;

        let a_base = a.base.clone();
        let on_a = tokio::task::spawn_blocking(move || {
            let mut stream =
                Stream::open(&a_base, &json!({"conversationId": "live", "message": "slow please"}));
            assert_eq!(stream.status, 200);
            stream.rest()
        });
        // A late watcher on B, mid-turn.
        let first = early.until(|v| v["type"] == "chat.delta" && v["event"]["type"] == "text-delta").await;
        let mut late = WsClient::connect(&b.ws()).await.unwrap();
        late.next().await;
        late.send(&json!({"type": "chat.subscribe", "conversationId": "live"})).await;
        let b_base = b.base.clone();
        let waiter = tokio::task::spawn_blocking(move || get(&format!("{b_base}/conversations/live/last")));

        let mut seen_early: Vec<Value> =
            first.iter().filter(|v| v["type"] == "chat.delta").map(|v| v["event"].clone()).collect();
        let status_seen = first.iter().any(|v| {
            v["type"] == "conversation.statusChanged"
                && v["conversationId"] == "live"
                && v["status"] == "active"
        });
        seen_early.extend(early.turn().await);
        let seen_late = late.turn().await;
        let on_a: Vec<Value> = on_a.await.unwrap();
        assert_eq!(seen_early, on_a, "host B's watcher saw another turn than host A streamed");
        assert_eq!(seen_late, on_a, "the late watcher on B was not replayed from the start");
        assert!(status_seen, "B's client was not told the conversation became active: {first:?}");
        let last = waiter.await.unwrap();
        assert_eq!(last.status, 200, "{}", last.text);
        assert_eq!(last.body["content"], text_of(&on_a), "{}", last.text);
    });
}

/// A message queued on host B while the conversation's turn runs on host
/// A waits there, and starts the next turn (on B) once A's turn sealed.
#[test]
fn a_message_queued_on_another_host_starts_the_next_turn() {
    let schema = Schema::new();
    let (cfg_a, cfg_b) = (host_config(&schema), host_config(&schema));
    let (a, b) = (Server::start(&cfg_a), Server::start(&cfg_b));
    let mut stream = Stream::open(&a.base, &json!({"conversationId": "q", "message": "slow please"}));
    stream.until("text-delta");
    let queued = post(&format!("{}/conversations/q/queue", b.base), r#"{"text": "read the notes"}"#);
    assert_eq!(queued.status, 200, "{}", queued.text);
    assert_eq!(queued.body["startedTurn"], false, "{}", queued.text);
    stream.rest();
    poll("the queued message ran", || {
        chunks(&a, "q").iter().any(|c| c["role"] == "user" && c["chunk"]["text"] == "read the notes")
    });
    poll("its turn sealed", || get(&format!("{}/conversations/q/status", b.base)).body["isActive"] == false);
    let all = chunks(&a, "q");
    assert!(
        all.iter().any(|c| c["chunk"]["type"] == "tool-result"),
        "the queued turn ran its tools: {all:?}"
    );
}

/// `events` with each run of adjacent text deltas joined into one.
fn joined(events: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for e in events {
        if let (Some(last), "text-delta") = (out.last_mut(), e["type"].as_str().unwrap_or_default()) {
            if last["type"] == "text-delta" {
                let text = format!("{}{}", last["delta"].as_str().unwrap(), e["delta"].as_str().unwrap());
                last["delta"] = json!(text);
                continue;
            }
        }
        out.push(e);
    }
    out
}

/// A turn that runs faster than the relay (its whole life in one batch)
/// still reaches a watcher on another host, whole.
#[test]
fn a_fast_turn_on_one_host_reaches_a_watcher_on_another() {
    use dispatch_test_support::ws_client::WsClient;
    let schema = Schema::new();
    let (cfg_a, cfg_b) = (host_config(&schema), host_config(&schema));
    let (a, b) = (Server::start(&cfg_a), Server::start(&cfg_b));
    crate::http::rt().block_on(async {
        let mut watcher = WsClient::connect(&b.ws()).await.unwrap();
        assert_eq!(watcher.next().await["type"], "catalog");
        watcher.send(&json!({"type": "chat.subscribe", "conversationId": "fast"})).await;
        watcher.send(&json!({"type": "subscribe", "surfaceId": "loaded-extensions"})).await;
        watcher.until(|v| v["spec"].is_object()).await;
        for round in 0..3 {
            let a_base = a.base.clone();
            let on_a = tokio::task::spawn_blocking(move || {
                chat(&a_base, json!({"conversationId": "fast", "message": format!("hello {round}")})).1
            });
            let seen = watcher.turn().await;
            // A relay that reads the turn after it sealed gets its deltas
            // merged (the session's log merges a sealed turn's; the text
            // is the same): compare with adjacent deltas joined.
            assert_eq!(joined(seen), joined(on_a.await.unwrap()), "round {round}");
        }
    });
}

/// A conversation's surfaces are the same on every host: a todo list the
/// model writes on host A and a message queued on host A show on host B's
/// WebSocket, live and to a client subscribing later; a message queued on
/// host B shows on host A's.
#[test]
fn a_conversations_surfaces_show_the_same_on_every_host() {
    use dispatch_test_support::ws_client::WsClient;
    let schema = Schema::new();
    let (cfg_a, cfg_b) = (host_config(&schema), host_config(&schema));
    let (a, b) = (Server::start(&cfg_a), Server::start(&cfg_b));
    let payload = |v: &Value| v["update"]["spec"]["fields"][0]["payload"].clone();
    let is_update = |v: &Value, id: &str| v["type"] == "update" && v["update"]["surfaceId"] == id;
    crate::http::rt().block_on(async {
        let connect = |base: String| async move {
            let mut c = WsClient::connect(&base).await.unwrap();
            assert_eq!(c.next().await["type"], "catalog");
            for surface in ["todo", "message-queue"] {
                c.send(&json!({"type": "subscribe", "surfaceId": surface, "conversationId": "plan"})).await;
                c.until(|v| v["type"] == "surface").await;
            }
            c
        };
        let (mut on_a, mut on_b) = (connect(a.ws()).await, connect(b.ws()).await);

        let a_base = a.base.clone();
        let answer = tokio::task::spawn_blocking(move || {
            chat(&a_base, json!({"conversationId": "plan", "message": "todo: plan it"})).0
        });
        let seen = on_b.until(|v| is_update(v, "todo")).await;
        let todos = payload(seen.last().unwrap());
        assert_eq!(todos["todos"][1], json!({"content": "answer", "status": "in_progress"}), "{seen:?}");
        assert_eq!(seen.last().unwrap()["update"]["conversationId"], "plan");
        assert_eq!(answer.await.unwrap().status, 200);

        // Queued on A while A runs a turn: B's client sees the queue.
        let blocking = |f: Box<dyn FnOnce() + Send>| tokio::task::spawn_blocking(f);
        let a_base = a.base.clone();
        let stream = tokio::task::spawn_blocking(move || {
            let mut stream =
                Stream::open(&a_base, &json!({"conversationId": "plan", "message": "slow please"}));
            stream.until("text-delta");
            stream
        })
        .await
        .unwrap();
        let queue = |base: &str, text: &str| {
            let (url, body) = (format!("{base}/conversations/plan/queue"), json!({"text": text}).to_string());
            blocking(Box::new(move || {
                let queued = post(&url, &body);
                assert_eq!(queued.status, 200, "{}", queued.text);
            }))
        };
        queue(&a.base, "steer: from A").await.unwrap();
        let has = |v: &Value, text: &str| {
            payload(v)["messages"].as_array().is_some_and(|m| m.iter().any(|m| m["text"] == text))
        };
        on_b.until(|v| is_update(v, "message-queue") && has(v, "steer: from A")).await;
        // Queued on B (the turn still runs on A): A's client sees it.
        queue(&b.base, "steer: from B").await.unwrap();
        on_a.until(|v| is_update(v, "message-queue") && has(v, "steer: from B")).await;
        let mut stream = stream;
        blocking(Box::new(move || drop(stream.rest()))).await.unwrap();

        // A client that subscribes on B later is shown A's todo list.
        let mut late = WsClient::connect(&b.ws()).await.unwrap();
        assert_eq!(late.next().await["type"], "catalog");
        late.send(&json!({"type": "subscribe", "surfaceId": "todo", "conversationId": "plan"})).await;
        let shown = late.until(|v| v["type"] == "surface").await;
        let spec = &shown.last().unwrap()["spec"];
        assert_eq!(spec["fields"][0]["payload"], todos, "{shown:?}");
    });
}

/// What a turn under load ended as while PostgreSQL restarted.
#[derive(Debug)]
enum Outcome {
    /// Accepted and sealed without an error.
    Sealed,
    /// Accepted, then ended by an `error` event (and sealed).
    Failed(String),
    /// Refused with a status and the JSON error.
    Refused(u16, String),
}

/// PostgreSQL itself restarted (a private server of this test's, stopped
/// with `fast` as an operator's restart does) while two hosts run turns:
/// the hosts stay up, report unready, refuse or end turns with clear
/// errors naming the database, and then serve again — turns on both,
/// events relayed across — without a restart; every log stays gap-free
/// and holds exactly what was accepted.
#[test]
fn postgresql_restarted_under_load_gives_clear_errors_then_recovers_without_restarting_the_hosts() {
    use dispatch_test_support::pg::Private;
    use dispatch_test_support::ws_client::{Read, WsClient};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let pg = Private::start();
    let store = format!(
        "url = {:?}\nschema = \"restart\"\nconnect_timeout_ms = 1000\nstatement_timeout_ms = 5000\nclaim_lease_ms = 2000\n",
        pg.url()
    );
    let config = || {
        product_config_on(
            LOOPBACK,
            LOOPBACK,
            &[],
            Some(("libdispatch_plugin_store_postgres.so", store.clone())),
        )
    };
    let (cfg_a, cfg_b) = (config(), config());
    let (a, b) = (Server::start(&cfg_a), Server::start(&cfg_b));
    let bases = [a.base.clone(), b.base.clone()];

    // Load: four clients, two per host, each on a conversation of its own.
    let stop = Arc::new(AtomicBool::new(false));
    let restarted = Arc::new(AtomicBool::new(false));
    let after_restart = Arc::new(AtomicUsize::new(0));
    let outcomes: Arc<Mutex<Vec<(usize, Outcome)>>> = Arc::default();
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let (base, stop, restarted, after, outcomes) = (
                bases[i % 2].clone(),
                stop.clone(),
                restarted.clone(),
                after_restart.clone(),
                outcomes.clone(),
            );
            std::thread::spawn(move || {
                let mut counted = false;
                for n in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let message = if n % 3 == 2 { format!("slow {n}") } else { format!("hello {n}") };
                    let (answer, events) =
                        chat(&base, json!({"conversationId": format!("load-{i}"), "message": message}));
                    let outcome = if answer.status != 200 {
                        Outcome::Refused(
                            answer.status,
                            answer.body["error"].as_str().unwrap_or(&answer.text).into(),
                        )
                    } else if let Some(e) = events.iter().find(|e| e["type"] == "error") {
                        Outcome::Failed(e["message"].as_str().unwrap_or_default().to_owned())
                    } else {
                        assert_eq!(kinds(&events).last(), Some(&"turn-sealed"), "{events:?}");
                        Outcome::Sealed
                    };
                    if matches!(outcome, Outcome::Sealed) && restarted.load(Ordering::SeqCst) && !counted {
                        counted = true;
                        after.fetch_add(1, Ordering::SeqCst);
                    }
                    if !matches!(outcome, Outcome::Sealed) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    outcomes.lock().unwrap().push((i, outcome));
                }
            })
        })
        .collect();
    let sealed = || outcomes.lock().unwrap().iter().filter(|(_, o)| matches!(o, Outcome::Sealed)).count();
    poll("turns run on both hosts", || sealed() >= 8);

    pg.stop();
    for base in &bases {
        poll("/health says 503", || get(&format!("{base}/health")).status == 503);
        let unready = get(&format!("{base}/health"));
        assert_eq!(unready.body["code"], "unavailable", "{}", unready.text);
        assert!(
            unready.body["error"].as_str().unwrap().starts_with("the store is not ready"),
            "{}",
            unready.text
        );
    }
    // Down long enough that new turns are refused, not only running ones
    // cut short.
    let refused = || outcomes.lock().unwrap().iter().any(|(_, o)| matches!(o, Outcome::Refused(..)));
    poll("a turn asked for while the database is down is refused", refused);
    pg.start_again();
    restarted.store(true, Ordering::SeqCst);
    for base in &bases {
        poll("/health is ok again", || get(&format!("{base}/health")).status == 200);
    }
    poll("every client's turns seal again", || after_restart.load(Ordering::SeqCst) == 4);
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }

    // Every failure was one of the two clear forms, naming the cause.
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let failures: Vec<&(usize, Outcome)> =
        outcomes.iter().filter(|(_, o)| !matches!(o, Outcome::Sealed)).collect();
    assert!(!failures.is_empty(), "the restart was felt: {outcomes:?}");
    for (_, failure) in &failures {
        match failure {
            Outcome::Refused(503, why) | Outcome::Failed(why) => assert!(
                ["database", "store", "connection", "saved"].iter().any(|w| why.contains(w)),
                "an error that does not say what failed: {failure:?}"
            ),
            other => panic!("neither a 503 nor an error event: {other:?}"),
        }
    }
    // Each log is gap-free and holds one user message per accepted turn
    // (an append acknowledged as the server went down may be the one more).
    for i in 0..4 {
        let log = chunks(&a, &format!("load-{i}"));
        for (n, c) in log.iter().enumerate() {
            assert_eq!(c["seq"], n as u64 + 1, "load-{i}: {log:?}");
        }
        let users = log.iter().filter(|c| c["role"] == "user").count();
        let mine = outcomes.iter().filter(|(w, _)| *w == i);
        let accepted = mine.clone().filter(|(_, o)| !matches!(o, Outcome::Refused(..))).count();
        let refused = mine.filter(|(_, o)| matches!(o, Outcome::Refused(..))).count();
        assert!(
            (accepted..=accepted + refused).contains(&users),
            "load-{i}: {users} user messages for {accepted} accepted turns ({refused} refused)"
        );
    }

    // Live events cross hosts again: B's listener reconnected by itself.
    crate::http::rt().block_on(async {
        let mut watcher = WsClient::connect(&b.ws()).await.unwrap();
        assert_eq!(watcher.next().await["type"], "catalog");
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < Duration::from_secs(20), "no turn on A reached B's watcher in 20 s");
            let id = format!("relay-{}", start.elapsed().as_millis());
            watcher.send(&json!({"type": "chat.subscribe", "conversationId": id})).await;
            let a_base = a.base.clone();
            let on_a = tokio::task::spawn_blocking(move || {
                chat(&a_base, json!({"conversationId": id, "message": "hello again"})).1
            })
            .await
            .unwrap();
            let mut seen = Vec::new();
            while let Read::Json(v) = watcher.read(Duration::from_secs(2)).await {
                if v["type"] == "chat.delta" {
                    seen.push(v["event"].clone());
                    if v["event"]["type"] == "turn-sealed" {
                        break;
                    }
                }
            }
            if !seen.is_empty() && seen == on_a {
                break;
            }
        }
    });
}

/// Two hosts that both know a workspace's heartbeat (the second started
/// after it was enabled) run it once per interval between them, never
/// twice at once: a run claims the workspace's heartbeat in the cluster.
#[test]
fn two_hosts_run_one_heartbeat_once_per_interval() {
    let schema = Schema::new();
    let store = format!("url = {:?}\nschema = {:?}\n", url(), schema.name);
    let config = || {
        product_config_on(
            LOOPBACK,
            LOOPBACK,
            &[("libdispatch_plugin_heartbeat.so", "minute_ms = 300".to_owned())],
            Some(("libdispatch_plugin_store_postgres.so", store.clone())),
        )
    };
    let (cfg_a, cfg_b) = (config(), config());
    let a = Server::start(&cfg_a);
    let hb = json!({"enabled": true, "intervalMinutes": 1, "taskPrompt": "hello"}).to_string();
    let put = crate::http::send("PUT", &format!("{}/workspaces/shared/heartbeat", a.base), Some(&hb), &[]);
    assert_eq!(put.status, 200, "{}", put.text);
    let b = Server::start(&cfg_b);
    let runs = || {
        get(&format!("{}/workspaces/shared/heartbeat/runs", b.base)).body["runs"].as_array().unwrap().clone()
    };
    poll("four runs", || runs().len() >= 4);
    let off = crate::http::send(
        "PUT",
        &format!("{}/workspaces/shared/heartbeat", a.base),
        Some(r#"{"enabled": false}"#),
        &[],
    );
    assert_eq!(off.status, 200);
    let all = runs();
    let times: Vec<chrono_free::Ms> =
        all.iter().map(|r| chrono_free::ms(r["triggeredAt"].as_str().unwrap())).collect();
    for pair in times.windows(2) {
        assert!(
            pair[0] - pair[1] >= 250,
            "two runs {} ms apart (an interval is 300 ms): {all:?}",
            pair[0] - pair[1]
        );
    }
}

/// ISO-8601 `YYYY-MM-DDTHH:MM:SS.mmmZ` of one day to ms since midnight
/// (enough to compare runs a few seconds apart).
mod chrono_free {
    pub type Ms = i64;
    pub fn ms(iso: &str) -> Ms {
        let t = &iso[11..23];
        let n = |r: std::ops::Range<usize>| t[r].parse::<i64>().unwrap();
        ((n(0..2) * 60 + n(3..5)) * 60 + n(6..8)) * 1000 + n(9..12)
    }
}
