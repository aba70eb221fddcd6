//! Zoom's webhooks, the second ingest path: `POST /zoom/webhook`.
//!
//! Types mark trust. A request is an [`UnverifiedWebhook`] (headers and raw
//! bytes) until its `x-zm-signature` checks out, in constant time, over the
//! raw body and a timestamp no more than five minutes away from now; only
//! then is it a [`VerifiedWebhook`] whose body may be parsed. Zoom's
//! `endpoint.url_validation` challenge is answered with the HMAC of its
//! `plainToken`.
//!
//! Zoom wants an answer within 3 seconds, else it retries after 5, 20 and 60
//! minutes, and it never sends again what got a 200. So the handler hands
//! the event to a bounded channel with `try_send` and answers 200 once the
//! journal holds it (a commit, milliseconds), so that a crash after the
//! answer loses nothing. When the channel is full (the engine is behind),
//! closed (shutting down), or the event is not journaled within
//! [`JOURNAL_WAIT`] (a full disk) it answers 503, so that Zoom delivers the
//! event again later rather than it being lost; the journal drops the
//! duplicate if the first delivery did get through. The same event arriving by the WebSocket too is dropped the same
//! way: both paths make the same [`Event`] id.
//!
//! Every answer carries an [`Answered`] mark: the public server
//! (`crate::serve::public`), which also bounds time, size and numbers,
//! counts it and logs refusals at a rate, so that a flood of forged requests
//! does not flood the log.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;

use crate::event::{Event, EventError, Source};
use crate::serve::refusals::Answered;

/// Where Zoom posts events.
pub const WEBHOOK_PATH: &str = "/zoom/webhook";
/// Header carrying `v0=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "x-zm-signature";
/// Header carrying the request time in Unix seconds.
pub const TIMESTAMP_HEADER: &str = "x-zm-request-timestamp";
/// Largest accepted distance between the request's timestamp and now.
pub const MAX_TIMESTAMP_SKEW: Duration = Duration::from_secs(5 * 60);
/// The event type of Zoom's endpoint challenge.
pub const URL_VALIDATION_EVENT: &str = "endpoint.url_validation";
/// How long an answer waits for the event to be journaled: within Zoom's 3 seconds.
const JOURNAL_WAIT: Duration = Duration::from_millis(2500);
/// Seconds Zoom is asked to wait before retrying a 503 (it may use its own schedule).
const RETRY_AFTER_SECONDS: &str = "60";

type HmacSha256 = Hmac<Sha256>;

/// The current time in Unix seconds; injectable so tests can pin it.
pub type UnixClock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock as a [`UnixClock`].
pub fn system_clock() -> UnixClock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    })
}

/// Why a webhook request was refused.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum WebhookError {
    #[error("missing x-zm-signature header")]
    MissingSignature,
    #[error("missing or invalid x-zm-request-timestamp header")]
    BadTimestamp,
    #[error("signature does not match")]
    BadSignature,
    #[error("timestamp is {skew_seconds} s away from now, more than the {max} s allowed", max = MAX_TIMESTAMP_SKEW.as_secs())]
    Stale { skew_seconds: i64 },
    #[error("body is not UTF-8")]
    NotUtf8,
    #[error("malformed event: {0}")]
    Malformed(EventError),
    #[error("endpoint.url_validation without a string payload.plainToken")]
    MissingPlainToken,
}

impl WebhookError {
    /// 401 for anything about authenticity, 413 for size, 400 for the rest.
    pub fn status(&self) -> StatusCode {
        match self {
            WebhookError::MissingSignature
            | WebhookError::BadTimestamp
            | WebhookError::BadSignature
            | WebhookError::Stale { .. } => StatusCode::UNAUTHORIZED,
            WebhookError::Malformed(EventError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            WebhookError::NotUtf8
            | WebhookError::Malformed(_)
            | WebhookError::MissingPlainToken => StatusCode::BAD_REQUEST,
        }
    }

    fn outcome(&self) -> &'static str {
        match self.status() {
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            _ => "malformed",
        }
    }
}

/// A request as received: nothing in it is trusted.
pub struct UnverifiedWebhook {
    signature: Option<String>,
    timestamp: Option<String>,
    body: Bytes,
}

