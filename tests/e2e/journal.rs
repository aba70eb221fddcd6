//! End-to-end tests of the SQLite journal on real store files in temporary
//! directories: deduplication, group commit (with a throughput figure),
//! effect records surviving a killed process, resuming unfinished runs,
//! dead letters and requeue, pruning, rule state, and bad stores (corrupt,
//! unreadable, full).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use zoomwire_engine::effects::EffectError;
use zoomwire_engine::effects::gateway::{EffectObserver, EffectRecord, LogLine};
use zoomwire_engine::effects::state::StateStore;
use zoomwire_engine::engine::journal::{Journal, RunRecord, RunStatus};
use zoomwire_engine::event::{Event, Source};
use zoomwire_engine::journal::{
    DB_FILE, JournalOpenError, JournalOptions, RequeueOutcome, RunFilter, SqliteJournal,
};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn options() -> JournalOptions {
    JournalOptions {
        prune_interval: None,
        ..JournalOptions::default()
    }
}

fn open(dir: &Path) -> SqliteJournal {
    SqliteJournal::open(dir, options()).unwrap()
}

fn event(n: u64) -> Event {
    Event::from_value(
        &json!({
            "event": "meeting.started",
            "event_ts": 1_732_000_000_000u64 + n,
            "payload": {"account_id": "acc", "object": {"uuid": format!("uuid-{n}"), "topic": "Sync"}}
        }),
        Source::Websocket("default".into()),
    )
    .unwrap()
}

/// A realistic event: the sample `recording.completed` (about 2.4 KB) with its own timestamp.
fn recording_completed(n: u64) -> Event {
    let mut body: serde_json::Value = serde_json::from_str(include_str!(
        "../../examples/events/recording.completed.json"
    ))
    .unwrap();
    body["event_ts"] = json!(1_732_000_000_000u64 + n);
    // Another meeting each time: a recording's dedupe key is its meeting and files.
    body["payload"]["object"]["uuid"] = json!(format!("meeting-{n}=="));
    Event::from_value(&body, Source::Websocket("default".into())).unwrap()
}

fn received(mut event: Event, at: DateTime<Utc>) -> Event {
    event.received_at = at;
    event
}

fn run(id: &str, event: &Event, status: RunStatus, created_at: DateTime<Utc>) -> RunRecord {
    RunRecord {
        id: id.into(),
        rule: "rule-a".into(),
        event_id: event.id.clone(),
        event_type: event.event_type.clone(),
        key: None,
        status,
        attempt: 1,
        error: None,
        effects: vec![],
        logs: vec![],
        output: None,
        created_at,
        started_at: None,
        finished_at: status.is_finished().then_some(created_at),
    }
}

fn effect(seq: u32, text: &str) -> EffectRecord {
    EffectRecord {
        seq,
        name: "slack.post".into(),
        args: json!({"channel": "#ops", "text": text}),
        result: Ok(json!({"ok": true, "ts": format!("1.{seq}")})),
        unredacted: None,
        started_at: Utc::now(),
        latency_ms: 12.5,
        replayed: false,
        in_doubt: false,
    }
}

fn ago(duration: Duration) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(duration).unwrap()
}

