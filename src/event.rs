//! The engine's view of one Zoom event: the body exactly as Zoom sent it, plus
//! the envelope the engine adds (`id`, `source`, `received_at`).
//!
//! Decoding reads the type, timestamp and dedupe key's fields in one pass
//! that skips the rest ([`head::Head`]; unusual bodies go through the full
//! [`tree::Json`]), and keeps the raw JSON text (what the journal stores). The read-only Rhai value that scripts and Rhai-evaluated
//! conditions read is made from the text on first use and shared by every
//! rule of the event, so no rule converts the event again. The `id` is the
//! dedupe key described in `design.md`: the event type, its timestamp, the
//! object's uuid or id and the participant's id when present, or else a hash
//! of the canonical body.

pub mod head;
pub mod tree;

use std::fmt;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use rhai::{Dynamic, Map};
use sha2::{Digest, Sha256};

use head::{Head, Scalar};
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
        let (event_type, ts, id) = match Head::read(body_json) {
            Some(head) => identity_from_head(head, body_json)?,
            None => identity_from_tree(body_json)?,
        };
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
        // Most events have none: no need to read the body for them.
        if !self.raw.contains("download_token") {
            return None;
        }
        self.top_level_str("download_token")
    }
}

/// The fields an event's identity is made of, from either road.
struct KeyFields<'a> {
    ts: Scalar<'a>,
    uuid: Scalar<'a>,
    id: Scalar<'a>,
    /// `participant_uuid`, `user_id` and `id`, when there is a participant.
    participant: Option<[Scalar<'a>; 3]>,
}

/// Type, timestamp and dedupe key from the fields read in one pass.
fn identity_from_head(head: Head<'_>, raw: &str) -> Result<(String, i64, String), EventError> {
    let event_type = head.event.ok_or(EventError::MissingType)?.into_owned();
    let object = head.payload.and_then(|p| p.0.object).map(|o| o.0);
    let fields = match object {
        None => KeyFields {
            ts: head.event_ts,
            uuid: Scalar::Absent,
            id: Scalar::Absent,
            participant: None,
        },
        Some(object) => KeyFields {
            ts: head.event_ts,
            uuid: object.uuid,
            id: object.id,
            participant: object
                .participant
                .map(|p| [p.0.participant_uuid, p.0.user_id, p.0.id]),
        },
    };
    Ok(identity(event_type, fields, raw))
}

/// The same from the full tree, for bodies [`Head::read`] leaves to it.
fn identity_from_tree(raw: &str) -> Result<(String, i64, String), EventError> {
    let tree = Json::parse(raw).map_err(|e| EventError::Json(e.to_string()))?;
    if !tree.is_object() {
        return Err(EventError::NotAnObject);
    }
    let event_type = tree
        .get("event")
        .and_then(Json::as_str)
        .ok_or(EventError::MissingType)?
        .to_string();
    let object = tree.get("payload").and_then(|p| p.get("object"));
    let field = |key: &str| Scalar::of(object.and_then(|o| o.get(key)));
    let fields = KeyFields {
        ts: Scalar::of(tree.get("event_ts")),
        uuid: field("uuid"),
        id: field("id"),
        participant: object
            .and_then(|o| o.get("participant"))
            .map(|p| ["participant_uuid", "user_id", "id"].map(|key| Scalar::of(p.get(key)))),
    };
    Ok(identity(event_type, fields, raw))
}

fn identity(event_type: String, fields: KeyFields<'_>, raw: &str) -> (String, i64, String) {
    let ts = scalar_to_i64(&fields.ts);
    let object_key = scalar_to_key_part(&fields.uuid).or_else(|| scalar_to_key_part(&fields.id));
    // The first participant field present decides.
    let participant = fields.participant.and_then(|parts| {
        parts
            .iter()
            .find(|part| part.is_present())
            .and_then(scalar_to_key_part)
    });
    let id = dedupe_key(&event_type, ts, object_key, participant, raw);
    (event_type, ts, id)
}

