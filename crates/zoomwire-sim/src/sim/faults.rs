//! Injectable trouble: the next N requests to a path prefix fail with Zoom's
//! 429 (with its rate-limit headers), Slack's 429, or any status; an
//! artificial delay per path prefix for slow-call tests; and gates, which
//! hold every request to a path prefix until the test opens them, so that a
//! test can act (kill the daemon, say) while a call is in flight for as long
//! as it needs, on any machine, without a timer.
//!
//! Zoom's 429 carries `X-RateLimit-Category`, `X-RateLimit-Type` (`QPS` or
//! `Daily-limit`), `X-RateLimit-Limit`, `X-RateLimit-Remaining` and a
//! `Retry-After` that is a date (HTTP or ISO), not seconds; some 429s carry
//! none of these. Slack's 429 has `Retry-After: <seconds>`. Dates are computed
//! when the fault fires, relative to that moment.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use super::state::{SimState, lock};

/// Which of Zoom's rate limits was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RateLimitType {
    #[serde(rename = "QPS")]
    Qps,
    #[serde(rename = "Daily-limit")]
    DailyLimit,
}

/// The form of a `Retry-After` header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "form", rename_all = "snake_case")]
pub enum RetryAfter {
    /// No `Retry-After` header.
    None,
    /// `Retry-After: Tue, 19 Nov 2024 08:00:01 GMT`, this many ms from now.
    HttpDate { after_ms: u64 },
    /// `Retry-After: 2024-11-19T08:00:01Z`, this many ms from now.
    IsoDate { after_ms: u64 },
    /// `Retry-After: <seconds>` (Slack's form).
    Seconds { seconds: u64 },
}

/// How the faulty requests fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// Zoom's 429; `headers: false` sends a bare 429 as Zoom sometimes does.
    ZoomRateLimit {
        limit_type: RateLimitType,
        category: String,
        limit: u32,
        retry_after: RetryAfter,
        headers: bool,
    },
    /// Slack's 429 with `Retry-After: <seconds>`.
    SlackRateLimit { retry_after_secs: u64 },
    /// Any status with an optional body (5xx for transient-error tests).
    Status { status: u16, body: Option<String> },
}

/// The next `count` requests whose raw path starts with `path_prefix` fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub path_prefix: String,
    pub count: u32,
    #[serde(flatten)]
    pub kind: FaultKind,
}

impl Fault {
    /// Zoom's per-second limit: `Retry-After` an HTTP date one second ahead.
    pub fn zoom_qps(path_prefix: &str, count: u32) -> Fault {
        Fault::zoom_rate_limit(
            path_prefix,
            count,
            RateLimitType::Qps,
            RetryAfter::HttpDate { after_ms: 1000 },
        )
    }

    /// Zoom's daily limit: `Retry-After` an ISO date `after_ms` ahead.
    pub fn zoom_daily(path_prefix: &str, count: u32, after_ms: u64) -> Fault {
        Fault::zoom_rate_limit(
            path_prefix,
            count,
            RateLimitType::DailyLimit,
            RetryAfter::IsoDate { after_ms },
        )
    }

    pub fn zoom_rate_limit(
        path_prefix: &str,
        count: u32,
        limit_type: RateLimitType,
        retry_after: RetryAfter,
    ) -> Fault {
        Fault {
            path_prefix: path_prefix.to_string(),
            count,
            kind: FaultKind::ZoomRateLimit {
                limit_type,
                category: "Medium".into(),
                limit: if limit_type == RateLimitType::Qps {
                    20
                } else {
                    60000
                },
                retry_after,
                headers: true,
            },
        }
    }

    /// A 429 with none of the rate-limit headers.
    pub fn zoom_bare_429(path_prefix: &str, count: u32) -> Fault {
        Fault {
            path_prefix: path_prefix.to_string(),
            count,
            kind: FaultKind::ZoomRateLimit {
                limit_type: RateLimitType::Qps,
                category: String::new(),
                limit: 0,
                retry_after: RetryAfter::None,
                headers: false,
            },
        }
    }

    pub fn slack_rate_limit(path_prefix: &str, count: u32, retry_after_secs: u64) -> Fault {
        Fault {
            path_prefix: path_prefix.to_string(),
            count,
            kind: FaultKind::SlackRateLimit { retry_after_secs },
        }
    }

    pub fn status(path_prefix: &str, count: u32, status: u16) -> Fault {
        Fault {
            path_prefix: path_prefix.to_string(),
            count,
            kind: FaultKind::Status { status, body: None },
        }
    }
}

