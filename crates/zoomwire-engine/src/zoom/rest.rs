//! The Zoom REST client behind `zoom::get/post/patch/put/delete/paginate`.
//!
//! Paths are templates relative to the API base: `{name}` placeholders are
//! filled from params, each encoded as one path segment (meeting UUIDs that
//! Zoom wants encoded twice are, see [`crate::zoom::uuid`]); params that fill
//! no placeholder become the query string. Requests pass a client-side rate
//! limiter for the account and carry a bearer token from the account's
//! [`AccessTokens`]. A 401 with Zoom's code 124 (invalid or expired token)
//! drops the token and retries once with a fresh one; other 401s (code 4700,
//! a missing scope) are errors, since minting a token nobody needed may
//! invalidate the one the WebSocket uses. 429s are waited out as
//! `Retry-After` says (or about a second for per-second limits), and 5xx and
//! timeouts retried with backoff, never past the run's deadline (the loop is
//! [`crate::http_retry::send_with_retry`]). Errors keep
//! Zoom's `code`, `message`, `x-zm-trackingid` and, for a 429, what the
//! rate-limit headers said.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{ACCEPT, HeaderMap};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value};
use url::Url;

use crate::http_retry::{
    self, Attempt, Exchange, FailureKind, PastDeadline, RetryPolicy, describe_error,
    read_body_capped, request_timeout, retry_safe_error, retry_safe_status, send_with_retry,
};
use crate::zoom::token::{AccessToken, AccessTokens, TokenError};
use crate::zoom::uuid::encode_uuid;

/// The response header Zoom support asks for when something goes wrong.
pub const TRACKING_ID_HEADER: &str = "x-zm-trackingid";

/// Zoom's largest `page_size`; `paginate` asks for it unless params say otherwise.
pub const MAX_PAGE_SIZE: u32 = 300;

/// Zoom's code for an invalid or expired access token, the only 401 that a
/// new token can fix.
pub const INVALID_TOKEN_CODE: i64 = 124;

/// Settings of the REST client.
#[derive(Debug, Clone)]
pub struct RestConfig {
    /// `https://api.zoom.us/v2` (`ZOOM_API_BASE`).
    pub api_base: Url,
    /// Client-side limit for the account, so rules do not cause 429s.
    pub requests_per_second: NonZeroU32,
    /// `paginate` fails rather than follow more pages than this.
    pub max_pages: u32,
    pub max_response_bytes: usize,
    /// Per request; the run's deadline bounds it too.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
}

impl RestConfig {
    pub fn new(api_base: Url) -> RestConfig {
        RestConfig {
            api_base,
            requests_per_second: NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN),
            max_pages: 100,
            max_response_bytes: 8 << 20,
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }
}

/// A path template that cannot become a URL.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PathError {
    #[error("path `{0}` must start with a single `/`: it is relative to the API base")]
    NotRelative(String),
    #[error("path `{path}` needs a value for `{{{name}}}` in params")]
    MissingParam { path: String, name: String },
    #[error("param `{name}` fills `{{{name}}}` and must not be empty")]
    EmptyParam { name: String },
    #[error("param `{name}` fills `{{{name}}}` and must be a string or a number, not {found}")]
    BadParam { name: String, found: &'static str },
    #[error("path `{0}` has a malformed `{{placeholder}}`")]
    BadPlaceholder(String),
    #[error("path `{path}` may not contain `{found}`: put such values in params")]
    BadCharacter { path: String, found: char },
    #[error("path `{0}` may not contain `.` or `..` segments")]
    DotSegment(String),
    #[error("param `{0}` must be a string, number, boolean or a list of them to go in the query")]
    BadQueryParam(String),
    #[error("api base `{0}` cannot take a path")]
    BadBase(String),
}

/// A failed REST call, with what Zoom said about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}{}", tracking_suffix(.tracking_id))]
pub struct RestError {
    pub kind: FailureKind,
    pub message: String,
    /// Zoom's numeric `code`.
    pub code: Option<Value>,
    pub status: Option<u16>,
    pub tracking_id: Option<String>,
    /// What a 429's headers said (boxed: most errors have none).
    pub rate_limit: Option<Box<RateLimitHit>>,
}

