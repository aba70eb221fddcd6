//! Who may use the admin server. With a token (`ZOOMWIRE_ADMIN_TOKEN`),
//! every endpoint but `/healthz` (and the login page and its assets) needs
//! `Authorization: Bearer <token>` or the page's session cookie; anything
//! else gets 401. Without a token the server binds loopback only (see
//! [`check_bind`]) and answers only requests whose `Host` names loopback, so
//! that a web page cannot reach it by pointing its own host name at
//! 127.0.0.1 (DNS rebinding). Either way a request that changes something
//! (any method but GET and HEAD) coming from a browser must come from the
//! server's own origin: its `Origin` header must match its `Host`.
//!
//! Tokens are compared in constant time (their SHA-256 digests, so the
//! length leaks nothing either). The login form trades the token for a
//! random session id in an HttpOnly, SameSite=Strict cookie; the server
//! keeps only the ids' digests, in memory (a restart logs everyone out).
//! The token and session ids are never logged.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The shortest token accepted.
pub const MIN_TOKEN_CHARS: usize = 16;
/// The session cookie's name.
pub const SESSION_COOKIE: &str = "zoomwire_session";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; the oldest goes when a new one would pass it.
const MAX_SESSIONS: usize = 256;

/// The admin token. Its `Debug` never shows it.
#[derive(Clone)]
pub struct AdminToken(SecretString);

impl AdminToken {
    /// A token of at least [`MIN_TOKEN_CHARS`] characters; the error never
    /// repeats the value.
    pub fn new(token: &str) -> Result<AdminToken, String> {
        let token = token.trim();
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(format!(
                "too short: use at least {MIN_TOKEN_CHARS} characters (for example the output of `openssl rand -hex 32`)"
            ));
        }
        Ok(AdminToken(SecretString::from(token)))
    }

    /// Registers the token for redaction by value.
    pub fn register_secret(&self, secrets: &crate::secrets::Secrets) -> bool {
        secrets.add(self.0.expose_secret()).is_ok()
    }

    /// Whether `candidate` is this token, in constant time.
    pub fn matches(&self, candidate: &str) -> bool {
        let expected = Sha256::digest(self.0.expose_secret().as_bytes());
        let given = Sha256::digest(candidate.as_bytes());
        expected.ct_eq(&given).into()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken([redacted])")
    }
}

/// Why the admin server may not listen where it was asked to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the admin server would listen on {0}, beyond loopback, without ZOOMWIRE_ADMIN_TOKEN: set a token, or bind a loopback address such as 127.0.0.1:9797"
)]
pub struct UnguardedBind(pub SocketAddr);

/// Refuses to serve beyond loopback without a token.
pub fn check_bind(addr: SocketAddr, token: Option<&AdminToken>) -> Result<(), UnguardedBind> {
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(UnguardedBind(addr));
    }
    Ok(())
}

/// How a request proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    /// No token is configured: loopback is the guard.
    Loopback,
    Bearer,
    Session,
    None,
}

/// The guard's state: the token and the live sessions.
pub struct Guard {
    token: Option<AdminToken>,
    sessions: Mutex<HashMap<[u8; 32], Instant>>,
}

impl Guard {
    pub fn new(token: Option<AdminToken>) -> Arc<Guard> {
        Arc::new(Guard {
            token,
            sessions: Mutex::default(),
        })
    }

    /// Whether a token guards the server (so the page has a login).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `candidate` is the token (false when there is none).
    pub fn token_matches(&self, candidate: &str) -> bool {
        self.token.as_ref().is_some_and(|t| t.matches(candidate))
    }

    /// Starts a session and returns its id (for the cookie only).
    pub fn open_session(&self) -> Result<String, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        let id = hex::encode(bytes);
        let now = Instant::now();
        let mut sessions = self.sessions.lock();
        sessions.retain(|_, expires| *expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(digest(&id), now + SESSION_TTL);
        Ok(id)
    }

    /// Ends the session the request's cookie names, if any.
    pub fn close_session(&self, headers: &HeaderMap) {
        if let Some(id) = session_cookie(headers) {
            self.sessions.lock().remove(&digest(&id));
        }
    }

    fn session_valid(&self, id: &str) -> bool {
        let key = digest(id);
        let mut sessions = self.sessions.lock();
        match sessions.get(&key) {
            Some(expires) if *expires > Instant::now() => true,
            Some(_) => {
                sessions.remove(&key);
                false
            }
            None => false,
        }
    }

    fn credential(&self, headers: &HeaderMap) -> Credential {
        let Some(token) = &self.token else {
            return Credential::Loopback;
        };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let Some(given) = bearer {
            return if token.matches(given.trim()) {
                Credential::Bearer
            } else {
                Credential::None
            };
        }
        match session_cookie(headers) {
            Some(id) if self.session_valid(&id) => Credential::Session,
            _ => Credential::None,
        }
    }
}