#[tokio::test]
async fn duplicates_within_the_window_are_dropped_and_later_copies_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let journal = SqliteJournal::open(
        dir.path(),
        JournalOptions {
            dedupe_window: Duration::from_secs(3600),
            ..options()
        },
    )
    .unwrap();
    let first = received(event(1), ago(Duration::from_secs(7200)));
    assert!(journal.accept_event(&first).await.unwrap());
    let within = received(event(1), ago(Duration::from_secs(7000)));
    assert!(!journal.accept_event(&within).await.unwrap());
    let after = received(event(1), Utc::now());
    assert!(
        journal.accept_event(&after).await.unwrap(),
        "past the window"
    );
    assert!(journal.accept_event(&event(2)).await.unwrap());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |name: &str| {
            std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        // Checked while open: the log and the shared memory exist now.
        for file in [DB_FILE, "zoomwire.db-wal", "zoomwire.db-shm", "seal.key"] {
            assert_eq!(mode(file), 0o600, "{file} holds event bodies or secrets");
        }
        assert_eq!(mode("."), 0o700, "the data folder is its owner's");
    }
    drop(journal);

    // The window holds across a restart.
    let journal = open(dir.path());
    assert!(!journal.accept_event(&event(1)).await.unwrap());
    let stored = journal.get_event(&event(1).id).unwrap().unwrap();
    assert_eq!(stored.received_at, after.received_at);
    assert_eq!(&*stored.raw, &*after.raw);
    assert_eq!(stored.source, Source::Websocket("default".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_batches_many_concurrent_callers() {
    const EVENTS: u64 = 20_000;
    const CALLERS: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());

    // One caller at a time: every event waits for its own sync.
    let sequential: Vec<Event> = (0..300).map(|n| event(1_000_000 + n)).collect();
    let started = Instant::now();
    for event in &sequential {
        assert!(journal.accept_event(event).await.unwrap());
    }
    let sequential_rate = sequential.len() as f64 / started.elapsed().as_secs_f64();

    let before = journal.stats();
    let events: Arc<Vec<Event>> = Arc::new((0..EVENTS).map(recording_completed).collect());
    let started = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let journal = journal.clone();
            let events = events.clone();
            tokio::spawn(async move {
                let mut accepted = 0;
                for event in events
                    .iter()
                    .skip(caller as usize)
                    .step_by(CALLERS as usize)
                {
                    accepted += u64::from(journal.accept_event(event).await.unwrap());
                }
                accepted
            })
        })
        .collect();
    let mut accepted = 0;
    for caller in callers {
        accepted += caller.await.unwrap();
    }
    let elapsed = started.elapsed();
    let stats = journal.stats();
    let batches = stats.batches - before.batches;
    let jobs = stats.jobs - before.jobs;
    println!(
        "group commit: {EVENTS} events of {} bytes from {CALLERS} concurrent callers in {:.2}s = {:.0} events/s \
         ({batches} commits, {:.1} events per commit, largest {}); one caller at a time: {:.0} events/s",
        events[0].raw.len(),
        elapsed.as_secs_f64(),
        EVENTS as f64 / elapsed.as_secs_f64(),
        jobs as f64 / batches as f64,
        stats.largest_batch,
        sequential_rate,
    );
    assert_eq!(accepted, EVENTS);
    assert_eq!(jobs, EVENTS);
    assert!(
        batches * 10 < jobs,
        "{batches} commits for {jobs} events: requests are not batched"
    );
    assert_eq!(journal.counts().unwrap().events, EVENTS + 300);
}

/// Set in the child process of [`effect_records_survive_a_killed_process`].
const CRASH_DIR: &str = "ZOOMWIRE_TEST_CRASH_DIR";
const CRASH_MARKER: &str = "effects recorded, waiting to be killed";

/// Records a running run and two effects through the observer. Run as the
/// child of the crash test it then waits to be killed; run alone, it drops
/// the journal without closing it and checks the records from a new one.
#[test]
fn crash_child_records_effects() {
    let child_dir = std::env::var_os(CRASH_DIR);
    let temp = tempfile::tempdir().unwrap();
    let dir = child_dir
        .as_deref()
        .map(Path::new)
        .unwrap_or(temp.path())
        .to_path_buf();
    let journal = open(&dir);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let trigger = event(7);
    runtime.block_on(async {
        assert!(journal.accept_event(&trigger).await.unwrap());
        let mut record = run("run-crash", &trigger, RunStatus::Running, Utc::now());
        record.started_at = Some(Utc::now());
        journal.record_run(&record).await.unwrap();
    });
    // As the sandbox does: synchronously, right after each effect.
    let observer: &dyn EffectObserver = &journal;
    observer.effect_completed("run-crash", &effect(1, "posted before the crash"));
    observer.effect_completed("run-crash", &effect(2, "also posted"));
    if child_dir.is_some() {
        println!("{CRASH_MARKER}");
        std::thread::sleep(Duration::from_secs(60));
        panic!("the parent should have killed this process");
    }
    // No clean shutdown: the writer and its connection are leaked.
    std::mem::forget(journal);
    let reopened = open(&dir);
    let unfinished = runtime.block_on(reopened.unfinished_runs()).unwrap();
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0].run.effects.len(), 2);
}

