//! Reconciliation: Zoom's WebSocket has no replay, so what Zoom sent while
//! no connection was up is found again through its REST API and fed through
//! the same pipeline as live events, with `meta.source == "reconcile"`.
//!
//! One [`Reconciler`] per account runs a pass
//! - after every gap in its subscription (the WebSocket client records them),
//!   once the connection is back;
//! - at start-up after downtime, reaching back to when the account was last
//!   watched (a mark kept in the state store, so in the journal's file);
//! - on a periodic sweep (default every 15 minutes), which also finds what
//!   a healthy connection silently missed.
//!
//! A pass looks at the window from `lookback` ago (default 48 h: recordings
//! can finish processing a day after their meeting, deliveries can lag)
//! until now, further back to cover a gap or a downtime, but never before the
//! account was first watched (a new installation is not flooded with
//! history) nor past the dedupe window (beyond it a duplicate would not be
//! recognised). It looks only for the event types some enabled rule listens
//! to ([`MissedKind`]: `recording.completed`, `meeting.ended`,
//! `user.created`), asks the journal whether each one found is already known
//! by its dedupe key (which names the thing, not the delivery), and feeds
//! only the unknown ones, completed with what costs another call (a
//! recording's download token). Whichever of a reconciled event and a late
//! live delivery comes first runs; the other is a counted duplicate.
//!
//! Zoom's calls run under the account's own limiter at a share of Zoom's
//! per-category limits and back off on 429 ([`crate::zoom::ratelimit`]), so
//! reconciliation never starves rule traffic. Each pass is reported in the
//! account's [`ReconcileStatus`] (`/healthz`) and in metrics. `zoomwire
//! reconcile` runs one pass by hand ([`reconcile_window`]).

mod seams;
mod status;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval_at};
use tokio_util::sync::CancellationToken;

pub use seams::{EventFeed, KnownEvents, MARKS_RULE, Marks, MissedSource};
pub use status::{FedEvent, PassReport, ReconcileStatus};

use crate::effects::state::StateStore;
use crate::event::{Event, Source};
use crate::reload::RuleSetHandle;
use crate::rules::RuleSet;
use crate::zoom::missed::{FindError, MissedKind, Window};
use crate::zoom::websocket::ConnectionStatus;

/// How often the subscription's status is looked at.
const LINK_POLL: Duration = Duration::from_secs(1);

/// When and how far back reconciliation looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileConfig {
    /// Time between sweeps.
    pub sweep_interval: Duration,
    /// How far back every pass looks.
    pub lookback: Duration,
    /// Never further back than this (the journal's dedupe window).
    pub max_reach: Duration,
    /// Added before a gap or a downtime: event times are not send times.
    pub gap_margin: Duration,
    /// How often the watched-until mark is saved while watching.
    pub mark_interval: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> ReconcileConfig {
        ReconcileConfig {
            sweep_interval: Duration::from_secs(15 * 60),
            lookback: Duration::from_secs(48 * 3600),
            max_reach: Duration::from_secs(72 * 3600),
            gap_margin: Duration::from_secs(120),
            mark_interval: Duration::from_secs(60),
        }
    }
}

/// Why a pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The engine started; the account was last watched at `since`.
    Startup {
        since: DateTime<Utc>,
    },
    /// The subscription was down from `start` to `end`.
    Gap {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    Sweep,
}

impl Trigger {
    pub fn label(self) -> &'static str {
        match self {
            Trigger::Startup { .. } => "startup",
            Trigger::Gap { .. } => "gap",
            Trigger::Sweep => "sweep",
        }
    }

    /// The earliest moment the pass must cover, beyond the lookback.
    fn reaches_back_to(self) -> Option<DateTime<Utc>> {
        match self {
            Trigger::Startup { since } => Some(since),
            Trigger::Gap { start, .. } => Some(start),
            Trigger::Sweep => None,
        }
    }
}

/// The types some enabled rule listens to, among those reconciliation finds.
pub fn listened_kinds(rule_set: &RuleSet) -> Vec<MissedKind> {
    MissedKind::ALL
        .into_iter()
        .filter(|kind| {
            rule_set
                .rules()
                .iter()
                .any(|rule| rule.enabled && rule.listens_to(kind.event_type()))
        })
        .collect()
}

/// What one pass works with.
pub struct PassContext<'a> {
    /// The account's configured name (events get `Source::Reconcile(account)`).
    pub account: &'a str,
    pub source: &'a dyn MissedSource,
    pub known: &'a dyn KnownEvents,
    pub feed: &'a dyn EventFeed,
    /// Fetch what costs another call (a recording's download token) before
    /// feeding; a dry run skips it.
    pub complete: bool,
}

