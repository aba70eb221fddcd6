//! Crash recovery end to end: the real `zoomwire` binary, a real store in a
//! temporary folder and the simulator in this process. Each test kills the
//! daemon with SIGKILL at one point of a run's life, starts it again on the
//! same data folder, and checks that every run completed and that every
//! effect with a consequence outside (a Slack post, a Zoom write, a rule
//! state change) happened exactly once.
//!
//! Kill points, each reached by waiting on what the daemon or the simulator
//! reports rather than on a timer, and held open by the simulator: it holds
//! a Zoom call at a gate (`SimHandle::close_gate`) until the test opens it,
//! after the kill:
//! - a run posted to Slack and waits on a held Zoom call (the post's record
//!   is in the store), also with rule state read and written before the post;
//! - runs are accepted and recorded pending, queued behind a running one of
//!   the same key, not started: they resume in their order. A kill right
//!   after an event is journaled is this point too, since an event is written
//!   with the records of its runs in one commit (a kill between two separate
//!   writes used to lose the event's runs for good, its re-delivery being a
//!   duplicate; see the journal's and the executor's unit tests);
//! - every effect of the run is done and recorded, the run is not yet
//!   recorded finished. In a real run that window is a single commit; here
//!   a last read, held at the gate, keeps it open, which leaves the store
//!   exactly as a kill in the commit window would: every effect with a
//!   consequence recorded, the run not;
//! - an attempt failed and the run waits to retry: it resumes as its next
//!   attempt.
//!
//! Not covered: a kill after an effect reached the world but before its
//! record was committed repeats that effect on resume (at least once, never
//! zero times); the window is the one commit after the response arrives.

use crate::support::daemon::{Daemon, Workspace, eventually, meeting_event, runs_of};
use serde_json::Value;
use zoomwire_sim::sim::data::HOST_USER_ID;

