//! [`LiveEffects`]: the real [`Effects`] behind the daemon. It dispatches each
//! request by name to the Zoom REST client, Slack, the mailer, plain HTTP,
//! the recording downloader or the rule state store.
//!
//! Capability checks, numbering, replay, redaction and recording happen in
//! the gateway before a request gets here; this layer checks arguments,
//! picks the run's Zoom account (its own token, REST client and rate
//! limiter, see [`super::accounts`]), talks to the peer and maps its
//! failures onto [`EffectError`] kinds.
//! Everything it needs comes in through [`LiveConfig`], a plain struct the
//! daemon fills from its settings (secrets wrapped, hidden from `Debug`).

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use url::Url;

use super::EffectName;
use super::accounts::{AccountEntry, ZoomAccountClient, ZoomAccounts};
use super::download::{DEFAULT_ZOOM_HOSTS, DownloadConfig, Downloader, OAuthFallback};
use super::email::{EmailConfigError, Mailer, SmtpSettings};
use super::http::{ClientFactory, HttpEffect, HttpLimits};
use super::slack::{SlackClient, SlackConfig};
use super::state::{StateError, StateStore};
use super::{BoxFuture, EffectContext, EffectError, EffectErrorKind, EffectRequest, Effects};
use crate::http_retry::RetryPolicy;
use crate::zoom::rest::{RestConfig, ZoomRest};

/// The default cap of one recording download: 16 GiB, more than a long
/// meeting's video.
pub const DEFAULT_MAX_DOWNLOAD_BYTES: u64 = 16 << 30;

/// The default cap of one rule state value (as JSON).
pub const DEFAULT_MAX_STATE_VALUE_BYTES: usize = 64 << 10;

/// Size and time limits shared by the live effects.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveLimits {
    pub connect_timeout: Duration,
    /// One request to Zoom, Slack or an HTTP host (the run's deadline bounds it too).
    pub request_timeout: Duration,
    /// A transfer that sends nothing for this long is abandoned (downloads included).
    pub stall_timeout: Duration,
    /// Zoom, Slack and HTTP response bodies.
    pub max_response_bytes: usize,
    /// HTTP request bodies and email bodies.
    pub max_request_bytes: usize,
    /// One rule state value, as JSON.
    pub max_state_value_bytes: usize,
    /// Largest recording download, whatever `file_size` says or the
    /// server announces; `None` for no limit but the disk.
    pub max_download_bytes: Option<u64>,
    pub max_redirects: u32,
    pub retry: RetryPolicy,
}

impl Default for LiveLimits {
    fn default() -> LiveLimits {
        LiveLimits {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            max_response_bytes: 8 << 20,
            max_request_bytes: 4 << 20,
            max_state_value_bytes: DEFAULT_MAX_STATE_VALUE_BYTES,
            max_download_bytes: Some(DEFAULT_MAX_DOWNLOAD_BYTES),
            max_redirects: 10,
            retry: RetryPolicy::default(),
        }
    }
}

/// What the live effects need from the daemon's settings.
#[derive(Clone)]
pub struct LiveConfig {
    /// `ZOOM_API_BASE`, default `https://api.zoom.us/v2`.
    pub zoom_api_base: Url,
    /// Client-side request rate, per Zoom account.
    pub zoom_requests_per_second: NonZeroU32,
    /// `zoom::paginate` fails rather than follow more pages.
    pub zoom_max_pages: u32,
    /// Hosts that get the download or OAuth token for `zoom::download`
    /// ([`DEFAULT_ZOOM_HOSTS`]); the API base's host is always added.
    pub zoom_download_hosts: Vec<String>,
    /// `SLACK_API_BASE`, default `https://slack.com/api`.
    pub slack_api_base: Url,
    /// `SLACK_BOT_TOKEN`.
    pub slack_bot_token: Option<SecretString>,
    /// Incoming webhooks by name; `default` is `SLACK_WEBHOOK_URL`.
    pub slack_webhooks: BTreeMap<String, SecretString>,
    /// `SMTP_URL` (may hold a password).
    pub smtp_url: Option<SecretString>,
    /// `EMAIL_FROM`.
    pub email_from: Option<String>,
    /// A PEM file with an extra root certificate for the SMTP relay.
    pub smtp_ca_file: Option<PathBuf>,
    /// A PEM file with extra root certificates for Zoom's REST API and
    /// downloads, Slack and `http::request` (a private CA).
    pub ca_file: Option<PathBuf>,
    /// Where `zoom::download` writes, default `$ZOOMWIRE_DATA/archive`.
    pub archive_dir: PathBuf,
    pub limits: LiveLimits,
}

