//! The shape of `zoomwire.yaml` as serde reads it: every key optional,
//! unknown keys refused, scalar values kept as text so that the settings
//! resolver parses them (and reports every bad one) after layering the
//! environment on top.
//!
//! ```yaml
//! zoom: { oauth_base: https://zoom.us, api_base: https://api.zoom.us/v2, ws_base: wss://ws.zoom.us/ws }
//! accounts:
//!   - { name: default, account_id: A, client_id: C, client_secret: S, subscription_id: X }
//! webhook: { secret_token: T, addr: 127.0.0.1:9798, max_body: 1MiB }
//! slack: { bot_token: xoxb-..., api_base: https://slack.com/api }
//! slack_webhooks: { default: https://hooks.slack.com/services/... }
//! email: { smtp_url: smtp://user:pass@host:587, from: zoomwire@example.com, ca_file: relay-ca.pem }
//! data: .zoomwire
//! admin_addr: 127.0.0.1:9797
//! admin_token: T
//! rules: rules
//! scripts: scripts
//! log_format: text
//! websocket: { heartbeat: 30s, dead_after: 75s, max_frame: 1MiB }
//! journal: { store: sqlite, sync: full, dedupe_window: 72h, retention: 30d }
//! # or, for several nodes: { store: postgres, database_url: postgres://..., node_id: a, lease_ttl: 8s }
//! reconcile: { enabled: true, interval: 15m, lookback: 48h }
//! shutdown_grace: 30s
//! vars: { archive_channel: "#recordings" }
//! sandbox: { max_operations: 1000000 }
//! ```
//!
//! No type here derives `Debug`: they hold secrets as plain text for the
//! moment between reading the file and wrapping them. They derive
//! `JsonSchema` for `zoomwire schema --config`: the doc comments below are
//! the descriptions an editor shows.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A setting written as a scalar (string, number or boolean), kept as its
/// text for the resolver to parse (named `Scalar` in the JSON schema).
pub struct SettingText(pub String);

impl JsonSchema for SettingText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Scalar".into()
    }

    fn json_schema(_generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": ["string", "number", "boolean"] })
    }
}

impl<'de> Deserialize<'de> for SettingText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SettingTextVisitor)
    }
}

struct SettingTextVisitor;

