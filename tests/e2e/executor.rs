//! The executor end to end with the real sandbox: modes per rule and key,
//! timeouts, retries that replay completed effects, condition errors,
//! duplicates, and a hostile rule that harms no other rule of the same event.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zoomwire_engine::effects::{BoxFuture, EffectContext, EffectError, EffectRequest, Effects};
use zoomwire_engine::engine::executor::Executor;
use zoomwire_engine::engine::journal::{RunRecord, RunStatus};
use zoomwire_engine::event::{Event, Source};
use zoomwire_engine::journal::memory::MemoryJournal;
use zoomwire_engine::rules::compile::load_rule_set;
use zoomwire_engine::rules::{RuleSet, RuleSources};
use zoomwire_engine::script::{SandboxLimits, ScriptPool};

/// Effects for these tests: `zoom.get {ms}` sleeps that long; `zoom.post`
/// fails transiently for its first `fail_first` calls; every call is counted.
#[derive(Default)]
struct TestEffects {
    calls: Mutex<Vec<(String, Value)>>,
    post_calls: AtomicUsize,
    fail_first: usize,
}

impl TestEffects {
    fn count(&self, name: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .count()
    }
}

impl Effects for TestEffects {
    fn perform<'a>(
        &'a self,
        _context: &'a EffectContext,
        request: &'a EffectRequest,
    ) -> BoxFuture<'a, Result<Value, EffectError>> {
        Box::pin(async move {
            self.calls
                .lock()
                .unwrap()
                .push((request.name.clone(), request.args.clone()));
            match request.name.as_str() {
                "zoom.get" => {
                    let ms = request.args["params"]["ms"].as_u64().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(json!({"slept": ms}))
                }
                "zoom.post" => {
                    let n = self.post_calls.fetch_add(1, Ordering::SeqCst);
                    if n < self.fail_first {
                        Err(EffectError::transient("zoom.post", "zoom answered 503"))
                    } else {
                        Ok(json!({"ok": true}))
                    }
                }
                _ => Ok(Value::Null),
            }
        })
    }
}

struct Harness {
    executor: Executor,
    rule_set: Arc<RuleSet>,
    effects: Arc<TestEffects>,
    journal: Arc<MemoryJournal>,
    _dir: tempfile::TempDir,
}

fn harness(rules: &str, effects: TestEffects) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
    let sources = RuleSources {
        paths: vec![dir.path().join("rules.yaml")],
        scripts_dir: dir.path().join("scripts"),
    };
    let rule_set = Arc::new(
        load_rule_set(&sources, &SandboxLimits::default()).unwrap_or_else(|e| panic!("{e:?}")),
    );
    let effects = Arc::new(effects);
    let journal = Arc::new(MemoryJournal::default());
    let executor = Executor::new(
        journal.clone(),
        effects.clone(),
        Arc::new(ScriptPool::new(4, 16 * 1024 * 1024)),
        rhai::Dynamic::from_map(rhai::Map::new()),
    );
    Harness {
        executor,
        rule_set,
        effects,
        journal,
        _dir: dir,
    }
}

fn event(n: u32, key: &str) -> Event {
    Event::from_value(
        // A meeting's uuid is its dedupe key: each event ends another meeting of `key`.
        &json!({"event": "meeting.ended", "event_ts": 1000 + n, "payload": {"object": {"uuid": format!("{key}-{n}"), "key": key, "n": n}}}),
        Source::Test,
    )
    .unwrap()
}

impl Harness {
    /// Fires the events one after the other and waits for every run.
    async fn fire_all(&self, events: Vec<Event>) -> Vec<RunRecord> {
        let mut tickets = Vec::new();
        for event in events {
            let outcome = self
                .executor
                .handle_event(&self.rule_set, event)
                .await
                .unwrap();
            tickets.extend(outcome.runs);
        }
        let mut runs = Vec::new();
        for ticket in tickets {
            runs.push(ticket.wait().await.expect("every run finishes"));
        }
        runs
    }
}

fn statuses(runs: &[RunRecord]) -> Vec<RunStatus> {
    runs.iter().map(|r| r.status).collect()
}

const SLOW: &str = "do: 'zoom::get(\"/x\", #{ms: 300})'\n  allow: [zoom.read]\n";

