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
//! serde_json reads the envelope, keeping `content` as its JSON text; a
//! string (what Zoom sends) is then unescaped here into a string sized once
//! ([`unescape`]), other content is taken as it is written.

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

/// The envelope: `content` is kept as its JSON text, a string literal
/// (what Zoom sends) unescaped by [`unescape`] afterwards.
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(borrow)]
    module: Option<Cow<'a, str>>,
    /// `fire` takes text whose `success` is not a boolean for a bare
    /// event, not a frame.
    success: Option<bool>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

/// A `content`'s value: the text of a string, the JSON text of anything else.
fn content_text(raw: &RawValue) -> Result<Cow<'_, str>, FrameError> {
    let text = raw.get();
    if !text.starts_with('"') {
        return Ok(Cow::Borrowed(text));
    }
    unescape(text).ok_or_else(|| FrameError::Envelope("content has a lone surrogate".into()))
}

/// The text of a JSON string literal (its quotes included) that serde_json
/// has already checked as such: closed, no raw control character, every
/// escape one of JSON's with four hex digits after `\u`. `None` for an
/// escaped lone surrogate, which serde_json refuses too.
///
/// Written out rather than left to serde_json's string parse: an event in a
/// frame has an escape every few bytes (each of its quotes), which serde_json
/// handles one at a time into a scratch buffer that grows as it goes, and
/// copies again from there. This sizes the text once (unescaping never
/// lengthens) and copies the runs between escapes whole; the runs are a few
/// bytes long, so a plain loop finds their ends.
fn unescape(literal: &str) -> Option<Cow<'_, str>> {
    let inner = &literal[1..literal.len() - 1];
    let bytes = inner.as_bytes();
    let Some(first) = bytes.iter().position(|&b| b == b'\\') else {
        return Some(Cow::Borrowed(inner));
    };
    let mut text = Vec::with_capacity(bytes.len());
    let (mut run, mut at) = (0, first);
    while at < bytes.len() {
        if bytes[at] != b'\\' {
            at += 1;
            continue;
        }
        text.extend_from_slice(&bytes[run..at]);
        let byte = match *bytes.get(at + 1)? {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            _ => {
                let (ch, len) = unicode_escape(&inner[at + 1..])?;
                text.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                at += 1 + len;
                run = at;
                continue;
            }
        };
        text.push(byte);
        at += 2;
        run = at;
    }
    text.extend_from_slice(&bytes[run..]);
    // Runs of valid text cut at ASCII bytes, and whole characters.
    String::from_utf8(text).ok().map(Cow::Owned)
}

/// The character of `uXXXX` (or of a surrogate pair `uXXXX\\uXXXX`) at the
/// start of `escape`, and the bytes it took.
fn unicode_escape(escape: &str) -> Option<(char, usize)> {
    let hex = |at: usize| u32::from_str_radix(escape.get(at..at + 4)?, 16).ok();
    let unit = hex(1)?;
    if !(0xD800..0xE000).contains(&unit) {
        return Some((char::from_u32(unit)?, 5));
    }
    if unit >= 0xDC00 || escape.get(5..7) != Some("\\u") {
        return None;
    }
    let low = hex(7).filter(|low| (0xDC00..0xE000).contains(low))?;
    let ch = char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))?;
    Some((ch, 11))
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
    let frame: RawFrame<'_> =
        serde_json::from_str(text).map_err(|e| FrameError::Envelope(e.to_string()))?;
    let module = frame
        .module
        .ok_or_else(|| FrameError::Envelope("no `module` field".into()))?;
    let content = frame.content.map(content_text).transpose()?;
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
            let event = Event::parse_for_matching(&content, source.clone())?;
            Ok(Frame::Event(Box::new(event)))
        }
        other => Ok(Frame::Unknown {
            module: other.to_string(),
        }),
    }
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
        let frame: RawFrame<'_> =
            serde_json::from_str(&frame).map_err(|e| FrameError::Envelope(e.to_string()))?;
        frame
            .content
            .map(|raw| content_text(raw).map(Cow::into_owned))
            .transpose()
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
            assert_eq!(content_of(content).unwrap().as_deref(), Some(kept));
        }
    }

    #[test]
    fn unescape_agrees_with_serde_json_on_every_escape() {
        // Runs of text between JSON's escapes, each code unit also written
        // as `\uXXXX` in either case: any unit (lone surrogates included) or
        // a surrogate pair.
        let mut rng = fastrand::Rng::with_seed(10);
        let piece = |rng: &mut fastrand::Rng| match rng.u8(0..6) {
            0 => [r#"\""#, r"\\", r"\/", r"\b", r"\f", r"\n", r"\r", r"\t"][rng.usize(0..8)]
                .to_string(),
            1 => format!(r"\u{:04x}", rng.u32(0..0x10000)),
            2 => format!(
                r"\u{:04X}\u{:04x}",
                rng.u32(0xD800..0xDC00),
                rng.u32(0xDC00..0xE000)
            ),
            3 => "é€😀".to_string(),
            _ => "plain text".chars().take(rng.usize(0..11)).collect(),
        };
        let mut refused = 0;
        for _ in 0..50_000 {
            let body: String = (0..rng.usize(0..8)).map(|_| piece(&mut rng)).collect();
            let literal = format!("\"{body}\"");
            let expected = serde_json::from_str::<String>(&literal).ok();
            refused += usize::from(expected.is_none());
            assert_eq!(
                unescape(&literal).map(Cow::into_owned),
                expected,
                "{literal}"
            );
        }
        assert!(refused > 500, "lone surrogates are tried: {refused}");
        assert!(matches!(
            unescape(r#""no escapes""#),
            Some(Cow::Borrowed("no escapes"))
        ));
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
        assert!(event.tree_is_kept(), "for the matcher");
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

    /// Not a check: the cost of a frame into a matched-ready event (decode,
    /// then the tree the fast conditions read), for measuring a change under
    /// callgrind (`ZW_HARNESS_FRAMES` frames of a participant joining and of
    /// a meeting starting, alternated).
    ///
    /// `cargo test --release -p zoomwire-engine --lib decode_cost -- --ignored`
    #[test]
    #[ignore = "a measuring harness, not a test"]
    fn decode_cost_harness() {
        let frames = std::env::var("ZW_HARNESS_FRAMES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000usize);
        let joined: serde_json::Value = serde_json::from_str(include_str!(
            "../../../../examples/events/meeting.participant_joined.json"
        ))
        .unwrap();
        let joined = serde_json::json!({"module": "message", "content": joined.to_string()});
        let samples = [joined.to_string(), MESSAGE.to_string()];
        let mut fields = 0;
        for i in 0..frames {
            let Frame::Event(event) = decode_frame(&samples[i % 2], &source()).unwrap() else {
                panic!("an event frame")
            };
            fields += usize::from(event.tree().get("payload").is_some());
        }
        assert_eq!(fields, frames);
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