impl Visitor<'_> for SettingTextVisitor {
    type Value = SettingText;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string, number or boolean")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SettingText, E> {
        Ok(SettingText(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<SettingText, E> {
        Ok(SettingText(v))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<SettingText, E> {
        Ok(SettingText(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<SettingText, E> {
        Ok(SettingText(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<SettingText, E> {
        Ok(SettingText(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<SettingText, E> {
        Ok(SettingText(v.to_string()))
    }
}

/// `zoomwire.yaml`. Every key is optional; environment variables (and a
/// `.env` file) override the file.
#[derive(Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
#[schemars(title = "zoomwire.yaml")]
pub struct FileConfig {
    /// Base URLs of Zoom's endpoints.
    pub zoom: FileZoom,
    /// Zoom accounts (Server-to-Server OAuth apps), each with its own token,
    /// WebSocket subscription and rate limits. ZOOM_ACCOUNT_ID, ZOOM_CLIENT_ID,
    /// ZOOM_CLIENT_SECRET and ZOOM_SUBSCRIPTION_ID define the account named `default`.
    pub accounts: Vec<FileAccount>,
    /// Zoom's webhook endpoint, enabled by its secret token.
    pub webhook: FileWebhook,
    /// The Slack Web API.
    pub slack: FileSlack,
    /// Slack incoming webhooks by name, for slack::webhook(name, text);
    /// SLACK_WEBHOOK_URL is `default`.
    #[schemars(with = "BTreeMap<String, SettingText>")]
    pub slack_webhooks: IndexMap<String, SettingText>,
    /// The mail relay.
    pub email: FileEmail,
    /// ZOOMWIRE_DATA: store and archive folder (default `.zoomwire`).
    pub data: Option<SettingText>,
    /// ZOOMWIRE_ADMIN_ADDR: the admin page and API (default 127.0.0.1:9797).
    pub admin_addr: Option<SettingText>,
    /// ZOOMWIRE_ADMIN_TOKEN: Bearer token for the admin server (16+ characters);
    /// without it the server binds loopback only.
    pub admin_token: Option<SettingText>,
    /// ZOOMWIRE_RULES: rules folder (default `rules`).
    pub rules: Option<SettingText>,
    /// ZOOMWIRE_SCRIPTS: folder of Rhai modules that rules import (default `scripts`).
    pub scripts: Option<SettingText>,
    /// ZOOMWIRE_LOG_FORMAT: `text` (default) or `json`.
    pub log_format: Option<SettingText>,
    /// The Zoom WebSocket connection.
    pub websocket: FileWebsocket,
    /// Where runs are remembered.
    pub journal: FileJournal,
    /// Finding through Zoom's REST API what Zoom sent while no connection was up.
    pub reconcile: FileReconcile,
    /// ZOOMWIRE_SHUTDOWN_GRACE: time for runs in flight at Ctrl-C (default 30s).
    pub shutdown_grace: Option<SettingText>,
    /// ZOOMWIRE_MAX_WAITING_RUNS: runs waiting their turn before intake stops
    /// reading events (default 100000).
    pub max_waiting_runs: Option<SettingText>,
    /// ZOOMWIRE_CA_FILE: an extra root certificate (PEM) for outgoing HTTPS.
    pub ca_file: Option<SettingText>,
    /// Recording downloads.
    pub downloads: FileDownloads,
    /// Rule state (`state::set`).
    pub state: FileState,
    /// Free values scripts and conditions read as `vars`.
    pub vars: serde_json::Map<String, serde_json::Value>,
    /// Limits of the script sandbox; zeros mean the safe default.
    #[schemars(with = "Option<crate::script::SandboxLimits>")]
    pub sandbox: Option<serde_json::Value>,
}

#[derive(Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileZoom {
    /// ZOOM_OAUTH_BASE (default https://zoom.us).
    pub oauth_base: Option<SettingText>,
    /// ZOOM_API_BASE (default https://api.zoom.us/v2).
    pub api_base: Option<SettingText>,
    /// ZOOM_WS_BASE (default wss://ws.zoom.us/ws); may be the whole endpoint
    /// URL the Marketplace shows.
    pub ws_base: Option<SettingText>,
}

#[derive(Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileAccount {
    /// The account's name, for rules' `account:` (the environment's is `default`).
    pub name: Option<SettingText>,
    pub account_id: Option<SettingText>,
    pub client_id: Option<SettingText>,
    /// A secret: better kept in the environment or `.env`.
    pub client_secret: Option<SettingText>,
    /// The WebSocket event subscription; without it the account serves REST calls only.
    pub subscription_id: Option<SettingText>,
}

#[derive(Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileWebhook {
    /// ZOOM_WEBHOOK_SECRET_TOKEN: enables POST /zoom/webhook.
    pub secret_token: Option<SettingText>,
    /// ZOOMWIRE_WEBHOOK_ADDR (default 127.0.0.1:9798).
    pub addr: Option<SettingText>,
    /// ZOOMWIRE_WEBHOOK_MAX_BODY (default 1MiB).
    pub max_body: Option<SettingText>,
    /// ZOOMWIRE_WEBHOOK_HEADER_TIMEOUT (default 10s): the request head must
    /// arrive within it; also how long an idle connection stays open.
    pub header_timeout: Option<SettingText>,
    /// ZOOMWIRE_WEBHOOK_BODY_TIMEOUT (default 10s): the whole body, after the head.
    pub body_timeout: Option<SettingText>,
    /// ZOOMWIRE_WEBHOOK_REQUEST_TIMEOUT (default 15s): the whole request.
    pub request_timeout: Option<SettingText>,
    /// ZOOMWIRE_WEBHOOK_MAX_CONNECTIONS (default 4096, within the open-files limit).
    pub max_connections: Option<SettingText>,
    /// ZOOMWIRE_WEBHOOK_MAX_REQUESTS (default 256): in flight; beyond it 503.
    pub max_requests: Option<SettingText>,
    /// ZOOMWIRE_WEBHOOK_PER_ADDRESS_CONNECTIONS (default 64; 0: no limit, behind a proxy).
    pub per_address_connections: Option<SettingText>,
    /// ZOOMWIRE_WEBHOOK_PER_ADDRESS_RATE (default 50 requests a second; 0: no limit).
    pub per_address_rate: Option<SettingText>,
    /// ZOOMWIRE_WEBHOOK_PER_ADDRESS_BURST (default 100).
    pub per_address_burst: Option<SettingText>,
}

#[derive(Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileSlack {
    /// SLACK_BOT_TOKEN.
    pub bot_token: Option<SettingText>,
    /// SLACK_API_BASE (default https://slack.com/api).
    pub api_base: Option<SettingText>,
}

#[derive(Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileEmail {
    /// SMTP_URL: smtp://user:pass@host:587 or smtps://...
    pub smtp_url: Option<SettingText>,
    /// EMAIL_FROM: the sender, required with smtp_url.
    pub from: Option<SettingText>,
    /// SMTP_CA_FILE: an extra root certificate (PEM) for the relay.
    pub ca_file: Option<SettingText>,
}

#[derive(Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileWebsocket {
    /// ZOOMWIRE_WS_HEARTBEAT (default 30s).
    pub heartbeat: Option<SettingText>,
    /// ZOOMWIRE_WS_DEAD_AFTER: silence that means a dead connection (default 75s).
    pub dead_after: Option<SettingText>,
    /// ZOOMWIRE_WS_MAX_FRAME (default 1536KiB).
    pub max_frame: Option<SettingText>,
}

#[derive(Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileDownloads {
    /// ZOOMWIRE_MAX_DOWNLOAD: the largest recording file a download writes.
    pub max_size: Option<SettingText>,
}

#[derive(Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileState {
    /// ZOOMWIRE_STATE_MAX_KEYS: keys of state one rule may hold.
    pub max_keys: Option<SettingText>,
    /// ZOOMWIRE_STATE_MAX_VALUE: the largest value `state::set` stores.
    pub max_value_size: Option<SettingText>,
}

#[derive(Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileJournal {
    /// ZOOMWIRE_JOURNAL: `sqlite` (default, durable), `postgres` (several nodes) or `memory`.
    pub store: Option<SettingText>,
    /// ZOOMWIRE_JOURNAL_SYNC: `full` (default) or `normal`.
    pub sync: Option<SettingText>,
    /// ZOOMWIRE_DATABASE_URL: the PostgreSQL journal's `postgres://` URL (a secret).
    pub database_url: Option<SettingText>,
    /// ZOOMWIRE_NODE_ID: this node's name among the nodes sharing a PostgreSQL journal.
    pub node_id: Option<SettingText>,
    /// ZOOMWIRE_LEASE_TTL: how long a lease lasts without renewal (default 8s).
    pub lease_ttl: Option<SettingText>,
    /// ZOOMWIRE_DEDUPE_WINDOW: how long an event id is remembered (default 72h).
    pub dedupe_window: Option<SettingText>,
    /// ZOOMWIRE_RETENTION: how long runs and events are kept (default 30d).
    pub retention: Option<SettingText>,
    /// ZOOMWIRE_STORE_WARN_SIZE: a store larger than this is warned about.
    pub warn_size: Option<SettingText>,
}

#[derive(Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileReconcile {
    /// ZOOMWIRE_RECONCILE (default true).
    pub enabled: Option<SettingText>,
    /// ZOOMWIRE_RECONCILE_INTERVAL: time between sweeps (default 15m).
    pub interval: Option<SettingText>,
    /// ZOOMWIRE_RECONCILE_LOOKBACK: how far back each pass looks (default 48h).
    pub lookback: Option<SettingText>,
}

/// Reads the file's text. An empty file (or only comments) is an empty configuration.
pub fn parse_file(text: &str) -> Result<FileConfig, crate::rules::yaml::YamlError> {
    if crate::rules::yaml::parse_value(text)?.is_null() {
        return Ok(FileConfig::default());
    }
    crate::rules::yaml::parse_typed(text)
}
