//! Slack behind `slack::post` (the Web API's `chat.postMessage` with the bot
//! token) and `slack::webhook` (incoming webhooks configured by name; the
//! `default` one comes from `SLACK_WEBHOOK_URL`).
//!
//! Slack answers most failures with HTTP 200 and `{"ok": false, "error":
//! "channel_not_found"}`: that code becomes the effect error's `code`. A 429
//! carries `Retry-After` in seconds and is waited out within the run's
//! deadline; posting is not idempotent, so other failures are retried here
//! only when the request surely did nothing (connection refused, 503). The
//! retry loop is [`crate::http_retry::send_with_retry`].
//! Webhook URLs and the token are secrets: no message names them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use url::Url;

use super::{EffectError, EffectErrorKind, EffectName};
use crate::http_retry::{
    self, Attempt, Exchange, PastDeadline, RetryPolicy, describe_error, read_body_capped,
    request_timeout, retry_safe_error, retry_safe_status, send_with_retry,
};

/// Slack error codes that are worth another try later.
const TRANSIENT_CODES: &[&str] = &[
    "ratelimited",
    "rate_limited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
];

/// Settings of the Slack client.
#[derive(Clone)]
pub struct SlackConfig {
    /// `https://slack.com/api` (`SLACK_API_BASE`).
    pub api_base: Url,
    pub bot_token: Option<SecretString>,
    /// Incoming webhook URLs by name.
    pub webhooks: BTreeMap<String, SecretString>,
    pub max_response_bytes: usize,
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
}

/// An answer from Slack, read in full.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

/// The Slack effects.
pub struct SlackClient {
    client: reqwest::Client,
    config: SlackConfig,
}

impl SlackClient {
    pub fn new(client: reqwest::Client, config: SlackConfig) -> SlackClient {
        SlackClient { client, config }
    }

    /// `slack.post`: `{channel, text?, blocks?, thread_ts?}`, answered with `{ok, channel, ts}`.
    pub async fn post(&self, args: &Value, deadline: Instant) -> Result<Value, EffectError> {
        const EFFECT: &str = EffectName::SlackPost.as_str();
        let message = post_body(args)?;
        let token = self.config.bot_token.as_ref().ok_or_else(|| {
            EffectError::permanent(
                EFFECT,
                "SLACK_BOT_TOKEN is not set: slack::post needs a bot token",
            )
        })?;
        let url = format!(
            "{}/chat.postMessage",
            self.config.api_base.as_str().trim_end_matches('/')
        );
        let url = Url::parse(&url)
            .map_err(|e| EffectError::permanent(EFFECT, format!("slack api base: {e}")))?;
        let answer = self
            .send(EFFECT, &url, Some(token), &message, deadline)
            .await?;
        let parsed: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        if !answer.status.is_success() && parsed.get("ok").is_none() {
            return Err(status_error(EFFECT, &answer));
        }
        if parsed.get("ok").and_then(Value::as_bool) != Some(true) {
            let code = parsed
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown_error");
            return Err(slack_error(EFFECT, code, Some(answer.status)));
        }
        if let Some(warning) = parsed.get("warning").and_then(Value::as_str) {
            tracing::info!(warning, "slack warned about a posted message");
        }
        Ok(json!({
            "ok": true,
            "channel": parsed.get("channel").cloned().unwrap_or(Value::Null),
            "ts": parsed.get("ts").cloned().unwrap_or(Value::Null),
        }))
    }

