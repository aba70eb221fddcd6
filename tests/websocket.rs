//! End-to-end tests of the WebSocket subscription client against the
//! simulator over loopback, with millisecond intervals: heartbeats, dropped
//! and stalled connections, invalid-token frames, malformed frames, renewal
//! before the token expires, refusals, and two subscriptions at once; and
//! each variant of Zoom's unconfirmed behaviour the simulator offers (the
//! socket closed or kept after the invalid-token frame, a refusal at the
//! upgrade, a failed heartbeat, a second connection replacing, refused or
//! beside the first, a new token invalidating the previous one, a pasted
//! endpoint URL). The tests that wait for a token to near its expiry, or
//! for backoffs, run on tokio's paused clock, which the client, its token
//! cache and the simulator (on the same runtime) all follow: it jumps ahead
//! whenever every task waits on a timer, so a token lifetime of seconds
//! takes no real seconds, while frames still cross real sockets.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use zoomwire_engine::effects::accounts::ZoomAccountClient;
use zoomwire_engine::effects::live::{LiveConfig, LiveEffects};
use zoomwire_engine::effects::state::MemoryState;
use zoomwire_engine::effects::{EffectContext, EffectErrorKind, EffectRequest, Effects};
use zoomwire_engine::event::{Event, Source};
use zoomwire_engine::zoom::oauth::{OAuthClient, OAuthConfig};
use zoomwire_engine::zoom::token::{AccessTokens, StaticToken};
use zoomwire_engine::zoom::websocket::{ConnectionStatus, WsConfig, run_subscription};
use zoomwire_sim::sim::{self, Fault, FaultKind, SecondConnection, SimConfig, SimHandle};

const WAIT: Duration = Duration::from_secs(5);

fn oauth(sim: &SimHandle, margin: Duration) -> Arc<OAuthClient> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut config = OAuthConfig::new(
        sim.oauth_base(),
        sim.account_id(),
        sim.client_id(),
        SecretString::from(sim.client_secret().to_string()),
    );
    config.refresh_margin = margin;
    Arc::new(OAuthClient::new(config).expect("client builds"))
}

fn fast_config(sim: &SimHandle, subscription: &str, name: &str) -> WsConfig {
    let mut config = WsConfig::new(sim.ws_base(), subscription, name);
    config.heartbeat_interval = Duration::from_millis(50);
    config.dead_after = Duration::from_millis(300);
    config.connect_timeout = Duration::from_secs(2);
    config.reconnect_before_expiry = Duration::from_millis(500);
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    config
}

/// A running client: its events, its status and the token to stop it.
struct Client {
    events: mpsc::Receiver<Event>,
    status: watch::Receiver<ConnectionStatus>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    fn start(config: WsConfig, tokens: Arc<dyn AccessTokens>) -> Client {
        let (events_tx, events) = mpsc::channel(16);
        let (status_tx, status) = watch::channel(ConnectionStatus::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_subscription(
            config,
            tokens,
            events_tx,
            status_tx,
            shutdown.clone(),
        ));
        Client {
            events,
            status,
            shutdown,
            task,
        }
    }

    async fn next_event(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("an event within the wait")
            .expect("channel open")
    }

