//! The admin HTTP server on `ZOOMWIRE_ADMIN_ADDR`: `/healthz`, `/metrics`
//! (Prometheus text) and the run history (`/api/runs`, `/api/runs/{id}`).
//!
//! The daemon reports into a shared [`AdminState`]: each WebSocket
//! subscription's [`ConnectionStatus`] watch (read when `/healthz` is asked,
//! so nothing is done per event), or for other sources a state it sets, and
//! the rule set's status. The server only reads it. `/healthz` answers 200 when every subscription is
//! connected and a rule set is loaded, 503 otherwise; a failed reload that
//! left the last good rule set running is `degraded` but still 200, since
//! restarting would not help. Run history comes through the [`RunHistory`]
//! seam, implemented here for [`SqliteJournal`] and [`MemoryJournal`] with
//! the same shapes ([`RunSummary`] in lists, [`RunDetail`] for one run).
//!
//! The API has no authentication: keep it on loopback (the default) or
//! behind a proxy. Binding elsewhere logs a warning.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, TimeZone, Utc};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::engine::record::{MemoryJournal, RunRecord, RunStatus};
use crate::journal::{RunDetail, RunFilter, RunSummary, SqliteJournal};
use crate::reconcile::ReconcileStatus;
use crate::serve::{ServeError, serve_router};
use crate::zoom::websocket::ConnectionStatus;

/// Runs listed when the request names no limit.
pub const DEFAULT_RUNS_LIMIT: usize = 100;
/// The most runs one request lists.
pub const MAX_RUNS_LIMIT: usize = 1000;
/// How often histogram data is folded in (the exporter leaves it to us).
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Where a subscription's connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    Connecting,
    Connected,
    /// Down, waiting to reconnect.
    Disconnected,
    /// Stopped for good (shutdown, or credentials refused).
    Stopped,
}

/// What the daemon reports about one subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionHealth {
    pub state: ConnectionState,
    /// When it entered this state.
    pub since: DateTime<Utc>,
    /// Why it is not connected, if known (no secrets: a message for people).
    pub error: Option<String>,
}

impl SubscriptionHealth {
    /// This state, from now.
    pub fn new(state: ConnectionState) -> SubscriptionHealth {
        SubscriptionHealth {
            state,
            since: Utc::now(),
            error: None,
        }
    }

    pub fn with_error(mut self, error: impl Into<String>) -> SubscriptionHealth {
        self.error = Some(error.into());
        self
    }
}

/// The rule set's status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RulesHealth {
    /// Rules in the set now running; `None` until a set has loaded.
    pub loaded_rules: Option<usize>,
    pub last_reload: Option<ReloadOutcome>,
}

/// How the latest load or reload went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    pub at: DateTime<Utc>,
    pub ok: bool,
    /// Every error (`file:line:col: message`) when it failed.
    pub errors: Vec<String>,
}

/// Overall health: `ok` and `degraded` answer 200, `unhealthy` 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
    Degraded,
    Unhealthy,
}

/// One subscription in the health report.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionReport {
    pub state: ConnectionState,
    /// When it entered this state, when known.
    pub since: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub last_event_at: Option<DateTime<Utc>>,
    /// Everything the WebSocket client reports (counters, recent gaps), when watched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionStatus>,
}

impl SubscriptionReport {
    fn from_status(status: &ConnectionStatus) -> SubscriptionReport {
        let open_gap = status.gaps.last().filter(|gap| gap.end.is_none());
        let (state, since) = if status.connected {
            (ConnectionState::Connected, status.connected_since)
        } else if status.reconnects == 0 && status.gaps.is_empty() && status.last_error.is_none() {
            (ConnectionState::Connecting, None)
        } else {
            (ConnectionState::Disconnected, open_gap.map(|gap| gap.start))
        };
        SubscriptionReport {
            state,
            since,
            error: (!status.connected)
                .then(|| status.last_error.clone())
                .flatten(),
            last_event_at: status.last_event_at,
            connection: Some(status.clone()),
        }
    }
}

/// The body of `/healthz`.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub status: HealthStatus,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub subscriptions: BTreeMap<String, SubscriptionReport>,
    pub rules: RulesHealth,
    /// Each account's reconciliation: its last pass, events found, errors.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub reconciliation: BTreeMap<String, ReconcileStatus>,
}

/// Where a subscription's health comes from.
enum SubscriptionSlot {
    /// Set by the daemon with [`AdminState::set_subscription_status`].
    Reported {
        health: SubscriptionHealth,
        /// Milliseconds since the epoch, 0 before the first event: updated
        /// per event under the read lock.
        last_event_ms: AtomicI64,
    },
    /// Read from the WebSocket client's status channel.
    Watched(watch::Receiver<ConnectionStatus>),
}