impl LiveConfig {
    /// Zoom's and Slack's public endpoints, the archive under `data_dir`,
    /// no Slack token, webhooks or mail relay.
    pub fn new(data_dir: &Path) -> LiveConfig {
        LiveConfig {
            zoom_api_base: known_url("https://api.zoom.us/v2"),
            zoom_requests_per_second: NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN),
            zoom_max_pages: 100,
            zoom_download_hosts: DEFAULT_ZOOM_HOSTS.iter().map(|h| h.to_string()).collect(),
            slack_api_base: known_url("https://slack.com/api"),
            slack_bot_token: None,
            slack_webhooks: BTreeMap::new(),
            smtp_url: None,
            email_from: None,
            smtp_ca_file: None,
            ca_file: None,
            archive_dir: data_dir.join("archive"),
            limits: LiveLimits::default(),
        }
    }
}

fn known_url(text: &str) -> Url {
    // The literals passed here are valid URLs; a failure is a bug caught by the tests.
    Url::parse(text).expect("built-in url")
}

impl fmt::Debug for LiveConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |set: bool| if set { "[redacted]" } else { "none" };
        f.debug_struct("LiveConfig")
            .field("zoom_api_base", &self.zoom_api_base.as_str())
            .field("zoom_requests_per_second", &self.zoom_requests_per_second)
            .field("zoom_max_pages", &self.zoom_max_pages)
            .field("zoom_download_hosts", &self.zoom_download_hosts)
            .field("slack_api_base", &self.slack_api_base.as_str())
            .field("slack_bot_token", &hidden(self.slack_bot_token.is_some()))
            .field(
                "slack_webhooks",
                &self.slack_webhooks.keys().collect::<Vec<_>>(),
            )
            .field("smtp_url", &hidden(self.smtp_url.is_some()))
            .field("email_from", &self.email_from)
            .field("smtp_ca_file", &self.smtp_ca_file)
            .field("ca_file", &self.ca_file)
            .field("archive_dir", &self.archive_dir)
            .field("limits", &self.limits)
            .finish()
    }
}

/// Why the live effects could not be built: a configuration error.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Email(#[from] EmailConfigError),
    #[error("SMTP_URL is set but EMAIL_FROM is not: mail needs a sender address")]
    NoSender,
    #[error("reading the SMTP CA certificate {path}: {error}")]
    CaFile { path: PathBuf, error: String },
    #[error("reading the CA certificates {path}: {error}")]
    Roots { path: PathBuf, error: String },
    #[error("building the http client: {0}")]
    Client(String),
}

/// The real effects.
pub struct LiveEffects {
    zoom: ZoomAccounts,
    slack: SlackClient,
    mailer: Option<Mailer>,
    http: HttpEffect,
    downloads: Downloader,
    state: Arc<dyn StateStore>,
    max_state_value_bytes: usize,
}