    /// `slack.webhook`: `{name, text?, payload?}`, answered with `{ok: true}`.
    pub async fn webhook(&self, args: &Value, deadline: Instant) -> Result<Value, EffectError> {
        const EFFECT: &str = EffectName::SlackWebhook.as_str();
        let name = match args.get("name") {
            None | Some(Value::Null) => "default",
            Some(Value::String(name)) => name.as_str(),
            Some(_) => return Err(EffectError::permanent(EFFECT, "`name` must be a string")),
        };
        let payload = webhook_body(args)?;
        let webhook = self.config.webhooks.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.config.webhooks.keys().map(String::as_str).collect();
            EffectError::permanent(
                EFFECT,
                format!(
                    "no slack webhook named `{name}` (configured: {}); `default` comes from SLACK_WEBHOOK_URL",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
            )
        })?;
        let url = Url::parse(webhook.expose_secret()).map_err(|_| {
            EffectError::permanent(EFFECT, format!("slack webhook `{name}` is not a valid url"))
        })?;
        let answer = self.send(EFFECT, &url, None, &payload, deadline).await?;
        if answer.status.is_success() {
            return Ok(json!({"ok": true}));
        }
        let text = String::from_utf8_lossy(&answer.body).trim().to_string();
        if !text.is_empty() && text.len() <= 64 && !text.contains(char::is_whitespace) {
            return Err(slack_error(EFFECT, &text, Some(answer.status)));
        }
        Err(status_error(EFFECT, &answer))
    }

    /// POSTs JSON, waiting out 429s and retrying what cannot post twice.
    async fn send(
        &self,
        effect: &'static str,
        url: &Url,
        token: Option<&SecretString>,
        body: &Value,
        deadline: Instant,
    ) -> Result<Answer, EffectError> {
        let mut post = SlackPost {
            slack: self,
            effect,
            url,
            token,
            body: body.to_string(),
            deadline,
        };
        send_with_retry(&mut post, &self.config.retry, deadline).await
    }
}

/// One message's attempts.
struct SlackPost<'a> {
    slack: &'a SlackClient,
    effect: &'static str,
    url: &'a Url,
    token: Option<&'a SecretString>,
    body: String,
    deadline: Instant,
}

impl Exchange for SlackPost<'_> {
    type Answer = Answer;
    type Error = EffectError;
    const CLIENT: &'static str = "slack";

    async fn attempt(&mut self) -> Attempt<Answer, EffectError> {
        let config = &self.slack.config;
        let mut request = self
            .slack
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json; charset=utf-8")
            .timeout(request_timeout(config.request_timeout, self.deadline))
            .body(self.body.clone());
        if let Some(token) = self.token {
            request = request.bearer_auth(token.expose_secret());
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                let retry_safe = retry_safe_error(&Method::POST, &error);
                let message = format!("slack: {}", describe_error(error));
                let error = EffectError::transient(self.effect, message);
                return Attempt::Failed { error, retry_safe };
            }
        };
        let status = response.status();
        metrics::counter!("zoomwire_slack_responses_total", "status" => status.as_u16().to_string())
            .increment(1);
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Attempt::RateLimited {
                retry_after: http_retry::retry_after(response.headers()),
                error: slack_error(self.effect, "ratelimited", Some(status)),
            };
        }
        let answer = read_body_capped(response, config.max_response_bytes)
            .await
            .map(|body| Answer { status, body })
            .map_err(|e| EffectError::transient(self.effect, format!("slack: {e}")));
        if retry_safe_status(&Method::POST, status) {
            return Attempt::Unavailable(answer);
        }
        Attempt::Done(answer)
    }

    fn outlasts_deadline(&self, mut error: EffectError, past: PastDeadline) -> EffectError {
        error.message = format!("{}; {past}", error.message);
        error
    }
}

/// The `chat.postMessage` body from `slack.post` arguments.
fn post_body(args: &Value) -> Result<Value, EffectError> {
    const EFFECT: &str = EffectName::SlackPost.as_str();
    let bad = |message: &str| EffectError::permanent(EFFECT, message);
    let channel = args
        .get("channel")
        .and_then(Value::as_str)
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| bad("`channel` must be a channel name or id"))?;
    let mut body = Map::new();
    body.insert("channel".into(), Value::from(channel));
    match args.get("text") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => {
            body.insert("text".into(), Value::from(text.as_str()));
        }
        Some(_) => return Err(bad("`text` must be a string")),
    }
    match args.get("blocks") {
        None | Some(Value::Null) => {}
        Some(Value::Array(blocks)) => {
            body.insert("blocks".into(), Value::Array(blocks.clone()));
        }
        Some(_) => return Err(bad("`blocks` must be a list of Block Kit blocks")),
    }
    if !body.contains_key("text") && !body.contains_key("blocks") {
        return Err(bad("a message needs `text` or `blocks`"));
    }
    match args.get("thread_ts") {
        None | Some(Value::Null) => {}
        Some(Value::String(ts)) => {
            body.insert("thread_ts".into(), Value::from(ts.as_str()));
        }
        Some(Value::Number(ts)) => {
            body.insert("thread_ts".into(), Value::from(ts.to_string()));
        }
        Some(_) => return Err(bad("`thread_ts` must be a string")),
    }
    Ok(Value::Object(body))
}

