//! The admin API over loopback: `/healthz` follows what the daemon reports,
//! `/metrics` shows what was recorded, `/api/runs` lists and finds runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zoomwire::admin::{AdminState, ConnectionState, RunHistory, SubscriptionHealth, serve_admin};
use zoomwire::engine::record::{Journal, MemoryJournal, RunRecord, RunStatus};
use zoomwire::event::{Event, Source};
use zoomwire::journal::{JournalOptions, SqliteJournal};
use zoomwire::zoom::websocket::{ConnectionStatus, Gap};

struct Admin {
    base: String,
    state: Arc<AdminState>,
    client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn admin(history: Arc<dyn RunHistory>) -> Admin {
    let state = AdminState::new();
    let shutdown = CancellationToken::new();
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (addr, _task) = serve_admin(loopback, state.clone(), history, shutdown.clone())
        .await
        .unwrap();
    Admin {
        base: format!("http://{addr}"),
        state,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap(),
        shutdown,
    }
}

impl Admin {
    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, text) = self.get(path).await;
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
        )
    }
}

fn run(id: &str, rule: &str, status: RunStatus, minute: u32) -> RunRecord {
    RunRecord {
        id: id.into(),
        rule: rule.into(),
        event_id: format!("event-{id}"),
        event_type: "meeting.ended".into(),
        key: None,
        status,
        attempt: 1,
        error: (status == RunStatus::Dead).then(|| "slack said no".to_string()),
        effects: Vec::new(),
        logs: Vec::new(),
        output: Some(serde_json::json!({"posted": true})),
        created_at: Utc.with_ymd_and_hms(2026, 1, 2, 9, minute, 0).unwrap(),
        started_at: None,
        finished_at: None,
    }
}

async fn journal_with_runs() -> Arc<MemoryJournal> {
    let journal = Arc::new(MemoryJournal::default());
    for record in [
        run("r1", "archive", RunStatus::Succeeded, 1),
        run("r2", "notify", RunStatus::Dead, 2),
        run("r3", "archive", RunStatus::Failed, 3),
        run("r4", "archive", RunStatus::Succeeded, 4),
    ] {
        journal.record_run(&record).await.unwrap();
    }
    journal
}

fn ids(body: &Value) -> Vec<&str> {
    body["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn healthz_follows_the_reported_status() {
    let admin = admin(Arc::new(MemoryJournal::default())).await;
    let (status, body) = admin.get_json("/healthz").await;
    assert_eq!(status, 503, "no rule set yet: {body}");
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["rules"]["loaded_rules"], Value::Null);

    admin.state.rules_loaded(3);
    admin.state.set_subscription_status(
        "default",
        SubscriptionHealth::new(ConnectionState::Connected),
    );
    let event_at = Utc.with_ymd_and_hms(2026, 1, 2, 9, 30, 0).unwrap();
    admin.state.note_event("default", event_at);
    let (status, body) = admin.get_json("/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["rules"]["loaded_rules"], 3);
    assert_eq!(body["rules"]["last_reload"]["ok"], true);
    assert_eq!(body["subscriptions"]["default"]["state"], "connected");
    assert_eq!(
        body["subscriptions"]["default"]["last_event_at"],
        "2026-01-02T09:30:00Z"
    );

    let down =
        SubscriptionHealth::new(ConnectionState::Disconnected).with_error("connection reset");
    admin.state.set_subscription_status("default", down);
    let (status, body) = admin.get_json("/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["subscriptions"]["default"]["state"], "disconnected");
    assert_eq!(
        body["subscriptions"]["default"]["error"],
        "connection reset"
    );
    assert_eq!(
        body["subscriptions"]["default"]["last_event_at"], "2026-01-02T09:30:00Z",
        "the last event survives a state change"
    );

    admin.state.set_subscription_status(
        "default",
        SubscriptionHealth::new(ConnectionState::Connected),
    );
    admin
        .state
        .rules_reload_failed(vec!["rules/x.yaml:2:1: unknown key `foo`".into()]);
    let (status, body) = admin.get_json("/healthz").await;
    assert_eq!(status, 200, "the last good rule set still runs: {body}");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["rules"]["loaded_rules"], 3);
    assert_eq!(
        body["rules"]["last_reload"]["errors"][0],
        "rules/x.yaml:2:1: unknown key `foo`"
    );
}

#[tokio::test]
async fn metrics_show_recorded_counters() {
    let admin = admin(Arc::new(MemoryJournal::default())).await;
    metrics::counter!("zoomwire_admin_test_total", "kind" => "probe").increment(3);
    let (status, text) = admin.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("zoomwire_admin_test_total{kind=\"probe\"} 3"),
        "{text}"
    );
}