impl LiveEffects {
    /// The effects for these Zoom accounts, each with its own REST client
    /// and limiter over its token cache.
    pub fn new(
        config: LiveConfig,
        accounts: Vec<ZoomAccountClient>,
        state: Arc<dyn StateStore>,
    ) -> Result<LiveEffects, LiveError> {
        let limits = &config.limits;
        let roots = extra_roots(config.ca_file.as_deref())?;
        let client = client_builder(limits, &roots)
            .build()
            .map_err(|e| LiveError::Client(e.to_string()))?;
        let zoom = ZoomAccounts::new(
            accounts
                .into_iter()
                .map(|account| AccountEntry {
                    rest: ZoomRest::new(
                        client.clone(),
                        rest_config(&config),
                        account.tokens.clone(),
                    ),
                    name: account.name,
                    account_id: account.account_id,
                    tokens: account.tokens,
                })
                .collect(),
        );
        let slack = SlackClient::new(client.clone(), slack_config(&config));
        let (http_limits, http_roots) = (limits.clone(), roots.clone());
        let factory: ClientFactory = Arc::new(move |resolver| {
            client_builder(&http_limits, &http_roots)
                .dns_resolver(Arc::new(resolver))
                .no_proxy()
                .build()
        });
        let http = HttpEffect::new(
            factory,
            HttpLimits {
                max_request_bytes: limits.max_request_bytes,
                max_response_bytes: limits.max_response_bytes,
                timeout: limits.request_timeout,
                max_redirects: limits.max_redirects,
            },
        );
        let downloads = Downloader::new(client, download_config(&config));
        Ok(LiveEffects {
            zoom,
            slack,
            mailer: mailer(&config)?,
            http,
            downloads,
            state,
            max_state_value_bytes: limits.max_state_value_bytes,
        })
    }

    async fn dispatch(
        &self,
        context: &EffectContext,
        request: &EffectRequest,
    ) -> Result<Value, EffectError> {
        let name = request.name.as_str();
        let args = &request.args;
        let deadline = context.deadline;
        match EffectName::from_name(name) {
            Some(EffectName::ZoomGet) => self.zoom_call(name, Method::GET, context, args).await,
            Some(EffectName::ZoomPost) => self.zoom_call(name, Method::POST, context, args).await,
            Some(EffectName::ZoomPatch) => self.zoom_call(name, Method::PATCH, context, args).await,
            Some(EffectName::ZoomPut) => self.zoom_call(name, Method::PUT, context, args).await,
            Some(EffectName::ZoomDelete) => {
                self.zoom_call(name, Method::DELETE, context, args).await
            }
            Some(EffectName::ZoomPaginate) => self.zoom_paginate(context, args).await,
            Some(EffectName::ZoomDownload) => {
                let oauth: OAuthFallback = self
                    .zoom
                    .pick(name, None, &context.zoom_account)
                    .map(|account| account.tokens.clone());
                self.downloads.download(context, args, &oauth).await
            }
            Some(EffectName::SlackPost) => self.slack.post(args, deadline).await,
            Some(EffectName::SlackWebhook) => self.slack.webhook(args, deadline).await,
            Some(EffectName::EmailSend) => match &self.mailer {
                Some(mailer) => mailer.send(args).await,
                None => Err(EffectError::permanent(
                    name,
                    "email is not configured: set SMTP_URL and EMAIL_FROM",
                )),
            },
            Some(EffectName::HttpRequest) => self.http.request(context, args).await,
            Some(EffectName::StateGet) => self.state_get(context, args).await,
            Some(EffectName::StateSet) => self.state_set(context, args).await,
            None | Some(EffectName::Now) => Err(EffectError::permanent(
                name,
                format!("unknown effect `{name}`"),
            )),
        }
    }

    async fn zoom_call(
        &self,
        effect: &str,
        method: Method,
        context: &EffectContext,
        args: &Value,
    ) -> Result<Value, EffectError> {
        let path = string_arg(effect, args, "path")?;
        let (account, params) = account_and_params(effect, args)?;
        let rest = &self
            .zoom
            .pick(effect, account.as_deref(), &context.zoom_account)?
            .rest;
        let body = match args.get("body") {
            None | Some(Value::Null) => None,
            Some(body) => Some(body),
        };
        rest.request(method, path, &params, body, context.deadline)
            .await
            .map_err(|e| EffectError::from_rest(effect, e))
    }

