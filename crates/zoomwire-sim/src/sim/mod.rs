//! The Zoom simulator: one axum server on loopback that speaks the parts of
//! Zoom (and Slack) zoomwire talks to, so that every test and `zoomwire demo`
//! run against the real wire protocol without credentials.
//!
//! It serves the Server-to-Server OAuth token endpoint (`oauth`), the
//! WebSocket event subscription (`websocket`), the REST API under `/v2`
//! (`rest`, seeded from `data`; the listings reconciliation reads are in
//! `listing`), Slack's Web API and incoming webhooks (`slack`) and recording
//! downloads (`download`). Several accounts can be simulated, each with its
//! own credentials, tokens, subscriptions and data: a token sees only its
//! own account, as on Zoom. Tests steer it either in-process through
//! [`SimHandle`] or over HTTP through the control API under `/_sim/`
//! (`control`): emit events (now, later, twice), drop or stall connections,
//! fail heartbeats, expire tokens, inject 429/5xx faults and delays
//! (`faults`), add meetings, recordings and users, and read back every
//! request it saw (`record`).
//!
//! Where Zoom's behaviour is unconfirmed, [`SimConfig`] offers each
//! plausible variant: whether a new token invalidates the previous one,
//! whether the socket closes after the invalid-token frame, whether a bad
//! token is refused at the upgrade or in `build_connection`, and what a
//! second connection on one subscription does ([`SecondConnection`]).

mod control;
pub mod data;
pub mod download;
mod faults;
mod listing;
mod oauth;
mod record;
mod rest;
mod slack;
pub mod smtp;
mod state;
pub mod tls;
mod websocket;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::serve::ListenerExt;
use tokio::task::JoinHandle;

/// How long [`SimHandle::shutdown`] lets open responses finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

pub use data::{NewMeeting, NewUser, RecordingState};
pub use faults::{Fault, FaultKind, RateLimitType, RetryAfter};
pub use record::{RecordedRequest, SlackPost};
pub use smtp::{ReceivedMail, SmtpSink, start_smtp_sink};
pub use state::ConnectionRecord;
pub use tls::SimTls;

use state::SimState;

/// What a second connection on a subscription that already has one does
/// (unconfirmed for Zoom: its own skill text says the new one closes the
/// existing one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecondConnection {
    /// The new connection is accepted and the old one closed.
    #[default]
    Replace,
    /// The new connection is refused (`build_connection` success false)
    /// while the old one is open.
    RejectNew,
    /// Both stay open and both get every event.
    Both,
}

/// Zoom's plans, as far as the simulator tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimPlan {
    /// Reports (`/report/...`) but not the dashboard (`/metrics/...`).
    Pro,
    /// Both.
    #[default]
    Business,
}

/// One more simulated account, with its own credentials and data (it starts
/// with its owner only).
#[derive(Clone)]
pub struct SimAccount {
    pub account_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub subscription_ids: Vec<String>,
    pub plan: SimPlan,
}

impl SimAccount {
    /// An account named `account_id`, with a client, a secret and one subscription named after it.
    pub fn named(account_id: &str) -> SimAccount {
        SimAccount {
            account_id: account_id.into(),
            client_id: format!("{account_id}-client-id"),
            client_secret: format!("{account_id}-client-secret"),
            subscription_ids: vec![format!("{account_id}-subscription")],
            plan: SimPlan::default(),
        }
    }
}

impl fmt::Debug for SimAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimAccount")
            .field("account_id", &self.account_id)
            .field("client_id", &self.client_id)
            .field("subscription_ids", &self.subscription_ids)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