/// A number (or a numeric string) as `i64`, else 0.
fn scalar_to_i64(value: &Scalar<'_>) -> i64 {
    match value {
        Scalar::Int(n) => *n,
        Scalar::Float(f) => *f as i64,
        Scalar::Str(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

/// A scalar as it goes into the dedupe key (as Rhai would print it).
fn scalar_to_key_part(value: &Scalar<'_>) -> Option<String> {
    match value {
        Scalar::Str(s) => Some(s.to_string()),
        Scalar::Int(n) => Some(n.to_string()),
        Scalar::Float(f) => Some(Dynamic::from_float(*f).to_string()),
        Scalar::Bool(b) => Some(b.to_string()),
        Scalar::Absent | Scalar::Other => None,
    }
}

/// The dedupe key: type, timestamp, object uuid (or id), participant id.
/// Without an object identity it is a hash of the canonical body.
fn dedupe_key(
    event_type: &str,
    ts: i64,
    object_key: Option<String>,
    participant: Option<String>,
    raw: &str,
) -> String {
    if ts != 0
        && let Some(object_key) = object_key
    {
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
    fn the_one_pass_head_and_the_full_tree_give_the_same_identity() {
        let bodies = [
            ENDED.to_string(),
            JOINED.to_string(),
            r#"{"event":"a.b","event_ts":"1732000000000","payload":{"object":{"id":1.5}}}"#.into(),
            r#"{"event":"a.b","event_ts":12.9,"payload":{"object":{"uuid":null,"id":true}}}"#.into(),
            r#"{"event":"a.b","event_ts":1,"payload":{"object":{"uuid":{"x":1},"id":18446744073709551615}}}"#.into(),
            r#"{"event":"a.b","event_ts":1,"payload":{"object":{"id":"o","participant":{"participant_uuid":[],"id":7}}}}"#.into(),
            r#"{"event":"a.b","event_ts":1,"payload":{"object":{"id":"o","participant":"p"}}}"#.into(),
            r#"{"event":"a.b","event_ts":1,"payload":{"object":{"id":"o","participant":{"participant_uuid":null,"id":7}}}}"#.into(),
            r#"{"event":"a.b","event_ts":1,"payload":{"object":{"id":"o","participant":{"user_id":"u","id":7}}}}"#.into(),
            r#"{"event":"a.b","event_ts":null,"payload":{"object":null}}"#.into(),
            r#"{"event":"a.b","event_ts":3,"payload":{"object":["u",1,{"id":2}]}}"#.into(),
            r#"{"event":"a.b","event_ts":3,"payload":{"object":{"id":1,"participant":[5]}}}"#.into(),
            r#"{"event":"a.b","event_ts":5,"payload":{"object":{"participant":null,"uuid":"x"}}}"#.into(),
            r#"{"event":"a.b","event_ts":0,"payload":{"object":{"id":"o"}}}"#.into(),
            r#"{"event":"a.b","event_ts":1,"event_ts":2,"payload":{"object":{"id":"o"}}}"#.into(),
            r#"{"event":"a\u002eb","event_ts":1,"payload":{"object":{"id":"o\"q"}}}"#.into(),
        ];
        for body in &bodies {
            let via_head = Head::read(body).map(|h| identity_from_head(h, body).unwrap());
            let via_tree = identity_from_tree(body).unwrap();
            if let Some(via_head) = via_head {
                assert_eq!(via_head, via_tree, "{body}");
            }
            assert_eq!(
                Event::parse(body, Source::Fire).unwrap().id,
                via_tree.2,
                "{body}"
            );
        }
    }

    #[test]
    fn the_head_and_the_tree_agree_on_every_shape_of_the_key_fields() {
        let values = [
            None,
            Some("null"),
            Some(r#""s""#),
            Some("7"),
            Some("2.5"),
            Some("[1]"),
        ];
        let field = |name: &str, value: Option<&str>| value.map(|v| format!(r#""{name}":{v},"#));
        let mut checked = 0;
        for ts in values {
            for uuid in values {
                for id in values {
                    for p_uuid in values {
                        for user_id in values {
                            let participant: String = [
                                field("participant_uuid", p_uuid),
                                field("user_id", user_id),
                                field("id", Some("9")),
                            ]
                            .into_iter()
                            .flatten()
                            .collect();
                            let object: String = [field("uuid", uuid), field("id", id)]
                                .into_iter()
                                .flatten()
                                .collect();
                            let body = format!(
                                r#"{{{}"event":"a.b","payload":{{"object":{{{object}"participant":{{{}}}}}}}}}"#,
                                field("event_ts", ts).unwrap_or_default(),
                                participant.trim_end_matches(',')
                            );
                            let via_tree = identity_from_tree(&body).unwrap();
                            let head = Head::read(&body).unwrap_or_else(|| panic!("{body}"));
                            assert_eq!(
                                identity_from_head(head, &body).unwrap(),
                                via_tree,
                                "{body}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 6usize.pow(5));
    }

    #[test]
    fn the_download_token_is_read_when_there_is_one() {
        let with = r#"{"event":"recording.completed","download_token":"abc","payload":{}}"#;
        let event = Event::parse(with, Source::Fire).unwrap();
        assert_eq!(event.download_token().as_deref(), Some("abc"));
        let event = Event::parse(ENDED, Source::Fire).unwrap();
        assert_eq!(event.download_token(), None);
    }

    #[test]
    fn the_body_is_read_only_for_scripts() {
        let event = Event::parse(ENDED, Source::Fire).unwrap();
        assert!(event.body().is_read_only());
    }
}
