//! Layering and checking: each setting is looked up in the environment, then
//! `.env`, then `zoomwire.yaml`, then its default, parsed, and every problem
//! recorded with the setting's names and where its value came from, so that
//! one pass reports all of them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;
use secrecy::SecretString;

use super::accounts::{DeclaredAccount, resolve_accounts};
use super::errors::ConfigError;
use super::file::{FileConfig, SettingText, parse_file};
use super::values::{
    parse_duration, parse_mailbox, parse_name, parse_positive_duration, parse_secret_url,
    parse_size, parse_smtp_url, parse_socket_addr, parse_switch, parse_url,
};
use super::{
    DEFAULT_ACCOUNT, DotenvValue, EffectSettings, EmailSettings, JournalSettings, LoadedFrom,
    ReconcileSettings, Settings, SlackSettings, Sources, WebhookSettings, WebsocketSettings,
    ZoomEndpoints, parse_dotenv,
};
use crate::admin::AdminToken;
use crate::admin::guard::check_bind;
use crate::event::MAX_EVENT_BYTES;
use crate::journal::JournalMode;
use crate::journal::JournalSync;
use crate::journal::postgres::DatabaseTarget;
use crate::script::SandboxLimits;
use crate::serve::limits::EndpointLimits;

const DEFAULT_OAUTH_BASE: &str = "https://zoom.us";
const DEFAULT_API_BASE: &str = "https://api.zoom.us/v2";
const DEFAULT_WS_BASE: &str = "wss://ws.zoom.us/ws";
const DEFAULT_SLACK_API_BASE: &str = "https://slack.com/api";
const DEFAULT_ADMIN_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9797);
const DEFAULT_WEBHOOK_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9798);
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(75);
/// Room for a maximal event escaped inside a frame, as `WsConfig::new` has it,
/// so that the frame decoder (not the transport) refuses an oversized event.
/// Runs that may wait their turn before intake stops reading.
const DEFAULT_MAX_WAITING_RUNS: usize = 100_000;
const DEFAULT_MAX_FRAME: usize = MAX_EVENT_BYTES + MAX_EVENT_BYTES / 2;
/// Covers the reconciliation lookback (48 h) and the lag of a late delivery.
const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(72 * 3600);
const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// Recordings can finish processing a day after their meeting; deliveries lag.
const DEFAULT_RECONCILE_LOOKBACK: Duration = Duration::from_secs(48 * 3600);

const HTTP: &[&str] = &["http", "https"];
const WS: &[&str] = &["ws", "wss"];

/// A setting's names. The parsers of secret settings never quote the value.
pub(super) struct Key {
    pub env: Option<&'static str>,
    pub yaml: String,
}

pub(super) fn key(env: &'static str, yaml: &str) -> Key {
    Key {
        env: Some(env),
        yaml: yaml.to_string(),
    }
}

pub(super) fn yaml_key(yaml: String) -> Key {
    Key { env: None, yaml }
}

/// A value as written, and where.
pub(super) struct Raw {
    text: String,
    origin: String,
}

pub(super) struct Resolver<'a> {
    env: &'a BTreeMap<String, String>,
    dotenv: BTreeMap<String, DotenvValue>,
    dotenv_name: String,
    pub yaml_name: String,
    errors: Vec<ConfigError>,
}

