//! Zoom's WebSocket frames: the envelope `{"module", "success", "content"}`
//! decoded into what the connection needs to act on.
//!
//! A `message` frame carries the event as a JSON *string* in `content` (an
//! object is accepted too). A token that expired shows up as a frame whose
//! content says `Invalid Token` or `Token is invalid` (the wording changed
//! once; other errors say `Invalid Token!`), in whichever module Zoom puts
//! it, so every frame whose content is not a JSON object is checked for
//! those words by containment, ignoring case. An event's content is a JSON
//! object, so a topic that happens to say "invalid token" is still an event.
//!
//! A string `content` is unescaped by serde_json while it reads the envelope,
//! in the same pass; other content is rare and reads the frame a second time.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::{Event, EventError, MAX_EVENT_BYTES, Source};

/// One decoded frame.
#[derive(Debug)]
pub enum Frame {
    /// The first frame: whether the subscription and token were accepted.
    BuildConnection { success: bool, content: String },
    /// The server's answer to our heartbeat.
    Heartbeat { success: bool },
    /// An event, already decoded.
    Event(Box<Event>),
    /// The server says the token is no longer valid: reconnect with a new one.
    InvalidToken,
    /// A module we do not know: logged and ignored.
    Unknown { module: String },
}

/// Why a frame was skipped.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame is {size} bytes, larger than the {limit} byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("frame is not a JSON object with a `module`: {0}")]
    Envelope(String),
    #[error("message frame has no content")]
    NoContent,
    #[error("message frame content is not an event: {0}")]
    Content(#[from] EventError),
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(borrow)]
    module: Option<Cow<'a, str>>,
    /// Only its type is checked: `fire` takes text whose `success` is not a
    /// boolean for a bare event, not a frame.
    #[expect(dead_code, reason = "read for its type only")]
    success: Option<bool>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

/// The envelope as the hot path reads it: a string `content` (what Zoom
/// sends) is unescaped by serde_json in the same pass that reads the
/// envelope; any other `content` is only noted, and [`RawFrame`] reads the
/// frame again for it.
#[derive(Deserialize)]
struct TextFrame<'a> {
    #[serde(borrow)]
    module: Option<Cow<'a, str>>,
    success: Option<bool>,
    #[serde(borrow)]
    content: Option<Content<'a>>,
}

/// A frame's `content`: its text when it is a JSON string.
enum Content<'a> {
    Text(Cow<'a, str>),
    /// An object, an array, a number or a boolean (skipped).
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ContentVisitor)
    }
}

struct ContentVisitor;

impl<'de> serde::de::Visitor<'de> for ContentVisitor {
    type Value = Content<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Content::Text(Cow::Borrowed(v)))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Content::Text(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Content::Text(Cow::Owned(v)))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Content::Other)
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Content::Other)
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Content::Other)
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Content::Other)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(Content::Other)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Content::Other)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(Content::Other)
    }
}

/// Texts that mean the access token was refused, by containment: the
/// wording changed once and may again around the same words. Only for
/// content that is not a JSON object (an event is one).
fn is_invalid_token_text(text: &str) -> bool {
    let text = text.trim_start();
    if text.starts_with('{') {
        return false;
    }
    let lower = text.to_ascii_lowercase();
    lower.contains("invalid token") || lower.contains("token is invalid")
}

