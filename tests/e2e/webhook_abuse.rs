//! The webhook endpoint of the real daemon under abuse, over loopback: 2,000
//! clients that never finish their request head and a few that send their
//! body a byte at a time, a flood of forged signatures, and one address
//! opening too many connections. Each test shows that a real signed webhook
//! still gets through in time, that the slow clients are closed by the
//! timeouts, and that refusals are counted in the metrics but logged at a
//! rate. And that a webhook answered 200 is kept whenever the daemon is
//! killed (Zoom never sends it again).
//!
//! The slow clients come from many loopback addresses (127.0.1.x: all of
//! 127/8 is loopback on Linux) so that they stay under the per-address
//! limit and the server really holds them all; the real webhook comes from
//! 127.0.0.1. The test process holds one descriptor per client, so it
//! raises its own soft open-files limit first (the daemon raises its own).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::support::daemon::{Daemon, Workspace, eventually, meeting_event};
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use zoomwire_engine::zoom::webhook::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
use zoomwire_sim::sim::data::HOST_USER_ID;

const SECRET: &str = "webhook-secret-for-abuse-tests";
const SLOW_CLIENTS: usize = 2_000;
const SLOW_ADDRESSES: usize = 40;
const SLOW_BODIES: usize = 5;
/// Long enough to open every slow connection before the first times out.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const BODY_TIMEOUT: Duration = Duration::from_secs(3);

/// A workspace whose daemon serves webhooks on a free port, with one rule
/// posting each started meeting to `#alerts`.
async fn workspace(extra: &[(&str, &str)]) -> Workspace {
    let mut ws = Workspace::new().await;
    ws.set_env("ZOOM_WEBHOOK_SECRET_TOKEN", SECRET);
    ws.set_env("ZOOMWIRE_WEBHOOK_ADDR", "127.0.0.1:0");
    for (name, value) in extra {
        ws.set_env(name, value);
    }
    ws.write_rule(
        "hooks.yaml",
        r##"name: hooks
on: meeting.started
allow: [slack]
do: |
  slack::post("#alerts", event.payload.object.topic);
"##,
    );
    ws
}