impl UnverifiedWebhook {
    /// Takes the two headers that matter and the raw body.
    pub fn new(headers: &HeaderMap, body: Bytes) -> UnverifiedWebhook {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_string())
        };
        UnverifiedWebhook {
            signature: text(SIGNATURE_HEADER),
            timestamp: text(TIMESTAMP_HEADER),
            body,
        }
    }

    /// Checks the signature (constant time) and the timestamp against `now`
    /// (Unix seconds). The timestamp is read as milliseconds when it is too
    /// large to be seconds.
    pub fn verify(self, secret: &SecretString, now: i64) -> Result<VerifiedWebhook, WebhookError> {
        let signature = self.signature.ok_or(WebhookError::MissingSignature)?;
        let timestamp_text = self.timestamp.ok_or(WebhookError::BadTimestamp)?;
        let timestamp: i64 = timestamp_text
            .parse()
            .map_err(|_| WebhookError::BadTimestamp)?;
        let provided = signature
            .strip_prefix("v0=")
            .and_then(|hex_text| hex::decode(hex_text).ok())
            .ok_or(WebhookError::BadSignature)?;
        let expected = signature_bytes(secret, &timestamp_text, &self.body);
        if !bool::from(expected.as_slice().ct_eq(provided.as_slice())) {
            return Err(WebhookError::BadSignature);
        }
        let seconds = if timestamp > 100_000_000_000 {
            timestamp / 1000
        } else {
            timestamp
        };
        let skew_seconds = now.saturating_sub(seconds).saturating_abs();
        if skew_seconds > MAX_TIMESTAMP_SKEW.as_secs() as i64 {
            return Err(WebhookError::Stale { skew_seconds });
        }
        Ok(VerifiedWebhook {
            timestamp: seconds,
            body: self.body,
        })
    }
}

/// A request whose signature and timestamp checked out.
pub struct VerifiedWebhook {
    timestamp: i64,
    body: Bytes,
}

impl std::fmt::Debug for VerifiedWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedWebhook")
            .field("timestamp", &self.timestamp)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// What a verified request asks for.
#[derive(Debug)]
pub enum WebhookMessage {
    /// Zoom's endpoint challenge: answer [`url_validation_answer`].
    UrlValidation { plain_token: String },
    /// An event for the engine.
    Event(Box<Event>),
}

impl VerifiedWebhook {
    /// The request time, Unix seconds.
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }

    /// The raw body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Parses the body (once) into an event or the URL challenge.
    pub fn into_message(self) -> Result<WebhookMessage, WebhookError> {
        let text = std::str::from_utf8(&self.body).map_err(|_| WebhookError::NotUtf8)?;
        let event =
            Event::parse_for_matching(text, Source::Webhook).map_err(WebhookError::Malformed)?;
        if event.event_type != URL_VALIDATION_EVENT {
            return Ok(WebhookMessage::Event(Box::new(event)));
        }
        let body = event.body_json();
        let plain_token = body
            .pointer("/payload/plainToken")
            .and_then(|v| v.as_str())
            .filter(|t| !t.is_empty())
            .ok_or(WebhookError::MissingPlainToken)?;
        Ok(WebhookMessage::UrlValidation {
            plain_token: plain_token.to_string(),
        })
    }
}

fn hmac_sha256(secret: &SecretString, parts: &[&[u8]]) -> Vec<u8> {
    // Cannot fail: HMAC accepts keys of any length.
    let mut mac = HmacSha256::new_from_slice(secret.expose_secret().as_bytes())
        .expect("hmac takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn signature_bytes(secret: &SecretString, timestamp: &str, body: &[u8]) -> Vec<u8> {
    hmac_sha256(secret, &[b"v0:", timestamp.as_bytes(), b":", body])
}

/// The `x-zm-signature` value Zoom sends for this timestamp and body:
/// `v0=` + hex HMAC-SHA256(secret, `v0:{timestamp}:{body}`). Used by the
/// simulator and tests.
pub fn sign(secret: &SecretString, timestamp: &str, body: &[u8]) -> String {
    format!(
        "v0={}",
        hex::encode(signature_bytes(secret, timestamp, body))
    )
}

/// The answer to `endpoint.url_validation`:
/// `{"plainToken": P, "encryptedToken": hex HMAC-SHA256(secret, P)}`.
pub fn url_validation_answer(secret: &SecretString, plain_token: &str) -> serde_json::Value {
    serde_json::json!({
        "plainToken": plain_token,
        "encryptedToken": hex::encode(hmac_sha256(secret, &[plain_token.as_bytes()])),
    })
}

struct WebhookState {
    secret: SecretString,
    events: mpsc::Sender<Event>,
    clock: UnixClock,
}

/// `POST /zoom/webhook`: verifies, answers at once and hands events to
/// `events` (see the module notes for 503). Bodies over `body_limit` bytes
/// get 413.
pub fn webhook_router(
    secret: SecretString,
    events: mpsc::Sender<Event>,
    body_limit: usize,
) -> Router {
    webhook_router_with_clock(secret, events, body_limit, system_clock())
}

/// [`webhook_router`] with the clock used for the timestamp check.
pub fn webhook_router_with_clock(
    secret: SecretString,
    events: mpsc::Sender<Event>,
    body_limit: usize,
    clock: UnixClock,
) -> Router {
    let state = Arc::new(WebhookState {
        secret,
        events,
        clock,
    });
    Router::new()
        .route(WEBHOOK_PATH, post(receive))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn receive(
    State(state): State<Arc<WebhookState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            let why = rejection.body_text();
            return answer(status.into_response(), Answered::refused("too_large", why));
        }
    };
    let message = UnverifiedWebhook::new(&headers, body)
        .verify(&state.secret, (state.clock)())
        .and_then(VerifiedWebhook::into_message);
    match message {
        Err(error) => refuse(&error),
        Ok(WebhookMessage::UrlValidation { plain_token }) => {
            tracing::info!("answered zoom's webhook url validation");
            let response =
                axum::Json(url_validation_answer(&state.secret, &plain_token)).into_response();
            answer(response, Answered::ok("url_validation"))
        }
        Ok(WebhookMessage::Event(event)) => hand_over(&state.events, *event).await,
    }
}