impl Resolver<'_> {
    /// The value that wins: environment, then `.env`, then the file. Blank counts as unset.
    pub(super) fn raw(&self, key: &Key, yaml: Option<&SettingText>) -> Option<Raw> {
        let non_blank = |text: &str| {
            Some(text.trim())
                .filter(|t| !t.is_empty())
                .map(str::to_string)
        };
        if let Some(env) = key.env {
            if let Some(text) = self.env.get(env).and_then(|v| non_blank(v)) {
                return Some(Raw {
                    text,
                    origin: "the environment".into(),
                });
            }
            if let Some((value, text)) = self
                .dotenv
                .get(env)
                .and_then(|value| Some((value, non_blank(&value.value)?)))
            {
                return Some(Raw {
                    text,
                    origin: format!("{} line {}", self.dotenv_name, value.line),
                });
            }
        }
        let text = non_blank(&yaml?.0)?;
        Some(Raw {
            text,
            origin: self.yaml_name.clone(),
        })
    }

    /// The parsed value; `None` when unset or invalid (then recorded).
    pub(super) fn get<T>(
        &mut self,
        key: &Key,
        yaml: Option<&SettingText>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let raw = self.raw(key, yaml)?;
        match parse(&raw.text) {
            Ok(value) => Some(value),
            Err(message) => {
                self.fail(key, message, Some(raw.origin));
                None
            }
        }
    }

    /// Like [`Resolver::get`], recording `missing` when unset.
    pub(super) fn require<T>(
        &mut self,
        key: &Key,
        yaml: Option<&SettingText>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        if self.raw(key, yaml).is_none() {
            self.fail(key, "missing".into(), None);
            return None;
        }
        self.get(key, yaml, parse)
    }

    pub(super) fn secret(&mut self, key: &Key, yaml: Option<&SettingText>) -> Option<SecretString> {
        self.get(key, yaml, |text| Ok(SecretString::from(text)))
    }

    pub(super) fn fail(&mut self, key: &Key, message: String, origin: Option<String>) {
        self.errors.push(ConfigError {
            env: key.env.map(str::to_string),
            yaml_key: Some(key.yaml.clone()),
            origin,
            message,
        });
    }

    /// Whether an environment variable (or its `.env` line) is set.
    pub(super) fn env_defined(&self, name: &'static str) -> bool {
        let probe = Key {
            env: Some(name),
            yaml: String::new(),
        };
        self.raw(&probe, None).is_some()
    }
}

pub(super) struct Built {
    pub settings: Settings,
    pub errors: Vec<ConfigError>,
    pub declared_accounts: Vec<DeclaredAccount>,
}

