//! The scheduler end to end on a controlled clock: numeric and named
//! weekdays across a week, daylight-saving changes in Europe/Berlin (spring
//! forward and fall back), catch-up after a simulated downtime, a reload
//! that changes a schedule, and an overlapping firing under mode `single`.
//!
//! The [`ManualClock`] tells when the scheduler will wake next, so each test
//! walks the clock from one wake-up to the next and checks both the wake-ups
//! and the runs they produced.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, TimeZone, Utc, Weekday};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use zoomwire_engine::effects::state::{MemoryState, StateStore};
use zoomwire_engine::effects::{BoxFuture, EffectContext, EffectError, EffectRequest, Effects};
use zoomwire_engine::engine::executor::Executor;
use zoomwire_engine::engine::journal::{RunRecord, RunStatus};
use zoomwire_engine::journal::memory::MemoryJournal;
use zoomwire_engine::reload::RuleSetHandle;
use zoomwire_engine::rules::RuleSources;
use zoomwire_engine::scheduler::{Clock, ManualClock, SCHEDULE_STATE_RULE, run_scheduler};
use zoomwire_engine::script::{SandboxLimits, ScriptPool};

/// `slack.post` waits for a permit of `gate`; everything else answers at once.
struct GateEffects {
    gate: Arc<Semaphore>,
}

impl Effects for GateEffects {
    fn perform<'a>(
        &'a self,
        _context: &'a EffectContext,
        request: &'a EffectRequest,
    ) -> BoxFuture<'a, Result<Value, EffectError>> {
        Box::pin(async move {
            if request.name == "slack.post" {
                let permit = self.gate.acquire().await;
                permit.map(|p| p.forget()).ok();
            }
            Ok(json!({"ok": true}))
        })
    }
}

/// A script that reports the firing it was given.
const REPORT: &str =
    "do: |\n  #{ at: event.scheduled_at, previous: event.previous_at, source: meta.source }\n";

fn rule(schedule: &str, extra: &str) -> String {
    format!("schedule: \"{schedule}\"\n{extra}{REPORT}")
}

struct Harness {
    dir: tempfile::TempDir,
    handle: Arc<RuleSetHandle>,
    executor: Executor,
    journal: Arc<MemoryJournal>,
    clock: Arc<ManualClock>,
    gate: Arc<Semaphore>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Harness {
    fn start(rules: &[(&str, &str)], now: DateTime<Utc>, state: Arc<MemoryState>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in rules {
            write(&dir.path().join("rules").join(format!("{name}.yaml")), text);
        }
        let sources = RuleSources {
            paths: vec![dir.path().join("rules")],
            scripts_dir: dir.path().join("scripts"),
        };
        let handle = Arc::new(
            RuleSetHandle::load(sources, SandboxLimits::default())
                .unwrap_or_else(|e| panic!("{e:?}")),
        );
        let journal = Arc::new(MemoryJournal::default());
        let gate = Arc::new(Semaphore::new(0));
        let executor = Executor::new(
            journal.clone(),
            Arc::new(GateEffects { gate: gate.clone() }),
            Arc::new(ScriptPool::new(2, 16 * 1024 * 1024)),
            rhai::Dynamic::from_map(rhai::Map::new()),
        )
        .with_current_rules(handle.clone());
        let clock = Arc::new(ManualClock::new(now));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_scheduler(
            handle.clone(),
            executor.clone(),
            clock.clone() as Arc<dyn Clock>,
            state as Arc<dyn StateStore>,
            shutdown.clone(),
        ));
        Harness {
            dir,
            handle,
            executor,
            journal,
            clock,
            gate,
            shutdown,
            task: Some(task),
        }
    }

    /// When the scheduler will wake next (fails if it never sleeps).
    async fn next_wake(&self) -> DateTime<Utc> {
        tokio::time::timeout(Duration::from_secs(5), self.clock.next_wake())
            .await
            .expect("the scheduler never went to sleep")
    }

    /// Moves the clock from wake-up to wake-up up to `until`, returning the
    /// wake-ups. Each wake-up's runs finish before the clock moves on (a
    /// clock that outran them would meet mode `single`).
    async fn walk(&self, until: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut wakes = Vec::new();
        loop {
            let at = self.next_wake().await;
            self.executor.wait_idle().await;
            if at > until {
                return wakes;
            }
            self.clock.set(at);
            wakes.push(at);
        }
    }