/// A 429's rate-limit headers: `X-RateLimit-Category`, `X-RateLimit-Type`
/// (`QPS` or `Daily-limit`) and `Retry-After` as a delay from when it came.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitHit {
    pub category: Option<String>,
    pub limit_type: Option<String>,
    pub retry_after: Option<Duration>,
}

impl RateLimitHit {
    fn from_headers(headers: &HeaderMap) -> RateLimitHit {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        RateLimitHit {
            category: header("x-ratelimit-category"),
            limit_type: header("x-ratelimit-type"),
            retry_after: http_retry::retry_after(headers),
        }
    }

    /// Whether the account's daily limit (not a per-second one) was hit.
    pub fn is_daily(&self) -> bool {
        self.limit_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("daily-limit"))
    }
}

fn tracking_suffix(tracking_id: &Option<String>) -> String {
    tracking_id
        .as_ref()
        .map(|id| format!(" (tracking id {id})"))
        .unwrap_or_default()
}

impl RestError {
    fn new(kind: FailureKind, message: impl Into<String>) -> RestError {
        RestError {
            kind,
            message: message.into(),
            code: None,
            status: None,
            tracking_id: None,
            rate_limit: None,
        }
    }

    /// Whether Zoom said the token is invalid or expired (401 code 124).
    pub fn is_invalid_token(&self) -> bool {
        self.status == Some(401)
            && self
                .code
                .as_ref()
                .and_then(Value::as_i64)
                .is_some_and(|code| code == INVALID_TOKEN_CODE)
    }

    fn deadline() -> RestError {
        RestError::new(
            FailureKind::Timeout,
            "the run's deadline passed while waiting for the zoom api",
        )
    }

    fn token(error: TokenError) -> RestError {
        let kind = match error {
            TokenError::Refused { .. } => FailureKind::Permanent,
            TokenError::Unavailable(_) => FailureKind::Transient,
        };
        RestError::new(kind, error.to_string())
    }
}

impl From<PathError> for RestError {
    fn from(error: PathError) -> RestError {
        RestError::new(FailureKind::Permanent, error.to_string())
    }
}

/// The REST client for one Zoom account.
pub struct ZoomRest {
    client: reqwest::Client,
    config: RestConfig,
    tokens: Arc<dyn AccessTokens>,
    limiter: DefaultDirectRateLimiter,
}

impl ZoomRest {
    /// `client` should not follow redirects (the effects share one that does not).
    pub fn new(
        client: reqwest::Client,
        config: RestConfig,
        tokens: Arc<dyn AccessTokens>,
    ) -> ZoomRest {
        let limiter = RateLimiter::direct(Quota::per_second(config.requests_per_second));
        ZoomRest {
            client,
            config,
            tokens,
            limiter,
        }
    }

    pub fn config(&self) -> &RestConfig {
        &self.config
    }

    /// The URL a call would use: the template filled from `params`.
    pub fn url(&self, path: &str, params: &Map<String, Value>) -> Result<Url, PathError> {
        build_url(&self.config.api_base, path, params)
    }