/// The `Set-Cookie` value that holds a new session.
pub fn session_set_cookie(id: &str) -> String {
    cookie::Cookie::build((SESSION_COOKIE, id.to_string()))
        .path("/")
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .max_age(cookie::time::Duration::seconds(SESSION_TTL.as_secs() as i64))
        .build()
        .to_string()
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn session_clear_cookie() -> String {
    cookie::Cookie::build((SESSION_COOKIE, ""))
        .path("/")
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .max_age(cookie::time::Duration::ZERO)
        .build()
        .to_string()
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == SESSION_COOKIE)
        .map(|c| c.value().to_string())
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// Paths anyone may ask for: the health check, and what the login page needs.
fn is_open(path: &str) -> bool {
    path == "/healthz" || path == "/ui/login" || path.starts_with("/ui/assets/")
}

/// The middleware: the host check, then the credential check, then the
/// origin check for requests that change something.
pub async fn guard(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = request_host(&request);
    if !guard.has_token() && !host.as_deref().is_some_and(is_loopback_host) {
        return refuse(
            StatusCode::FORBIDDEN,
            "this admin server answers only requests addressed to a loopback name (localhost, 127.0.0.1, [::1]); set ZOOMWIRE_ADMIN_TOKEN to serve others",
        );
    }
    let path = request.uri().path();
    let credential = guard.credential(headers);
    if credential == Credential::None && !is_open(path) {
        return unauthorized(path, headers);
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD)
        && !same_origin(headers, host.as_deref(), credential)
    {
        return refuse(
            StatusCode::FORBIDDEN,
            "refused: this request comes from another site (its Origin does not match this server)",
        );
    }
    next.run(request).await
}

/// The host the request is addressed to: `Host`, or the URI's authority
/// (HTTP/2).
fn request_host(request: &Request) -> Option<String> {
    request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
}

/// Whether `host` (with or without a port) names loopback: `localhost`,
/// an address in 127.0.0.0/8, or `[::1]`.
pub fn is_loopback_host(host: &str) -> bool {
    let name = strip_port(host);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // `[::1]:9797` or `[::1]`.
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Whether a request that changes something comes from this server's own
/// pages. Browsers send `Origin` on such requests; tools such as curl do
/// not, and may go without one unless they rely on the session cookie.
fn same_origin(headers: &HeaderMap, host: Option<&str>, credential: Credential) -> bool {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|site| site.as_bytes() == b"cross-site")
    {
        return false;
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => credential != Credential::Session,
        Some(origin) => {
            let authority = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            authority.is_some_and(|a| host.is_some_and(|h| a.eq_ignore_ascii_case(h)))
        }
    }
}

fn refuse(status: StatusCode, message: &'static str) -> Response {
    let body = serde_json::json!({ "error": message });
    (status, axum::Json(body)).into_response()
}

/// 401: the login page for the page's own paths (htmx requests are sent
/// there), JSON with a Bearer challenge for the API and `/metrics`.
fn unauthorized(path: &str, headers: &HeaderMap) -> Response {
    if path.starts_with("/ui") || path == "/" {
        let mut response = super::ui::login_page(StatusCode::UNAUTHORIZED, None);
        if headers.contains_key("hx-request") {
            response
                .headers_mut()
                .insert("hx-redirect", HeaderValue::from_static("/ui/login"));
        }
        return response;
    }
    let body = serde_json::json!({
        "error": "unauthorized: send Authorization: Bearer <ZOOMWIRE_ADMIN_TOKEN>"
    });
    let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"zoomwire\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_exactly_and_never_show() {
        let token = AdminToken::new("correct horse battery staple").unwrap();
        assert!(token.matches("correct horse battery staple"));
        assert!(!token.matches("correct horse battery stapl"));
        assert!(!token.matches(""));
        assert_eq!(format!("{token:?}"), "AdminToken([redacted])");
        let error = AdminToken::new("short-secret").unwrap_err();
        assert!(error.starts_with("too short"), "{error}");
        assert!(!error.contains("short-secret"));
    }

    #[test]
    fn loopback_hosts_are_told_from_others() {
        for host in [
            "localhost",
            "LOCALHOST:9797",
            "127.0.0.1",
            "127.0.0.1:9797",
            "127.8.9.10:80",
            "[::1]",
            "[::1]:9797",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "attacker.example",
            "attacker.example:9797",
            "localhost.attacker.example",
            "10.0.0.1:9797",
            "[::2]:9797",
            "0.0.0.0:9797",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn binding_beyond_loopback_needs_a_token() {
        let token = AdminToken::new("0123456789abcdef").unwrap();
        let public: SocketAddr = "0.0.0.0:9797".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:9797".parse().unwrap();
        assert_eq!(check_bind(public, None), Err(UnguardedBind(public)));
        assert_eq!(check_bind(public, Some(&token)), Ok(()));
        assert_eq!(check_bind(local, None), Ok(()));
        assert_eq!(check_bind("[::1]:1".parse().unwrap(), None), Ok(()));
    }

    #[test]
    fn origins_must_match_the_host_and_cookies_need_one() {
        let mut headers = HeaderMap::new();
        let host = Some("127.0.0.1:9797");
        assert!(same_origin(&headers, host, Credential::Bearer), "curl");
        assert!(!same_origin(&headers, host, Credential::Session));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9797"),
        );
        assert!(same_origin(&headers, host, Credential::Session));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&headers, host, Credential::Loopback));
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&headers, host, Credential::Bearer));
    }

    #[test]
    fn sessions_are_kept_by_digest_and_end() {
        let guard = Guard::new(Some(AdminToken::new("0123456789abcdef").unwrap()));
        let id = guard.open_session().unwrap();
        assert_eq!(id.len(), 64);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {SESSION_COOKIE}={id}")).unwrap(),
        );
        assert_eq!(guard.credential(&headers), Credential::Session);
        assert!(!guard.sessions.lock().contains_key(id.as_bytes()));
        guard.close_session(&headers);
        assert_eq!(guard.credential(&headers), Credential::None);
        let cookie = session_set_cookie(&id);
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    }
}
