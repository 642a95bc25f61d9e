use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::*;

fn bus() -> Bus<&'static str> {
    Bus::new(Arc::new(|f| {
        tokio::spawn(f);
    }))
}

struct Recorder {
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    fail: bool,
    delay: Duration,
}

impl EventSink for Recorder {
    fn deliver(&self, payload: Arc<[u8]>) -> BoxFuture<Result<(), String>> {
        let seen = Arc::clone(&self.seen);
        let (fail, delay) = (self.fail, self.delay);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            seen.lock().unwrap().push(payload.to_vec());
            if fail {
                Err("subscriber broke".into())
            } else {
                Ok(())
            }
        })
    }
}

struct Step(Box<dyn Fn(Vec<u8>) -> Result<StepReply, String> + Send + Sync>);
impl HookStep for Step {
    fn run(&self, value: Vec<u8>) -> BoxFuture<Result<StepReply, String>> {
        let r = (self.0)(value);
        Box::pin(async move { r })
    }
}
fn step(f: impl Fn(Vec<u8>) -> Result<StepReply, String> + Send + Sync + 'static) -> Arc<dyn HookStep> {
    Arc::new(Step(Box::new(f)))
}
fn append(suffix: &'static str) -> Arc<dyn HookStep> {
    step(move |mut v| {
        v.extend_from_slice(suffix.as_bytes());
        Ok(StepReply::Continue(v))
    })
}

#[tokio::test]
async fn a_service_has_exactly_one_provider() {
    let b = bus();
    b.provide("a", "svc", 1, "handler-a").unwrap();
    let err = b.provide("b", "svc", 1, "handler-b").unwrap_err();
    assert_eq!(
        err.to_string(),
        "service `svc` is already provided by plugin `a`; plugin `b` cannot provide it too"
    );
    assert_eq!(*b.service("svc", 1).unwrap(), "handler-a");
    assert_eq!(b.provider_of("svc", 1).unwrap(), "a");
}

#[tokio::test]
async fn a_service_asked_for_at_another_version_is_refused_by_name() {
    let b = bus();
    b.provide("a", "svc", 2, "h").unwrap();
    let err = b.service("svc", 1).unwrap_err();
    assert!(matches!(err, BusError::VersionMismatch { registered: 2, requested: 1, .. }));
    assert_eq!(
        err.to_string(),
        "service `svc` is at schema version 2 (declared by plugin `a`), but version 1 was asked for"
    );
    assert!(matches!(b.service("nope", 1), Err(BusError::NotFound { kind: Kind::Service, .. })));
}

#[tokio::test]
async fn removing_a_plugin_frees_its_names() {
    let b = bus();
    b.provide("a", "svc", 1, "h").unwrap();
    b.add_hook("a", "h", 1, 0, HookKind::Filter, append("!")).unwrap();
    b.remove_plugin("a");
    assert!(b.service("svc", 1).is_err());
    assert!(b.registrations().is_empty());
    b.provide("b", "svc", 1, "h2").unwrap();
}

