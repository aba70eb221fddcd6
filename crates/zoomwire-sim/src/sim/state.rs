//! The simulator's shared state: one [`SimState`] behind an `Arc`, read by
//! every handler and steered by the control API.
//!
//! Each concept keeps its part here (issued tokens, seeded data, recorded
//! requests, faults, open WebSocket connections) behind a plain mutex: the
//! simulator serves tests, so simple and obviously correct beats fast. The
//! methods that act on a part live in that concept's module (`impl SimState`
//! blocks in `oauth.rs`, `websocket.rs`, ...).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::data::{NewMeeting, NewUser, SimData};
use super::faults::Fault;
use super::record::{RecordedRequest, SlackPost};
use super::{SimAccount, SimConfig};

/// Locks a mutex, ignoring poisoning: a panicked test handler must not take
/// the whole simulator down with it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One access token the simulator issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IssuedToken {
    /// 1, 2, 3... in issue order: tests compare these instead of token text.
    pub serial: u64,
    pub expires_at: Instant,
    /// The account it was issued for: it sees only that account.
    pub account_id: String,
}

/// What an instruction to one open connection says.
#[derive(Debug)]
pub(crate) enum ConnCommand {
    /// Send this text frame.
    Send(String),
    /// Drop TCP without a closing handshake.
    Drop,
    /// Stop replying and sending, keep TCP open.
    Stall,
    /// Close with a close frame (a newer connection replaced this one).
    Replace,
    /// Answer heartbeats with `success:false` from now on.
    FailHeartbeats,
}

/// An open WebSocket connection, as the registry sees it.
pub(crate) struct OpenConnection {
    pub subscription_id: String,
    pub commands: mpsc::Sender<ConnCommand>,
}

/// One WebSocket connection attempt, as tests read it back.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionRecord {
    pub id: u64,
    pub subscription_id: String,
    /// When it was attempted.
    pub opened_at: chrono::DateTime<chrono::Utc>,
    /// Serial of the access token it presented, if the simulator issued it.
    pub token_serial: Option<u64>,
    /// Whether build_connection answered success:true.
    pub accepted: bool,
    pub open: bool,
    pub heartbeats_received: u64,
    pub frames_sent: u64,
    /// Why it ended: `client closed`, `dropped`, `replaced`, `token expired`, ...
    pub close_reason: Option<String>,
}

#[derive(Default)]
pub(crate) struct Connections {
    pub next_id: u64,
    pub open: HashMap<u64, OpenConnection>,
    pub history: Vec<ConnectionRecord>,
}

impl Connections {
    pub fn record_mut(&mut self, id: u64) -> Option<&mut ConnectionRecord> {
        self.history.iter_mut().find(|r| r.id == id)
    }
}

pub(crate) struct SimState {
    pub config: SimConfig,
    /// Every account, the primary one first.
    pub accounts: Vec<SimAccount>,
    pub addr: SocketAddr,
    /// `http://addr`
    pub base_url: String,
    /// Where recording files (and the links the data holds) point: the TLS
    /// port's `https://` URL when there is one, else `base_url`.
    pub files_base_url: String,
    pub tokens: Mutex<HashMap<String, IssuedToken>>,
    pub next_token_serial: Mutex<u64>,
    /// Bumped whenever tokens are expired on demand, so connections recheck theirs.
    pub token_epoch: watch::Sender<u64>,
    /// Each account's data, by account id.
    pub data: Mutex<HashMap<String, SimData>>,
    pub requests: Mutex<Vec<RecordedRequest>>,
    /// Requests being served now (`METHOD /raw/path`), by a per-request number.
    pub in_flight: Mutex<HashMap<u64, String>>,
    pub next_request: Mutex<u64>,
    pub slack_posts: Mutex<Vec<SlackPost>>,
    pub faults: Mutex<Vec<Fault>>,
    pub delays: Mutex<Vec<(String, Duration)>>,
    /// Closed gates by path prefix: matching requests wait until `true`.
    pub gates: Mutex<Vec<(String, watch::Sender<bool>)>>,
    pub downloads: Mutex<HashMap<String, u64>>,
    pub connections: Mutex<Connections>,
    /// Bumped on every connection change, so tests can wait for one.
    pub connection_changes: watch::Sender<u64>,
    /// Until then the WebSocket endpoint refuses upgrades with 503 (an outage).
    pub outage_until: Mutex<Option<Instant>>,
    /// Signs the redirect target of downloads.
    pub stream_key: String,
    pub shutdown: CancellationToken,
}

