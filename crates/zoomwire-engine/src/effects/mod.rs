//! Every side effect a script can cause goes through the [`Effects`] trait:
//! Zoom REST, Slack, email, HTTP, downloads and rule state.
//!
//! The sandbox's host functions turn a script call into an [`EffectRequest`]
//! (a name such as `slack.post` and JSON arguments), check the rule's
//! capabilities, and hand it to an `Effects` implementation: the recording
//! fake in [`recorder`] for `--dry-run` and rule tests, or the real clients for
//! the daemon. Arguments and results are JSON so that the same request can be
//! recorded, replayed on a retry and matched in a test.

pub mod accounts;
pub mod address;
pub mod capability;
pub mod download;
pub mod email;
pub mod gateway;
pub mod http;
pub mod live;
pub mod name;
pub mod recorder;
pub mod redact;
pub mod slack;
pub mod state;

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use capability::{Capability, CapabilitySet};
pub use name::{EFFECT_NAMES, EffectName};

use crate::event::tree::Json;
use crate::event::{Event, Source};
use crate::http_retry::FailureKind;
use crate::zoom::rest::RestError;
pub use redact::redact;

/// A boxed future, so that `Effects` stays object-safe (futures' own, which
/// every seam of the crate uses; re-exported for implementers of `Effects`).
pub use futures_util::future::BoxFuture;

/// One call a script made: `name` is `zoom.get`, `slack.post`, ...
///
/// Argument shapes, by name (all JSON objects):
/// - `zoom.get`, `zoom.delete`: `{path, params}`; `zoom.post|patch|put`: `{path, params, body}`.
///   `path` keeps its `{name}` placeholders; `params` fills them.
/// - `zoom.paginate`: `{path, items_key, params}`, answered with the array of all items.
/// - `zoom.download`: `{file, dest}` where `file` is a URL or a recording-file map.
/// - `slack.post`: `{channel, text, blocks?, thread_ts?}`; `slack.webhook`: `{name, text?, payload?}`.
/// - `email.send`: `{to, cc?, bcc?, subject, text?, html?, reply_to?}`.
/// - `http.request`: `{method, url, headers?, body?, timeout?}`, answered with `{status, headers, body}`.
/// - `state.get`: `{key}`; `state.set`: `{key, value, ttl?}` (ttl in seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EffectRequest {
    pub name: String,
    pub args: Value,
}

impl EffectRequest {
    pub fn new(name: impl Into<String>, args: Value) -> EffectRequest {
        EffectRequest {
            name: name.into(),
            args,
        }
    }
}

/// What an implementation knows about the run that asks.
#[derive(Debug, Clone)]
pub struct EffectContext {
    pub rule: Arc<str>,
    pub run_id: Arc<str>,
    /// The run's wall-clock deadline: an effect never waits past it.
    pub deadline: Instant,
    /// Hosts the rule may reach through `http.request` (from `http:<host>`).
    pub http_hosts: Arc<[String]>,
    /// The event's `download_token`, for recording downloads. Never logged.
    pub download_token: Option<Arc<secrecy::SecretString>>,
    /// The Zoom account whose token and limits the run's Zoom calls use
    /// (a call may name another with `#{account: ...}`).
    pub zoom_account: ZoomAccountRef,
}

/// Which Zoom account a run belongs to (see [`accounts`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ZoomAccountRef {
    /// Nothing says: the only configured account, if there is just one.
    #[default]
    Unspecified,
    /// A configured account by name: the rule's `account:`, or the
    /// subscription (or reconciliation) an event came through.
    Named(Arc<str>),
    /// Zoom's account id from an event's `payload.account_id` (webhooks).
    ZoomId(Arc<str>),
}

impl ZoomAccountRef {
    /// The rule's account when it names one, else the event's.
    pub fn for_run(
        rule_account: Option<&Arc<str>>,
        event_account: impl FnOnce() -> ZoomAccountRef,
    ) -> ZoomAccountRef {
        match rule_account {
            Some(name) => ZoomAccountRef::Named(name.clone()),
            None => event_account(),
        }
    }

    /// The Zoom account an event belongs to: the subscription (or
    /// reconciliation) it came through, else its `payload.account_id`.
    pub fn of_event(event: &Event) -> ZoomAccountRef {
        match &event.source {
            Source::Websocket(name) | Source::Reconcile(name) => {
                ZoomAccountRef::Named(Arc::from(name.as_str()))
            }
            _ => event
                .tree()
                .get("payload")
                .and_then(|p| p.get("account_id"))
                .and_then(Json::as_str)
                .filter(|id| !id.is_empty())
                .map_or(ZoomAccountRef::Unspecified, |id| {
                    ZoomAccountRef::ZoomId(Arc::from(id))
                }),
        }
    }
}