    /// One call: the answer's JSON (`null` for an empty answer).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        params: &Map<String, Value>,
        body: Option<&Value>,
        deadline: Instant,
    ) -> Result<Value, RestError> {
        let url = self.url(path, params)?;
        let result = self.execute(&method, &url, body, deadline).await;
        if let Err(error) = &result {
            tracing::warn!(
                method = %method,
                path,
                status = error.status,
                code = ?error.code,
                tracking_id = error.tracking_id.as_deref().unwrap_or(""),
                error = %error.message,
                "zoom api call failed"
            );
        }
        result
    }

    /// Every item of a listing: `items_key` of each page, following
    /// `next_page_token` until it is empty, at most `max_pages` pages.
    pub async fn paginate(
        &self,
        path: &str,
        items_key: &str,
        params: &Map<String, Value>,
        deadline: Instant,
    ) -> Result<Vec<Value>, RestError> {
        let mut params = params.clone();
        params
            .entry("page_size")
            .or_insert(Value::from(MAX_PAGE_SIZE));
        let mut items = Vec::new();
        let mut previous_token: Option<String> = None;
        for page in 1..=self.config.max_pages {
            let answer = self
                .request(Method::GET, path, &params, None, deadline)
                .await?;
            collect_items(&answer, items_key, page, &mut items)?;
            let next = answer
                .get("next_page_token")
                .and_then(Value::as_str)
                .filter(|token| !token.is_empty());
            let Some(next) = next else {
                return Ok(items);
            };
            if previous_token.as_deref() == Some(next) {
                return Err(RestError::new(
                    FailureKind::Permanent,
                    format!("zoom repeated the page token of page {page} of `{path}`"),
                ));
            }
            previous_token = Some(next.to_string());
            params.insert("next_page_token".into(), Value::from(next));
        }
        Err(RestError::new(
            FailureKind::Permanent,
            format!(
                "`{path}` has more than {} pages ({} items so far): narrow the query or raise the page limit",
                self.config.max_pages,
                items.len()
            ),
        ))
    }

    async fn execute(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&Value>,
        deadline: Instant,
    ) -> Result<Value, RestError> {
        let mut call = RestCall {
            rest: self,
            method,
            url,
            body,
            deadline,
            refreshed: false,
            rate_limit: String::new(),
        };
        send_with_retry(&mut call, &self.config.retry, deadline).await
    }

    async fn acquire(&self, deadline: Instant) -> Result<(), RestError> {
        tokio::time::timeout(http_retry::remaining(deadline), self.limiter.until_ready())
            .await
            .map_err(|_| RestError::deadline())
    }

    async fn send_once(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&Value>,
        token: &AccessToken,
        deadline: Instant,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut request = self
            .client
            .request(method.clone(), url.clone())
            .bearer_auth(token.expose())
            .header(ACCEPT, "application/json")
            .timeout(request_timeout(self.config.request_timeout, deadline));
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await
    }

    async fn read_answer(&self, response: reqwest::Response) -> Result<Value, RestError> {
        let tracking_id = tracking_id(response.headers());
        tracing::debug!(
            status = response.status().as_u16(),
            tracking_id = tracking_id.as_deref().unwrap_or(""),
            "zoom api answered"
        );
        let body = read_body_capped(response, self.config.max_response_bytes)
            .await
            .map_err(|error| {
                let kind = match error {
                    http_retry::BodyError::TooLarge { .. } => FailureKind::Permanent,
                    http_retry::BodyError::Transport(_) => FailureKind::Transient,
                };
                RestError {
                    tracking_id: tracking_id.clone(),
                    ..RestError::new(kind, format!("zoom api: {error}"))
                }
            })?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned())))
    }

    /// The error for a non-success answer, from Zoom's `{code, message}` body.
    async fn api_error(&self, response: reqwest::Response) -> RestError {
        let status = response.status();
        let tracking_id = tracking_id(response.headers());
        let rate_limit = (status == StatusCode::TOO_MANY_REQUESTS)
            .then(|| Box::new(RateLimitHit::from_headers(response.headers())));
        let body = read_body_capped(response, 64 << 10)
            .await
            .unwrap_or_default();
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let code = parsed.get("code").filter(|c| !c.is_null()).cloned();
        let zoom_message = parsed
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| fallback_message(status, &body));
        let code_text = code
            .as_ref()
            .map(|c| format!(" (code {c})"))
            .unwrap_or_default();
        let kind = if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            FailureKind::Transient
        } else {
            FailureKind::Permanent
        };
        RestError {
            kind,
            message: format!(
                "zoom api answered {}: {zoom_message}{code_text}",
                status.as_u16()
            ),
            code,
            status: Some(status.as_u16()),
            tracking_id,
            rate_limit,
        }
    }
}