fn retry_after_value(retry_after: &RetryAfter) -> Option<String> {
    match retry_after {
        RetryAfter::None => None,
        RetryAfter::HttpDate { after_ms } => Some(httpdate::fmt_http_date(
            SystemTime::now() + Duration::from_millis(*after_ms),
        )),
        RetryAfter::IsoDate { after_ms } => {
            let at = chrono::Utc::now() + chrono::Duration::milliseconds(*after_ms as i64);
            Some(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        }
        RetryAfter::Seconds { seconds } => Some(seconds.to_string()),
    }
}

fn insert_header(response: &mut Response, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

/// The response a fault gives for a request to `path`.
fn fault_response(kind: &FaultKind, path: &str) -> Response {
    match kind {
        FaultKind::ZoomRateLimit {
            limit_type,
            category,
            limit,
            retry_after,
            headers,
        } => {
            let message = match limit_type {
                RateLimitType::Qps => {
                    "You have reached the maximum per-second rate limit for this API. Try again later."
                }
                RateLimitType::DailyLimit => {
                    "You have reached the maximum daily rate limit for this API. Try again later."
                }
            };
            let mut response = (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(json!({ "code": 429, "message": message })),
            )
                .into_response();
            if *headers {
                let kind = match limit_type {
                    RateLimitType::Qps => "QPS",
                    RateLimitType::DailyLimit => "Daily-limit",
                };
                insert_header(&mut response, "x-ratelimit-category", category);
                insert_header(&mut response, "x-ratelimit-type", kind);
                insert_header(&mut response, "x-ratelimit-limit", &limit.to_string());
                insert_header(&mut response, "x-ratelimit-remaining", "0");
                if let Some(value) = retry_after_value(retry_after) {
                    insert_header(&mut response, "retry-after", &value);
                }
            }
            response
        }
        FaultKind::SlackRateLimit { retry_after_secs } => {
            let mut response = if path.starts_with("/slack/webhook") {
                (StatusCode::TOO_MANY_REQUESTS, "rate_limited").into_response()
            } else {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    axum::Json(json!({ "ok": false, "error": "ratelimited" })),
                )
                    .into_response()
            };
            insert_header(&mut response, "retry-after", &retry_after_secs.to_string());
            response
        }
        FaultKind::Status { status, body } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = body.clone().unwrap_or_else(|| {
                json!({ "code": status.as_u16(), "message": status.canonical_reason().unwrap_or("error") })
                    .to_string()
            });
            let mut response = (status, body).into_response();
            insert_header(&mut response, "content-type", "application/json");
            response
        }
    }
}

impl SimState {
    pub fn inject_fault(&self, fault: Fault) {
        if fault.count > 0 {
            lock(&self.faults).push(fault);
        }
    }

    pub fn set_delay(&self, path_prefix: &str, delay: Duration) {
        let mut delays = lock(&self.delays);
        delays.retain(|(prefix, _)| prefix != path_prefix);
        if !delay.is_zero() {
            delays.push((path_prefix.to_string(), delay));
        }
    }

    /// Holds every request to `path_prefix` until [`Self::open_gate`].
    pub fn close_gate(&self, path_prefix: &str) {
        let mut gates = lock(&self.gates);
        if !gates.iter().any(|(prefix, _)| prefix == path_prefix) {
            gates.push((path_prefix.to_string(), watch::Sender::new(false)));
        }
    }

    /// Lets the requests held at `path_prefix`'s gate, and later ones, through.
    pub fn open_gate(&self, path_prefix: &str) {
        lock(&self.gates).retain(|(prefix, gate)| {
            let opened = prefix == path_prefix;
            if opened {
                gate.send_replace(true);
            }
            !opened
        });
    }

    pub fn open_all_gates(&self) {
        for (_, gate) in lock(&self.gates).drain(..) {
            gate.send_replace(true);
        }
    }

    /// The gate a request to `path` waits at, if one is closed.
    fn gate_for(&self, path: &str) -> Option<watch::Receiver<bool>> {
        lock(&self.gates)
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, gate)| gate.subscribe())
    }

    /// Takes one use of the first fault matching `path`.
    fn take_fault(&self, path: &str) -> Option<FaultKind> {
        let mut faults = lock(&self.faults);
        let index = faults
            .iter()
            .position(|f| path.starts_with(&f.path_prefix))?;
        let fault = &mut faults[index];
        fault.count -= 1;
        let kind = fault.kind.clone();
        if fault.count == 0 {
            faults.remove(index);
        }
        Some(kind)
    }

    fn delay_for(&self, path: &str) -> Option<Duration> {
        lock(&self.delays)
            .iter()
            .filter(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, delay)| *delay)
            .max()
    }
}

/// Middleware: waits at a closed gate and out a configured delay, then
/// answers a pending fault instead of the handler.
pub(crate) async fn apply_faults_and_delays(
    State(sim): State<Arc<SimState>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    if let Some(mut gate) = sim.gate_for(&path) {
        // An error means the gate was dropped unopened: let the request on.
        let _ = gate.wait_for(|open| *open).await;
    }
    if let Some(delay) = sim.delay_for(&path) {
        tokio::time::sleep(delay).await;
    }
    let mut response = match sim.take_fault(&path) {
        Some(kind) => fault_response(&kind, &path),
        None => next.run(request).await,
    };
    if path.starts_with("/v2/") && !response.headers().contains_key("x-zm-trackingid") {
        let tracking = format!("v=2.0;clid=sim;rid={:016x}", fastrand::u64(..));
        insert_header(&mut response, "x-zm-trackingid", &tracking);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let http = retry_after_value(&RetryAfter::HttpDate { after_ms: 1000 }).unwrap();
        assert!(httpdate::parse_http_date(&http).is_ok(), "{http}");
        let iso = retry_after_value(&RetryAfter::IsoDate { after_ms: 1000 }).unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(&iso).is_ok(), "{iso}");
        assert_eq!(
            retry_after_value(&RetryAfter::Seconds { seconds: 3 }).unwrap(),
            "3"
        );
        assert!(retry_after_value(&RetryAfter::None).is_none());
    }

    #[test]
    fn faults_serialize_for_the_control_api() {
        let fault = Fault::zoom_qps("/v2/users", 2);
        let json = serde_json::to_value(&fault).unwrap();
        assert_eq!(json["kind"], "zoom_rate_limit");
        assert_eq!(json["limit_type"], "QPS");
        let back: Fault = serde_json::from_value(json).unwrap();
        assert_eq!(back, fault);
    }
}
