//! Reconciliation end to end: the real `zoomwire run` against the simulator,
//! with a real store. A recording that completes during an outage is posted
//! once soon after the reconnect and Zoom's late delivery does not post it
//! again; a restart after downtime finds what completed, ended and was
//! created meanwhile; two accounts each call Zoom with their own token (on
//! the simulator's record of every call), and an event from an account that
//! is not configured never borrows another's; a 429 with `Retry-After` is
//! waited out; `zoomwire reconcile` lists and feeds by hand.

use std::time::{Duration, Instant};

use crate::support::daemon::{Daemon, Workspace};
use chrono::Utc;
use secrecy::SecretString;
use serde_json::{Value, json};
use zoomwire_engine::zoom::webhook::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
use zoomwire_sim::sim::{
    Fault, NewMeeting, NewUser, RateLimitType, RecordingState, RetryAfter, SimAccount, SimConfig,
};

/// Posts each recording with where the event came from.
const ARCHIVE: &str = r##"name: archive
on: recording.completed
allow: [slack]
do: |
  let r = event.payload.object;
  slack::post("#recordings", `${r.topic} (${meta.source})`);
"##;

const ENDED: &str = r##"name: ended
on: meeting.ended
allow: [slack]
do: |
  slack::post("#ops", `${event.payload.object.topic} ended (${meta.source})`);
"##;

const WELCOME: &str = r##"name: welcome
on: user.created
allow: [slack]
do: |
  slack::post("#general", `welcome ${event.payload.object.email} (${meta.source})`);
"##;

/// For each run of the `archive` rule, whether its event carries Zoom's
/// download token: kept sealed beside the stored body, never in it, and
/// never shown to the script.
fn archived_events_carry_a_token(ws: &Workspace) -> Vec<bool> {
    use zoomwire_engine::journal::{JournalOptions, RunFilter, SqliteJournal};
    let journal = SqliteJournal::open(&ws.data_dir(), JournalOptions::for_command()).unwrap();
    let filter = RunFilter {
        rule: Some("archive".into()),
        ..RunFilter::default()
    };
    journal
        .list_runs(filter)
        .unwrap()
        .iter()
        .map(|run| {
            let event = journal.get_event(&run.event_id).unwrap().unwrap();
            assert!(!event.raw.contains("download_token"), "{}", event.raw);
            event.download_token().is_some()
        })
        .collect()
}