/// Resolves every setting; the settings fall back to defaults where a value
/// is invalid, and then `errors` is not empty.
pub(super) fn build(sources: &Sources) -> Built {
    let mut errors = Vec::new();
    let dotenv_name = name_of(sources.dotenv.as_ref().map(|s| &s.path), super::DOTENV_FILE);
    let yaml_name = name_of(sources.yaml.as_ref().map(|s| &s.path), super::CONFIG_FILE);
    let dotenv = sources
        .dotenv
        .as_ref()
        .map(|s| parse_dotenv(&s.text))
        .unwrap_or_default();
    for error in dotenv.errors {
        errors.push(ConfigError::file(
            format!("{dotenv_name}:{}", error.line),
            error.message,
        ));
    }
    let mut yaml_failed = false;
    let file = match &sources.yaml {
        None => FileConfig::default(),
        Some(source) => parse_file(&source.text).unwrap_or_else(|error| {
            yaml_failed = true;
            let location = format!(
                "{yaml_name}:{}:{}",
                error.position.line, error.position.column
            );
            errors.push(ConfigError::file(location, error.message));
            FileConfig::default()
        }),
    };
    let mut resolver = Resolver {
        env: &sources.env,
        dotenv: dotenv.values,
        dotenv_name,
        yaml_name,
        errors,
    };
    let (accounts, mut declared_accounts) = resolve_accounts(&mut resolver, &file.accounts);
    // Resolved in the order errors are listed.
    let zoom = resolve_zoom(&mut resolver, &file);
    let webhook = resolve_webhook(&mut resolver, &file);
    let slack = resolve_slack(&mut resolver, &file);
    let email = resolve_email(&mut resolver, &file);
    let data_dir = resolver
        .get(&key("ZOOMWIRE_DATA", "data"), file.data.as_ref(), path)
        .unwrap_or_else(|| ".zoomwire".into());
    let (admin_addr, admin_token) = resolve_admin(&mut resolver, &file);
    let mut settings = Settings {
        accounts,
        zoom,
        webhook,
        slack,
        email,
        data_dir,
        admin_addr,
        admin_token,
        rules_dir: resolver
            .get(&key("ZOOMWIRE_RULES", "rules"), file.rules.as_ref(), path)
            .unwrap_or_else(|| "rules".into()),
        scripts_dir: resolver
            .get(
                &key("ZOOMWIRE_SCRIPTS", "scripts"),
                file.scripts.as_ref(),
                path,
            )
            .unwrap_or_else(|| "scripts".into()),
        log_format: resolver
            .get(
                &key("ZOOMWIRE_LOG_FORMAT", "log_format"),
                file.log_format.as_ref(),
                |t| t.parse(),
            )
            .unwrap_or_default(),
        websocket: resolve_websocket(&mut resolver, &file),
        journal: resolve_journal(&mut resolver, &file),
        reconcile: ReconcileSettings {
            enabled: true,
            interval: DEFAULT_RECONCILE_INTERVAL,
            lookback: DEFAULT_RECONCILE_LOOKBACK,
        },
        effects: resolve_effects(&mut resolver, &file),
        shutdown_grace: resolver
            .get(
                &key("ZOOMWIRE_SHUTDOWN_GRACE", "shutdown_grace"),
                file.shutdown_grace.as_ref(),
                parse_duration,
            )
            .unwrap_or(DEFAULT_SHUTDOWN_GRACE),
        max_waiting_runs: resolver
            .get(
                &key("ZOOMWIRE_MAX_WAITING_RUNS", "max_waiting_runs"),
                file.max_waiting_runs.as_ref(),
                parse_positive_count,
            )
            .unwrap_or(DEFAULT_MAX_WAITING_RUNS),
        vars: file.vars.clone(),
        sandbox: resolve_sandbox(&mut resolver, &file),
        loaded_from: LoadedFrom {
            config_file: sources.yaml.as_ref().map(|s| s.path.clone()),
            dotenv_file: sources.dotenv.as_ref().map(|s| s.path.clone()),
        },
    };
    settings.reconcile = resolve_reconcile(&mut resolver, &file, settings.journal.dedupe_window);
    use_pasted_subscription(&mut settings, &mut declared_accounts);
    Built {
        settings,
        errors: resolver.errors,
        // A broken file hides its accounts: don't also claim they are missing.
        declared_accounts: if yaml_failed {
            vec![DeclaredAccount {
                name: DEFAULT_ACCOUNT.into(),
                has_subscription: true,
            }]
        } else {
            declared_accounts
        },
    }
}

/// A whole number, 0 included (0 turns a per-address limit off).
fn parse_count(text: &str) -> Result<usize, String> {
    text.trim()
        .replace('_', "")
        .parse::<usize>()
        .map_err(|_| format!("expected a whole number (0 for no limit), got `{text}`"))
}

fn parse_positive_count(text: &str) -> Result<usize, String> {
    match text.trim().replace('_', "").parse::<usize>() {
        Ok(count) if count > 0 => Ok(count),
        _ => Err(format!(
            "expected a whole number of at least 1, got `{text}`"
        )),
    }
}

/// The admin server's address and token. Listening beyond loopback needs a
/// token: that is a configuration error, not a warning.
fn resolve_admin(r: &mut Resolver, file: &FileConfig) -> (SocketAddr, Option<AdminToken>) {
    let addr_key = key("ZOOMWIRE_ADMIN_ADDR", "admin_addr");
    let token_key = key("ZOOMWIRE_ADMIN_TOKEN", "admin_token");
    let addr = r
        .get(&addr_key, file.admin_addr.as_ref(), parse_socket_addr)
        .unwrap_or(DEFAULT_ADMIN_ADDR);
    let token_given = r.raw(&token_key, file.admin_token.as_ref()).is_some();
    let token = r.get(&token_key, file.admin_token.as_ref(), AdminToken::new);
    if !token_given && check_bind(addr, None).is_err() {
        let origin = r
            .raw(&addr_key, file.admin_addr.as_ref())
            .map(|raw| raw.origin);
        let message = format!(
            "`{addr}` is beyond loopback and ZOOMWIRE_ADMIN_TOKEN is not set: set a token, or bind a loopback address such as 127.0.0.1:9797"
        );
        r.fail(&addr_key, message, origin);
    }
    (addr, token)
}

