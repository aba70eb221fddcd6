//! Real `zoomwire run` daemons sharing one PostgreSQL database, against the
//! simulator (which keeps a second WebSocket connection open beside the
//! first, so that two holders would show as two open connections): one
//! node holds the account's WebSocket at a time; a killed holder is
//! replaced within the lease, a stopped one hands over at once; a holder
//! stopped (SIGSTOP) past its lease drops its socket when it wakes, and,
//! stopped in the middle of a run, cannot make its late effect; a run
//! interrupted by `kill -9` is finished by another node without repeating
//! its recorded effect (or, cut during an effect, ends dead naming it in
//! doubt); a stream of WebSocket and webhook events through `kill -9` of
//! the holder runs every event exactly once; and a PostgreSQL restart loses
//! nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use zoomwire_sim::sim::{SecondConnection, SimConfig};

use crate::support::daemon::{Daemon, Workspace, eventually, meeting_event};
use crate::support::postgres as pg;

/// The lease of these tests: short, so that failovers are quick to see.
const LEASE_TTL: Duration = Duration::from_secs(3);

const POST_RULE: &str = "name: ended\non: meeting.ended\nallow: [slack]\ndo: |\n  slack::post(\"#ops\", event.payload.object.topic);\n";

/// A workspace whose daemons share `database`, with short leases.
async fn cluster_workspace(database: &pg::TestDatabase) -> Workspace {
    let mut ws = Workspace::with_sim(SimConfig {
        second_connection: SecondConnection::Both,
        ..SimConfig::default()
    })
    .await;
    ws.set_env("ZOOMWIRE_JOURNAL", "postgres");
    ws.set_env("ZOOMWIRE_DATABASE_URL", &database.url());
    ws.set_env("ZOOMWIRE_LEASE_TTL", &format!("{}s", LEASE_TTL.as_secs()));
    ws.set_env("ZOOMWIRE_RECONCILE", "off");
    ws
}

async fn start_node(ws: &Workspace, node: &str) -> Daemon {
    let mut daemon = ws.spawn_with_env(&[("ZOOMWIRE_NODE_ID", node)]);
    daemon.wait_running().await;
    daemon
}

/// The ids of the accepted connections open now.
fn open_connections(ws: &Workspace) -> Vec<u64> {
    ws.sim
        .connections()
        .into_iter()
        .filter(|c| c.accepted && c.open)
        .map(|c| c.id)
        .collect()
}

/// Waits until exactly one connection is open and it is not `previous`.
async fn one_open_connection_other_than(ws: &Workspace, previous: Option<u64>) -> u64 {
    eventually("one open connection", || async {
        match open_connections(ws).as_slice() {
            [id] if Some(*id) != previous => Some(*id),
            _ => None,
        }
    })
    .await
}

/// The node whose `/healthz` says it holds the account's lease.
async fn holder(daemons: &[Option<Daemon>]) -> Option<usize> {
    for (index, daemon) in daemons.iter().enumerate() {
        let Some(daemon) = daemon else { continue };
        let (_, health) = daemon.admin_get("/healthz").await;
        if health["cluster"]["leases"]["subscription:default"].is_i64() {
            return Some(index);
        }
    }
    None
}

