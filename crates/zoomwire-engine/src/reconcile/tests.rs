//! The reconciler's decisions with a scripted source of missed events and
//! paused time: which windows passes look at, what is fed and what is
//! known, and when passes run (start-up, gaps, sweeps). The REST side is
//! tested against the simulator in `tests/e2e/reconcile.rs`.

use std::collections::HashSet;
use std::sync::Mutex;

use serde_json::{Value, json};

use super::*;
use crate::effects::state::MemoryState;
use crate::rules::RuleSources;
use crate::script::SandboxLimits;
use crate::zoom::missed::Candidate;
use crate::zoom::ratelimit::LimitError;
use crate::zoom::websocket::Gap;
use futures_util::future::BoxFuture;

/// One recording, listed by every call for it; the other kinds find nothing.
#[derive(Default)]
struct Scripted {
    /// Each `find`: its kind, window and the tokio time it came at.
    calls: Mutex<Vec<(MissedKind, Window, Instant)>>,
    completed: Mutex<u32>,
    /// `meeting.ended` fails its listing with this.
    meeting_error: Option<FindError>,
}

fn recording_body(uuid: &str) -> Value {
    json!({
        "event": "recording.completed",
        "event_ts": 1,
        "payload": {"account_id": "acc", "object": {"uuid": uuid, "recording_files": [{"id": "f1"}, {"id": "f2"}]}},
    })
}

impl MissedSource for Scripted {
    fn find(
        &self,
        kind: MissedKind,
        window: Window,
    ) -> BoxFuture<'_, Result<Vec<Candidate>, FindError>> {
        self.calls
            .lock()
            .unwrap()
            .push((kind, window, Instant::now()));
        let result = match kind {
            MissedKind::RecordingCompleted => Ok(vec![
                Candidate::new(kind, recording_body("u1")),
                Candidate::new(kind, recording_body("u1")),
            ]),
            MissedKind::MeetingEnded => match &self.meeting_error {
                Some(error) => Err(error.clone()),
                None => Ok(Vec::new()),
            },
            MissedKind::UserCreated => Ok(Vec::new()),
        };
        Box::pin(async move { result })
    }

    fn complete(&self, candidate: Candidate) -> BoxFuture<'_, Result<Value, FindError>> {
        *self.completed.lock().unwrap() += 1;
        let mut body = candidate.body;
        body["download_token"] = json!("dl");
        Box::pin(async move { Ok(body) })
    }
}

/// The engine's side: ids it knows, events fed (which it then knows).
#[derive(Default)]
struct Engine {
    known: Mutex<HashSet<String>>,
    fed: Mutex<Vec<Event>>,
}

impl KnownEvents for Engine {
    fn is_known<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, String>> {
        let known = self.known.lock().unwrap().contains(id);
        Box::pin(async move { Ok(known) })
    }
}

impl EventFeed for Engine {
    fn feed(&self, event: Event) -> BoxFuture<'_, Result<(), String>> {
        self.known.lock().unwrap().insert(event.id.clone());
        self.fed.lock().unwrap().push(event);
        Box::pin(async { Ok(()) })
    }
}

