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

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hyper::body::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};
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

/// The `Content-Type` of every body sent to Slack.
const JSON_CONTENT: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");

/// The Slack effects.
pub struct SlackClient {
    client: reqwest::Client,
    config: SlackConfig,
    /// `chat.postMessage` under the API base, parsed once.
    post_url: Result<Url, url::ParseError>,
    /// `Authorization: Bearer <bot token>`, built once and marked sensitive
    /// (hidden from `Debug` and HPACK); `None` without a token or when the
    /// token cannot be a header value (then each post builds it and fails
    /// as it always did).
    bearer: Option<HeaderValue>,
}

impl SlackClient {
    pub fn new(client: reqwest::Client, config: SlackConfig) -> SlackClient {
        let post_url = Url::parse(&format!(
            "{}/chat.postMessage",
            config.api_base.as_str().trim_end_matches('/')
        ));
        let bearer = config.bot_token.as_ref().and_then(|token| {
            let mut value =
                HeaderValue::try_from(format!("Bearer {}", token.expose_secret())).ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        SlackClient {
            client,
            config,
            post_url,
            bearer,
        }
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
        let url = self
            .post_url
            .as_ref()
            .map_err(|e| EffectError::permanent(EFFECT, format!("slack api base: {e}")))?;
        let answer = self
            .send(EFFECT, url, Some(token), message, deadline)
            .await?;
        let parsed = PostAnswer::parse(&answer.body);
        if !answer.status.is_success() && parsed.ok.is_none() {
            return Err(status_error(EFFECT, &answer));
        }
        if parsed.ok.as_ref().and_then(Value::as_bool) != Some(true) {
            let code = parsed
                .error
                .as_ref()
                .and_then(Value::as_str)
                .unwrap_or("unknown_error");
            return Err(slack_error(EFFECT, code, Some(answer.status)));
        }
        if let Some(warning) = parsed.warning.as_ref().and_then(Value::as_str) {
            tracing::info!(warning, "slack warned about a posted message");
        }
        let mut shown = Map::new();
        shown.insert("ok".into(), Value::Bool(true));
        shown.insert("channel".into(), parsed.channel.unwrap_or(Value::Null));
        shown.insert("ts".into(), parsed.ts.unwrap_or(Value::Null));
        Ok(Value::Object(shown))
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
        let answer = self.send(EFFECT, &url, None, payload, deadline).await?;
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
        body: Bytes,
        deadline: Instant,
    ) -> Result<Answer, EffectError> {
        let mut post = SlackPost {
            slack: self,
            effect,
            url,
            token,
            body,
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
    /// The JSON body, shared by every attempt without a copy.
    body: Bytes,
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
            .header(CONTENT_TYPE, JSON_CONTENT)
            .timeout(request_timeout(config.request_timeout, self.deadline))
            .body(self.body.clone());
        match (self.token, &self.slack.bearer) {
            (Some(_), Some(bearer)) => request = request.header(AUTHORIZATION, bearer.clone()),
            (Some(token), None) => request = request.bearer_auth(token.expose_secret()),
            (None, _) => {}
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

/// A `chat.postMessage` body, serialized straight from the script's
/// arguments (no intermediate JSON value). The fields are in the order a
/// JSON map sorts them, so the bytes are those of the map it replaces.
#[derive(Serialize)]
struct PostMessage<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    blocks: Option<&'a [Value]>,
    channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thread_ts: Option<Cow<'a, str>>,
}

/// The `chat.postMessage` body from `slack.post` arguments.
fn post_body(args: &Value) -> Result<Bytes, EffectError> {
    const EFFECT: &str = EffectName::SlackPost.as_str();
    let bad = |message: &str| EffectError::permanent(EFFECT, message);
    let channel = args
        .get("channel")
        .and_then(Value::as_str)
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| bad("`channel` must be a channel name or id"))?;
    let text = match args.get("text") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.as_str()),
        Some(_) => return Err(bad("`text` must be a string")),
    };
    let blocks = match args.get("blocks") {
        None | Some(Value::Null) => None,
        Some(Value::Array(blocks)) => Some(blocks.as_slice()),
        Some(_) => return Err(bad("`blocks` must be a list of Block Kit blocks")),
    };
    if text.is_none() && blocks.is_none() {
        return Err(bad("a message needs `text` or `blocks`"));
    }
    let thread_ts = match args.get("thread_ts") {
        None | Some(Value::Null) => None,
        Some(Value::String(ts)) => Some(Cow::Borrowed(ts.as_str())),
        Some(Value::Number(ts)) => Some(Cow::Owned(ts.to_string())),
        Some(_) => return Err(bad("`thread_ts` must be a string")),
    };
    let message = PostMessage {
        blocks,
        channel,
        text,
        thread_ts,
    };
    Ok(to_json_bytes(&message))
}

/// The webhook body: `payload` as given, else `{text}`.
fn webhook_body(args: &Value) -> Result<Bytes, EffectError> {
    match (args.get("payload"), args.get("text")) {
        (Some(payload @ Value::Object(_)), _) => Ok(to_json_bytes(payload)),
        (None | Some(Value::Null), Some(Value::String(text))) => {
            Ok(to_json_bytes(&json!({"text": text})))
        }
        _ => Err(EffectError::permanent(
            EffectName::SlackWebhook.as_str(),
            "a webhook message needs `text` (a string) or `payload` (a map)",
        )),
    }
}

fn to_json_bytes(body: &impl Serialize) -> Bytes {
    // JSON values and string-keyed structs always serialize.
    Bytes::from(serde_json::to_vec(body).unwrap_or_default())
}

/// The fields of Slack's answer to `chat.postMessage` that count, read
/// without building the whole answer (its `message` echo is skipped). A
/// field present as `null` is `Some(Value::Null)`, as in the answer.
#[derive(Debug, Default, PartialEq, Deserialize)]
struct PostAnswer {
    #[serde(default, deserialize_with = "present")]
    ok: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    error: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    warning: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    channel: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    ts: Option<Value>,
}

impl PostAnswer {
    /// The answer's fields; none when it is not a JSON object. An object
    /// the struct refuses (a key twice) is read as a whole value, last key
    /// winning, as Slack's answers always were.
    fn parse(body: &[u8]) -> PostAnswer {
        // Only an object: a struct would also take a JSON array, by position.
        let object = body.trim_ascii_start().first() == Some(&b'{');
        if object && let Ok(answer) = serde_json::from_slice::<PostAnswer>(body) {
            return answer;
        }
        let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(body) else {
            return PostAnswer::default();
        };
        PostAnswer {
            ok: map.remove("ok"),
            error: map.remove("error"),
            warning: map.remove("warning"),
            channel: map.remove("channel"),
            ts: map.remove("ts"),
        }
    }
}

fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
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

    fn json_of(body: Bytes) -> Value {
        serde_json::from_slice(&body).unwrap()
    }

    #[test]
    fn builds_post_messages() {
        assert_eq!(
            json_of(
                post_body(&json!({"channel": "#a", "text": "hi", "thread_ts": 1700000000.5}))
                    .unwrap()
            ),
            json!({"channel": "#a", "text": "hi", "thread_ts": "1700000000.5"})
        );
        assert_eq!(
            json_of(post_body(&json!({"channel": "C1", "blocks": [{"type": "divider"}]})).unwrap()),
            json!({"channel": "C1", "blocks": [{"type": "divider"}]})
        );
    }

    #[test]
    fn post_bodies_are_the_bytes_of_the_json_map() {
        // What the body was before it was serialized straight from the arguments.
        let as_map = |body: Value| Bytes::from(body.to_string());
        let args = json!({
            "channel": "#a", "text": "t=1 \"q\" é\n", "thread_ts": "1.2",
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "*x*"}}],
            "ignored": 1,
        });
        assert_eq!(
            post_body(&args).unwrap(),
            as_map(json!({
                "channel": "#a", "text": "t=1 \"q\" é\n", "thread_ts": "1.2",
                "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "*x*"}}],
            }))
        );
        assert_eq!(
            post_body(&json!({"channel": "C1", "text": "hi", "blocks": null})).unwrap(),
            as_map(json!({"channel": "C1", "text": "hi"}))
        );
    }

    #[test]
    fn reads_post_answers_as_a_json_value_would() {
        let answer = PostAnswer::parse(
            br#"{"ok":true,"channel":"C1","ts":"1.2","message":{"text":"hi","blocks":[1,2]}}"#,
        );
        assert_eq!(answer.ok, Some(json!(true)));
        assert_eq!(
            (answer.channel, answer.ts),
            (Some(json!("C1")), Some(json!("1.2")))
        );
        assert_eq!(answer.error, None);
        // Present as null is not absent (an error status keeps its `ok`).
        assert_eq!(PostAnswer::parse(br#"{"ok":null}"#).ok, Some(Value::Null));
        // Not an object, or not JSON: nothing.
        assert_eq!(PostAnswer::parse(br#"[true,"e"]"#), PostAnswer::default());
        assert_eq!(
            PostAnswer::parse(b"<html>busy</html>"),
            PostAnswer::default()
        );
        assert_eq!(PostAnswer::parse(b""), PostAnswer::default());
        // A key twice: the last one, as a map reads it.
        let twice = PostAnswer::parse(br#"{"ok":false,"error":"a","error":"b"}"#);
        assert_eq!(
            (twice.ok, twice.error),
            (Some(json!(false)), Some(json!("b")))
        );
        // Fields of any type are kept as they are.
        let odd = PostAnswer::parse(br#" {"ok":"yes","error":5,"ts":1.5}"#);
        assert_eq!(
            (odd.ok, odd.error, odd.ts),
            (Some(json!("yes")), Some(json!(5)), Some(json!(1.5)))
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
            Bytes::from(json!({"text": "hi"}).to_string())
        );
        assert_eq!(
            webhook_body(&json!({"payload": {"blocks": []}, "text": "x"})).unwrap(),
            Bytes::from(json!({"blocks": []}).to_string())
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