/// Decodes one text frame. `source` is recorded on the event it carries.
pub fn decode_frame(text: &str, source: &Source) -> Result<Frame, FrameError> {
    // Room for the envelope around a maximal event.
    let limit = MAX_EVENT_BYTES + MAX_EVENT_BYTES / 2;
    if text.len() > limit {
        return Err(FrameError::TooLarge {
            size: text.len(),
            limit,
        });
    }
    let frame: TextFrame<'_> =
        serde_json::from_str(text).map_err(|e| FrameError::Envelope(e.to_string()))?;
    let module = frame
        .module
        .ok_or_else(|| FrameError::Envelope("no `module` field".into()))?;
    let content = match frame.content {
        None => None,
        Some(Content::Text(text)) => Some(text),
        Some(Content::Other) => other_content(text)?,
    };
    let success = frame.success;
    if content.as_deref().is_some_and(is_invalid_token_text) {
        return Ok(Frame::InvalidToken);
    }
    match module.as_ref() {
        "build_connection" => Ok(Frame::BuildConnection {
            success: success.unwrap_or(false),
            content: content.map(Cow::into_owned).unwrap_or_default(),
        }),
        "heartbeat" => Ok(Frame::Heartbeat {
            success: success.unwrap_or(true),
        }),
        "message" => {
            let content = content.ok_or(FrameError::NoContent)?;
            let event = Event::parse(&content, source.clone())?;
            Ok(Frame::Event(Box::new(event)))
        }
        other => Ok(Frame::Unknown {
            module: other.to_string(),
        }),
    }
}

/// A `content` that is not a string, as its JSON text (the frame is read
/// again, keeping the value's text this time).
fn other_content(text: &str) -> Result<Option<Cow<'_, str>>, FrameError> {
    let raw: RawFrame<'_> =
        serde_json::from_str(text).map_err(|e| FrameError::Envelope(e.to_string()))?;
    Ok(raw.content.map(|content| Cow::Borrowed(content.get())))
}

/// Reads either a WebSocket frame or a bare event, as `zoomwire fire` does.
pub fn decode_event_or_frame(text: &str, source: Source) -> Result<Event, FrameError> {
    let looks_like_frame = serde_json::from_str::<RawFrame<'_>>(text)
        .map(|f| f.module.is_some())
        .unwrap_or(false);
    if !looks_like_frame {
        return Ok(Event::parse(text, source)?);
    }
    match decode_frame(text, &source)? {
        Frame::Event(event) => Ok(*event),
        _ => Err(FrameError::NoContent),
    }
}

/// The heartbeat the client sends every interval.
pub const HEARTBEAT_FRAME: &str = r#"{"module":"heartbeat"}"#;

#[cfg(test)]
mod tests {