#[tokio::test]
async fn single_drops_runs_while_one_is_in_flight() {
    let h = harness(
        &format!("- name: s\n  on: meeting.ended\n  mode: single\n  {SLOW}"),
        TestEffects::default(),
    );
    let runs = h
        .fire_all(vec![event(1, "a"), event(2, "a"), event(3, "a")])
        .await;
    assert_eq!(
        statuses(&runs),
        [RunStatus::Succeeded, RunStatus::Skipped, RunStatus::Skipped]
    );
    assert!(runs[1].error.as_deref().unwrap().contains("mode single"));
}

#[tokio::test]
async fn modes_apply_per_key() {
    let h = harness(
        &format!(
            "- name: s\n  on: meeting.ended\n  mode: single\n  key: event.payload.object.key\n  {SLOW}"
        ),
        TestEffects::default(),
    );
    let runs = h
        .fire_all(vec![event(1, "a"), event(2, "b"), event(3, "a")])
        .await;
    assert_eq!(
        statuses(&runs),
        [
            RunStatus::Succeeded,
            RunStatus::Succeeded,
            RunStatus::Skipped
        ]
    );
    assert_eq!(runs[1].key.as_deref(), Some("b"));
}

#[tokio::test]
async fn queued_runs_one_at_a_time_and_the_rest_wait_their_turn() {
    let h = harness(
        &format!("- name: q\n  on: meeting.ended\n  mode: queued\n  {SLOW}"),
        TestEffects::default(),
    );
    let runs = h.fire_all((1..=4).map(|n| event(n, "a")).collect()).await;
    assert_eq!(statuses(&runs), [RunStatus::Succeeded; 4]);
    // One at a time, in arrival order.
    for pair in runs.windows(2) {
        assert!(pair[1].started_at.unwrap() >= pair[0].finished_at.unwrap());
    }
}