#[tokio::test]
async fn effect_records_survive_a_killed_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "journal::crash_child_records_effects",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, marker) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(CRASH_MARKER) {
                let _ = lines.send(());
            }
        }
    });
    let ready = marker.recv_timeout(Duration::from_secs(60));
    child.kill().unwrap(); // SIGKILL: no destructor, no checkpoint, no clean close
    child.wait().unwrap();
    ready.expect("the child never reported its effects");
    assert!(
        dir.path().join(format!("{DB_FILE}-wal")).exists(),
        "the records are only in the write-ahead log"
    );

    let journal = open(dir.path());
    let unfinished = journal.unfinished_runs().await.unwrap();
    assert_eq!(unfinished.len(), 1);
    let resumed = &unfinished[0];
    assert_eq!(resumed.run.id, "run-crash");
    assert_eq!(resumed.run.status, RunStatus::Running);
    assert_eq!(resumed.event.id, event(7).id);
    let texts: Vec<_> = resumed
        .run
        .effects
        .iter()
        .map(|e| e.args["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["posted before the crash", "also posted"]);
    assert!(resumed.run.effects.iter().all(|e| e.result.is_ok()));
}

#[tokio::test]
async fn unfinished_runs_come_back_after_a_restart_oldest_first_with_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let base = ago(Duration::from_secs(600));
    let at = |s: i64| base + chrono::Duration::seconds(s);
    let events: Vec<Event> = (0..4).map(event).collect();
    for event in &events {
        journal.accept_event(event).await.unwrap();
    }
    let mut running = run("running", &events[0], RunStatus::Running, at(1));
    running.attempt = 2;
    running.effects = vec![effect(1, "one")];
    running.logs = vec![LogLine {
        level: "info".into(),
        message: "started".into(),
        at: at(1),
    }];
    let pending = run("pending", &events[1], RunStatus::Pending, at(2));
    let mut retrying = run("retrying", &events[2], RunStatus::Failed, at(3));
    retrying.finished_at = None;
    retrying.error = Some("slack.post: 503".into());
    let done = run("done", &events[3], RunStatus::Succeeded, at(0));
    let orphan = run("orphan", &event(99), RunStatus::Pending, at(4));
    for record in [&pending, &done, &retrying, &running, &orphan] {
        journal.record_run(record).await.unwrap();
    }
    journal.effect_completed("running", &effect(2, "two"));
    drop(journal);

    let journal = open(dir.path());
    let unfinished = journal.unfinished_runs().await.unwrap();
    let ids: Vec<_> = unfinished.iter().map(|u| u.run.id.as_str()).collect();
    assert_eq!(ids, ["running", "pending", "retrying"]);
    let first = &unfinished[0];
    assert_eq!(first.run.attempt, 2);
    assert_eq!(first.run.created_at, at(1));
    assert_eq!(first.run.logs.len(), 1);
    assert_eq!(first.run.effects.len(), 2);
    assert_eq!(first.run.effects[1].args["text"], "two");
    assert_eq!(first.event.id, events[0].id);
    assert_eq!(&*first.event.raw, &*events[0].raw);
    assert_eq!(first.event.received_at, events[0].received_at);
    assert_eq!(first.event.source, events[0].source);

    // The run whose event is gone is not dropped silently: it is dead, with a reason.
    let orphan = journal.get_run("orphan").unwrap().unwrap();
    assert_eq!(orphan.run.status, RunStatus::Dead);
    assert!(
        orphan
            .run
            .error
            .unwrap()
            .contains("event is no longer in the store"),
        "explains why"
    );
}