/// Polls `check` every 50 ms for at most `limit`; the daemon's log tells why not.
async fn within<T, F, Fut>(limit: Duration, what: &str, daemon: Option<&Daemon>, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            daemon.map(Daemon::stderr).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the daemon's reconciler watches its account: meetings that
/// start from then on are its to reconcile.
async fn wait_watching(daemon: &Daemon) {
    within(
        Duration::from_secs(15),
        "the account to be watched",
        Some(daemon),
        || async {
            let (_, health) = daemon.admin_get("/healthz").await;
            (health["reconciliation"]["default"]["watching"] == true).then_some(())
        },
    )
    .await;
}

fn recording(topic: &str, state: RecordingState) -> NewMeeting {
    NewMeeting {
        topic: topic.into(),
        host_id: None,
        start: Utc::now(),
        minutes: 30,
        participants: 3,
        recording: Some(state),
    }
}

async fn metrics(daemon: &Daemon) -> String {
    let admin = daemon.admin.expect("running");
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("metrics answer")
        .text()
        .await
        .unwrap_or_default()
}

/// The value of a counter line that starts with `prefix`, summed.
fn counter(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recording_completed_during_an_outage_is_posted_once_soon_after_the_reconnect() {
    let ws = Workspace::new().await;
    ws.write_rule("archive.yaml", ARCHIVE);
    let daemon = ws.start(1).await;
    wait_watching(&daemon).await;
    let uuid = ws
        .sim
        .add_meeting(
            None,
            &recording("Outage review", RecordingState::Processing),
        )
        .expect("meeting added");

    // A 10 s outage; the recording completes meanwhile and Zoom's delivery reaches nobody.
    ws.sim.outage(Duration::from_secs(10));
    assert!(ws.sim.complete_recording(&uuid));
    let delivery = ws.sim.recording_event(&uuid).expect("event");
    assert_eq!(ws.sim.emit_event(None, &delivery), 0, "no connection is up");
    let subscription = ws.sim.subscription_id().to_string();
    assert!(
        ws.sim
            .wait_for_connections(&subscription, 2, Duration::from_secs(90))
            .await,
        "{}",
        daemon.stderr()
    );
    let reconnected = Instant::now();
    let posts = within(
        Duration::from_secs(60),
        "the reconciled post",
        Some(&daemon),
        || async {
            let posts = ws.slack_texts("#recordings");
            (!posts.is_empty()).then_some(posts)
        },
    )
    .await;
    assert!(reconnected.elapsed() < Duration::from_secs(60));
    assert_eq!(posts, ["Outage review (reconcile)"]);
    assert_eq!(archived_events_carry_a_token(&ws), [true]);

    // Zoom delivers it after all, late: a counted duplicate, no second post.
    let late = ws.sim.recording_event(&uuid).expect("event");
    assert_ne!(late["event_ts"], delivery["event_ts"]);
    assert_eq!(ws.sim.emit_event(None, &late), 1);
    within(
        Duration::from_secs(15),
        "the duplicate to be counted",
        Some(&daemon),
        || async {
            (counter(&metrics(&daemon).await, "zoomwire_events_duplicate_total") >= 1.0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(ws.slack_texts("#recordings").len(), 1);
    let runs = ws.runs().await;
    assert_eq!(runs.len(), 1, "{runs:?}");

    let (_, health) = daemon.admin_get("/healthz").await;
    let status = &health["reconciliation"]["default"];
    assert_eq!(status["events_fed"], 1, "{health}");
    assert_eq!(status["last_pass"]["trigger"], "gap", "{health}");
    let text = metrics(&daemon).await;
    assert!(
        counter(
            &text,
            "zoomwire_reconcile_events_total{account=\"default\",outcome=\"fed\"}"
        ) >= 1.0,
        "{text}"
    );
    assert!(
        text.contains("zoomwire_reconcile_last_pass_timestamp_seconds"),
        "{text}"
    );
    daemon.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_after_downtime_finds_what_completed_ended_and_was_created_meanwhile() {
    let ws = Workspace::new().await;
    ws.write_rule("archive.yaml", ARCHIVE);
    ws.write_rule("ended.yaml", ENDED);
    ws.write_rule("welcome.yaml", WELCOME);
    let mut daemon = ws.start(1).await;
    wait_watching(&daemon).await;
    let uuid = ws
        .sim
        .add_meeting(
            None,
            &recording("Quarterly plan", RecordingState::Processing),
        )
        .expect("meeting added");
    daemon.terminate().await;
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(20)).await.code(),
        Some(0),
        "{}",
        daemon.stderr()
    );

    // While the engine is down: a recording completes, a meeting ends, a user is created.
    assert!(ws.sim.complete_recording(&uuid));
    let standup = NewMeeting {
        topic: "Standup".into(),
        host_id: None,
        start: Utc::now(),
        minutes: 0,
        participants: 3,
        recording: None,
    };
    ws.sim.add_meeting(None, &standup).expect("meeting added");
    let user = NewUser {
        email: "katherine@example.com".into(),
        first_name: "Katherine".into(),
        last_name: "Johnson".into(),
        status: "pending".into(),
    };
    ws.sim.add_user(None, &user).expect("user added");

    let daemon = ws.start(2).await;
    within(
        Duration::from_secs(30),
        "every reconciled post",
        Some(&daemon),
        || async {
            let done = !ws.slack_texts("#recordings").is_empty()
                && !ws.slack_texts("#ops").is_empty()
                && !ws.slack_texts("#general").is_empty();
            done.then_some(())
        },
    )
    .await;
    assert_eq!(
        ws.slack_texts("#recordings"),
        ["Quarterly plan (reconcile)"]
    );
    assert_eq!(archived_events_carry_a_token(&ws), [true]);
    assert_eq!(ws.slack_texts("#ops"), ["Standup ended (reconcile)"]);
    assert_eq!(
        ws.slack_texts("#general"),
        ["welcome katherine@example.com (reconcile)"]
    );
    let (_, health) = daemon.admin_get("/healthz").await;
    let status = &health["reconciliation"]["default"];
    assert_eq!(status["last_pass"]["trigger"], "startup", "{health}");
    assert_eq!(status["events_fed"], 3, "{health}");
    assert_eq!(status["errors"], 0, "{health}");
    // The dashboard listed the meeting; its details came from /past_meetings.
    assert!(!ws.answered("/v2/metrics/meetings").is_empty());
    assert!(!ws.answered("/v2/past_meetings/").is_empty());
    daemon.kill().await;
}

const SALES_YAML: &str = "accounts:
  - name: sales
    account_id: sales-acct
    client_id: sales-acct-client-id
    client_secret: sales-acct-client-secret
    subscription_id: sales-acct-subscription
";

fn started(topic: &str, account_id: &str, n: u64) -> Value {
    json!({
        "event": "meeting.started",
        "event_ts": 1_732_030_000_000u64 + n,
        "payload": {
            "account_id": account_id,
            "object": {"id": 1000 + n, "uuid": format!("acct-{n}=="), "topic": topic},
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_account_calls_zoom_with_its_own_token_and_never_borrows_another() {
    const SECRET: &str = "webhook-secret-for-accounts";
    let config = SimConfig {
        extra_accounts: vec![SimAccount::named("sales-acct")],
        ..SimConfig::default()
    };
    let mut ws = Workspace::with_sim(config).await;
    ws.set_env("ZOOM_WEBHOOK_SECRET_TOKEN", SECRET);
    ws.set_env("ZOOMWIRE_WEBHOOK_ADDR", "127.0.0.1:0");
    std::fs::write(ws.root().join("zoomwire.yaml"), SALES_YAML).expect("config written");
    ws.write_rule(
        "whoami.yaml",
        r##"name: whoami
on: meeting.started
allow: [slack, zoom.read]
do: |
  let me = zoom::get("/users/me");
  slack::post("#general", `${event.payload.object.topic}: ${me.email}`);
"##,
    );
    ws.write_rule(
        "weekly.yaml",
        r##"name: weekly
on: meeting.ended
account: sales
allow: [slack, zoom.read]
do: |
  let owner = zoom::get("/users/me");
  let mine = zoom::get("/users/me", #{account: "default"});
  slack::post("#ops", `${owner.email} and ${mine.email}`);
"##,
    );
    let daemon = ws.start(1).await;
    assert!(
        ws.sim
            .wait_for_connections("sales-acct-subscription", 1, Duration::from_secs(20))
            .await,
        "{}",
        daemon.stderr()
    );
    ws.sim.emit_event(
        Some("sim-subscription"),
        &started("Default sync", "sim-account", 1),
    );
    ws.sim.emit_event(
        Some("sales-acct-subscription"),
        &started("Sales sync", "sales-acct", 2),
    );
    let webhook = daemon
        .wait_for_log("webhook endpoint listening on /zoom/webhook")
        .await["addr"]
        .as_str()
        .expect("webhook address")
        .to_string();
    // By webhook: the payload's account decides; a stranger's has no token here.
    let by_webhook = started("Webhook sync", "sales-acct", 3).to_string();
    assert_eq!(post_webhook(&webhook, SECRET, &by_webhook).await, 200);
    let stranger = started("Stranger sync", "stranger-acct", 4).to_string();
    assert_eq!(post_webhook(&webhook, SECRET, &stranger).await, 200);
    // A rule that names its account, and a call that names another.
    let ended = json!({"event": "meeting.ended", "event_ts": 5, "payload": {"account_id": "sim-account", "object": {"uuid": "ended-5=="}}});
    ws.sim.emit_event(Some("sim-subscription"), &ended);

    let mut posts = within(
        Duration::from_secs(20),
        "three posts",
        Some(&daemon),
        || async {
            let posts = ws.slack_texts("#general");
            (posts.len() >= 3).then_some(posts)
        },
    )
    .await;
    posts.sort();
    assert_eq!(
        posts,
        [
            "Default sync: host@example.com",
            "Sales sync: owner@sales-acct.example",
            "Webhook sync: owner@sales-acct.example",
        ]
    );
    let ops = within(
        Duration::from_secs(20),
        "the ops post",
        Some(&daemon),
        || async {
            let posts = ws.slack_texts("#ops");
            (!posts.is_empty()).then_some(posts)
        },
    )
    .await;
    assert_eq!(ops, ["owner@sales-acct.example and host@example.com"]);

    // The simulator's record of which account's token each call carried.
    let calls: Vec<String> = ws
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.raw_path == "/v2/users/me")
        .map(|r| r.account.unwrap_or_default())
        .collect();
    let count = |account: &str| calls.iter().filter(|a| *a == account).count();
    assert_eq!(
        (count("sim-account"), count("sales-acct")),
        (2, 3),
        "{calls:?}"
    );

    // The stranger's run failed at its Zoom call, with no call made for it.
    let runs = within(
        Duration::from_secs(20),
        "every run to finish",
        Some(&daemon),
        || async {
            let runs = ws.runs().await;
            (runs.len() == 5 && runs.iter().all(|r| !r["finished_at"].is_null())).then_some(runs)
        },
    )
    .await;
    let failed: Vec<&Value> = runs.iter().filter(|r| r["status"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{runs:?}");
    let error = failed[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the event came from zoom account `stranger-acct`, which is not configured"),
        "{error}"
    );
    daemon.kill().await;
}

async fn post_webhook(addr: &str, secret: &str, body: &str) -> u16 {
    let timestamp = Utc::now().timestamp().to_string();
    let signature = sign(
        &SecretString::from(secret.to_string()),
        &timestamp,
        body.as_bytes(),
    );
    reqwest::Client::new()
        .post(format!("http://{addr}/zoom/webhook"))
        .header("content-type", "application/json")
        .header(TIMESTAMP_HEADER, timestamp)
        .header(SIGNATURE_HEADER, signature)
        .body(body.to_string())
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("the webhook answers")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconciliation_waits_out_a_429_with_retry_after() {
    let mut ws = Workspace::new().await;
    ws.set_env("ZOOMWIRE_RECONCILE_INTERVAL", "2s");
    ws.write_rule("archive.yaml", ARCHIVE);
    // The first listing of the first sweep is refused.
    let listing = "/v2/accounts/me/recordings";
    ws.sim.inject_fault(Fault::zoom_rate_limit(
        listing,
        1,
        RateLimitType::Qps,
        RetryAfter::HttpDate { after_ms: 3000 },
    ));
    let daemon = ws.start(1).await;
    wait_watching(&daemon).await;
    ws.sim
        .add_meeting(None, &recording("Rate limited", RecordingState::Completed))
        .expect("meeting added");
    let posts = within(
        Duration::from_secs(30),
        "the post",
        Some(&daemon),
        || async {
            let posts = ws.slack_texts("#recordings");
            (!posts.is_empty()).then_some(posts)
        },
    )
    .await;
    assert_eq!(posts, ["Rate limited (reconcile)"]);
    assert_eq!(archived_events_carry_a_token(&ws), [true]);
    let calls: Vec<(u16, i64)> = ws
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.raw_path == listing)
        .map(|r| (r.status, r.received_at_micros))
        .collect();
    assert_eq!(calls[0].0, 429, "{calls:?}");
    assert_eq!(calls[1].0, 200, "{calls:?}");
    let waited = Duration::from_micros((calls[1].1 - calls[0].1) as u64);
    // `Retry-After` is a date with one-second resolution: 2 to 3 s ahead.
    assert!(waited >= Duration::from_millis(1900), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    daemon.kill().await;
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zoomwire_reconcile_lists_then_feeds_what_the_store_has_not_seen() {
    let ws = Workspace::new().await;
    ws.write_rule("archive.yaml", ARCHIVE);
    let earlier = NewMeeting {
        start: Utc::now() - chrono::Duration::hours(1),
        ..recording("Board prep", RecordingState::Completed)
    };
    ws.sim.add_meeting(None, &earlier).expect("meeting added");
    let still_processing = recording("Still processing", RecordingState::Processing);
    ws.sim
        .add_meeting(None, &still_processing)
        .expect("meeting added");

    let dry = ws
        .zoomwire(&["reconcile", "--since", "2h", "--dry-run"])
        .await;
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let text = stdout(&dry);
    assert!(text.contains("recording.completed"), "{text}");
    assert!(
        text.contains("Board prep") && text.contains("(dry run: not fed)"),
        "{text}"
    );
    assert!(!text.contains("Still processing"), "{text}");
    assert!(
        text.contains("zoom listed 1, 0 already seen, 1 missed, would feed 1"),
        "{text}"
    );

    let fed = ws.zoomwire(&["reconcile", "--since", "2h"]).await;
    assert!(
        fed.status.success(),
        "{}",
        String::from_utf8_lossy(&fed.stderr)
    );
    assert!(
        stdout(&fed).contains("fed (account default)"),
        "{}",
        stdout(&fed)
    );
    let runs = ws.runs().await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["status"], "pending");

    // Found again: already seen.
    let again = ws.zoomwire(&["reconcile", "--since", "2h"]).await;
    assert!(
        stdout(&again).contains("zoom listed 1, 1 already seen, 0 missed, fed 0"),
        "{}",
        stdout(&again)
    );

    // The daemon runs what was fed.
    let daemon = ws.start(1).await;
    let posts = within(
        Duration::from_secs(20),
        "the post",
        Some(&daemon),
        || async {
            let posts = ws.slack_texts("#recordings");
            (!posts.is_empty()).then_some(posts)
        },
    )
    .await;
    assert_eq!(posts, ["Board prep (reconcile)"]);
    assert_eq!(archived_events_carry_a_token(&ws), [true]);
    daemon.kill().await;

    let bad = ws.zoomwire(&["reconcile", "--since", "yesterday"]).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since: `yesterday` is not a time"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_listings_fall_back_to_each_users_recordings_and_reports() {
    // A Pro account has no dashboard; the account's recording listing is refused too.
    let ws = Workspace::with_sim(SimConfig {
        plan: zoomwire_sim::sim::SimPlan::Pro,
        ..SimConfig::default()
    })
    .await;
    ws.write_rule("archive.yaml", ARCHIVE);
    ws.write_rule("ended.yaml", ENDED);
    ws.sim.inject_fault(Fault {
        path_prefix: "/v2/accounts/".into(),
        count: 1000,
        kind: zoomwire_sim::sim::FaultKind::Status {
            status: 400,
            body: Some(r#"{"code":200,"message":"No permission."}"#.into()),
        },
    });
    let hour_ago = Utc::now() - chrono::Duration::hours(1);
    let recorded = NewMeeting {
        start: hour_ago,
        ..recording("Recorded one", RecordingState::Completed)
    };
    ws.sim.add_meeting(None, &recorded).expect("meeting added");
    let output = ws
        .zoomwire(&["reconcile", "--since", "3h", "--dry-run"])
        .await;
    let text = stdout(&output);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("recording.completed") && text.contains("Recorded one"),
        "{text}"
    );
    assert!(
        text.contains("meeting.ended") && text.contains("zoom listed 2"),
        "{text}"
    );
    // The account listing was refused once; each user's listing and report were read instead.
    assert_eq!(ws.answered("/v2/accounts/me/recordings").len(), 1);
    assert_eq!(ws.answered("/v2/metrics/meetings").len(), 1);
    assert!(
        !ws.answered(&format!(
            "/v2/users/{}/recordings",
            zoomwire_sim::sim::data::HOST_USER_ID
        ))
        .is_empty()
    );
    assert!(
        !ws.answered(&format!(
            "/v2/report/users/{}/meetings",
            zoomwire_sim::sim::data::HOST_USER_ID
        ))
        .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_lists_for_the_rules_its_flags_name() {
    let ws = Workspace::new().await;
    ws.write_rule("archive.yaml", ARCHIVE);
    let other = ws.root().join("other-rules");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join("started.yaml"),
        "name: started\non: meeting.started\ndo: log::info(\"started\")\n",
    )
    .unwrap();
    let earlier = NewMeeting {
        start: Utc::now() - chrono::Duration::hours(1),
        ..recording("Board prep", RecordingState::Completed)
    };
    ws.sim.add_meeting(None, &earlier).expect("meeting added");

    let configured = ws
        .zoomwire(&["reconcile", "--since", "2h", "--dry-run"])
        .await;
    assert!(
        stdout(&configured).contains("Board prep"),
        "{}",
        stdout(&configured)
    );
    let flagged = ws
        .zoomwire(&[
            "reconcile",
            "--since",
            "2h",
            "--dry-run",
            "--rules",
            "other-rules",
        ])
        .await;
    assert!(
        flagged.status.success(),
        "{}",
        String::from_utf8_lossy(&flagged.stderr)
    );
    assert_eq!(
        stdout(&flagged).trim(),
        "no enabled rule listens to recording.completed, meeting.ended or user.created: nothing to reconcile"
    );
}
