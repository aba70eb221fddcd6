//! HTTP plumbing shared by the Zoom REST client and the live effect clients
//! (Slack, HTTP, downloads): how a failure counts ([`FailureKind`]),
//! `Retry-After` parsing, the retry policy and its backoff,
//! waits that never pass a run's deadline, and response bodies read with a
//! size cap.
//!
//! Every wait goes through [`wait_within`], so no client sleeps past the run's
//! deadline: when a peer asks for a longer pause than the run has left, the
//! effect fails at once as transient and the engine's run retry takes over.

use std::time::{Duration, Instant, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, NaiveDateTime, Utc};
use reqwest::{Method, StatusCode};

/// How a failed request counts: whether trying again may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Worth retrying: 5xx, timeouts, connection errors, rate limits that outlast the run.
    Transient,
    /// Retrying will not help: 4xx, bad arguments, refused addresses.
    Permanent,
    /// The run's deadline passed while waiting.
    Timeout,
}

/// How an effect client retries within one effect call.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts for 5xx, timeouts and connection errors (the first one included).
    pub attempts: u32,
    /// First backoff after a transient failure; doubles up to `max_backoff`, with jitter.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Pause after a 429 that names no `Retry-After` (per-second limits), jittered by ±25%.
    pub rate_limit_wait: Duration,
    /// How many 429s one call waits out before giving up.
    pub rate_limit_retries: u32,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
            rate_limit_wait: Duration::from_secs(1),
            rate_limit_retries: 8,
        }
    }
}

impl RetryPolicy {
    /// Backoff delays for transient failures, one per retry.
    pub fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.min_backoff)
            .with_max_delay(self.max_backoff)
            .with_max_times(self.attempts.saturating_sub(1) as usize)
            .with_jitter()
            .build()
    }

    /// The pause after a 429: what `Retry-After` says, else about `rate_limit_wait`.
    pub fn rate_limit_delay(&self, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            // A date with one-second resolution can name a moment just passed.
            Some(delay) => delay.max(Duration::from_millis(50)),
            None => jitter(self.rate_limit_wait),
        }
    }
}

/// `delay` scaled by a random factor between 0.75 and 1.25.
pub fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(0.75 + fastrand::f64() * 0.5)
}

/// Parses a `Retry-After` value: seconds, an HTTP date, or an ISO 8601 date
/// (Zoom sends dates). A date in the past gives zero.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_secs_f64(seconds.min(86_400.0 * 7.0)));
    }
    let at = parse_http_date(value).or_else(|| parse_iso_date(value))?;
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

fn parse_http_date(value: &str) -> Option<DateTime<Utc>> {
    let at: SystemTime = httpdate::parse_http_date(value).ok()?;
    Some(DateTime::<Utc>::from(at))
}

fn parse_iso_date(value: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(value) {
        return Some(at.with_timezone(&Utc));
    }
    // Without an offset, Zoom's dates are UTC.
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(value, format).ok())
        .map(|naive| naive.and_utc())
}

/// The `Retry-After` of a response, as a delay from now.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, Utc::now())
}

/// The wait would end at or after the run's deadline.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("waiting {wanted:?} would pass the run's deadline ({left:?} left)")]
pub struct PastDeadline {
    pub wanted: Duration,
    pub left: Duration,
}

/// Sleeps for `delay` unless that would reach the deadline.
pub async fn wait_within(deadline: Instant, delay: Duration) -> Result<(), PastDeadline> {
    let left = remaining(deadline);
    if delay >= left {
        return Err(PastDeadline {
            wanted: delay,
            left,
        });
    }
    tokio::time::sleep(delay).await;
    Ok(())
}

/// Time left until the deadline (zero when passed).
pub fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// A per-request timeout: `limit`, but never past the deadline.
pub fn request_timeout(limit: Duration, deadline: Instant) -> Duration {
    limit.min(remaining(deadline)).max(Duration::from_millis(1))
}

/// Whether repeating a request after this answer cannot do the work twice:
/// always for idempotent methods; for POST only when the server said it did
/// nothing (503) or the request never left (see [`retry_safe_error`]).
pub fn retry_safe_status(method: &Method, status: StatusCode) -> bool {
    if !status.is_server_error() {
        return false;
    }
    is_idempotent(method) || status == StatusCode::SERVICE_UNAVAILABLE
}