#[tokio::test]
async fn parallel_runs_up_to_max_runs_at_once_and_the_rest_wait_their_turn() {
    let h = harness(
        &format!("- name: p\n  on: meeting.ended\n  mode: parallel\n  max_runs: 2\n  {SLOW}"),
        TestEffects::default(),
    );
    let started = Instant::now();
    let runs = h
        .fire_all(vec![event(1, "a"), event(2, "a"), event(3, "a")])
        .await;
    assert_eq!(statuses(&runs), [RunStatus::Succeeded; 3]);
    let first_two_done = runs[0]
        .finished_at
        .unwrap()
        .min(runs[1].finished_at.unwrap());
    assert!(
        runs[2].started_at.unwrap() >= first_two_done,
        "the third waited for a place"
    );
    assert!(
        started.elapsed() < Duration::from_millis(850),
        "two ran concurrently: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn max_queued_is_the_explicit_choice_to_drop_and_says_so() {
    let h = harness(
        &format!("- name: q\n  on: meeting.ended\n  mode: queued\n  max_queued: 1\n  {SLOW}"),
        TestEffects::default(),
    );
    let runs = h
        .fire_all(vec![event(1, "a"), event(2, "a"), event(3, "a")])
        .await;
    assert_eq!(
        statuses(&runs),
        [
            RunStatus::Succeeded,
            RunStatus::Succeeded,
            RunStatus::Skipped
        ]
    );
    assert_eq!(
        runs[2].error.as_deref(),
        Some("its waiting line is full (mode queued, max_queued 1)")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_with_default_settings_waits_and_runs_every_run_once() {
    // The default mode (parallel, max_runs 10) and a slow effect: every run
    // waits its turn, none is dropped, none times out while it waits.
    let h = harness(
        "- name: p\n  on: meeting.ended\n  timeout: 1s\n  do: 'zoom::get(\"/x\", #{ms: 30})'\n  allow: [zoom.read]\n",
        TestEffects::default(),
    );
    let runs = h.fire_all((1..=400).map(|n| event(n, "a")).collect()).await;
    assert!(
        runs.iter().all(|r| r.status == RunStatus::Succeeded),
        "{:?}",
        runs.iter().find(|r| r.status != RunStatus::Succeeded)
    );
    assert_eq!(h.effects.count("zoom.get"), 400, "each once");
    assert_eq!(h.executor.waiting_runs(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_timeout_starts_when_its_script_does_not_while_it_waits_for_a_thread() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        "- name: p\n  on: meeting.ended\n  max_runs: 100\n  timeout: 300ms\n  do: 'zoom::get(\"/x\", #{ms: 200})'\n  allow: [zoom.read]\n",
    )
    .unwrap();
    let sources = RuleSources {
        paths: vec![dir.path().join("rules.yaml")],
        scripts_dir: dir.path().join("scripts"),
    };
    let rule_set = Arc::new(load_rule_set(&sources, &SandboxLimits::default()).unwrap());
    let effects = Arc::new(TestEffects::default());
    // One script thread: ten 200 ms runs take two seconds, far past each one's 300 ms.
    let executor = Executor::new(
        Arc::new(MemoryJournal::default()),
        effects.clone(),
        Arc::new(ScriptPool::new(1, 16 * 1024 * 1024)),
        rhai::Dynamic::from_map(rhai::Map::new()),
    );
    let mut tickets = Vec::new();
    for n in 1..=10 {
        tickets.extend(
            executor
                .handle_event(&rule_set, event(n, "a"))
                .await
                .unwrap()
                .runs,
        );
    }
    for ticket in tickets {
        let run = ticket.wait().await.unwrap();
        assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    }
    assert_eq!(effects.count("zoom.get"), 10);
}

#[tokio::test]
async fn restart_cancels_the_running_one_for_the_newest() {
    let rules = "- name: r\n  on: meeting.ended\n  mode: restart\n  timeout: 10s\n  do: |\n    let i = 0;\n    while i < 2000000000 { i += 1; }\n";
    let h = harness(rules, TestEffects::default());
    let first = h
        .executor
        .handle_event(&h.rule_set, event(1, "a"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = h
        .executor
        .handle_event(&h.rule_set, event(2, "a"))
        .await
        .unwrap();
    let first = first.runs.into_iter().next().unwrap().wait().await.unwrap();
    assert_eq!(first.status, RunStatus::Skipped);
    assert!(first.error.as_deref().unwrap().contains("mode restart"));
    // The newest one runs (and is cancelled by nobody; it hits its operation limit or finishes).
    let second = second
        .runs
        .into_iter()
        .next()
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_ne!(second.status, RunStatus::Skipped, "{second:?}");
}

#[tokio::test]
async fn timeout_covers_the_run() {
    let h = harness(
        "- name: t\n  on: meeting.ended\n  timeout: 300ms\n  do: 'zoom::get(\"/x\", #{ms: 5000})'\n  allow: [zoom.read]\n",
        TestEffects::default(),
    );
    let started = Instant::now();
    let runs = h.fire_all(vec![event(1, "a")]).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(runs[0].status, RunStatus::Failed);
    assert!(
        runs[0].error.as_deref().unwrap().contains("deadline"),
        "{:?}",
        runs[0].error
    );
}

#[tokio::test]
async fn a_retry_replays_completed_effects_instead_of_repeating_them() {
    let rules = "- name: r\n  on: meeting.ended\n  allow: [slack, zoom.write]\n  retry: {attempts: 3, backoff: 10ms}\n  do: |\n    slack::post(\"#a\", \"once\");\n    zoom::post(\"/meetings\", #{topic: \"x\"});\n";
    let h = harness(
        rules,
        TestEffects {
            fail_first: 1,
            ..TestEffects::default()
        },
    );
    let runs = h.fire_all(vec![event(1, "a")]).await;
    assert_eq!(runs[0].status, RunStatus::Succeeded, "{:?}", runs[0].error);
    assert_eq!(runs[0].attempt, 2);
    assert_eq!(h.effects.count("slack.post"), 1, "slack was posted once");
    assert_eq!(h.effects.count("zoom.post"), 2);
    assert!(runs[0].effects[0].replayed);
    assert!(!runs[0].effects[1].replayed);
}

#[tokio::test]
async fn a_run_out_of_retries_is_dead() {
    let rules = "- name: r\n  on: meeting.ended\n  allow: [zoom.write]\n  retry: {attempts: 2, backoff: 10ms}\n  do: 'zoom::post(\"/meetings\", #{})'\n";
    let h = harness(
        rules,
        TestEffects {
            fail_first: 100,
            ..TestEffects::default()
        },
    );
    let runs = h.fire_all(vec![event(1, "a")]).await;
    assert_eq!(runs[0].status, RunStatus::Dead);
    assert_eq!(runs[0].attempt, 2);
    assert!(
        runs[0]
            .error
            .as_deref()
            .unwrap()
            .contains("zoom answered 503")
    );
}

#[tokio::test]
async fn a_script_error_is_not_retried() {
    let rules = "- name: r\n  on: meeting.ended\n  retry: {attempts: 3, backoff: 10ms}\n  do: |\n    let x = 1;\n    throw \"broken\";\n";
    let h = harness(rules, TestEffects::default());
    let runs = h.fire_all(vec![event(1, "a")]).await;
    assert_eq!(runs[0].status, RunStatus::Failed);
    assert_eq!(runs[0].attempt, 1);
    let error = runs[0].error.as_deref().unwrap();
    assert!(
        error.contains("rules.yaml:6:"),
        "the position points into the rule file: {error}"
    );
}

#[tokio::test]
async fn a_condition_error_counts_as_not_matched_and_is_recorded() {
    let rules = "- name: bad\n  on: meeting.ended\n  when: event.payload.object.n.nope.deeper > 1\n  do: \"1\"\n- name: good\n  on: meeting.ended\n  do: \"2\"\n";
    let h = harness(rules, TestEffects::default());
    let outcome = h
        .executor
        .handle_event(&h.rule_set, event(1, "a"))
        .await
        .unwrap();
    assert_eq!(outcome.condition_failures, 1);
    assert_eq!(outcome.runs.len(), 1);
    assert_eq!(&*outcome.runs[0].rule, "good");
    let recorded = h.journal.runs();
    let bad = recorded.iter().find(|r| r.rule == "bad").unwrap();
    assert_eq!(bad.status, RunStatus::Skipped);
    let error = bad.error.as_deref().unwrap();
    assert!(
        error.starts_with("condition error: ")
            && error.contains("rules.yaml:3:32: `when`: Unknown property 'nope'"),
        "the position points into the rule file: {:?}",
        bad.error
    );
}

#[tokio::test]
async fn duplicates_run_once() {
    let h = harness(
        "- name: d\n  on: meeting.ended\n  do: \"1\"\n",
        TestEffects::default(),
    );
    let first = h
        .executor
        .handle_event(&h.rule_set, event(1, "a"))
        .await
        .unwrap();
    let again = h
        .executor
        .handle_event(&h.rule_set, event(1, "a"))
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert!(again.runs.is_empty());
}

#[tokio::test]
async fn a_hostile_rule_fails_alone_while_the_others_run() {
    let rules = "\
- name: endless
  on: meeting.ended
  timeout: 500ms
  do: loop {}
- name: bomb
  on: meeting.ended
  timeout: 2s
  do: |
    let s = \"x\";
    loop { s += s; }
- name: deep
  on: meeting.ended
  do: |
    fn f(n) { f(n + 1) }
    f(0)
- name: polite
  on: meeting.ended
  allow: [slack]
  do: slack::post(\"#ok\", \"still here\")
";
    let h = harness(rules, TestEffects::default());
    let started = Instant::now();
    let runs = h.fire_all(vec![event(1, "a")]).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let by_rule = |name: &str| runs.iter().find(|r| r.rule == name).unwrap();
    assert_eq!(by_rule("polite").status, RunStatus::Succeeded);
    assert_eq!(h.effects.count("slack.post"), 1);
    for name in ["endless", "bomb", "deep"] {
        assert_eq!(
            by_rule(name).status,
            RunStatus::Failed,
            "{name}: {:?}",
            by_rule(name)
        );
    }
}

#[tokio::test]
async fn a_missing_capability_fails_with_its_name() {
    let h = harness(
        "- name: c\n  on: meeting.ended\n  do: slack::post(\"#a\", \"x\")\n",
        TestEffects::default(),
    );
    let runs = h.fire_all(vec![event(1, "a")]).await;
    assert_eq!(runs[0].status, RunStatus::Failed);
    assert!(
        runs[0]
            .error
            .as_deref()
            .unwrap()
            .contains("capability `slack`"),
        "{:?}",
        runs[0].error
    );
    assert_eq!(h.effects.count("slack.post"), 0);
}
