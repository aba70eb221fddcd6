//! The engine's view of one Zoom event: the body exactly as Zoom sent it, plus
//! the envelope the engine adds (`id`, `source`, `received_at`).
//!
//! Decoding reads the text once as a borrowed tree ([`tree::Json`]) for the
//! type, timestamp and dedupe key, and keeps the raw JSON text (what the
//! journal stores). The read-only Rhai value that scripts and Rhai-evaluated
//! conditions read is made from the text on first use and shared by every
//! rule of the event, so no rule converts the event again. The `id` is the
//! dedupe key described in `design.md`: the event type, its timestamp, the
//! object's uuid or id and the participant's id when present, or else a hash
//! of the canonical body.

pub mod tree;

use std::fmt;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use rhai::{Dynamic, Map};
use sha2::{Digest, Sha256};

use tree::Json;

/// Largest event body accepted at intake. Values injected into the sandbox
/// bypass Rhai's size limits, so the cap is enforced here.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Where an event came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Source {
    /// The WebSocket subscription of the named account (its configured name).
    Websocket(String),
    /// The webhook endpoint.
    Webhook,
    /// A cron schedule of the named rule.
    Schedule(String),
    /// `zoomwire fire`.
    Fire,
    /// `zoomwire replay`.
    Replay,
    /// A rule test.
    Test,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Websocket(name) => write!(f, "websocket:{name}"),
            Source::Webhook => f.write_str("webhook"),
            Source::Schedule(rule) => write!(f, "schedule:{rule}"),
            Source::Fire => f.write_str("fire"),
            Source::Replay => f.write_str("replay"),
            Source::Test => f.write_str("test"),
        }
    }
}

/// Why a body could not become an event.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EventError {
    #[error("event is {size} bytes, larger than the {limit} byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("event is not valid JSON: {0}")]
    Json(String),
    #[error("event is not a JSON object")]
    NotAnObject,
    #[error("event has no string `event` field")]
    MissingType,
}

/// One event as the engine keeps it. Cheap to clone: the raw text and the
/// Rhai value (built on first use) are shared between clones.
#[derive(Clone)]
pub struct Event {
    /// Stable dedupe key.
    pub id: String,
    /// `event` field of the body, such as `meeting.ended`.
    pub event_type: String,
    /// `event_ts` of the body in milliseconds, 0 when absent.
    pub ts: i64,
    pub source: Source,
    pub received_at: DateTime<Utc>,
    /// The body as received, compact JSON text.
    pub raw: Arc<str>,
    /// The body as a shared, read-only Rhai value, made from `raw` the
    /// first time a condition or a run needs it: most events are settled by
    /// fast conditions on [`tree::Json`] and never need it.
    body: Arc<OnceLock<Dynamic>>,
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.id)
            .field("event_type", &self.event_type)
            .field("ts", &self.ts)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Event {
    /// Parses a bare Zoom event body (`{"event", "event_ts", "payload"}`).
    pub fn parse(body_json: &str, source: Source) -> Result<Event, EventError> {
        if body_json.len() > MAX_EVENT_BYTES {
            return Err(EventError::TooLarge {
                size: body_json.len(),
                limit: MAX_EVENT_BYTES,
            });
        }
        let tree = Json::parse(body_json).map_err(|e| EventError::Json(e.to_string()))?;
        if !tree.is_object() {
            return Err(EventError::NotAnObject);
        }
        let event_type = tree
            .get("event")
            .and_then(Json::as_str)
            .ok_or(EventError::MissingType)?
            .to_string();
        let ts = tree.get("event_ts").map(json_to_i64).unwrap_or(0);
        let id = dedupe_key(&event_type, ts, &tree, body_json);
        Ok(Event {
            id,
            event_type,
            ts,
            source,
            received_at: Utc::now(),
            raw: Arc::from(body_json),
            body: Arc::new(OnceLock::new()),
        })
    }

    /// Builds an event from a JSON value, as the scheduler and tests do.
    pub fn from_value(body: &serde_json::Value, source: Source) -> Result<Event, EventError> {
        Event::parse(&body.to_string(), source)
    }

    /// The body as a shared, read-only Rhai value (made on first use).
    pub fn body(&self) -> &Dynamic {
        self.body.get_or_init(|| {
            // Cannot fail: `raw` parsed as a JSON object when the event was built.
            let body: Dynamic = serde_json::from_str(&self.raw).unwrap_or(Dynamic::UNIT);
            // Shared: every run of this event gets the same value for an `Arc` clone.
            body.into_read_only().into_shared()
        })
    }

    /// Whether the Rhai value has been made yet (the hot path avoids it).
    pub fn body_is_built(&self) -> bool {
        self.body.get().is_some()
    }

    /// The body read as a borrowed tree, for the hot path.
    pub fn tree(&self) -> Json<'_> {
        // Cannot fail: `raw` parsed when the event was built.
        Json::parse(&self.raw).unwrap_or(Json::Null)
    }

    /// The body as a `serde_json::Value`, for code off the hot path.
    pub fn body_json(&self) -> serde_json::Value {
        // Cannot fail: `raw` parsed as JSON when the event was built.
        serde_json::from_str(&self.raw).unwrap_or(serde_json::Value::Null)
    }

    /// The engine's envelope as scripts see it (`meta`).
    pub fn meta(&self) -> Dynamic {
        let mut meta = Map::new();
        meta.insert("id".into(), self.id.clone().into());
        meta.insert("type".into(), self.event_type.clone().into());
        meta.insert("source".into(), self.source.to_string().into());
        meta.insert("received_at".into(), self.received_at.to_rfc3339().into());
        meta.insert("ts".into(), self.ts.into());
        Dynamic::from_map(meta)
    }

    /// A top-level string field of the body (`download_token`, a schedule
    /// event's `rule`).
    pub fn top_level_str(&self, key: &str) -> Option<String> {
        self.tree()
            .get(key)
            .and_then(Json::as_str)
            .map(str::to_string)
    }

    /// The `download_token` Zoom sends with recording events, if any.
    pub fn download_token(&self) -> Option<String> {
        self.top_level_str("download_token")
    }
}

