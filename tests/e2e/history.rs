//! Run history a page at a time from a real SQLite store: cursors that walk
//! every run exactly once (ties included), filters by rule and status, a
//! run with 10,000 log lines read a page at a time, and a store of 100,000
//! runs whose list queries and admin pages stay fast (figures printed; run
//! with `--nocapture` to see them).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use zoomwire_engine::admin::{AdminOptions, AdminState, serve_admin};
use zoomwire_engine::effects::gateway::{EffectObserver, EffectRecord, LogLine};
use zoomwire_engine::engine::journal::{Journal, RunRecord, RunStatus};
use zoomwire_engine::event::{Event, Source};
use zoomwire_engine::journal::history::{RunHistory, RunQuery, TraceQuery};
use zoomwire_engine::journal::{JournalOptions, JournalSync, SqliteJournal};
use zoomwire_engine::reload::RuleSetHandle;
use zoomwire_engine::rules::RuleSources;
use zoomwire_engine::script::SandboxLimits;

fn open(dir: &Path) -> SqliteJournal {
    let options = JournalOptions {
        prune_interval: None,
        sync: JournalSync::Normal,
        ..JournalOptions::default()
    };
    SqliteJournal::open(dir, options).unwrap()
}

fn event(n: u64) -> Event {
    Event::from_value(
        &json!({"event": "meeting.ended", "event_ts": 1_732_000_000_000u64 + n,
                "payload": {"object": {"uuid": format!("u{n}"), "topic": "Sync"}}}),
        Source::Webhook,
    )
    .unwrap()
}

fn run(id: &str, rule: &str, event: &Event, status: RunStatus, at: DateTime<Utc>) -> RunRecord {
    RunRecord {
        id: id.into(),
        rule: rule.into(),
        event_id: event.id.clone(),
        event_type: event.event_type.clone(),
        key: None,
        status,
        attempt: 1,
        error: (status == RunStatus::Dead).then(|| "slack said no".into()),
        effects: Vec::new(),
        logs: Vec::new(),
        output: None,
        created_at: at,
        started_at: Some(at),
        finished_at: status.is_finished().then_some(at),
    }
}

fn ids(runs: &[zoomwire_engine::journal::RunSummary]) -> Vec<&str> {
    runs.iter().map(|r| r.id.as_str()).collect()
}

#[tokio::test]
async fn pages_walk_every_run_once_newest_first_through_ties() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let trigger = event(1);
    journal.accept_event(&trigger).await.unwrap();
    let at = |second: u32| Utc.with_ymd_and_hms(2026, 1, 2, 9, 0, second).unwrap();
    // Three runs share one creation time: the id orders them.
    let records = [
        run("a", "archive", &trigger, RunStatus::Succeeded, at(1)),
        run("b", "notify", &trigger, RunStatus::Dead, at(2)),
        run("c", "archive", &trigger, RunStatus::Failed, at(2)),
        run("d", "notify", &trigger, RunStatus::Succeeded, at(2)),
        run("e", "archive", &trigger, RunStatus::Dead, at(3)),
    ];
    for record in &records {
        journal.record_run(record).await.unwrap();
    }
    let mut query = RunQuery {
        limit: 2,
        ..RunQuery::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = journal.runs_page(&query).unwrap();
        assert!(page.runs.len() <= 2);
        seen.extend(page.runs.iter().map(|r| r.id.clone()));
        match page.next {
            Some(next) => query.before = Some(next.to_string().parse().unwrap()),
            None => break,
        }
    }
    assert_eq!(seen, ["e", "d", "c", "b", "a"]);

    let failed = RunQuery {
        statuses: vec![RunStatus::Failed, RunStatus::Dead],
        limit: 10,
        ..RunQuery::default()
    };
    assert_eq!(
        ids(&journal.runs_page(&failed).unwrap().runs),
        ["e", "c", "b"]
    );
    let archive_failed = RunQuery {
        rule: Some("archive".into()),
        ..failed.clone()
    };
    assert_eq!(
        ids(&journal.runs_page(&archive_failed).unwrap().runs),
        ["e", "c"]
    );
    // Failed and dead merged across pages keep the order.
    let mut two = RunQuery { limit: 2, ..failed };
    let first = journal.runs_page(&two).unwrap();
    assert_eq!(ids(&first.runs), ["e", "c"]);
    two.before = first.next;
    let second = journal.runs_page(&two).unwrap();
    assert_eq!(ids(&second.runs), ["b"]);
    assert_eq!(second.next, None);

    let activity = journal.rule_activity("archive", at(0), 2).unwrap();
    assert_eq!(ids(&activity.recent), ["e", "c"]);
    assert_eq!(activity.counts["dead"], 1);
    assert_eq!(activity.counts["failed"], 1);
    assert_eq!(activity.counts["succeeded"], 1);
    let recent = journal.rule_activity("archive", at(2), 5).unwrap();
    assert_eq!(
        recent.counts.get("succeeded"),
        None,
        "counts start at `since`"
    );
}