impl SubscriptionSlot {
    fn report(&self) -> SubscriptionReport {
        match self {
            SubscriptionSlot::Watched(status) => SubscriptionReport::from_status(&status.borrow()),
            SubscriptionSlot::Reported {
                health,
                last_event_ms,
            } => {
                let millis = last_event_ms.load(Ordering::Relaxed);
                SubscriptionReport {
                    state: health.state,
                    since: Some(health.since),
                    error: health.error.clone(),
                    last_event_at: (millis > 0)
                        .then(|| Utc.timestamp_millis_opt(millis).single())
                        .flatten(),
                    connection: None,
                }
            }
        }
    }
}

/// What the daemon knows about its own health, shared with the admin server.
pub struct AdminState {
    started_at: DateTime<Utc>,
    subscriptions: RwLock<BTreeMap<String, SubscriptionSlot>>,
    rules: RwLock<RulesHealth>,
    reconciliation: RwLock<BTreeMap<String, watch::Receiver<ReconcileStatus>>>,
}

impl Default for AdminState {
    fn default() -> Self {
        AdminState {
            started_at: Utc::now(),
            subscriptions: RwLock::new(BTreeMap::new()),
            rules: RwLock::new(RulesHealth::default()),
            reconciliation: RwLock::new(BTreeMap::new()),
        }
    }
}

impl AdminState {
    pub fn new() -> Arc<AdminState> {
        Arc::new(AdminState::default())
    }

    /// Reports a WebSocket subscription from the status channel its client
    /// (`run_subscription`) updates; replaces anything reported for `name`.
    pub fn watch_subscription(&self, name: &str, status: watch::Receiver<ConnectionStatus>) {
        write(&self.subscriptions).insert(name.to_string(), SubscriptionSlot::Watched(status));
    }

    /// Reports an account's reconciliation from the status its reconciler updates.
    pub fn watch_reconciliation(&self, account: &str, status: watch::Receiver<ReconcileStatus>) {
        write(&self.reconciliation).insert(account.to_string(), status);
    }

    /// Records a subscription's state by hand (adding it if new), for
    /// sources without a status channel.
    pub fn set_subscription_status(&self, name: &str, health: SubscriptionHealth) {
        let mut subscriptions = write(&self.subscriptions);
        if let Some(SubscriptionSlot::Reported {
            health: current, ..
        }) = subscriptions.get_mut(name)
        {
            *current = health;
            return;
        }
        let slot = SubscriptionSlot::Reported {
            health,
            last_event_ms: AtomicI64::new(0),
        };
        subscriptions.insert(name.to_string(), slot);
    }

    /// Records that a hand-reported subscription delivered an event at `at`.
    /// Cheap: call it per event. (Watched subscriptions report their own.)
    pub fn note_event(&self, subscription: &str, at: DateTime<Utc>) {
        let subscriptions = read(&self.subscriptions);
        if let Some(SubscriptionSlot::Reported { last_event_ms, .. }) =
            subscriptions.get(subscription)
        {
            last_event_ms.fetch_max(at.timestamp_millis(), Ordering::Relaxed);
        }
    }

    pub fn set_rules_status(&self, health: RulesHealth) {
        *write(&self.rules) = health;
    }

    /// A rule set of `count` rules loaded (at start or on reload).
    pub fn rules_loaded(&self, count: usize) {
        self.set_rules_status(RulesHealth {
            loaded_rules: Some(count),
            last_reload: Some(ReloadOutcome {
                at: Utc::now(),
                ok: true,
                errors: Vec::new(),
            }),
        });
    }

    /// A load failed with these errors; the set already running (if any) stays.
    pub fn rules_reload_failed(&self, errors: Vec<String>) {
        let mut rules = write(&self.rules);
        rules.last_reload = Some(ReloadOutcome {
            at: Utc::now(),
            ok: false,
            errors,
        });
    }

    /// The health report `/healthz` serves.
    pub fn report(&self) -> HealthReport {
        let subscriptions: BTreeMap<String, SubscriptionReport> = read(&self.subscriptions)
            .iter()
            .map(|(name, slot)| (name.clone(), slot.report()))
            .collect();
        let rules = read(&self.rules).clone();
        let reconciliation = read(&self.reconciliation)
            .iter()
            .map(|(account, status)| (account.clone(), status.borrow().clone()))
            .collect();
        HealthReport {
            status: overall_status(&subscriptions, &rules),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: self.started_at,
            subscriptions,
            rules,
            reconciliation,
        }
    }
}