/// How an effect failed, which decides whether the run is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectErrorKind {
    /// Worth retrying: 5xx, timeouts, connection errors, rate limits that outlast the run.
    Transient,
    /// Retrying will not help: 4xx, bad arguments, refused addresses.
    Permanent,
    /// The rule lacks the capability.
    Denied,
    /// The run's deadline passed while waiting.
    Timeout,
    /// A crash came while it was being performed: it may or may not have happened.
    InDoubt,
}

impl From<FailureKind> for EffectErrorKind {
    fn from(kind: FailureKind) -> EffectErrorKind {
        match kind {
            FailureKind::Transient => EffectErrorKind::Transient,
            FailureKind::Permanent => EffectErrorKind::Permanent,
            FailureKind::Timeout => EffectErrorKind::Timeout,
        }
    }
}

/// An effect's failure, as the script sees it (a catchable error map).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{effect}: {message}")]
pub struct EffectError {
    pub effect: String,
    pub kind: EffectErrorKind,
    pub message: String,
    /// Zoom's `code`, or Slack's error code, when the peer gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<Value>,
    /// HTTP status, when there was a response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

impl EffectError {
    /// A failed Zoom REST call as the script sees it.
    pub fn from_rest(effect: &str, error: RestError) -> EffectError {
        EffectError {
            effect: effect.to_string(),
            kind: error.kind.into(),
            message: error.to_string(),
            code: error.code,
            status: error.status,
        }
    }

    pub fn new(effect: &str, kind: EffectErrorKind, message: impl Into<String>) -> EffectError {
        EffectError {
            effect: effect.to_string(),
            kind,
            message: message.into(),
            code: None,
            status: None,
        }
    }

    pub fn permanent(effect: &str, message: impl Into<String>) -> EffectError {
        EffectError::new(effect, EffectErrorKind::Permanent, message)
    }

    pub fn transient(effect: &str, message: impl Into<String>) -> EffectError {
        EffectError::new(effect, EffectErrorKind::Transient, message)
    }

    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            EffectErrorKind::Transient | EffectErrorKind::Timeout
        )
    }
}

/// The one interface through which scripts reach the world.
///
/// Implementations are called from the runtime (the sandbox blocks its own
/// thread on the returned future, bounded by `context.deadline`).
pub trait Effects: Send + Sync + 'static {
    fn perform<'a>(
        &'a self,
        context: &'a EffectContext,
        request: &'a EffectRequest,
    ) -> BoxFuture<'a, Result<Value, EffectError>>;
}

/// Whether a request changes the world (and counts for `no_effects` in
/// tests); see [`EffectName::is_external`]. An unknown name counts.
pub fn is_external(name: &str) -> bool {
    EffectName::from_name(name).is_none_or(EffectName::is_external)
}

/// Whether performing this effect again, after a crash left it unknown
/// whether it happened, does no harm (see [`EffectName::is_repeatable`]).
/// Every other effect is written as started before it is performed, so that
/// a crash leaves it marked in doubt (see `gateway`).
pub fn is_repeatable(name: &str) -> bool {
    EffectName::from_name(name).is_some_and(EffectName::is_repeatable)
}

/// The capability an effect a script can call needs, by the effect's name.
pub fn required_capability(name: &str) -> Option<&'static str> {
    EffectName::from_name(name).and_then(EffectName::capability)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_effects_to_capabilities() {
        assert_eq!(required_capability("zoom.get"), Some("zoom.read"));
        assert_eq!(required_capability("zoom.delete"), Some("zoom.write"));
        assert_eq!(required_capability("slack.webhook"), Some("slack"));
        assert_eq!(required_capability("state.set"), None);
        assert!(!is_external("state.get"));
        assert!(is_external("state.set"));
    }

    #[test]
    fn rest_errors_become_effect_errors_with_code_and_tracking_id() {
        let error = RestError {
            kind: FailureKind::Permanent,
            message: "zoom api answered 404: Meeting does not exist (code 3001)".into(),
            code: Some(serde_json::json!(3001)),
            status: Some(404),
            tracking_id: Some("v=2.0;clid=us06;rid=abc".into()),
            rate_limit: None,
        };
        let effect_error = EffectError::from_rest("zoom.get", error);
        assert_eq!(effect_error.kind, EffectErrorKind::Permanent);
        assert_eq!(effect_error.code, Some(serde_json::json!(3001)));
        assert_eq!(effect_error.status, Some(404));
        assert!(
            effect_error
                .message
                .ends_with("(code 3001) (tracking id v=2.0;clid=us06;rid=abc)"),
            "{}",
            effect_error.message
        );
    }
}