#[tokio::test]
async fn a_run_with_ten_thousand_log_lines_is_read_a_page_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let trigger = event(2);
    journal.accept_event(&trigger).await.unwrap();
    let start = Utc::now();
    let mut record = run("big", "chatty", &trigger, RunStatus::Succeeded, start);
    record.logs = (0..10_000)
        .map(|n| LogLine {
            level: "info".into(),
            message: format!("line {n:05} {}", "x".repeat(200)),
            at: start + chrono::TimeDelta::milliseconds(n),
        })
        .collect();
    journal.record_run(&record).await.unwrap();
    for seq in 1..=300u32 {
        let effect = EffectRecord {
            seq,
            name: "slack.post".into(),
            args: json!({"channel": "#ops", "text": format!("post {seq}")}),
            result: Ok(json!({"ok": true})),
            unredacted: None,
            started_at: start + chrono::TimeDelta::milliseconds(i64::from(seq) * 30),
            latency_ms: 2.0,
            replayed: false,
            in_doubt: false,
        };
        journal.effect_completed("big", &effect);
    }

    let mut query = TraceQuery {
        limit: 100,
        ..TraceQuery::default()
    };
    let first = journal.run_trace("big", &query).unwrap().unwrap();
    assert_eq!(first.logs.len(), 100);
    assert_eq!(first.effects.len(), 100);
    assert_eq!((first.logs_total, first.effects_total), (10_000, 300));
    let json = serde_json::to_string(&first).unwrap();
    assert!(
        json.len() < 100_000,
        "one page, not the whole run: {} bytes",
        json.len()
    );

    let mut lines = 0;
    let mut last = None;
    let mut pages = 0;
    loop {
        let page = journal.run_trace("big", &query).unwrap().unwrap();
        pages += 1;
        for log in &page.logs {
            let position = (log.attempt, log.idx);
            assert!(Some(position) > last, "in order, each once");
            last = Some(position);
        }
        lines += page.logs.len();
        match page.logs_next {
            Some(next) => query.logs_after = Some(next),
            None => break,
        }
    }
    assert_eq!((lines, pages), (10_000, 100));
    let effects_page = journal
        .run_trace(
            "big",
            &TraceQuery {
                effects_after: Some(250),
                limit: 100,
                ..TraceQuery::default()
            },
        )
        .unwrap()
        .unwrap();
    assert_eq!(effects_page.effects.first().map(|e| e.seq), Some(251));
    assert_eq!(effects_page.effects.len(), 50);
    assert_eq!(effects_page.effects_next, None);

    // The API and the trace page answer with one page too.
    let shutdown = CancellationToken::new();
    let (addr, _) = serve_admin(
        AdminOptions::loopback("127.0.0.1:0".parse().unwrap()),
        AdminState::new(),
        Arc::new(journal.clone()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let get = |path: String| async move {
        let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.text().await.unwrap()
    };
    let api = get("/api/runs/big".into()).await;
    assert!(
        api.len() < 100_000,
        "GET /api/runs/big: {} bytes",
        api.len()
    );
    let body: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(body["logs"].as_array().unwrap().len(), 100);
    assert_eq!(body["logs_total"], 10_000);
    assert_eq!(body["logs_next"], "1.99");
    let next = get("/api/runs/big?logs_after=1.99&effects_after=300".into()).await;
    let body: serde_json::Value = serde_json::from_str(&next).unwrap();
    assert_eq!(
        body["logs"][0]["message"].as_str().unwrap()[..10],
        *"line 00100"
    );
    assert_eq!(body["effects"], json!([]));
    let page = get("/ui/runs/big".into()).await;
    assert!(page.len() < 200_000, "the trace page: {} bytes", page.len());
    assert!(page.contains("10000 log lines"), "the total is shown");
    assert!(page.contains("Show more"), "and the rest a page at a time");
    shutdown.cancel();
}

const RULES: [&str; 10] = [
    "archive", "notify", "welcome", "report", "cleanup", "sync", "audit", "billing", "survey",
    "tag",
];

/// 100,000 runs over 10 rules, a few in every status, written the way the
/// daemon writes them (events with their runs, many commits at once).
async fn seed(journal: &SqliteJournal, runs: usize) {
    let per_event = 10;
    let base = Utc::now() - chrono::TimeDelta::hours(30);
    let mut pending = Vec::new();
    for n in 0..runs / per_event {
        let journal = journal.clone();
        pending.push(async move {
            let trigger = event(1_000 + n as u64);
            let records: Vec<RunRecord> = (0..per_event)
                .map(|k| {
                    let i = n * per_event + k;
                    let status = match i % 50 {
                        0 => RunStatus::Dead,
                        1 | 2 => RunStatus::Failed,
                        3 => RunStatus::Skipped,
                        _ => RunStatus::Succeeded,
                    };
                    let at = base + chrono::TimeDelta::milliseconds(i as i64 * 1_000);
                    run(
                        &format!("r{i:07}"),
                        RULES[i % RULES.len()],
                        &trigger,
                        status,
                        at,
                    )
                })
                .collect();
            journal
                .accept_event_with_runs(&trigger, &records)
                .await
                .unwrap();
        });
        if pending.len() == 500 {
            futures_util::future::join_all(pending.drain(..)).await;
        }
    }
    futures_util::future::join_all(pending).await;
}

/// The median of a few timings of `f`.
async fn timed<F, Fut>(what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        f().await;
        times.push(started.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    println!("{what}: {:.2} ms", median.as_secs_f64() * 1000.0);
    median
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_stay_fast_with_a_hundred_thousand_runs() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let started = Instant::now();
    seed(&journal, 100_000).await;
    println!(
        "seeded 100,000 runs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(journal.counts().unwrap().runs, 100_000);

    // Straight from the store: every list is one walk down an index.
    let bound = Duration::from_millis(100);
    let cases = [
        ("newest page", RunQuery::default()),
        (
            "one rule",
            RunQuery {
                rule: Some("audit".into()),
                ..RunQuery::default()
            },
        ),
        (
            "dead",
            RunQuery {
                statuses: vec![RunStatus::Dead],
                ..RunQuery::default()
            },
        ),
        (
            "failed and dead of one rule",
            RunQuery {
                rule: Some("archive".into()),
                statuses: vec![RunStatus::Failed, RunStatus::Dead],
                ..RunQuery::default()
            },
        ),
    ];
    for (name, mut query) in cases {
        query.limit = 50;
        let elapsed = timed(&format!("store: {name}"), || {
            let journal = journal.clone();
            let query = query.clone();
            async move {
                let page = journal.runs_page(&query).unwrap();
                assert_eq!(page.runs.len(), 50);
            }
        })
        .await;
        assert!(elapsed < bound, "{name} took {elapsed:?}");
    }
    // A page deep in the history costs what the first one does.
    let mut query = RunQuery {
        limit: 50,
        ..RunQuery::default()
    };
    for _ in 0..1_000 {
        query.before = journal.runs_page(&query).unwrap().next;
    }
    let deep = timed("store: page 1,001", || {
        let journal = journal.clone();
        let query = query.clone();
        async move {
            assert_eq!(journal.runs_page(&query).unwrap().runs.len(), 50);
        }
    })
    .await;
    assert!(deep < bound, "page 1,001 took {deep:?}");
    let since = Utc::now() - chrono::TimeDelta::hours(24);
    let counts = timed("store: one rule's counts and recent runs", || {
        let journal = journal.clone();
        async move {
            let activity = journal.rule_activity("notify", since, 10).unwrap();
            assert_eq!(activity.recent.len(), 10);
        }
    })
    .await;
    assert!(counts < bound, "counts took {counts:?}");

    // Through the admin server, pages rendered, with the ten rules loaded.
    let rules_dir = dir.path().join("rules");
    std::fs::create_dir_all(&rules_dir).unwrap();
    for rule in RULES {
        let yaml = format!("name: {rule}\non: meeting.ended\ndo: 'log::info(\"x\")'\n");
        std::fs::write(rules_dir.join(format!("{rule}.yaml")), yaml).unwrap();
    }
    let sources = RuleSources {
        paths: vec![rules_dir],
        scripts_dir: dir.path().join("scripts"),
    };
    let state = AdminState::new();
    state.show_rules(Arc::new(
        RuleSetHandle::load(sources, SandboxLimits::default()).unwrap(),
    ));
    let shutdown = CancellationToken::new();
    let history: Arc<dyn RunHistory> = Arc::new(journal.clone());
    let (addr, _) = serve_admin(
        AdminOptions::loopback("127.0.0.1:0".parse().unwrap()),
        state,
        history,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let page_bound = Duration::from_millis(250);
    for (path, rows) in [
        ("/ui/runs", 50),
        ("/ui/runs?rule=archive&status=dead", 50),
        ("/ui/dead", 50),
        ("/ui/rules", 10),
        ("/api/runs?limit=100", 100),
        ("/api/runs?status=failed,dead", 100),
        ("/ui/runs/r0099999", 0),
    ] {
        let url = format!("http://{addr}{path}");
        let body = client.get(&url).send().await.unwrap().text().await.unwrap();
        let shown = if path.starts_with("/api") {
            body.matches("\"rule\":").count()
        } else if path == "/ui/rules" {
            body.matches("class=\"dots\"").count()
        } else {
            body.matches("data-run=").count()
        };
        assert_eq!(shown, rows, "{path}");
        let elapsed = timed(&format!("GET {path}"), || {
            let client = client.clone();
            let url = url.clone();
            async move {
                let response = client.get(&url).send().await.unwrap();
                assert_eq!(response.status(), 200, "{url}");
                response.bytes().await.unwrap();
            }
        })
        .await;
        assert!(elapsed < page_bound, "{path} took {elapsed:?}");
    }
    shutdown.cancel();
}
