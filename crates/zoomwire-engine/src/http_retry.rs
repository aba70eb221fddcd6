//! HTTP plumbing shared by the Zoom REST client and the live effect clients
//! (Slack, HTTP, downloads): how a failure counts ([`FailureKind`]),
//! `Retry-After` parsing, the retry policy and its backoff, the one
//! send-with-retry loop ([`send_with_retry`]), waits that never pass a run's
//! deadline, and response bodies read with a size cap.
//!
//! Zoom REST, Slack and downloads retry through [`send_with_retry`]: each
//! says what one attempt's answer means ([`Attempt`]) and keeps only what is
//! its own (Zoom's token refresh on 401, Slack's `ok: false`, the download's
//! credential fallback and redirects); the loop waits out 429s as
//! `Retry-After` says, backs off after retry-safe failures and counts every
//! retry. `http::request` does not retry: any status is the script's answer.
//! Every wait goes through [`wait_within`], so no client sleeps past the run's
//! deadline: when a peer asks for a longer pause than the run has left, the
//! effect fails at once as transient and the engine's run retry takes over.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, NaiveDateTime, Utc};
use reqwest::{Method, StatusCode};

use crate::backoff::{Backoff, Jitter};

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
        let backoff = Backoff {
            first: self.min_backoff,
            max: self.max_backoff,
            jitter: Jitter::Added,
        };
        backoff.delays(self.attempts.saturating_sub(1))
    }

    /// The pause after a 429: what `Retry-After` says, else about `rate_limit_wait`.
    pub fn rate_limit_delay(&self, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            // A date with one-second resolution can name a moment just passed.
            Some(delay) => delay.max(Duration::from_millis(50)),
            None => Jitter::Spread.apply(self.rate_limit_wait),
        }
    }
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

/// Time left until the deadline (zero when passed), read on tokio's clock,
/// which sleeps and request timeouts follow: in the daemon it is the
/// system's monotonic clock; in a test with paused time, the waits before
/// a call use up the run's deadline as they would in real time.
pub fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(tokio::time::Instant::now().into_std())
}

/// A per-request timeout: `limit`, but never past the deadline.
pub fn request_timeout(limit: Duration, deadline: Instant) -> Duration {
    limit.min(remaining(deadline)).max(Duration::from_millis(1))
}

/// What one attempt of an [`Exchange`] came to.
#[derive(Debug)]
pub enum Attempt<T, E> {
    /// The exchange is over: its answer or its error.
    Done(Result<T, E>),
    /// Try again at once, without a wait (a refreshed credential).
    Again,
    /// Sending failed; `retry_safe` when sending again cannot do the work twice.
    Failed { error: E, retry_safe: bool },
    /// A retry-safe server error: backed off and retried; the outcome stands
    /// when the retries are spent or the deadline is near.
    Unavailable(Result<T, E>),
    /// A 429: waited out as `Retry-After` says (see
    /// [`RetryPolicy::rate_limit_delay`]); `error` when it cannot be.
    RateLimited {
        retry_after: Option<Duration>,
        error: E,
    },
}

/// One client's part of a request that [`send_with_retry`] repeats.
pub trait Exchange {
    type Answer;
    type Error;
    /// Labels the retries in `zoomwire_effect_retries_total`.
    const CLIENT: &'static str;

    /// Sends the request once (with what each attempt needs, such as a
    /// token) and says what the answer means.
    fn attempt(&mut self) -> impl Future<Output = Attempt<Self::Answer, Self::Error>> + Send;

    /// The error when a 429's wait would pass the run's deadline.
    fn outlasts_deadline(&self, error: Self::Error, past: PastDeadline) -> Self::Error;
}