#[tokio::test]
async fn a_dead_run_is_listed_and_requeued_with_its_effects_kept() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let trigger = event(1);
    journal.accept_event(&trigger).await.unwrap();
    let mut dead = run("run-dead", &trigger, RunStatus::Dead, Utc::now());
    dead.attempt = 5;
    dead.error = Some("slack.post: 503 Service Unavailable".into());
    let mut failed_post = effect(2, "second");
    failed_post.result = Err(EffectError::transient("slack.post", "503"));
    dead.effects = vec![effect(1, "first"), failed_post];
    journal.record_run(&dead).await.unwrap();
    let other = run("run-ok", &trigger, RunStatus::Succeeded, Utc::now());
    journal.record_run(&other).await.unwrap();

    let failed = journal
        .list_runs(RunFilter {
            failed_only: true,
            ..RunFilter::default()
        })
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].id, "run-dead");
    let everything = journal.list_runs(RunFilter::default()).unwrap();
    assert_eq!(everything.len(), 2);
    let by_rule = journal
        .list_runs(RunFilter {
            rule: Some("other-rule".into()),
            ..RunFilter::default()
        })
        .unwrap();
    assert!(by_rule.is_empty());

    assert_eq!(
        journal.requeue_run("run-dead").await.unwrap(),
        RequeueOutcome::Requeued
    );
    assert_eq!(
        journal.requeue_run("run-ok").await.unwrap(),
        RequeueOutcome::NotFailed(RunStatus::Succeeded)
    );
    assert_eq!(
        journal.requeue_run("missing").await.unwrap(),
        RequeueOutcome::NotFound
    );
    let detail = journal.get_run("run-dead").unwrap().unwrap();
    assert_eq!(detail.run.status, RunStatus::Pending);
    assert_eq!(detail.run.attempt, 1);
    assert_eq!(detail.run.error, None);
    assert_eq!(detail.run.effects.len(), 2, "kept for replay");
    let unfinished = journal.unfinished_runs().await.unwrap();
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0].run.effects[0].args["text"], "first");
    assert!(unfinished[0].run.effects[1].result.is_err());
}

#[tokio::test]
async fn run_details_show_the_trigger_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let trigger = Event::parse(
        include_str!("../../examples/events/recording.completed.json"),
        Source::Webhook,
    )
    .unwrap();
    journal.accept_event(&trigger).await.unwrap();
    journal
        .record_run(&run("r", &trigger, RunStatus::Succeeded, Utc::now()))
        .await
        .unwrap();
    let detail = journal.get_run("r").unwrap().unwrap();
    let event = detail.event.as_ref().unwrap();
    assert_eq!(event.event_type, "recording.completed");
    assert_eq!(event.source, "webhook");
    assert!(
        event.body.get("download_token").is_none(),
        "taken out at intake"
    );
    let json = serde_json::to_value(&detail).unwrap();
    assert_eq!(json["id"], "r");
    assert_eq!(json["event"]["type"], "recording.completed");
    assert!(!json.to_string().contains("eyJ0eXAi"), "no download token");
    // The store keeps the token sealed, apart from the body: a resumed
    // download needs it, a reader of the files does not find it.
    drop(journal);
    let journal = open(dir.path());
    let stored = journal.get_event(&trigger.id).unwrap().unwrap();
    let token = stored.download_token().expect("kept sealed");
    assert!(secrecy::ExposeSecret::expose_secret(&**token).starts_with("eyJ0eXAi"));
    assert_no_token_in_store_files(dir.path(), "eyJ0eXAi");
}

/// No file of the data folder (the store, its log, the key) holds `needle`.
fn assert_no_token_in_store_files(dir: &Path, needle: &str) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{} holds it",
            path.display()
        );
    }
}