    /// Looks at the status every few milliseconds until it passes `check`:
    /// its counters (frames, events, heartbeats) change without waking its
    /// watchers, only changes of the connection itself do.
    async fn wait_status(&mut self, what: &str, mut check: impl FnMut(&ConnectionStatus) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !check(&self.status.borrow()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "status never got {what}: {:?}",
                *self.status.borrow()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("stops promptly")
            .expect("no panic");
    }
}

fn event(kind: &str, n: u64) -> Value {
    json!({"event": kind, "event_ts": 1_732_000_000_000u64 + n, "payload": {"object": {"id": n.to_string()}}})
}

async fn wait_connections(sim: &SimHandle, subscription: &str, accepted: usize) {
    assert!(
        sim.wait_for_connections(subscription, accepted, WAIT).await,
        "{accepted} connections to {subscription}: {:?}",
        sim.connections()
    );
}

#[tokio::test]
async fn connects_sends_heartbeats_and_receives_events() {
    logs();
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let mut client = Client::start(
        fast_config(&sim, sim.subscription_id(), "main"),
        oauth(&sim, Duration::from_secs(60)),
    );
    wait_connections(&sim, sim.subscription_id(), 1).await;
    client
        .wait_status("two heartbeat replies", |s| s.heartbeat_replies >= 2)
        .await;
    assert!(sim.connections()[0].heartbeats_received >= 2);

    assert_eq!(sim.emit_event(None, &event("meeting.started", 1)), 1);
    let received = client.next_event().await;
    assert_eq!(received.event_type, "meeting.started");
    assert_eq!(received.source, Source::Websocket("main".into()));
    let status = client.status.borrow().clone();
    assert!(status.connected);
    assert_eq!(status.name, "main");
    assert_eq!(status.events_received, 1);
    assert_eq!(status.reconnects, 0);
    assert!(status.gaps.is_empty());

    // The upgrade request is recorded with the token redacted.
    let upgrade = sim
        .requests()
        .into_iter()
        .find(|r| r.raw_path == "/ws")
        .expect("the upgrade request is recorded");
    assert_eq!(upgrade.status, 101);
    let query = upgrade.query.unwrap_or_default();
    assert!(query.contains("subscriptionId=sim-subscription"), "{query}");
    assert!(query.contains("access_token=[redacted]"), "{query}");
    client.stop().await;
}

#[tokio::test]
async fn reconnects_after_the_server_drops_the_connection_and_records_the_gap() {
    logs();
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let sub = sim.subscription_id().to_string();
    let mut client = Client::start(
        fast_config(&sim, &sub, "main"),
        oauth(&sim, Duration::from_secs(60)),
    );
    wait_connections(&sim, &sub, 1).await;
    sim.emit_event(None, &event("meeting.started", 1));
    client.next_event().await;

    assert_eq!(sim.drop_connections(None), 1);
    wait_connections(&sim, &sub, 2).await;
    client
        .wait_status("connected again", |s| s.connected && s.reconnects == 1)
        .await;
    assert_eq!(sim.emit_event(None, &event("meeting.ended", 2)), 1);
    assert_eq!(client.next_event().await.event_type, "meeting.ended");

    let status = client.status.borrow().clone();
    assert_eq!(status.gaps.len(), 1, "{status:?}");
    let gap = &status.gaps[0];
    assert!(gap.end.is_some_and(|end| end >= gap.start), "{gap:?}");
    assert_eq!(
        sim.connections()[0].close_reason.as_deref(),
        Some("dropped")
    );
    client.stop().await;
}

#[tokio::test]
async fn a_stalled_connection_is_declared_dead_and_replaced() {
    logs();
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let sub = sim.subscription_id().to_string();
    let mut client = Client::start(
        fast_config(&sim, &sub, "main"),
        oauth(&sim, Duration::from_secs(60)),
    );
    wait_connections(&sim, &sub, 1).await;
    client
        .wait_status("a heartbeat reply", |s| s.heartbeat_replies >= 1)
        .await;
    let stalled_at = chrono::Utc::now();
    assert_eq!(sim.stall(None), 1);
    // No close, no reset: only the silence tells.
    wait_connections(&sim, &sub, 2).await;
    client
        .wait_status("connected again", |s| s.connected && s.gaps.len() == 1)
        .await;
    let gap = client.status.borrow().gaps[0].clone();
    assert!(gap.reason.contains("no inbound frame"), "{gap:?}");
    // The gap starts at the last frame heard, not when the silence was noticed.
    let noticed_after = gap.end.unwrap() - gap.start;
    assert!(
        noticed_after >= chrono::Duration::milliseconds(250),
        "{gap:?}"
    );
    assert!(
        gap.start <= stalled_at + chrono::Duration::milliseconds(100),
        "{gap:?}"
    );

    sim.emit_event(None, &event("meeting.started", 3));
    assert_eq!(client.next_event().await.ts, 1_732_000_000_003);
    let records = sim.connections();
    assert!(
        !records[0].open,
        "the stalled connection is gone: {records:?}"
    );
    client.stop().await;
}

/// Captures the log output of every test in this file, to check that no
/// token is ever written. Installed globally before any test logs, so that
/// tracing's per-callsite interest cache never sees a thread without it.
#[derive(Clone, Default)]
struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn logs() -> &'static LogCapture {
    static LOGS: OnceLock<LogCapture> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = LogCapture::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
        logs
    })
}

