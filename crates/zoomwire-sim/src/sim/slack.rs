//! The simulated Slack: `POST /slack/api/chat.postMessage` (Web API, Bearer
//! bot token, answers HTTP 200 with `{"ok": ...}` as Slack does) and incoming
//! webhooks at `POST /slack/webhook/{name}` (answer the text `ok`).
//!
//! Errors follow Slack: `not_authed` without a token, `invalid_auth` with a
//! wrong one, `channel_not_found` for a channel that does not exist, `no_text`
//! without text or blocks. Accepted messages are kept as [`SlackPost`]s.
//!
//! [`SlackPost`]: super::record::SlackPost

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::record::SlackPost;
use super::state::{SimState, lock};

pub(crate) fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route("/slack/api/chat.postMessage", post(post_message))
        .route(
            "/slack/api/{method}",
            post(unknown_method).get(unknown_method),
        )
        .route("/slack/webhook/{name}", post(webhook))
}

fn slack_error(error: &str) -> Response {
    axum::Json(json!({ "ok": false, "error": error })).into_response()
}

/// A JSON body, or a form body turned into a JSON object.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Option<Value> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if is_form {
        let map = url::form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect();
        return Some(Value::Object(map));
    }
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
}

/// A stable channel id for a channel name.
fn channel_id(name: &str) -> String {
    let hash = name
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    format!("C{:010X}", hash % 0xFF_FFFF_FFFF)
}

fn looks_like_channel_id(channel: &str) -> bool {
    channel.len() >= 9
        && matches!(channel.as_bytes()[0], b'C' | b'G' | b'D')
        && channel
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

impl SimState {
    /// The id of `channel` if it exists.
    fn find_channel(&self, channel: &str) -> Option<String> {
        if looks_like_channel_id(channel) {
            return Some(channel.to_string());
        }
        let name = channel.trim_start_matches('#');
        self.config
            .slack_channels
            .iter()
            .any(|c| c.trim_start_matches('#') == name)
            .then(|| channel_id(name))
    }

    fn next_ts(&self) -> String {
        let count = lock(&self.slack_posts).len() as u64 + 1;
        format!("{}.{:06}", chrono::Utc::now().timestamp(), count)
    }
}

async fn post_message(
    State(sim): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received_at_micros = chrono::Utc::now().timestamp_micros();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        None => return slack_error("not_authed"),
        Some(token) if token.trim() != sim.config.slack_bot_token => {
            return slack_error("invalid_auth");
        }
        Some(_) => {}
    }
    let Some(message) = parse_body(&headers, &body) else {
        return slack_error("invalid_json");
    };
    let Some(channel) = message["channel"].as_str().filter(|c| !c.is_empty()) else {
        return slack_error("channel_not_found");
    };
    let Some(channel_id) = sim.find_channel(channel) else {
        return slack_error("channel_not_found");
    };
    let text = message["text"].as_str().map(str::to_string);
    let has_blocks = message["blocks"].as_array().is_some_and(|b| !b.is_empty())
        || message["blocks"].as_str().is_some_and(|b| !b.is_empty());
    if text.as_deref().is_none_or(str::is_empty) && !has_blocks {
        return slack_error("no_text");
    }
    let ts = sim.next_ts();
    lock(&sim.slack_posts).push(SlackPost {
        via: "chat.postMessage".into(),
        channel: Some(channel.to_string()),
        text: text.clone(),
        body: message.clone(),
        ts: Some(ts.clone()),
        received_at_micros,
    });
    axum::Json(json!({
        "ok": true,
        "channel": channel_id,
        "ts": ts,
        "message": { "type": "message", "text": text.unwrap_or_default(), "ts": ts, "bot_id": "BSIM000001" },
    }))
    .into_response()
}

async fn unknown_method() -> Response {
    slack_error("unknown_method")
}

async fn webhook(
    State(sim): State<Arc<SimState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received_at_micros = chrono::Utc::now().timestamp_micros();
    let Some(message) = parse_body(&headers, &body) else {
        return (StatusCode::BAD_REQUEST, "invalid_payload").into_response();
    };
    let text = message["text"].as_str().map(str::to_string);
    let has_blocks = message["blocks"].as_array().is_some_and(|b| !b.is_empty());
    if text.as_deref().is_none_or(str::is_empty) && !has_blocks {
        return (StatusCode::BAD_REQUEST, "no_text").into_response();
    }
    lock(&sim.slack_posts).push(SlackPost {
        via: format!("webhook:{name}"),
        channel: message["channel"].as_str().map(str::to_string),
        text,
        body: message,
        ts: None,
        received_at_micros,
    });
    (StatusCode::OK, "ok").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_ids_are_recognised_and_names_hashed_stably() {
        assert!(looks_like_channel_id("C0123ABCDE"));
        assert!(!looks_like_channel_id("#general"));
        assert_eq!(channel_id("general"), channel_id("general"));
        assert_ne!(channel_id("general"), channel_id("ops"));
        assert!(looks_like_channel_id(&channel_id("general")));
    }
}