#[tokio::test]
async fn a_store_from_before_sealed_tokens_has_them_taken_out_of_its_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let trigger = recording_completed(7);
    {
        // A store as zoomwire wrote it before schema version 4 (version 3 has the
        // effects in doubt): the token in the body.
        let journal = open(dir.path());
        journal.accept_event(&trigger).await.unwrap();
    }
    let body_with_token = {
        let mut body: serde_json::Value = serde_json::from_str(&trigger.raw).unwrap();
        body.as_object_mut()
            .unwrap()
            .insert("download_token".into(), json!("old-store-download-token"));
        body.to_string()
    };
    {
        let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute(
            "UPDATE events SET raw = ?1, sealed_token = NULL",
            [&body_with_token],
        )
        .unwrap();
        conn.execute_batch(
            "ALTER TABLE events DROP COLUMN sealed_token;
             ALTER TABLE effects DROP COLUMN sealed_result;
             CREATE INDEX runs_rule ON runs(rule, created_at);
             PRAGMA user_version = 3;",
        )
        .unwrap();
    }
    let journal = open(dir.path());
    let stored = journal.get_event(&trigger.id).unwrap().unwrap();
    assert!(!stored.raw.contains("download_token"), "{}", stored.raw);
    let token = stored.download_token().expect("sealed apart");
    assert_eq!(
        secrecy::ExposeSecret::expose_secret(&**token),
        "old-store-download-token"
    );
    drop(journal);
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    drop(conn);
    assert_no_token_in_store_files(dir.path(), "old-store-download-token");
}

#[tokio::test]
async fn a_store_from_before_events_answered_dedupe_keeps_its_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (stored, pruned) = (event(1), event(2));
    {
        let journal = open(dir.path());
        assert!(journal.accept_event(&stored).await.unwrap());
    }
    {
        // As zoomwire wrote it before schema version 5: a dedupe row for every
        // event, stored or pruned within its window.
        let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch(&format!(
            "INSERT INTO dedupe (id, received_at, expires_at)
                 SELECT id, received_at, received_at + 3600000000000 FROM events;
             INSERT INTO dedupe (id, received_at, expires_at)
                 VALUES ('{}', {now}, {now} + 3600000000000);
             CREATE INDEX runs_rule ON runs(rule, created_at);
             PRAGMA user_version = 4;",
            pruned.id,
            now = Utc::now().timestamp_nanos_opt().unwrap()
        ))
        .unwrap();
    }
    let journal = open(dir.path());
    assert_eq!(
        journal.counts().unwrap().dedupe,
        1,
        "the stored event's entry went, the pruned one's stays"
    );
    assert!(!journal.accept_event(&stored).await.unwrap());
    assert!(!journal.accept_event(&pruned).await.unwrap());
    assert!(journal.is_duplicate(&stored.id).unwrap());
    assert!(journal.is_duplicate(&pruned.id).unwrap());
    assert!(!journal.is_duplicate(&event(3).id).unwrap());
    assert!(journal.accept_event(&event(3)).await.unwrap());
}

#[tokio::test]
async fn a_resumed_run_replays_the_unredacted_result_which_the_store_keeps_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let trigger = event(9);
    let journal = open(dir.path());
    journal.accept_event(&trigger).await.unwrap();
    let mut pending = run("resumed", &trigger, RunStatus::Running, Utc::now());
    pending.effects = vec![EffectRecord {
        seq: 1,
        name: "zoom.get".into(),
        args: json!({"path": "/meetings/1"}),
        result: Ok(json!({"join_url": "https://zoom.us/j/1?pwd=[redacted]"})),
        unredacted: Some(json!({"join_url": "https://zoom.us/j/1?pwd=sealed-meeting-pwd"})),
        started_at: Utc::now(),
        latency_ms: 1.0,
        replayed: false,
        in_doubt: false,
    }];
    journal.record_run(&pending).await.unwrap();
    let shown = journal.get_run("resumed").unwrap().unwrap();
    assert_eq!(
        shown.run.effects[0].unredacted, None,
        "history never opens it"
    );
    assert!(
        !serde_json::to_string(&shown)
            .unwrap()
            .contains("sealed-meeting-pwd")
    );
    drop(journal);
    assert_no_token_in_store_files(dir.path(), "sealed-meeting-pwd");
    let journal = open(dir.path());
    let unfinished = journal.unfinished_runs().await.unwrap();
    assert_eq!(
        unfinished[0].run.effects[0].unredacted,
        Some(json!({"join_url": "https://zoom.us/j/1?pwd=sealed-meeting-pwd"}))
    );
    drop(journal);
    // Without its key, the sealed result reads as absent: the redacted copy is replayed.
    std::fs::write(dir.path().join("seal.key"), [7u8; 32]).unwrap();
    let journal = open(dir.path());
    let unfinished = journal.unfinished_runs().await.unwrap();
    assert_eq!(unfinished[0].run.effects[0].unredacted, None);
}