/// What the simulator accepts and how it behaves. `Default` gives fixed,
/// documented credentials and Zoom's real lifetimes.
#[derive(Clone)]
pub struct SimConfig {
    /// Where to listen; `127.0.0.1:0` picks a free port.
    pub addr: SocketAddr,
    /// The primary account (seeded with data).
    pub account_id: String,
    pub client_id: String,
    /// A test credential, not a secret; still kept out of `Debug`.
    pub client_secret: String,
    /// Subscriptions of the primary account the WebSocket endpoint accepts.
    pub subscription_ids: Vec<String>,
    /// The primary account's plan.
    pub plan: SimPlan,
    /// More accounts.
    pub extra_accounts: Vec<SimAccount>,
    /// How long an issued access token stays valid (Zoom: one hour).
    pub token_lifetime: Duration,
    /// Whether issuing a token invalidates the account's earlier ones (Zoom
    /// staff said so in 2022; today's documentation says several can be valid).
    pub new_token_revokes_previous: bool,
    /// Content of the frame sent when a connection's token expires.
    pub invalid_token_text: String,
    /// Module of that frame (unconfirmed in Zoom's documentation).
    pub invalid_token_module: String,
    /// Whether the server closes the socket after that frame (else it keeps
    /// it open but delivers nothing more).
    pub invalid_token_closes: bool,
    /// A bad or expired token at connection time: `None` answers
    /// `build_connection` with success false; `Some(401 or 403)` refuses the
    /// HTTP upgrade with that status.
    pub upgrade_refusal_status: Option<u16>,
    /// What a second connection on a subscription does.
    pub second_connection: SecondConnection,
    /// Close a connection whose client sent nothing for this long.
    pub silent_client_timeout: Option<Duration>,
    pub slack_bot_token: String,
    /// Slack channels that exist (names without `#`); channel ids `C…` always exist.
    pub slack_channels: Vec<String>,
    /// The `download_token` that authorises recording downloads.
    pub download_token: String,
    /// Size of each seeded MP4 recording file (the M4A is an eighth of it).
    pub recording_file_size: u64,
    /// Participants seeded per past meeting (enough for several pages).
    pub participants_per_meeting: usize,
    /// Also serve over TLS on a second port, where recording files then
    /// point (see `tls.rs`); `None` serves plain HTTP only.
    pub tls: Option<SimTls>,
}

/// The silent-client timeout by default: Zoom's is unconfirmed; a client
/// that heartbeats every 30 s is never silent this long.
pub const DEFAULT_SILENT_CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            account_id: "sim-account".into(),
            client_id: "sim-client-id".into(),
            client_secret: "sim-client-secret".into(),
            subscription_ids: vec!["sim-subscription".into()],
            plan: SimPlan::default(),
            extra_accounts: Vec::new(),
            token_lifetime: Duration::from_secs(3600),
            new_token_revokes_previous: false,
            invalid_token_text: "Invalid Token".into(),
            invalid_token_module: "message".into(),
            invalid_token_closes: true,
            upgrade_refusal_status: None,
            second_connection: SecondConnection::default(),
            silent_client_timeout: Some(DEFAULT_SILENT_CLIENT_TIMEOUT),
            slack_bot_token: "xoxb-sim-bot-token".into(),
            slack_channels: ["general", "recordings", "ops", "alerts", "random"]
                .map(String::from)
                .to_vec(),
            download_token: "sim-download-token".into(),
            recording_file_size: 8 * 1024 * 1024,
            participants_per_meeting: 650,
            tls: None,
        }
    }
}

impl SimConfig {
    /// Every account: the primary one first, then the extra ones.
    pub fn accounts(&self) -> Vec<SimAccount> {
        let primary = SimAccount {
            account_id: self.account_id.clone(),
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            subscription_ids: self.subscription_ids.clone(),
            plan: self.plan,
        };
        std::iter::once(primary)
            .chain(self.extra_accounts.iter().cloned())
            .collect()
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("addr", &self.addr)
            .field("account_id", &self.account_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("token_lifetime", &self.token_lifetime)
            .field("subscription_ids", &self.subscription_ids)
            .field("extra_accounts", &self.extra_accounts)
            .field("second_connection", &self.second_connection)
            .field("silent_client_timeout", &self.silent_client_timeout)
            .finish_non_exhaustive()
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulator cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("simulator stopped: {0}")]
    Serve(std::io::Error),
    #[error("simulator tls: {0}")]
    Tls(std::io::Error),
}

/// A running simulator. Dropping it stops the server; [`SimHandle::shutdown`]
/// also waits for it.
pub struct SimHandle {
    state: Arc<SimState>,
    server: Option<JoinHandle<Result<(), std::io::Error>>>,
    tls_server: Option<JoinHandle<Result<(), std::io::Error>>>,
}

/// Starts the simulator on `config.addr` and returns once it accepts connections.
pub async fn start(config: SimConfig) -> Result<SimHandle, SimError> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|source| SimError::Bind {
            addr: config.addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SimError::Bind {
        addr: config.addr,
        source,
    })?;
    // Without TCP_NODELAY a frame written while the previous one is not yet
    // acknowledged waits for the peer's delayed ACK (tens of milliseconds).
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(error = %error, "simulator cannot set TCP_NODELAY");
        }
    });
    let tls_listener = match &config.tls {
        Some(tls) => Some(tls_listener(addr, tls).await?),
        None => None,
    };
    let files_base_url = match &tls_listener {
        Some(listener) => {
            let tls_addr = axum::serve::Listener::local_addr(listener).map_err(SimError::Tls)?;
            format!("https://{tls_addr}")
        }
        None => format!("http://{addr}"),
    };
    let state = Arc::new(SimState::new(config, addr, files_base_url));
    let router = router(state.clone());
    let tls_server = tls_listener.map(|listener| {
        let (router, shutdown) = (router.clone(), state.shutdown.clone());
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        })
    });
    let shutdown = state.shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    Ok(SimHandle {
        state,
        server: Some(server),
        tls_server,
    })
}

