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
//! The envelope is walked here ([`RawFrame::read`]) so that a string
//! `content` (what Zoom sends) is found and unescaped in one walk; serde_json
//! reads every other value, and other content is taken as it is written.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use crate::event::literal::string_literal;
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

/// The envelope's fields; `content` is the text of a string (what Zoom
/// sends), else the JSON text of the value.
#[derive(Default)]
struct RawFrame<'a> {
    module: Option<Cow<'a, str>>,
    /// `fire` takes text whose `success` is not a boolean for a bare
    /// event, not a frame.
    success: Option<bool>,
    content: Option<Cow<'a, str>>,
}

impl<'a> RawFrame<'a> {
    /// Reads the envelope, a JSON object, as serde_json would read it into
    /// a struct of three optional fields (others ignored, none twice).
    ///
    /// Walked here rather than by serde_json: an event in a frame is a JSON
    /// string with an escape every few bytes (each of its quotes), which
    /// serde_json walks one escape at a time to find where the string ends,
    /// before it can be unescaped in a second walk. Here a string `content`
    /// is found and unescaped in one walk ([`string_literal`]); serde_json
    /// still reads every other value.
    fn read(text: &'a str) -> Result<RawFrame<'a>, FrameError> {
        let mut frame = RawFrame::default();
        let mut seen = [false; 3];
        let mut rest = skip_space(text)
            .strip_prefix('{')
            .ok_or_else(|| malformed("not a JSON object"))?;
        if let Some(after) = skip_space(rest).strip_prefix('}') {
            return frame.ended(after);
        }
        loop {
            let (key, after) = string_at(skip_space(rest))?;
            rest = skip_space(after)
                .strip_prefix(':')
                .ok_or_else(|| malformed("no `:` after a key"))?;
            rest = skip_space(rest);
            let field = ["module", "success", "content"]
                .iter()
                .position(|name| *name == key);
            if let Some(field) = field
                && std::mem::replace(&mut seen[field], true)
            {
                return Err(malformed(&format!("duplicate field `{key}`")));
            }
            rest = match field {
                Some(0) => frame.module_at(rest)?,
                Some(1) => value_at(rest).map(|(success, after)| {
                    frame.success = success;
                    after
                })?,
                Some(_) => frame.content_at(rest)?,
                None => value_at::<IgnoredAny>(rest)?.1,
            };
            rest = skip_space(rest);
            if let Some(after) = rest.strip_prefix('}') {
                return frame.ended(after);
            }
            rest = rest
                .strip_prefix(',')
                .ok_or_else(|| malformed("no `,` or `}` after a value"))?;
        }
    }

    /// `module`: a string or null.
    fn module_at(&mut self, text: &'a str) -> Result<&'a str, FrameError> {
        if text.starts_with('"') {
            let (module, after) = string_at(text)?;
            self.module = Some(module);
            return Ok(after);
        }
        Ok(value_at::<()>(text)?.1)
    }

    /// `content`: a string, unescaped, or any other value as its JSON text.
    fn content_at(&mut self, text: &'a str) -> Result<&'a str, FrameError> {
        if text.starts_with('"') {
            let (content, after) = string_at(text)?;
            self.content = Some(content);
            return Ok(after);
        }
        let (raw, after) = value_at::<Option<&RawValue>>(text)?;
        self.content = raw.map(|raw| Cow::Borrowed(raw.get()));
        Ok(after)
    }

    /// The frame, when nothing but whitespace follows its closing brace.
    fn ended(self, after: &str) -> Result<RawFrame<'a>, FrameError> {
        if !skip_space(after).is_empty() {
            return Err(malformed("text after the object"));
        }
        Ok(self)
    }
}

fn malformed(why: &str) -> FrameError {
    FrameError::Envelope(why.to_string())
}

/// `text` without the JSON whitespace it starts with.
fn skip_space(text: &str) -> &str {
    text.trim_start_matches([' ', '\t', '\n', '\r'])
}

/// The JSON value at the start of `text`, read by serde_json, and the text
/// after it.
fn value_at<'a, T: Deserialize<'a>>(text: &'a str) -> Result<(T, &'a str), FrameError> {
    let mut values = serde_json::Deserializer::from_str(text).into_iter::<T>();
    match values.next() {
        Some(Ok(value)) => Ok((value, &text[values.byte_offset()..])),
        Some(Err(e)) => Err(FrameError::Envelope(e.to_string())),
        None => Err(malformed("the frame ends where a value should be")),
    }
}

/// The string literal at the start of `text`, unescaped, and the text after it.
fn string_at(text: &str) -> Result<(Cow<'_, str>, &str), FrameError> {
    let (string, length) = string_literal(text, text.len()).map_err(malformed)?;
    Ok((string, &text[length..]))
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
    let frame = RawFrame::read(text)?;
    let module = frame
        .module
        .ok_or_else(|| FrameError::Envelope("no `module` field".into()))?;
    let content = frame.content;
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
    let looks_like_frame = RawFrame::read(text)
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
        Ok(RawFrame::read(&frame)?.content.map(Cow::into_owned))
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

    /// The envelope as serde_json read it before [`RawFrame::read`]: the
    /// reference the hand reading is held to.
    #[derive(Deserialize)]
    struct SerdeFrame<'a> {
        #[serde(borrow)]
        module: Option<Cow<'a, str>>,
        success: Option<bool>,
        #[serde(borrow)]
        content: Option<&'a RawValue>,
    }

    /// `(module, success, content)` by either reading, `None` when refused.
    type Fields = Option<(Option<String>, Option<bool>, Option<String>)>;

    fn by_serde_json(text: &str) -> Fields {
        let frame: SerdeFrame<'_> = serde_json::from_str(text).ok()?;
        let content = match frame.content.map(RawValue::get) {
            Some(literal) if literal.starts_with('"') => {
                Some(serde_json::from_str::<String>(literal).ok()?)
            }
            other => other.map(str::to_string),
        };
        Some((frame.module.map(Cow::into_owned), frame.success, content))
    }

    fn by_hand(text: &str) -> Fields {
        let frame = RawFrame::read(text).ok()?;
        let content = frame.content.map(Cow::into_owned);
        Some((frame.module.map(Cow::into_owned), frame.success, content))
    }

    #[test]
    fn the_envelope_is_read_as_serde_json_reads_it() {
        let mut rng = fastrand::Rng::with_seed(43);
        let keys = [
            r#""module""#,
            r#""success""#,
            r#""content""#,
            r#""mod\u0075le""#,
            r#""other""#,
            r#""""#,
            "module",
        ];
        let values = [
            r#""message""#,
            r#""heart\"beat""#,
            "true",
            "false",
            "null",
            "7",
            "-1.5e3",
            r#"{"a":[1,{"b":"}"}]}"#,
            "[]",
            r#""{\"event\":\"a.b\",\"event_ts\":1}""#,
            r#""Invalid Token""#,
            r#""\ud83d""#,
            "tru",
            "{",
            r#""open"#,
        ];
        let spaces = ["", " ", "\n\t", "\r "];
        let (mut agreed, mut read) = (0, 0);
        for _ in 0..40_000 {
            let space = |rng: &mut fastrand::Rng| spaces[rng.usize(0..spaces.len())];
            let mut text = format!("{}{{", space(&mut rng));
            for field in 0..rng.usize(0..5) {
                if field > 0 {
                    text.push_str([",", ",", ",", ",,", ""][rng.usize(0..5)]);
                }
                let key = keys[rng.usize(0..keys.len())];
                let value = values[rng.usize(0..values.len())];
                let colon = [":", ":", " : ", ""][rng.usize(0..4)];
                text.push_str(&format!(
                    "{}{key}{colon}{}{value}",
                    space(&mut rng),
                    space(&mut rng)
                ));
            }
            text.push_str(&format!(
                "{}{}",
                space(&mut rng),
                ["}", "}", "} x", "", ",}"][rng.usize(0..5)]
            ));
            let expected = by_serde_json(&text);
            assert_eq!(by_hand(&text), expected, "{text}");
            agreed += 1;
            read += usize::from(expected.is_some());
        }
        assert!(
            read > 3_000 && agreed - read > 5_000,
            "{read} of {agreed} read"
        );
        // Every cut of a real frame is refused by both, the whole read by both.
        for cut in 0..MESSAGE.len() {
            if MESSAGE.is_char_boundary(cut) {
                assert_eq!(
                    by_hand(&MESSAGE[..cut]),
                    by_serde_json(&MESSAGE[..cut]),
                    "{cut}"
                );
            }
        }
        assert!(by_hand(MESSAGE).is_some());
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