/// One REST call's attempts: each takes a rate-limiter slot and a token; a
/// 401 for an expired token refreshes it once.
struct RestCall<'a> {
    rest: &'a ZoomRest,
    method: &'a Method,
    url: &'a Url,
    body: Option<&'a Value>,
    deadline: Instant,
    refreshed: bool,
    /// What the last 429's headers said, for an error past the deadline.
    rate_limit: String,
}

impl Exchange for RestCall<'_> {
    type Answer = Value;
    type Error = RestError;
    const CLIENT: &'static str = "zoom";

    async fn attempt(&mut self) -> Attempt<Value, RestError> {
        let rest = self.rest;
        if let Err(error) = rest.acquire(self.deadline).await {
            return Attempt::Done(Err(error));
        }
        let token = match rest.tokens.token().await {
            Ok(token) => token,
            Err(error) => return Attempt::Done(Err(RestError::token(error))),
        };
        let sent = rest
            .send_once(self.method, self.url, self.body, &token, self.deadline)
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                let retry_safe = retry_safe_error(self.method, &error);
                let message = format!("zoom api: {}", describe_error(error));
                let error = RestError::new(FailureKind::Transient, message);
                return Attempt::Failed { error, retry_safe };
            }
        };
        let status = response.status();
        metrics::counter!("zoomwire_zoom_api_responses_total", "status" => status.as_u16().to_string())
            .increment(1);
        if status.is_success() {
            return Attempt::Done(rest.read_answer(response).await);
        }
        if status == StatusCode::UNAUTHORIZED {
            let error = rest.api_error(response).await;
            if error.is_invalid_token() && !self.refreshed {
                self.refreshed = true;
                rest.tokens.invalidate(&token);
                return Attempt::Again;
            }
            return Attempt::Done(Err(error));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = http_retry::retry_after(response.headers());
            self.rate_limit = describe_rate_limit(response.headers());
            let mut error = rest.api_error(response).await;
            error.kind = FailureKind::Transient;
            return Attempt::RateLimited { retry_after, error };
        }
        let error = rest.api_error(response).await;
        if retry_safe_status(self.method, status) {
            return Attempt::Unavailable(Err(error));
        }
        Attempt::Done(Err(error))
    }

    fn outlasts_deadline(&self, mut error: RestError, past: PastDeadline) -> RestError {
        error.message = format!("{} ({}); {past}", error.message, self.rate_limit);
        error
    }
}

fn tracking_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(TRACKING_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn describe_rate_limit(headers: &HeaderMap) -> String {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match (
        header("x-ratelimit-type"),
        header("x-ratelimit-category"),
        header("retry-after"),
    ) {
        (None, None, None) => "rate limited".to_string(),
        (kind, category, retry_after) => format!(
            "rate limit {} {}, retry after {}",
            kind.unwrap_or("?"),
            category.unwrap_or("?"),
            retry_after.unwrap_or("?")
        ),
    }
}

fn fallback_message(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no message")
            .to_string()
    } else {
        text.chars().take(200).collect()
    }
}

fn collect_items(
    answer: &Value,
    items_key: &str,
    page: u32,
    items: &mut Vec<Value>,
) -> Result<(), RestError> {
    match answer.get(items_key) {
        Some(Value::Array(page_items)) => {
            items.extend(page_items.iter().cloned());
            Ok(())
        }
        Some(Value::Null) => Ok(()),
        None if page > 1 => Ok(()),
        None => {
            let keys: Vec<&str> = answer
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            Err(RestError::new(
                FailureKind::Permanent,
                format!(
                    "the answer has no `{items_key}` list (it has: {})",
                    keys.join(", ")
                ),
            ))
        }
        Some(_) => Err(RestError::new(
            FailureKind::Permanent,
            format!("`{items_key}` in the answer is not a list"),
        )),
    }
}

