//! The admin server on `ZOOMWIRE_ADMIN_ADDR`: `/healthz`, `/metrics`
//! (Prometheus text), the JSON API (`/api/runs`, `/api/runs/{id}`,
//! `POST /api/runs/{id}/retry`) and the operator's page under `/ui/`
//! (`/` redirects there), all behind one [`guard`].
//!
//! The daemon reports into a shared [`AdminState`] (`health.rs`: the
//! subscriptions, the rule set, and the live [`activity::Activity`] that its
//! journal, wrapped in an [`activity::ObservedJournal`], feeds). Run history
//! comes through the [`RunHistory`] seam (`journal/history.rs`), a page at a
//! time, whichever journal runs. The server only reads; its one write is
//! the retry, which goes through the same journal call as `zoomwire runs
//! retry`.
//!
//! Module map: `api.rs` (JSON), `ui/` (pages, fragments, Server-Sent
//! Events, vendored assets), `guard.rs` (token, sessions, host and origin
//! checks), `health.rs`, `activity.rs`.

pub mod activity;
pub mod api;
pub mod guard;
pub mod health;
pub mod ui;

use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::routing::{get, post};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::journal::history::{RunHistory, run_summary};
pub use guard::{AdminToken, Guard, UnguardedBind};
pub use health::{
    AdminState, ConnectionState, HealthReport, HealthStatus, ReloadOutcome, RulesHealth,
    SubscriptionHealth, SubscriptionReport,
};

use crate::serve::{ServeError, serve_router};

/// How often histogram data is folded in (the exporter leaves it to us).
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
    #[error(transparent)]
    Unguarded(#[from] UnguardedBind),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Where the admin server listens and what guards it.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    pub addr: SocketAddr,
    /// `ZOOMWIRE_ADMIN_TOKEN`; without one the server is loopback-only.
    pub token: Option<AdminToken>,
}

impl AdminOptions {
    /// Loopback-only, without a token.
    pub fn loopback(addr: SocketAddr) -> AdminOptions {
        AdminOptions { addr, token: None }
    }
}

static METRICS: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the process-wide Prometheus recorder once and returns its handle
/// (the same handle on every later call). Call it early in `run`, before
/// anything records a metric; [`serve_admin`] calls it too.
pub fn install_metrics() -> Result<PrometheusHandle, AdminError> {
    let mut installed = METRICS.lock();
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| AdminError::Metrics(e.to_string()))?;
    *installed = Some(handle.clone());
    Ok(handle)
}

/// What every handler reads.
#[derive(Clone)]
pub struct AdminContext {
    pub state: Arc<AdminState>,
    pub history: Arc<dyn RunHistory>,
    pub metrics: PrometheusHandle,
    pub guard: Arc<Guard>,
    /// Ends the page's event streams when the server stops.
    pub shutdown: CancellationToken,
}

/// The admin routes behind the guard, for embedding; [`serve_admin`] serves them.
pub fn admin_router(context: AdminContext) -> Router {
    let guard = context.guard.clone();
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/metrics", get(api::metrics_text))
        .route("/api/runs", get(api::list_runs))
        .route("/api/runs/{id}", get(api::get_run))
        .route("/api/runs/{id}/retry", post(api::retry_run))
        .merge(ui::routes())
        .with_state(context)
        .layer(axum::middleware::from_fn_with_state(guard, guard::guard))
        .layer(axum::middleware::map_response(security_headers))
}

/// Headers on every answer: a strict Content-Security-Policy (scripts,
/// styles and connections from this server only, no inline code, no
/// framing), no MIME sniffing, referrers to this server only (with
/// `no-referrer` browsers send `Origin: null` on form posts, which the
/// origin check must refuse).
async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// Serves the admin server on `options.addr` until `shutdown`; returns the
/// bound address (useful with port 0) and the server task. Refuses to
/// listen beyond loopback without a token. Also keeps the metrics tidy.
pub async fn serve_admin(
    options: AdminOptions,
    state: Arc<AdminState>,
    history: Arc<dyn RunHistory>,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), AdminError> {
    guard::check_bind(options.addr, options.token.as_ref())?;
    let metrics = install_metrics()?;
    let context = AdminContext {
        state,
        history,
        metrics: metrics.clone(),
        guard: Guard::new(options.token),
        shutdown: shutdown.clone(),
    };
    let router = admin_router(context);
    let (local_addr, server) =
        serve_router("admin server", options.addr, router, shutdown.clone()).await?;
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
