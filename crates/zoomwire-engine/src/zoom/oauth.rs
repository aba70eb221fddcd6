//! Zoom Server-to-Server OAuth: [`OAuthClient`] is the [`AccessTokens`] the
//! daemon uses. It asks `POST {oauth_base}/oauth/token` for a token with
//! Basic auth and the form body `grant_type=account_credentials&account_id=`,
//! caches it, and fetches a new one a margin (default 60 s) before it
//! expires. However many tasks ask at once, one request is in flight: they
//! all await the same shared future.
//!
//! Refused credentials become [`TokenError::Refused`] naming the setting to
//! fix, so a bad secret ends in a configuration error rather than a retry
//! storm; an unreachable endpoint or a 5xx is [`TokenError::Unavailable`], and
//! while the cached token is still valid it is served instead of that error.
//! Neither the client secret nor a token ever reaches a log or `Debug`.

use parking_lot::Mutex;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::future::Shared;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::time::Instant;

use super::token::{AccessToken, AccessTokens, TokenError};

/// Fetch a new token this long before the cached one expires.
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Give up on one token request after this long.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest reason from an error body kept in an error message.
const MAX_REASON_CHARS: usize = 200;

const CREDENTIAL_SETTINGS: &str = "ZOOM_CLIENT_ID and ZOOM_CLIENT_SECRET";
const ACCOUNT_SETTING: &str = "ZOOM_ACCOUNT_ID";

/// What the token cache needs to know. `Debug` hides the secret.
#[derive(Clone)]
pub struct OAuthConfig {
    /// `https://zoom.us` (`ZOOM_OAUTH_BASE`); the endpoint is `{oauth_base}/oauth/token`.
    pub oauth_base: String,
    pub account_id: String,
    pub client_id: String,
    pub client_secret: SecretString,
    /// How long before expiry a cached token is replaced. When a token lives
    /// no longer than this, half its lifetime is used instead.
    pub refresh_margin: Duration,
    pub request_timeout: Duration,
}

impl OAuthConfig {
    pub fn new(
        oauth_base: impl Into<String>,
        account_id: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: SecretString,
    ) -> OAuthConfig {
        OAuthConfig {
            oauth_base: oauth_base.into(),
            account_id: account_id.into(),
            client_id: client_id.into(),
            client_secret,
            refresh_margin: DEFAULT_REFRESH_MARGIN,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    fn token_url(&self) -> String {
        format!("{}/oauth/token", self.oauth_base.trim_end_matches('/'))
    }
}

impl fmt::Debug for OAuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthConfig")
            .field("oauth_base", &self.oauth_base)
            .field("account_id", &self.account_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("refresh_margin", &self.refresh_margin)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// A cached token and its two deadlines.
#[derive(Clone)]
struct CachedToken {
    token: AccessToken,
    expires_at: Instant,
    /// Served from the cache until then; fetched anew after.
    refresh_at: Instant,
}

type SharedFetch = Shared<BoxFuture<'static, Result<CachedToken, TokenError>>>;

#[derive(Default)]
struct CacheState {
    cached: Option<CachedToken>,
    /// The request in flight and its number, shared by every waiting caller.
    in_flight: Option<(u64, SharedFetch)>,
    flights: u64,
}

struct Inner {
    config: OAuthConfig,
    token_url: String,
    http: reqwest::Client,
    state: Mutex<CacheState>,
}

/// The Server-to-Server OAuth token cache.
#[derive(Clone)]
pub struct OAuthClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The token endpoint's answer.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: f64,
}

/// The token endpoint's error body: `{"reason", "error"}`.
#[derive(Deserialize, Default)]
struct ErrorAnswer {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    error: String,
}

impl OAuthClient {
    /// A cache with its own HTTP client.
    pub fn new(config: OAuthConfig) -> Result<OAuthClient, TokenError> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| TokenError::Unavailable(format!("cannot build an http client: {e}")))?;
        Ok(OAuthClient::with_http_client(config, http))
    }