/// The refusal, marked for the server, which counts it and logs it at a rate.
fn refuse(error: &WebhookError) -> Response {
    let response = (error.status(), error.to_string()).into_response();
    answer(
        response,
        Answered::refused(error.outcome(), error.to_string()),
    )
}

/// Queues the event and answers 200 once it is journaled, so that a crash
/// after the answer loses nothing (Zoom does not send again what got a 200);
/// 503 with `Retry-After` when the engine cannot take it now or does not
/// journal it within [`JOURNAL_WAIT`] (Zoom's retry is then a duplicate the
/// journal drops, if it was journaled after all).
async fn hand_over(events: &mpsc::Sender<Event>, event: Event) -> Response {
    let (event_type, event_id) = (event.event_type.clone(), event.id.clone());
    let (event, journaled) = event.with_receipt();
    let reason = match events.try_send(event) {
        Ok(()) => match tokio::time::timeout(JOURNAL_WAIT, journaled).await {
            Ok(Ok(())) => {
                tracing::debug!(event_type, event_id, "webhook event accepted");
                return answer(StatusCode::OK.into_response(), Answered::ok("accepted"));
            }
            Ok(Err(_dropped)) => "engine stopping",
            Err(_elapsed) => "not journaled in time",
        },
        Err(mpsc::error::TrySendError::Full(_)) => "engine queue full",
        Err(mpsc::error::TrySendError::Closed(_)) => "engine stopping",
    };
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, reason).into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECONDS),
    );
    let why = format!("{reason}: event {event_type} {event_id} refused with 503, zoom will retry");
    answer(response, Answered::refused("busy", why))
}