/// Fills a path template from params and joins it to the API base; params
/// that fill no placeholder become the query string.
pub fn build_url(
    base: &Url,
    template: &str,
    params: &Map<String, Value>,
) -> Result<Url, PathError> {
    let (path_template, literal_query) = match template.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (template, None),
    };
    if !path_template.starts_with('/') || path_template.starts_with("//") {
        return Err(PathError::NotRelative(template.into()));
    }
    let (path, used) = fill_placeholders(path_template, params)?;
    check_segments(&path, template)?;
    if base.cannot_be_a_base() {
        return Err(PathError::BadBase(base.to_string()));
    }
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    let joined = format!("{}{}", url.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    if let Some(query) = literal_query {
        check_literal(query, template, "&=")?;
        url.set_query(Some(query));
    }
    let leftovers: Vec<(&String, &Value)> = params
        .iter()
        .filter(|(name, value)| !used.contains(&name.as_str()) && !value.is_null())
        .collect();
    if !leftovers.is_empty() {
        let mut query = url.query_pairs_mut();
        for (name, value) in leftovers {
            query.append_pair(name, &query_text(name, value)?);
        }
    }
    Ok(url)
}

fn fill_placeholders<'p>(
    template: &str,
    params: &'p Map<String, Value>,
) -> Result<(String, Vec<&'p str>), PathError> {
    let mut path = String::with_capacity(template.len());
    let mut used = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        check_literal(&rest[..open], template, "")?;
        path.push_str(&rest[..open]);
        let after = rest[open..]
            .strip_prefix('{')
            .ok_or_else(|| PathError::BadPlaceholder(template.into()))?;
        let close = after
            .find('}')
            .ok_or_else(|| PathError::BadPlaceholder(template.into()))?;
        let name = &after[..close];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(PathError::BadPlaceholder(template.into()));
        }
        let (key, value) = params
            .get_key_value(name)
            .filter(|(_, v)| !v.is_null())
            .ok_or_else(|| PathError::MissingParam {
                path: template.into(),
                name: name.into(),
            })?;
        let text = segment_text(name, value)?;
        path.push_str(&encode_uuid(&text));
        used.push(key.as_str());
        rest = &after[close + 1..];
    }
    check_literal(rest, template, "")?;
    path.push_str(rest);
    Ok((path, used))
}

/// Literal path text: unreserved and sub-delimiter characters, `/`, `:`, `@`
/// and well-formed percent escapes (as `zoom::uuid` produces).
fn check_literal(text: &str, template: &str, extra: &str) -> Result<(), PathError> {
    let bytes = text.as_bytes();
    for (index, c) in text.char_indices() {
        let allowed = c.is_ascii_alphanumeric()
            || "-._~!$'()*+,;:@/".contains(c)
            || extra.contains(c)
            || (c == '%'
                && bytes.get(index + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(index + 2).is_some_and(u8::is_ascii_hexdigit));
        if !allowed {
            return Err(PathError::BadCharacter {
                path: template.into(),
                found: c,
            });
        }
    }
    Ok(())
}

fn check_segments(path: &str, template: &str) -> Result<(), PathError> {
    let is_dot = |segment: &str| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    };
    if path.split('/').any(is_dot) {
        return Err(PathError::DotSegment(template.into()));
    }
    Ok(())
}

fn segment_text(name: &str, value: &Value) -> Result<String, PathError> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => {
            return Err(PathError::BadParam {
                name: name.into(),
                found: json_type(other),
            });
        }
    };
    if text.is_empty() {
        return Err(PathError::EmptyParam { name: name.into() });
    }
    Ok(text)
}