    /// Waits until the scheduler sleeps until `at` (after a reload it may
    /// still sleep until the old time for a moment).
    async fn wake_becomes(&self, at: DateTime<Utc>) {
        let started = Instant::now();
        while self.next_wake().await != at {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the scheduler never planned {at}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits for every run, then returns the finished runs of `rule`, oldest first.
    async fn runs(&self, rule: &str) -> Vec<RunRecord> {
        // The firing of the latest wake-up is handed over before the scheduler sleeps again.
        self.next_wake().await;
        self.executor.wait_idle().await;
        self.journal
            .runs()
            .into_iter()
            .filter(|r| r.rule == rule)
            .collect()
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .unwrap()
                .unwrap();
        }
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

fn fired_at(runs: &[RunRecord]) -> Vec<DateTime<Utc>> {
    runs.iter()
        .map(|r| {
            let output = r.output.as_ref().unwrap_or_else(|| panic!("{r:?}"));
            let at = output["at"].as_str().unwrap();
            DateTime::parse_from_rfc3339(at)
                .unwrap()
                .with_timezone(&Utc)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_and_named_weekdays_fire_monday_to_friday() {
    let h = Harness::start(
        &[
            ("numeric", &rule("0 0 9 * * 1-5", "")),
            ("named", &rule("0 0 9 * * Mon-Fri", "")),
        ],
        utc(2026, 11, 22, 0, 0), // a Sunday
        Arc::new(MemoryState::default()),
    );
    let wakes = h.walk(utc(2026, 11, 29, 23, 59)).await;
    let days: Vec<Weekday> = wakes.iter().map(|w| w.weekday()).collect();
    use Weekday::*;
    assert_eq!(days, vec![Mon, Tue, Wed, Thu, Fri]);
    assert!(
        wakes
            .iter()
            .all(|w| w.format("%H:%M:%S").to_string() == "09:00:00")
    );

    let numeric = h.runs("numeric").await;
    let named = h.runs("named").await;
    assert_eq!(fired_at(&numeric), wakes);
    assert_eq!(fired_at(&named), wakes);
    for run in numeric.iter().chain(&named) {
        assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
        assert_eq!(run.event_type, "schedule");
    }
    assert_eq!(
        numeric[0].output.as_ref().unwrap()["source"],
        "schedule:numeric"
    );
    assert_eq!(
        numeric[0].event_id,
        format!("schedule:{}:numeric", wakes[0].timestamp_millis())
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spring_forward_fires_the_skipped_time_once_at_three() {
    // 2026-03-29: 02:00 CET becomes 03:00 CEST at 01:00 UTC; 02:30 does not exist.
    let h = Harness::start(
        &[(
            "nightly",
            &rule("0 30 2 * * *", "timezone: Europe/Berlin\n"),
        )],
        utc(2026, 3, 27, 12, 0),
        Arc::new(MemoryState::default()),
    );
    let wakes = h.walk(utc(2026, 3, 30, 12, 0)).await;
    let expected = vec![
        utc(2026, 3, 28, 1, 30), // 02:30 CET
        utc(2026, 3, 29, 1, 0),  // 03:00 CEST: the end of the gap
        utc(2026, 3, 30, 0, 30), // 02:30 CEST
    ];
    assert_eq!(wakes, expected);
    assert_eq!(fired_at(&h.runs("nightly").await), expected);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fall_back_fires_the_repeated_time_once() {
    // 2026-10-25: 03:00 CEST becomes 02:00 CET at 01:00 UTC; 02:30 happens twice.
    let h = Harness::start(
        &[(
            "nightly",
            &rule("0 30 2 * * *", "timezone: Europe/Berlin\n"),
        )],
        utc(2026, 10, 24, 12, 0),
        Arc::new(MemoryState::default()),
    );
    assert_eq!(h.next_wake().await, utc(2026, 10, 25, 0, 30));
    h.clock.set(utc(2026, 10, 25, 0, 30)); // the first 02:30, CEST
    assert_eq!(h.next_wake().await, utc(2026, 10, 26, 1, 30));
    // The clock passes the second 02:30 (CET): nothing fires.
    for minute in [29, 30, 31, 59] {
        h.clock.set(utc(2026, 10, 25, 1, minute));
        assert_eq!(h.next_wake().await, utc(2026, 10, 26, 1, 30));
    }
    let wakes = h.walk(utc(2026, 10, 26, 12, 0)).await;
    assert_eq!(wakes, vec![utc(2026, 10, 26, 1, 30)]);
    assert_eq!(
        fired_at(&h.runs("nightly").await),
        vec![utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_firings_fire_once_with_catch_up_and_not_at_all_without() {
    let rules = [
        ("eager", rule("0 0 9 * * *", "catch_up: true\n")),
        ("lazy", rule("0 0 9 * * *", "")),
    ];
    let rules: Vec<(&str, &str)> = rules.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let state = Arc::new(MemoryState::default());

    // Up on Monday morning, fires at 09:00, then goes down.
    let monday = utc(2026, 11, 23, 9, 0);
    let first = Harness::start(&rules, utc(2026, 11, 23, 8, 0), state.clone());
    assert_eq!(first.walk(monday).await, vec![monday]);
    assert_eq!(fired_at(&first.runs("eager").await), vec![monday]);
    assert_eq!(fired_at(&first.runs("lazy").await), vec![monday]);
    first.stop().await;
    let stored = state.get(SCHEDULE_STATE_RULE, "eager").unwrap().unwrap();
    assert_eq!(stored["fired_at"], "2026-11-23T09:00:00.000Z");

    // Back on Thursday at noon: Tuesday, Wednesday and Thursday 09:00 were missed.
    let thursday = utc(2026, 11, 26, 9, 0);
    let second = Harness::start(&rules, utc(2026, 11, 26, 12, 0), state.clone());
    assert_eq!(second.next_wake().await, utc(2026, 11, 27, 9, 0));
    let eager = second.runs("eager").await;
    assert_eq!(fired_at(&eager), vec![thursday], "once, for the latest");
    assert_eq!(
        eager[0].output.as_ref().unwrap()["previous"],
        "2026-11-23T09:00:00Z"
    );
    assert!(second.runs("lazy").await.is_empty(), "not replayed");

    // Both go on as usual.
    let friday = utc(2026, 11, 27, 9, 0);
    assert_eq!(second.walk(friday).await, vec![friday]);
    assert_eq!(
        fired_at(&second.runs("eager").await),
        vec![thursday, friday]
    );
    let lazy = second.runs("lazy").await;
    assert_eq!(fired_at(&lazy), vec![friday]);
    assert_eq!(
        lazy[0].output.as_ref().unwrap()["previous"],
        "2026-11-23T09:00:00Z"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_schedules_without_a_restart() {
    let h = Harness::start(
        &[("report", &rule("0 0 9 * * *", ""))],
        utc(2026, 11, 23, 8, 0),
        Arc::new(MemoryState::default()),
    );
    assert_eq!(h.next_wake().await, utc(2026, 11, 23, 9, 0));

    write(
        &h.dir.path().join("rules/report.yaml"),
        &rule("0 30 8 * * *", ""),
    );
    write(
        &h.dir.path().join("rules/added.yaml"),
        &rule("0 15 8 * * *", ""),
    );
    h.handle.reload().unwrap();
    h.wake_becomes(utc(2026, 11, 23, 8, 15)).await;
    let wakes = h.walk(utc(2026, 11, 23, 12, 0)).await;
    assert_eq!(
        wakes,
        vec![utc(2026, 11, 23, 8, 15), utc(2026, 11, 23, 8, 30)]
    );
    assert_eq!(
        fired_at(&h.runs("report").await),
        vec![utc(2026, 11, 23, 8, 30)]
    );
    assert_eq!(
        fired_at(&h.runs("added").await),
        vec![utc(2026, 11, 23, 8, 15)]
    );

    std::fs::remove_file(h.dir.path().join("rules/added.yaml")).unwrap();
    h.handle.reload().unwrap();
    h.wake_becomes(utc(2026, 11, 24, 8, 30)).await;
    let wakes = h.walk(utc(2026, 11, 24, 12, 0)).await;
    assert_eq!(
        wakes,
        vec![utc(2026, 11, 24, 8, 30)],
        "removed rule stopped"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlapping_firing_under_mode_single_is_skipped() {
    let slow = "schedule: \"* * * * * *\"\nallow: [slack]\ndo: |\n  slack::post(\"#c\", \"tick\");\n  event.scheduled_at\n";
    let h = Harness::start(
        &[("tick", slow)],
        utc(2026, 11, 23, 12, 0),
        Arc::new(MemoryState::default()),
    );
    let first = h.next_wake().await;
    h.clock.set(first);
    let second = h.next_wake().await;
    assert_eq!(second, first + chrono::Duration::seconds(1));
    h.clock.set(second);
    h.next_wake().await;
    // Wait until the second firing has been turned away, then let the first finish.
    let started = Instant::now();
    while !h
        .journal
        .runs()
        .iter()
        .any(|r| r.status == RunStatus::Skipped)
    {
        assert!(started.elapsed() < Duration::from_secs(5), "never skipped");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.gate.add_permits(10);
    let runs = h.runs("tick").await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].status, RunStatus::Succeeded);
    assert_eq!(runs[0].output, Some(json!("2026-11-23T12:00:01Z")));
    assert_eq!(runs[1].status, RunStatus::Skipped);
    assert_eq!(
        runs[1].error.as_deref(),
        Some("a run is already in flight (mode single)")
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_jumping_over_firings_fires_late_ones_only_within_the_grace_or_with_catch_up() {
    let rules = [
        ("eager", rule("0 0 * * * *", "catch_up: true\n")),
        ("lazy", rule("0 0 * * * *", "")),
    ];
    let rules: Vec<(&str, &str)> = rules.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let h = Harness::start(
        &rules,
        utc(2026, 11, 23, 8, 30),
        Arc::new(MemoryState::default()),
    );
    assert_eq!(h.next_wake().await, utc(2026, 11, 23, 9, 0));
    // Woken 30 s late: both fire.
    h.clock
        .set(utc(2026, 11, 23, 9, 0) + chrono::Duration::seconds(30));
    assert_eq!(h.next_wake().await, utc(2026, 11, 23, 10, 0));
    h.executor.wait_idle().await;
    // The machine sleeps from 09:00:30 to 12:20: 10:00, 11:00 and 12:00 are missed.
    h.clock.set(utc(2026, 11, 23, 12, 20));
    assert_eq!(h.next_wake().await, utc(2026, 11, 23, 13, 0));
    let nine = utc(2026, 11, 23, 9, 0);
    assert_eq!(
        fired_at(&h.runs("eager").await),
        vec![nine, utc(2026, 11, 23, 12, 0)]
    );
    assert_eq!(fired_at(&h.runs("lazy").await), vec![nine]);
    h.stop().await;
}