    /// A cache sharing an existing HTTP client (its timeout applies).
    pub fn with_http_client(config: OAuthConfig, http: reqwest::Client) -> OAuthClient {
        register_credentials(&config);
        OAuthClient {
            inner: Arc::new(Inner {
                token_url: config.token_url(),
                config,
                http,
                state: Mutex::new(CacheState::default()),
            }),
        }
    }

    /// How many requests went to the token endpoint so far.
    pub fn fetch_count(&self) -> u64 {
        self.inner.state.lock().flights
    }

    /// When the cached token expires, if one is cached.
    pub fn cached_expiry(&self) -> Option<Instant> {
        self.inner
            .state
            .lock()
            .cached
            .as_ref()
            .map(|c| c.expires_at)
    }

    async fn get_token(&self) -> Result<AccessToken, TokenError> {
        let (flight, still_valid) = {
            let mut state = self.inner.state.lock();
            let now = Instant::now();
            let cached = state.cached.as_ref();
            if let Some(cached) = cached.filter(|c| now < c.refresh_at) {
                return Ok(cached.token.clone());
            }
            let still_valid = cached
                .filter(|c| now < c.expires_at)
                .map(|c| c.token.clone());
            let flight = match &state.in_flight {
                Some((_, flight)) => flight.clone(),
                None => {
                    state.flights += 1;
                    let number = state.flights;
                    let flight = self.inner.clone().fly(number).boxed().shared();
                    state.in_flight = Some((number, flight.clone()));
                    flight
                }
            };
            (flight, still_valid)
        };
        match (flight.await, still_valid) {
            (Ok(fresh), _) => Ok(fresh.token),
            (Err(TokenError::Unavailable(error)), Some(token)) => {
                tracing::warn!(
                    error = %error,
                    "cannot refresh the zoom access token; using the cached one until it expires"
                );
                Ok(token)
            }
            (Err(error), _) => Err(error),
        }
    }
}

impl Inner {
    /// One request to the token endpoint; stores the answer and ends the flight.
    async fn fly(self: Arc<Self>, number: u64) -> Result<CachedToken, TokenError> {
        let result = self.fetch().await;
        let mut state = self.state.lock();
        if state.in_flight.as_ref().is_some_and(|(n, _)| *n == number) {
            state.in_flight = None;
        }
        if let Ok(fresh) = &result {
            state.cached = Some(fresh.clone());
        }
        drop(state);
        let outcome = match &result {
            Ok(_) => "ok",
            Err(TokenError::Refused { .. }) => "refused",
            Err(TokenError::Unavailable(_)) => "unavailable",
        };
        metrics::counter!("zoomwire_oauth_token_requests_total", "outcome" => outcome).increment(1);
        result
    }

    async fn fetch(&self) -> Result<CachedToken, TokenError> {
        let config = &self.config;
        let asked_at = Instant::now();
        let response = self
            .http
            .post(&self.token_url)
            .basic_auth(
                &config.client_id,
                Some(config.client_secret.expose_secret()),
            )
            .form(&[
                ("grant_type", "account_credentials"),
                ("account_id", config.account_id.as_str()),
            ])
            .send()
            .await
            .map_err(|e| {
                TokenError::Unavailable(format!("{}: {}", self.token_url, e.without_url()))
            })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            TokenError::Unavailable(format!("{}: {}", self.token_url, e.without_url()))
        })?;
        if !status.is_success() {
            return Err(classify_error(status, &body, &self.token_url));
        }
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
            TokenError::Unavailable(format!("{}: unexpected answer: {e}", self.token_url))
        })?;
        // Scrubbed from any output from now on (a short one cannot be).
        let _ = crate::secrets::Secrets::global().add_seen(&answer.access_token);
        let lifetime = Duration::try_from_secs_f64(answer.expires_in.max(0.0)).unwrap_or_default();
        let margin = if config.refresh_margin < lifetime {
            config.refresh_margin
        } else {
            lifetime / 2
        };
        tracing::info!(
            expires_in_s = lifetime.as_secs(),
            "fetched a zoom access token"
        );
        Ok(CachedToken {
            token: AccessToken::new(answer.access_token),
            expires_at: asked_at + lifetime,
            refresh_at: asked_at + lifetime - margin,
        })
    }
}