/// The only account takes the subscription of a pasted `ZOOM_WS_BASE` when
/// it has none of its own.
fn use_pasted_subscription(settings: &mut Settings, declared: &mut [DeclaredAccount]) {
    let Some(pasted) = settings.zoom.ws_subscription_id.clone() else {
        return;
    };
    if let ([account], [declared]) = (settings.accounts.as_mut_slice(), declared)
        && account.subscription_id.is_none()
    {
        account.subscription_id = Some(pasted);
        declared.has_subscription = true;
    }
}

fn name_of(path: Option<&PathBuf>, default: &str) -> String {
    path.map(|p| p.display().to_string())
        .unwrap_or_else(|| default.to_string())
}

fn path(text: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(text))
}

/// A duration as a user would write it.
fn show(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

/// A base URL of one of `schemes`, without a trailing `/` (paths are appended).
fn base_url(text: &str, schemes: &[&str]) -> Result<String, String> {
    parse_url(text, schemes).map(|url| url.as_str().trim_end_matches('/').to_string())
}

fn resolve_zoom(r: &mut Resolver, file: &FileConfig) -> ZoomEndpoints {
    let zoom = &file.zoom;
    let http = |t: &str| base_url(t, HTTP);
    ZoomEndpoints {
        oauth_base: r
            .get(
                &key("ZOOM_OAUTH_BASE", "zoom.oauth_base"),
                zoom.oauth_base.as_ref(),
                http,
            )
            .unwrap_or_else(|| DEFAULT_OAUTH_BASE.into()),
        api_base: r
            .get(
                &key("ZOOM_API_BASE", "zoom.api_base"),
                zoom.api_base.as_ref(),
                http,
            )
            .unwrap_or_else(|| DEFAULT_API_BASE.into()),
        ..ws_endpoint(r, zoom)
    }
}

/// `ZOOM_WS_BASE`, which may be the whole endpoint URL the Marketplace
/// shows (its `subscriptionId` is kept apart, never sent twice).
fn ws_endpoint(r: &mut Resolver, zoom: &super::file::FileZoom) -> ZoomEndpoints {
    let endpoint = r.get(
        &key("ZOOM_WS_BASE", "zoom.ws_base"),
        zoom.ws_base.as_ref(),
        |text| {
            base_url(text, WS)?;
            crate::zoom::websocket::parse_endpoint(text).map_err(|e| e.to_string())
        },
    );
    let (ws_base, ws_subscription_id) = match endpoint {
        Some(endpoint) => (endpoint.base, endpoint.subscription_id),
        None => (DEFAULT_WS_BASE.into(), None),
    };
    ZoomEndpoints {
        oauth_base: String::new(),
        api_base: String::new(),
        ws_base,
        ws_subscription_id,
    }
}

fn resolve_webhook(r: &mut Resolver, file: &FileConfig) -> WebhookSettings {
    let webhook = &file.webhook;
    let max_body = |text: &str| {
        let size = parse_size(text)?;
        if size > MAX_EVENT_BYTES {
            return Err(format!(
                "`{text}` is larger than the largest event zoomwire accepts ({MAX_EVENT_BYTES} bytes)"
            ));
        }
        Ok(size)
    };
    let defaults = EndpointLimits::default();
    let mut duration = |env, yaml, value: &Option<SettingText>, default| {
        r.get(&key(env, yaml), value.as_ref(), parse_positive_duration)
            .unwrap_or(default)
    };
    let header_timeout = duration(
        "ZOOMWIRE_WEBHOOK_HEADER_TIMEOUT",
        "webhook.header_timeout",
        &webhook.header_timeout,
        defaults.header_timeout,
    );
    let body_timeout = duration(
        "ZOOMWIRE_WEBHOOK_BODY_TIMEOUT",
        "webhook.body_timeout",
        &webhook.body_timeout,
        defaults.body_timeout,
    );
    let request_timeout = duration(
        "ZOOMWIRE_WEBHOOK_REQUEST_TIMEOUT",
        "webhook.request_timeout",
        &webhook.request_timeout,
        defaults.request_timeout,
    );
    let mut count = |env,
                     yaml,
                     value: &Option<SettingText>,
                     parse: fn(&str) -> Result<usize, String>,
                     default| {
        r.get(&key(env, yaml), value.as_ref(), parse)
            .unwrap_or(default)
    };
    let max_connections = count(
        "ZOOMWIRE_WEBHOOK_MAX_CONNECTIONS",
        "webhook.max_connections",
        &webhook.max_connections,
        parse_positive_count,
        defaults.max_connections,
    );
    let max_requests = count(
        "ZOOMWIRE_WEBHOOK_MAX_REQUESTS",
        "webhook.max_requests",
        &webhook.max_requests,
        parse_positive_count,
        defaults.max_requests,
    );
    let per_address_connections = count(
        "ZOOMWIRE_WEBHOOK_PER_ADDRESS_CONNECTIONS",
        "webhook.per_address_connections",
        &webhook.per_address_connections,
        parse_count,
        defaults.per_address_connections,
    );
    let per_address_rate = count(
        "ZOOMWIRE_WEBHOOK_PER_ADDRESS_RATE",
        "webhook.per_address_rate",
        &webhook.per_address_rate,
        parse_count,
        defaults.per_address_rate as usize,
    );
    let per_address_burst = count(
        "ZOOMWIRE_WEBHOOK_PER_ADDRESS_BURST",
        "webhook.per_address_burst",
        &webhook.per_address_burst,
        parse_count,
        defaults.per_address_burst as usize,
    );
    let limits = EndpointLimits {
        max_body: r
            .get(
                &key("ZOOMWIRE_WEBHOOK_MAX_BODY", "webhook.max_body"),
                webhook.max_body.as_ref(),
                max_body,
            )
            .unwrap_or(MAX_EVENT_BYTES),
        header_timeout,
        body_timeout,
        request_timeout,
        max_connections,
        max_requests,
        per_address_connections,
        per_address_rate: u32::try_from(per_address_rate).unwrap_or(u32::MAX),
        // A burst below the rate would refuse within the rate.
        per_address_burst: u32::try_from(per_address_burst.max(per_address_rate))
            .unwrap_or(u32::MAX),
    };
    WebhookSettings {
        secret_token: r.secret(
            &key("ZOOM_WEBHOOK_SECRET_TOKEN", "webhook.secret_token"),
            webhook.secret_token.as_ref(),
        ),
        addr: r
            .get(
                &key("ZOOMWIRE_WEBHOOK_ADDR", "webhook.addr"),
                webhook.addr.as_ref(),
                parse_socket_addr,
            )
            .unwrap_or(DEFAULT_WEBHOOK_ADDR),
        limits,
    }
}

fn resolve_slack(r: &mut Resolver, file: &FileConfig) -> SlackSettings {
    SlackSettings {
        bot_token: r.secret(
            &key("SLACK_BOT_TOKEN", "slack.bot_token"),
            file.slack.bot_token.as_ref(),
        ),
        api_base: r
            .get(
                &key("SLACK_API_BASE", "slack.api_base"),
                file.slack.api_base.as_ref(),
                |t| base_url(t, HTTP),
            )
            .unwrap_or_else(|| DEFAULT_SLACK_API_BASE.into()),
        webhooks: resolve_slack_webhooks(r, &file.slack_webhooks),
    }
}

/// Named webhooks from the file; `SLACK_WEBHOOK_URL` is (or overrides) `default`.
fn resolve_slack_webhooks(
    r: &mut Resolver,
    file: &IndexMap<String, SettingText>,
) -> BTreeMap<String, SecretString> {
    let webhook_url = |text: &str| parse_secret_url(text, HTTP).map(|_| SecretString::from(text));
    let mut names: Vec<&str> = file.keys().map(String::as_str).collect();
    if !file.contains_key(DEFAULT_ACCOUNT) {
        names.push(DEFAULT_ACCOUNT);
    }
    let mut hooks = BTreeMap::new();
    for name in names {
        let key = Key {
            env: (name == DEFAULT_ACCOUNT).then_some("SLACK_WEBHOOK_URL"),
            yaml: format!("slack_webhooks.{name}"),
        };
        if let Err(message) = parse_name(name) {
            let origin = r.yaml_name.clone();
            r.fail(&key, message, Some(origin));
            continue;
        }
        if let Some(url) = r.get(&key, file.get(name), webhook_url) {
            hooks.insert(name.to_string(), url);
        }
    }
    hooks
}

fn resolve_email(r: &mut Resolver, file: &FileConfig) -> EmailSettings {
    let smtp_key = key("SMTP_URL", "email.smtp_url");
    let from_key = key("EMAIL_FROM", "email.from");
    let smtp_url = r.get(&smtp_key, file.email.smtp_url.as_ref(), |text| {
        parse_smtp_url(text).map(|()| SecretString::from(text))
    });
    let from_set = r.raw(&from_key, file.email.from.as_ref()).is_some();
    let from = r.get(&from_key, file.email.from.as_ref(), parse_mailbox);
    if smtp_url.is_some() && !from_set {
        r.fail(
            &from_key,
            "missing: needed to send email through SMTP_URL".into(),
            None,
        );
    }
    let ca_file = r.get(
        &key("SMTP_CA_FILE", "email.ca_file"),
        file.email.ca_file.as_ref(),
        path,
    );
    EmailSettings {
        smtp_url,
        from,
        ca_file,
    }
}

fn resolve_websocket(r: &mut Resolver, file: &FileConfig) -> WebsocketSettings {
    let ws = &file.websocket;
    let heartbeat = r
        .get(
            &key("ZOOMWIRE_WS_HEARTBEAT", "websocket.heartbeat"),
            ws.heartbeat.as_ref(),
            parse_positive_duration,
        )
        .unwrap_or(DEFAULT_HEARTBEAT);
    let dead_key = key("ZOOMWIRE_WS_DEAD_AFTER", "websocket.dead_after");
    let dead_after = match r.raw(&dead_key, ws.dead_after.as_ref()) {
        None => DEFAULT_DEAD_AFTER.max(heartbeat * 2),
        Some(raw) => {
            let dead_after = r.get(&dead_key, ws.dead_after.as_ref(), parse_positive_duration);
            if let Some(dead_after) = dead_after.filter(|d| *d <= heartbeat) {
                let message = format!(
                    "{} must be longer than the heartbeat interval ({}), or every quiet connection counts as dead",
                    show(dead_after),
                    show(heartbeat)
                );
                r.fail(&dead_key, message, Some(raw.origin));
            }
            dead_after.unwrap_or(DEFAULT_DEAD_AFTER)
        }
    };
    WebsocketSettings {
        heartbeat,
        dead_after,
        max_frame: r
            .get(
                &key("ZOOMWIRE_WS_MAX_FRAME", "websocket.max_frame"),
                ws.max_frame.as_ref(),
                parse_size,
            )
            .unwrap_or(DEFAULT_MAX_FRAME),
    }
}

fn resolve_effects(r: &mut Resolver, file: &FileConfig) -> EffectSettings {
    use crate::effects::live::{DEFAULT_MAX_DOWNLOAD_BYTES, DEFAULT_MAX_STATE_VALUE_BYTES};
    use crate::effects::state::DEFAULT_MAX_KEYS;
    EffectSettings {
        ca_file: r.get(
            &key("ZOOMWIRE_CA_FILE", "ca_file"),
            file.ca_file.as_ref(),
            path,
        ),
        max_download: r
            .get(
                &key("ZOOMWIRE_MAX_DOWNLOAD", "downloads.max_size"),
                file.downloads.max_size.as_ref(),
                parse_size,
            )
            .map_or(DEFAULT_MAX_DOWNLOAD_BYTES, |size| size as u64),
        state_max_keys: r
            .get(
                &key("ZOOMWIRE_STATE_MAX_KEYS", "state.max_keys"),
                file.state.max_keys.as_ref(),
                parse_positive_count,
            )
            .unwrap_or(DEFAULT_MAX_KEYS),
        state_max_value: r
            .get(
                &key("ZOOMWIRE_STATE_MAX_VALUE", "state.max_value_size"),
                file.state.max_value_size.as_ref(),
                parse_size,
            )
            .unwrap_or(DEFAULT_MAX_STATE_VALUE_BYTES),
    }
}

fn resolve_journal(r: &mut Resolver, file: &FileConfig) -> JournalSettings {
    let journal = &file.journal;
    let dedupe_window = r
        .get(
            &key("ZOOMWIRE_DEDUPE_WINDOW", "journal.dedupe_window"),
            journal.dedupe_window.as_ref(),
            parse_positive_duration,
        )
        .unwrap_or(DEFAULT_DEDUPE_WINDOW);
    let retention_key = key("ZOOMWIRE_RETENTION", "journal.retention");
    let retention = match r.raw(&retention_key, journal.retention.as_ref()) {
        None => DEFAULT_RETENTION.max(dedupe_window),
        Some(raw) => {
            let retention = r.get(
                &retention_key,
                journal.retention.as_ref(),
                parse_positive_duration,
            );
            if retention.is_some_and(|d| d < dedupe_window) {
                let message = "must be at least the dedupe window, or duplicates of pruned events would run again";
                r.fail(&retention_key, message.into(), Some(raw.origin));
            }
            retention.unwrap_or(DEFAULT_RETENTION)
        }
    };
    let store = r
        .get(
            &key("ZOOMWIRE_JOURNAL", "journal.store"),
            journal.store.as_ref(),
            parse_journal_mode,
        )
        .unwrap_or(JournalMode::Sqlite);
    let sync = r
        .get(
            &key("ZOOMWIRE_JOURNAL_SYNC", "journal.sync"),
            journal.sync.as_ref(),
            parse_journal_sync,
        )
        .unwrap_or(JournalSync::Full);
    let warn_size = r
        .get(
            &key("ZOOMWIRE_STORE_WARN_SIZE", "journal.warn_size"),
            journal.warn_size.as_ref(),
            parse_size,
        )
        .map_or(crate::journal::DEFAULT_WARN_SIZE_BYTES, |size| size as u64);
    let url_key = key("ZOOMWIRE_DATABASE_URL", "journal.database_url");
    let database = r.get(&url_key, journal.database_url.as_ref(), |text| {
        DatabaseTarget::parse(&SecretString::from(text))
    });
    if store == JournalMode::Postgres && r.raw(&url_key, journal.database_url.as_ref()).is_none() {
        r.fail(
            &url_key,
            "missing: needed with the postgres journal (ZOOMWIRE_JOURNAL=postgres)".into(),
            None,
        );
    }
    let node_id = r.get(
        &key("ZOOMWIRE_NODE_ID", "journal.node_id"),
        journal.node_id.as_ref(),
        parse_node_id,
    );
    let lease_ttl = r
        .get(
            &key("ZOOMWIRE_LEASE_TTL", "journal.lease_ttl"),
            journal.lease_ttl.as_ref(),
            parse_lease_ttl,
        )
        .unwrap_or(crate::cluster::DEFAULT_LEASE_TTL);
    JournalSettings {
        store,
        sync,
        dedupe_window,
        retention,
        warn_size,
        database,
        node_id,
        lease_ttl,
    }
}

fn resolve_reconcile(
    r: &mut Resolver,
    file: &FileConfig,
    dedupe_window: Duration,
) -> ReconcileSettings {
    let reconcile = &file.reconcile;
    let enabled = r
        .get(
            &key("ZOOMWIRE_RECONCILE", "reconcile.enabled"),
            reconcile.enabled.as_ref(),
            parse_switch,
        )
        .unwrap_or(true);
    let interval = r
        .get(
            &key("ZOOMWIRE_RECONCILE_INTERVAL", "reconcile.interval"),
            reconcile.interval.as_ref(),
            parse_positive_duration,
        )
        .unwrap_or(DEFAULT_RECONCILE_INTERVAL);
    let lookback_key = key("ZOOMWIRE_RECONCILE_LOOKBACK", "reconcile.lookback");
    let lookback = match r.raw(&lookback_key, reconcile.lookback.as_ref()) {
        None => DEFAULT_RECONCILE_LOOKBACK.min(dedupe_window),
        Some(raw) => {
            let lookback = r.get(
                &lookback_key,
                reconcile.lookback.as_ref(),
                parse_positive_duration,
            );
            if let Some(lookback) = lookback.filter(|l| *l > dedupe_window) {
                let message = format!(
                    "{} is longer than the dedupe window ({}): an event found again after its id was forgotten would run twice",
                    show(lookback),
                    show(dedupe_window)
                );
                r.fail(&lookback_key, message, Some(raw.origin));
            }
            lookback.unwrap_or(DEFAULT_RECONCILE_LOOKBACK.min(dedupe_window))
        }
    };
    ReconcileSettings {
        enabled,
        interval,
        lookback,
    }
}

fn parse_journal_mode(text: &str) -> Result<JournalMode, String> {
    match text.to_ascii_lowercase().as_str() {
        "sqlite" => Ok(JournalMode::Sqlite),
        "memory" => Ok(JournalMode::Memory),
        "postgres" | "postgresql" => Ok(JournalMode::Postgres),
        _ => Err(format!(
            "unknown journal store `{text}`, expected `sqlite`, `postgres` or `memory`"
        )),
    }
}

/// A node id: letters, digits, `.`, `_` and `-`, at most 64.
fn parse_node_id(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "`{text}` is not a node id: use at most 64 letters, digits, `.`, `_` and `-`"
        ))
    }
}

