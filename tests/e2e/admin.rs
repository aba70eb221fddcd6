//! The admin API over loopback: `/healthz` follows what the daemon reports,
//! `/metrics` shows what was recorded, `/api/runs` lists, pages and finds
//! runs, `POST /api/runs/{id}/retry` requeues one; and the guard: loopback
//! host names only without a token, Bearer tokens and session cookies with
//! one, same-origin POSTs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zoomwire_engine::admin::{
    AdminOptions, AdminState, AdminToken, ConnectionState, RunHistory, SubscriptionHealth,
    serve_admin,
};
use zoomwire_engine::engine::journal::{Journal, JournalError, RunRecord, RunStatus};
use zoomwire_engine::event::{Event, Source};
use zoomwire_engine::journal::history::{
    HistoryError, RuleActivity, RunPage, RunQuery, RunTrace, TraceQuery,
};
use zoomwire_engine::journal::memory::MemoryJournal;
use zoomwire_engine::journal::{JournalOptions, SqliteJournal};
use zoomwire_engine::zoom::websocket::{ConnectionStatus, Gap};

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
    let (addr, _task) = serve_admin(
        AdminOptions::loopback(loopback),
        state.clone(),
        history,
        shutdown.clone(),
    )
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

fn locked() -> HistoryError {
    HistoryError::Journal(JournalError("database is locked".into()))
}

impl RunHistory for BrokenHistory {
    fn list_runs(&self, _: &RunQuery) -> Result<RunPage, HistoryError> {
        Err(locked())
    }

    fn run_trace(&self, _: &str, _: &TraceQuery) -> Result<Option<RunTrace>, HistoryError> {
        Err(locked())
    }

    fn rule_activity(
        &self,
        _: &str,
        _: DateTime<Utc>,
        _: usize,
    ) -> Result<RuleActivity, HistoryError> {
        Err(locked())
    }
}

#[tokio::test]
async fn history_errors_are_500_with_the_reason() {
    let admin = admin(Arc::new(BrokenHistory)).await;
    let (status, body) = admin.get_json("/api/runs").await;
    assert_eq!(status, 500);
    assert_eq!(
        body["error"],
        "run history unavailable: journal: database is locked"
    );
    let (status, _) = admin.get_json("/api/runs/r1").await;
    assert_eq!(status, 500);
}