fn rules(listening: &[&str]) -> (tempfile::TempDir, Arc<RuleSetHandle>) {
    let dir = tempfile::tempdir().unwrap();
    for (n, event_type) in listening.iter().enumerate() {
        let yaml = format!("name: r{n}\non: {event_type}\ndo: \"1\"\n");
        std::fs::write(dir.path().join(format!("r{n}.yaml")), yaml).unwrap();
    }
    let sources = RuleSources {
        paths: vec![dir.path().to_path_buf()],
        scripts_dir: dir.path().join("scripts"),
    };
    let handle = RuleSetHandle::load(sources, SandboxLimits::default()).unwrap();
    (dir, Arc::new(handle))
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn reconciler(
    source: Arc<Scripted>,
    engine: Arc<Engine>,
    rules: Arc<RuleSetHandle>,
    state: Arc<MemoryState>,
) -> (Reconciler, watch::Receiver<ReconcileStatus>) {
    let (status_tx, status_rx) = watch::channel(ReconcileStatus::new("default"));
    let parts = ReconcilerParts {
        source,
        known: engine.clone(),
        feed: engine,
        rules,
        state,
    };
    let reconciler = Reconciler::new("default", ReconcileConfig::default(), parts, status_tx);
    (reconciler, status_rx)
}

#[test]
fn windows_reach_back_for_gaps_but_never_before_watching_nor_past_the_dedupe_window() {
    let (_dir, rules) = rules(&[]);
    let (r, _) = reconciler(
        Arc::default(),
        Arc::default(),
        rules,
        Arc::new(MemoryState::default()),
    );
    let now = at("2024-11-20T12:00:00Z");
    let long_ago = at("2024-01-01T00:00:00Z");
    let sweep = r.window(Trigger::Sweep, long_ago, now);
    assert_eq!(
        (sweep.start, sweep.end),
        (at("2024-11-18T12:00:00Z"), now),
        "48 h back"
    );
    // A gap that began before the lookback is covered from its start, less the margin.
    let gap = Trigger::Gap {
        start: at("2024-11-18T00:00:00Z"),
        end: at("2024-11-20T11:00:00Z"),
    };
    assert_eq!(
        r.window(gap, long_ago, now).start,
        at("2024-11-17T23:58:00Z")
    );
    // A downtime longer than the dedupe window (72 h) reaches back only that far.
    let startup = Trigger::Startup {
        since: at("2024-11-10T00:00:00Z"),
    };
    assert_eq!(
        r.window(startup, long_ago, now).start,
        at("2024-11-17T12:00:00Z")
    );
    // Nothing from before the account was first watched.
    let installed = at("2024-11-20T11:30:00Z");
    assert_eq!(r.window(Trigger::Sweep, installed, now).start, installed);
    assert_eq!(r.window(Trigger::Sweep, now, now).start, now);
}

#[tokio::test]
async fn a_pass_feeds_only_what_is_unknown_once_and_reports_the_rest() {
    let (_dir, rules) = rules(&["recording.completed", "meeting.*", "user.created"]);
    let source = Arc::new(Scripted {
        meeting_error: Some(FindError::Limit(LimitError::DailyBudgetSpent)),
        ..Scripted::default()
    });
    let engine = Arc::new(Engine::default());
    let (r, status) = reconciler(
        source.clone(),
        engine.clone(),
        rules,
        Arc::new(MemoryState::default()),
    );
    let report = r.pass(Trigger::Sweep, DateTime::<Utc>::MIN_UTC).await;
    assert_eq!(
        report.types,
        ["recording.completed", "meeting.ended", "user.created"]
    );
    assert_eq!((report.listed, report.found, report.fed), (2, 1, 1));
    assert_eq!(
        report.skipped,
        ["meeting.ended: the daily budget of heavy and resource-intensive calls is spent"]
    );
    let fed = engine.fed.lock().unwrap().clone();
    assert_eq!(fed.len(), 1, "the same recording listed twice is fed once");
    assert_eq!(fed[0].source, Source::Reconcile("default".into()));
    assert_eq!(
        fed[0].meta().cast::<rhai::Map>()["source"]
            .clone()
            .into_string()
            .unwrap(),
        "reconcile"
    );
    assert_eq!(
        fed[0]
            .download_token()
            .map(|t| secrecy::ExposeSecret::expose_secret(&**t)),
        Some("dl")
    );
    assert_eq!(report.fed_events[0].id, fed[0].id);

    // Found again: known now, nothing fed, no more download tokens asked for.
    let again = r.pass(Trigger::Sweep, DateTime::<Utc>::MIN_UTC).await;
    assert_eq!(
        (again.listed, again.known, again.found, again.fed),
        (2, 1, 0, 0)
    );
    assert_eq!(*source.completed.lock().unwrap(), 1);
    let status = status.borrow().clone();
    assert_eq!(
        (status.passes, status.events_found, status.events_fed),
        (2, 1, 1)
    );
}

#[tokio::test]
async fn only_the_types_a_rule_listens_to_are_looked_for() {
    let (_dir, rules) = rules(&["user.created"]);
    let source = Arc::new(Scripted::default());
    let (r, _) = reconciler(
        source.clone(),
        Arc::default(),
        rules,
        Arc::new(MemoryState::default()),
    );
    let report = r.pass(Trigger::Sweep, DateTime::<Utc>::MIN_UTC).await;
    assert_eq!(report.types, ["user.created"]);
    let kinds: Vec<MissedKind> = source.calls.lock().unwrap().iter().map(|c| c.0).collect();
    assert_eq!(kinds, [MissedKind::UserCreated]);
}

/// Waits (in paused time, without advancing it by hand) for `passes` passes.
async fn passes(status: &mut watch::Receiver<ReconcileStatus>, passes: u64) -> ReconcileStatus {
    status
        .wait_for(|s| s.passes >= passes)
        .await
        .unwrap()
        .clone()
}

#[tokio::test(start_paused = true)]
async fn passes_run_at_start_up_after_downtime_after_each_gap_and_every_sweep_interval() {
    let (_dir, rules) = rules(&["recording.completed"]);
    let source = Arc::new(Scripted::default());
    let engine = Arc::new(Engine::default());
    let state = Arc::new(MemoryState::default());
    let down_since = Utc::now() - chrono::Duration::hours(60);
    let installed = Utc::now() - chrono::Duration::days(30);
    state
        .set(
            MARKS_RULE,
            "watched_until:default",
            json!(down_since.to_rfc3339()),
            None,
        )
        .unwrap();
    state
        .set(
            MARKS_RULE,
            "watching_since:default",
            json!(installed.to_rfc3339()),
            None,
        )
        .unwrap();
    let (r, mut status) = reconciler(source.clone(), engine.clone(), rules, state.clone());
    let (connection, link) = watch::channel(ConnectionStatus::default());
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(r.run(Some(link), shutdown.clone()));

    // Not connected yet: nothing. Connected: the start-up pass reaches back to the downtime.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(source.calls.lock().unwrap().is_empty());
    connection.send_modify(|s| s.connected = true);
    let after_startup = passes(&mut status, 1).await;
    let startup = after_startup.last_pass.unwrap();
    assert_eq!(startup.trigger, "startup");
    assert!(startup.window.start <= down_since - chrono::Duration::minutes(2));
    assert_eq!(startup.fed, 1);

    // A gap closes: a pass at once, which finds the recording already known.
    let gap_start = Utc::now() - chrono::Duration::seconds(10);
    connection.send_modify(|s| {
        s.gaps.push(Gap {
            start: gap_start,
            end: Some(Utc::now()),
            reason: "dropped".into(),
        })
    });
    let after_gap = passes(&mut status, 2).await;
    let gap = after_gap.last_pass.unwrap();
    assert_eq!((gap.trigger, gap.known, gap.fed), ("gap", 1, 0));
    // Frames that change nothing else start no pass.
    connection.send_modify(|s| s.events_received += 1);

    // Sweeps every 15 minutes from the start.
    passes(&mut status, 4).await;
    let calls = source.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 4, "{calls:?}");
    let minutes: Vec<u64> = calls
        .iter()
        .map(|c| (c.2 - started).as_secs() / 60)
        .collect();
    assert_eq!(minutes[2..], [15, 30]);
    assert_eq!(engine.fed.lock().unwrap().len(), 1);

    // The watched-until mark follows while connected, and is saved on the way out.
    shutdown.cancel();
    task.await.unwrap();
    let mark = state
        .get(MARKS_RULE, "watched_until:default")
        .unwrap()
        .unwrap();
    let mark = DateTime::parse_from_rfc3339(mark.as_str().unwrap()).unwrap();
    assert!(mark > down_since + chrono::Duration::hours(59));
}

