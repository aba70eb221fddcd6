//! What reconciliation reports: one [`PassReport`] per pass (what it looked
//! at, found, fed and could not do), and per account a [`ReconcileStatus`]
//! that `/healthz` shows, with the same figures as Prometheus metrics.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::zoom::missed::Window;

/// Events named in one report at most (the counts stay exact).
const MAX_LISTED_EVENTS: usize = 50;

/// One event a pass fed into the engine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FedEvent {
    pub event_type: String,
    /// Its dedupe key (`meta.id`).
    pub id: String,
}

/// What one pass did.
#[derive(Debug, Clone, Serialize)]
pub struct PassReport {
    /// `startup`, `gap`, `sweep` or `manual`.
    pub trigger: &'static str,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub window: Window,
    /// The event types looked for: those some enabled rule listens to.
    pub types: Vec<&'static str>,
    /// Events Zoom's REST API listed in the window.
    pub listed: u64,
    /// Of those, already seen by the engine (delivered live, or fed before).
    pub known: u64,
    /// Of those, not seen before: missed.
    pub found: u64,
    /// Of those, fed into the engine.
    pub fed: u64,
    /// The first events fed.
    pub fed_events: Vec<FedEvent>,
    /// Types skipped and why (a daily budget spent).
    pub skipped: Vec<String>,
    pub errors: Vec<String>,
}

impl PassReport {
    pub fn new(trigger: &'static str, window: Window, types: Vec<&'static str>) -> PassReport {
        PassReport {
            trigger,
            started_at: Utc::now(),
            finished_at: None,
            window,
            types,
            listed: 0,
            known: 0,
            found: 0,
            fed: 0,
            fed_events: Vec::new(),
            skipped: Vec::new(),
            errors: Vec::new(),
        }
    }

    pub fn note_fed(&mut self, event_type: &str, id: &str) {
        self.fed += 1;
        if self.fed_events.len() < MAX_LISTED_EVENTS {
            self.fed_events.push(FedEvent {
                event_type: event_type.to_string(),
                id: id.to_string(),
            });
        }
    }

    pub fn finish(&mut self) {
        self.finished_at = Some(Utc::now());
    }
}

/// One account's reconciliation, as `/healthz` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconcileStatus {
    pub account: String,
    /// Reconciliation never reaches back before this: when the engine first
    /// watched the account (so a new installation is not flooded with history).
    pub watching_since: Option<DateTime<Utc>>,
    /// Whether the account is watched now (its subscription connected, or
    /// the engine running for an account without one).
    pub watching: bool,
    /// The last time saved as watched, from which a restart reconciles.
    pub watched_until: Option<DateTime<Utc>>,
    pub passes: u64,
    /// Missed events found, over every pass.
    pub events_found: u64,
    /// Missed events fed into the engine, over every pass.
    pub events_fed: u64,
    /// Errors over every pass.
    pub errors: u64,
    pub last_error: Option<String>,
    pub last_pass: Option<PassReport>,
    pub next_sweep_at: Option<DateTime<Utc>>,
}

impl ReconcileStatus {
    pub fn new(account: &str) -> ReconcileStatus {
        ReconcileStatus {
            account: account.to_string(),
            ..ReconcileStatus::default()
        }
    }

    /// Adds a finished pass to the totals and the metrics.
    pub fn record(&mut self, report: &PassReport) {
        self.passes += 1;
        self.events_found += report.found;
        self.events_fed += report.fed;
        self.errors += report.errors.len() as u64;
        if let Some(error) = report.errors.last() {
            self.last_error = Some(error.clone());
        }
        self.last_pass = Some(report.clone());
        let account = self.account.clone();
        let outcome = if report.errors.is_empty() {
            "ok"
        } else {
            "error"
        };
        metrics::counter!("zoomwire_reconcile_passes_total", "account" => account.clone(), "trigger" => report.trigger, "outcome" => outcome)
            .increment(1);
        metrics::counter!("zoomwire_reconcile_events_total", "account" => account.clone(), "outcome" => "known")
            .increment(report.known);
        metrics::counter!("zoomwire_reconcile_events_total", "account" => account.clone(), "outcome" => "found")
            .increment(report.found);
        metrics::counter!("zoomwire_reconcile_events_total", "account" => account.clone(), "outcome" => "fed")
            .increment(report.fed);
        metrics::counter!("zoomwire_reconcile_errors_total", "account" => account.clone())
            .increment(report.errors.len() as u64);
        let finished = report.finished_at.unwrap_or(report.started_at);
        metrics::gauge!("zoomwire_reconcile_last_pass_timestamp_seconds", "account" => account)
            .set(finished.timestamp() as f64);
    }
}