#[tokio::test]
async fn a_taken_address_is_an_error() {
    let first = admin(Arc::new(MemoryJournal::default())).await;
    let taken: SocketAddr = first.base.trim_start_matches("http://").parse().unwrap();
    let error = serve_admin(
        AdminOptions::loopback(taken),
        AdminState::new(),
        Arc::new(MemoryJournal::default()),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with(&format!("cannot listen on {taken} for the admin server")),
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

/// A raw HTTP/1.1 request over loopback, with exactly these headers: the
/// status line's code and the whole answer.
async fn raw_request(addr: &str, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

#[tokio::test]
async fn without_a_token_only_loopback_host_names_are_answered() {
    let admin = admin(Arc::new(MemoryJournal::default())).await;
    let addr = admin.base.trim_start_matches("http://").to_string();
    let port = addr.rsplit(':').next().unwrap();
    for host in [
        addr.clone(),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (code, text) = raw_request(
            &addr,
            &format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(code, 503, "{host} is loopback: {text}");
    }
    // A page served from attacker.example whose name now points at 127.0.0.1.
    for path in ["/healthz", "/api/runs", "/ui/", "/metrics"] {
        let (code, text) = raw_request(
            &addr,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: attacker.example:{port}\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(code, 403, "{path}: {text}");
        assert!(text.contains("loopback"), "{text}");
    }
    let (code, _) = raw_request(&addr, "GET /healthz HTTP/1.0\r\n\r\n").await;
    assert_eq!(code, 403, "no Host at all");
}

#[tokio::test]
async fn binding_beyond_loopback_without_a_token_is_refused() {
    let error = serve_admin(
        AdminOptions::loopback("0.0.0.0:0".parse().unwrap()),
        AdminState::new(),
        Arc::new(MemoryJournal::default()),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        error.to_string().contains("without ZOOMWIRE_ADMIN_TOKEN"),
        "{error}"
    );
}

const TOKEN: &str = "test-admin-token-0123456789";

async fn guarded_admin(history: Arc<dyn RunHistory>) -> Admin {
    let state = AdminState::new();
    let shutdown = CancellationToken::new();
    let options = AdminOptions {
        addr: "127.0.0.1:0".parse().unwrap(),
        token: Some(AdminToken::new(TOKEN).unwrap()),
    };
    let (addr, _task) = serve_admin(options, state.clone(), history, shutdown.clone())
        .await
        .unwrap();
    Admin {
        base: format!("http://{addr}"),
        state,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        shutdown,
    }
}

#[tokio::test]
async fn with_a_token_everything_but_healthz_needs_it() {
    let admin = guarded_admin(journal_with_runs().await).await;
    let (status, _) = admin.get("/healthz").await;
    assert_eq!(status, 503, "open, and honest about having no rules");
    for path in ["/api/runs", "/api/runs/r2", "/metrics"] {
        let response = admin
            .client
            .get(format!("{}{path}", admin.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{path}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"zoomwire\""
        );
        for wrong in ["Bearer nope", "Bearer test-admin-token-012345678", TOKEN] {
            let response = admin
                .client
                .get(format!("{}{path}", admin.base))
                .header("authorization", wrong)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 401, "{path} with `{wrong}`");
        }
        let response = admin
            .client
            .get(format!("{}{path}", admin.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path} with the token");
    }
    // The page answers 401 with its login form.
    let response = admin
        .client
        .get(format!("{}/ui/runs", admin.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.text().await.unwrap().contains("name=\"token\""));
}

#[tokio::test]
async fn the_login_form_trades_the_token_for_a_strict_session_cookie() {
    let admin = guarded_admin(journal_with_runs().await).await;
    let origin = admin.base.clone();
    let login = |token: &'static str| {
        admin
            .client
            .post(format!("{}/ui/login", admin.base))
            .header("origin", origin.clone())
            .form(&[("token", token)])
            .send()
    };
    let refused = login("wrong-token-wrong-token").await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().get("set-cookie").is_none());
    assert!(
        refused
            .text()
            .await
            .unwrap()
            .contains("That is not the admin token.")
    );

    let accepted = login(TOKEN).await.unwrap();
    assert_eq!(accepted.status(), 303);
    assert_eq!(accepted.headers()["location"], "/ui/");
    let cookie = accepted.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(!cookie.contains(TOKEN), "the cookie is not the token");
    let session = cookie.split(';').next().unwrap().to_string();

    let page = admin
        .client
        .get(format!("{}/ui/runs", admin.base))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Log out"));

    // A cross-site form posting with the cookie is refused before anything runs.
    let forged = admin
        .client
        .post(format!("{}/ui/runs/r2/retry", admin.base))
        .header("cookie", &session)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let no_origin = admin
        .client
        .post(format!("{}/api/runs/r2/retry", admin.base))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(no_origin.status(), 403, "a cookie needs an Origin");

    let logout = admin
        .client
        .post(format!("{}/ui/logout", admin.base))
        .header("cookie", &session)
        .header("origin", origin.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 303);
    let after = admin
        .client
        .get(format!("{}/api/runs", admin.base))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401, "the session ended");
}

#[tokio::test]
async fn api_pages_through_runs_with_cursors_and_statuses() {
    let admin = admin(journal_with_runs().await).await;
    let (_, first) = admin.get_json("/api/runs?limit=3").await;
    assert_eq!(ids(&first), vec!["r4", "r3", "r2"]);
    let next = first["next"].as_str().expect("a next page");
    let (_, second) = admin
        .get_json(&format!("/api/runs?limit=3&before={next}"))
        .await;
    assert_eq!(ids(&second), vec!["r1"]);
    assert_eq!(second["next"], Value::Null);
    let (_, dead) = admin.get_json("/api/runs?status=dead").await;
    assert_eq!(ids(&dead), vec!["r2"]);
    let (status, body) = admin.get_json("/api/runs?status=gone").await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("unknown status `gone`")
    );
    let (status, _) = admin.get_json("/api/runs?before=garbage").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn retry_over_the_api_requeues_a_dead_run_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(SqliteJournal::open(dir.path(), JournalOptions::for_command()).unwrap());
    let body = serde_json::json!({"event": "meeting.ended", "event_ts": 7});
    let event = Event::from_value(&body, Source::Webhook).unwrap();
    assert!(journal.accept_event(&event).await.unwrap());
    let mut dead = run("r2", "notify", RunStatus::Dead, 2);
    dead.event_id = event.id.clone();
    dead.finished_at = Some(Utc::now());
    journal.record_run(&dead).await.unwrap();
    let admin = admin(journal.clone()).await;
    let before = admin.state.activity().ticks();

    let retry = |id: &'static str| {
        admin
            .client
            .post(format!("{}/api/runs/{id}/retry", admin.base))
            .send()
    };
    let response = retry("r2").await.unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["outcome"], "requeued");
    assert_eq!(
        journal.get_run("r2").unwrap().unwrap().run.status,
        RunStatus::Pending,
        "the same change as `zoomwire runs retry`"
    );
    assert_ne!(
        admin.state.activity().ticks(),
        before,
        "open pages hear of it"
    );
    let again = retry("r2").await.unwrap();
    assert_eq!(again.status(), 409);
    let body: Value = again.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("not over yet"));
    assert_eq!(retry("nope").await.unwrap().status(), 404);

    // From another site: refused, and nothing changes.
    let forged = admin
        .client
        .post(format!("{}/api/runs/r2/retry", admin.base))
        .header("origin", "http://attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);

    let memory = admin_for_memory().await;
    let response = memory
        .client
        .post(format!("{}/api/runs/r2/retry", memory.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 501, "the memory journal cannot retry");
}

async fn admin_for_memory() -> Admin {
    admin(journal_with_runs().await).await
}

#[test]
fn the_daemon_will_not_serve_beyond_loopback_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let run = |vars: &[(&str, &str)]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_zoomwire"))
            .arg("run")
            .env_clear()
            .envs(vars.iter().copied())
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let output = run(&[("ZOOMWIRE_ADMIN_ADDR", "0.0.0.0:0")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`0.0.0.0:0` is beyond loopback and ZOOMWIRE_ADMIN_TOKEN is not set"),
        "{stderr}"
    );
    let short = "secret-short";
    let output = run(&[
        ("ZOOMWIRE_ADMIN_ADDR", "0.0.0.0:0"),
        ("ZOOMWIRE_ADMIN_TOKEN", short),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ZOOMWIRE_ADMIN_TOKEN / admin_token: too short"),
        "{stderr}"
    );
    assert!(!stderr.contains(short), "the token never shows: {stderr}");
}