/// The script: a Slack post, a Zoom read (held by the test), a Zoom write
/// and a second Slack post. `tail` runs after them.
fn announce_rule(tail: &str) -> String {
    format!(
        r##"name: announce
on: meeting.started
allow: [slack, zoom.read, zoom.write]
timeout: 60s
do: |
  let m = event.payload.object;
  slack::post("#general", `started: ${{m.topic}}`);
  let host = zoom::get("/users/{{userId}}", #{{ userId: m.host_id }});
  zoom::patch("/meetings/{{id}}", #{{ id: m.id }}, #{{ agenda: `${{m.topic}} by ${{host.email}}` }});
  slack::post("#ops", `${{m.topic}} hosted by ${{host.email}}`);
  {tail}
"##
    )
}

/// The Zoom read of the host, which the tests hold at the simulator's gate.
const HOST_READ: &str = "/v2/users/";

/// A read after the effects that have consequences; the test holds it at
/// the simulator's gate to keep the run from finishing.
const HELD_TAIL: &str = r#"zoom::get("/users/me");"#;
const TAIL_READ: &str = "/v2/users/me";

/// The run's record as the admin API of the running daemon shows it.
async fn run_detail(daemon: &Daemon, id: &str) -> Value {
    let (status, body) = daemon.admin_get(&format!("/api/runs/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn effect_names(run: &Value) -> Vec<String> {
    run["effects"]
        .as_array()
        .map(|effects| {
            effects
                .iter()
                .map(|e| e["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the store has exactly `count` runs and returns them, newest first.
async fn wait_runs(ws: &Workspace, count: usize) -> Vec<Value> {
    eventually(&format!("{count} runs in the store"), || async {
        let runs = ws.runs().await;
        (runs.len() == count).then_some(runs)
    })
    .await
}

/// Waits until every run in the store is finished and returns them.
async fn wait_all_finished(ws: &Workspace, count: usize) -> Vec<Value> {
    eventually("every run to finish", || async {
        let runs = ws.runs().await;
        let done = runs.len() == count && runs.iter().all(|r| !r["finished_at"].is_null());
        done.then_some(runs)
    })
    .await
}

fn status(run: &Value) -> &str {
    run["status"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_during_a_slow_zoom_call_after_a_slack_post_resumes_and_posts_once() {
    let ws = Workspace::new().await;
    ws.write_rule("announce.yaml", &announce_rule(""));
    ws.sim.close_gate(HOST_READ);
    let daemon = ws.start(1).await;
    assert_eq!(
        ws.sim
            .emit_event(None, &meeting_event("meeting.started", 1, HOST_USER_ID)),
        1
    );

    let runs = wait_runs(&ws, 1).await;
    let id = runs[0]["id"].as_str().unwrap().to_string();
    eventually(
        "the Slack post and the held Zoom call in progress",
        || async {
            let in_flight = ws.sim.in_flight();
            let calling = in_flight.iter().any(|r| r.starts_with("GET /v2/users/"));
            (ws.slack_texts("#general").len() == 1 && calling).then_some(())
        },
    )
    .await;
    let before = run_detail(&daemon, &id).await;
    assert_eq!(status(&before), "running");
    assert_eq!(effect_names(&before), ["slack.post"], "{before}");
    daemon.kill().await;

    assert_eq!(status(&ws.runs().await[0]), "running", "left unfinished");
    ws.sim.open_gate(HOST_READ);
    let daemon = ws.start(2).await;
    daemon.wait_for_log("resuming runs left unfinished").await;
    let runs = wait_all_finished(&ws, 1).await;
    assert_eq!(status(&runs[0]), "succeeded", "{:?}", runs[0]);
    assert_eq!(runs[0]["id"], id.as_str(), "the same run resumed");
    assert_eq!(runs[0]["attempt"], 1);

    assert_eq!(ws.slack_texts("#general"), ["started: Meeting 1"]);
    assert_eq!(
        ws.slack_texts("#ops"),
        ["Meeting 1 hosted by host@example.com"]
    );
    assert_eq!(ws.answered("/v2/meetings/").len(), 1, "one Zoom write");
    assert_eq!(
        ws.answered("/v2/users/").len(),
        1,
        "the interrupted read never completed; the resumed run made it once"
    );
    let after = run_detail(&daemon, &id).await;
    assert_eq!(
        effect_names(&after),
        ["slack.post", "zoom.get", "zoom.patch", "slack.post"]
    );
    daemon.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_after_the_last_effect_before_the_run_is_recorded_finished_repeats_nothing() {
    let ws = Workspace::new().await;
    ws.write_rule("announce.yaml", &announce_rule(HELD_TAIL));
    ws.sim.close_gate(TAIL_READ);
    let daemon = ws.start(1).await;
    ws.sim
        .emit_event(None, &meeting_event("meeting.started", 2, HOST_USER_ID));

    let runs = wait_runs(&ws, 1).await;
    let id = runs[0]["id"].as_str().unwrap().to_string();
    let before = eventually("every effect recorded, the last read held", || async {
        let run = run_detail(&daemon, &id).await;
        let held = ws.sim.in_flight().iter().any(|r| r.ends_with(TAIL_READ));
        (effect_names(&run).len() == 4 && held).then_some(run)
    })
    .await;
    daemon.kill().await;
    assert_eq!(
        status(&before),
        "running",
        "the kill must land before the run is recorded finished: {before}"
    );
    assert_eq!(status(&ws.runs().await[0]), "running");
    assert_eq!(ws.slack_texts("#ops").len(), 1);

    ws.sim.open_gate(TAIL_READ);
    let daemon = ws.start(2).await;
    let runs = wait_all_finished(&ws, 1).await;
    assert_eq!(status(&runs[0]), "succeeded", "{:?}", runs[0]);
    assert_eq!(ws.slack_texts("#general"), ["started: Meeting 2"]);
    assert_eq!(
        ws.slack_texts("#ops"),
        ["Meeting 2 hosted by host@example.com"]
    );
    assert_eq!(ws.answered("/v2/meetings/").len(), 1, "one Zoom write");
    let host_read = format!("{HOST_READ}{HOST_USER_ID}");
    assert_eq!(ws.answered(&host_read).len(), 1, "the read was replayed");
    assert_eq!(
        ws.answered(TAIL_READ).len(),
        1,
        "the held read never completed; the resumed run made it once"
    );
    let after = run_detail(&daemon, &id).await;
    assert_eq!(
        effect_names(&after),
        [
            "slack.post",
            "zoom.get",
            "zoom.patch",
            "slack.post",
            "zoom.get"
        ]
    );
    daemon.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_queued_behind_a_running_one_resume_in_order_after_a_kill() {
    let ws = Workspace::new().await;
    ws.write_rule(
        "queued.yaml",
        r##"name: queued
on: meeting.started
key: event.payload.object.id
mode: queued
max_runs: 10
allow: [slack, zoom.read]
timeout: 60s
do: |
  let m = event.payload.object;
  slack::post("#general", `start ${m.topic}`);
  let host = zoom::get("/users/{userId}", #{ userId: m.host_id });
  slack::post("#ops", `end ${m.topic}`);
"##,
    );
    ws.sim.close_gate(HOST_READ);
    let daemon = ws.start(1).await;
    ws.sim
        .emit_event(None, &meeting_event("meeting.started", 1, HOST_USER_ID));
    eventually("the first run waiting on Zoom", || async {
        let calling = ws.sim.in_flight().iter().any(|r| r.contains("/v2/users/"));
        calling.then_some(())
    })
    .await;
    for n in 2..=4 {
        ws.sim
            .emit_event(None, &meeting_event("meeting.started", n, HOST_USER_ID));
    }
    let runs = wait_runs(&ws, 4).await;
    let runs = runs_of(&runs, "queued");
    let statuses: Vec<&str> = runs.iter().map(|r| status(r)).collect();
    assert_eq!(statuses, ["running", "pending", "pending", "pending"]);
    assert_eq!(ws.slack_texts("#general"), ["start Meeting 1"]);
    daemon.kill().await;

    ws.sim.open_gate(HOST_READ);
    let daemon = ws.start(2).await;
    let runs = wait_all_finished(&ws, 4).await;
    assert!(
        runs.iter().all(|r| status(r) == "succeeded"),
        "{runs:#?}\n{}",
        daemon.stderr()
    );
    assert_eq!(
        ws.slack_texts("#general"),
        [
            "start Meeting 1",
            "start Meeting 2",
            "start Meeting 3",
            "start Meeting 4"
        ]
    );
    assert_eq!(
        ws.slack_texts("#ops"),
        [
            "end Meeting 1",
            "end Meeting 2",
            "end Meeting 3",
            "end Meeting 4"
        ]
    );
    // One at a time, in order: each run started after the previous one ended.
    let posts: Vec<String> = ws
        .sim
        .slack_posts()
        .into_iter()
        .map(|p| p.text.unwrap_or_default())
        .collect();
    assert_eq!(
        posts,
        [
            "start Meeting 1",
            "end Meeting 1",
            "start Meeting 2",
            "end Meeting 2",
            "start Meeting 3",
            "end Meeting 3",
            "start Meeting 4",
            "end Meeting 4"
        ]
    );
    daemon.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_while_waiting_to_retry_resumes_with_the_next_attempt() {
    let ws = Workspace::new().await;
    ws.write_rule(
        "fragile.yaml",
        r##"name: fragile
on: meeting.started
allow: [slack, zoom.read]
timeout: 300ms
retry: { attempts: 2, backoff: 2m, max_backoff: 2m }
do: |
  let m = event.payload.object;
  slack::post("#general", `started: ${m.topic}`);
  let host = zoom::get("/users/{userId}", #{ userId: m.host_id });
  slack::post("#ops", `${m.topic} hosted by ${host.email}`);
"##,
    );
    ws.sim.close_gate(HOST_READ);
    let daemon = ws.start(1).await;
    ws.sim
        .emit_event(None, &meeting_event("meeting.started", 4, HOST_USER_ID));
    let failed = eventually("the first attempt failed, the retry waiting", || async {
        let runs = ws.runs().await;
        runs.into_iter()
            .find(|r| status(r) == "failed" && r["finished_at"].is_null())
    })
    .await;
    assert_eq!(failed["attempt"], 1);
    daemon.kill().await;

    // Still failing after the restart: the resumed run is the rule's second
    // and last attempt, so it ends dead instead of trying a third time.
    let daemon = ws.start(2).await;
    let runs = wait_all_finished(&ws, 1).await;
    assert_eq!(status(&runs[0]), "dead", "{:?}", runs[0]);
    assert_eq!(runs[0]["attempt"], 2);
    assert!(
        runs[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("zoom.get"),
        "{:?}",
        runs[0]
    );
    assert_eq!(ws.slack_texts("#general"), ["started: Meeting 4"]);
    assert!(ws.slack_texts("#ops").is_empty());
    daemon.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rule_state_read_and_written_before_a_kill_is_not_counted_twice() {
    let ws = Workspace::new().await;
    ws.write_rule(
        "counter.yaml",
        r##"name: counter
on: meeting.started
allow: [slack, zoom.read]
timeout: 60s
do: |
  let n = (state::get("meetings") ?? 0) + 1;
  state::set("meetings", n);
  slack::post("#general", `meeting number ${n}`);
  let host = zoom::get("/users/{userId}", #{ userId: event.payload.object.host_id });
  slack::post("#ops", `meeting number ${n} by ${host.email}`);
"##,
    );
    ws.sim.close_gate(HOST_READ);
    let daemon = ws.start(1).await;
    ws.sim
        .emit_event(None, &meeting_event("meeting.started", 5, HOST_USER_ID));
    eventually(
        "the Slack post and the held Zoom call in progress",
        || async {
            let calling = ws.sim.in_flight().iter().any(|r| r.contains("/v2/users/"));
            (calling && ws.slack_texts("#general").len() == 1).then_some(())
        },
    )
    .await;
    daemon.kill().await;

    ws.sim.open_gate(HOST_READ);
    let daemon = ws.start(2).await;
    wait_all_finished(&ws, 1).await;
    ws.sim
        .emit_event(None, &meeting_event("meeting.started", 6, HOST_USER_ID));
    let runs = wait_all_finished(&ws, 2).await;
    assert!(runs.iter().all(|r| status(r) == "succeeded"), "{runs:?}");
    // The resumed run read the state it had read before the kill (recorded),
    // so its own write did not count the meeting a second time.
    assert_eq!(
        ws.slack_texts("#general"),
        ["meeting number 1", "meeting number 2"]
    );
    assert_eq!(
        ws.slack_texts("#ops"),
        [
            "meeting number 1 by host@example.com",
            "meeting number 2 by host@example.com"
        ]
    );
    daemon.kill().await;
}
