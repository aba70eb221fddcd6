//! The seam between Zoom clients and the OAuth token cache: the WebSocket
//! connection and the REST client ask an [`AccessTokens`] for a bearer token
//! and report a token that Zoom refused. `oauth.rs` implements it against
//! the Server-to-Server token endpoint; tests may use [`StaticToken`].

use std::fmt;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use futures_util::future::BoxFuture;

/// A bearer token. `Debug` never shows it.
#[derive(Clone)]
pub struct AccessToken(pub Arc<SecretString>);

impl AccessToken {
    pub fn new(token: impl Into<String>) -> AccessToken {
        AccessToken(Arc::new(SecretString::from(token.into())))
    }

    /// The token text, for an `Authorization` header or a URL; never log it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken([redacted])")
    }
}

impl PartialEq for AccessToken {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The credentials were refused: a configuration error, not worth retrying soon.
    #[error("zoom refused the oauth credentials ({reason}): check {setting}")]
    Refused { reason: String, setting: String },
    /// The endpoint could not be reached or answered 5xx: retry with backoff.
    #[error("zoom oauth endpoint unavailable: {0}")]
    Unavailable(String),
}

/// A source of bearer tokens for one Zoom account.
pub trait AccessTokens: Send + Sync + 'static {
    /// A valid token, from the cache when it has more than about a minute left.
    /// Concurrent callers share one request to the token endpoint.
    fn token(&self) -> BoxFuture<'_, Result<AccessToken, TokenError>>;
    /// Zoom refused `rejected` (401, or an invalid-token frame): drop it from the
    /// cache unless it was already replaced, so the next `token()` fetches anew.
    fn invalidate(&self, rejected: &AccessToken);
    /// When `token` stops being valid, if this source knows. The WebSocket
    /// connection uses it to reconnect with a fresh token before then.
    fn expires_at(&self, _token: &AccessToken) -> Option<std::time::Instant> {
        None
    }
}

/// A fixed token, for tests and tools.
pub struct StaticToken(pub AccessToken);

impl AccessTokens for StaticToken {
    fn token(&self) -> BoxFuture<'_, Result<AccessToken, TokenError>> {
        let token = self.0.clone();
        Box::pin(async move { Ok(token) })
    }

    fn invalidate(&self, _rejected: &AccessToken) {}
}