#[tokio::test]
async fn the_runs_command_lists_and_retries() {
    use zoomwire::commands::CommandError;
    use zoomwire::commands::runs;
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("none");
    assert!(
        runs::list(&nowhere, None, false, false, false)
            .await
            .is_ok()
    );
    assert!(!nowhere.join(DB_FILE).exists(), "listing creates no store");

    let journal = open(dir.path());
    let trigger = event(1);
    journal.accept_event(&trigger).await.unwrap();
    let mut dead = run("run-dead", &trigger, RunStatus::Dead, Utc::now());
    dead.error = Some("boom".into());
    journal.record_run(&dead).await.unwrap();
    // The daemon keeps its journal open while the command runs.
    assert!(
        runs::list(dir.path(), None, true, false, true)
            .await
            .is_ok()
    );
    assert!(runs::retry(dir.path(), "run-dead").await.is_ok());
    let again = runs::retry(dir.path(), "run-dead").await.unwrap_err();
    assert!(again.to_string().contains("not over yet"), "{again}");
    let unknown = runs::retry(dir.path(), "nope").await.unwrap_err();
    assert!(matches!(unknown, CommandError::Usage(_)), "{unknown}");
    assert_eq!(
        journal.get_run("run-dead").unwrap().unwrap().run.status,
        RunStatus::Pending
    );
}

#[tokio::test]
async fn pruning_forgets_old_rows_but_never_unfinished_runs_or_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let old = ago(40 * DAY);
    let old_events: Vec<Event> = (0..3).map(|n| received(event(n), old)).collect();
    for event in &old_events {
        journal.accept_event(event).await.unwrap();
    }
    let recent = event(10);
    journal.accept_event(&recent).await.unwrap();
    let mut old_done = run("old-done", &old_events[0], RunStatus::Succeeded, old);
    old_done.effects = vec![effect(1, "x")];
    old_done.logs = vec![LogLine {
        level: "info".into(),
        message: "m".into(),
        at: old,
    }];
    journal.record_run(&old_done).await.unwrap();
    let old_dead = run("old-dead", &old_events[1], RunStatus::Dead, old);
    journal.record_run(&old_dead).await.unwrap();
    let old_pending = run("old-pending", &old_events[2], RunStatus::Pending, old);
    journal.record_run(&old_pending).await.unwrap();
    let new_done = run("new-done", &recent, RunStatus::Succeeded, Utc::now());
    journal.record_run(&new_done).await.unwrap();

    let report = tokio::task::spawn_blocking({
        let journal = journal.clone();
        move || journal.prune()
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(report.runs, 2);
    assert_eq!(report.events, 2);
    assert_eq!(
        report.dedupe, 0,
        "an event's row is its dedupe entry: nothing was kept apart"
    );
    assert!(journal.get_run("old-done").unwrap().is_none());
    assert!(journal.get_run("old-dead").unwrap().is_none());
    assert!(journal.get_run("new-done").unwrap().is_some());
    let unfinished = journal.unfinished_runs().await.unwrap();
    assert_eq!(
        unfinished.len(),
        1,
        "the old pending run and its event stay"
    );
    assert_eq!(unfinished[0].event.id, old_events[2].id);
    let counts = journal.counts().unwrap();
    assert_eq!(
        (counts.runs, counts.events, counts.effects, counts.logs),
        (2, 2, 0, 0)
    );
    assert_eq!(
        counts.dedupe, 0,
        "the pruned events' windows had passed: none is kept as a duplicate"
    );
}

#[tokio::test]
async fn pruning_keeps_the_row_budget_dropping_the_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let journal = SqliteJournal::open(
        dir.path(),
        JournalOptions {
            max_runs: 100,
            max_events: 50,
            ..options()
        },
    )
    .unwrap();
    let base = ago(Duration::from_secs(3600));
    for n in 0..1_200u64 {
        let event = received(event(n), base + chrono::Duration::milliseconds(n as i64));
        journal.accept_event(&event).await.unwrap();
        let created = base + chrono::Duration::milliseconds(n as i64);
        let status = if n == 0 {
            RunStatus::Pending
        } else {
            RunStatus::Succeeded
        };
        journal
            .record_run(&run(&format!("run-{n:04}"), &event, status, created))
            .await
            .unwrap();
    }
    let journal_for_prune = journal.clone();
    let report = tokio::task::spawn_blocking(move || journal_for_prune.prune())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.runs, 1_100);
    assert_eq!(report.events, 1_150);
    let counts = journal.counts().unwrap();
    assert_eq!((counts.runs, counts.events), (100, 50));
    let kept = journal
        .list_runs(RunFilter {
            limit: 1_000,
            ..RunFilter::default()
        })
        .unwrap();
    assert_eq!(kept[0].id, "run-1199", "newest kept");
    assert_eq!(kept[98].id, "run-1101");
    assert_eq!(
        kept[99].id, "run-0000",
        "unfinished, kept beyond the budget"
    );
    assert!(journal.get_event(&event(0).id).unwrap().is_some());
    assert!(journal.get_event(&event(1).id).unwrap().is_none());
    // Pruned within their dedupe window: still known, a re-delivery is dropped.
    assert_eq!(counts.dedupe, 1_150);
    assert!(journal.is_duplicate(&event(1).id).unwrap());
    assert!(!journal.accept_event(&event(1)).await.unwrap());
    assert!(journal.get_event(&event(1).id).unwrap().is_none());
}