/// One pass over `window` for `kinds`: lists, skips what is known, completes
/// and feeds the rest. Errors are collected in the report, never thrown: a
/// kind that fails does not stop the others.
pub async fn reconcile_window(
    context: &PassContext<'_>,
    trigger: &'static str,
    kinds: &[MissedKind],
    window: Window,
) -> PassReport {
    let types = kinds.iter().map(|kind| kind.event_type()).collect();
    let mut report = PassReport::new(trigger, window, types);
    let mut seen = HashSet::new();
    for kind in kinds {
        let candidates = match context.source.find(*kind, window).await {
            Ok(candidates) => candidates,
            Err(FindError::Limit(limit)) => {
                report
                    .skipped
                    .push(format!("{}: {limit}", kind.event_type()));
                continue;
            }
            Err(error) => {
                report
                    .errors
                    .push(format!("listing {}: {error}", kind.event_type()));
                continue;
            }
        };
        report.listed += candidates.len() as u64;
        for candidate in candidates {
            let source = Source::Reconcile(context.account.to_string());
            let id = match Event::from_value(&candidate.body, source.clone()) {
                Ok(event) => event.id,
                Err(error) => {
                    report
                        .errors
                        .push(format!("{}: {error}", kind.event_type()));
                    continue;
                }
            };
            if !seen.insert(id.clone()) {
                continue;
            }
            match context.known.is_known(&id).await {
                Ok(true) => {
                    report.known += 1;
                    continue;
                }
                Ok(false) => report.found += 1,
                Err(error) => {
                    report.errors.push(format!("checking {id}: {error}"));
                    continue;
                }
            }
            let body = if context.complete {
                match context.source.complete(candidate).await {
                    Ok(body) => body,
                    Err(error) => {
                        report.errors.push(format!("completing {id}: {error}"));
                        continue;
                    }
                }
            } else {
                candidate.body
            };
            let event = match Event::from_value(&body, source) {
                Ok(event) => event,
                Err(error) => {
                    report.errors.push(format!("{id}: {error}"));
                    continue;
                }
            };
            let (event_type, id) = (event.event_type.clone(), event.id.clone());
            match context.feed.feed(event).await {
                Ok(()) => report.note_fed(&event_type, &id),
                Err(error) => {
                    report.errors.push(format!("feeding {id}: {error}"));
                    break;
                }
            }
        }
    }
    report.finish();
    report
}

/// One account's reconciliation, for as long as the daemon runs.
pub struct Reconciler {
    pub account: String,
    pub config: ReconcileConfig,
    pub source: Arc<dyn MissedSource>,
    pub known: Arc<dyn KnownEvents>,
    pub feed: Arc<dyn EventFeed>,
    pub rules: Arc<RuleSetHandle>,
    pub marks: Marks,
    pub status: watch::Sender<ReconcileStatus>,
}

impl Reconciler {
    pub fn new(
        account: &str,
        config: ReconcileConfig,
        parts: ReconcilerParts,
        status: watch::Sender<ReconcileStatus>,
    ) -> Reconciler {
        Reconciler {
            account: account.to_string(),
            config,
            source: parts.source,
            known: parts.known,
            feed: parts.feed,
            rules: parts.rules,
            marks: Marks::new(parts.state, account),
            status,
        }
    }

