//! What the simulator remembers about the traffic it served: every request
//! (method, raw path exactly as sent, headers and body with secrets removed,
//! the status it answered) and every Slack message it accepted.
//!
//! The raw path is taken from the request's original URI before any
//! decoding, so a test can check that a meeting UUID was encoded twice.
//! Credentials are replaced by a description that names them without
//! showing them (`basic client_id=...`, `bearer token#3`). Requests still
//! being served are listed too (`in_flight`), so that a test can act while a
//! slowed call is in progress.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Serialize;

use super::state::{SimState, lock};

/// Largest request body the simulator reads.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Longest body text kept in a record.
const MAX_RECORDED_BODY: usize = 64 * 1024;
/// Query parameters whose values are secrets.
const SECRET_PARAMS: [&str; 3] = ["access_token", "signature", "token"];
/// Headers never recorded (credentials are described in `auth` instead).
const SECRET_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// One request the simulator served.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedRequest {
    pub method: String,
    /// The path as sent, still percent-encoded.
    pub raw_path: String,
    /// The raw query string with secret values replaced by `[redacted]`.
    pub query: Option<String>,
    /// Headers without credentials, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The credentials presented, described without their secret part.
    pub auth: Option<String>,
    /// The account of the access token presented, if the simulator issued it.
    pub account: Option<String>,
    /// When it arrived, in microseconds since the Unix epoch.
    pub received_at_micros: i64,
    /// The body as text (lossy), cut at 64 KiB.
    pub body: String,
    /// The status the simulator answered.
    pub status: u16,
}

impl RecordedRequest {
    /// The body parsed as JSON, or `Null`.
    pub fn body_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One Slack message the simulator accepted.
#[derive(Debug, Clone, Serialize)]
pub struct SlackPost {
    /// `chat.postMessage` or `webhook:NAME`.
    pub via: String,
    pub channel: Option<String>,
    pub text: Option<String>,
    /// The whole request body as JSON.
    pub body: serde_json::Value,
    /// The `ts` the API answered (webhooks have none).
    pub ts: Option<String>,
    /// When the simulator received it, in microseconds since the Unix epoch
    /// (for latency measurements).
    pub received_at_micros: i64,
}

/// Replaces the values of secret query parameters, keeping the rest raw.
pub(crate) fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if SECRET_PARAMS.contains(&key) => format!("{key}=[redacted]"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl SimState {
    /// The account of a bearer token the simulator issued.
    fn token_account_of(&self, headers: &HeaderMap) -> Option<String> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, credential) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        self.token_account(credential.trim())
    }

    /// Names the presented credentials without showing them.
    fn describe_auth(&self, headers: &HeaderMap) -> Option<String> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, credential) = value.split_once(' ')?;
        let credential = credential.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(credential)
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .unwrap_or_default();
            let client_id = decoded.split(':').next().unwrap_or("");
            return Some(format!("basic client_id={client_id}"));
        }
        let what = if let Some(serial) = self.token_serial(credential) {
            format!("token#{serial}")
        } else if credential == self.config.download_token {
            "download_token".to_string()
        } else if credential == self.config.slack_bot_token {
            "slack_bot_token".to_string()
        } else {
            "unknown".to_string()
        };
        Some(format!("{} {what}", scheme.to_ascii_lowercase()))
    }
}

/// A request being served; forgotten when answered or abandoned (the client
/// went away and the handler's future was dropped).
struct InFlight<'a> {
    sim: &'a SimState,
    number: u64,
}

impl<'a> InFlight<'a> {
    fn start(sim: &'a SimState, request: String) -> InFlight<'a> {
        let number = {
            let mut next = lock(&sim.next_request);
            *next += 1;
            *next
        };
        lock(&sim.in_flight).insert(number, request);
        InFlight { sim, number }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(&self.sim.in_flight).remove(&self.number);
    }
}

/// Middleware: reads the body, runs the request, records both.
pub(crate) async fn record_request(
    State(sim): State<Arc<SimState>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return (axum::http::StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
        }
    };
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| !SECRET_HEADERS.contains(&name.as_str()))
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body_len = bytes.len().min(MAX_RECORDED_BODY);
    let mut record = RecordedRequest {
        method: parts.method.to_string(),
        raw_path: parts.uri.path().to_string(),
        query: parts.uri.query().map(redact_query),
        headers,
        auth: sim.describe_auth(&parts.headers),
        account: sim.token_account_of(&parts.headers),
        received_at_micros: chrono::Utc::now().timestamp_micros(),
        body: String::from_utf8_lossy(&bytes[..body_len]).into_owned(),
        status: 0,
    };
    let in_flight = InFlight::start(&sim, format!("{} {}", record.method, record.raw_path));
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    drop(in_flight);
    record.status = response.status().as_u16();
    lock(&sim.requests).push(record);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_query_values_are_redacted_and_the_rest_kept_raw() {
        assert_eq!(
            redact_query("access_token=abc&subscriptionId=s%2F1&signature=x"),
            "access_token=[redacted]&subscriptionId=s%2F1&signature=[redacted]"
        );
        assert_eq!(redact_query("page_size=300"), "page_size=300");
    }
}
