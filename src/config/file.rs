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
//! moment between reading the file and wrapping them.

use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A scalar (string, number or boolean) kept as its text.
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl Visitor<'_> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string, number or boolean")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar(v))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar(v.to_string()))
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub zoom: FileZoom,
    pub accounts: Vec<FileAccount>,
    pub webhook: FileWebhook,
    pub slack: FileSlack,
    pub slack_webhooks: IndexMap<String, Scalar>,
    pub email: FileEmail,
    pub data: Option<Scalar>,
    pub admin_addr: Option<Scalar>,
    pub admin_token: Option<Scalar>,
    pub rules: Option<Scalar>,
    pub scripts: Option<Scalar>,
    pub log_format: Option<Scalar>,
    pub websocket: FileWebsocket,
    pub journal: FileJournal,
    pub reconcile: FileReconcile,
    pub shutdown_grace: Option<Scalar>,
    pub max_waiting_runs: Option<Scalar>,
    pub vars: serde_json::Map<String, serde_json::Value>,
    pub sandbox: Option<serde_json::Value>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileZoom {
    pub oauth_base: Option<Scalar>,
    pub api_base: Option<Scalar>,
    pub ws_base: Option<Scalar>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileAccount {
    pub name: Option<Scalar>,
    pub account_id: Option<Scalar>,
    pub client_id: Option<Scalar>,
    pub client_secret: Option<Scalar>,
    pub subscription_id: Option<Scalar>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileWebhook {
    pub secret_token: Option<Scalar>,
    pub addr: Option<Scalar>,
    pub max_body: Option<Scalar>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSlack {
    pub bot_token: Option<Scalar>,
    pub api_base: Option<Scalar>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileEmail {
    pub smtp_url: Option<Scalar>,
    pub from: Option<Scalar>,
    pub ca_file: Option<Scalar>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileWebsocket {
    pub heartbeat: Option<Scalar>,
    pub dead_after: Option<Scalar>,
    pub max_frame: Option<Scalar>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileJournal {
    pub store: Option<Scalar>,
    pub sync: Option<Scalar>,
    pub database_url: Option<Scalar>,
    pub node_id: Option<Scalar>,
    pub lease_ttl: Option<Scalar>,
    pub dedupe_window: Option<Scalar>,
    pub retention: Option<Scalar>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileReconcile {
    pub enabled: Option<Scalar>,
    pub interval: Option<Scalar>,
    pub lookback: Option<Scalar>,
}

/// Reads the file's text. An empty file (or only comments) is an empty configuration.
pub fn parse_file(text: &str) -> Result<FileConfig, crate::rules::yaml::YamlError> {
    if crate::rules::yaml::parse_value(text)?.is_null() {
        return Ok(FileConfig::default());
    }
    crate::rules::yaml::parse_typed(text)
}