fn answer(mut response: Response, answered: Answered) -> Response {
    response.extensions_mut().insert(answered);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test_secret_token";
    const PLAIN_TOKEN: &str = "Xk2pQ7rT9vW4yZ1bN6mC8d";
    const ENCRYPTED_TOKEN: &str =
        "cdaca8da91de38029cac406338475a1e67374e5c5cd02cfedbde42a1c03636b0";
    const TIMESTAMP: &str = "1732030000";
    const BODY: &str = r#"{"event":"endpoint.url_validation","event_ts":1732030000000,"payload":{"plainToken":"Xk2pQ7rT9vW4yZ1bN6mC8d"}}"#;
    const SIGNATURE: &str = "v0=1d4a9ee3ce2444b3076309456f698c86a22ae2d7a8f91ef29cedf2ad775836d9";
    const NOW: i64 = 1_732_030_000;

    fn secret() -> SecretString {
        SecretString::from(SECRET)
    }

    fn request(signature: Option<&str>, timestamp: Option<&str>, body: &str) -> UnverifiedWebhook {
        let mut headers = HeaderMap::new();
        if let Some(signature) = signature {
            headers.insert(SIGNATURE_HEADER, signature.parse().unwrap());
        }
        if let Some(timestamp) = timestamp {
            headers.insert(TIMESTAMP_HEADER, timestamp.parse().unwrap());
        }
        UnverifiedWebhook::new(&headers, Bytes::from(body.to_string()))
    }

    #[test]
    fn url_validation_vector() {
        let answer = url_validation_answer(&secret(), PLAIN_TOKEN);
        assert_eq!(
            answer,
            serde_json::json!({"plainToken": PLAIN_TOKEN, "encryptedToken": ENCRYPTED_TOKEN})
        );
    }

    #[test]
    fn signature_vector() {
        assert_eq!(sign(&secret(), TIMESTAMP, BODY.as_bytes()), SIGNATURE);
    }

    #[test]
    fn the_vector_request_verifies_and_is_a_url_validation() {
        let verified = request(Some(SIGNATURE), Some(TIMESTAMP), BODY)
            .verify(&secret(), NOW + 60)
            .unwrap();
        assert_eq!(verified.timestamp(), NOW);
        assert_eq!(verified.body(), BODY.as_bytes());
        match verified.into_message().unwrap() {
            WebhookMessage::UrlValidation { plain_token } => assert_eq!(plain_token, PLAIN_TOKEN),
            other => panic!("expected a url validation, got {other:?}"),
        }
    }

    #[test]
    fn refuses_a_changed_body_or_signature_or_secret() {
        let tampered = BODY.replace("Xk2p", "Xk2q");
        let error = request(Some(SIGNATURE), Some(TIMESTAMP), &tampered)
            .verify(&secret(), NOW)
            .err();
        assert_eq!(error, Some(WebhookError::BadSignature));
        let mut wrong = SIGNATURE.to_string();
        wrong.replace_range(10..11, "0");
        let error = request(Some(&wrong), Some(TIMESTAMP), BODY)
            .verify(&secret(), NOW)
            .err();
        assert_eq!(error, Some(WebhookError::BadSignature));
        let error = request(Some(SIGNATURE), Some(TIMESTAMP), BODY)
            .verify(&SecretString::from("other"), NOW)
            .err();
        assert_eq!(error, Some(WebhookError::BadSignature));
        // The signed timestamp is part of the signature.
        let error = request(Some(SIGNATURE), Some("1732030001"), BODY)
            .verify(&secret(), NOW)
            .err();
        assert_eq!(error, Some(WebhookError::BadSignature));
        for bad in ["1d4a9e", "v1=1d4a", "v0=zz", "v0="] {
            let error = request(Some(bad), Some(TIMESTAMP), BODY)
                .verify(&secret(), NOW)
                .err();
            assert_eq!(error, Some(WebhookError::BadSignature), "{bad}");
        }
    }

    #[test]
    fn refuses_missing_headers() {
        let error = request(None, Some(TIMESTAMP), BODY)
            .verify(&secret(), NOW)
            .err();
        assert_eq!(error, Some(WebhookError::MissingSignature));
        let error = request(Some(SIGNATURE), None, BODY)
            .verify(&secret(), NOW)
            .err();
        assert_eq!(error, Some(WebhookError::BadTimestamp));
        let error = request(Some(SIGNATURE), Some("yesterday"), BODY)
            .verify(&secret(), NOW)
            .err();
        assert_eq!(error, Some(WebhookError::BadTimestamp));
    }

    #[test]
    fn refuses_timestamps_more_than_five_minutes_away() {
        let verify = |now| request(Some(SIGNATURE), Some(TIMESTAMP), BODY).verify(&secret(), now);
        assert!(verify(NOW + 300).is_ok());
        assert!(verify(NOW - 300).is_ok());
        assert_eq!(
            verify(NOW + 301).err(),
            Some(WebhookError::Stale { skew_seconds: 301 })
        );
        assert_eq!(
            verify(NOW - 301).err(),
            Some(WebhookError::Stale { skew_seconds: 301 })
        );
        let error = verify(NOW + 3600).unwrap_err();
        assert_eq!(error.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            error.to_string(),
            "timestamp is 3600 s away from now, more than the 300 s allowed"
        );
    }

    #[test]
    fn accepts_a_timestamp_in_milliseconds() {
        let millis = "1732030000123";
        let signature = sign(&secret(), millis, BODY.as_bytes());
        let verified = request(Some(&signature), Some(millis), BODY)
            .verify(&secret(), NOW)
            .unwrap();
        assert_eq!(verified.timestamp(), NOW);
    }

    #[test]
    fn parses_events_after_verification() {
        let body = r#"{"event":"meeting.started","event_ts":1732030000000,"payload":{"object":{"id":"1"}}}"#;
        let signature = sign(&secret(), TIMESTAMP, body.as_bytes());
        let message = request(Some(&signature), Some(TIMESTAMP), body)
            .verify(&secret(), NOW)
            .unwrap()
            .into_message()
            .unwrap();
        let WebhookMessage::Event(event) = message else {
            panic!("expected an event");
        };
        assert_eq!(event.event_type, "meeting.started");
        assert_eq!(event.source, Source::Webhook);
        assert_eq!(&*event.raw, body);
    }

    #[test]
    fn malformed_bodies_are_bad_requests() {
        for (body, expected) in [
            ("not json", "malformed event: event is not valid JSON"),
            ("[1]", "malformed event: event is not a JSON object"),
            (
                r#"{"payload":{}}"#,
                "malformed event: event has no string `event` field",
            ),
            (
                r#"{"event":"endpoint.url_validation","payload":{}}"#,
                "endpoint.url_validation without a string payload.plainToken",
            ),
        ] {
            let signature = sign(&secret(), TIMESTAMP, body.as_bytes());
            let error = request(Some(&signature), Some(TIMESTAMP), body)
                .verify(&secret(), NOW)
                .unwrap()
                .into_message()
                .unwrap_err();
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{body}");
            assert!(error.to_string().starts_with(expected), "{error}");
        }
    }
}