async fn webhook_addr(daemon: &Daemon) -> SocketAddr {
    daemon
        .wait_for_log("webhook endpoint listening on /zoom/webhook")
        .await["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("the webhook address is logged")
}

/// A signed webhook for meeting `n`, timed from sending to its answer.
async fn post_signed(addr: SocketAddr, n: u64) -> (u16, Duration) {
    let body = meeting_event("meeting.started", n, HOST_USER_ID).to_string();
    post(addr, &body, true).await
}

async fn post(addr: SocketAddr, body: &str, good_signature: bool) -> (u16, Duration) {
    let secret = if good_signature { SECRET } else { "forged" };
    let started = Instant::now();
    let status = signed(&reqwest::Client::new(), addr, body.to_string(), secret)
        .send()
        .await
        .expect("the webhook answers")
        .status()
        .as_u16();
    (status, started.elapsed())
}

/// A webhook request for `body`, signed with `secret` as Zoom signs it.
fn signed(
    client: &reqwest::Client,
    addr: SocketAddr,
    body: String,
    secret: &str,
) -> reqwest::RequestBuilder {
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let signature = sign(&SecretString::from(secret), &timestamp, body.as_bytes());
    client
        .post(format!("http://{addr}/zoom/webhook"))
        .header("content-type", "application/json")
        .header(TIMESTAMP_HEADER, timestamp)
        .header(SIGNATURE_HEADER, signature)
        .body(body)
        .timeout(Duration::from_secs(10))
}

/// Connects to `server` from the loopback address `from`.
async fn connect_from(from: IpAddr, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind");
    socket.connect(server).await.expect("connect")
}

fn slow_address(index: usize) -> IpAddr {
    IpAddr::from([127, 0, 1, 1 + (index % SLOW_ADDRESSES) as u8])
}

/// What a slow client saw before the server closed its connection.
struct Closed {
    after: Duration,
    answer: String,
}

/// Writes `head`, then one byte of `trickle` every `every` until the server
/// closes the connection (or `give_up` passes); returns when and what it answered.
async fn hold(
    mut stream: TcpStream,
    head: String,
    trickle: u8,
    every: Duration,
    give_up: Duration,
) -> Option<Closed> {
    let opened = Instant::now();
    stream.write_all(head.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    let mut tick = tokio::time::interval(every);
    while opened.elapsed() < give_up {
        tokio::select! {
            read = stream.read(&mut buffer) => match read {
                Ok(0) | Err(_) => {
                    return Some(Closed {
                        after: opened.elapsed(),
                        answer: String::from_utf8_lossy(&answer).into_owned(),
                    });
                }
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            },
            _ = tick.tick() => {
                // A write error means the server is gone too: read says how.
                let _ = stream.write_all(&[trickle]).await;
            }
        }
    }
    None
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

/// The value of `name{...outcome="outcome"...}` in the metrics text.
fn counter(metrics: &str, name: &str, outcome: &str) -> f64 {
    let label = format!("outcome=\"{outcome}\"");
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn raise_open_files_limit() {
    let limit = rlimit::increase_nofile_limit(u64::MAX).expect("the soft limit can be raised");
    assert!(
        limit >= 3 * SLOW_CLIENTS as u64,
        "this test needs about {} open files; the hard limit is {limit}",
        3 * SLOW_CLIENTS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_are_closed_by_the_timeouts_while_a_real_webhook_gets_through() {
    raise_open_files_limit();
    let ws = workspace(&[
        ("ZOOMWIRE_WEBHOOK_HEADER_TIMEOUT", "5s"),
        ("ZOOMWIRE_WEBHOOK_BODY_TIMEOUT", "3s"),
    ])
    .await;
    let daemon = ws.start(1).await;
    let server = webhook_addr(&daemon).await;
    let give_up = HEADER_TIMEOUT + Duration::from_secs(20);

    // 2,000 request heads that never end, a byte every half second.
    let first_opened = Instant::now();
    let mut slow = Vec::with_capacity(SLOW_CLIENTS);
    for index in 0..SLOW_CLIENTS {
        let stream = connect_from(slow_address(index), server).await;
        let head = "POST /zoom/webhook HTTP/1.1\r\nHost: zoomwire\r\nX-Slow: ".to_string();
        slow.push(tokio::spawn(hold(
            stream,
            head,
            b'a',
            Duration::from_millis(500),
            give_up,
        )));
    }
    // A few complete heads whose body comes a byte every 200 ms.
    let mut slow_bodies = Vec::new();
    for index in 0..SLOW_BODIES {
        let stream = connect_from(slow_address(index), server).await;
        let head = "POST /zoom/webhook HTTP/1.1\r\nHost: zoomwire\r\n\
                    Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
            .to_string();
        slow_bodies.push(tokio::spawn(hold(
            stream,
            head,
            b' ',
            Duration::from_millis(200),
            give_up,
        )));
    }
    // While they are all held, a real delivery is answered in time and runs.
    let (status, took) = post_signed(server, 1).await;
    assert!(
        first_opened.elapsed() < HEADER_TIMEOUT,
        "the real webhook must be answered while every slow client is still held ({:?})",
        first_opened.elapsed()
    );
    assert_eq!(status, 200, "{}", daemon.stderr());
    assert!(
        took < Duration::from_secs(3),
        "answered after {took:?}, Zoom wants 3 s"
    );
    eventually("the real webhook's run posted", || async {
        (ws.slack_texts("#alerts") == ["Meeting 1"]).then_some(())
    })
    .await;

    eprintln!(
        "with {SLOW_CLIENTS} slow heads and {SLOW_BODIES} slow bodies held, a signed webhook was answered 200 in {took:?}"
    );
    // Every slow client is closed by a timeout, none long after it.
    let margin = Duration::from_secs(5);
    for (index, client) in slow.into_iter().enumerate() {
        let closed = client
            .await
            .expect("the client task")
            .unwrap_or_else(|| panic!("slow client {index} was never closed"));
        assert!(
            closed.after < HEADER_TIMEOUT + margin,
            "slow client {index} closed after {:?}",
            closed.after
        );
        assert!(
            closed.after >= HEADER_TIMEOUT - Duration::from_millis(100),
            "slow client {index} closed before its head timeout, after {:?}",
            closed.after
        );
    }
    for (index, client) in slow_bodies.into_iter().enumerate() {
        let closed = client
            .await
            .expect("the client task")
            .unwrap_or_else(|| panic!("slow body {index} was never closed"));
        assert!(
            closed.answer.starts_with("HTTP/1.1 408"),
            "slow body {index} got: {}",
            closed.answer
        );
        assert!(closed.after < BODY_TIMEOUT + margin, "{:?}", closed.after);
    }

    // Counted one by one, logged at a rate.
    let text = metrics(&daemon).await;
    let timed_out = counter(
        &text,
        "zoomwire_webhook_connections_total",
        "header_timeout",
    );
    assert!(timed_out >= SLOW_CLIENTS as f64, "{timed_out}\n{text}");
    let body_timeouts = counter(&text, "zoomwire_webhook_requests_total", "timeout");
    assert_eq!(body_timeouts, SLOW_BODIES as f64, "{text}");
    assert_eq!(
        counter(&text, "zoomwire_webhook_requests_total", "accepted"),
        1.0
    );
    let refusal_lines = daemon.logged("request refused").len()
        + daemon
            .logged("more requests refused than logged one by one")
            .len();
    eprintln!(
        "{} refusals: {refusal_lines} log lines",
        SLOW_CLIENTS + SLOW_BODIES
    );
    assert!(
        refusal_lines <= 20,
        "{refusal_lines} log lines for {} refusals",
        SLOW_CLIENTS + SLOW_BODIES
    );

    // And the endpoint still answers afterwards.
    assert_eq!(post_signed(server, 2).await.0, 200);
    daemon.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_thousand_forged_signatures_are_counted_but_logged_a_few_times() {
    const FORGED: usize = 20_000;
    // The per-address rate would answer most of them 429 before their
    // signature is checked: off, so that every one is a bad signature.
    let ws = workspace(&[("ZOOMWIRE_WEBHOOK_PER_ADDRESS_RATE", "0")]).await;
    let daemon = ws.start(1).await;
    let server = webhook_addr(&daemon).await;
    let body = meeting_event("meeting.started", 3, HOST_USER_ID).to_string();
    let client = reqwest::Client::new();
    let url = format!("http://{server}/zoom/webhook");
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let forged = sign(&SecretString::from("forged"), &timestamp, body.as_bytes());
    let statuses = futures_util::future::join_all((0..16).map(|_| {
        let (client, url, body, timestamp, forged) = (
            client.clone(),
            url.clone(),
            body.clone(),
            timestamp.clone(),
            forged.clone(),
        );
        async move {
            let mut unauthorized = 0;
            for _ in 0..FORGED / 16 {
                let response = client
                    .post(&url)
                    .header(TIMESTAMP_HEADER, &timestamp)
                    .header(SIGNATURE_HEADER, &forged)
                    .body(body.clone())
                    .send()
                    .await
                    .expect("answered");
                unauthorized += usize::from(response.status() == 401);
            }
            unauthorized
        }
    }))
    .await;
    assert_eq!(statuses.iter().sum::<usize>(), FORGED);
    let (status, took) = post_signed(server, 4).await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(3), "{took:?}");

    let text = metrics(&daemon).await;
    assert_eq!(
        counter(&text, "zoomwire_webhook_requests_total", "unauthorized"),
        FORGED as f64,
        "{text}"
    );
    let one_by_one = daemon.logged("request refused").len();
    eprintln!(
        "{FORGED} forged signatures: {one_by_one} refusal lines, a signed one answered in {took:?}"
    );
    assert!(
        (1..=10).contains(&one_by_one),
        "{one_by_one} refusal lines for {FORGED} forged requests"
    );
    assert!(
        daemon.logged("webhook refused").is_empty(),
        "no line per refusal"
    );
    eventually("the real one ran", || async {
        (ws.slack_texts("#alerts") == ["Meeting 4"]).then_some(())
    })
    .await;
    daemon.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_address_cannot_hold_more_than_its_share_of_connections() {
    let ws = workspace(&[
        ("ZOOMWIRE_WEBHOOK_PER_ADDRESS_CONNECTIONS", "10"),
        ("ZOOMWIRE_WEBHOOK_HEADER_TIMEOUT", "2s"),
    ])
    .await;
    let daemon = ws.start(1).await;
    let server = webhook_addr(&daemon).await;
    let greedy = IpAddr::from([127, 0, 2, 1]);
    let mut clients = Vec::new();
    for _ in 0..50 {
        let stream = connect_from(greedy, server).await;
        clients.push(tokio::spawn(hold(
            stream,
            "POST /zoom/webhook HTTP/1.1\r\n".to_string(),
            b'a',
            Duration::from_millis(500),
            Duration::from_secs(30),
        )));
    }
    // Another address is served at once meanwhile.
    let (status, took) = post_signed(server, 5).await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(3), "{took:?}");
    let mut closed_at_once = 0;
    for client in clients {
        let closed = client.await.expect("task").expect("closed in the end");
        if closed.after < Duration::from_secs(1) {
            closed_at_once += 1;
        }
    }
    assert_eq!(
        closed_at_once, 40,
        "all but the address's 10 closed at once"
    );
    let text = metrics(&daemon).await;
    assert_eq!(
        counter(
            &text,
            "zoomwire_webhook_connections_total",
            "per_address_connections"
        ),
        40.0,
        "{text}"
    );
    daemon.kill().await;
}

/// Meeting `n` posted signed; its status, or `None` once nobody answers.
async fn try_post(client: &reqwest::Client, addr: SocketAddr, n: u64) -> Option<u16> {
    let body = meeting_event("meeting.started", n, HOST_USER_ID).to_string();
    let response = signed(client, addr, body, SECRET).send().await.ok()?;
    Some(response.status().as_u16())
}

/// The meeting numbers of the events in the store (topics `Meeting n`).
fn stored_meetings(data_dir: &std::path::Path) -> BTreeSet<u64> {
    let conn = rusqlite::Connection::open(data_dir.join("zoomwire.db")).expect("the store");
    let mut statement = conn.prepare("SELECT raw FROM events").unwrap();
    let raws = statement
        .query_map([], |row| row.get::<_, String>(0))
        .unwrap();
    raws.map(|raw| {
        let body: serde_json::Value = serde_json::from_str(&raw.unwrap()).unwrap();
        let topic = body["payload"]["object"]["topic"]
            .as_str()
            .unwrap()
            .to_string();
        topic["Meeting ".len()..].parse().unwrap()
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_webhook_answered_200_is_kept_when_the_daemon_is_killed() {
    const SENDERS: u64 = 8;
    // Zoom posts from many addresses: no per-address rate here.
    let ws = workspace(&[("ZOOMWIRE_WEBHOOK_PER_ADDRESS_RATE", "0")]).await;
    let daemon = ws.start(1).await;
    let server = webhook_addr(&daemon).await;
    // Senders post one event after another until nobody answers.
    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let (mut answered, mut refused) = (Vec::new(), 0);
                for n in (sender * 1_000_000 + 1).. {
                    match try_post(&client, server, n).await {
                        Some(200) => answered.push(n),
                        Some(_) => refused += 1,
                        None => break,
                    }
                }
                (answered, refused)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    daemon.kill().await;
    let (mut answered, mut refused) = (BTreeSet::new(), 0);
    for sender in senders {
        let (ok, no) = sender.await.unwrap();
        answered.extend(ok);
        refused += no;
    }
    let stored = stored_meetings(&ws.data_dir());
    let lost: Vec<_> = answered.difference(&stored).collect();
    eprintln!(
        "killed under {SENDERS} webhook senders: {} answered 200, {refused} refused, {} stored",
        answered.len(),
        stored.len()
    );
    assert!(answered.len() > 50, "the stream was too short to tell");
    assert!(
        lost.is_empty(),
        "{} answered 200 but not kept, such as {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}
