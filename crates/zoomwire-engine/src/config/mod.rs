//! Settings: `zoomwire.yaml` (optional), then a `.env` file (when present),
//! then the environment, each layer overriding the one before; secrets
//! wrapped in [`SecretString`] as soon as they are read.
//!
//! Loading reports every missing or invalid setting at once, each named as
//! both its environment variable and its `zoomwire.yaml` key, with where the
//! bad value came from; a secret's value is never repeated. The process
//! environment is read only by [`LoadOptions::from_process_env`], so tests
//! pass their own map and run in parallel. An empty variable counts as unset.
//!
//! The environment defines the Zoom account named `default` (and the Slack
//! webhook named `default`); `zoomwire.yaml` may define more of each.

mod accounts;
mod dotenv;
mod errors;
mod file;
mod resolve;
pub mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::serve::limits::EndpointLimits;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

pub use dotenv::{Dotenv, DotenvError, DotenvValue, parse_dotenv};
pub use errors::{ConfigError, ConfigErrors};

use crate::admin::{AdminOptions, AdminToken};
use crate::effects::live::LiveConfig;
use crate::journal::JournalMode;
use crate::journal::JournalOptions;
use crate::logging::LogFormat;
use crate::script::SandboxLimits;
use crate::zoom::oauth::OAuthConfig;
use crate::zoom::websocket::WsConfig;

/// The configuration file looked for in the working directory.
pub const CONFIG_FILE: &str = "zoomwire.yaml";
/// The `.env` file looked for in the working directory.
pub const DOTENV_FILE: &str = ".env";
/// Environment variable naming another configuration file.
pub const CONFIG_PATH_VAR: &str = "ZOOMWIRE_CONFIG";
/// The account (and Slack webhook) that environment variables define.
pub const DEFAULT_ACCOUNT: &str = "default";

/// Everything the engine is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Zoom accounts (subscriptions), each with its own token and connection.
    pub accounts: Vec<ZoomAccount>,
    pub zoom: ZoomEndpoints,
    pub webhook: WebhookSettings,
    pub slack: SlackSettings,
    pub email: EmailSettings,
    /// Store and archive folder (`ZOOMWIRE_DATA`).
    pub data_dir: PathBuf,
    /// Admin server address (`ZOOMWIRE_ADMIN_ADDR`).
    pub admin_addr: SocketAddr,
    /// Guards the admin server (`ZOOMWIRE_ADMIN_TOKEN`); without it the
    /// server is loopback-only. Its `Debug` is redacted.
    pub admin_token: Option<AdminToken>,
    /// Rules folder (`ZOOMWIRE_RULES`).
    pub rules_dir: PathBuf,
    /// Scripts folder (`ZOOMWIRE_SCRIPTS`).
    pub scripts_dir: PathBuf,
    pub log_format: LogFormat,
    pub websocket: WebsocketSettings,
    pub journal: JournalSettings,
    pub reconcile: ReconcileSettings,
    /// What effects may reach and keep.
    pub effects: EffectSettings,
    /// How long runs in flight may take to finish after Ctrl-C or SIGTERM.
    pub shutdown_grace: Duration,
    /// Runs that may wait their turn in all (`ZOOMWIRE_MAX_WAITING_RUNS`); at
    /// the bound intake stops reading events (backpressure), it drops none.
    pub max_waiting_runs: usize,
    /// Free values scripts see as `vars`.
    pub vars: serde_json::Map<String, serde_json::Value>,
    /// Sandbox limits as written (`sandbox:`); the sandbox replaces zeros and
    /// out-of-range values with safe ones (`SandboxLimits::effective`).
    pub sandbox: SandboxLimits,
    /// The files these settings were read from.
    pub loaded_from: LoadedFrom,
}

/// One Zoom account: a Server-to-Server OAuth app and its event subscription.
#[derive(Clone)]
pub struct ZoomAccount {
    /// `default` for the account the environment defines.
    pub name: String,
    pub account_id: String,
    pub client_id: String,
    pub client_secret: SecretString,
    /// WebSocket event subscription; `None` for an account used only for REST.
    pub subscription_id: Option<String>,
}