/// The TLS listener beside the plain one, on the same address.
async fn tls_listener(addr: SocketAddr, tls: &SimTls) -> Result<tls::TlsListener, SimError> {
    let tls_addr = SocketAddr::new(addr.ip(), 0);
    let tcp = tokio::net::TcpListener::bind(tls_addr)
        .await
        .map_err(|source| SimError::Bind {
            addr: tls_addr,
            source,
        })?;
    tls::TlsListener::new(tcp, tls).map_err(SimError::Tls)
}

/// Runs the simulator until Ctrl-C, after printing its base URLs and
/// credentials as environment lines a user can paste.
pub async fn serve_forever(config: SimConfig) -> Result<(), SimError> {
    let sim = start(config).await?;
    println!("# zoomwire simulator listening on {}", sim.addr());
    println!("# paste these lines into .env or your shell, then run zoomwire");
    println!("{}", sim.env_lines());
    println!(
        "# control API: {}/_sim/ (events, frames, drop, stall, fail_heartbeats, expire_tokens, faults, delays, meetings, recordings/complete, users, requests, slack_posts, connections, reset)",
        sim.base_url()
    );
    if let Err(error) = tokio::signal::ctrl_c().await {
        tracing::warn!(error = %error, "cannot wait for ctrl-c; stopping the simulator");
    }
    sim.shutdown().await
}

fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .merge(oauth::routes())
        .merge(websocket::routes())
        .nest("/v2", rest::routes(state.clone()))
        .merge(slack::routes())
        .merge(download::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            faults::apply_faults_and_delays,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            record::record_request,
        ))
        .nest("/_sim", control::routes())
        .with_state(state)
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        self.state.base_url.clone()
    }

    /// `ZOOM_OAUTH_BASE`: the token endpoint is `{oauth_base}/oauth/token`.
    pub fn oauth_base(&self) -> String {
        self.base_url()
    }

    /// `ZOOM_API_BASE`: `http://addr/v2`.
    pub fn api_base(&self) -> String {
        format!("{}/v2", self.state.base_url)
    }

    /// `ZOOM_WS_BASE`: `ws://addr/ws`.
    pub fn ws_base(&self) -> String {
        format!("ws://{}/ws", self.state.addr)
    }

    /// `SLACK_API_BASE`: `http://addr/slack/api`.
    pub fn slack_api_base(&self) -> String {
        format!("{}/slack/api", self.state.base_url)
    }

    /// An incoming-webhook URL; any name is accepted.
    pub fn slack_webhook_url(&self, name: &str) -> String {
        format!("{}/slack/webhook/{name}", self.state.base_url)
    }

    /// The download URL of a recording file (seeded or added with [`Self::add_download`]).
    pub fn download_url(&self, file_id: &str) -> String {
        format!("{}/rec/download/{file_id}", self.state.files_base_url)
    }

    pub fn account_id(&self) -> &str {
        &self.state.config.account_id
    }

    pub fn client_id(&self) -> &str {
        &self.state.config.client_id
    }

    pub fn client_secret(&self) -> &str {
        &self.state.config.client_secret
    }

    /// The first accepted subscription id.
    pub fn subscription_id(&self) -> &str {
        self.state
            .config
            .subscription_ids
            .first()
            .map(String::as_str)
            .unwrap_or("")
    }

    pub fn subscription_ids(&self) -> &[String] {
        &self.state.config.subscription_ids
    }

    pub fn slack_bot_token(&self) -> &str {
        &self.state.config.slack_bot_token
    }

    pub fn download_token(&self) -> &str {
        &self.state.config.download_token
    }

    /// Where recording files are served: `https://127.0.0.1:PORT2` with
    /// [`SimConfig::tls`], else the base URL.
    pub fn files_base_url(&self) -> String {
        self.state.files_base_url.clone()
    }

    /// The settings that point zoomwire at this simulator, one `NAME=value` a line.
    pub fn env_lines(&self) -> String {
        let config = &self.state.config;
        [
            format!("ZOOM_ACCOUNT_ID={}", config.account_id),
            format!("ZOOM_CLIENT_ID={}", config.client_id),
            format!("ZOOM_CLIENT_SECRET={}", config.client_secret),
            format!("ZOOM_SUBSCRIPTION_ID={}", self.subscription_id()),
            format!("ZOOM_OAUTH_BASE={}", self.oauth_base()),
            format!("ZOOM_API_BASE={}", self.api_base()),
            format!("ZOOM_WS_BASE={}", self.ws_base()),
            format!("SLACK_BOT_TOKEN={}", config.slack_bot_token),
            format!("SLACK_API_BASE={}", self.slack_api_base()),
            format!("SLACK_WEBHOOK_URL={}", self.slack_webhook_url("default")),
        ]
        .join("\n")
    }

    /// Every access token issued so far (expired ones included): tests look
    /// for them where they must not be.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.issued_tokens()
    }

    /// Issues a valid access token without going through `/oauth/token`.
    pub fn issue_token(&self) -> String {
        self.state.issue_token().0
    }

    /// Sends `event` (a bare Zoom event body) as a `message` frame to the
    /// subscription's open connection, or to every open connection when
    /// `subscription` is `None`. Returns how many connections got it.
    pub fn emit_event(&self, subscription: Option<&str>, event: &serde_json::Value) -> usize {
        self.state.emit_event(subscription, event)
    }

    /// Sends `event` after `delay`, as Zoom's late deliveries do (events two
    /// hours late have been seen on healthy sockets); call it twice for a
    /// double delivery. The send happens in the background.
    pub fn emit_event_later(
        &self,
        subscription: Option<&str>,
        event: &serde_json::Value,
        delay: Duration,
    ) {
        self.state
            .clone()
            .emit_event_later(subscription.map(str::to_string), event.clone(), delay)
    }

    /// Answers the heartbeats of the open connections with `success:false`
    /// from now on.
    pub fn fail_heartbeats(&self, subscription: Option<&str>) -> usize {
        self.state.fail_heartbeats(subscription)
    }

    /// Like [`Self::emit_raw`], but waits while a connection's queue is
    /// full instead of dropping the frame (for benchmarks that send as fast
    /// as the WebSocket takes it).
    pub async fn send_frame(&self, subscription: Option<&str>, text: String) -> usize {
        self.state.send_frame(subscription, text).await
    }

    /// Sends `text` verbatim as a text frame (for malformed-frame tests).
    pub fn emit_raw(&self, subscription: Option<&str>, text: &str) -> usize {
        self.state.emit_raw(subscription, text)
    }

    /// Drops the TCP connections without a closing handshake.
    pub fn drop_connections(&self, subscription: Option<&str>) -> usize {
        self.state.drop_connections(subscription)
    }

    /// An outage: drops every connection and refuses new ones (HTTP 503)
    /// for `duration`. Events emitted meanwhile reach nobody, as on Zoom.
    pub fn outage(&self, duration: Duration) -> usize {
        self.state.outage(duration)
    }

    /// Stops answering and sending on the connections but keeps TCP open.
    pub fn stall(&self, subscription: Option<&str>) -> usize {
        self.state.stall(subscription)
    }

    /// Expires every issued token now: REST answers 401 code 124 and open
    /// connections get the invalid-token frame and are closed.
    pub fn expire_tokens(&self) {
        self.state.expire_tokens()
    }

    /// Makes the next `fault.count` requests whose raw path starts with
    /// `fault.path_prefix` fail as described.
    pub fn inject_fault(&self, fault: Fault) {
        self.state.inject_fault(fault)
    }

    /// Delays every request whose raw path starts with `path_prefix`;
    /// a zero delay removes it.
    pub fn set_delay(&self, path_prefix: &str, delay: Duration) {
        self.state.set_delay(path_prefix, delay)
    }

    /// Holds every request whose raw path starts with `path_prefix` (after
    /// it is listed in [`Self::in_flight`], before it is answered) until
    /// [`Self::open_gate`]; a request whose client goes away meanwhile is
    /// never answered.
    pub fn close_gate(&self, path_prefix: &str) {
        self.state.close_gate(path_prefix)
    }

    /// Opens the gate of [`Self::close_gate`]: the held requests and later
    /// ones go on.
    pub fn open_gate(&self, path_prefix: &str) {
        self.state.open_gate(path_prefix)
    }

    /// Registers (or resizes) a downloadable file of `size` generated bytes.
    pub fn add_download(&self, file_id: &str, size: u64) {
        self.state.add_download(file_id, size)
    }

    /// Every request served so far (control API excluded), secrets removed.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests()
    }

    /// Requests being served now, as `METHOD /raw/path`, oldest first
    /// (control API excluded); a request leaves the list when it is answered
    /// or its client goes away.
    pub fn in_flight(&self) -> Vec<String> {
        self.state.in_flight()
    }

    /// Every accepted Slack message, API and webhook.
    pub fn slack_posts(&self) -> Vec<SlackPost> {
        self.state.slack_posts()
    }

    /// How many Slack messages were accepted so far (cheaper than [`Self::slack_posts`]).
    pub fn slack_post_count(&self) -> usize {
        state::lock(&self.state.slack_posts).len()
    }

    /// Every WebSocket connection attempt, open or closed.
    pub fn connections(&self) -> Vec<ConnectionRecord> {
        self.state.connections()
    }

    /// Waits until `subscription` has had at least `accepted` accepted
    /// connections and one is open; false on timeout.
    pub async fn wait_for_connections(
        &self,
        subscription: &str,
        accepted: usize,
        timeout: Duration,
    ) -> bool {
        self.state
            .wait_for_connections(subscription, accepted, timeout)
            .await
    }

    /// A seeded meeting as `GET /meetings/{id}` answers it.
    pub fn meeting(&self, meeting_id: u64) -> Option<serde_json::Value> {
        self.state.meeting_object(meeting_id)
    }

    /// The seeded participants of a past meeting, as
    /// `GET /past_meetings/{uuid}/participants` lists them.
    pub fn past_participants(&self, meeting_id: u64) -> Vec<serde_json::Value> {
        self.state.past_participants(meeting_id)
    }

    /// A seeded user by id, email or `me`.
    pub fn user(&self, user_id: &str) -> Option<serde_json::Value> {
        self.state.user(user_id)
    }

    /// Adds an ended meeting to `account` (the primary one when `None`) and
    /// returns its uuid; `None` when the account or the host is unknown.
    pub fn add_meeting(&self, account: Option<&str>, meeting: &NewMeeting) -> Option<String> {
        self.state.add_meeting(account, meeting)
    }

    /// Marks a meeting's recording files completed; false when there is none.
    pub fn complete_recording(&self, uuid: &str) -> bool {
        self.state.complete_recording(uuid)
    }

    /// The `recording.completed` event of any account's meeting, as Zoom
    /// would deliver it now (a fresh `event_ts`, the download token).
    pub fn recording_event(&self, uuid: &str) -> Option<serde_json::Value> {
        self.state.recording_event(uuid)
    }

    /// Adds a user created now to `account` (the primary one when `None`).
    pub fn add_user(&self, account: Option<&str>, user: &NewUser) -> Option<serde_json::Value> {
        self.state.add_user(account, user)
    }

    /// The accounts the simulator serves, the primary one first.
    pub fn accounts(&self) -> &[SimAccount] {
        &self.state.accounts
    }

    /// A `recording.completed` event for a seeded meeting, with download URLs
    /// pointing at this simulator and its `download_token`.
    pub fn recording_completed_event(&self, meeting_id: u64) -> Option<serde_json::Value> {
        self.state.recording_completed_event(meeting_id)
    }

    /// Forgets requests, Slack posts, faults and delays, opens every gate
    /// and reseeds the data.
    /// Tokens and open connections are kept.
    pub fn reset(&self) {
        self.state.reset()
    }

    /// Stops the server and closes every connection. Responses still
    /// streaming after a grace period (a stuck download) are cut off.
    pub async fn shutdown(mut self) -> Result<(), SimError> {
        self.state.shutdown.cancel();
        if let Some(tls_server) = self.tls_server.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, tls_server)
                .await
                .is_err()
        {
            tracing::debug!("the simulator's tls server did not stop in time");
        }
        let Some(mut server) = self.server.take() else {
            return Ok(());
        };
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(Ok(result)) => result.map_err(SimError::Serve),
            Ok(Err(join)) => Err(SimError::Serve(std::io::Error::other(join.to_string()))),
            Err(_) => {
                server.abort();
                Ok(())
            }
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
    }
}

impl fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.state.addr)
            .finish_non_exhaustive()
    }
}
