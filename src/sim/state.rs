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

use super::SimConfig;
use super::data::SimData;
use super::faults::Fault;
use super::record::{RecordedRequest, SlackPost};

/// Locks a mutex, ignoring poisoning: a panicked test handler must not take
/// the whole simulator down with it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One access token the simulator issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IssuedToken {
    /// 1, 2, 3... in issue order: tests compare these instead of token text.
    pub serial: u64,
    pub expires_at: Instant,
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
    pub addr: SocketAddr,
    /// `http://addr`
    pub base_url: String,
    pub tokens: Mutex<HashMap<String, IssuedToken>>,
    pub next_token_serial: Mutex<u64>,
    /// Bumped whenever tokens are expired on demand, so connections recheck theirs.
    pub token_epoch: watch::Sender<u64>,
    pub data: Mutex<SimData>,
    pub requests: Mutex<Vec<RecordedRequest>>,
    /// Requests being served now (`METHOD /raw/path`), by a per-request number.
    pub in_flight: Mutex<HashMap<u64, String>>,
    pub next_request: Mutex<u64>,
    pub slack_posts: Mutex<Vec<SlackPost>>,
    pub faults: Mutex<Vec<Fault>>,
    pub delays: Mutex<Vec<(String, Duration)>>,
    pub downloads: Mutex<HashMap<String, u64>>,
    pub connections: Mutex<Connections>,
    /// Bumped on every connection change, so tests can wait for one.
    pub connection_changes: watch::Sender<u64>,
    /// Signs the redirect target of downloads.
    pub stream_key: String,
    pub shutdown: CancellationToken,
}

impl SimState {
    pub fn new(config: SimConfig, addr: SocketAddr) -> SimState {
        let base_url = format!("http://{addr}");
        let data = SimData::seed(&config, &base_url);
        let downloads = data.download_sizes();
        SimState {
            addr,
            base_url,
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
            downloads: Mutex::new(downloads),
            connections: Mutex::new(Connections::default()),
            connection_changes: watch::Sender::new(0),
            stream_key: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
            shutdown: CancellationToken::new(),
            config,
        }
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
        let data = SimData::seed(&self.config, &self.base_url);
        *lock(&self.downloads) = data.download_sizes();
        *lock(&self.data) = data;
    }

    pub fn meeting_object(&self, meeting_id: u64) -> Option<serde_json::Value> {
        lock(&self.data)
            .meeting(meeting_id)
            .map(|m| m.object.clone())
    }

    pub fn past_participants(&self, meeting_id: u64) -> Vec<serde_json::Value> {
        lock(&self.data)
            .meeting(meeting_id)
            .map(|m| m.participants.clone())
            .unwrap_or_default()
    }

    pub fn user(&self, user_id: &str) -> Option<serde_json::Value> {
        lock(&self.data).user(user_id).cloned()
    }

    pub fn recording_completed_event(&self, meeting_id: u64) -> Option<serde_json::Value> {
        lock(&self.data).recording_completed_event(meeting_id, &self.config.download_token)
    }
}