    async fn zoom_paginate(
        &self,
        context: &EffectContext,
        args: &Value,
    ) -> Result<Value, EffectError> {
        const EFFECT: &str = EffectName::ZoomPaginate.as_str();
        let path = string_arg(EFFECT, args, "path")?;
        let items_key = string_arg(EFFECT, args, "items_key")?;
        let (account, params) = account_and_params(EFFECT, args)?;
        let rest = &self
            .zoom
            .pick(EFFECT, account.as_deref(), &context.zoom_account)?
            .rest;
        rest.paginate(path, items_key, &params, context.deadline)
            .await
            .map(Value::Array)
            .map_err(|e| EffectError::from_rest(EFFECT, e))
    }

    async fn state_get(&self, context: &EffectContext, args: &Value) -> Result<Value, EffectError> {
        let key = string_arg(EffectName::StateGet.as_str(), args, "key")?.to_string();
        let state = self.state.clone();
        let rule = context.rule.clone();
        run_blocking(EffectName::StateGet.as_str(), move || {
            state.get(&rule, &key)
        })
        .await
        .map(|value| value.unwrap_or(Value::Null))
    }

    async fn state_set(&self, context: &EffectContext, args: &Value) -> Result<Value, EffectError> {
        const EFFECT: &str = EffectName::StateSet.as_str();
        let key = string_arg(EFFECT, args, "key")?.to_string();
        let value = args.get("value").cloned().unwrap_or(Value::Null);
        let max = self.max_state_value_bytes;
        let size = serde_json::to_string(&value).map_or(0, |text| text.len());
        if size > max {
            return Err(EffectError::permanent(
                EFFECT,
                format!(
                    "the value is {size} bytes as JSON, larger than the {max} byte limit (state.max_value_size)"
                ),
            ));
        }
        let ttl = match args.get("ttl") {
            None | Some(Value::Null) => None,
            Some(ttl) => match ttl.as_f64() {
                Some(seconds) if seconds > 0.0 && seconds.is_finite() => {
                    Some(Duration::from_secs_f64(seconds))
                }
                _ => {
                    return Err(EffectError::permanent(
                        EFFECT,
                        "`ttl` must be a positive number of seconds",
                    ));
                }
            },
        };
        let state = self.state.clone();
        let rule = context.rule.clone();
        run_blocking(EFFECT, move || state.set(&rule, &key, value, ttl))
            .await
            .map(|()| Value::Null)
    }
}

impl Effects for LiveEffects {
    fn perform<'a>(
        &'a self,
        context: &'a EffectContext,
        request: &'a EffectRequest,
    ) -> BoxFuture<'a, Result<Value, EffectError>> {
        Box::pin(async move {
            let result = self.dispatch(context, request).await;
            let outcome = match &result {
                Ok(_) => "ok",
                Err(error) => match error.kind {
                    EffectErrorKind::Transient => "transient",
                    EffectErrorKind::Permanent => "permanent",
                    EffectErrorKind::Denied => "denied",
                    EffectErrorKind::Timeout => "timeout",
                    EffectErrorKind::InDoubt => "in_doubt",
                },
            };
            metrics::counter!("zoomwire_effects_total", "effect" => EffectName::metric_label(&request.name), "outcome" => outcome)
                .increment(1);
            result
        })
    }
}

/// The clients' common settings: no redirects followed (each effect checks
/// every hop), timeouts, the extra roots.
fn client_builder(limits: &LiveLimits, roots: &[reqwest::Certificate]) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(limits.connect_timeout)
        .read_timeout(limits.stall_timeout)
        .user_agent(concat!("zoomwire/", env!("CARGO_PKG_VERSION")))
        .tls_certs_merge(roots.iter().cloned())
}

/// The certificates of `ca_file`, if one is set.
fn extra_roots(ca_file: Option<&Path>) -> Result<Vec<reqwest::Certificate>, LiveError> {
    let Some(path) = ca_file else {
        return Ok(Vec::new());
    };
    let roots_error = |error: String| LiveError::Roots {
        path: path.to_path_buf(),
        error,
    };
    let pem = std::fs::read(path).map_err(|e| roots_error(e.to_string()))?;
    let roots =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| roots_error(e.to_string()))?;
    if roots.is_empty() {
        return Err(roots_error("no certificate in the file".into()));
    }
    Ok(roots)
}

