//! `zoomwire run` end to end, as an operator runs it: the real binary with
//! its environment, a real store in a temporary folder and the simulator in
//! this process. Graceful shutdown with a run in flight (finished within the
//! grace, or left pending and resumed on the next start), one run for an
//! event that arrives by WebSocket and by webhook, a dropped connection,
//! configuration errors (bad credentials, missing settings, a corrupt store)
//! that exit 2 with a clear message, dead letters retried with
//! `zoomwire runs retry`, and `--rules`/`--scripts` over the configured folders.

#[path = "support/daemon.rs"]
mod support;

use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;
use support::{Workspace, eventually, meeting_event, runs_of};
use zoomwire::sim::data::HOST_USER_ID;
use zoomwire::zoom::webhook::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};

/// A Slack post, a Zoom read the tests can slow down, a second Slack post.
const NOTIFY: &str = r##"name: notify
on: meeting.started
allow: [slack, zoom.read]
timeout: 60s
do: |
  let m = event.payload.object;
  slack::post("#general", `started: ${m.topic}`);
  let host = zoom::get("/users/{userId}", #{ userId: m.host_id });
  slack::post("#ops", `${m.topic} hosted by ${host.email}`);
"##;

fn status(run: &Value) -> &str {
    run["status"].as_str().unwrap_or_default()
}

async fn wait_finished(ws: &Workspace, count: usize) -> Vec<Value> {
    eventually("every run to finish", || async {
        let runs = ws.runs().await;
        let done = runs.len() == count && runs.iter().all(|r| !r["finished_at"].is_null());
        done.then_some(runs)
    })
    .await
}

async fn wait_zoom_call_in_flight(ws: &Workspace) {
    eventually("the Zoom call in flight", || async {
        let calling = ws.sim.in_flight().iter().any(|r| r.contains("/v2/users/"));
        calling.then_some(())
    })
    .await;
}

fn token_requests(ws: &Workspace) -> usize {
    ws.answered("/oauth/token").len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_the_run_in_flight_finish_within_the_grace_and_exits_0() {
    let mut ws = Workspace::new().await;
    ws.set_env("ZOOMWIRE_SHUTDOWN_GRACE", "10s");
    ws.write_rule("notify.yaml", NOTIFY);
    ws.sim.set_delay("/v2/users/", Duration::from_millis(1500));
    let mut daemon = ws.start(1).await;
    ws.sim
        .emit_event(None, &meeting_event("meeting.started", 1, HOST_USER_ID));
    wait_zoom_call_in_flight(&ws).await;
    daemon.terminate().await;

    let exit = daemon.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(exit.code(), Some(0), "{}", daemon.stderr());
    assert!(!daemon.logged("stopped: every run finished").is_empty());
    let runs = ws.runs().await;
    assert_eq!(status(&runs[0]), "succeeded", "{runs:?}");
    assert_eq!(
        ws.slack_texts("#ops"),
        ["Meeting 1 hosted by host@example.com"]
    );
    eventually("the WebSocket closed", || async {
        ws.sim.connections().iter().all(|c| !c.open).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_that_outlasts_the_grace_stays_pending_and_resumes_on_the_next_start() {
    let mut ws = Workspace::new().await;
    ws.set_env("ZOOMWIRE_SHUTDOWN_GRACE", "500ms");
    ws.write_rule("notify.yaml", NOTIFY);
    ws.sim.set_delay("/v2/users/", Duration::from_secs(120));
    let mut daemon = ws.start(1).await;
    ws.sim
        .emit_event(None, &meeting_event("meeting.started", 1, HOST_USER_ID));
    wait_zoom_call_in_flight(&ws).await;
    daemon.terminate().await;

    let exit = daemon.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(
        exit.code(),
        Some(1),
        "runs left in flight: exit 1\n{}",
        daemon.stderr()
    );
    assert!(
        !daemon
            .logged(
                "stopped with runs still in flight: they stay pending and resume on the next start"
            )
            .is_empty(),
        "{}",
        daemon.stderr()
    );
    let runs = ws.runs().await;
    assert_eq!(status(&runs[0]), "running", "left unfinished: {runs:?}");

    ws.sim.set_delay("/v2/users/", Duration::ZERO);
    let daemon = ws.start(2).await;
    let runs = wait_finished(&ws, 1).await;
    assert_eq!(status(&runs[0]), "succeeded", "{runs:?}");
    assert_eq!(ws.slack_texts("#general"), ["started: Meeting 1"]);
    assert_eq!(
        ws.slack_texts("#ops"),
        ["Meeting 1 hosted by host@example.com"]
    );
    daemon.kill().await;
}

/// POSTs `body` to the daemon's webhook endpoint, signed as Zoom signs it.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_event_by_websocket_and_by_webhook_runs_its_rules_once() {
    const SECRET: &str = "webhook-secret-for-tests";
    let mut ws = Workspace::new().await;
    ws.set_env("ZOOM_WEBHOOK_SECRET_TOKEN", SECRET);
    ws.set_env("ZOOMWIRE_WEBHOOK_ADDR", "127.0.0.1:0");
    ws.write_rule(
        "once.yaml",
        r##"name: once
on: meeting.started
allow: [slack]
do: |
  slack::post("#general", `${meta.source}: ${event.payload.object.topic}`);
"##,
    );
    let daemon = ws.start(1).await;
    let webhook = daemon
        .wait_for_log("webhook endpoint listening on /zoom/webhook")
        .await["addr"]
        .as_str()
        .expect("the webhook address is logged")
        .to_string();

    // WebSocket first, then the webhook; then the other way round.
    let first = meeting_event("meeting.started", 1, HOST_USER_ID);
    assert_eq!(ws.sim.emit_event(None, &first), 1);
    eventually("the first run", || async {
        (ws.runs().await.len() == 1).then_some(())
    })
    .await;
    assert_eq!(
        post_webhook(&webhook, SECRET, &first.to_string()).await,
        200
    );
    let second = meeting_event("meeting.started", 2, HOST_USER_ID);
    assert_eq!(
        post_webhook(&webhook, SECRET, &second.to_string()).await,
        200
    );
    eventually("the second run", || async {
        (ws.runs().await.len() == 2).then_some(())
    })
    .await;
    assert_eq!(ws.sim.emit_event(None, &second), 1);
    // And both at once.
    let third = meeting_event("meeting.started", 3, HOST_USER_ID);
    let third_text = third.to_string();
    let (_, answer) = tokio::join!(
        async { ws.sim.emit_event(None, &third) },
        post_webhook(&webhook, SECRET, &third_text)
    );
    assert_eq!(answer, 200);

    // The duplicates are counted once journaled; then nothing more may run.
    eventually("three duplicates counted", || async {
        let (_, metrics) = metrics_text(&daemon).await;
        (duplicates(&metrics) >= 3.0).then_some(())
    })
    .await;
    let (_, metrics) = metrics_text(&daemon).await;
    assert_eq!(duplicates(&metrics), 3.0, "each counted once");
    let runs = wait_finished(&ws, 3).await;
    assert!(runs.iter().all(|r| status(r) == "succeeded"), "{runs:?}");
    let posts = ws.slack_texts("#general");
    assert_eq!(posts.len(), 3, "one post per event: {posts:?}");
    assert_eq!(posts[0], "websocket:default: Meeting 1");
    assert_eq!(posts[1], "webhook: Meeting 2");
    assert!(posts[2].ends_with(": Meeting 3"), "{posts:?}");
    daemon.kill().await;
}

async fn metrics_text(daemon: &support::Daemon) -> (u16, String) {
    let admin = daemon.admin.expect("running");
    let response = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("metrics answer");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// The sum of `zoomwire_events_duplicate_total` over its labels.
fn duplicates(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with("zoomwire_events_duplicate_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_the_server_drops_the_connection_the_daemon_handles_the_next_event() {
    let ws = Workspace::new().await;
    ws.write_rule("notify.yaml", NOTIFY);
    let daemon = ws.start(1).await;
    ws.sim
        .emit_event(None, &meeting_event("meeting.started", 1, HOST_USER_ID));
    wait_finished(&ws, 1).await;

    assert_eq!(ws.sim.drop_connections(None), 1);
    let subscription = ws.sim.subscription_id().to_string();
    assert!(
        ws.sim
            .wait_for_connections(&subscription, 2, support::WAIT)
            .await,
        "reconnected:\n{}",
        daemon.stderr()
    );
    assert_eq!(
        ws.sim
            .emit_event(None, &meeting_event("meeting.started", 2, HOST_USER_ID)),
        1
    );
    let runs = wait_finished(&ws, 2).await;
    assert!(runs.iter().all(|r| status(r) == "succeeded"), "{runs:?}");
    assert_eq!(
        ws.slack_texts("#general"),
        ["started: Meeting 1", "started: Meeting 2"]
    );
    daemon.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_credentials_exit_2_naming_the_setting_without_a_retry_storm() {
    let mut ws = Workspace::new().await;
    ws.set_env("ZOOM_CLIENT_SECRET", "not-the-secret");
    ws.write_rule("notify.yaml", NOTIFY);
    let mut daemon = ws.spawn();
    let exit = daemon.wait_exit(Duration::from_secs(20)).await;
    let stderr = daemon.stderr();
    assert_eq!(exit.code(), Some(2), "{stderr}");
    assert!(stderr.contains("ZOOM_CLIENT_SECRET"), "{stderr}");
    assert!(stderr.contains("refused the oauth credentials"), "{stderr}");
    assert!(
        !stderr.contains("not-the-secret"),
        "no secret in the output"
    );
    assert!(
        token_requests(&ws) <= 2,
        "no retry storm: {} token requests",
        token_requests(&ws)
    );
    assert!(ws.sim.connections().is_empty(), "never connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_settings_exit_2_listing_every_one() {
    let mut ws = Workspace::new().await;
    for name in [
        "ZOOM_CLIENT_ID",
        "ZOOM_CLIENT_SECRET",
        "ZOOM_SUBSCRIPTION_ID",
    ] {
        ws.unset_env(name);
    }
    ws.set_env("ZOOMWIRE_SHUTDOWN_GRACE", "soon");
    let mut daemon = ws.spawn();
    let exit = daemon.wait_exit(Duration::from_secs(20)).await;
    let stderr = daemon.stderr();
    assert_eq!(exit.code(), Some(2), "{stderr}");
    for name in [
        "ZOOM_CLIENT_ID",
        "ZOOM_CLIENT_SECRET",
        "ZOOM_SUBSCRIPTION_ID",
        "ZOOMWIRE_SHUTDOWN_GRACE",
    ] {
        assert!(stderr.contains(name), "{name} is listed:\n{stderr}");
    }
    assert_eq!(token_requests(&ws), 0, "nothing was tried");
    assert!(
        !ws.data_dir().join("zoomwire.db").exists(),
        "no store was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_store_exits_2_naming_the_file_and_leaves_it_untouched() {
    let ws = Workspace::new().await;
    ws.write_rule("notify.yaml", NOTIFY);
    let store = ws.data_dir().join("zoomwire.db");
    let garbage: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&store, &garbage).unwrap();
    let mut daemon = ws.spawn();
    let exit = daemon.wait_exit(Duration::from_secs(20)).await;
    let stderr = daemon.stderr();
    assert_eq!(exit.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&store.display().to_string()),
        "names the file:\n{stderr}"
    );
    assert!(stderr.contains("corrupt"), "{stderr}");
    assert_eq!(std::fs::read(&store).unwrap(), garbage, "left untouched");
    assert!(ws.sim.connections().is_empty(), "never connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_run_is_listed_with_its_error_retried_and_completed_by_the_next_start() {
    let ws = Workspace::new().await;
    ws.write_rule(
        "fragile.yaml",
        r##"name: fragile
on: meeting.started
allow: [slack, zoom.read]
timeout: 400ms
retry: { attempts: 2, backoff: 10ms }
do: |
  let m = event.payload.object;
  slack::post("#general", `started: ${m.topic}`);
  let host = zoom::get("/users/{userId}", #{ userId: m.host_id });
  slack::post("#ops", `${m.topic} hosted by ${host.email}`);
"##,
    );
    ws.sim.set_delay("/v2/users/", Duration::from_secs(120));
    let mut daemon = ws.start(1).await;
    ws.sim
        .emit_event(None, &meeting_event("meeting.started", 1, HOST_USER_ID));
    let runs = wait_finished(&ws, 1).await;
    let id = runs[0]["id"].as_str().unwrap().to_string();
    assert_eq!(status(&runs[0]), "dead", "{runs:?}");
    assert_eq!(runs[0]["attempt"], 2);
    daemon.terminate().await;
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(15)).await.code(),
        Some(0)
    );

    let failed = ws.runs_with(&["--failed"]).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["id"], id.as_str());
    let error = failed[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("zoom.get"),
        "the error names the effect: {error}"
    );
    let table = ws.zoomwire(&["runs", "--failed"]).await;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains(&id) && table.contains("dead") && table.contains("fragile"),
        "{table}"
    );

    let retry = ws.zoomwire(&["runs", "retry", &id]).await;
    assert_eq!(
        retry.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&retry.stderr)
    );
    let runs = ws.runs().await;
    assert_eq!(status(&runs[0]), "pending");
    assert!(ws.runs_with(&["--failed"]).await.is_empty());
    let again = ws.zoomwire(&["runs", "retry", &id]).await;
    assert_ne!(again.status.code(), Some(0), "a pending run is not retried");

    ws.sim.set_delay("/v2/users/", Duration::ZERO);
    let daemon = ws.start(2).await;
    let runs = wait_finished(&ws, 1).await;
    let runs = runs_of(&runs, "fragile");
    assert_eq!(status(runs[0]), "succeeded", "{runs:?}");
    assert_eq!(runs[0]["id"], id.as_str(), "the same run, retried");
    assert_eq!(
        ws.slack_texts("#general"),
        ["started: Meeting 1"],
        "posted once, by the first attempt; replayed since"
    );
    assert_eq!(
        ws.slack_texts("#ops"),
        ["Meeting 1 hosted by host@example.com"]
    );
    daemon.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_runs_of_one_key_start_in_the_order_their_events_arrived() {
    let ws = Workspace::new().await;
    ws.write_rule(
        "queued.yaml",
        r##"name: queued
on: meeting.started
key: event.payload.object.id
mode: queued
max_runs: 20
allow: [slack, zoom.read]
do: |
  let m = event.payload.object;
  slack::post("#general", `start ${m.topic}`);
  zoom::get("/users/{userId}", #{ userId: m.host_id });
  slack::post("#general", `end ${m.topic}`);
"##,
    );
    // Long enough for the daemon to look for requeued runs while these are
    // queued: none of them may be taken for one.
    ws.sim.set_delay("/v2/users/", Duration::from_millis(200));
    let daemon = ws.start(1).await;
    for n in 1..=8 {
        ws.sim
            .emit_event(None, &meeting_event("meeting.started", n, HOST_USER_ID));
    }
    let runs = wait_finished(&ws, 8).await;
    assert!(runs.iter().all(|r| status(r) == "succeeded"), "{runs:?}");
    let expected: Vec<String> = (1..=8)
        .flat_map(|n| [format!("start Meeting {n}"), format!("end Meeting {n}")])
        .collect();
    assert_eq!(ws.slack_texts("#general"), expected);
    assert!(daemon.logged("resuming a requeued run").is_empty());
    daemon.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_run_retried_while_the_daemon_runs_is_picked_up_and_completed() {
    let ws = Workspace::new().await;
    ws.write_rule(
        "fragile.yaml",
        r##"name: fragile
on: meeting.started
allow: [slack, zoom.read]
timeout: 400ms
retry: { attempts: 2, backoff: 10ms }
do: |
  let m = event.payload.object;
  slack::post("#general", `started: ${m.topic}`);
  let host = zoom::get("/users/{userId}", #{ userId: m.host_id });
  slack::post("#ops", `${m.topic} hosted by ${host.email}`);
"##,
    );
    ws.sim.set_delay("/v2/users/", Duration::from_secs(120));
    let daemon = ws.start(1).await;
    ws.sim
        .emit_event(None, &meeting_event("meeting.started", 1, HOST_USER_ID));
    let runs = wait_finished(&ws, 1).await;
    assert_eq!(status(&runs[0]), "dead", "{runs:?}");
    let id = runs[0]["id"].as_str().unwrap().to_string();
    // Runs the daemon holds (a fresh one, here) are never taken for requeued ones.
    ws.sim
        .emit_event(None, &meeting_event("meeting.started", 2, HOST_USER_ID));

    ws.sim.set_delay("/v2/users/", Duration::ZERO);
    let retry = ws.zoomwire(&["runs", "retry", &id]).await;
    assert_eq!(
        retry.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&retry.stderr)
    );
    daemon.wait_for_log("resuming a requeued run").await;
    let runs = wait_finished(&ws, 2).await;
    assert!(runs.iter().all(|r| status(r) == "succeeded"), "{runs:?}");
    assert_eq!(
        ws.slack_texts("#general"),
        ["started: Meeting 1", "started: Meeting 2"],
        "each posted once"
    );
    let mut ops = ws.slack_texts("#ops");
    ops.sort();
    assert_eq!(
        ops,
        [
            "Meeting 1 hosted by host@example.com",
            "Meeting 2 hosted by host@example.com"
        ]
    );
    assert_eq!(daemon.logged("resuming a requeued run").len(), 1);
    daemon.kill().await;
}

/// A rule as the README teaches it: default mode (parallel) and `max_runs`.
const POST_RECORDING: &str = r##"name: post-recording
on: meeting.started
allow: [slack]
do: |
  slack::post("#recordings", `ready: ${event.payload.object.topic}`);
"##;

/// The WebSocket frame carrying `event`.
fn frame_of(event: &Value) -> String {
    serde_json::json!({"module": "message", "content": event.to_string()}).to_string()
}

/// Waits until Slack has `count` posts on `#recordings`; returns their texts.
async fn wait_posts(ws: &Workspace, count: usize, within: Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let texts = ws.slack_texts("#recordings");
        if texts.len() >= count {
            return texts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {count} posts after {within:?}",
            texts.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_each_once(texts: &[String], count: u64) {
    let distinct: std::collections::BTreeSet<&String> = texts.iter().collect();
    assert_eq!(texts.len() as u64, count, "no post doubled");
    assert_eq!(distinct.len() as u64, count, "every post once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_on_a_rule_with_default_settings_delivers_every_post_once() {
    let ws = Workspace::new().await;
    ws.write_rule("post-recording.yaml", POST_RECORDING);
    ws.sim
        .set_delay("/slack/api/chat.postMessage", Duration::from_millis(30));
    let daemon = ws.start(1).await;
    const BURST: u64 = 2_000;
    for n in 0..BURST {
        let frame = frame_of(&meeting_event("meeting.started", n, HOST_USER_ID));
        assert_eq!(ws.sim.send_frame(None, frame).await, 1, "sent");
    }
    // max_runs 10 at 30 ms a post: about 6 s of work.
    let texts = wait_posts(&ws, BURST as usize, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_each_once(&ws.slack_texts("#recordings"), BURST);
    assert_eq!(texts.len() as u64, BURST);
    assert!(daemon.logged("run dropped").is_empty(), "nothing dropped");
    assert!(ws.runs_with(&["--skipped"]).await.is_empty());
    let (_, metrics) = metrics_text(&daemon).await;
    assert!(
        !metrics.contains("outcome=\"skipped\""),
        "no skipped run counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_the_bound_of_waiting_runs_intake_pauses_and_drops_nothing() {
    let mut ws = Workspace::new().await;
    ws.set_env("ZOOMWIRE_MAX_WAITING_RUNS", "10");
    ws.write_rule("post-recording.yaml", POST_RECORDING);
    ws.sim
        .set_delay("/slack/api/chat.postMessage", Duration::from_millis(20));
    let daemon = ws.start(1).await;
    // More than the events intake journals at once (1,024) before their runs
    // are admitted, and ten posts at a time: runs pile up past the bound.
    const BURST: u64 = 1_500;
    for n in 0..BURST {
        let frame = frame_of(&meeting_event("meeting.started", n, HOST_USER_ID));
        assert_eq!(ws.sim.send_frame(None, frame).await, 1, "sent");
    }
    wait_posts(&ws, BURST as usize, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_each_once(&ws.slack_texts("#recordings"), BURST);
    assert!(
        !daemon
            .logged("intake paused: too many runs waiting their turn")
            .is_empty(),
        "intake paused at the bound"
    );
    assert!(ws.runs_with(&["--skipped"]).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_a_mode_drops_is_logged_at_warn_counted_and_listed() {
    let ws = Workspace::new().await;
    ws.write_rule(
        "single.yaml",
        &POST_RECORDING.replace("allow: [slack]", "allow: [slack]\nmode: single"),
    );
    ws.sim
        .set_delay("/slack/api/chat.postMessage", Duration::from_millis(500));
    let daemon = ws.start(1).await;
    for n in 0..2 {
        ws.sim
            .emit_event(None, &meeting_event("meeting.started", n, HOST_USER_ID));
    }
    let dropped = daemon.wait_for_log("run dropped").await;
    assert_eq!(dropped["level"], "WARN", "{dropped}");
    assert_eq!(dropped["rule"], "post-recording", "{dropped}");
    assert!(
        dropped["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("mode single"),
        "{dropped}"
    );
    wait_posts(&ws, 1, Duration::from_secs(10)).await;
    let skipped = ws.runs_with(&["--skipped"]).await;
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0]["status"], "skipped");
    let (_, metrics) = metrics_text(&daemon).await;
    assert!(
        metrics.contains("outcome=\"skipped\""),
        "the drop is counted: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_loads_the_rules_and_scripts_its_flags_name_with_the_configured_vars() {
    let ws = Workspace::new().await;
    ws.write_rule(
        "configured.yaml",
        "name: configured\non: meeting.started\nallow: [slack]\ndo: slack::post(\"#general\", \"no\")\n",
    );
    let root = ws.root();
    std::fs::create_dir_all(root.join("alt-rules")).unwrap();
    std::fs::create_dir_all(root.join("alt-scripts")).unwrap();
    std::fs::write(
        root.join("alt-rules/flagged.yaml"),
        "name: flagged\non: meeting.started\nallow: [slack]\ndo: |\n  import \"hello\" as hello;\n  slack::post(vars.channel, hello::text(event.payload.object.topic));\n",
    )
    .unwrap();
    std::fs::write(
        root.join("alt-scripts/hello.rhai"),
        "fn text(topic) { `hello ${topic}` }\n",
    )
    .unwrap();
    std::fs::write(root.join("zoomwire.yaml"), "vars: { channel: \"#ops\" }\n").unwrap();

    let daemon = ws
        .start_with(&["--rules", "alt-rules", "--scripts", "alt-scripts"], 1)
        .await;
    ws.sim
        .emit_event(None, &meeting_event("meeting.started", 1, HOST_USER_ID));
    let posts = eventually("the post", || async {
        let posts = ws.slack_texts("#ops");
        (!posts.is_empty()).then_some(posts)
    })
    .await;
    assert_eq!(posts, ["hello Meeting 1"]);
    let runs = wait_finished(&ws, 1).await;
    assert_eq!(runs[0]["rule"], "flagged", "{runs:?}");
    assert!(ws.slack_texts("#general").is_empty());
    daemon.kill().await;
}
