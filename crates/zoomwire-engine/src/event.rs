//! The engine's view of one Zoom event: the body exactly as Zoom sent it, plus
//! the envelope the engine adds (`id`, `source`, `received_at`).
//!
//! Decoding reads the body once into a borrowed tree ([`tree::Json`]), takes
//! the type, timestamp and dedupe key from it and keeps the raw JSON text
//! (what the journal stores). At intake the tree is kept with the event until
//! it is matched, so the matcher's fast conditions read the same tree instead
//! of parsing the text again. The read-only Rhai value that scripts and
//! Rhai-evaluated conditions read is made from the text on first use and
//! shared by every rule of the event, so no rule converts the event again.
//!
//! Zoom's `download_token` (sent with recording events) is taken out of the
//! body at once: it is kept beside it as a secret (for `zoom::download`, and
//! registered with [`Secrets::global`] so it is scrubbed from any output), so
//! scripts, conditions, the journal's copy of the body and the page never
//! see it.
//!
//! The `id` is the dedupe key (see the README on reconciliation). Where the thing an
//! event is about has an identity of its own, the key is that identity and
//! not the delivery's `event_ts`, so that a late second delivery and the same
//! event found again through REST (reconciliation) share it: a
//! `recording.completed` is its meeting uuid and the sorted ids of its files,
//! a `meeting.ended` its meeting uuid, a `user.created` its user id, a
//! participant joining or leaving the meeting uuid, the participant and the
//! join or leave time. Other events keep the type, timestamp, object uuid (or
//! id) and participant; an event without any of these is a hash of its
//! canonical body.

pub(crate) mod literal;
pub mod tree;

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use rhai::{Dynamic, Map};
use secrecy::SecretString;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::secrets::Secrets;

use tree::Json;

/// A tree kept with the text it borrows from.
type KeptTree = yoke::Yoke<Json<'static>, Arc<str>>;

/// The body's field that holds Zoom's download token.
pub const DOWNLOAD_TOKEN_FIELD: &str = "download_token";
/// The same as it appears in JSON text.
const QUOTED_TOKEN_FIELD: &str = "\"download_token\"";

/// Largest event body accepted at intake. Values injected into the sandbox
/// bypass Rhai's size limits, so the cap is enforced here.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Where an event came from.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// Found again through the REST API of the named account after Zoom sent
    /// it while no connection was up (`meta.source` is `reconcile`).
    Reconcile(String),
}

/// Written out for `clone_from`, which keeps the name's buffer when the
/// kind is the same (the admin page's ring of recent events reuses its
/// notes this way for every event).
impl Clone for Source {
    fn clone(&self) -> Self {
        match self {
            Source::Websocket(name) => Source::Websocket(name.clone()),
            Source::Webhook => Source::Webhook,
            Source::Schedule(name) => Source::Schedule(name.clone()),
            Source::Fire => Source::Fire,
            Source::Replay => Source::Replay,
            Source::Test => Source::Test,
            Source::Reconcile(name) => Source::Reconcile(name.clone()),
        }
    }

    fn clone_from(&mut self, source: &Self) {
        match (self, source) {
            (Source::Websocket(name), Source::Websocket(other))
            | (Source::Schedule(name), Source::Schedule(other))
            | (Source::Reconcile(name), Source::Reconcile(other)) => name.clone_from(other),
            (this, _) => *this = source.clone(),
        }
    }
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
            Source::Reconcile(_) => f.write_str("reconcile"),
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
    /// The body as received, compact JSON text, without `download_token`.
    pub raw: Arc<str>,
    /// The `download_token` Zoom sent with the event, taken out of `raw`.
    download_token: Option<Arc<SecretString>>,
    /// The body read as a tree borrowing `raw`, kept from
    /// [`Event::parse_for_matching`] until [`Event::release_tree`]: the
    /// identity was read from it, and the matcher's fast conditions read it.
    tree: Option<Arc<KeptTree>>,
    /// The body as a shared, read-only Rhai value, made from `raw` the
    /// first time a condition or a run needs it: most events are settled by
    /// fast conditions on [`tree::Json`] and never need it.
    body: Arc<OnceLock<Dynamic>>,
    /// Told once the event is journaled, for a source that answers only
    /// then (the webhook: Zoom does not send again what got a 200).
    journaled: Option<Arc<Receipt>>,
}