fn overall_status(
    subscriptions: &BTreeMap<String, SubscriptionReport>,
    rules: &RulesHealth,
) -> HealthStatus {
    let all_connected = subscriptions
        .values()
        .all(|s| s.state == ConnectionState::Connected);
    if !all_connected || rules.loaded_rules.is_none() {
        HealthStatus::Unhealthy
    } else if rules.last_reload.as_ref().is_some_and(|r| !r.ok) {
        HealthStatus::Degraded
    } else {
        HealthStatus::Ok
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Poisoning only follows a panic in another holder; the data is plain values.
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// The run history the API serves. Blocking calls: the server runs them off
/// the async reactor.
pub trait RunHistory: Send + Sync {
    /// Runs, newest first; only `rule`'s when given; only failed and dead
    /// runs when `failed_only`; at most `limit`. Each as [`run_summary`].
    fn list_runs(
        &self,
        rule: Option<String>,
        failed_only: bool,
        limit: usize,
    ) -> Result<Vec<Value>, String>;
    /// One run in full (the `RunRecord` as JSON), `None` when unknown.
    fn get_run(&self, id: &str) -> Result<Option<Value>, String>;
}

/// A run as `/api/runs` lists it: the journal's [`RunSummary`].
pub fn run_summary(run: &RunRecord) -> RunSummary {
    RunSummary {
        id: run.id.clone(),
        rule: run.rule.clone(),
        status: run.status,
        attempt: run.attempt,
        event_id: run.event_id.clone(),
        event_type: run.event_type.clone(),
        key: run.key.clone(),
        error: run.error.clone(),
        created_at: run.created_at,
        started_at: run.started_at,
        finished_at: run.finished_at,
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<Value, String> {
    serde_json::to_value(value).map_err(|e| e.to_string())
}

/// Whether a run counts as failed for `--failed` and `?failed=true`.
pub fn is_failed(status: RunStatus) -> bool {
    matches!(status, RunStatus::Failed | RunStatus::Dead)
}

impl RunHistory for MemoryJournal {
    /// Newest first means latest created here: the journal keeps creation order.
    fn list_runs(
        &self,
        rule: Option<String>,
        failed_only: bool,
        limit: usize,
    ) -> Result<Vec<Value>, String> {
        self.runs()
            .iter()
            .rev()
            .filter(|run| rule.as_ref().is_none_or(|rule| run.rule == *rule))
            .filter(|run| !failed_only || is_failed(run.status))
            .take(limit)
            .map(|run| to_json(&run_summary(run)))
            .collect()
    }

    /// The memory journal does not show the trigger: `event` is null.
    fn get_run(&self, id: &str) -> Result<Option<Value>, String> {
        self.runs()
            .into_iter()
            .find(|run| run.id == id)
            .map(|run| to_json(&RunDetail { run, event: None }))
            .transpose()
    }
}

impl RunHistory for SqliteJournal {
    fn list_runs(
        &self,
        rule: Option<String>,
        failed_only: bool,
        limit: usize,
    ) -> Result<Vec<Value>, String> {
        let filter = RunFilter {
            rule,
            failed_only,
            limit,
        };
        let runs = SqliteJournal::list_runs(self, filter).map_err(|e| e.to_string())?;
        runs.iter().map(to_json).collect()
    }

    fn get_run(&self, id: &str) -> Result<Option<Value>, String> {
        let run = SqliteJournal::get_run(self, id).map_err(|e| e.to_string())?;
        run.as_ref().map(to_json).transpose()
    }
}

static METRICS: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the process-wide Prometheus recorder once and returns its handle
/// (the same handle on every later call). Call it early in `run`, before
/// anything records a metric; [`serve_admin`] calls it too.
pub fn install_metrics() -> Result<PrometheusHandle, AdminError> {
    // Poisoning only follows a panic while installing; the Option is still valid.
    let mut installed = METRICS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| AdminError::Metrics(e.to_string()))?;
    *installed = Some(handle.clone());
    Ok(handle)
}

#[derive(Clone)]
struct AdminContext {
    state: Arc<AdminState>,
    history: Arc<dyn RunHistory>,
    metrics: PrometheusHandle,
}

/// The admin routes, for embedding; [`serve_admin`] serves them.
pub fn admin_router(
    state: Arc<AdminState>,
    history: Arc<dyn RunHistory>,
    metrics: PrometheusHandle,
) -> Router {
    let context = AdminContext {
        state,
        history,
        metrics,
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/api/runs", get(list_runs))
        .route("/api/runs/{id}", get(get_run))
        .with_state(context)
}

/// Serves the admin API on `addr` until `shutdown`; returns the bound address
/// (useful with port 0) and the server task. Also keeps the metrics tidy.
pub async fn serve_admin(
    addr: SocketAddr,
    state: Arc<AdminState>,
    history: Arc<dyn RunHistory>,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), AdminError> {
    let metrics = install_metrics()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(addr = %addr, "the admin api has no authentication and listens beyond loopback");
    }
    let router = admin_router(state, history, metrics.clone());
    let (local_addr, server) = serve_router("admin api", addr, router, shutdown.clone()).await?;
    tokio::spawn(metrics_upkeep(metrics, shutdown));
    Ok((local_addr, server))
}

async fn metrics_upkeep(metrics: PrometheusHandle, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(METRICS_UPKEEP);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => metrics.run_upkeep(),
        }
    }
}

async fn healthz(State(context): State<AdminContext>) -> Response {
    let report = context.state.report();
    let status = match report.status {
        HealthStatus::Ok | HealthStatus::Degraded => StatusCode::OK,
        HealthStatus::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, axum::Json(report)).into_response()
}

async fn metrics_text(State(context): State<AdminContext>) -> Response {
    let text = context.metrics.render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct RunsQuery {
    rule: Option<String>,
    #[serde(default)]
    failed: bool,
    limit: Option<usize>,
}

async fn list_runs(
    State(context): State<AdminContext>,
    Query(query): Query<RunsQuery>,
) -> Response {
    let limit = query
        .limit
        .unwrap_or(DEFAULT_RUNS_LIMIT)
        .min(MAX_RUNS_LIMIT);
    let history = context.history.clone();
    let listed =
        tokio::task::spawn_blocking(move || history.list_runs(query.rule, query.failed, limit))
            .await;
    match listed {
        Ok(Ok(runs)) => axum::Json(json!({ "runs": runs })).into_response(),
        Ok(Err(error)) => history_error(&error),
        Err(error) => history_error(&error.to_string()),
    }
}

async fn get_run(State(context): State<AdminContext>, Path(id): Path<String>) -> Response {
    let history = context.history.clone();
    let lookup_id = id.clone();
    let found = tokio::task::spawn_blocking(move || history.get_run(&lookup_id)).await;
    match found {
        Ok(Ok(Some(run))) => axum::Json(run).into_response(),
        Ok(Ok(None)) => {
            let body = json!({ "error": format!("no run with id `{id}`") });
            (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
        }
        Ok(Err(error)) => history_error(&error),
        Err(error) => history_error(&error.to_string()),
    }
}

fn history_error(error: &str) -> Response {
    tracing::error!(error, "run history unavailable");
    let body = json!({ "error": format!("run history unavailable: {error}") });
    (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected() -> SubscriptionHealth {
        SubscriptionHealth::new(ConnectionState::Connected)
    }

    #[test]
    fn unhealthy_until_rules_load_and_every_subscription_connects() {
        let state = AdminState::default();
        assert_eq!(state.report().status, HealthStatus::Unhealthy);
        state.rules_loaded(2);
        assert_eq!(
            state.report().status,
            HealthStatus::Ok,
            "no subscription (webhook only) is fine"
        );
        state.set_subscription_status(
            "default",
            SubscriptionHealth::new(ConnectionState::Connecting),
        );
        state.set_subscription_status("sales", connected());
        assert_eq!(state.report().status, HealthStatus::Unhealthy);
        state.set_subscription_status("default", connected());
        assert_eq!(state.report().status, HealthStatus::Ok);
    }

    #[test]
    fn a_failed_reload_degrades_but_keeps_the_count() {
        let state = AdminState::default();
        state.rules_loaded(3);
        state.rules_reload_failed(vec!["rules/a.yaml:1:1: bad".into()]);
        let report = state.report();
        assert_eq!(report.status, HealthStatus::Degraded);
        assert_eq!(report.rules.loaded_rules, Some(3));
        let reload = report.rules.last_reload.unwrap();
        assert!(!reload.ok);
        assert_eq!(reload.errors, vec!["rules/a.yaml:1:1: bad"]);
        // A failure before any set loaded leaves the engine without rules.
        let fresh = AdminState::default();
        fresh.rules_reload_failed(vec!["x".into()]);
        assert_eq!(fresh.report().status, HealthStatus::Unhealthy);
    }

    #[test]
    fn notes_the_latest_event_per_subscription() {
        let state = AdminState::default();
        state.note_event("unknown", Utc::now());
        assert!(state.report().subscriptions.is_empty());
        state.set_subscription_status("default", connected());
        assert_eq!(state.report().subscriptions["default"].last_event_at, None);
        let later = Utc.timestamp_millis_opt(1_732_030_000_500).unwrap();
        let earlier = Utc.timestamp_millis_opt(1_732_030_000_000).unwrap();
        state.note_event("default", later);
        state.note_event("default", earlier);
        state.set_subscription_status("default", connected());
        assert_eq!(
            state.report().subscriptions["default"].last_event_at,
            Some(later)
        );
    }
}
