//! What the public endpoint answered, counted and logged at a rate.
//!
//! Every request is counted in `zoomwire_webhook_requests_total{outcome}` and
//! every connection in `zoomwire_webhook_connections_total{outcome}`. A
//! refusal (a bad signature, a timeout, a limit) is also logged, but at most
//! [`LOG_BURST`] lines per [`LOG_PERIOD`]: the rest are counted by outcome
//! and summed up in one line per period, so that a flood of bad requests
//! (20,000 forged signatures) costs a few log lines, not one each.
//!
//! Handlers mark their answer with an [`Answered`] response extension; the
//! server's outermost layer reads it (or, without one, the status) and
//! reports here, so there is one place that counts and logs.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::StatusCode;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;

/// Refusal lines logged one by one in a burst, at most.
pub const LOG_BURST: u32 = 5;
/// How often the burst refills, and how often what was not logged is summed up.
pub const LOG_PERIOD: Duration = Duration::from_secs(10);

/// What a handler answered: `outcome` names it in metrics; a `refusal`
/// says why the request was refused.
#[derive(Debug, Clone)]
pub struct Answered {
    pub outcome: &'static str,
    pub refusal: Option<String>,
}

impl Answered {
    pub fn ok(outcome: &'static str) -> Answered {
        Answered {
            outcome,
            refusal: None,
        }
    }

    pub fn refused(outcome: &'static str, why: impl Into<String>) -> Answered {
        Answered {
            outcome,
            refusal: Some(why.into()),
        }
    }

    /// What a response without a mark means, by its status.
    pub fn from_status(status: StatusCode) -> Answered {
        let outcome = match status.as_u16() {
            200..=399 => return Answered::ok("ok"),
            401 | 403 => "unauthorized",
            404 => "not_found",
            405 => "method_not_allowed",
            408 => "timeout",
            413 => "too_large",
            429 => "rate_limited",
            503 => "overloaded",
            400..=499 => "malformed",
            _ => "error",
        };
        Answered::refused(outcome, format!("answered {status}"))
    }
}

/// Counts answers and logs refusals at a rate.
pub struct RefusalLog {
    server: &'static str,
    lines: DefaultDirectRateLimiter,
    /// Refusals not logged since the last summary, by outcome.
    unlogged: Mutex<BTreeMap<&'static str, u64>>,
}

impl RefusalLog {
    pub fn new(server: &'static str) -> RefusalLog {
        let burst = NonZeroU32::new(LOG_BURST).unwrap_or(NonZeroU32::MIN);
        // Cannot fail: the period divided by a non-zero burst is not zero.
        let quota = Quota::with_period(LOG_PERIOD / LOG_BURST)
            .expect("a non-zero period")
            .allow_burst(burst);
        RefusalLog {
            server,
            lines: RateLimiter::direct(quota),
            unlogged: Mutex::default(),
        }
    }

    /// Counts one answered request; logs it if it was refused and the rate allows.
    pub fn request(&self, answered: &Answered, peer: Option<IpAddr>) {
        metrics::counter!("zoomwire_webhook_requests_total", "outcome" => answered.outcome)
            .increment(1);
        if let Some(why) = &answered.refusal {
            self.refused(answered.outcome, peer, why);
        }
    }

    /// Counts one connection by what became of it (`accepted`, or why it was closed).
    pub fn connection(&self, outcome: &'static str, peer: IpAddr, refusal: Option<&str>) {
        metrics::counter!("zoomwire_webhook_connections_total", "outcome" => outcome).increment(1);
        if let Some(why) = refusal {
            self.refused(outcome, Some(peer), why);
        }
    }

    fn refused(&self, outcome: &'static str, peer: Option<IpAddr>, why: &str) {
        if self.lines.check().is_ok() {
            let peer = peer.map(|p| p.to_string()).unwrap_or_default();
            tracing::warn!(server = self.server, outcome, peer, reason = %why, "request refused");
        } else {
            *self.unlogged.lock().entry(outcome).or_default() += 1;
        }
    }

    /// Logs one line summing up the refusals not logged since the last call,
    /// if any; returns how many there were. The server calls it every
    /// [`LOG_PERIOD`].
    pub fn summarize(&self) -> u64 {
        let unlogged = std::mem::take(&mut *self.unlogged.lock());
        let total: u64 = unlogged.values().sum();
        if total > 0 {
            let by_outcome = unlogged
                .iter()
                .map(|(outcome, count)| format!("{outcome}={count}"))
                .collect::<Vec<_>>()
                .join(" ");
            tracing::warn!(
                server = self.server,
                refused = total,
                by_outcome,
                period_s = LOG_PERIOD.as_secs(),
                "more requests refused than logged one by one"
            );
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_refusals_logs_a_burst_and_counts_the_rest() {
        let log = RefusalLog::new("webhook");
        let bad = Answered::refused("unauthorized", "signature does not match");
        for _ in 0..20_000 {
            log.request(&bad, None);
        }
        log.request(&Answered::ok("accepted"), None);
        assert_eq!(log.summarize(), 20_000 - u64::from(LOG_BURST));
        assert_eq!(log.summarize(), 0, "each refusal is summed up once");
    }

    #[test]
    fn unmarked_answers_are_named_by_their_status() {
        let outcome = |code: u16| Answered::from_status(StatusCode::from_u16(code).unwrap());
        assert!(outcome(200).refusal.is_none());
        assert_eq!(outcome(404).outcome, "not_found");
        assert_eq!(outcome(408).outcome, "timeout");
        assert_eq!(outcome(429).outcome, "rate_limited");
        assert_eq!(outcome(431).outcome, "malformed");
        assert_eq!(outcome(503).outcome, "overloaded");
    }
}
