//! `http::request(#{method, url, headers, body, timeout})`: a plain HTTP call
//! to a host the rule allows (`http:<host>[:port]`), answered with
//! `{status, headers, body}`.
//!
//! The gateway checks the first URL; this module checks it again and every
//! redirect target, because it follows redirects itself (one hop at a time,
//! each target against the same allow-list, host and port). A redirect from
//! https to http is refused, and one to another origin keeps only the
//! harmless headers ([`CROSS_ORIGIN_HEADERS`]): no `Authorization`, cookie
//! or API key follows the script's request elsewhere. Names are resolved by
//! the connecting client itself through [`GuardedResolver`], so a name that
//! points (or is rebound) at loopback, a private network or a metadata
//! address is refused unless the rule allows that address (`address.rs`);
//! each allow-list has its own client (and connection pool) for that reason,
//! and no proxy is used. URLs with credentials are refused, hop-by-hop and
//! `Host` headers cannot be set, and request and response bodies and the
//! time taken are capped. Any status is an answer, not an error: the script
//! looks at `status`.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value};
use url::Url;

use super::address::{GuardedResolver, refused_address_in};
use super::capability::{host_allowed, target_allowed};
use super::{EffectContext, EffectError, EffectErrorKind, EffectName};
use crate::http_retry::{BodyError, describe_error, is_json_content_type, read_body_capped};

const EFFECT: &str = EffectName::HttpRequest.as_str();

/// Headers a request keeps when a redirect leads to another origin.
pub const CROSS_ORIGIN_HEADERS: &[&str] = &[
    "accept",
    "accept-language",
    "content-language",
    "content-type",
    "user-agent",
];

/// Clients kept, one per allow-list; beyond this the cache starts afresh.
const MAX_CLIENTS: usize = 256;

/// Headers a script may not set: they would let it address another host or
/// break the framing of the request.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-connection",
];

/// Size and time limits of `http.request`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpLimits {
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
    /// Default and largest `timeout` of one request, redirects included.
    pub timeout: Duration,
    pub max_redirects: u32,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_request_bytes: 4 << 20,
            max_response_bytes: 8 << 20,
            timeout: Duration::from_secs(30),
            max_redirects: 5,
        }
    }
}

/// Builds a client that resolves names with the given resolver; it must
/// not follow redirects or use a proxy.
pub type ClientFactory =
    Arc<dyn Fn(GuardedResolver) -> reqwest::Result<reqwest::Client> + Send + Sync>;

/// The `http.request` effect.
pub struct HttpEffect {
    factory: ClientFactory,
    /// A client per allow-list (its resolver keeps that list's addresses).
    clients: Mutex<HashMap<Arc<[String]>, reqwest::Client>>,
    limits: HttpLimits,
}

/// A request as the script described it, checked.
struct HttpCall {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
    timeout: Duration,
}

impl HttpEffect {
    pub fn new(factory: ClientFactory, limits: HttpLimits) -> HttpEffect {
        HttpEffect {
            factory,
            clients: Mutex::default(),
            limits,
        }
    }

    /// The client for a rule's allow-list.
    fn client(&self, allowed: &Arc<[String]>) -> Result<reqwest::Client, EffectError> {
        let mut clients = self.clients.lock();
        if let Some(client) = clients.get(allowed) {
            return Ok(client.clone());
        }
        let client = (self.factory)(GuardedResolver::new(allowed.clone())).map_err(|e| {
            EffectError::transient(EFFECT, format!("building the http client: {e}"))
        })?;
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(allowed.clone(), client.clone());
        Ok(client)
    }

