//! Secrets end to end, through the real `zoomwire run` at `RUST_LOG=trace`
//! against the simulator (its recording files over TLS), a real SMTP server
//! (STARTTLS, AUTH required), the webhook endpoint and a guarded admin
//! server, with a rule that uses every effect on a recording event that
//! carries a download token. Afterwards no secret the process held (the
//! client secret, every OAuth token the simulator issued, the download
//! token, the Slack bot token and webhook URL, the SMTP password, the
//! webhook secret, the admin token) is in its standard output or error, its
//! store (database and WAL, while running and after), its admin API, its
//! pages, or what it sent to Slack and by mail.
//!
//! And a run that failed after a Zoom call, retried with `zoomwire runs
//! retry`, replays that call's unredacted result from the store (a join
//! link with its `pwd=`), while its record shows it redacted.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::daemon::{WAIT, Workspace, eventually};
use crate::support::smtp::{SinkTls, SmtpSink};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use zoomwire_engine::zoom::webhook::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
use zoomwire_sim::sim::data::WEEKLY_SYNC_ID;
use zoomwire_sim::sim::{Fault, SimConfig, SimTls};

/// Does everything a rule can with the recording event, and tries to show
/// the download token it should not have.
const LEAKY: &str = r##"name: leaky
on: recording.completed
allow: [zoom.read, zoom.download, slack, email]
do: |
  let rec = event.payload.object;
  log::info(`token seen by the script: [${event.download_token}]`);
  log::info(`event: ${event}`);
  let saved = zoom::download(rec.recording_files[0], "rec/a.mp4");
  let meeting = zoom::get("/meetings/{id}", #{ id: rec.id });
  log::info(`meeting: ${meeting}`);
  state::set("join", meeting.join_url);
  slack::post("#general", `saved ${saved.path} (${saved.bytes} bytes): ${event}`);
  slack::webhook("default", `archived ${rec.topic}`);
  email::send(#{ to: "host@example.com", subject: "recording", text: `${event}` });
  meeting
"##;

/// Reads a meeting, then posts its join link.
const INVITE: &str = r##"name: invite
on: meeting.started
allow: [zoom.read, slack]
do: |
  let meeting = zoom::get("/meetings/{id}", #{ id: event.payload.object.id });
  slack::post("#general", `join: ${meeting.join_url}`);
"##;

fn random(prefix: &str) -> String {
    format!(
        "{prefix}-{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    )
}

/// A `zoomwire run` child whose standard output and error are both kept.
struct Child {
    process: tokio::process::Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Child {
    fn spawn(ws: &Workspace) -> Child {
        let mut process = ws
            .command(&["run"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the daemon starts");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(keep_lines(process.stdout.take().unwrap(), stdout.clone()));
        tokio::spawn(keep_lines(process.stderr.take().unwrap(), stderr.clone()));
        Child {
            process,
            stdout,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    /// The first JSON log line whose message is `message`.
    async fn wait_for_log(&self, message: &str) -> Value {
        eventually(message, || async {
            self.stderr
                .lock()
                .unwrap()
                .iter()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find(|line| line["message"] == message)
        })
        .await
    }

    async fn stop(&mut self) {
        let pid = self.process.id().expect("running").to_string();
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(20), self.process.wait())
            .await
            .expect("the daemon stops")
            .unwrap();
        assert!(exit.success(), "{exit}:\n{}", self.stderr());
        // Let the readers take the last lines.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn keep_lines(stream: impl AsyncRead + Unpin, lines: Arc<Mutex<Vec<String>>>) {
    let mut reader = BufReader::new(stream).lines();
    while let Ok(Some(line)) = reader.next_line().await {
        lines.lock().unwrap().push(line);
    }
}

/// GET with the admin token: (status, body).
async fn admin_get(admin: &str, token: &str, path: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(format!("http://{admin}{path}"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the admin server answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

async fn post_webhook(addr: &str, secret: &str, body: &str) -> u16 {
    let timestamp = chrono::Utc::now().timestamp().to_string();
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

/// The store's database and write-ahead log, as they are now.
fn store_files(ws: &Workspace) -> Vec<(String, Vec<u8>)> {
    ["zoomwire.db", "zoomwire.db-wal"]
        .iter()
        .filter_map(|name| {
            let bytes = std::fs::read(ws.data_dir().join(name)).ok()?;
            Some((name.to_string(), bytes))
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// A run of `rule` once it is over, from the admin API.
async fn finished_run(admin: &str, token: &str, rule: &str, child: &Child) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = admin_get(admin, token, &format!("/api/runs?rule={rule}")).await;
        let page: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if let Some(run) = page["runs"]
            .as_array()
            .and_then(|runs| runs.first())
            .filter(|run| !matches!(run["status"].as_str(), Some("pending" | "running")))
        {
            return run.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no finished run of {rule}:\n{}",
            child.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_reaches_any_output_the_store_or_the_admin_server_at_trace_level() {
    let certs = crate::support::smtp::make_certificates();
    let download_token = random("download-token");
    let config = SimConfig {
        client_secret: random("client-secret"),
        slack_bot_token: random("xoxb"),
        download_token: download_token.clone(),
        tls: Some(
            SimTls::from_files(
                &certs.path().join("server.pem"),
                &certs.path().join("server.key"),
            )
            .unwrap(),
        ),
        ..SimConfig::default()
    };
    let mut ws = Workspace::with_sim(config).await;
    let smtp_password = random("smtp-password");
    let sink = SmtpSink::start(SinkTls::StartTls, Some(("mailer", &smtp_password)));
    let webhook_secret = random("webhook-secret");
    let admin_token = random("admin-token");
    for (name, value) in [
        (
            "SMTP_URL",
            format!("smtp://mailer:{smtp_password}@127.0.0.1:{}", sink.port),
        ),
        (
            "SMTP_CA_FILE",
            sink.ca_file.as_ref().unwrap().display().to_string(),
        ),
        ("EMAIL_FROM", "zoomwire@example.com".into()),
        ("ZOOM_WEBHOOK_SECRET_TOKEN", webhook_secret.clone()),
        ("ZOOMWIRE_WEBHOOK_ADDR", "127.0.0.1:0".into()),
        ("ZOOMWIRE_ADMIN_TOKEN", admin_token.clone()),
        (
            "ZOOMWIRE_CA_FILE",
            certs.path().join("ca.pem").display().to_string(),
        ),
        ("RUST_LOG", "trace".into()),
    ] {
        ws.set_env(name, &value);
    }
    ws.write_rule("leaky.yaml", LEAKY);

    let mut child = Child::spawn(&ws);
    let running = child.wait_for_log("zoomwire is running").await;
    let admin = running["admin"].as_str().unwrap().to_string();
    let subscription = ws.sim.subscription_id().to_string();
    assert!(
        ws.sim.wait_for_connections(&subscription, 1, WAIT).await,
        "{}",
        child.stderr()
    );
    let event = ws.sim.recording_completed_event(WEEKLY_SYNC_ID).unwrap();
    assert_eq!(event["download_token"], download_token.as_str());
    assert_eq!(ws.sim.emit_event(None, &event), 1);
    let webhook = child
        .wait_for_log("webhook endpoint listening on /zoom/webhook")
        .await["addr"]
        .as_str()
        .unwrap()
        .to_string();
    let mut by_webhook = event.clone();
    by_webhook["payload"]["object"]["uuid"] = json!("by-webhook==");
    assert_eq!(
        post_webhook(&webhook, &webhook_secret, &by_webhook.to_string()).await,
        200
    );

    let run = finished_run(&admin, &admin_token, "leaky", &child).await;
    assert_eq!(run["status"], "succeeded", "{run}\n{}", child.stderr());
    let run_id = run["id"].as_str().unwrap().to_string();
    // Everything the admin server shows.
    let mut shown = Vec::new();
    for path in [
        "/healthz".to_string(),
        "/metrics".into(),
        "/api/runs".into(),
        format!("/api/runs/{run_id}"),
        "/ui/".into(),
        "/ui/runs".into(),
        format!("/ui/runs/{run_id}"),
        "/ui/events".into(),
        "/ui/rules".into(),
        "/ui/dead".into(),
    ] {
        let (status, body) = admin_get(&admin, &admin_token, &path).await;
        assert_eq!(status, 200, "{path}: {body}");
        shown.push((path, body));
    }
    let detail: Value = serde_json::from_str(&shown[3].1).unwrap();
    let logs: Vec<&str> = detail["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|line| line["message"].as_str())
        .collect();
    assert!(
        logs.contains(&"token seen by the script: []"),
        "the script never sees the download token: {logs:?}"
    );
    let store_while_running = store_files(&ws);
    child.stop().await;
    let store_after = store_files(&ws);

    // The token was used, behind the script's back, over TLS.
    let download = ws
        .sim
        .requests()
        .into_iter()
        .find(|r| r.raw_path.starts_with("/rec/download/"))
        .expect("the recording was downloaded");
    assert_eq!(download.auth.as_deref(), Some("bearer download_token"));
    // One mail for the event by WebSocket, one for the copy by webhook.
    let mail = sink.wait_for_messages(2);
    assert_eq!(mail.len(), 2);
    for message in &mail {
        assert_eq!(message["tls"], true);
        assert_eq!(message["authenticated"], true);
    }
    let stderr = child.stderr();
    assert!(
        stderr.contains(r#""level":"TRACE""#),
        "trace logging was on"
    );

    let mut secrets = vec![
        ("client secret", ws.sim.client_secret().to_string()),
        ("download token", download_token),
        ("slack bot token", ws.sim.slack_bot_token().to_string()),
        ("slack webhook url", ws.sim.slack_webhook_url("default")),
        ("smtp password", smtp_password),
        ("webhook secret", webhook_secret),
        ("admin token", admin_token),
    ];
    let issued = ws.sim.issued_tokens();
    assert!(!issued.is_empty());
    secrets.extend(issued.into_iter().map(|token| ("oauth token", token)));

    let mut outputs: Vec<(String, Vec<u8>)> = vec![
        ("stdout".into(), child.stdout().into_bytes()),
        ("stderr".into(), stderr.into_bytes()),
    ];
    for (name, bytes) in store_while_running {
        outputs.push((format!("{name} (running)"), bytes));
    }
    for (name, bytes) in store_after {
        outputs.push((format!("{name} (stopped)"), bytes));
    }
    for (path, body) in shown {
        outputs.push((format!("GET {path}"), body.into_bytes()));
    }
    for post in ws.sim.slack_posts() {
        outputs.push((
            format!("slack {}", post.via),
            post.body.to_string().into_bytes(),
        ));
    }
    for message in mail {
        outputs.push(("mail".into(), message["raw"].to_string().into_bytes()));
    }
    let mut leaks = Vec::new();
    for (what, secret) in &secrets {
        for (name, bytes) in &outputs {
            if contains(bytes, secret) {
                leaks.push(format!("{what} in {name}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked: {leaks:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_run_replays_the_unredacted_result_its_record_shows_redacted() {
    let mut ws = Workspace::new().await;
    ws.write_rule("invite.yaml", INVITE);
    // Slack fails every attempt of the first run (its client tries four times).
    ws.sim
        .inject_fault(Fault::status("/slack/api/chat.postMessage", 4, 503));
    ws.set_env("RUST_LOG", "info");
    let daemon = ws.start(1).await;
    let started = crate::support::daemon::meeting_event("meeting.started", 1, "host");
    let mut started = started;
    started["payload"]["object"]["id"] = json!(WEEKLY_SYNC_ID);
    ws.sim.emit_event(None, &started);
    let runs = eventually("the failed run", || async {
        let runs = ws.runs().await;
        runs.first()
            .filter(|run| run["status"] == "failed")
            .map(|_| runs.clone())
    })
    .await;
    let id = runs[0]["id"].as_str().unwrap().to_string();
    let join_url = ws.sim.meeting(WEEKLY_SYNC_ID).unwrap()["join_url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(join_url.contains("?pwd="), "{join_url}");

    let retried = ws.zoomwire(&["runs", "retry", &id]).await;
    assert!(retried.status.success(), "{retried:?}");
    let posts = eventually("the retried post", || async {
        let posts = ws.slack_texts("#general");
        (!posts.is_empty()).then_some(posts)
    })
    .await;
    assert_eq!(
        posts,
        [format!("join: {join_url}")],
        "the replayed answer is the real one"
    );
    let gets = ws.answered("/v2/meetings/");
    assert_eq!(gets.len(), 1, "replayed, not asked again: {gets:?}");

    // The post reaches Slack before the run that made it is recorded.
    let detail = eventually("the retried run's record", || async {
        let (_, detail) = daemon.admin_get(&format!("/api/runs/{id}")).await;
        (!matches!(detail["status"].as_str(), Some("pending" | "running"))).then_some(detail)
    })
    .await;
    assert_eq!(detail["status"], "succeeded");
    let effects = detail["effects"].as_array().unwrap();
    assert_eq!(effects[0]["name"], "zoom.get");
    let shown_url = effects[0]["result"]["Ok"]["join_url"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", effects[0]));
    assert!(shown_url.ends_with("?pwd=[redacted]"), "{shown_url}");
    assert!(
        !detail
            .to_string()
            .contains(join_url.split("pwd=").nth(1).unwrap()),
        "the record never shows it: {detail}"
    );
}