/// Base URLs of Zoom's endpoints (pointed at the simulator in tests): checked
/// URLs without a trailing `/`.
#[derive(Debug, Clone)]
pub struct ZoomEndpoints {
    pub oauth_base: String,
    pub api_base: String,
    /// Without any `subscriptionId` a pasted endpoint URL carried.
    pub ws_base: String,
    /// The `subscriptionId` of an endpoint URL pasted as `ZOOM_WS_BASE`;
    /// the only account uses it when it has none of its own.
    pub ws_subscription_id: Option<String>,
}

/// The webhook endpoint, enabled by its secret token.
#[derive(Clone)]
pub struct WebhookSettings {
    pub secret_token: Option<SecretString>,
    pub addr: SocketAddr,
    /// Timeouts, body size and connection and request limits of the endpoint.
    pub limits: EndpointLimits,
}

impl WebhookSettings {
    pub fn enabled(&self) -> bool {
        self.secret_token.is_some()
    }
}

#[derive(Clone)]
pub struct SlackSettings {
    pub bot_token: Option<SecretString>,
    /// A checked URL without a trailing `/`.
    pub api_base: String,
    /// Incoming webhooks by name (their URLs are secrets); `default` is `SLACK_WEBHOOK_URL`.
    pub webhooks: BTreeMap<String, SecretString>,
}

#[derive(Clone)]
pub struct EmailSettings {
    /// `smtp://user:pass@host:587` or `smtps://...`; holds a password.
    pub smtp_url: Option<SecretString>,
    pub from: Option<String>,
    /// A PEM file with an extra root certificate for the relay (`SMTP_CA_FILE`).
    pub ca_file: Option<PathBuf>,
}

/// Timings and limits of the Zoom WebSocket connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebsocketSettings {
    /// Interval between client heartbeats.
    pub heartbeat: Duration,
    /// Silence (no inbound frame) after which the connection counts as dead.
    pub dead_after: Duration,
    /// Largest accepted frame, in bytes.
    pub max_frame: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalSettings {
    /// Where runs are remembered (`ZOOMWIRE_JOURNAL`: `sqlite`, the default,
    /// `postgres`, shared by several nodes, or `memory`, which survives
    /// nothing and serves benchmarks).
    pub store: JournalMode,
    /// The PostgreSQL server (`ZOOMWIRE_DATABASE_URL`, required with
    /// `postgres`), checked; it is a secret and never shown.
    pub database: Option<crate::journal::postgres::DatabaseTarget>,
    /// This node's id among several (`ZOOMWIRE_NODE_ID`); the host name when unset.
    pub node_id: Option<String>,
    /// How long a lease lasts without renewal (`ZOOMWIRE_LEASE_TTL`); also
    /// how long a silent node keeps its runs before others take them.
    pub lease_ttl: Duration,
    /// When SQLite syncs to disk (`ZOOMWIRE_JOURNAL_SYNC`: `full`, the
    /// default, or `normal`).
    pub sync: crate::journal::JournalSync,
    /// How long an event id is remembered to drop duplicates.
    pub dedupe_window: Duration,
    /// How long finished runs and events are kept.
    pub retention: Duration,
    /// Past this size the store is warned about (`ZOOMWIRE_STORE_WARN_SIZE`).
    pub warn_size: u64,
}

/// What effects may reach and keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectSettings {
    /// Extra root certificates (PEM) for Zoom, Slack, downloads and
    /// `http::request` (`ZOOMWIRE_CA_FILE`).
    pub ca_file: Option<PathBuf>,
    /// Largest recording download (`ZOOMWIRE_MAX_DOWNLOAD`).
    pub max_download: u64,
    /// Live state keys one rule may hold (`ZOOMWIRE_STATE_MAX_KEYS`).
    pub state_max_keys: usize,
    /// Bytes of one state value as JSON (`ZOOMWIRE_STATE_MAX_VALUE`).
    pub state_max_value: usize,
}

