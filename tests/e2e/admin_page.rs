//! The operator's page over loopback, as HTML: every page and fragment
//! renders from a real SQLite store and a loaded rule set, everything that
//! came from outside (event bodies, script logs, effect arguments, rule
//! descriptions) is escaped, the Content-Security-Policy forbids inline
//! code, and the page's scripts are its own files. The same
//! page in a real browser is `tests/e2e/browser.rs`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use zoomwire_engine::admin::activity::ObservedJournal;
use zoomwire_engine::admin::{AdminOptions, AdminState, RunHistory, serve_admin};
use zoomwire_engine::effects::gateway::{EffectRecord, LogLine};
use zoomwire_engine::effects::redact;
use zoomwire_engine::engine::journal::{Journal, RunRecord, RunStatus};
use zoomwire_engine::event::{Event, Source};
use zoomwire_engine::journal::{JournalOptions, SqliteJournal};
use zoomwire_engine::reload::RuleSetHandle;
use zoomwire_engine::rules::RuleSources;
use zoomwire_engine::script::SandboxLimits;

const HOSTILE: &str = "<script>alert('x')</script><img src=x onerror=alert(1)>";

struct Page {
    base: String,
    /// Writes as the daemon's journal does, reported to the page.
    journal: Arc<ObservedJournal>,
    /// A run record to write again with other ids.
    sample: RunRecord,
    client: reqwest::Client,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Page {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Page {
    async fn get(&self, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.text().await.unwrap())
    }
}

/// A store with one hostile event, its succeeded run (effects and logs
/// full of markup) and a dead run, a rule set with a hostile description,
/// and the admin server over them.
async fn page() -> Page {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("notify.yaml"),
        format!(
            "name: notify\ndescription: \"{}\"\non: meeting.ended\nwhen: event.payload.object.duration > 5\nallow: [slack]\ndo: 'slack::post(\"#ops\", \"x\")'\n",
            HOSTILE.replace('"', "\\\"")
        ),
    )
    .unwrap();
    let handle = RuleSetHandle::load(
        RuleSources {
            paths: vec![rules],
            scripts_dir: dir.path().join("scripts"),
        },
        SandboxLimits::default(),
    )
    .unwrap();
    let store =
        SqliteJournal::open(&dir.path().join("data"), JournalOptions::for_command()).unwrap();
    let state = AdminState::new();
    state.rules_loaded(1);
    state.show_rules(Arc::new(handle));
    let journal = Arc::new(ObservedJournal::new(
        Arc::new(store.clone()),
        state.activity().clone(),
    ));

    let body = json!({
        "event": "meeting.ended",
        "event_ts": 1_732_000_000_000u64,
        "payload": {"object": {"topic": HOSTILE, "duration": 30, "host_email": "host@example.com"}},
        "download_token": "secret-download-token",
    });
    let event = Event::from_value(&body, Source::Webhook).unwrap();
    let now = Utc::now();
    let mut ok = RunRecord {
        id: "run-ok".into(),
        rule: "notify".into(),
        event_id: event.id.clone(),
        event_type: event.event_type.clone(),
        key: Some(HOSTILE.into()),
        status: RunStatus::Pending,
        attempt: 1,
        error: None,
        effects: Vec::new(),
        logs: Vec::new(),
        output: None,
        created_at: now,
        started_at: None,
        finished_at: None,
    };
    assert!(
        journal
            .accept_event_with_runs(&event, std::slice::from_ref(&ok))
            .await
            .unwrap()
    );
    ok.status = RunStatus::Succeeded;
    ok.started_at = Some(now);
    ok.finished_at = Some(now + chrono::TimeDelta::milliseconds(42));
    ok.output = Some(json!({"said": HOSTILE}));
    ok.logs = vec![LogLine {
        level: "info".into(),
        message: format!("posting {HOSTILE}"),
        at: now,
    }];
    ok.effects = vec![EffectRecord {
        seq: 1,
        name: "slack.post".into(),
        // Recorded as the effect gateway records arguments: redacted.
        args: redact(&json!({"channel": "#ops", "text": HOSTILE, "token": "xoxb-secret"})),
        result: Ok(json!({"ok": true, "ts": "1.2"})),
        unredacted: None,
        started_at: now,
        latency_ms: 3.5,
        replayed: false,
        in_doubt: false,
    }];
    journal.record_run(&ok).await.unwrap();
    let dead = RunRecord {
        id: "run-dead".into(),
        status: RunStatus::Dead,
        error: Some(format!("slack.post: {HOSTILE}")),
        effects: Vec::new(),
        logs: Vec::new(),
        output: None,
        finished_at: Some(now),
        created_at: now + chrono::TimeDelta::milliseconds(1),
        ..ok.clone()
    };
    journal.record_run(&dead).await.unwrap();