/// A lease of at least 2 s: renewals every quarter must leave time to answer.
fn parse_lease_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse_positive_duration(text)?;
    if ttl < Duration::from_secs(2) {
        return Err(format!("`{text}` is too short: a lease lasts at least 2s"));
    }
    Ok(ttl)
}

fn parse_journal_sync(text: &str) -> Result<JournalSync, String> {
    match text.to_ascii_lowercase().as_str() {
        "full" => Ok(JournalSync::Full),
        "normal" => Ok(JournalSync::Normal),
        _ => Err(format!(
            "unknown journal sync `{text}`, expected `full` or `normal`"
        )),
    }
}

/// The sandbox limits as written; each key is read on its own so that every
/// bad one is reported, each under its own name (`sandbox.max_ops`), in the
/// order of their names.
fn resolve_sandbox(r: &mut Resolver, file: &FileConfig) -> SandboxLimits {
    let origin = r.yaml_name.clone();
    let entries = match &file.sandbox {
        None | Some(serde_json::Value::Null) => return SandboxLimits::default(),
        Some(serde_json::Value::Object(entries)) => entries,
        Some(_) => {
            let key = yaml_key("sandbox".into());
            r.fail(&key, "expected a mapping of limits".into(), Some(origin));
            return SandboxLimits::default();
        }
    };
    let mut valid = serde_json::Map::new();
    for (name, value) in entries {
        let one = serde_json::Value::Object([(name.clone(), value.clone())].into_iter().collect());
        match serde_json::from_value::<SandboxLimits>(one) {
            Ok(_) => {
                valid.insert(name.clone(), value.clone());
            }
            Err(error) => {
                let key = yaml_key(format!("sandbox.{name}"));
                r.fail(
                    &key,
                    sandbox_message(&error.to_string()),
                    Some(origin.clone()),
                );
            }
        }
    }
    // Every key read on its own above: together they read too.
    serde_json::from_value(serde_json::Value::Object(valid)).unwrap_or_default()
}

/// serde's message for an unknown limit lists the known ones in backticks;
/// say it in the settings' words.
fn sandbox_message(serde_message: &str) -> String {
    match serde_message.split_once(", expected one of ") {
        Some((unknown, known)) if unknown.starts_with("unknown field") => format!(
            "{}, expected one of: {}",
            unknown.replacen("unknown field", "unknown limit", 1),
            known.replace('`', "")
        ),
        _ => serde_message.to_string(),
    }
}