    /// The `content` string of a frame, as the hot path reads it.
    fn content_of(literal: &str) -> Result<Option<String>, FrameError> {
        let frame = format!(r#"{{"module":"x","content":{literal}}}"#);
        let frame: TextFrame<'_> =
            serde_json::from_str(&frame).map_err(|e| FrameError::Envelope(e.to_string()))?;
        Ok(match frame.content {
            Some(Content::Text(text)) => Some(text.into_owned()),
            _ => None,
        })
    }

    #[test]
    fn content_is_unescaped_as_serde_json_would() {
        let texts = [
            "plain",
            "",
            r#"{"event":"meeting.started","payload":{"object":{"topic":"a \"quoted\" topic"}}}"#,
            "tabs\tand\nnew lines\r\u{8}\u{c}/slash\\back \u{1}",
            "caf\u{e9} \u{20ac} \u{1F600} ascii",
            "raw unicode é € 😀",
        ];
        for text in texts {
            let literal = serde_json::to_string(text).unwrap();
            assert_eq!(
                content_of(&literal).unwrap().as_deref(),
                Some(text),
                "{literal}"
            );
        }
        for literal in [r#""a\/b""#, r#""\u00e9\ud83d\ude00""#, r#""x\u0041y""#] {
            let expected: String = serde_json::from_str(literal).unwrap();
            assert_eq!(content_of(literal).unwrap(), Some(expected), "{literal}");
        }
        // Lone surrogates make the frame malformed.
        for literal in [
            r#""\ud83d""#,
            r#""\ud83dx""#,
            r#""\ude00""#,
            r#""\ud83d\u0041""#,
        ] {
            assert!(content_of(literal).is_err(), "{literal}");
            let frame = format!(r#"{{"module":"message","content":{literal}}}"#);
            assert!(decode_frame(&frame, &source()).is_err(), "{literal}");
        }
        // Content that is not a string is kept as its JSON text.
        for (content, kept) in [
            ("{\"a\": [1, 2]}", "{\"a\": [1, 2]}"),
            ("[1,2]", "[1,2]"),
            ("7", "7"),
        ] {
            let frame = format!(r#"{{"module":"x","content":{content}}}"#);
            assert_eq!(other_content(&frame).unwrap().as_deref(), Some(kept));
        }
    }

    use super::*;

    const MESSAGE: &str = include_str!("../../../../examples/frames/ws_frame_message.json");
    const BUILD: &str =
        include_str!("../../../../examples/frames/ws_frame_build_connection_success.json");
    const HEARTBEAT: &str =
        include_str!("../../../../examples/frames/ws_frame_heartbeat_response.json");
    const INVALID: &str = include_str!("../../../../examples/frames/ws_frame_token_invalid.json");

    fn source() -> Source {
        Source::Websocket("default".into())
    }

    #[test]
    fn decodes_a_message_frame_with_string_content() {
        let Frame::Event(event) = decode_frame(MESSAGE, &source()).unwrap() else {
            panic!("expected an event")
        };
        assert_eq!(event.event_type, "meeting.started");
        assert_eq!(event.source, source());
    }

    #[test]
    fn decodes_a_message_frame_with_object_content() {
        let frame = r#"{"module":"message","content":{"event":"user.created","event_ts":1,"payload":{"object":{"id":"u1"}}}}"#;
        let Frame::Event(event) = decode_frame(frame, &source()).unwrap() else {
            panic!("expected an event")
        };
        assert_eq!(event.event_type, "user.created");
    }

    #[test]
    fn decodes_control_frames() {
        assert!(matches!(
            decode_frame(BUILD, &source()).unwrap(),
            Frame::BuildConnection { success: true, .. }
        ));
        assert!(matches!(
            decode_frame(HEARTBEAT, &source()).unwrap(),
            Frame::Heartbeat { success: true }
        ));
        assert!(matches!(
            decode_frame(INVALID, &source()).unwrap(),
            Frame::InvalidToken
        ));
        for wording in [
            r#"{"module":"heartbeat","content":"Invalid Token"}"#,
            r#"{"module":"message","success":false,"content":"Token is invalid"}"#,
            r#"{"module":"message","content":"Invalid Token!"}"#,
            r#"{"module":"build_connection","success":false,"content":"Error: token is invalid or expired"}"#,
            r#"{"module":"notice","content":"  INVALID TOKEN, please reconnect"}"#,
        ] {
            assert!(
                matches!(
                    decode_frame(wording, &source()).unwrap(),
                    Frame::InvalidToken
                ),
                "{wording}"
            );
        }
        // An event about an invalid token is still an event.
        let event = r#"{"module":"message","content":"{\"event\":\"meeting.started\",\"payload\":{\"object\":{\"topic\":\"Invalid token review\"}}}"}"#;
        assert!(matches!(
            decode_frame(event, &source()).unwrap(),
            Frame::Event(_)
        ));
        assert!(matches!(
            decode_frame(r#"{"module":"mystery"}"#, &source()).unwrap(),
            Frame::Unknown { .. }
        ));
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        for bad in [
            "",
            "not json",
            "[]",
            r#"{"content":"x"}"#,
            r#"{"module":"message"}"#,
            r#"{"module":"message","content":"{not json"}"#,
            r#"{"module":"message","content":"[1,2]"}"#,
        ] {
            assert!(decode_frame(bad, &source()).is_err(), "{bad}");
        }
    }

    #[test]
    fn fire_accepts_a_frame_or_a_bare_event() {
        let from_frame = decode_event_or_frame(MESSAGE, Source::Fire).unwrap();
        let bare = decode_event_or_frame(&from_frame.raw, Source::Fire).unwrap();
        assert_eq!(from_frame.id, bare.id);
        // Not a frame (its `success` is no boolean): read as a bare event.
        let odd = r#"{"module":"message","success":"x","event":"a.b","event_ts":1}"#;
        let event = decode_event_or_frame(odd, Source::Fire).unwrap();
        assert_eq!(event.event_type, "a.b");
    }
}