#[tokio::test]
async fn api_lists_runs_newest_first_with_filters() {
    let admin = admin(journal_with_runs().await).await;
    let (status, body) = admin.get_json("/api/runs").await;
    assert_eq!(status, 200);
    assert_eq!(ids(&body), vec!["r4", "r3", "r2", "r1"]);
    let summary = &body["runs"][2];
    assert_eq!(summary["rule"], "notify");
    assert_eq!(summary["status"], "dead");
    assert_eq!(summary["error"], "slack said no");
    assert!(
        summary.get("output").is_none(),
        "a summary leaves out the output"
    );

    let (_, body) = admin.get_json("/api/runs?rule=archive").await;
    assert_eq!(ids(&body), vec!["r4", "r3", "r1"]);
    let (_, body) = admin.get_json("/api/runs?failed=true").await;
    assert_eq!(ids(&body), vec!["r3", "r2"]);
    let (_, body) = admin.get_json("/api/runs?rule=archive&failed=true").await;
    assert_eq!(ids(&body), vec!["r3"]);
    let (_, body) = admin.get_json("/api/runs?limit=2").await;
    assert_eq!(ids(&body), vec!["r4", "r3"]);
    let (status, _) = admin.get("/api/runs?limit=lots").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn api_finds_one_run_and_404s_unknown_ids() {
    let admin = admin(journal_with_runs().await).await;
    let (status, body) = admin.get_json("/api/runs/r2").await;
    assert_eq!(status, 200);
    assert_eq!(body["id"], "r2");
    assert_eq!(body["status"], "dead");
    assert_eq!(body["output"], serde_json::json!({"posted": true}));

    let (status, body) = admin.get_json("/api/runs/nope").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "no run with id `nope`");
}

struct BrokenHistory;

impl RunHistory for BrokenHistory {
    fn list_runs(&self, _: Option<String>, _: bool, _: usize) -> Result<Vec<Value>, String> {
        Err("database is locked".into())
    }

    fn get_run(&self, _: &str) -> Result<Option<Value>, String> {
        Err("database is locked".into())
    }
}

#[tokio::test]
async fn history_errors_are_500_with_the_reason() {
    let admin = admin(Arc::new(BrokenHistory)).await;
    let (status, body) = admin.get_json("/api/runs").await;
    assert_eq!(status, 500);
    assert_eq!(body["error"], "run history unavailable: database is locked");
    let (status, _) = admin.get_json("/api/runs/r1").await;
    assert_eq!(status, 500);
}

#[tokio::test]
async fn a_taken_address_is_an_error() {
    let first = admin(Arc::new(MemoryJournal::default())).await;
    let taken: SocketAddr = first.base.trim_start_matches("http://").parse().unwrap();
    let error = serve_admin(
        taken,
        AdminState::new(),
        Arc::new(MemoryJournal::default()),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with(&format!("cannot listen on {taken} for the admin api")),
        "{error}"
    );
}

#[tokio::test]
async fn healthz_reads_the_websocket_status_channel() {
    let admin = admin(Arc::new(MemoryJournal::default())).await;
    let (status, receiver) = watch::channel(ConnectionStatus::default());
    admin.state.watch_subscription("default", receiver);
    admin.state.rules_loaded(1);
    let (code, body) = admin.get_json("/healthz").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["subscriptions"]["default"]["state"], "connecting");

    let up_at = Utc.with_ymd_and_hms(2026, 1, 2, 9, 0, 0).unwrap();
    let event_at = Utc.with_ymd_and_hms(2026, 1, 2, 9, 5, 0).unwrap();
    status.send_modify(|s| {
        s.connected = true;
        s.connected_since = Some(up_at);
        s.last_event_at = Some(event_at);
        s.events_received = 5;
    });
    let (code, body) = admin.get_json("/healthz").await;
    assert_eq!(code, 200, "{body}");
    let default = &body["subscriptions"]["default"];
    assert_eq!(default["state"], "connected");
    assert_eq!(default["since"], "2026-01-02T09:00:00Z");
    assert_eq!(default["last_event_at"], "2026-01-02T09:05:00Z");
    assert_eq!(default["connection"]["events_received"], 5);

    let down_at = Utc.with_ymd_and_hms(2026, 1, 2, 9, 10, 0).unwrap();
    status.send_modify(|s| {
        s.connected = false;
        s.reconnects = 1;
        s.last_error = Some("no inbound frame for 75s".into());
        s.gaps.push(Gap {
            start: down_at,
            end: None,
            reason: "dead connection".into(),
        });
    });
    let (code, body) = admin.get_json("/healthz").await;
    assert_eq!(code, 503, "{body}");
    let default = &body["subscriptions"]["default"];
    assert_eq!(default["state"], "disconnected");
    assert_eq!(default["since"], "2026-01-02T09:10:00Z");
    assert_eq!(default["error"], "no inbound frame for 75s");
    assert_eq!(
        default["connection"]["gaps"][0]["reason"],
        "dead connection"
    );
}

#[tokio::test]
async fn api_serves_the_sqlite_journal() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(SqliteJournal::open(dir.path(), JournalOptions::for_command()).unwrap());
    let body = serde_json::json!({"event": "meeting.ended", "event_ts": 1, "payload": {"object": {"id": "1"}}});
    let event = Event::from_value(&body, Source::Webhook).unwrap();
    assert!(journal.accept_event(&event).await.unwrap());
    for (id, rule, status, minute) in [
        ("r1", "archive", RunStatus::Succeeded, 1),
        ("r2", "notify", RunStatus::Dead, 2),
        ("r3", "archive", RunStatus::Failed, 3),
    ] {
        let record = RunRecord {
            event_id: event.id.clone(),
            ..run(id, rule, status, minute)
        };
        journal.record_run(&record).await.unwrap();
    }
    let admin = admin(journal).await;
    let (status, body) = admin.get_json("/api/runs").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), vec!["r3", "r2", "r1"]);
    let (_, body) = admin.get_json("/api/runs?failed=true&rule=archive").await;
    assert_eq!(ids(&body), vec!["r3"]);
    let (status, body) = admin.get_json("/api/runs/r2").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "dead");
    assert_eq!(body["event"]["type"], "meeting.ended");
    let (status, _) = admin.get_json("/api/runs/nope").await;
    assert_eq!(status, 404);
}
