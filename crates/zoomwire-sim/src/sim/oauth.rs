//! The simulated Server-to-Server OAuth token endpoint, `POST /oauth/token`,
//! and the table of tokens it issued.
//!
//! As Zoom does, it wants `Authorization: Basic base64(client_id:secret)` and
//! the form body `grant_type=account_credentials&account_id=...`; parameters
//! in the query string instead of the body are refused with 400. Every token
//! carries a serial number so tests can tell "a new token" from "the same
//! token" without reading token text, and all tokens can be expired on demand.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use serde_json::json;
use tokio::time::Instant;

use super::state::{IssuedToken, SimState, lock};

pub(crate) fn routes() -> Router<Arc<SimState>> {
    Router::new().route("/oauth/token", post(token_endpoint))
}

/// What a presented access token turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenCheck {
    Valid(IssuedToken),
    Expired,
    Unknown,
}

impl SimState {
    /// Issues a new token for the primary account.
    pub fn issue_token(&self) -> (String, IssuedToken) {
        self.issue_token_for(&self.config.account_id)
    }

    /// Issues a new token for `account_id`, valid for the configured
    /// lifetime (revoking the account's earlier ones when so configured).
    pub fn issue_token_for(&self, account_id: &str) -> (String, IssuedToken) {
        let serial = {
            let mut next = lock(&self.next_token_serial);
            *next += 1;
            *next
        };
        let text = format!(
            "sim-at-{serial}-{:016x}{:016x}",
            fastrand::u64(..),
            fastrand::u64(..)
        );
        let now = Instant::now();
        let issued = IssuedToken {
            serial,
            expires_at: now + self.config.token_lifetime,
            account_id: account_id.to_string(),
        };
        let mut tokens = lock(&self.tokens);
        let revoke = self.config.new_token_revokes_previous;
        let mut revoked = false;
        if revoke {
            for earlier in tokens.values_mut() {
                if earlier.account_id == account_id && earlier.expires_at > now {
                    earlier.expires_at = now;
                    revoked = true;
                }
            }
        }
        tokens.insert(text.clone(), issued.clone());
        drop(tokens);
        if revoked {
            self.token_epoch.send_modify(|epoch| *epoch += 1);
        }
        (text, issued)
    }

    /// Every token issued so far, expired ones included.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.tokens).keys().cloned().collect()
    }

    /// Which account a token was issued for, expired or not.
    pub fn token_account(&self, text: &str) -> Option<String> {
        lock(&self.tokens).get(text).map(|t| t.account_id.clone())
    }

    pub fn check_token(&self, text: &str) -> TokenCheck {
        match lock(&self.tokens).get(text) {
            Some(issued) if issued.expires_at > Instant::now() => TokenCheck::Valid(issued.clone()),
            Some(_) => TokenCheck::Expired,
            None => TokenCheck::Unknown,
        }
    }

    /// Serial of a token the simulator issued, expired or not.
    pub fn token_serial(&self, text: &str) -> Option<u64> {
        lock(&self.tokens).get(text).map(|t| t.serial)
    }

    pub fn expire_tokens(&self) {
        let now = Instant::now();
        for issued in lock(&self.tokens).values_mut() {
            issued.expires_at = issued.expires_at.min(now);
        }
        self.token_epoch.send_modify(|epoch| *epoch += 1);
    }
}

fn oauth_error(status: StatusCode, reason: &str, error: &str) -> Response {
    (
        status,
        axum::Json(json!({ "reason": reason, "error": error })),
    )
        .into_response()
}

/// `client_id` and `client_secret` from a Basic `Authorization` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

fn form_value(body: &[u8], key: &str) -> Option<String> {
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

async fn token_endpoint(
    State(sim): State<Arc<SimState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let in_query = uri.query().is_some_and(|q| q.contains("grant_type"));
    let grant_type = form_value(&body, "grant_type");
    if in_query || grant_type.is_none() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported grant type",
            "unsupported_grant_type",
        );
    }
    if grant_type.as_deref() != Some("account_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported grant type",
            "unsupported_grant_type",
        );
    }
    let config = &sim.config;
    let credentials = basic_credentials(&headers);
    let Some(account) = sim.accounts.iter().find(|a| {
        credentials
            .as_ref()
            .is_some_and(|(id, secret)| *id == a.client_id && *secret == a.client_secret)
    }) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "Invalid client_id or client_secret",
            "invalid_client",
        );
    };
    match form_value(&body, "account_id") {
        Some(account_id) if account_id == account.account_id => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "Invalid account_id",
                "invalid_request",
            );
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "Missing account_id",
                "invalid_request",
            );
        }
    }
    let (token, _) = sim.issue_token_for(&account.account_id);
    // Zoom counts in whole seconds; round up so a sub-second test lifetime is not 0.
    let lifetime = config.token_lifetime;
    let expires_in = lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0);
    axum::Json(json!({
        "access_token": token,
        "token_type": "bearer",
        "expires_in": expires_in,
        "scope": "meeting:read:admin meeting:write:admin recording:read:admin recording:write:admin user:read:admin report:read:admin",
    }))
    .into_response()
}