    pub async fn request(
        &self,
        context: &EffectContext,
        args: &Value,
    ) -> Result<Value, EffectError> {
        let client = self.client(&context.http_hosts)?;
        let call = parse_call(args, &self.limits)?;
        let until = context.deadline.min(Instant::now() + call.timeout);
        let HttpCall {
            mut method,
            mut url,
            mut headers,
            mut body,
            ..
        } = call;
        for hop in 0..=self.limits.max_redirects {
            check_url(&url, &context.http_hosts, hop > 0)?;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out());
            }
            let mut request = client
                .request(method.clone(), url.clone())
                .headers(headers.clone())
                .timeout(left);
            if let Some(body) = &body {
                request = request.body(body.clone());
            }
            let response = request.send().await.map_err(send_error)?;
            let status = response.status();
            let location = redirect_location(&response);
            let Some(location) = location else {
                return self.answer(response).await;
            };
            let next = url.join(&location).map_err(|_| {
                EffectError::permanent(
                    EFFECT,
                    format!("answered {status} with a malformed Location `{location}`"),
                )
            })?;
            if url.scheme() == "https" && next.scheme() == "http" {
                return Err(EffectError::permanent(
                    EFFECT,
                    format!(
                        "answered {status} with a redirect from https to http, which is refused"
                    ),
                ));
            }
            if changes_to_get(status, &method) {
                method = Method::GET;
                body = None;
                headers.remove(CONTENT_TYPE);
            }
            if next.origin() != url.origin() {
                keep_cross_origin_headers(&mut headers);
            }
            url = next;
        }
        Err(EffectError::permanent(
            EFFECT,
            format!("more than {} redirects", self.limits.max_redirects),
        ))
    }

    async fn answer(&self, response: reqwest::Response) -> Result<Value, EffectError> {
        let status = response.status().as_u16();
        let headers = headers_map(response.headers());
        let json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json_content_type);
        let bytes = read_body_capped(response, self.limits.max_response_bytes)
            .await
            .map_err(|error| match error {
                BodyError::TooLarge { .. } => EffectError::permanent(EFFECT, error.to_string()),
                BodyError::Transport(_) => EffectError::transient(EFFECT, error.to_string()),
            })?;
        let body = if json && !bytes.is_empty() {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        } else {
            Value::String(String::from_utf8_lossy(&bytes).into_owned())
        };
        Ok(serde_json::json!({"status": status, "headers": headers, "body": body}))
    }
}

/// A failed send: a refused address is the rule's configuration (denied),
/// anything else may pass (transient).
fn send_error(error: reqwest::Error) -> EffectError {
    if let Some(refused) = refused_address_in(&error) {
        return EffectError::new(EFFECT, EffectErrorKind::Denied, refused.to_string());
    }
    EffectError::transient(EFFECT, describe_error(error))
}

/// Drops every header but [`CROSS_ORIGIN_HEADERS`].
fn keep_cross_origin_headers(headers: &mut HeaderMap) {
    let dropped: Vec<HeaderName> = headers
        .keys()
        .filter(|name| !CROSS_ORIGIN_HEADERS.contains(&name.as_str()))
        .cloned()
        .collect();
    for name in dropped {
        headers.remove(name);
    }
}

/// Refuses a URL that is not plain http(s) to an allowed host and port.
pub fn check_url(url: &Url, allowed: &[String], redirected: bool) -> Result<(), EffectError> {
    let prefix = if redirected { "redirect to " } else { "" };
    if !matches!(url.scheme(), "http" | "https") {
        return Err(EffectError::permanent(
            EFFECT,
            format!(
                "{prefix}scheme `{}` is refused: only http and https are allowed",
                url.scheme()
            ),
        ));
    }
    let host = url.host_str().unwrap_or_default();
    if !host_allowed(allowed, host) {
        return Err(EffectError::new(
            EFFECT,
            EffectErrorKind::Denied,
            format!("{prefix}host `{host}` is refused: the rule allows only {allowed:?}"),
        ));
    }
    let port = url.port_or_known_default().unwrap_or(0);
    if !target_allowed(allowed, host, port) {
        return Err(EffectError::new(
            EFFECT,
            EffectErrorKind::Denied,
            format!(
                "{prefix}port {port} of `{host}` is refused: http:<host> allows ports 80 and 443; allow this one with http:{host}:{port}"
            ),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(EffectError::permanent(
            EFFECT,
            format!("{prefix}a url with credentials is refused: send them in headers"),
        ));
    }
    Ok(())
}

fn parse_call(args: &Value, limits: &HttpLimits) -> Result<HttpCall, EffectError> {
    let bad = |message: String| EffectError::permanent(EFFECT, message);
    let method = match args.get("method") {
        None | Some(Value::Null) => Method::GET,
        Some(Value::String(text)) => parse_method(text)?,
        Some(_) => return Err(bad("`method` must be a string such as \"GET\"".into())),
    };
    let url_text = args
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("`url` must be a string".into()))?;
    let url = Url::parse(url_text).map_err(|e| bad(format!("`url` is not a valid url: {e}")))?;
    let mut headers = match args.get("headers") {
        None | Some(Value::Null) => HeaderMap::new(),
        Some(Value::Object(map)) => parse_headers(map)?,
        Some(_) => return Err(bad("`headers` must be a map of names to values".into())),
    };
    let body = match args.get("body") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.as_bytes().to_vec()),
        Some(value) => {
            if !headers.contains_key(CONTENT_TYPE) {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            Some(serde_json::to_vec(value).map_err(|e| bad(e.to_string()))?)
        }
    };
    if let Some(body) = &body
        && body.len() > limits.max_request_bytes
    {
        return Err(bad(format!(
            "the request body is larger than the {} byte limit",
            limits.max_request_bytes
        )));
    }
    let timeout = match args.get("timeout") {
        None | Some(Value::Null) => limits.timeout,
        Some(value) => match value.as_f64() {
            Some(seconds) if seconds > 0.0 && seconds.is_finite() => {
                Duration::from_secs_f64(seconds).min(limits.timeout)
            }
            _ => return Err(bad("`timeout` must be a positive number of seconds".into())),
        },
    };
    Ok(HttpCall {
        method,
        url,
        headers,
        body,
        timeout,
    })
}