/// Runs a state-store call off the reactor (the journal's store is SQLite).
async fn run_blocking<T: Send + 'static>(
    effect: &'static str,
    call: impl FnOnce() -> Result<T, StateError> + Send + 'static,
) -> Result<T, EffectError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| EffectError::transient(effect, e.to_string()))?
        .map_err(|e| match e {
            StateError::Full { .. } => EffectError::permanent(effect, e.to_string()),
            StateError::Store(_) => EffectError::transient(effect, e.to_string()),
        })
}

fn string_arg<'a>(effect: &str, args: &'a Value, key: &str) -> Result<&'a str, EffectError> {
    args.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| EffectError::permanent(effect, format!("`{key}` must be a string")))
}

fn params_arg(effect: &str, args: &Value) -> Result<Map<String, Value>, EffectError> {
    match args.get("params") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map.clone()),
        Some(_) => Err(EffectError::permanent(effect, "`params` must be a map")),
    }
}

/// The params without `account`, which names the Zoom account to call as
/// and never goes to Zoom.
fn account_and_params(
    effect: &str,
    args: &Value,
) -> Result<(Option<String>, Map<String, Value>), EffectError> {
    let mut params = params_arg(effect, args)?;
    let account = match params.remove("account") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(name),
        Some(_) => {
            return Err(EffectError::permanent(
                effect,
                "`account` must be the name of a configured zoom account",
            ));
        }
    };
    Ok((account, params))
}

fn rest_config(config: &LiveConfig) -> RestConfig {
    RestConfig {
        requests_per_second: config.zoom_requests_per_second,
        max_pages: config.zoom_max_pages,
        max_response_bytes: config.limits.max_response_bytes,
        request_timeout: config.limits.request_timeout,
        retry: config.limits.retry.clone(),
        ..RestConfig::new(config.zoom_api_base.clone())
    }
}

fn slack_config(config: &LiveConfig) -> SlackConfig {
    SlackConfig {
        api_base: config.slack_api_base.clone(),
        bot_token: config.slack_bot_token.clone(),
        webhooks: config.slack_webhooks.clone(),
        max_response_bytes: config.limits.max_response_bytes,
        request_timeout: config.limits.request_timeout,
        retry: config.limits.retry.clone(),
    }
}

fn download_config(config: &LiveConfig) -> DownloadConfig {
    let mut zoom_hosts: Vec<String> = config
        .zoom_download_hosts
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    if let Some(host) = config.zoom_api_base.host_str() {
        zoom_hosts.push(host.to_ascii_lowercase());
    }
    DownloadConfig {
        archive_dir: config.archive_dir.clone(),
        zoom_hosts,
        max_bytes: config.limits.max_download_bytes,
        max_redirects: config.limits.max_redirects,
        retry: config.limits.retry.clone(),
    }
}