#[tokio::test]
async fn events_reach_every_subscriber_in_order_and_a_failing_one_does_not_stop_the_rest() {
    let b = bus();
    let good = Arc::new(Mutex::new(Vec::new()));
    let bad = Arc::new(Mutex::new(Vec::new()));
    let sink = |seen: &Arc<Mutex<Vec<Vec<u8>>>>, fail| {
        Arc::new(Recorder { seen: Arc::clone(seen), fail, delay: Duration::ZERO }) as Arc<dyn EventSink>
    };
    b.subscribe("bad", "ev", 1, sink(&bad, true)).unwrap();
    b.subscribe("good", "ev", 1, sink(&good, false)).unwrap();
    for i in 0..5u8 {
        assert_eq!(b.publish("pub", "ev", 1, vec![i]).unwrap(), 2);
    }
    wait_for(|| good.lock().unwrap().len() == 5 && bad.lock().unwrap().len() == 5).await;
    assert_eq!(*good.lock().unwrap(), (0..5u8).map(|i| vec![i]).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_slow_subscriber_does_not_hold_up_the_publisher_or_the_others() {
    let b = bus();
    let slow = Arc::new(Mutex::new(Vec::new()));
    let fast = Arc::new(Mutex::new(Vec::new()));
    b.subscribe(
        "slow",
        "ev",
        1,
        Arc::new(Recorder { seen: Arc::clone(&slow), fail: false, delay: Duration::from_secs(3600) }),
    )
    .unwrap();
    b.subscribe(
        "fast",
        "ev",
        1,
        Arc::new(Recorder { seen: Arc::clone(&fast), fail: false, delay: Duration::ZERO }),
    )
    .unwrap();
    b.publish("p", "ev", 1, b"x".to_vec()).unwrap();
    wait_for(|| fast.lock().unwrap().len() == 1).await;
    assert!(slow.lock().unwrap().is_empty());
}

#[tokio::test]
async fn event_versions_are_fixed_by_first_use() {
    let b = bus();
    assert_eq!(b.publish("owner", "ev", 2, vec![]).unwrap(), 0);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let err = b
        .subscribe("late", "ev", 1, Arc::new(Recorder { seen, fail: false, delay: Duration::ZERO }))
        .unwrap_err();
    assert!(err.to_string().contains("declared by plugin `owner`"), "{err}");
    assert!(b.publish("other", "ev", 3, vec![]).is_err());
}

#[tokio::test]
async fn filters_run_in_priority_order_and_ties_keep_registration_order() {
    let b = bus();
    b.add_hook("p1", "h", 1, 10, HookKind::Filter, append("c")).unwrap();
    b.add_hook("p2", "h", 1, -5, HookKind::Filter, append("a")).unwrap();
    b.add_hook("p3", "h", 1, 10, HookKind::Filter, append("d")).unwrap();
    b.add_hook("p4", "h", 1, 0, HookKind::Filter, append("b")).unwrap();
    let out = b.run_hook("h", 1, FailurePolicy::Open, b">".to_vec()).await.unwrap();
    assert_eq!(out, ChainOutcome::Continue(b">abcd".to_vec()));
}

#[tokio::test]
async fn a_hook_with_no_handlers_returns_the_value() {
    let out = bus().run_hook("none", 1, FailurePolicy::Closed, b"v".to_vec()).await.unwrap();
    assert_eq!(out, ChainOutcome::Continue(b"v".to_vec()));
}

#[tokio::test]
async fn a_guard_veto_stops_the_chain_and_names_the_plugin() {
    let b = bus();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&ran);
    b.add_hook("guardian", "h", 1, 0, HookKind::Guard, step(|_| Ok(StepReply::Veto("no".into())))).unwrap();
    b.add_hook(
        "later",
        "h",
        1,
        1,
        HookKind::Filter,
        step(move |v| {
            r.fetch_add(1, Ordering::SeqCst);
            Ok(StepReply::Continue(v))
        }),
    )
    .unwrap();
    let out = b.run_hook("h", 1, FailurePolicy::Open, vec![]).await.unwrap();
    assert_eq!(out, ChainOutcome::Vetoed { plugin: "guardian".into(), reason: "no".into() });
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_guard_cannot_change_the_value() {
    let b = bus();
    b.add_hook("g", "h", 1, 0, HookKind::Guard, step(|_| Ok(StepReply::Continue(b"evil".to_vec())))).unwrap();
    let out = b.run_hook("h", 1, FailurePolicy::Open, b"v".to_vec()).await.unwrap();
    assert_eq!(out, ChainOutcome::Continue(b"v".to_vec()));
}

#[tokio::test]
async fn fail_open_passes_the_value_through_a_failing_handler() {
    let b = bus();
    b.add_hook("a", "h", 1, 0, HookKind::Filter, append("1")).unwrap();
    b.add_hook("broken", "h", 1, 1, HookKind::Filter, step(|_| Err("boom".into()))).unwrap();
    b.add_hook("broken-guard", "h", 1, 2, HookKind::Guard, step(|_| Err("boom".into()))).unwrap();
    b.add_hook("c", "h", 1, 3, HookKind::Filter, append("3")).unwrap();
    let out = b.run_hook("h", 1, FailurePolicy::Open, vec![]).await.unwrap();
    assert_eq!(out, ChainOutcome::Continue(b"13".to_vec()));
}

#[tokio::test]
async fn fail_closed_filter_failure_fails_the_run_and_guard_failure_vetoes() {
    let b = bus();
    b.add_hook("broken", "f", 1, 0, HookKind::Filter, step(|_| Err("boom".into()))).unwrap();
    let err = b.run_hook("f", 1, FailurePolicy::Closed, vec![]).await.unwrap_err();
    assert_eq!(err.to_string(), "hook `f`: the handler of plugin `broken` failed: boom");

    b.add_hook("broken", "g", 1, 0, HookKind::Guard, step(|_| Err("boom".into()))).unwrap();
    let out = b.run_hook("g", 1, FailurePolicy::Closed, vec![]).await.unwrap();
    assert!(matches!(out, ChainOutcome::Vetoed { plugin, .. } if plugin == "broken"));
}

#[tokio::test]
async fn a_hook_run_at_another_version_is_refused() {
    let b = bus();
    b.add_hook("owner", "h", 1, 0, HookKind::Filter, append("x")).unwrap();
    assert!(b.add_hook("other", "h", 2, 0, HookKind::Filter, append("y")).is_err());
    let err = b.run_hook("h", 2, FailurePolicy::Open, vec![]).await.unwrap_err();
    assert!(matches!(err, BusError::VersionMismatch { kind: Kind::Hook, .. }));
}

async fn wait_for(cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not reached in time");
}

#[test]
fn service_drift_names_both_sides_of_a_manifest_mismatch() {
    let bus = Bus::<u8>::new(Arc::new(|_| {}));
    bus.provide("p", "a", 1, 0).unwrap();
    bus.provide("p", "b", 1, 0).unwrap();
    bus.provide("q", "c", 1, 0).unwrap();
    assert_eq!(bus.service_drift("p", &["a", "b"]), None);
    let drift = bus.service_drift("p", &["a", "z"]).unwrap();
    assert_eq!(
        drift,
        "plugin `p` provides `b` without declaring it in its manifest; \
         declares `z` in its manifest but does not provide it"
    );
}

#[test]
fn service_drift_accepts_a_declared_family_of_services() {
    let bus = Bus::<u8>::new(Arc::new(|_| {}));
    bus.provide("p", "tool.fs__read", 1, 0).unwrap();
    bus.provide("p", "tool.fs__write", 1, 0).unwrap();
    bus.provide("p", "mcp.servers", 1, 0).unwrap();
    assert_eq!(bus.service_drift("p", &["tool.*", "mcp.servers"]), None);
    // A family with no member yet is not missing (no server started).
    assert_eq!(bus.service_drift("q", &["tool.*"]), None);
    // The prefix is a prefix: `tools.x` is not under `tool.*`.
    bus.provide("p", "tools.x", 1, 0).unwrap();
    let drift = bus.service_drift("p", &["tool.*", "mcp.servers"]).unwrap();
    assert_eq!(drift, "plugin `p` provides `tools.x` without declaring it in its manifest");
}