    /// Runs until `shutdown`. `connection` is the account's subscription
    /// status (`None` for an account without one: watched while the engine runs).
    pub async fn run(
        self,
        mut connection: Option<watch::Receiver<ConnectionStatus>>,
        shutdown: CancellationToken,
    ) {
        let watching_since = self.marks.watching_since().await;
        let mut startup = self.marks.watched_until().await;
        tracing::debug!(
            account = %self.account,
            watching_since = %watching_since.to_rfc3339(),
            last_watched = ?startup.map(|at| at.to_rfc3339()),
            "reconciliation started"
        );
        self.status.send_modify(|s| {
            s.watching_since = Some(watching_since);
            s.watched_until = startup;
        });
        let interval = self.config.sweep_interval;
        let mut sweeps = interval_at(Instant::now() + interval, interval);
        sweeps.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut mark_ticks = tokio::time::interval(self.config.mark_interval);
        mark_ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The subscription's status changes with every frame: look at it once
        // a second instead of waking for each.
        let mut link_ticks = tokio::time::interval(LINK_POLL);
        link_ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut watching = connection.is_none();
        let mut handled_gaps_until: Option<DateTime<Utc>> = None;
        self.note_next_sweep();
        loop {
            let trigger = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = sweeps.tick() => Some(Trigger::Sweep),
                _ = mark_ticks.tick() => {
                    if watching {
                        self.save_mark(true).await;
                    }
                    // Without a subscription the account is watched from the start.
                    if watching { startup.take().map(|since| Trigger::Startup { since }) } else { None }
                }
                _ = link_ticks.tick(), if connection.is_some() => match read_link(&connection, handled_gaps_until) {
                    None => {
                        connection = None;
                        None
                    }
                    Some(link) => {
                        let was_watching = watching;
                        watching = link.connected;
                        if was_watching != watching {
                            // Connected or lost: the mark says so at once (a crash
                            // later still knows from when to reconcile).
                            self.save_mark(watching).await;
                        }
                        if !link.connected {
                            None
                        } else if let Some(since) = startup.take() {
                            handled_gaps_until = link.latest_gap_end.or(handled_gaps_until);
                            Some(Trigger::Startup { since })
                        } else if let Some((start, end)) = link.new_gap {
                            handled_gaps_until = Some(end);
                            Some(Trigger::Gap { start, end })
                        } else {
                            None
                        }
                    }
                },
            };
            let Some(trigger) = trigger else {
                continue;
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.pass(trigger, watching_since) => {}
            }
            if matches!(trigger, Trigger::Sweep) {
                self.note_next_sweep();
            }
        }
        if watching {
            self.save_mark(false).await;
        }
    }

    /// Saves now as the watched-until mark; `watching` is whether it goes on.
    async fn save_mark(&self, watching: bool) {
        let now = Utc::now();
        self.marks.save_watched_until(now).await;
        self.status.send_modify(|s| {
            s.watching = watching;
            s.watched_until = Some(now);
        });
    }

    fn note_next_sweep(&self) {
        let next = chrono::Duration::from_std(self.config.sweep_interval)
            .ok()
            .map(|interval| Utc::now() + interval);
        self.status.send_modify(|s| s.next_sweep_at = next);
    }

    /// The window a pass looks at now.
    pub fn window(
        &self,
        trigger: Trigger,
        watching_since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Window {
        let ago = |duration: Duration| {
            chrono::Duration::from_std(duration)
                .map(|d| now - d)
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
        };
        let margin = chrono::Duration::from_std(self.config.gap_margin).unwrap_or_default();
        let mut start = ago(self.config.lookback);
        if let Some(back) = trigger.reaches_back_to() {
            start = start.min(back - margin);
        }
        let floor = watching_since.max(ago(self.config.max_reach));
        Window {
            start: start.max(floor).min(now),
            end: now,
        }
    }

    /// One pass, reported in the status and the log.
    pub async fn pass(&self, trigger: Trigger, watching_since: DateTime<Utc>) -> PassReport {
        let kinds = listened_kinds(&self.rules.current());
        let window = self.window(trigger, watching_since, Utc::now());
        let context = PassContext {
            account: &self.account,
            source: self.source.as_ref(),
            known: self.known.as_ref(),
            feed: self.feed.as_ref(),
            complete: true,
        };
        let report = reconcile_window(&context, trigger.label(), &kinds, window).await;
        log_pass(&self.account, &report);
        self.status.send_modify(|status| status.record(&report));
        report
    }
}

/// What a [`Reconciler`] is made of besides its account, settings and status.
#[derive(Clone)]
pub struct ReconcilerParts {
    pub source: Arc<dyn MissedSource>,
    pub known: Arc<dyn KnownEvents>,
    pub feed: Arc<dyn EventFeed>,
    pub rules: Arc<RuleSetHandle>,
    pub state: Arc<dyn StateStore>,
}

fn log_pass(account: &str, report: &PassReport) {
    let window_start = report.window.start.to_rfc3339();
    let window_end = report.window.end.to_rfc3339();
    if report.errors.is_empty() {
        tracing::info!(
            account,
            trigger = report.trigger,
            window_start = %window_start,
            window_end = %window_end,
            listed = report.listed,
            known = report.known,
            found = report.found,
            fed = report.fed,
            skipped = ?report.skipped,
            "reconciled with zoom"
        );
    } else {
        tracing::warn!(
            account,
            trigger = report.trigger,
            window_start = %window_start,
            window_end = %window_end,
            found = report.found,
            fed = report.fed,
            errors = ?report.errors,
            "reconciliation with zoom had errors; the next pass tries again"
        );
    }
}

/// What the reconciler needs of a subscription's status.
struct Link {
    connected: bool,
    latest_gap_end: Option<DateTime<Utc>>,
    /// The span of the gaps closed after the last one handled.
    new_gap: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// The subscription's status as the reconciler needs it; `None` once its
/// client is gone.
fn read_link(
    connection: &Option<watch::Receiver<ConnectionStatus>>,
    handled_until: Option<DateTime<Utc>>,
) -> Option<Link> {
    let receiver = connection.as_ref()?;
    receiver.has_changed().ok()?;
    let status = receiver.borrow();
    let closed = status
        .gaps
        .iter()
        .filter_map(|gap| Some((gap.start, gap.end?)));
    let mut latest_gap_end = None;
    let mut new_gap: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    for (start, end) in closed {
        latest_gap_end = latest_gap_end.max(Some(end));
        if handled_until.is_none_or(|handled| end > handled) {
            new_gap = Some(match new_gap {
                Some((s, e)) => (s.min(start), e.max(end)),
                None => (start, end),
            });
        }
    }
    Some(Link {
        connected: status.connected,
        latest_gap_end,
        new_gap,
    })
}
