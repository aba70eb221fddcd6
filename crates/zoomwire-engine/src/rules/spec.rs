//! The rule file as written: serde types with `deny_unknown_fields`, from
//! which `zoomwire schema` generates the JSON Schema. These are configuration
//! types only; `compile.rs` turns them into runtime [`super::Rule`]s.
//!
//! Every field is optional here so that the loader can check each key on its
//! own and report every error of a file in one pass; required keys are
//! checked by the compiler.

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::duration::parse_duration;

/// One rule.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "zoomwire rule")]
pub struct RuleSpec {
    /// Unique name; defaults to the file stem (for a file holding one rule).
    pub name: Option<String>,
    pub description: Option<String>,
    /// Event type, glob (`meeting.*`) or list of them.
    pub on: Option<OneOrMany>,
    /// Cron expression with seconds (6 or 7 fields), instead of `on`.
    pub schedule: Option<String>,
    /// IANA time zone of `schedule`; UTC by default.
    pub timezone: Option<String>,
    /// Fire once for firings missed while the engine was down.
    pub catch_up: Option<bool>,
    /// Rhai expression; the rule fires when it is true. Pure: no effects.
    pub when: Option<String>,
    /// Rhai expression giving the concurrency key (`single`/`queued` apply per key).
    pub key: Option<String>,
    /// Rhai script inline, or `{script: file.rhai}` from the scripts folder.
    #[serde(rename = "do")]
    pub action: Option<ActionSpec>,
    /// Capabilities: zoom.read, zoom.write, zoom.download, slack, email, http:<host>.
    pub allow: Option<Vec<String>>,
    /// Effects that may be performed again when a crash leaves it unknown
    /// whether they happened (`slack.post`, `zoom.patch`, ...). A run that
    /// finds any other effect in doubt goes to the dead letters instead.
    pub idempotent: Option<Vec<String>>,
    /// The configured Zoom account whose token the rule's Zoom calls use;
    /// by default the account the event came from (schedule rules name one
    /// when several accounts are configured).
    pub account: Option<String>,
    pub mode: Option<Mode>,
    /// Runs at once per key in `parallel` mode (the rest wait their turn).
    pub max_runs: Option<u32>,
    /// `parallel` and `queued` only: drop runs beyond this many waiting per
    /// key (by default none is dropped: they all wait their turn).
    pub max_queued: Option<u32>,
    /// Whole run, effects included, such as `30s`.
    pub timeout: Option<DurationText>,
    pub retry: Option<RetrySpec>,
    pub enabled: Option<bool>,
    /// Rule tests run by `zoomwire test`.
    pub tests: Option<Vec<TestSpec>>,
}

/// The keys a rule may have, for "unknown key" messages.
pub const RULE_KEYS: &[&str] = &[
    "name",
    "description",
    "on",
    "schedule",
    "timezone",
    "catch_up",
    "when",
    "key",
    "do",
    "allow",
    "idempotent",
    "account",
    "mode",
    "max_runs",
    "max_queued",
    "timeout",
    "retry",
    "enabled",
    "tests",
];

/// A string or a list of strings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

/// `do:` inline or from a file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ActionSpec {
    Inline(String),
    Script(ScriptRef),
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScriptRef {
    /// Path of a `.rhai` file relative to the scripts folder.
    pub script: String,
}

/// What happens when an event fires a rule that is already running (per key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Drop the new run while one runs.
    Single,
    /// Run one at a time; the rest wait their turn in arrival order.
    #[default]
    Queued,
    /// Run up to `max_runs` at once; the rest wait their turn in arrival order.
    Parallel,
    /// Cancel the running one and start the new one.
    Restart,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Single => "single",
            Mode::Queued => "queued",
            Mode::Parallel => "parallel",
            Mode::Restart => "restart",
        })
    }
}

/// `retry:` policy.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Total attempts, the first included.
    pub attempts: u32,
    /// Wait before the second attempt; doubles each time, with jitter.
    pub backoff: Option<DurationText>,
    /// Longest wait between attempts.
    pub max_backoff: Option<DurationText>,
}

/// A duration written `500ms`, `30s`, `5m`, `2h` or `1d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DurationText(#[serde(serialize_with = "serialize_duration")] pub Duration);

impl JsonSchema for DurationText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(ms|s|m|h|d)$",
            "description": "A duration such as 500ms, 30s, 5m, 2h or 1d"
        })
    }
}

fn serialize_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text)
            .map(DurationText)
            .map_err(serde::de::Error::custom)
    }
}

/// One rule test.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestSpec {
    pub name: String,
    /// Path of an event (or WebSocket frame) file relative to the rule file, or the event inline.
    pub event: serde_json::Value,
    /// Canned answers for effects that return data: each item names the effect with
    /// the arguments to match partially (`zoom.get: {path: "/users/{userId}"}`) and
    /// gives `returns: <value>` or `fails: {kind, message}`.
    #[serde(default)]
    pub given: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Rule state before the run.
    #[serde(default)]
    pub state: serde_json::Map<String, serde_json::Value>,
    /// What should happen: effects in order (`slack.post: {channel: "#x"}`, arguments
    /// matched partially), `no_effects: true` (no call that changes anything; reads do not
    /// count) or `no_effects: [names]`, `fails: true` or `fails: "text"`,
    /// `fired: false`, or `state: {key: value}` after the run.
    #[serde(default)]
    pub expect: Vec<serde_json::Map<String, serde_json::Value>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_keys_list_every_field() {
        let schema = serde_json::to_value(schemars::schema_for!(RuleSpec)).unwrap();
        let mut properties: Vec<_> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        properties.sort();
        let mut keys: Vec<_> = RULE_KEYS.iter().map(|k| k.to_string()).collect();
        keys.sort();
        assert_eq!(properties, keys);
    }
}