/// Finding through REST what Zoom sent while no connection was up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileSettings {
    /// `ZOOMWIRE_RECONCILE`: on by default.
    pub enabled: bool,
    /// Time between sweeps (`ZOOMWIRE_RECONCILE_INTERVAL`).
    pub interval: Duration,
    /// How far back each pass looks (`ZOOMWIRE_RECONCILE_LOOKBACK`); at most
    /// the dedupe window.
    pub lookback: Duration,
}

/// Which files were read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedFrom {
    pub config_file: Option<PathBuf>,
    pub dotenv_file: Option<PathBuf>,
}

/// Where [`Settings::load`] looks.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The configuration file; it must exist. Default: `$ZOOMWIRE_CONFIG`, else
    /// `zoomwire.yaml` in `base_dir` when present.
    pub config_file: Option<PathBuf>,
    /// The `.env` file; it must exist. Default: `.env` in `base_dir` when present.
    pub dotenv_file: Option<PathBuf>,
    /// Where the default files are looked for.
    pub base_dir: PathBuf,
    /// The environment (names to values).
    pub env: BTreeMap<String, String>,
    /// Also check what `zoomwire run` needs, in the same list of errors.
    pub require_daemon: bool,
}

impl LoadOptions {
    /// Options reading the process environment and the working directory.
    pub fn from_process_env() -> LoadOptions {
        LoadOptions {
            env: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
            ..LoadOptions::default()
        }
    }
}

impl Default for LoadOptions {
    /// The working directory and an empty environment.
    fn default() -> Self {
        LoadOptions {
            config_file: None,
            dotenv_file: None,
            base_dir: PathBuf::from("."),
            env: BTreeMap::new(),
            require_daemon: false,
        }
    }
}

/// The texts settings are made from, already read.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub yaml: Option<SourceText>,
    pub dotenv: Option<SourceText>,
    pub env: BTreeMap<String, String>,
}

/// A file's name (for messages) and text.
#[derive(Clone)]
pub struct SourceText {
    pub path: PathBuf,
    pub text: String,
}