/// Registers the client secret, and the Basic credential made of it, for
/// redaction by value (a short secret cannot be; the daemon warns).
fn register_credentials(config: &OAuthConfig) {
    use base64::Engine;
    let secrets = crate::secrets::Secrets::global();
    let secret = config.client_secret.expose_secret();
    let _ = secrets.add(secret);
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{secret}", config.client_id));
    let _ = secrets.add(&basic);
}

/// Turns an error answer into a refusal naming the setting, or unavailability.
fn classify_error(status: reqwest::StatusCode, body: &[u8], url: &str) -> TokenError {
    let answer: ErrorAnswer = serde_json::from_slice(body).unwrap_or_default();
    let mut reason = if answer.reason.is_empty() {
        answer.error.clone()
    } else {
        answer.reason.clone()
    };
    if reason.is_empty() {
        reason = status.to_string();
    }
    let reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return TokenError::Unavailable(format!("{url} answered {status}: {reason}"));
    }
    let mentions_account = reason.to_ascii_lowercase().contains("account");
    let setting = if mentions_account {
        ACCOUNT_SETTING.to_string()
    } else if answer.error == "invalid_client" || status == reqwest::StatusCode::UNAUTHORIZED {
        CREDENTIAL_SETTINGS.to_string()
    } else {
        format!("{ACCOUNT_SETTING}, {CREDENTIAL_SETTINGS}")
    };
    TokenError::Refused { reason, setting }
}

impl AccessTokens for OAuthClient {
    fn token(&self) -> BoxFuture<'_, Result<AccessToken, TokenError>> {
        Box::pin(self.get_token())
    }

    fn invalidate(&self, rejected: &AccessToken) {
        let mut state = self.inner.state.lock();
        if state.cached.as_ref().is_some_and(|c| &c.token == rejected) {
            state.cached = None;
            tracing::info!("dropped a zoom access token that zoom refused");
        }
    }

    fn expires_at(&self, token: &AccessToken) -> Option<std::time::Instant> {
        let state = self.inner.state.lock();
        let cached = state.cached.as_ref().filter(|c| &c.token == token)?;
        Some(cached.expires_at.into_std())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_setting_to_fix() {
        let url = "http://x/oauth/token";
        let bad_client =
            br#"{"reason":"Invalid client_id or client_secret","error":"invalid_client"}"#;
        let TokenError::Refused { reason, setting } =
            classify_error(reqwest::StatusCode::UNAUTHORIZED, bad_client, url)
        else {
            panic!("expected a refusal")
        };
        assert_eq!(reason, "Invalid client_id or client_secret");
        assert_eq!(setting, "ZOOM_CLIENT_ID and ZOOM_CLIENT_SECRET");

        let bad_account = br#"{"reason":"Invalid account_id","error":"invalid_request"}"#;
        let TokenError::Refused { setting, .. } =
            classify_error(reqwest::StatusCode::BAD_REQUEST, bad_account, url)
        else {
            panic!("expected a refusal")
        };
        assert_eq!(setting, "ZOOM_ACCOUNT_ID");

        assert!(matches!(
            classify_error(reqwest::StatusCode::BAD_GATEWAY, b"<html>", url),
            TokenError::Unavailable(_)
        ));
    }

    #[test]
    fn debug_hides_the_secret() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let config = OAuthConfig::new(
            "https://zoom.us",
            "acct",
            "client",
            SecretString::from("hunter2"),
        );
        assert!(!format!("{config:?}").contains("hunter2"));
        let client = OAuthClient::with_http_client(config, reqwest::Client::new());
        assert!(!format!("{client:?}").contains("hunter2"));
    }
}