#[tokio::test]
async fn the_background_pruner_runs_on_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let journal = SqliteJournal::open(
        dir.path(),
        JournalOptions {
            prune_interval: Some(Duration::from_millis(20)),
            ..JournalOptions::default()
        },
    )
    .unwrap();
    let old = received(event(1), ago(40 * DAY));
    journal.accept_event(&old).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while journal.counts().unwrap().events > 0 {
        assert!(Instant::now() < deadline, "the old event was never pruned");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn state_persists_across_a_restart_until_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    journal
        .set("rule-a", "last", json!({"uuid": "abc", "count": 3}), None)
        .unwrap();
    journal
        .set("rule-a", "short", json!(1), Some(Duration::from_millis(1)))
        .unwrap();
    journal
        .set("rule-b", "last", json!("other rule"), Some(DAY))
        .unwrap();
    std::thread::sleep(Duration::from_millis(5));
    drop(journal);

    let journal = open(dir.path());
    assert_eq!(
        journal.get("rule-a", "last").unwrap(),
        Some(json!({"uuid": "abc", "count": 3}))
    );
    assert_eq!(journal.get("rule-a", "short").unwrap(), None, "expired");
    assert_eq!(
        journal.get("rule-b", "last").unwrap(),
        Some(json!("other rule"))
    );
    journal.set("rule-a", "last", json!(null), None).unwrap();
    assert_eq!(journal.get("rule-a", "last").unwrap(), Some(json!(null)));
    assert_eq!(
        journal.prune().unwrap().state,
        1,
        "the expired value is deleted"
    );
}

#[test]
fn a_store_full_of_garbage_is_refused_naming_the_file_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    let garbage = b"this is not a database, but it is someone's data\n".repeat(200);
    std::fs::write(&path, &garbage).unwrap();
    let error = SqliteJournal::open(dir.path(), options()).unwrap_err();
    assert!(matches!(error, JournalOpenError::Corrupt { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("corrupt or unreadable"), "{message}");
    assert_eq!(std::fs::read(&path).unwrap(), garbage, "never recreated");
}

#[tokio::test]
async fn a_damaged_page_is_found_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    {
        let journal = open(dir.path());
        for n in 0..400 {
            journal.accept_event(&event(n)).await.unwrap();
        }
    }
    // The last connection closed cleanly: everything is in the main file now.
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 16 * 4096, "{} bytes", bytes.len());
    let middle = bytes.len() / 2;
    bytes[middle..middle + 4096].fill(0xA5);
    std::fs::write(&path, &bytes).unwrap();
    let error = SqliteJournal::open(dir.path(), options()).unwrap_err();
    assert!(matches!(error, JournalOpenError::Corrupt { .. }), "{error}");
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
}