// By hand: a `.env` text holds secrets.
impl fmt::Debug for SourceText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceText")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Reads the files and the environment of `options`; every problem at once.
    pub fn load(options: &LoadOptions) -> Result<Settings, ConfigErrors> {
        let mut errors = Vec::new();
        let dotenv_path = options
            .dotenv_file
            .clone()
            .unwrap_or_else(|| options.base_dir.join(DOTENV_FILE));
        let dotenv = read_source(&dotenv_path, options.dotenv_file.is_some(), &mut errors);
        let config_path = options
            .config_file
            .clone()
            .or_else(|| config_path_from(&options.env, dotenv.as_ref()));
        let explicit = config_path.is_some();
        let config_path = config_path.unwrap_or_else(|| options.base_dir.join(CONFIG_FILE));
        let yaml = read_source(&config_path, explicit, &mut errors);
        let sources = Sources {
            yaml,
            dotenv,
            env: options.env.clone(),
        };
        let built = resolve::build(&sources);
        errors.extend(built.errors);
        if options.require_daemon {
            errors.extend(accounts::daemon_errors(
                &built.declared_accounts,
                built.settings.webhook.enabled(),
            ));
        }
        ConfigErrors::check(errors).map(|()| built.settings)
    }

    /// Settings from texts already read (no file access).
    pub fn from_sources(sources: &Sources) -> Result<Settings, ConfigErrors> {
        let built = resolve::build(sources);
        ConfigErrors::check(built.errors).map(|()| built.settings)
    }

    /// Checks what `zoomwire run` needs: the credentials of at least one Zoom
    /// account, and a subscription id for each (unless the webhook is enabled,
    /// which then delivers the events).
    pub fn require_daemon(&self) -> Result<(), ConfigErrors> {
        let declared: Vec<accounts::DeclaredAccount> = self
            .accounts
            .iter()
            .map(|a| accounts::DeclaredAccount {
                name: a.name.clone(),
                has_subscription: a.subscription_id.is_some(),
            })
            .collect();
        ConfigErrors::check(accounts::daemon_errors(&declared, self.webhook.enabled()))
    }

    /// The account with this name.
    pub fn account(&self, name: &str) -> Option<&ZoomAccount> {
        self.accounts.iter().find(|a| a.name == name)
    }

    /// The token cache's configuration for one account.
    pub fn oauth_config(&self, account: &ZoomAccount) -> OAuthConfig {
        OAuthConfig::new(
            &self.zoom.oauth_base,
            &account.account_id,
            &account.client_id,
            account.client_secret.clone(),
        )
    }

    /// The WebSocket client's configuration for one account; `None` when the
    /// account has no subscription id.
    pub fn websocket_config(&self, account: &ZoomAccount) -> Option<WsConfig> {
        let subscription_id = account.subscription_id.as_ref()?;
        Some(WsConfig {
            heartbeat_interval: self.websocket.heartbeat,
            dead_after: self.websocket.dead_after,
            max_frame_bytes: self.websocket.max_frame,
            ..WsConfig::new(&self.zoom.ws_base, subscription_id, &account.name)
        })
    }

    /// What the live effects need: endpoints, Slack, mail and the archive
    /// (`$ZOOMWIRE_DATA/archive`); rates and limits keep their defaults.
    pub fn live_config(&self) -> LiveConfig {
        let mut config = LiveConfig {
            zoom_api_base: checked_url(&self.zoom.api_base),
            slack_api_base: checked_url(&self.slack.api_base),
            slack_bot_token: self.slack.bot_token.clone(),
            slack_webhooks: self.slack.webhooks.clone(),
            smtp_url: self.email.smtp_url.clone(),
            email_from: self.email.from.clone(),
            smtp_ca_file: self.email.ca_file.clone(),
            ca_file: self.effects.ca_file.clone(),
            ..LiveConfig::new(&self.data_dir)
        };
        config.limits.max_download_bytes = Some(self.effects.max_download);
        config.limits.max_state_value_bytes = self.effects.state_max_value;
        config
    }

    /// Registers every secret these settings hold for redaction by value
    /// (the client secrets, the webhook secret, the Slack token and webhook
    /// URLs, the SMTP password, the admin token); answers the settings whose
    /// secret is too short to be scrubbed that way.
    pub fn register_secrets(&self, secrets: &crate::secrets::Secrets) -> Vec<String> {
        let mut too_short = Vec::new();
        let mut add = |setting: &str, secret: &str| {
            if secrets.add(secret).is_err() {
                too_short.push(setting.to_string());
            }
        };
        for account in &self.accounts {
            add(
                &format!("accounts.{}.client_secret", account.name),
                account.client_secret.expose_secret(),
            );
        }
        if let Some(secret) = &self.webhook.secret_token {
            add("ZOOM_WEBHOOK_SECRET_TOKEN", secret.expose_secret());
        }
        if let Some(token) = &self.slack.bot_token {
            add("SLACK_BOT_TOKEN", token.expose_secret());
        }
        for (name, url) in &self.slack.webhooks {
            let setting = format!("slack_webhooks.{name}");
            add(&setting, url.expose_secret());
            // The path is the secret part, and what a request line shows.
            if let Ok(parsed) = Url::parse(url.expose_secret())
                && parsed.path().len() > 1
            {
                add(&setting, parsed.path());
            }
        }
        if let Some(smtp_url) = &self.email.smtp_url {
            add("SMTP_URL", smtp_url.expose_secret());
            if let Ok(parsed) = Url::parse(smtp_url.expose_secret())
                && let Some(password) = parsed.password()
            {
                let decoded = percent_encoding::percent_decode_str(password).decode_utf8_lossy();
                add("SMTP_URL (its password)", &decoded);
            }
        }
        if let Some(token) = &self.admin_token
            && !token.register_secret(secrets)
        {
            too_short.push("ZOOMWIRE_ADMIN_TOKEN".into());
        }
        too_short
    }

    /// Where the admin server listens and its token.
    pub fn admin_options(&self) -> AdminOptions {
        AdminOptions {
            addr: self.admin_addr,
            token: self.admin_token.clone(),
        }
    }

    /// When and how far back reconciliation looks; never past the dedupe
    /// window, beyond which a duplicate would not be recognised.
    pub fn reconcile_config(&self) -> crate::reconcile::ReconcileConfig {
        crate::reconcile::ReconcileConfig {
            sweep_interval: self.reconcile.interval,
            lookback: self.reconcile.lookback,
            max_reach: self.journal.dedupe_window,
            ..crate::reconcile::ReconcileConfig::default()
        }
    }

    /// This node's id among several: `ZOOMWIRE_NODE_ID`, else the host name.
    pub fn node_id(&self) -> String {
        self.journal
            .node_id
            .clone()
            .unwrap_or_else(crate::cluster::default_node_id)
    }

    /// The journal's options: these windows, the daemon's defaults otherwise.
    pub fn journal_options(&self) -> JournalOptions {
        JournalOptions {
            dedupe_window: self.journal.dedupe_window,
            max_age: self.journal.retention,
            sync: self.journal.sync,
            warn_size_bytes: Some(self.journal.warn_size),
            max_state_keys: self.effects.state_max_keys,
            ..JournalOptions::default()
        }
    }
}