/// Whether a transport error is worth retrying for this method.
pub fn retry_safe_error(method: &Method, error: &reqwest::Error) -> bool {
    if error.is_connect() {
        return true;
    }
    is_idempotent(method) && (error.is_timeout() || error.is_request() || error.is_body())
}

fn is_idempotent(method: &Method) -> bool {
    !matches!(*method, Method::POST) && *method != Method::PATCH
}

/// Describes a transport error with its causes but without its URL (which may carry a token).
pub fn describe_error(error: reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let error = error.without_url();
    let mut text = format!("{kind}: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the response body is larger than the {limit} byte limit")]
    TooLarge { limit: usize },
    #[error("reading the response body failed: {0}")]
    Transport(String),
}

/// Reads a whole response body, refusing more than `limit` bytes.
pub async fn read_body_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Transport(describe_error(e)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whether a content type names JSON (`application/json`, `application/*+json`).
pub fn is_json_content_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
    }

    #[test]
    fn parses_retry_after_seconds() {
        assert_eq!(parse_retry_after("3", now()), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after(" 1.5 ", now()),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after("-1", now()), None);
    }

    #[test]
    fn parses_retry_after_http_dates() {
        assert_eq!(
            parse_retry_after("Sun, 01 Mar 2026 12:00:05 GMT", now()),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse_retry_after("Sun, 01 Mar 2026 11:00:00 GMT", now()),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn parses_retry_after_iso_dates() {
        for value in [
            "2026-03-01T12:00:07Z",
            "2026-03-01T13:00:07+01:00",
            "2026-03-01T12:00:07",
            "2026-03-01 12:00:07",
            "2026-03-01T12:00:07.000Z",
        ] {
            assert_eq!(
                parse_retry_after(value, now()),
                Some(Duration::from_secs(7)),
                "{value}"
            );
        }
        assert_eq!(parse_retry_after("soon", now()), None);
    }

    #[test]
    fn rate_limit_delay_prefers_retry_after_and_jitters_otherwise() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.rate_limit_delay(Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            policy.rate_limit_delay(Some(Duration::ZERO)),
            Duration::from_millis(50)
        );
        for _ in 0..50 {
            let delay = policy.rate_limit_delay(None);
            assert!(delay >= Duration::from_millis(750) && delay <= Duration::from_millis(1250));
        }
    }

    #[test]
    fn backoff_gives_one_delay_per_retry() {
        let policy = RetryPolicy {
            attempts: 3,
            ..RetryPolicy::default()
        };
        let delays: Vec<_> = policy.backoff().collect();
        assert_eq!(delays.len(), 2);
        assert!(delays.iter().all(|d| *d <= policy.max_backoff * 2));
    }

    #[tokio::test]
    async fn never_waits_past_the_deadline() {
        let deadline = Instant::now() + Duration::from_millis(100);
        let error = wait_within(deadline, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(error.wanted, Duration::from_secs(1));
        assert!(
            wait_within(deadline, Duration::from_millis(1))
                .await
                .is_ok()
        );
    }

    #[test]
    fn only_retries_what_cannot_happen_twice() {
        assert!(retry_safe_status(&Method::GET, StatusCode::BAD_GATEWAY));
        assert!(retry_safe_status(
            &Method::DELETE,
            StatusCode::INTERNAL_SERVER_ERROR
        ));
        assert!(!retry_safe_status(
            &Method::POST,
            StatusCode::INTERNAL_SERVER_ERROR
        ));
        assert!(retry_safe_status(
            &Method::POST,
            StatusCode::SERVICE_UNAVAILABLE
        ));
        assert!(!retry_safe_status(&Method::GET, StatusCode::NOT_FOUND));
    }

    #[test]
    fn recognises_json_content_types() {
        assert!(is_json_content_type("application/json; charset=utf-8"));
        assert!(is_json_content_type("application/problem+json"));
        assert!(!is_json_content_type("text/plain"));
        assert!(!is_json_content_type("application/jsonx"));
    }
}