/// The webhook body: `payload` as given, else `{text}`.
fn webhook_body(args: &Value) -> Result<Value, EffectError> {
    match (args.get("payload"), args.get("text")) {
        (Some(Value::Object(payload)), _) => Ok(Value::Object(payload.clone())),
        (None | Some(Value::Null), Some(Value::String(text))) => Ok(json!({"text": text})),
        _ => Err(EffectError::permanent(
            EffectName::SlackWebhook.as_str(),
            "a webhook message needs `text` (a string) or `payload` (a map)",
        )),
    }
}

fn slack_error(effect: &str, code: &str, status: Option<StatusCode>) -> EffectError {
    let kind = if TRANSIENT_CODES.contains(&code) {
        EffectErrorKind::Transient
    } else {
        EffectErrorKind::Permanent
    };
    EffectError {
        effect: effect.into(),
        kind,
        message: format!("slack answered `{code}`"),
        code: Some(Value::from(code)),
        status: status.map(|s| s.as_u16()),
    }
}

fn status_error(effect: &str, answer: &Answer) -> EffectError {
    let kind = if answer.status.is_server_error() {
        EffectErrorKind::Transient
    } else {
        EffectErrorKind::Permanent
    };
    EffectError {
        effect: effect.into(),
        kind,
        message: format!("slack answered http {}", answer.status.as_u16()),
        code: None,
        status: Some(answer.status.as_u16()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_post_messages() {
        assert_eq!(
            post_body(&json!({"channel": "#a", "text": "hi", "thread_ts": 1700000000.5})).unwrap(),
            json!({"channel": "#a", "text": "hi", "thread_ts": "1700000000.5"})
        );
        assert_eq!(
            post_body(&json!({"channel": "C1", "blocks": [{"type": "divider"}]})).unwrap(),
            json!({"channel": "C1", "blocks": [{"type": "divider"}]})
        );
    }

    #[test]
    fn refuses_malformed_posts() {
        for (args, message) in [
            (
                json!({"text": "hi"}),
                "`channel` must be a channel name or id",
            ),
            (
                json!({"channel": "#a"}),
                "a message needs `text` or `blocks`",
            ),
            (
                json!({"channel": "#a", "text": 5}),
                "`text` must be a string",
            ),
            (
                json!({"channel": "#a", "blocks": "x"}),
                "`blocks` must be a list of Block Kit blocks",
            ),
        ] {
            assert_eq!(post_body(&args).unwrap_err().message, message);
        }
    }

    #[test]
    fn builds_webhook_bodies() {
        assert_eq!(
            webhook_body(&json!({"text": "hi"})).unwrap(),
            json!({"text": "hi"})
        );
        assert_eq!(
            webhook_body(&json!({"payload": {"blocks": []}, "text": "x"})).unwrap(),
            json!({"blocks": []})
        );
        assert!(webhook_body(&json!({})).is_err());
    }

    #[test]
    fn classifies_slack_error_codes() {
        let error = slack_error("slack.post", "channel_not_found", None);
        assert_eq!(error.kind, EffectErrorKind::Permanent);
        assert_eq!(error.code, Some(json!("channel_not_found")));
        assert_eq!(error.message, "slack answered `channel_not_found`");
        assert!(slack_error("slack.post", "ratelimited", None).is_transient());
    }
}