/// The JSON Schema of `zoomwire.yaml`, from the types serde reads it into.
pub fn file_schema() -> schemars::Schema {
    schemars::schema_for!(file::FileConfig)
}

impl Default for Settings {
    /// The design's defaults, no account, nothing optional set.
    fn default() -> Self {
        resolve::build(&Sources::default()).settings
    }
}

/// A base URL the settings already checked.
fn checked_url(text: &str) -> Url {
    // Cannot fail: the text is a parsed URL re-serialized without its trailing `/`.
    Url::parse(text).expect("settings hold checked URLs")
}

/// `ZOOMWIRE_CONFIG` from the environment, else from `.env`.
fn config_path_from(
    env: &BTreeMap<String, String>,
    dotenv: Option<&SourceText>,
) -> Option<PathBuf> {
    let from_env = env
        .get(CONFIG_PATH_VAR)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty());
    if let Some(path) = from_env {
        return Some(PathBuf::from(path));
    }
    let values = parse_dotenv(&dotenv?.text).values;
    let value = values.get(CONFIG_PATH_VAR)?.value.trim().to_string();
    (!value.is_empty()).then(|| PathBuf::from(value))
}

/// A file's text; a missing file is an error only when it was asked for by name.
fn read_source(path: &Path, required: bool, errors: &mut Vec<ConfigError>) -> Option<SourceText> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(SourceText {
            path: path.to_path_buf(),
            text,
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && !required => None,
        Err(error) => {
            errors.push(ConfigError::file(
                path.display().to_string(),
                format!("cannot read the file: {error}"),
            ));
            None
        }
    }
}

fn redacted(secret: &Option<SecretString>) -> Option<&'static str> {
    secret.as_ref().map(|_| "[redacted]")
}

impl fmt::Debug for ZoomAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZoomAccount")
            .field("name", &self.name)
            .field("account_id", &self.account_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("subscription_id", &self.subscription_id)
            .finish()
    }
}

impl fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("secret_token", &redacted(&self.secret_token))
            .field("addr", &self.addr)
            .field("limits", &self.limits)
            .finish()
    }
}

impl fmt::Debug for SlackSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlackSettings")
            .field("bot_token", &redacted(&self.bot_token))
            .field("api_base", &self.api_base)
            .field("webhooks", &self.webhooks.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl fmt::Debug for EmailSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let relay = self.smtp_url.as_ref().map(|url| {
            Url::parse(url.expose_secret())
                .map(|url| values::redacted_url(&url))
                .unwrap_or_else(|_| "[redacted]".into())
        });
        f.debug_struct("EmailSettings")
            .field("smtp_url", &relay)
            .field("from", &self.from)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

#[cfg(test)]
mod tests;