fn parse_method(text: &str) -> Result<Method, EffectError> {
    let upper = text.to_ascii_uppercase();
    match upper.as_str() {
        "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => {
            Method::from_bytes(upper.as_bytes())
                .map_err(|e| EffectError::permanent(EFFECT, e.to_string()))
        }
        _ => Err(EffectError::permanent(
            EFFECT,
            format!("method `{text}` is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        )),
    }
}

fn parse_headers(map: &Map<String, Value>) -> Result<HeaderMap, EffectError> {
    let mut headers = HeaderMap::new();
    for (name, value) in map {
        let bad = |why: &str| EffectError::permanent(EFFECT, format!("header `{name}`: {why}"));
        let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("bad name"))?;
        if FORBIDDEN_HEADERS.contains(&header_name.as_str()) {
            return Err(bad("cannot be set by a script"));
        }
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return Err(bad("the value must be a string or a number")),
        };
        let header_value = HeaderValue::from_str(&text).map_err(|_| bad("bad value"))?;
        headers.append(header_name, header_value);
    }
    Ok(headers)
}

fn redirect_location(response: &reqwest::Response) -> Option<String> {
    let status = response.status();
    if !matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// 303 always, and 301/302 after a POST, continue as GET without a body.
fn changes_to_get(status: StatusCode, method: &Method) -> bool {
    status == StatusCode::SEE_OTHER && *method != Method::HEAD
        || matches!(status.as_u16(), 301 | 302) && *method == Method::POST
}

fn headers_map(headers: &HeaderMap) -> Value {
    let mut map = Map::new();
    for (name, value) in headers {
        let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match map.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&text);
            }
            _ => {
                map.insert(name.as_str().to_string(), Value::String(text));
            }
        }
    }
    Value::Object(map)
}