/// Runs an exchange's attempts under `policy` until one is final: 429s are
/// waited out (at most `rate_limit_retries` times), retry-safe failures backed
/// off (at most `attempts` in all), and no wait passes `deadline`.
pub async fn send_with_retry<X: Exchange>(
    exchange: &mut X,
    policy: &RetryPolicy,
    deadline: Instant,
) -> Result<X::Answer, X::Error> {
    let mut backoff = policy.backoff();
    let mut rate_limited = 0;
    loop {
        let outcome = match exchange.attempt().await {
            Attempt::Done(outcome) => return outcome,
            Attempt::Again => continue,
            Attempt::Failed {
                error,
                retry_safe: false,
            } => return Err(error),
            Attempt::Failed { error, .. } => Err(error),
            Attempt::Unavailable(outcome) => outcome,
            Attempt::RateLimited { retry_after, error } => {
                rate_limited += 1;
                if rate_limited > policy.rate_limit_retries {
                    return Err(error);
                }
                let delay = policy.rate_limit_delay(retry_after);
                if let Err(past) = wait_within(deadline, delay).await {
                    return Err(exchange.outlasts_deadline(error, past));
                }
                count_retry(X::CLIENT);
                continue;
            }
        };
        match backoff.next() {
            Some(delay) if wait_within(deadline, delay).await.is_ok() => count_retry(X::CLIENT),
            _ => return outcome,
        }
    }
}

fn count_retry(client: &'static str) {
    metrics::counter!("zoomwire_effect_retries_total", "client" => client).increment(1);
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

    /// Attempts that answer from a script, counting how often they were sent.
    struct Scripted {
        answers: std::collections::VecDeque<Attempt<&'static str, String>>,
        sent: u32,
    }

    impl Exchange for Scripted {
        type Answer = &'static str;
        type Error = String;
        const CLIENT: &'static str = "test";

        async fn attempt(&mut self) -> Attempt<&'static str, String> {
            self.sent += 1;
            self.answers
                .pop_front()
                .expect("no attempt past the script")
        }

        fn outlasts_deadline(&self, error: String, past: PastDeadline) -> String {
            format!("{error}; {past}")
        }
    }

    fn scripted(answers: Vec<Attempt<&'static str, String>>) -> Scripted {
        Scripted {
            answers: answers.into(),
            sent: 0,
        }
    }

    fn rate_limited(seconds: u64) -> Attempt<&'static str, String> {
        Attempt::RateLimited {
            retry_after: Some(Duration::from_secs(seconds)),
            error: "429".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waits_out_a_retry_after_then_answers() {
        let mut exchange = scripted(vec![rate_limited(2), Attempt::Done(Ok("ok"))]);
        let started = tokio::time::Instant::now();
        let deadline = Instant::now() + Duration::from_secs(10);
        let answer = send_with_retry(&mut exchange, &RetryPolicy::default(), deadline).await;
        assert_eq!(answer, Ok("ok"));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(exchange.sent, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_past_the_deadline_fails_at_once() {
        let mut exchange = scripted(vec![rate_limited(30)]);
        let started = tokio::time::Instant::now();
        let deadline = Instant::now() + Duration::from_secs(3);
        let error = send_with_retry(&mut exchange, &RetryPolicy::default(), deadline)
            .await
            .unwrap_err();
        assert!(error.starts_with("429; waiting 30s would pass"), "{error}");
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_after_the_allowed_rate_limits() {
        let policy = RetryPolicy {
            rate_limit_retries: 2,
            ..RetryPolicy::default()
        };
        let mut exchange = scripted((0..3).map(|_| rate_limited(1)).collect());
        let deadline = Instant::now() + Duration::from_secs(60);
        let error = send_with_retry(&mut exchange, &policy, deadline).await;
        assert_eq!(error, Err("429".to_string()));
        assert_eq!(exchange.sent, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn backs_off_what_is_safe_to_repeat_and_keeps_the_last_outcome() {
        let policy = RetryPolicy {
            attempts: 3,
            ..RetryPolicy::default()
        };
        let unsafe_failure = Attempt::Failed {
            error: "refused".to_string(),
            retry_safe: false,
        };
        let mut exchange = scripted(vec![unsafe_failure]);
        let deadline = Instant::now() + Duration::from_secs(60);
        let error = send_with_retry(&mut exchange, &policy, deadline).await;
        assert_eq!((error, exchange.sent), (Err("refused".to_string()), 1));

        let mut exchange = scripted(vec![
            Attempt::Failed {
                error: "reset".to_string(),
                retry_safe: true,
            },
            Attempt::Again,
            Attempt::Unavailable(Ok("503")),
            Attempt::Unavailable(Ok("503 again")),
        ]);
        let answer = send_with_retry(&mut exchange, &policy, deadline).await;
        assert_eq!((answer, exchange.sent), (Ok("503 again"), 4));
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