/// A number (or a numeric string) as `i64`, else 0.
fn json_to_i64(value: &Json<'_>) -> i64 {
    match value {
        Json::Int(n) => *n,
        Json::Float(f) => *f as i64,
        Json::Str(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

/// A scalar as it goes into the dedupe key (as Rhai would print it).
fn json_to_key_part(value: &Json<'_>) -> Option<String> {
    match value {
        Json::Str(s) => Some(s.to_string()),
        Json::Int(n) => Some(n.to_string()),
        Json::Float(f) => Some(Dynamic::from_float(*f).to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The dedupe key: type, timestamp, object uuid (or id), participant id.
/// Without an object identity it is a hash of the canonical body.
/// Reads through references: this runs once per event on the hot path.
fn dedupe_key(event_type: &str, ts: i64, body: &Json<'_>, raw: &str) -> String {
    if ts != 0
        && let Some(object) = body.get("payload").and_then(|p| p.get("object"))
        && let Some(object_key) = object
            .get("uuid")
            .and_then(json_to_key_part)
            .or_else(|| object.get("id").and_then(json_to_key_part))
    {
        let participant = object.get("participant").and_then(|p| {
            p.get("participant_uuid")
                .or_else(|| p.get("user_id"))
                .or_else(|| p.get("id"))
                .and_then(json_to_key_part)
        });
        return match participant {
            Some(p) => format!("{event_type}:{ts}:{object_key}:{p}"),
            None => format!("{event_type}:{ts}:{object_key}"),
        };
    }
    format!("{event_type}:{}", canonical_hash(raw))
}

/// SHA-256 of the body with object keys sorted and whitespace removed.
pub fn canonical_hash(raw: &str) -> String {
    let canonical = match serde_json::from_str::<serde_json::Value>(raw) {
        // serde_json's map is a BTreeMap without `preserve_order`: keys come out sorted.
        Ok(value) => value.to_string(),
        Err(_) => raw.to_string(),
    };
    let digest = Sha256::digest(canonical.as_bytes());
    hex::encode(&digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDED: &str = include_str!("../examples/events/meeting.ended.json");
    const JOINED: &str = include_str!("../examples/events/meeting.participant_joined.json");

    #[test]
    fn parses_a_zoom_event_into_type_ts_and_key() {
        let event = Event::parse(ENDED, Source::Fire).unwrap();
        assert_eq!(event.event_type, "meeting.ended");
        assert_eq!(event.ts, 1732003600456);
        assert_eq!(
            event.id,
            "meeting.ended:1732003600456:pE3zGv9tRkyZ1mWqf0b2Kw=="
        );
    }

    #[test]
    fn participant_events_include_the_participant_in_the_key() {
        let event = Event::parse(JOINED, Source::Fire).unwrap();
        assert!(
            event
                .id
                .starts_with("meeting.participant_joined:1732000065000:")
        );
        assert_eq!(event.id.split(':').count(), 4, "{}", event.id);
    }

    #[test]
    fn events_without_identity_hash_the_canonical_body() {
        let a = Event::parse(r#"{"event":"x.y","payload":{"b":1,"a":2}}"#, Source::Fire).unwrap();
        let b = Event::parse(
            r#"{ "payload": {"a":2, "b":1}, "event":"x.y" }"#,
            Source::Fire,
        )
        .unwrap();
        assert_eq!(a.id, b.id);
        assert!(a.id.starts_with("x.y:"));
    }

    #[test]
    fn rejects_bodies_that_are_not_events() {
        assert_eq!(
            Event::parse("[1]", Source::Fire).unwrap_err(),
            EventError::NotAnObject
        );
        assert_eq!(
            Event::parse(r#"{"payload":{}}"#, Source::Fire).unwrap_err(),
            EventError::MissingType
        );
        assert!(matches!(
            Event::parse("{", Source::Fire).unwrap_err(),
            EventError::Json(_)
        ));
        let huge = format!(r#"{{"event":"x","pad":"{}"}}"#, "a".repeat(MAX_EVENT_BYTES));
        assert!(matches!(
            Event::parse(&huge, Source::Fire).unwrap_err(),
            EventError::TooLarge { .. }
        ));
    }

    #[test]
    fn the_body_is_read_only_for_scripts() {
        let event = Event::parse(ENDED, Source::Fire).unwrap();
        assert!(event.body().is_read_only());
    }
}