    let shutdown = CancellationToken::new();
    let history: Arc<dyn RunHistory> = Arc::new(store);
    let (addr, _) = serve_admin(
        AdminOptions::loopback("127.0.0.1:0".parse().unwrap()),
        state,
        history,
        shutdown.clone(),
    )
    .await
    .unwrap();
    Page {
        base: format!("http://{addr}"),
        journal,
        sample: ok,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        shutdown,
        _dir: dir,
    }
}

fn assert_escaped(path: &str, html: &str) {
    assert!(
        !html.contains("<script>alert"),
        "{path} lets a script through:\n{html}"
    );
    assert!(
        !html.contains("<img src=x"),
        "{path} lets markup through:\n{html}"
    );
    assert!(!html.contains("onerror=alert(1)>"), "{path}");
    // Only the page's own script files, from this server.
    let scripts: Vec<&str> = html
        .match_indices("<script")
        .map(|(i, _)| &html[i..])
        .collect();
    for script in &scripts {
        assert!(
            script.starts_with("<script src=\"/ui/assets/"),
            "{path}: {script:.80}"
        );
    }
}

#[tokio::test]
async fn every_page_renders_and_escapes_what_came_from_outside() {
    let page = page().await;
    for path in [
        "/ui/",
        "/ui/rules",
        "/ui/events",
        "/ui/runs",
        "/ui/runs?rule=notify&status=succeeded",
        "/ui/runs/run-ok",
        "/ui/runs/run-dead",
        "/ui/dead",
        "/ui/part/overview",
        "/ui/part/events",
        "/ui/part/runs",
        "/ui/part/dead",
        "/ui/part/runs/run-ok",
        "/ui/part/runs/run-ok/timeline?effects_after=0",
    ] {
        let (status, headers, html) = page.get(path).await;
        assert_eq!(status, 200, "{path}: {html}");
        assert_escaped(path, &html);
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(headers["cache-control"], "no-store", "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }

    let (_, _, trace) = page.get("/ui/runs/run-ok").await;
    assert!(trace.contains("&#60;script&#62;alert") || trace.contains("&lt;script&gt;alert"));
    assert!(trace.contains("slack.post"), "the effect is shown");
    assert!(
        trace.contains("[redacted]"),
        "arguments as recorded, redacted"
    );
    assert!(
        !trace.contains("secret-download-token"),
        "the store keeps the event's download token, the page does not show it"
    );
    assert!(
        trace.contains("Its `when` answered true.")
            || trace.contains("Its &#96;when&#96; answered true.")
    );
    assert!(trace.contains("42 ms"), "the duration");

    let (_, _, rules) = page.get("/ui/rules").await;
    assert!(rules.contains("slack"), "capabilities: {rules}");
    assert!(rules.contains("1 succeeded"), "counts: {rules}");
    assert!(rules.contains("1 dead"), "counts: {rules}");

    let (_, _, events) = page.get("/ui/events").await;
    assert!(events.contains("meeting.ended"), "{events}");
    assert!(
        events.contains("/ui/runs/run-ok"),
        "the matched rule links its run"
    );

    let (_, _, dead) = page.get("/ui/dead").await;
    assert!(dead.contains("run-dead"));
    assert!(
        !dead.contains("data-run=\"run-ok\""),
        "only failed and dead runs"
    );
    assert!(dead.contains("hx-post=\"/ui/runs/run-dead/retry\""));
}

#[tokio::test]
async fn the_root_redirects_and_unknown_things_are_clear() {
    let page = page().await;
    let (status, headers, _) = page.get("/").await;
    assert_eq!(status, 303);
    assert_eq!(headers["location"], "/ui/");
    let (status, _, html) = page.get("/ui/runs/no-such-run").await;
    assert_eq!(status, 404);
    assert!(html.contains("There is no run with id"), "{html}");
    let (status, _, html) = page.get("/ui/runs?status=weird").await;
    assert_eq!(status, 400);
    assert!(html.contains("unknown status"), "{html}");
    let (status, headers, js) = page.get("/ui/assets/htmx-2.0.11.min.js").await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(js.len() > 40_000);
    let (status, _, _) = page.get("/ui/assets/nothing.js").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_stream_says_when_runs_change_and_ends_with_the_server() {
    let page = page().await;
    let mut response = page
        .client
        .get(format!("{}/ui/stream", page.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let fresh = RunRecord {
        id: "run-new".into(),
        ..page.sample.clone()
    };
    page.journal.record_run(&fresh).await.unwrap();
    let mut seen = String::new();
    while !seen.contains("event: runs") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .expect("the stream tells of the new run")
            .unwrap()
            .expect("still open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!seen.contains("event: events"), "no event came: {seen}");
    page.shutdown.cancel();
    let rest = tokio::time::timeout(Duration::from_secs(5), response.text())
        .await
        .expect("the stream ends when the server stops");
    assert!(rest.is_ok());
}