#[tokio::test]
async fn an_invalid_token_frame_means_reconnect_with_a_new_token_in_either_wording() {
    logs();
    let mut seen_tokens = Vec::new();
    for (module, wording) in [
        ("message", "Invalid Token"),
        ("heartbeat", "Token is invalid"),
    ] {
        let sim = sim::start(SimConfig {
            invalid_token_module: module.into(),
            invalid_token_text: wording.into(),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let sub = sim.subscription_id().to_string();
        let tokens = oauth(&sim, Duration::from_secs(60));
        let mut client = Client::start(fast_config(&sim, &sub, "main"), tokens.clone());
        wait_connections(&sim, &sub, 1).await;
        seen_tokens.push(tokens.token().await.unwrap().expose().to_string());

        sim.expire_tokens();
        wait_connections(&sim, &sub, 2).await;
        seen_tokens.push(tokens.token().await.unwrap().expose().to_string());
        let records = sim.connections();
        assert_eq!(records[0].close_reason.as_deref(), Some("token expired"));
        assert_ne!(
            records[0].token_serial, records[1].token_serial,
            "reconnected with a new token: {records:?}"
        );
        assert!(records[1].accepted);

        sim.emit_event(None, &event("user.created", 4));
        assert_eq!(client.next_event().await.event_type, "user.created");
        client.stop().await;
    }
    let logs = logs().text();
    assert!(
        logs.contains("lost the zoom event subscription connection"),
        "{logs}"
    );
    for token in seen_tokens {
        assert!(!logs.contains(&token), "a token leaked into the log");
    }
}

#[tokio::test]
async fn malformed_frames_are_skipped_without_dropping_the_connection() {
    logs();
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let sub = sim.subscription_id().to_string();
    let mut client = Client::start(
        fast_config(&sim, &sub, "main"),
        oauth(&sim, Duration::from_secs(60)),
    );
    wait_connections(&sim, &sub, 1).await;
    for bad in [
        "not json at all",
        r#"{"module":"mystery","content":"?"}"#,
        r#"{"module":"message","content":"{\"no_event_field\":1}"}"#,
        r#"{"module":"message","content":"{broken"}"#,
    ] {
        assert_eq!(sim.emit_raw(None, bad), 1);
    }
    sim.emit_event(None, &event("meeting.started", 5));
    assert_eq!(client.next_event().await.event_type, "meeting.started");
    let status = client.status.borrow().clone();
    assert_eq!(status.frames_skipped, 4);
    assert_eq!(status.reconnects, 0);
    assert_eq!(sim.connections().len(), 1, "still the first connection");
    client.stop().await;
}

#[tokio::test(start_paused = true)]
async fn renews_the_connection_before_the_token_expires_without_a_gap() {
    logs();
    let sim = sim::start(SimConfig {
        token_lifetime: Duration::from_secs(2),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let sub = sim.subscription_id().to_string();
    // Cached token fresh for 0.5 s; the connection renews 0.5 s before expiry.
    let mut client = Client::start(
        fast_config(&sim, &sub, "main"),
        oauth(&sim, Duration::from_millis(1500)),
    );
    wait_connections(&sim, &sub, 2).await;
    let records = sim.connections();
    // Replaced by the sim or closed by the client once the new one was up;
    // either way, before the token expired.
    assert!(
        matches!(
            records[0].close_reason.as_deref(),
            Some("replaced by a newer connection" | "client closed")
        ),
        "renewed before the token expired: {records:?}"
    );
    assert_ne!(records[0].token_serial, records[1].token_serial);
    client
        .wait_status("one renewal", |s| s.reconnects >= 1)
        .await;
    let status = client.status.borrow().clone();
    assert!(status.connected);
    assert!(
        status.gaps.is_empty(),
        "a renewal leaves no gap: {status:?}"
    );
    sim.emit_event(None, &event("meeting.started", 6));
    client.next_event().await;
    client.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_subscription_is_retried_with_backoff_and_reported() {
    logs();
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let mut client = Client::start(
        fast_config(&sim, "no-such-subscription", "main"),
        oauth(&sim, Duration::from_secs(60)),
    );
    client
        .wait_status("the refusal", |s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("Invalid subscriptionId"))
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let attempts = sim.connections();
    assert!(attempts.len() >= 2, "retried: {attempts:?}");
    assert!(attempts.iter().all(|a| !a.accepted));
    assert!(
        attempts.len() < 30,
        "backoff, not a storm: {}",
        attempts.len()
    );
    assert!(!client.status.borrow().connected);
    client.stop().await;
}

#[tokio::test]
async fn refused_credentials_are_reported_as_a_configuration_error() {
    logs();
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = OAuthConfig::new(
        sim.oauth_base(),
        sim.account_id(),
        sim.client_id(),
        SecretString::from("wrong".to_string()),
    );
    let tokens = Arc::new(OAuthClient::new(config).unwrap());
    let mut client = Client::start(fast_config(&sim, sim.subscription_id(), "main"), tokens);
    client
        .wait_status("a refusal naming the setting", |s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("ZOOM_CLIENT_SECRET"))
        })
        .await;
    assert!(
        sim.connections().is_empty(),
        "no connection without a token"
    );
    client.stop().await;
}

#[tokio::test]
async fn two_subscriptions_run_side_by_side_on_one_token_cache() {
    logs();
    let sim = sim::start(SimConfig {
        subscription_ids: vec!["sub-a".into(), "sub-b".into()],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let tokens = oauth(&sim, Duration::from_secs(60));
    let mut a = Client::start(fast_config(&sim, "sub-a", "alpha"), tokens.clone());
    let mut b = Client::start(fast_config(&sim, "sub-b", "beta"), tokens.clone());
    wait_connections(&sim, "sub-a", 1).await;
    wait_connections(&sim, "sub-b", 1).await;

    assert_eq!(
        sim.emit_event(Some("sub-a"), &event("meeting.started", 7)),
        1
    );
    assert_eq!(sim.emit_event(Some("sub-b"), &event("meeting.ended", 8)), 1);
    let from_a = a.next_event().await;
    let from_b = b.next_event().await;
    assert_eq!(
        (from_a.event_type.as_str(), from_a.source),
        ("meeting.started", Source::Websocket("alpha".into()))
    );
    assert_eq!(
        (from_b.event_type.as_str(), from_b.source),
        ("meeting.ended", Source::Websocket("beta".into()))
    );
    assert_eq!(tokens.fetch_count(), 1, "one token serves both");

    // Dropping one leaves the other alone.
    sim.drop_connections(Some("sub-a"));
    wait_connections(&sim, "sub-a", 2).await;
    assert_eq!(b.status.borrow().reconnects, 0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_static_token_source_works_and_shutdown_closes_the_connection() {
    logs();
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let token = zoomwire_engine::zoom::token::AccessToken::new(sim.issue_token());
    let mut client = Client::start(
        fast_config(&sim, sim.subscription_id(), "main"),
        Arc::new(StaticToken(token)),
    );
    wait_connections(&sim, sim.subscription_id(), 1).await;
    client.wait_status("connected", |s| s.connected).await;
    let mut status = client.status.clone();
    client.stop().await;
    assert!(!status.borrow_and_update().connected);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let records = sim.connections();
    assert_eq!(
        records[0].close_reason.as_deref(),
        Some("client closed"),
        "{records:?}"
    );
}

#[tokio::test]
async fn a_frame_many_reads_long_arrives_whole_between_small_ones() {
    logs();
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let sub = sim.subscription_id().to_string();
    let mut client = Client::start(
        fast_config(&sim, &sub, "main"),
        oauth(&sim, Duration::from_secs(60)),
    );
    wait_connections(&sim, &sub, 1).await;
    // Far larger than one read of the connection (8 KiB), under the cap.
    let mut large = event("recording.completed", 2);
    large["payload"]["object"]["topic"] = json!("é".repeat(150 * 1024));
    for sent in [
        event("meeting.started", 1),
        large.clone(),
        event("meeting.ended", 3),
    ] {
        sim.emit_event(None, &sent);
    }
    assert_eq!(client.next_event().await.ts, 1_732_000_000_001);
    let received = client.next_event().await;
    assert_eq!(received.body_json(), large);
    assert_eq!(client.next_event().await.ts, 1_732_000_000_003);
    client.stop().await;
}

#[tokio::test]
async fn a_frame_over_the_size_cap_ends_the_connection_and_the_client_comes_back() {
    logs();
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let sub = sim.subscription_id().to_string();
    let mut config = fast_config(&sim, &sub, "main");
    config.max_frame_bytes = 64 * 1024;
    let mut client = Client::start(config, oauth(&sim, Duration::from_secs(60)));
    wait_connections(&sim, &sub, 1).await;
    let huge = json!({"module": "message", "content": "x".repeat(100 * 1024)}).to_string();
    assert_eq!(sim.emit_raw(None, &huge), 1);
    wait_connections(&sim, &sub, 2).await;
    client
        .wait_status("connected after the oversized frame", |s| {
            s.connected && s.gaps.len() == 1
        })
        .await;
    sim.emit_event(None, &event("meeting.started", 9));
    assert_eq!(client.next_event().await.ts, 1_732_000_000_009);
    client.stop().await;
}

#[tokio::test]
async fn the_server_closes_a_silent_client_and_keeps_a_heartbeating_one() {
    logs();
    let sim = sim::start(SimConfig {
        silent_client_timeout: Some(Duration::from_millis(150)),
        subscription_ids: vec!["quiet".into(), "chatty".into()],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let tokens = oauth(&sim, Duration::from_secs(60));
    let mut quiet_config = fast_config(&sim, "quiet", "quiet");
    quiet_config.heartbeat_interval = Duration::from_secs(10);
    quiet_config.dead_after = Duration::from_secs(20);
    let quiet = Client::start(quiet_config, tokens.clone());
    let chatty = Client::start(fast_config(&sim, "chatty", "chatty"), tokens);
    wait_connections(&sim, "quiet", 2).await;
    let quiet_records: Vec<_> = sim
        .connections()
        .into_iter()
        .filter(|r| r.subscription_id == "quiet")
        .collect();
    assert_eq!(
        quiet_records[0].close_reason.as_deref(),
        Some("client silent too long")
    );
    let chatty_connections = sim
        .connections()
        .iter()
        .filter(|r| r.subscription_id == "chatty")
        .count();
    assert_eq!(chatty_connections, 1, "heartbeats keep the connection");
    quiet.stop().await;
    chatty.stop().await;
}

// --- Closer to Zoom: the variants Zoom leaves unconfirmed --------------------

#[tokio::test]
async fn the_invalid_token_frame_is_handled_whether_the_server_closes_the_socket_or_keeps_it() {
    logs();
    for closes in [true, false] {
        let sim = sim::start(SimConfig {
            invalid_token_closes: closes,
            invalid_token_text: "Token is invalid or has expired".into(),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let sub = sim.subscription_id().to_string();
        let tokens = oauth(&sim, Duration::from_secs(60));
        let mut client = Client::start(fast_config(&sim, &sub, "main"), tokens.clone());
        wait_connections(&sim, &sub, 1).await;
        sim.expire_tokens();
        wait_connections(&sim, &sub, 2).await;
        let records = sim.connections();
        let expected = if closes {
            "token expired"
        } else {
            "client closed"
        };
        // The client closes a socket the server kept open.
        tokio::time::timeout(WAIT, async {
            while sim.connections()[0].open {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the old socket is closed");
        assert_eq!(
            sim.connections()[0].close_reason.as_deref(),
            Some(expected),
            "closes: {closes}"
        );
        assert_ne!(records[0].token_serial, records[1].token_serial);
        assert_eq!(tokens.fetch_count(), 2, "one new token");
        sim.emit_event(None, &event("meeting.started", 40));
        assert_eq!(client.next_event().await.ts, 1_732_000_000_040);
        client
            .wait_status("the gap recorded", |s| {
                s.gaps.len() == 1 && s.gaps[0].reason.contains("access token is invalid")
            })
            .await;
        client.stop().await;
    }
}

#[tokio::test]
async fn an_upgrade_refused_with_401_or_403_drops_the_token_before_retrying() {
    logs();
    for status in [401, 403] {
        let sim = sim::start(SimConfig {
            upgrade_refusal_status: Some(status),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let sub = sim.subscription_id().to_string();
        let tokens = oauth(&sim, Duration::from_secs(60));
        // The cache holds a token Zoom no longer accepts.
        tokens.token().await.unwrap();
        sim.expire_tokens();
        let mut client = Client::start(fast_config(&sim, &sub, "main"), tokens.clone());
        client.wait_status("connected", |s| s.connected).await;
        let records = sim.connections();
        assert_eq!(
            records[0].close_reason.as_deref(),
            Some("refused at upgrade")
        );
        assert_eq!(records[0].token_serial, Some(1));
        let accepted: Vec<_> = records.iter().filter(|r| r.accepted).collect();
        assert_eq!(accepted.len(), 1, "{records:?}");
        assert_eq!(
            accepted[0].token_serial,
            Some(2),
            "a new token after the refusal"
        );
        assert_eq!(tokens.fetch_count(), 2);
        client.stop().await;
    }
}

#[tokio::test]
async fn a_heartbeat_answered_with_success_false_is_a_failure() {
    logs();
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let sub = sim.subscription_id().to_string();
    let mut client = Client::start(
        fast_config(&sim, &sub, "main"),
        oauth(&sim, Duration::from_secs(60)),
    );
    wait_connections(&sim, &sub, 1).await;
    client
        .wait_status("a heartbeat answered", |s| s.heartbeat_replies > 0)
        .await;
    assert_eq!(sim.fail_heartbeats(None), 1);
    wait_connections(&sim, &sub, 2).await;
    client
        .wait_status("a gap for the failed heartbeat", |s| {
            s.connected && s.gaps.iter().any(|g| g.reason.contains("success:false"))
        })
        .await;
    assert_eq!(
        sim.connections()[0].close_reason.as_deref(),
        Some("client closed")
    );
    sim.emit_event(None, &event("meeting.started", 41));
    client.next_event().await;
    client.stop().await;
}

/// Emits an event every 10 ms for `span`, returning the ts of those
/// delivered to a connection and of those that found none.
async fn emit_for(sim: &SimHandle, span: Duration, from: u64) -> (Vec<i64>, Vec<i64>) {
    let (mut delivered, mut lost) = (Vec::new(), Vec::new());
    let end = tokio::time::Instant::now() + span;
    let mut n = from;
    while tokio::time::Instant::now() < end {
        let ts = 1_732_000_000_000 + n as i64;
        if sim.emit_event(None, &event("meeting.started", n)) > 0 {
            delivered.push(ts);
        } else {
            lost.push(ts);
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (delivered, lost)
}

#[tokio::test(start_paused = true)]
async fn renewal_works_whichever_way_zoom_treats_a_second_connection() {
    logs();
    for second in [
        SecondConnection::Replace,
        SecondConnection::Both,
        SecondConnection::RejectNew,
    ] {
        let sim = sim::start(SimConfig {
            token_lifetime: Duration::from_secs(2),
            second_connection: second,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let sub = sim.subscription_id().to_string();
        let (events_tx, mut events) = mpsc::channel(10_000);
        let (status_tx, status) = watch::channel(ConnectionStatus::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_subscription(
            fast_config(&sim, &sub, "main"),
            oauth(&sim, Duration::from_millis(1500)),
            events_tx,
            status_tx,
            shutdown.clone(),
        ));
        wait_connections(&sim, &sub, 1).await;
        // Through the renewal, about 1.5 s after the first connection.
        let (delivered, lost) = emit_for(&sim, Duration::from_millis(2500), 1000).await;
        let accepted = sim.connections().iter().filter(|r| r.accepted).count();
        assert!(
            accepted >= 2,
            "{second:?}: renewed: {:?}",
            sim.connections()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        shutdown.cancel();
        task.await.unwrap();
        let mut received = std::collections::BTreeSet::new();
        while let Ok(event) = events.try_recv() {
            received.insert(event.ts);
        }
        let missing: Vec<_> = delivered
            .iter()
            .filter(|ts| !received.contains(ts))
            .collect();
        assert!(
            missing.is_empty(),
            "{second:?}: delivered but not received: {missing:?}"
        );
        let status = status.borrow().clone();
        match second {
            SecondConnection::Replace | SecondConnection::Both => {
                assert!(
                    lost.is_empty(),
                    "{second:?}: a moment without a connection: {lost:?}"
                );
                assert!(status.gaps.is_empty(), "{second:?}: {status:?}");
            }
            SecondConnection::RejectNew => {
                let refused = sim.connections().iter().any(|r| {
                    r.close_reason.as_deref() == Some("refused: the subscription has a connection")
                });
                assert!(refused, "{:?}", sim.connections());
                // The handover: a recorded gap of a moment, for reconciliation to cover.
                let handover: Vec<_> = status
                    .gaps
                    .iter()
                    .filter(|g| g.reason.starts_with("handover"))
                    .collect();
                assert!(!handover.is_empty(), "{status:?}");
                for gap in handover {
                    let end = gap.end.expect("the handover ended");
                    assert!((end - gap.start).num_milliseconds() < 1000, "{gap:?}");
                }
            }
        }
    }
}

#[tokio::test]
async fn a_pasted_endpoint_url_connects_with_its_subscription_id_once() {
    logs();
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let sub = sim.subscription_id().to_string();
    let pasted = format!("{}?subscriptionId={sub}", sim.ws_base());
    let mut config = fast_config(&sim, &sub, "main");
    config.ws_base = pasted;
    let mut client = Client::start(config, oauth(&sim, Duration::from_secs(60)));
    client.wait_status("connected", |s| s.connected).await;
    let upgrade = sim
        .requests()
        .into_iter()
        .find(|r| r.raw_path == "/ws")
        .expect("the upgrade request");
    let query = upgrade.query.unwrap_or_default();
    assert_eq!(query.matches("subscriptionId=").count(), 1, "{query}");
    assert!(query.contains("access_token=[redacted]"), "{query}");
    client.stop().await;
}

#[tokio::test]
async fn one_token_per_account_serves_socket_and_rest_and_only_code_124_mints_a_new_one() {
    logs();
    // Where a new token invalidates the one before, a needless one would cut the socket.
    let sim = sim::start(SimConfig {
        new_token_revokes_previous: true,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let sub = sim.subscription_id().to_string();
    let tokens = oauth(&sim, Duration::from_secs(60));
    let mut client = Client::start(fast_config(&sim, &sub, "main"), tokens.clone());
    wait_connections(&sim, &sub, 1).await;
    let effects = LiveEffects::new(
        LiveConfig {
            zoom_api_base: url::Url::parse(&sim.api_base()).unwrap(),
            ..LiveConfig::new(std::path::Path::new("/tmp/zoomwire-ws-test"))
        },
        vec![ZoomAccountClient::only(tokens.clone())],
        Arc::new(MemoryState::default()),
    )
    .unwrap();
    let context = EffectContext {
        rule: Arc::from("r"),
        run_id: Arc::from("run"),
        deadline: std::time::Instant::now() + Duration::from_secs(10),
        http_hosts: Arc::from(Vec::<String>::new()),
        download_token: None,
        zoom_account: Default::default(),
    };
    let get_me = EffectRequest::new("zoom.get", json!({"path": "/users/me"}));
    effects.perform(&context, &get_me).await.unwrap();
    assert_eq!(tokens.fetch_count(), 1, "the socket's token serves REST");

    // A scope error (4700) is not a token problem: no new token, the socket stays.
    sim.inject_fault(Fault {
        path_prefix: "/v2/users/".into(),
        count: 1,
        kind: FaultKind::Status {
            status: 401,
            body: Some(r#"{"code":4700,"message":"Invalid access token, does not contain scopes:[user:read:admin]."}"#.into()),
        },
    });
    let error = effects.perform(&context, &get_me).await.unwrap_err();
    assert_eq!(error.code, Some(json!(4700)));
    assert_eq!(error.kind, EffectErrorKind::Permanent);
    assert_eq!(tokens.fetch_count(), 1);
    assert_eq!(sim.connections().len(), 1, "the socket was left alone");

    // Code 124: one new token, and the call goes through; the socket follows
    // with the same new token (no third mint).
    sim.inject_fault(Fault {
        path_prefix: "/v2/users/".into(),
        count: 1,
        kind: FaultKind::Status {
            status: 401,
            body: Some(r#"{"code":124,"message":"Invalid access token."}"#.into()),
        },
    });
    effects.perform(&context, &get_me).await.unwrap();
    assert_eq!(tokens.fetch_count(), 2);
    wait_connections(&sim, &sub, 2).await;
    client
        .wait_status("reconnected", |s| s.connected && s.gaps.len() == 1)
        .await;
    assert_eq!(tokens.fetch_count(), 2, "the socket reuses the new token");
    let records = sim.connections();
    assert_eq!(records[1].token_serial, Some(2), "{records:?}");
    sim.emit_event(None, &event("meeting.started", 42));
    client.next_event().await;
    client.stop().await;
}