#[tokio::test(start_paused = true)]
async fn a_first_start_reaches_back_nowhere_and_an_account_without_a_subscription_is_watched_at_once()
 {
    let (_dir, rules) = rules(&["recording.completed"]);
    let source = Arc::new(Scripted::default());
    let state = Arc::new(MemoryState::default());
    let (r, mut status) = reconciler(source.clone(), Arc::default(), rules.clone(), state.clone());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(r.run(None, shutdown.clone()));
    // No mark: no start-up pass; the first sweep comes after the interval.
    let first = passes(&mut status, 1).await;
    assert_eq!(first.last_pass.as_ref().unwrap().trigger, "sweep");
    let since = first.watching_since.unwrap();
    assert_eq!(
        first.last_pass.unwrap().window.start,
        since,
        "nothing before the first watch"
    );
    shutdown.cancel();
    task.await.unwrap();

    // Restarted later: a start-up pass at once, from the saved mark.
    let (r, mut status) = reconciler(source.clone(), Arc::default(), rules, state);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(r.run(None, shutdown.clone()));
    let restarted = passes(&mut status, 1).await;
    assert_eq!(restarted.last_pass.unwrap().trigger, "startup");
    assert_eq!(
        restarted.watching_since,
        Some(since),
        "the first watch is kept"
    );
    shutdown.cancel();
    task.await.unwrap();
}