#[test]
fn an_unreadable_store_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    std::fs::create_dir(&path).unwrap();
    let error = SqliteJournal::open(dir.path(), options()).unwrap_err();
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
    assert!(path.is_dir(), "left as it was");
}

/// Accepts big events until the store refuses one; returns the accepted count
/// and the refused event with its error.
async fn fill(journal: &SqliteJournal, first: u64) -> (u64, Event, String) {
    let pad = "x".repeat(16 * 1024);
    for n in first.. {
        let event = Event::from_value(
            &json!({"event": "meeting.started", "event_ts": n, "payload": {"object": {"id": n}, "pad": pad}}),
            Source::Fire,
        )
        .unwrap();
        if let Err(error) = journal.accept_event(&event).await {
            return (n - first, event, error.0);
        }
        assert!(n < first + 100_000, "the store never filled up");
    }
    unreachable!()
}

#[tokio::test]
async fn a_full_store_refuses_the_event_and_accepts_nothing_it_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let capped = JournalOptions {
        max_size_bytes: Some(512 * 1024),
        ..options()
    };
    let journal = SqliteJournal::open(dir.path(), capped).unwrap();
    let (accepted, refused, error) = fill(&journal, 0).await;
    assert!(accepted > 5, "{accepted}");
    assert!(error.contains("is full"), "{error}");
    assert!(error.contains(DB_FILE), "{error}");
    assert_eq!(journal.counts().unwrap().events, accepted);
    // Every event accepted before is intact, and the refused one is not there.
    assert!(journal.get_event(&refused.id).unwrap().is_none());
    drop(journal);
    let journal = open(dir.path());
    assert!(
        journal.accept_event(&refused).await.unwrap(),
        "the refused event was never counted as seen"
    );
}

/// A 1 MiB tmpfs mounted on a directory, unmounted on drop.
struct TinyFileSystem(std::path::PathBuf);

impl TinyFileSystem {
    fn mount(dir: &Path) -> Option<TinyFileSystem> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| TinyFileSystem(dir.to_path_buf()))
    }
}

impl Drop for TinyFileSystem {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// On a real file system that runs out of space when one can be mounted
/// (as root), else under the store's size cap: intake stops with an error
/// naming the store, nothing unwritten counts as accepted, and on the real
/// file system intake resumes once space is back.
#[tokio::test]
async fn a_full_disk_pauses_intake_until_space_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let tiny = TinyFileSystem::mount(&data);
    let options = JournalOptions {
        max_size_bytes: tiny.is_none().then_some(512 * 1024),
        ..options()
    };
    let journal = SqliteJournal::open(&data, options).unwrap();
    let filler = data.join("filler");
    if tiny.is_some() {
        std::fs::write(&filler, vec![0u8; 300 * 1024]).unwrap();
    }
    let (accepted, refused, error) = fill(&journal, 0).await;
    println!(
        "full disk ({}): {accepted} events accepted, then: {error}",
        if tiny.is_some() {
            "1 MiB tmpfs"
        } else {
            "size cap"
        }
    );
    assert!(error.contains("is full"), "{error}");
    assert!(error.contains(DB_FILE), "{error}");
    assert!(journal.get_event(&refused.id).unwrap().is_none());
    assert_eq!(journal.counts().unwrap().events, accepted);
    if tiny.is_some() {
        std::fs::remove_file(&filler).unwrap();
        assert!(
            journal.accept_event(&refused).await.unwrap(),
            "intake resumes with space"
        );
        drop(journal);
        let journal = open(&data);
        assert_eq!(journal.counts().unwrap().events, accepted + 1);
        drop(journal);
    }
    drop(tiny);
}
