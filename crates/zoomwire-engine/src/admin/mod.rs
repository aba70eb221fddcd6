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
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
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
    let handle = prometheus_builder()
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| AdminError::Metrics(e.to_string()))?;
    *installed = Some(handle.clone());
    Ok(handle)
}

/// Upper bounds of the buckets of the `*_seconds` histograms (effect
/// calls, journal commits): 0.1 ms to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Upper bounds of the buckets of `zoomwire_journal_batch_size` (records
/// per committed batch).
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// The exporter, with every histogram zoomwire records rendered as a
/// Prometheus histogram of fixed buckets. Without buckets the exporter
/// renders summaries, each kept as up to three rolling 20-second DDSketches
/// of up to 32,768 bins: 20,000 samples of each of the three histograms
/// held 333 KiB per 20 seconds that way (up to 1 MiB, and as much again
/// while `/metrics` merges them), fixed buckets 4 KiB in all. Histograms
/// also aggregate across daemons where quantiles do not.
fn prometheus_builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full("zoomwire_journal_batch_size".into()),
            BATCH_SIZE_BUCKETS,
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_histogram_renders_as_fixed_buckets_not_a_summary() {
        let recorder = prometheus_builder().unwrap().build_recorder();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!("zoomwire_effect_seconds", "effect" => "slack").record(0.003);
            metrics::histogram!("zoomwire_journal_commit_seconds").record(0.2);
            metrics::histogram!("zoomwire_journal_batch_size").record(40.0);
        });
        let text = recorder.handle().render();
        assert!(!text.contains("quantile"), "{text}");
        for line in [
            r#"zoomwire_effect_seconds_bucket{effect="slack",le="0.005"} 1"#,
            r#"zoomwire_effect_seconds_bucket{effect="slack",le="0.0025"} 0"#,
            r#"zoomwire_journal_commit_seconds_bucket{le="0.25"} 1"#,
            r#"zoomwire_journal_batch_size_bucket{le="50"} 1"#,
            r#"zoomwire_journal_batch_size_bucket{le="25"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
    }

    /// Bytes the calling thread holds after recording a burst's samples
    /// (effect calls of 0.5-50 ms, commits, batch sizes 1-1000) into a
    /// recorder from `builder`, with the samples folded in as upkeep does.
    fn held_after_a_burst(builder: PrometheusBuilder) -> isize {
        std::thread::spawn(move || {
            let before = crate::script::allocator::live_bytes();
            let recorder = builder.build_recorder();
            metrics::with_local_recorder(&recorder, || {
                for i in 0..20_000_u32 {
                    let ms = 0.5 * 1.0002_f64.powi(i32::try_from(i % 23_000).unwrap());
                    metrics::histogram!("zoomwire_effect_seconds", "effect" => "slack")
                        .record(ms / 1000.0);
                    metrics::histogram!("zoomwire_journal_commit_seconds").record(ms / 500.0);
                    metrics::histogram!("zoomwire_journal_batch_size")
                        .record(f64::from(i % 1000 + 1));
                }
            });
            recorder.handle().run_upkeep();
            let held = crate::script::allocator::live_bytes() - before;
            drop(recorder);
            held
        })
        .join()
        .unwrap()
    }

    #[test]
    fn fixed_buckets_hold_a_fraction_of_what_summaries_hold() {
        let summaries = held_after_a_burst(PrometheusBuilder::new());
        let buckets = held_after_a_burst(prometheus_builder().unwrap());
        assert!(summaries > 256 << 10, "summaries held {summaries} bytes");
        assert!(
            buckets < 64 << 10,
            "buckets held {buckets} bytes (summaries {summaries})"
        );
    }
}