impl SimState {
    pub fn new(config: SimConfig, addr: SocketAddr, files_base_url: String) -> SimState {
        let base_url = format!("http://{addr}");
        let accounts = config.accounts();
        let (data, downloads) = seed(&config, &accounts, &files_base_url);
        SimState {
            addr,
            base_url,
            files_base_url,
            tokens: Mutex::new(HashMap::new()),
            next_token_serial: Mutex::new(0),
            token_epoch: watch::Sender::new(0),
            data: Mutex::new(data),
            requests: Mutex::new(Vec::new()),
            in_flight: Mutex::new(HashMap::new()),
            next_request: Mutex::new(0),
            slack_posts: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            delays: Mutex::new(Vec::new()),
            gates: Mutex::new(Vec::new()),
            downloads: Mutex::new(downloads),
            connections: Mutex::new(Connections::default()),
            connection_changes: watch::Sender::new(0),
            outage_until: Mutex::new(None),
            stream_key: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
            shutdown: CancellationToken::new(),
            accounts,
            config,
        }
    }

    /// The account a subscription belongs to.
    pub fn account_of_subscription(&self, subscription: &str) -> Option<&SimAccount> {
        self.accounts
            .iter()
            .find(|a| a.subscription_ids.iter().any(|s| s == subscription))
    }

    /// The account id `account` names, the primary one for `None`.
    fn account_id(&self, account: Option<&str>) -> String {
        account
            .map(str::to_string)
            .unwrap_or_else(|| self.config.account_id.clone())
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).clone()
    }

    pub fn in_flight(&self) -> Vec<String> {
        let mut requests: Vec<(u64, String)> = lock(&self.in_flight)
            .iter()
            .map(|(n, r)| (*n, r.clone()))
            .collect();
        requests.sort();
        requests.into_iter().map(|(_, r)| r).collect()
    }

    pub fn slack_posts(&self) -> Vec<SlackPost> {
        lock(&self.slack_posts).clone()
    }

    pub fn add_download(&self, file_id: &str, size: u64) {
        lock(&self.downloads).insert(file_id.to_string(), size);
    }

    pub fn reset(&self) {
        lock(&self.requests).clear();
        lock(&self.slack_posts).clear();
        lock(&self.faults).clear();
        lock(&self.delays).clear();
        self.open_all_gates();
        let (data, downloads) = seed(&self.config, &self.accounts, &self.files_base_url);
        *lock(&self.downloads) = downloads;
        *lock(&self.data) = data;
    }

    /// The primary account's data, read by `f`.
    fn primary<R>(&self, f: impl FnOnce(&SimData) -> R) -> Option<R> {
        lock(&self.data).get(&self.config.account_id).map(f)
    }

    pub fn meeting_object(&self, meeting_id: u64) -> Option<serde_json::Value> {
        self.primary(|data| data.meeting(meeting_id).map(|m| m.object.clone()))
            .flatten()
    }

    pub fn past_participants(&self, meeting_id: u64) -> Vec<serde_json::Value> {
        self.primary(|data| data.meeting(meeting_id).map(|m| m.participants.clone()))
            .flatten()
            .unwrap_or_default()
    }

    pub fn user(&self, user_id: &str) -> Option<serde_json::Value> {
        self.primary(|data| data.user(user_id).cloned()).flatten()
    }

    pub fn recording_completed_event(&self, meeting_id: u64) -> Option<serde_json::Value> {
        self.primary(|data| data.recording_completed_event(meeting_id, &self.config.download_token))
            .flatten()
    }

    pub fn add_meeting(&self, account: Option<&str>, meeting: &NewMeeting) -> Option<String> {
        let account = self.account_id(account);
        let mut downloads = lock(&self.downloads);
        lock(&self.data).get_mut(&account)?.add_meeting(
            meeting,
            &self.files_base_url,
            self.config.recording_file_size,
            &mut downloads,
        )
    }

    pub fn complete_recording(&self, uuid: &str) -> bool {
        lock(&self.data)
            .values_mut()
            .any(|data| data.complete_recording(uuid))
    }

    pub fn recording_event(&self, uuid: &str) -> Option<serde_json::Value> {
        lock(&self.data)
            .values()
            .find_map(|data| data.recording_event(uuid, &self.config.download_token))
    }

    pub fn add_user(&self, account: Option<&str>, user: &NewUser) -> Option<serde_json::Value> {
        let account = self.account_id(account);
        lock(&self.data)
            .get_mut(&account)
            .map(|data| data.add_user(user))
    }
}

/// Every account's data (the primary one seeded) and the downloadable files.
fn seed(
    config: &SimConfig,
    accounts: &[SimAccount],
    base_url: &str,
) -> (HashMap<String, SimData>, HashMap<String, u64>) {
    let primary = SimData::seed(config, base_url);
    let downloads = primary.download_sizes();
    let mut data = HashMap::new();
    for account in accounts.iter().skip(1) {
        data.insert(
            account.account_id.clone(),
            SimData::empty(&account.account_id),
        );
    }
    data.insert(config.account_id.clone(), primary);
    (data, downloads)
}