fn timed_out() -> EffectError {
    EffectError::transient(EFFECT, "timed out before an answer came")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn allowed() -> Vec<String> {
        vec!["api.example.com".into(), "*.corp.test".into()]
    }

    fn check(url: &str) -> Result<(), EffectError> {
        check_url(&Url::parse(url).unwrap(), &allowed(), false)
    }

    #[test]
    fn allows_listed_hosts_on_their_ports() {
        assert!(check("https://api.example.com/x").is_ok());
        assert!(check("http://API.EXAMPLE.COM/x").is_ok());
        assert!(check("https://a.corp.test/").is_ok());
        assert!(check("https://api.example.com./x").is_ok());
        assert!(check("http://api.example.com:443/x").is_ok());
        let error = check("http://api.example.com:8080/x").unwrap_err();
        assert_eq!(error.kind, EffectErrorKind::Denied);
        assert!(
            error
                .message
                .contains("allow this one with http:api.example.com:8080"),
            "{}",
            error.message
        );
        let allowed = vec!["api.example.com:8080".to_string()];
        let url = Url::parse("http://api.example.com:8080/").unwrap();
        assert!(check_url(&url, &allowed, false).is_ok());
    }

    #[test]
    fn a_redirect_to_another_origin_keeps_only_harmless_headers() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer x"),
            ("x-api-key", "k"),
            ("cookie", "c=1"),
            ("accept", "application/json"),
            ("content-type", "application/json"),
            ("x-request-id", "7"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        keep_cross_origin_headers(&mut headers);
        let mut kept: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["accept", "content-type"]);
    }

    #[test]
    fn refuses_every_way_around_the_list() {
        for url in [
            "https://evil.test/",
            "https://api.example.com.evil.test/",
            "https://api.example.com@evil.test/",
            "https://evil.test#@api.example.com/",
            "https://evil.test\\@api.example.com/",
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://[::1]/",
            "https://corp.test/",
        ] {
            let error = check(url).unwrap_err();
            assert_eq!(error.kind, EffectErrorKind::Denied, "{url}: {error}");
        }
        let error = check("https://user:pw@api.example.com/").unwrap_err();
        assert!(error.message.contains("credentials"), "{}", error.message);
        assert!(!error.message.contains("pw"));
        let error = check("ftp://api.example.com/").unwrap_err();
        assert_eq!(error.kind, EffectErrorKind::Permanent);
        let error = check("file:///etc/passwd").unwrap_err();
        assert_eq!(error.kind, EffectErrorKind::Permanent);
    }

    #[test]
    fn ip_literals_pass_only_when_listed() {
        let allowed = vec!["127.0.0.1:*".to_string()];
        let url = Url::parse("http://127.0.0.1:8080/").unwrap();
        assert!(check_url(&url, &allowed, false).is_ok());
        let url = Url::parse("http://localhost:8080/").unwrap();
        assert!(check_url(&url, &allowed, false).is_err());
    }

    #[test]
    fn parses_a_call_and_sends_maps_as_json() {
        let call = parse_call(
            &json!({"method": "post", "url": "https://api.example.com/x",
                    "headers": {"X-Id": 5}, "body": {"a": 1}, "timeout": 2}),
            &HttpLimits::default(),
        )
        .unwrap();
        assert_eq!(call.method, Method::POST);
        assert_eq!(call.headers["x-id"], "5");
        assert_eq!(call.headers[CONTENT_TYPE], "application/json");
        assert_eq!(call.body.unwrap(), br#"{"a":1}"#);
        assert_eq!(call.timeout, Duration::from_secs(2));
    }

    #[test]
    fn refuses_bad_calls() {
        let limits = HttpLimits {
            max_request_bytes: 4,
            ..HttpLimits::default()
        };
        for (args, expected) in [
            (
                json!({"url": "https://a/", "headers": {"Host": "evil.test"}}),
                "header `Host`: cannot be set by a script",
            ),
            (
                json!({"url": "https://a/", "headers": {"X": "a\r\nB: c"}}),
                "header `X`: bad value",
            ),
            (
                json!({"url": "https://a/", "body": "12345"}),
                "the request body is larger than the 4 byte limit",
            ),
            (
                json!({"url": "https://a/", "method": "TRACE"}),
                "method `TRACE` is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
            ),
            (json!({"url": 5}), "`url` must be a string"),
            (
                json!({"url": "https://a/", "timeout": 0}),
                "`timeout` must be a positive number of seconds",
            ),
        ] {
            let error = parse_call(&args, &limits).err().unwrap();
            assert_eq!(error.message, expected);
        }
    }

    #[test]
    fn caps_the_timeout_at_the_limit() {
        let call = parse_call(
            &json!({"url": "https://a/", "timeout": 3600}),
            &HttpLimits::default(),
        )
        .unwrap();
        assert_eq!(call.timeout, HttpLimits::default().timeout);
    }

    #[test]
    fn joins_repeated_response_headers() {
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        assert_eq!(headers_map(&headers), json!({"x-a": "1, 2"}));
    }
}