fn mailer(config: &LiveConfig) -> Result<Option<Mailer>, LiveError> {
    let Some(smtp_url) = &config.smtp_url else {
        return Ok(None);
    };
    let settings = SmtpSettings::parse(smtp_url.expose_secret())?;
    let from = config.email_from.as_deref().ok_or(LiveError::NoSender)?;
    let ca_pem = match &config.smtp_ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|e| LiveError::CaFile {
            path: path.clone(),
            error: e.to_string(),
        })?),
        None => None,
    };
    let mailer = Mailer::new(
        &settings,
        from,
        ca_pem.as_deref(),
        config.limits.request_timeout,
        config.limits.max_request_bytes,
    )?;
    Ok(Some(mailer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::state::MemoryState;
    use crate::zoom::token::{AccessToken, StaticToken};
    use serde_json::json;
    use std::time::Instant;

    fn config() -> LiveConfig {
        let mut config = LiveConfig::new(Path::new("/tmp/zoomwire-test"));
        config.slack_bot_token = Some(SecretString::from("xoxb-secret"));
        config.slack_webhooks.insert(
            "default".into(),
            SecretString::from("https://hooks.slack.com/services/T/B/secret-path"),
        );
        config.smtp_url = Some(SecretString::from("smtp://u:hunter2@mail.test"));
        config.email_from = Some("bot@example.com".into());
        config
    }

    fn only_account() -> Vec<ZoomAccountClient> {
        vec![ZoomAccountClient::only(Arc::new(StaticToken(
            AccessToken::new("t"),
        )))]
    }

    fn live(config: LiveConfig) -> LiveEffects {
        LiveEffects::new(config, only_account(), Arc::new(MemoryState::default())).unwrap()
    }

    fn context() -> EffectContext {
        EffectContext {
            rule: Arc::from("r"),
            run_id: Arc::from("run"),
            deadline: Instant::now() + Duration::from_secs(5),
            http_hosts: Arc::from(vec![]),
            download_token: None,
            zoom_account: Default::default(),
        }
    }

    #[test]
    fn debug_hides_every_secret() {
        let debug = format!("{:?}", config());
        for secret in ["xoxb-secret", "secret-path", "hunter2"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(debug.contains("default"), "{debug}");
        assert!(debug.contains("archive"), "{debug}");
    }

    #[test]
    fn needs_a_sender_when_mail_is_configured() {
        let mut config = config();
        config.email_from = None;
        let error = LiveEffects::new(config, only_account(), Arc::new(MemoryState::default()))
            .err()
            .unwrap();
        assert!(matches!(error, LiveError::NoSender));
    }

    #[test]
    fn builds_and_drops_outside_a_runtime() {
        // The daemon may drop its effects after the runtime is gone.
        let effects = live(config());
        assert!(effects.mailer.is_some());
        drop(effects);
    }

    #[tokio::test]
    async fn keeps_state_per_rule() {
        let effects = live(config());
        let context = context();
        let set = EffectRequest::new("state.set", json!({"key": "k", "value": [1, 2]}));
        effects.perform(&context, &set).await.unwrap();
        let get = EffectRequest::new("state.get", json!({"key": "k"}));
        assert_eq!(
            effects.perform(&context, &get).await.unwrap(),
            json!([1, 2])
        );
        let other = EffectContext {
            rule: Arc::from("other"),
            ..context
        };
        assert_eq!(effects.perform(&other, &get).await.unwrap(), Value::Null);
    }

    #[tokio::test]
    async fn refuses_unknown_effects_and_missing_configuration() {
        let mut config = config();
        config.smtp_url = None;
        config.slack_bot_token = None;
        let effects = live(config);
        let context = context();
        for (name, args, message) in [
            ("zoom.teleport", json!({}), "unknown effect `zoom.teleport`"),
            (
                "email.send",
                json!({"to": "a@b.c", "text": "x"}),
                "email is not configured: set SMTP_URL and EMAIL_FROM",
            ),
            (
                "slack.post",
                json!({"channel": "#a", "text": "x"}),
                "SLACK_BOT_TOKEN is not set: slack::post needs a bot token",
            ),
            ("zoom.get", json!({"path": 5}), "`path` must be a string"),
            (
                "state.set",
                json!({"key": "k", "value": 1, "ttl": -1}),
                "`ttl` must be a positive number of seconds",
            ),
            (
                "state.set",
                json!({"key": "k", "value": "x".repeat(DEFAULT_MAX_STATE_VALUE_BYTES)}),
                "the value is 65538 bytes as JSON, larger than the 65536 byte limit (state.max_value_size)",
            ),
        ] {
            let error = effects
                .perform(&context, &EffectRequest::new(name, args))
                .await
                .unwrap_err();
            assert_eq!(error.message, message, "{name}");
            assert_eq!(error.kind, EffectErrorKind::Permanent);
        }
    }

    #[test]
    fn downloads_trust_the_api_host_too() {
        let mut config = config();
        config.zoom_api_base = Url::parse("http://127.0.0.1:9/v2").unwrap();
        let downloads = download_config(&config);
        assert!(downloads.zoom_hosts.contains(&"127.0.0.1".to_string()));
        assert!(downloads.zoom_hosts.contains(&"*.zoom.us".to_string()));
    }
}