/// The sending half of [`Event::with_receipt`]'s receiver, fired once.
#[derive(Debug, Default)]
struct Receipt(parking_lot::Mutex<Option<tokio::sync::oneshot::Sender<()>>>);

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
    /// Parses a bare Zoom event body (`{"event", "event_ts", "payload"}`),
    /// taking its `download_token` out (see the module's documentation), for
    /// intake: the tree its identity was read from is kept for the matcher's
    /// fast conditions ([`Event::tree`]) until [`Event::release_tree`], so
    /// the body is read once on the way in.
    pub fn parse_for_matching(body_json: &str, source: Source) -> Result<Event, EventError> {
        if body_json.len() > MAX_EVENT_BYTES {
            return Err(EventError::TooLarge {
                size: body_json.len(),
                limit: MAX_EVENT_BYTES,
            });
        }
        let (body_json, download_token) = take_download_token(body_json)?;
        let raw: Arc<str> = Arc::from(body_json);
        let tree = KeptTree::try_attach_to_cart(raw.clone(), |text: &str| Json::parse(text))
            .map_err(|e| EventError::Json(e.to_string()))?;
        let (event_type, ts, id) = identity_of(tree.get(), &raw)?;
        if let Some(token) = &download_token {
            use secrecy::ExposeSecret;
            // A short token is still kept out of the body; it just cannot be scrubbed by value.
            let _ = Secrets::global().add_seen(token.expose_secret());
        }
        Ok(Event {
            id,
            event_type,
            ts,
            source,
            received_at: Utc::now(),
            raw,
            download_token,
            tree: Some(Arc::new(tree)),
            body: Arc::new(OnceLock::new()),
            journaled: None,
        })
    }

    /// Parses a bare Zoom event body as [`Event::parse_for_matching`] does,
    /// without keeping its tree: for events read anywhere but the WebSocket
    /// and webhook intake (the journal, reconciliation, schedules, `fire`),
    /// whose matching, if any, reads the text again.
    pub fn parse(body_json: &str, source: Source) -> Result<Event, EventError> {
        let mut event = Event::parse_for_matching(body_json, source)?;
        event.release_tree();
        Ok(event)
    }

    /// The event with a receiver that resolves once the journal holds it
    /// (new or a duplicate); dropped unresolved when it never does.
    pub fn with_receipt(mut self) -> (Event, tokio::sync::oneshot::Receiver<()>) {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.journaled = Some(Arc::new(Receipt(parking_lot::Mutex::new(Some(sender)))));
        (self, receiver)
    }

    /// Whether the source waits to hear that the journal holds the event
    /// ([`Event::with_receipt`]).
    pub fn awaits_journal(&self) -> bool {
        self.journaled.is_some()
    }

    /// Tells the source, if it asked ([`Event::with_receipt`]), that the
    /// journal holds the event.
    pub fn mark_journaled(&self) {
        let Some(receipt) = &self.journaled else {
            return;
        };
        if let Some(sender) = receipt.0.lock().take() {
            let _ = sender.send(());
        }
    }

    /// The event with this download token (one stored apart from its body).
    pub fn with_download_token(mut self, token: Option<Arc<SecretString>>) -> Event {
        if let Some(token) = &token {
            use secrecy::ExposeSecret;
            let _ = Secrets::global().add_seen(token.expose_secret());
        }
        self.download_token = token;
        self
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

    /// The body read as a borrowed tree, for the hot path: the one read at
    /// intake while it is kept, else read again.
    pub fn tree(&self) -> Cow<'_, Json<'_>> {
        match &self.tree {
            Some(kept) => Cow::Borrowed(kept.get()),
            // Cannot fail: `raw` parsed when the event was built.
            None => Cow::Owned(Json::parse(&self.raw).unwrap_or(Json::Null)),
        }
    }

    /// Whether the tree read at intake is still kept.
    pub fn tree_is_kept(&self) -> bool {
        self.tree.is_some()
    }

    /// Drops the tree kept from intake (once matched, the runs need only
    /// the text); [`Event::tree`] reads the text again after this.
    pub fn release_tree(&mut self) {
        self.tree = None;
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

    /// The `download_token` Zoom sent with the event, if any: only
    /// `zoom::download` uses it, scripts never see it.
    pub fn download_token(&self) -> Option<&Arc<SecretString>> {
        self.download_token.as_ref()
    }
}

/// The body without its top-level `download_token`, and the token. Most
/// bodies have none and come back borrowed; the others keep their fields'
/// order and every other value byte for byte.
pub fn take_download_token(
    body_json: &str,
) -> Result<(Cow<'_, str>, Option<Arc<SecretString>>), EventError> {
    if !body_json.contains(QUOTED_TOKEN_FIELD) {
        return Ok((Cow::Borrowed(body_json), None));
    }
    let Ok(mut fields) = serde_json::from_str::<IndexMap<String, Box<RawValue>>>(body_json) else {
        // Not an object, or the name only appears nested: nothing to take.
        return Ok((Cow::Borrowed(body_json), None));
    };
    let Some(token) = fields.shift_remove(DOWNLOAD_TOKEN_FIELD) else {
        return Ok((Cow::Borrowed(body_json), None));
    };
    let token = serde_json::from_str::<Option<String>>(token.get())
        .ok()
        .flatten()
        .filter(|t| !t.is_empty())
        .map(|t| Arc::new(SecretString::from(t)));
    let without = serde_json::to_string(&fields).map_err(|e| EventError::Json(e.to_string()))?;
    Ok((Cow::Owned(without), token))
}

/// The fields an event's identity is made of, as the tree holds them
/// (`None`: the field is not there).
struct KeyFields<'t, 'a> {
    ts: Option<&'t Json<'a>>,
    uuid: Option<&'t Json<'a>>,
    id: Option<&'t Json<'a>>,
    /// `participant_uuid`, `user_id`, `id`, `join_time` and `leave_time`,
    /// when there is a participant.
    participant: Option<[Option<&'t Json<'a>>; 5]>,
    /// The ids of `recording_files`, when it is a list of objects.
    file_ids: Option<Vec<Option<&'t Json<'a>>>>,
}

/// Type, timestamp and dedupe key of a body read as a tree.
fn identity_of(tree: &Json<'_>, raw: &str) -> Result<(String, i64, String), EventError> {
    if !tree.is_object() {
        return Err(EventError::NotAnObject);
    }
    let event_type = tree
        .get("event")
        .and_then(Json::as_str)
        .ok_or(EventError::MissingType)?
        .to_string();
    let object = tree.get("payload").and_then(|p| p.get("object"));
    let field = |key: &str| object.and_then(|o| o.get(key));
    let file_ids = match field("recording_files") {
        Some(Json::Array(files)) if files.iter().all(Json::is_object) => {
            Some(files.iter().map(|file| file.get("id")).collect())
        }
        _ => None,
    };
    let fields = KeyFields {
        ts: tree.get("event_ts"),
        uuid: field("uuid"),
        id: field("id"),
        participant: field("participant").map(|p| {
            [
                "participant_uuid",
                "user_id",
                "id",
                "join_time",
                "leave_time",
            ]
            .map(|key| p.get(key))
        }),
        file_ids,
    };
    Ok(identity(event_type, fields, raw))
}

fn identity(event_type: String, fields: KeyFields<'_, '_>, raw: &str) -> (String, i64, String) {
    let ts = to_i64(fields.ts);
    let id = match thing_key(&event_type, &fields) {
        Some(id) => id,
        None => {
            let object_key = key_part(fields.uuid).or_else(|| key_part(fields.id));
            let participant = fields.participant.as_ref().and_then(participant_key);
            dedupe_key(&event_type, ts, object_key, participant, raw)
        }
    };
    (event_type, ts, id)
}

/// The first participant id present decides (`participant_uuid`, `user_id`,
/// `id`), even when it is no scalar (then there is no participant key).
fn participant_key(parts: &[Option<&Json<'_>>; 5]) -> Option<String> {
    key_part(parts[..3].iter().find_map(|part| *part))
}

/// The key of the thing itself, for the types whose thing has an identity
/// that does not change between deliveries (see the module doc).
fn thing_key(event_type: &str, fields: &KeyFields<'_, '_>) -> Option<String> {
    let uuid = || key_part(fields.uuid);
    if event_type == "recording.completed" {
        let files = fields.file_ids.as_ref().filter(|ids| !ids.is_empty())?;
        let mut ids = files
            .iter()
            .map(|id| key_part(*id))
            .collect::<Option<Vec<String>>>()?;
        ids.sort_unstable();
        return Some(key(&[event_type, &uuid()?, &short_hash(&ids.join("\n"))]));
    }
    if event_type == "meeting.ended" {
        return Some(key(&[event_type, &uuid()?]));
    }
    if event_type == "user.created" {
        return Some(key(&[event_type, &key_part(fields.id)?]));
    }
    let time_index = if event_type.ends_with(".participant_joined") {
        3
    } else if event_type.ends_with(".participant_left") {
        4
    } else {
        return None;
    };
    let parts = fields.participant.as_ref()?;
    let participant = participant_key(parts)?;
    let time = key_part(parts[time_index])?;
    Some(key(&[event_type, &uuid()?, &participant, &time]))
}

/// A number (or a numeric string) as `i64`, else 0.
fn to_i64(value: Option<&Json<'_>>) -> i64 {
    match value {
        Some(Json::Int(n)) => *n,
        Some(Json::Float(f)) => *f as i64,
        Some(Json::Str(s)) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

/// A scalar as it goes into the dedupe key (as Rhai would print it); null,
/// arrays and objects give none.
fn key_part(value: Option<&Json<'_>>) -> Option<String> {
    match value? {
        Json::Str(s) => Some(s.to_string()),
        Json::Int(n) => Some(n.to_string()),
        Json::Float(f) => Some(Dynamic::from_float(*f).to_string()),
        Json::Bool(b) => Some(b.to_string()),
        Json::Null | Json::Array(_) | Json::Object(_) => None,
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
        let ts = ts.to_string();
        return match participant {
            Some(p) => key(&[event_type, &ts, &object_key, &p]),
            None => key(&[event_type, &ts, &object_key]),
        };
    }
    key(&[event_type, &canonical_hash(raw)])
}

/// The parts joined with `:`, in a string sized once: cheaper than
/// `format!` on the path of every event.
fn key(parts: &[&str]) -> String {
    parts.join(":")
}

/// SHA-256 of the body with object keys sorted and whitespace removed.
pub fn canonical_hash(raw: &str) -> String {
    let canonical = match serde_json::from_str::<serde_json::Value>(raw) {
        // serde_json's map is a BTreeMap without `preserve_order`: keys come out sorted.
        Ok(value) => value.to_string(),
        Err(_) => raw.to_string(),
    };
    short_hash(&canonical)
}

/// The first 16 bytes of the text's SHA-256, in hex.
fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    hex::encode(&digest[..16])
}

/// The texts of Zoom's sample events (`examples/events/*.json`), in name
/// order, for tests that hold a reading of events to another.
#[cfg(test)]
pub(crate) fn sample_bodies() -> Vec<String> {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/events");
    let mut paths: Vec<_> = std::fs::read_dir(folder)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 9, "{paths:?}");
    paths
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDED: &str = include_str!("../../../examples/events/meeting.ended.json");
    const JOINED: &str = include_str!("../../../examples/events/meeting.participant_joined.json");

    const RECORDING: &str = include_str!("../../../examples/events/recording.completed.json");
    const USER: &str = include_str!("../../../examples/events/user.created.json");

    #[test]
    fn a_source_cloned_into_another_is_equal_to_it() {
        let sources = [
            Source::Websocket("main".into()),
            Source::Webhook,
            Source::Schedule("nightly".into()),
            Source::Fire,
            Source::Replay,
            Source::Test,
            Source::Reconcile("second account".into()),
        ];
        for from in &sources {
            assert_eq!(&from.clone(), from);
            for into in &sources {
                let mut copy = into.clone();
                copy.clone_from(from);
                assert_eq!(&copy, from);
            }
        }
    }

    #[test]
    fn parses_a_zoom_event_into_type_ts_and_key() {
        let event = Event::parse(ENDED, Source::Fire).unwrap();
        assert_eq!(event.event_type, "meeting.ended");
        assert_eq!(event.ts, 1732003600456);
        assert_eq!(event.id, "meeting.ended:pE3zGv9tRkyZ1mWqf0b2Kw==");
    }

    #[test]
    fn participant_events_are_keyed_by_meeting_participant_and_time() {
        let event = Event::parse(JOINED, Source::Fire).unwrap();
        assert_eq!(
            event.id,
            "meeting.participant_joined:pE3zGv9tRkyZ1mWqf0b2Kw==:Zx8Cv6Bn4Mq2Wd0Ef3Rg5T:2024-11-19T07:07:45Z"
        );
        let mut left = serde_json::from_str::<serde_json::Value>(JOINED).unwrap();
        left["event"] = "meeting.participant_left".into();
        left["event_ts"] = 1732000999000u64.into();
        let participant = &mut left["payload"]["object"]["participant"];
        participant["leave_time"] = "2024-11-19T07:30:00Z".into();
        let event = Event::from_value(&left, Source::Fire).unwrap();
        assert_eq!(
            event.id,
            "meeting.participant_left:pE3zGv9tRkyZ1mWqf0b2Kw==:Zx8Cv6Bn4Mq2Wd0Ef3Rg5T:2024-11-19T07:30:00Z"
        );
        // Without the time the delivery's timestamp stays in the key, as before.
        left["payload"]["object"]["participant"]
            .as_object_mut()
            .unwrap()
            .remove("leave_time");
        let event = Event::from_value(&left, Source::Fire).unwrap();
        assert!(
            event
                .id
                .starts_with("meeting.participant_left:1732000999000:"),
            "{}",
            event.id
        );
    }

    /// A body as another delivery (or the REST API) would give it: another
    /// `event_ts`, download token and URLs, the files in another order.
    fn redelivered(body: &str) -> serde_json::Value {
        let mut body: serde_json::Value = serde_json::from_str(body).unwrap();
        body["event_ts"] = 1799999999999u64.into();
        if body.get("download_token").is_some() {
            body["download_token"] = "another-token".into();
        }
        if let Some(files) = body["payload"]["object"]["recording_files"].as_array_mut() {
            files.reverse();
            for file in files {
                file["download_url"] = "https://zoom.example/other".into();
            }
        }
        body
    }

    #[test]
    fn a_second_delivery_of_the_same_thing_shares_its_key() {
        for body in [RECORDING, ENDED, USER, JOINED] {
            let first = Event::parse(body, Source::Websocket("default".into())).unwrap();
            let again =
                Event::from_value(&redelivered(body), Source::Reconcile("x".into())).unwrap();
            assert_eq!(first.id, again.id, "{body}");
            assert!(!first.id.contains("1799999999999"), "{}", first.id);
        }
        let first = Event::parse(RECORDING, Source::Fire).unwrap();
        assert!(
            first
                .id
                .starts_with("recording.completed:pE3zGv9tRkyZ1mWqf0b2Kw==:"),
            "{}",
            first.id
        );
        // Another set of files (a recording stopped and restarted) is another recording.
        let mut fewer: serde_json::Value = serde_json::from_str(RECORDING).unwrap();
        fewer["payload"]["object"]["recording_files"]
            .as_array_mut()
            .unwrap()
            .pop();
        let fewer = Event::from_value(&fewer, Source::Fire).unwrap();
        assert_ne!(first.id, fewer.id);
        // Other types keep the delivery's timestamp in the key.
        let started = ENDED.replace("meeting.ended", "meeting.started");
        let started = Event::parse(&started, Source::Fire).unwrap();
        assert_eq!(
            started.id,
            "meeting.started:1732003600456:pE3zGv9tRkyZ1mWqf0b2Kw=="
        );
    }

    #[test]
    fn reconciled_events_say_so_in_meta() {
        let event = Event::parse(ENDED, Source::Reconcile("sales".into())).unwrap();
        let meta = event.meta().cast::<rhai::Map>();
        assert_eq!(meta["source"].clone().into_string().unwrap(), "reconcile");
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

    /// Bodies with every shape of the fields the dedupe key is made of
    /// (missing, null, a string, a number, an array, an object; duplicate
    /// keys; escapes), for each kind of key.
    fn key_shape_bodies() -> Vec<String> {
        let mut bodies: Vec<String> = vec![
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
            RECORDING.to_string(),
            USER.to_string(),
            r#"{"event":"recording.completed","event_ts":1,"payload":{"object":{"uuid":"u","recording_files":[{"id":"b"},{"id":2}]}}}"#.into(),
            r#"{"event":"recording.completed","event_ts":1,"payload":{"object":{"uuid":"u","recording_files":[{"id":"b"},{"x":2}]}}}"#.into(),
            r#"{"event":"recording.completed","event_ts":1,"payload":{"object":{"uuid":"u","recording_files":[{"id":"b"},3]}}}"#.into(),
            r#"{"event":"recording.completed","event_ts":1,"payload":{"object":{"uuid":"u","recording_files":[]}}}"#.into(),
            r#"{"event":"recording.completed","event_ts":1,"payload":{"object":{"uuid":"u","recording_files":null}}}"#.into(),
            r#"{"event":"recording.completed","event_ts":1,"payload":{"object":{"uuid":"u","recording_files":"x"}}}"#.into(),
            r#"{"event":"recording.completed","event_ts":1,"payload":{"object":{"id":5,"recording_files":[{"id":"a"}]}}}"#.into(),
            r#"{"event":"meeting.ended","event_ts":1,"payload":{"object":{"id":5}}}"#.into(),
            r#"{"event":"meeting.ended","event_ts":1,"payload":{"object":{"uuid":7}}}"#.into(),
            r#"{"event":"user.created","event_ts":1,"payload":{"object":{"uuid":"x"}}}"#.into(),
            r#"{"event":"webinar.participant_left","event_ts":1,"payload":{"object":{"uuid":"u","participant":{"id":"p","leave_time":"t"}}}}"#.into(),
            r#"{"event":"meeting.participant_joined","event_ts":1,"payload":{"object":{"uuid":"u","participant":{"id":"p","join_time":null}}}}"#.into(),
            r#"{"event":"meeting.participant_joined","event_ts":1,"payload":{"object":{"uuid":"u","participant":{"join_time":"t"}}}}"#.into(),
        ];
        let values = [
            None,
            Some("null"),
            Some(r#""s""#),
            Some("7"),
            Some("2.5"),
            Some("[1]"),
        ];
        let field = |name: &str, value: Option<&str>| {
            value
                .map(|v| format!(r#""{name}":{v},"#))
                .unwrap_or_default()
        };
        for ts in values {
            for uuid in values {
                for id in values {
                    for p_uuid in values {
                        for user_id in values {
                            let participant = [
                                field("participant_uuid", p_uuid),
                                field("user_id", user_id),
                                field("id", Some("9")),
                            ]
                            .concat();
                            bodies.push(format!(
                                r#"{{{}"event":"a.b","payload":{{"object":{{{}{}"participant":{{{}}}}}}}}}"#,
                                field("event_ts", ts),
                                field("uuid", uuid),
                                field("id", id),
                                participant.trim_end_matches(',')
                            ));
                        }
                    }
                }
            }
        }
        let files = [
            None,
            Some("null"),
            Some("[]"),
            Some(r#"[{"id":"b"},{"id":"a"}]"#),
            Some(r#"[{"id":1},{"id":null}]"#),
            Some(r#"[{"id":"a"},"x"]"#),
        ];
        let types = [
            "recording.completed",
            "meeting.ended",
            "user.created",
            "meeting.participant_joined",
            "webinar.participant_left",
        ];
        for event_type in types {
            for uuid in values {
                for id in values {
                    for time in values {
                        for recording_files in files {
                            let participant = format!(
                                r#"{{"id":"p",{}{}"x":1}}"#,
                                field("join_time", time),
                                field("leave_time", time)
                            );
                            bodies.push(format!(
                                r#"{{"event":"{event_type}","event_ts":5,"payload":{{"object":{{{}{}{}"participant":{participant}}}}}}}"#,
                                field("uuid", uuid),
                                field("id", id),
                                field("recording_files", recording_files),
                            ));
                        }
                    }
                }
            }
        }
        bodies
    }

    /// Every body of [`key_shape_bodies`] with its dedupe key, one per line.
    fn key_shape_ids() -> String {
        key_shape_bodies()
            .iter()
            .map(|body| format!("{body}\t{}\n", Event::parse(body, Source::Fire).unwrap().id))
            .collect()
    }

    /// The ids are stored (`event_index`) and reconciliation finds events
    /// again by them: a change of any key would let an event already handled
    /// run again after an upgrade. The digest is of the keys given by the two
    /// roads this module had before intake kept the tree (a one-pass head of
    /// the key's fields, and the full tree), which agreed on every body here.
    /// `ZW_KEY_SHAPES=path` writes the list, to see which key changed.
    #[test]
    fn the_dedupe_key_of_every_shape_of_its_fields_is_unchanged() {
        let ids = key_shape_ids();
        if let Ok(path) = std::env::var("ZW_KEY_SHAPES") {
            std::fs::write(path, &ids).unwrap();
        }
        assert_eq!(ids.lines().count(), KEY_SHAPES);
        assert_eq!(short_hash(&ids), KEY_SHAPES_DIGEST);
    }

    const KEY_SHAPES: usize = 14_406;
    const KEY_SHAPES_DIGEST: &str = "62d276882fef23c6fe4b65c8ddb0ab2e";

    #[test]
    fn intake_keeps_the_tree_it_read_the_identity_from_until_released() {
        let mut kept = Event::parse_for_matching(JOINED, Source::Fire).unwrap();
        let parsed = Event::parse(JOINED, Source::Fire).unwrap();
        assert_eq!(
            (&kept.id, &kept.event_type, kept.ts),
            (&parsed.id, &parsed.event_type, parsed.ts)
        );
        let raw = kept.raw.clone();
        let fresh = Json::parse(&raw).unwrap();
        assert!(kept.tree_is_kept() && !parsed.tree_is_kept());
        assert!(matches!(kept.tree(), Cow::Borrowed(tree) if *tree == fresh));
        assert!(matches!(parsed.tree(), Cow::Owned(tree) if tree == fresh));
        let clone = kept.clone();
        kept.release_tree();
        assert!(
            !kept.tree_is_kept() && clone.tree_is_kept(),
            "a clone keeps its own"
        );
        assert!(matches!(kept.tree(), Cow::Owned(tree) if tree == fresh));
    }

    #[test]
    fn the_download_token_is_taken_out_of_the_body() {
        use secrecy::ExposeSecret;
        let with = r#"{"event":"recording.completed","download_token":"event-test-download-token","payload":{"object":{"download_token":"nested","b":[1, 2]}},"z":1}"#;
        let event = Event::parse(with, Source::Fire).unwrap();
        let token = event.download_token().unwrap().expose_secret().to_string();
        assert_eq!(token, "event-test-download-token");
        assert_eq!(
            &*event.raw,
            r#"{"event":"recording.completed","payload":{"object":{"download_token":"nested","b":[1, 2]}},"z":1}"#,
            "the order and every other value kept"
        );
        assert!(
            event
                .body()
                .as_map_ref()
                .unwrap()
                .get("download_token")
                .is_none()
        );
        assert_eq!(
            Secrets::global().scrub("x event-test-download-token"),
            "x [redacted]"
        );
        let event = Event::parse(ENDED, Source::Fire).unwrap();
        assert!(event.download_token().is_none());
        let null = r#"{"event":"x","download_token":null}"#;
        let event = Event::parse(null, Source::Fire).unwrap();
        assert!(event.download_token().is_none());
        assert_eq!(&*event.raw, r#"{"event":"x"}"#);
    }

    #[test]
    fn the_body_is_read_only_for_scripts() {
        let event = Event::parse(ENDED, Source::Fire).unwrap();
        assert!(event.body().is_read_only());
    }
}