fn query_text(name: &str, value: &Value) -> Result<String, PathError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Array(_) | Value::Object(_) | Value::Null => {
                    Err(PathError::BadQueryParam(name.into()))
                }
                scalar => query_text(name, scalar),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|parts| parts.join(",")),
        Value::Object(_) | Value::Null => Err(PathError::BadQueryParam(name.into())),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Url {
        Url::parse("https://api.zoom.us/v2").unwrap()
    }

    fn params(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn url(template: &str, value: Value) -> Result<String, PathError> {
        build_url(&base(), template, &params(value)).map(|u| u.to_string())
    }

    #[test]
    fn fills_placeholders_and_puts_the_rest_in_the_query() {
        assert_eq!(
            url(
                "/past_meetings/{uuid}/participants",
                json!({"uuid": "/abcd==", "page_size": 300, "type": ["a", "b"]})
            )
            .unwrap(),
            "https://api.zoom.us/v2/past_meetings/%252Fabcd%253D%253D/participants?page_size=300&type=a%2Cb"
        );
        assert_eq!(
            url("/meetings/{id}", json!({"id": 85512345678_i64})).unwrap(),
            "https://api.zoom.us/v2/meetings/85512345678"
        );
        assert_eq!(
            url("/meetings/{id}/recordings", json!({"id": "ab//cd=="})).unwrap(),
            "https://api.zoom.us/v2/meetings/ab%252F%252Fcd%253D%253D/recordings"
        );
    }

    #[test]
    fn keeps_hand_encoded_segments_and_literal_queries() {
        let segment = encode_uuid("/abc==");
        assert_eq!(
            url(
                &format!("/past_meetings/{segment}/participants?page_size=10"),
                json!({"x": "y z"})
            )
            .unwrap(),
            "https://api.zoom.us/v2/past_meetings/%252Fabc%253D%253D/participants?page_size=10&x=y+z"
        );
    }

    #[test]
    fn encodes_a_value_as_one_segment() {
        assert_eq!(
            url("/users/{id}", json!({"id": "a/b?c#d"})).unwrap(),
            "https://api.zoom.us/v2/users/a%2Fb%3Fc%23d"
        );
    }

    #[test]
    fn refuses_paths_that_could_leave_the_api_base() {
        assert!(matches!(
            url("https://evil.test/x", json!({})),
            Err(PathError::NotRelative(_))
        ));
        assert!(matches!(
            url("//evil.test/x", json!({})),
            Err(PathError::NotRelative(_))
        ));
        assert!(matches!(
            url("/users/../oauth", json!({})),
            Err(PathError::DotSegment(_))
        ));
        assert!(matches!(
            url("/users/%2E%2e/x", json!({})),
            Err(PathError::DotSegment(_))
        ));
        assert!(matches!(
            url("/users/{id}", json!({"id": ".."})),
            Err(PathError::DotSegment(_))
        ));
        assert!(matches!(
            url("/users/me#frag", json!({})),
            Err(PathError::BadCharacter { found: '#', .. })
        ));
        assert!(matches!(
            url("/users/a b", json!({})),
            Err(PathError::BadCharacter { found: ' ', .. })
        ));
        assert!(matches!(
            url("/users/%zz", json!({})),
            Err(PathError::BadCharacter { found: '%', .. })
        ));
    }

    #[test]
    fn names_missing_and_malformed_params() {
        assert_eq!(
            url("/meetings/{id}", json!({})).unwrap_err().to_string(),
            "path `/meetings/{id}` needs a value for `{id}` in params"
        );
        assert_eq!(
            url("/meetings/{id}", json!({"id": {"a": 1}}))
                .unwrap_err()
                .to_string(),
            "param `id` fills `{id}` and must be a string or a number, not a map"
        );
        assert!(matches!(
            url("/meetings/{id}", json!({"id": ""})),
            Err(PathError::EmptyParam { .. })
        ));
        assert!(matches!(
            url("/meetings/{id", json!({"id": "1"})),
            Err(PathError::BadPlaceholder(_))
        ));
        assert!(matches!(
            url("/meetings/{}", json!({})),
            Err(PathError::BadPlaceholder(_))
        ));
        assert!(matches!(
            url("/meetings", json!({"q": {"a": 1}})),
            Err(PathError::BadQueryParam(_))
        ));
    }

    #[test]
    fn joins_to_a_base_with_a_trailing_slash_or_a_port() {
        let base = Url::parse("http://127.0.0.1:9000/v2/").unwrap();
        assert_eq!(
            build_url(&base, "/users/me", &Map::new())
                .unwrap()
                .to_string(),
            "http://127.0.0.1:9000/v2/users/me"
        );
    }
}