/// Counts the most connections open at once, every 10 ms, until stopped.
struct Sampler {
    most: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(ws: Arc<Workspace>) -> Sampler {
        let (most, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (seen, stopping) = (most.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !stopping.load(Ordering::SeqCst) {
                seen.fetch_max(open_connections(&ws).len(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Sampler { most, stop, task }
    }

    async fn most(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        self.most.load(Ordering::SeqCst)
    }
}

/// Emits `meeting.ended` number `n` and waits for its one Slack post.
async fn ended_and_posted(ws: &Workspace, n: u64) {
    let event = meeting_event("meeting.ended", n, "host");
    assert_eq!(ws.sim.emit_event(None, &event), 1, "one connection got it");
    let topic = format!("Meeting {n}");
    eventually(&format!("the post for {topic}"), || async {
        ws.slack_texts("#ops").contains(&topic).then_some(())
    })
    .await;
}

fn runs_of_rule(runs: &[Value], rule: &str) -> Vec<Value> {
    runs.iter().filter(|r| r["rule"] == rule).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_holds_the_websocket_a_killed_holder_is_replaced_and_a_stopped_one_hands_over() {
    let Some(server) = pg::shared() else { return };
    let database = server.database();
    let ws = Arc::new(cluster_workspace(&database).await);
    ws.write_rule("ended.yaml", POST_RULE);
    let mut daemons = Vec::new();
    for node in ["node-a", "node-b", "node-c"] {
        daemons.push(Some(start_node(&ws, node).await));
    }
    let first_connection = one_open_connection_other_than(&ws, None).await;
    let sampler = Sampler::start(ws.clone());
    let first = eventually("a holder", || holder(&daemons)).await;
    ended_and_posted(&ws, 1).await;
    let holding = daemons[first].as_ref().unwrap();
    eventually("the holder seeing its two peers", || async {
        let (_, health) = holding.admin_get("/healthz").await;
        assert_eq!(health["status"], "ok", "{health}");
        let peers = health["cluster"]["peers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (peers.iter().filter(|p| p["alive"] == true).count() == 3).then_some(())
    })
    .await;
    let standby = daemons.iter().flatten().count() - 1;
    let mut standbys = 0;
    for daemon in daemons.iter().flatten() {
        let (code, health) = daemon.admin_get("/healthz").await;
        if health["subscriptions"]["default"]["state"] == "standby" {
            assert_eq!(code, 200, "a standby node is healthy");
            standbys += 1;
            let page = admin_text(daemon, "/ui/").await;
            let node = health["cluster"]["node"].as_str().unwrap();
            assert!(
                page.contains(&format!(
                    "This node is <strong>{node}</strong>. It holds no lease"
                )),
                "{page}"
            );
            assert!(
                page.contains("(this node)") && page.contains(">standby<"),
                "{page}"
            );
        }
    }
    assert_eq!(standbys, standby);

    // kill -9 of the holder: another node connects within the lease.
    let killed_at = Instant::now();
    daemons[first].take().unwrap().kill().await;
    let second_connection = one_open_connection_other_than(&ws, Some(first_connection)).await;
    let failover = killed_at.elapsed();
    eprintln!("failover after kill -9: {failover:?} (lease {LEASE_TTL:?})");
    assert!(
        failover < LEASE_TTL + Duration::from_secs(3),
        "{failover:?}"
    );
    ended_and_posted(&ws, 2).await;

    // A clean stop frees the lease at once.
    let second = eventually("a new holder", || holder(&daemons)).await;
    let stopping = daemons[second].take().unwrap();
    let stopped_at = Instant::now();
    stopping.terminate().await;
    one_open_connection_other_than(&ws, Some(second_connection)).await;
    let handover = stopped_at.elapsed();
    eprintln!("handover after a clean stop: {handover:?}");
    assert!(handover < Duration::from_secs(3), "{handover:?}");
    ended_and_posted(&ws, 3).await;

    assert_eq!(
        sampler.most().await,
        1,
        "never two connections open at once"
    );
    let texts = ws.slack_texts("#ops");
    assert_eq!(
        texts,
        ["Meeting 1", "Meeting 2", "Meeting 3"],
        "each event once"
    );
    eventually("three runs recorded succeeded", || async {
        let runs = runs_of_rule(&ws.runs().await, "ended");
        assert_eq!(runs.len(), 3);
        runs.iter()
            .all(|r| r["status"] == "succeeded")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_stopped_past_its_lease_drops_its_socket_when_it_wakes() {
    let Some(server) = pg::shared() else { return };
    let database = server.database();
    let ws = cluster_workspace(&database).await;
    ws.write_rule("ended.yaml", POST_RULE);
    let mut daemons = vec![Some(start_node(&ws, "node-a").await)];
    let first_connection = one_open_connection_other_than(&ws, None).await;
    daemons.push(Some(start_node(&ws, "node-b").await));
    let first = eventually("a holder", || holder(&daemons)).await;
    let other = 1 - first;
    let pid = daemons[first].as_ref().unwrap().pid().to_string();
    signal("-STOP", &pid).await;
    // The other node takes over once the lease expires; the stopped
    // process cannot close its socket, so the simulator sees both.
    let taken = Instant::now();
    eventually("the other node holding the lease", || async {
        let daemon = daemons[other].as_ref().unwrap();
        let (_, health) = daemon.admin_get("/healthz").await;
        health["cluster"]["leases"]["subscription:default"]
            .is_i64()
            .then_some(())
    })
    .await;
    eprintln!("takeover from a stopped holder: {:?}", taken.elapsed());
    eventually("the new holder connected", || async {
        (open_connections(&ws).len() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal("-CONT", &pid).await;
    let woke = Instant::now();
    let now_open = eventually("the woken node's socket closed", || async {
        match open_connections(&ws).as_slice() {
            [id] if *id != first_connection => Some(*id),
            _ => None,
        }
    })
    .await;
    eprintln!("socket dropped {:?} after waking", woke.elapsed());
    assert!(woke.elapsed() < Duration::from_secs(3));
    let closed = ws
        .sim
        .connections()
        .into_iter()
        .find(|c| c.id == first_connection)
        .unwrap();
    assert_eq!(
        closed.close_reason.as_deref(),
        Some("client closed"),
        "closed by the woken node"
    );
    let stopped = daemons[first].as_ref().unwrap();
    stopped
        .wait_for_log("lease lost: its work is stopped")
        .await;
    ended_and_posted(&ws, 1).await;
    assert_eq!(
        open_connections(&ws),
        [now_open],
        "the woken node did not reconnect"
    );
    assert_eq!(ws.slack_texts("#ops"), ["Meeting 1"]);
}

/// A rule of two effects whose second hangs at the simulator until the
/// node running it is killed; answers the daemons (the survivor kept
/// alive) and when the kill came.
async fn cut_after_the_first_post(ws: &Workspace, rule: &str) -> (Vec<Option<Daemon>>, Instant) {
    ws.write_rule("two.yaml", rule);
    let mut daemons = vec![Some(start_node(ws, "node-a").await)];
    one_open_connection_other_than(ws, None).await;
    daemons.push(Some(start_node(ws, "node-b").await));
    let first = eventually("a holder", || holder(&daemons)).await;
    // The second effect hangs until the holder is killed.
    ws.sim.set_delay("/slack/webhook", Duration::from_secs(60));
    ws.sim
        .emit_event(None, &meeting_event("meeting.ended", 7, "host"));
    eventually("the first post done and the second in flight", || async {
        let in_flight = ws
            .sim
            .in_flight()
            .iter()
            .any(|r| r.contains("/slack/webhook"));
        (in_flight && ws.sim.slack_post_count() == 1).then_some(())
    })
    .await;
    let killed_at = Instant::now();
    daemons[first].take().unwrap().kill().await;
    ws.sim.set_delay("/slack/webhook", Duration::ZERO);
    (daemons, killed_at)
}

const TWO_POSTS: &str = "name: two\non: meeting.ended\nallow: [slack]\ndo: |\n  slack::post(\"#ops\", `first ${event.payload.object.topic}`);\n  slack::webhook(\"default\", `second ${event.payload.object.topic}`);\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cut_by_kill_9_during_an_effect_is_resumed_elsewhere_and_dead_with_the_effect_in_doubt()
 {
    let Some(server) = pg::shared() else { return };
    let database = server.database();
    let ws = cluster_workspace(&database).await;
    let _daemons = cut_after_the_first_post(&ws, TWO_POSTS).await;
    let run = eventually("the run ended by the other node", || async {
        let runs = runs_of_rule(&ws.runs().await, "two");
        assert_eq!(runs.len(), 1);
        (runs[0]["status"] == "dead").then(|| runs[0].clone())
    })
    .await;
    let error = run["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("`slack.webhook` is in doubt"),
        "the dead letter names the effect in doubt: {error}"
    );
    // `zoomwire runs show` reads it from the shared journal.
    let id = run["id"].as_str().unwrap();
    let output = ws.zoomwire(&["runs", "--json", "show", id]).await;
    assert!(output.status.success(), "{output:?}");
    let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
    let effects = shown["effects"].as_array().unwrap();
    assert_eq!(effects.len(), 2, "{shown}");
    assert_eq!(effects[0]["in_doubt"], false, "{shown}");
    assert_eq!(effects[1]["name"], "slack.webhook", "{shown}");
    assert_eq!(effects[1]["in_doubt"], true, "{shown}");
    let firsts = ws
        .slack_texts("#ops")
        .iter()
        .filter(|text| text.as_str() == "first Meeting 7")
        .count();
    assert_eq!(firsts, 1, "the first post replayed, not repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cut_by_kill_9_after_a_post_is_finished_by_another_node_with_one_post() {
    let Some(server) = pg::shared() else { return };
    let database = server.database();
    let ws = cluster_workspace(&database).await;
    let rule = TWO_POSTS.replace(
        "allow: [slack]\n",
        "allow: [slack]\nidempotent: [slack.webhook]\n",
    );
    let (_daemons, killed_at) = cut_after_the_first_post(&ws, &rule).await;
    eventually("the run finished by the other node", || async {
        let posts = ws.sim.slack_posts();
        posts
            .iter()
            .any(|p| p.via.starts_with("webhook"))
            .then_some(())
    })
    .await;
    eprintln!(
        "run resumed and finished {:?} after kill -9",
        killed_at.elapsed()
    );
    let posts: Vec<String> = ws
        .sim
        .slack_posts()
        .into_iter()
        .map(|p| p.text.unwrap_or_default())
        .collect();
    assert_eq!(
        posts,
        ["first Meeting 7", "second Meeting 7"],
        "the first post replayed, not repeated; the webhook (idempotent) made again"
    );
    eventually("the run recorded succeeded", || async {
        let runs = runs_of_rule(&ws.runs().await, "two");
        assert_eq!(runs.len(), 1);
        (runs[0]["status"] == "succeeded").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_loses_no_event_and_the_daemon_carries_on() {
    let Some(server) = pg::private() else { return };
    let database = server.database();
    let ws = cluster_workspace(&database).await;
    ws.write_rule("ended.yaml", POST_RULE);
    let daemon = start_node(&ws, "node-a").await;
    one_open_connection_other_than(&ws, None).await;
    ended_and_posted(&ws, 1).await;
    server.stop();
    // Received while the journal is down: intake waits and retries.
    assert_eq!(
        ws.sim
            .emit_event(None, &meeting_event("meeting.ended", 2, "host")),
        1
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.start_again();
    eventually("the event received during the outage handled", || async {
        ws.slack_texts("#ops")
            .contains(&"Meeting 2".to_string())
            .then_some(())
    })
    .await;
    daemon
        .wait_for_log("cannot journal event: intake paused")
        .await;
    // Whether or not the lease lapsed meanwhile, the node holds the socket again.
    eventually("connected again", || async {
        (open_connections(&ws).len() == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connection = one_open_connection_other_than(&ws, None).await;
    ended_and_posted(&ws, 3).await;
    assert_eq!(open_connections(&ws), [connection]);
    assert_eq!(
        ws.slack_texts("#ops"),
        ["Meeting 1", "Meeting 2", "Meeting 3"]
    );
}

async fn metrics_text(daemon: &Daemon) -> String {
    admin_text(daemon, "/metrics").await
}

async fn admin_text(daemon: &Daemon, path: &str) -> String {
    let admin = daemon.admin.expect("running");
    reqwest::get(format!("http://{admin}{path}"))
        .await
        .expect("the admin API answers")
        .text()
        .await
        .unwrap_or_default()
}

async fn signal(which: &str, pid: &str) {
    let status = tokio::process::Command::new("kill")
        .args([which, pid])
        .status()
        .await
        .expect("kill runs");
    assert!(status.success(), "kill {which} {pid}");
}

/// POSTs `body` to a daemon's webhook endpoint, signed as Zoom signs it.
async fn post_webhook(addr: &str, secret: &str, body: &str) -> u16 {
    use zoomwire_engine::zoom::webhook::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let signature = sign(&secret.to_string().into(), &timestamp, body.as_bytes());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_runs_of_one_key_run_one_at_a_time_across_nodes_in_arrival_order() {
    const SECRET: &str = "webhook-secret-for-the-cluster";
    let Some(server) = pg::shared() else { return };
    let database = server.database();
    let mut ws = cluster_workspace(&database).await;
    ws.set_env("ZOOM_WEBHOOK_SECRET_TOKEN", SECRET);
    ws.set_env("ZOOMWIRE_WEBHOOK_ADDR", "127.0.0.1:0");
    ws.write_rule(
        "queued.yaml",
        "name: queued\non: meeting.participant_joined\nmode: queued\nkey: event.payload.object.uuid\nallow: [slack]\ndo: |\n  let who = event.payload.object.participant.user_name;\n  slack::post(\"#ops\", `start ${who}`);\n  slack::post(\"#ops\", `end ${who}`);\n",
    );
    // Each run takes a while, so that the next ones wait on both nodes.
    ws.sim
        .set_delay("/slack/api/chat.postMessage", Duration::from_millis(150));
    let mut webhooks = Vec::new();
    let mut daemons = Vec::new();
    for node in ["node-a", "node-b"] {
        let daemon = start_node(&ws, node).await;
        let line = daemon
            .wait_for_log("webhook endpoint listening on /zoom/webhook")
            .await;
        webhooks.push(line["addr"].as_str().unwrap().to_string());
        daemons.push(daemon);
    }
    for n in 1..=20u64 {
        let event = serde_json::json!({
            "event": "meeting.participant_joined",
            "event_ts": 1_732_050_000_000u64 + n,
            "payload": {"account_id": "sim-account", "object": {
                "uuid": "one-meeting==", "id": 85_512_345_678u64, "topic": "Standup",
                "participant": {"user_id": format!("u{n}"), "user_name": format!("p{n:02}"),
                                "join_time": format!("2024-11-20T10:00:{n:02}Z")}
            }}
        });
        // Alternate nodes; each event is journaled before the next is sent,
        // so that arrival order is well defined across nodes.
        assert_eq!(
            post_webhook(&webhooks[(n % 2) as usize], SECRET, &event.to_string()).await,
            200
        );
        eventually("the event journaled", || async {
            (database.psql("SELECT count(*) FROM zoomwire.runs") == n.to_string()).then_some(())
        })
        .await;
    }
    let expected: Vec<String> = (1..=20)
        .flat_map(|n| [format!("start p{n:02}"), format!("end p{n:02}")])
        .collect();
    // Sequential runs take 40 posts x 150 ms.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ws.slack_texts("#ops").len() < 40 {
        assert!(Instant::now() < deadline, "{:?}", ws.slack_texts("#ops"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let posts = ws.sim.slack_posts();
    let span = posts.last().unwrap().received_at_micros - posts[0].received_at_micros;
    eprintln!("40 posts over {} ms", span / 1000);
    assert_eq!(
        ws.slack_texts("#ops"),
        expected,
        "one at a time, in arrival order"
    );
    let by_node = database.psql(
        "SELECT string_agg(node || ':' || n, ',' ORDER BY node) FROM
         (SELECT node, count(*) AS n FROM zoomwire.runs GROUP BY node) counts",
    );
    eprintln!("runs by node: {by_node}");
    assert!(
        by_node.contains("node-a") && by_node.contains("node-b"),
        "{by_node}"
    );
    eventually("every run recorded succeeded", || async {
        let runs = runs_of_rule(&ws.runs().await, "queued");
        (runs.len() == 20 && runs.iter().all(|r| r["status"] == "succeeded")).then_some(())
    })
    .await;
    let claims: f64 = {
        let mut busy = 0.0;
        for daemon in &daemons {
            let metrics = metrics_text(daemon).await;
            busy += metrics
                .lines()
                .find(|l| l.starts_with("zoomwire_run_claims_total{outcome=\"busy\"}"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0);
        }
        busy
    };
    assert!(claims > 0.0, "runs did wait for the other node");
}

/// Waits until every expected post arrived and every run is recorded done.
async fn everything_so_far_handled(ws: &Workspace, expected: &[String]) {
    eventually("every post so far, its run recorded", || async {
        let runs = runs_of_rule(&ws.runs().await, "ended");
        (ws.slack_texts("#ops").len() == expected.len()
            && runs.len() == expected.len()
            && runs.iter().all(|r| r["status"] == "succeeded"))
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_through_kill_9_of_the_holder_runs_every_event_exactly_once() {
    const SECRET: &str = "webhook-secret-for-the-stream";
    const EVENTS: u64 = 60;
    const KILL_AT: u64 = 20;
    let Some(server) = pg::shared() else { return };
    let database = server.database();
    let mut ws = cluster_workspace(&database).await;
    ws.set_env("ZOOM_WEBHOOK_SECRET_TOKEN", SECRET);
    ws.set_env("ZOOMWIRE_WEBHOOK_ADDR", "127.0.0.1:0");
    ws.write_rule("ended.yaml", POST_RULE);
    let ws = Arc::new(ws);
    let mut daemons = Vec::new();
    let mut webhooks = Vec::new();
    for node in ["node-a", "node-b", "node-c"] {
        let daemon = start_node(&ws, node).await;
        let line = daemon
            .wait_for_log("webhook endpoint listening on /zoom/webhook")
            .await;
        webhooks.push(Some(line["addr"].as_str().unwrap().to_string()));
        daemons.push(Some(daemon));
    }
    let first_connection = one_open_connection_other_than(&ws, None).await;
    let sampler = Sampler::start(ws.clone());
    let holding = eventually("a holder", || holder(&daemons)).await;
    let mut expected = Vec::new();
    let mut lost_in_the_gap = 0;
    let mut killed_at = None;
    let mut reconnected = None;
    let mut first_after_kill = None;
    for n in 1..=EVENTS {
        if n == KILL_AT {
            // Killed with nothing in flight: a post cut short by the kill is
            // left in doubt and not repeated (at most once, tested apart),
            // and an event the holder read but had not journaled is lost
            // as Zoom does not resend it; neither is what this test is about.
            everything_so_far_handled(&ws, &expected).await;
            let holders_socket = open_connections(&ws);
            killed_at = Some((Instant::now(), chrono::Utc::now().timestamp_micros()));
            daemons[holding].take().unwrap().kill().await;
            webhooks[holding] = None;
            // A frame written to the dead socket before the simulator sees it
            // close is lost, as it would be by Zoom: send the next once it has.
            eventually("the killed holder's socket closed", || async {
                let open = open_connections(&ws);
                (!holders_socket.iter().any(|id| open.contains(id))).then_some(())
            })
            .await;
        }
        // Over the WebSocket: only the holder's connection gets it; in the
        // gap after the kill nobody does (Zoom does not replay it either:
        // reconciliation, off here, would list it later).
        let topic = format!("Meeting {n}");
        match ws
            .sim
            .emit_event(None, &meeting_event("meeting.ended", n, "host"))
        {
            1 => {
                if killed_at.is_some() && first_after_kill.is_none() {
                    first_after_kill = Some(topic.clone());
                }
                expected.push(topic);
            }
            0 => lost_in_the_gap += 1,
            more => panic!("{more} connections got event {n}"),
        }
        // By webhook, to every live node: the journal keeps one.
        let hook = meeting_event("meeting.ended", 1_000 + n, "host");
        for addr in webhooks.iter().flatten() {
            assert_eq!(post_webhook(addr, SECRET, &hook.to_string()).await, 200);
        }
        expected.push(format!("Meeting {}", 1_000 + n));
        if let (Some((at, _)), None) = (killed_at, reconnected) {
            let open = open_connections(&ws);
            if open.len() == 1 && open[0] != first_connection {
                reconnected = Some(at.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while ws.slack_texts("#ops").len() < expected.len() {
        if Instant::now() >= deadline {
            let posted = ws.slack_texts("#ops");
            let missing: Vec<_> = expected.iter().filter(|t| !posted.contains(t)).collect();
            let runs = runs_of_rule(&ws.runs().await, "ended");
            panic!(
                "{} of {} posts; missing {missing:?} (first websocket event after the kill: {first_after_kill:?}); {} runs, not succeeded: {:?}",
                posted.len(),
                expected.len(),
                runs.len(),
                runs.iter()
                    .filter(|r| r["status"] != "succeeded")
                    .collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Late duplicates would come now, if any.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut posted = ws.slack_texts("#ops");
    posted.sort();
    expected.sort();
    assert_eq!(posted, expected, "every event's post exactly once");
    assert_eq!(
        sampler.most().await,
        1,
        "never two connections open at once"
    );
    let (_, killed_micros) = killed_at.unwrap();
    let first_after_kill = first_after_kill.expect("an event delivered after the kill");
    let handled = ws
        .sim
        .slack_posts()
        .into_iter()
        .find(|post| post.text.as_deref() == Some(first_after_kill.as_str()))
        .unwrap();
    let failover_ms = (handled.received_at_micros - killed_micros) / 1000;
    let reconnected = reconnected.expect("a new holder connected");
    eprintln!(
        "stream of {EVENTS} websocket + {EVENTS} webhook events through kill -9 of the holder (lease {LEASE_TTL:?}): new holder connected after {reconnected:?}, first event handled by it {failover_ms} ms after the kill, {lost_in_the_gap} websocket events sent while no node held the socket, {} posts, each once",
        expected.len()
    );
    assert!(
        reconnected < LEASE_TTL + Duration::from_secs(3),
        "{reconnected:?}"
    );
    eventually("every run recorded succeeded, once", || async {
        let runs = runs_of_rule(&ws.runs().await, "ended");
        (runs.len() == expected.len() && runs.iter().all(|r| r["status"] == "succeeded"))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_mid_run_past_its_lease_cannot_make_its_late_effect_when_it_wakes() {
    let Some(server) = pg::shared() else { return };
    let database = server.database();
    let ws = cluster_workspace(&database).await;
    // Repeating the post is allowed, so the run resumed elsewhere goes on
    // past the post left in doubt.
    ws.write_rule(
        "two.yaml",
        &TWO_POSTS.replace(
            "allow: [slack]\n",
            "allow: [slack]\nidempotent: [slack.post]\n",
        ),
    );
    let mut daemons = vec![Some(start_node(&ws, "node-a").await)];
    one_open_connection_other_than(&ws, None).await;
    daemons.push(Some(start_node(&ws, "node-b").await));
    let first = eventually("a holder", || holder(&daemons)).await;
    // The holder is stopped while its first post is in flight.
    ws.sim
        .set_delay("/slack/api/chat.postMessage", Duration::from_secs(2));
    ws.sim
        .emit_event(None, &meeting_event("meeting.ended", 8, "host"));
    eventually("the first post in flight", || async {
        ws.sim
            .in_flight()
            .iter()
            .any(|r| r.contains("chat.postMessage"))
            .then_some(())
    })
    .await;
    let pid = daemons[first].as_ref().unwrap().pid().to_string();
    signal("-STOP", &pid).await;
    ws.sim
        .set_delay("/slack/api/chat.postMessage", Duration::ZERO);
    // The other node takes the run over, performs the post again (it is in
    // doubt, and idempotent) and the webhook once.
    eventually("the run finished by the other node", || async {
        let runs = runs_of_rule(&ws.runs().await, "two");
        (runs.len() == 1 && runs[0]["status"] == "succeeded").then_some(())
    })
    .await;
    signal("-CONT", &pid).await;
    // Woken, the stopped node goes on with its run: its record of the
    // first post is refused (another node holds the run), so it makes no
    // further effect.
    let refused = daemons[first]
        .as_ref()
        .unwrap()
        .wait_for_log("effect record not saved: the run makes no further effect")
        .await;
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("another node took it over"),
        "{refused}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let webhooks: Vec<String> = ws
        .sim
        .slack_posts()
        .into_iter()
        .filter(|p| p.via.starts_with("webhook"))
        .map(|p| p.text.unwrap_or_default())
        .collect();
    assert_eq!(
        webhooks,
        ["second Meeting 8"],
        "the late webhook of the woken node was never made"
    );
    let runs = runs_of_rule(&ws.runs().await, "two");
    assert_eq!(runs[0]["status"], "succeeded");
}
