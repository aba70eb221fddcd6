//! A borrowed JSON tree: an event body read once, without copying its
//! strings, for the hot path (the dedupe key and fast conditions).
//!
//! Numbers follow what Rhai's serde support makes of them, so that a fast
//! condition reading this tree sees the values a Rhai condition would: an
//! integer that fits `i64` is [`Json::Int`], any other number (a fraction,
//! an exponent, an integer beyond `i64`) is [`Json::Float`]. Objects keep
//! their keys in order; [`Json::get`] takes the last of duplicate keys, as a
//! map built from the same text would.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::literal::string_literal;

/// One JSON value borrowing its strings from the text it was read from
/// (strings with escapes are unescaped into owned copies). `Yokeable`: an
/// event keeps its tree with the text it borrows (`yoke`).
#[derive(Debug, Clone, PartialEq, yoke::Yokeable)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// Reads `text` as one JSON value, as serde_json reads it: by hand
    /// ([`Reader`]), and by serde_json where the hand reading is not sure
    /// (which gives the error, when the text is not JSON).
    pub fn parse(text: &'a str) -> Result<Json<'a>, serde_json::Error> {
        match Reader::new(text).document() {
            Some(tree) => Ok(tree),
            None => serde_json::from_str(text),
        }
    }

    /// The value of `key` when this is an object holding it (the last one
    /// when the key repeats).
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(entries) => entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text when this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Json::Object(_))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Json<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TreeVisitor)
    }
}

/// A string that borrows when the text has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Json::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        // As Rhai: beyond INT it becomes a float.
        Ok(i64::try_from(v).map_or(Json::Float(v as f64), Json::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Json::Float(v))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some((Text(key), value)) = map.next_entry::<Text<'de>, Json<'de>>()? {
            entries.push((key, value));
        }
        Ok(Json::Object(entries))
    }
}

/// Nesting the hand reading takes, below serde_json's limit (127 levels):
/// deeper text is left to serde_json.
const MAX_DEPTH: usize = 100;

/// Strings with escapes start with room for this many bytes.
const ESCAPED_STRING_ROOM: usize = 64;

/// JSON text read into a tree by hand, for the hot path: at intake every
/// event is read into a tree, and through serde_json's visitors (a call
/// per value, a seed per key) that took 12.2k instructions for an event of
/// the bench's stream, by hand 10.0k (callgrind, `zoomwire bench`'s
/// daemon). Strings are read by [`string_literal`], eight bytes at a time,
/// and an integer of up to 18 digits here; any other number goes to
/// serde_json, so numbers are exactly what serde_json (and Rhai after it)
/// makes of them.
///
/// It answers only for text serde_json reads, and then with serde_json's
/// tree (the tests below hold the two readings together); anything else
/// (not JSON, deeper than [`MAX_DEPTH`]) gives `None`, and [`Json::parse`]
/// asks serde_json.
struct Reader<'a> {
    text: &'a str,
    at: usize,
    depth: usize,
}

impl<'a> Reader<'a> {
    fn new(text: &'a str) -> Reader<'a> {
        Reader {
            text,
            at: 0,
            depth: 0,
        }
    }

    /// The one value of the text, with nothing but whitespace around it.
    fn document(mut self) -> Option<Json<'a>> {
        let value = self.value()?;
        self.skip_space();
        (self.at == self.text.len()).then_some(value)
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// Whether `byte` comes next (after whitespace), taken if it does.
    fn eat(&mut self, byte: u8) -> bool {
        self.skip_space();
        let next = self.peek() == Some(byte);
        self.at += usize::from(next);
        next
    }

    fn value(&mut self) -> Option<Json<'a>> {
        self.skip_space();
        match self.peek()? {
            b'{' => self.nested(Reader::object),
            b'[' => self.nested(Reader::array),
            b'"' => self.string().map(Json::Str),
            b't' => self.word("true", Json::Bool(true)),
            b'f' => self.word("false", Json::Bool(false)),
            b'n' => self.word("null", Json::Null),
            _ => self.number(),
        }
    }

    /// An object or array, read by `read` after its opening bracket.
    fn nested(&mut self, read: fn(&mut Reader<'a>) -> Option<Json<'a>>) -> Option<Json<'a>> {
        if self.depth == MAX_DEPTH {
            return None;
        }
        self.depth += 1;
        self.at += 1;
        let value = read(self);
        self.depth -= 1;
        value
    }

    fn object(&mut self) -> Option<Json<'a>> {
        // As many entries as the visitor made room for.
        let mut entries = Vec::with_capacity(8);
        if self.eat(b'}') {
            return Some(Json::Object(entries));
        }
        loop {
            self.skip_space();
            let key = self.string()?;
            if !self.eat(b':') {
                return None;
            }
            entries.push((key, self.value()?));
            if !self.eat(b',') {
                return self.eat(b'}').then_some(Json::Object(entries));
            }
        }
    }

    fn array(&mut self) -> Option<Json<'a>> {
        let mut items = Vec::new();
        if self.eat(b']') {
            return Some(Json::Array(items));
        }
        loop {
            items.push(self.value()?);
            if !self.eat(b',') {
                return self.eat(b']').then_some(Json::Array(items));
            }
        }
    }

    fn string(&mut self) -> Option<Cow<'a, str>> {
        let rest: &'a str = &self.text[self.at..];
        let (text, length) = string_literal(rest, ESCAPED_STRING_ROOM).ok()?;
        self.at += length;
        Some(text)
    }

    /// `true`, `false` or `null` (what follows is checked by the caller).
    fn word(&mut self, word: &str, value: Json<'a>) -> Option<Json<'a>> {
        let found = self.text[self.at..].starts_with(word);
        self.at += if found { word.len() } else { 0 };
        found.then_some(value)
    }

    /// An integer of up to 18 digits without a sign or a leading zero (it
    /// fits `i64`) here; any other number as serde_json reads it alone,
    /// which is how it reads it in a document.
    fn number(&mut self) -> Option<Json<'a>> {
        let bytes = &self.text.as_bytes()[self.at..];
        let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
        let simple = (1..=18).contains(&digits)
            && (digits == 1 || bytes[0] != b'0')
            && !matches!(bytes.get(digits), Some(b'.' | b'e' | b'E'));
        if simple {
            let value = bytes[..digits]
                .iter()
                .fold(0, |n: i64, b| n * 10 + i64::from(b - b'0'));
            self.at += digits;
            return Some(Json::Int(value));
        }
        let length = bytes
            .iter()
            .take_while(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
            .count();
        let text = &self.text[self.at..self.at + length];
        // Only number characters: serde_json gives a number or an error.
        let number = serde_json::from_str::<Json<'a>>(text).ok()?;
        self.at += length;
        Some(number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let text =
            r#"{"a":"plain","b":"tab\there","c":[1,-2,2.5,1e2,18446744073709551615,null,true]}"#;
        let tree = Json::parse(text).unwrap();
        assert!(matches!(
            tree.get("a"),
            Some(Json::Str(Cow::Borrowed("plain")))
        ));
        assert!(matches!(tree.get("b"), Some(Json::Str(Cow::Owned(s))) if s == "tab\there"));
        assert_eq!(
            tree.get("c"),
            Some(&Json::Array(vec![
                Json::Int(1),
                Json::Int(-2),
                Json::Float(2.5),
                Json::Float(100.0),
                Json::Float(18446744073709551615.0),
                Json::Null,
                Json::Bool(true),
            ]))
        );
    }

    #[test]
    fn the_last_of_duplicate_keys_wins_as_in_a_map() {
        let tree = Json::parse(r#"{"k":1,"k":2}"#).unwrap();
        assert_eq!(tree.get("k"), Some(&Json::Int(2)));
        let map: rhai::Dynamic = serde_json::from_str(r#"{"k":1,"k":2}"#).unwrap();
        assert_eq!(map.cast::<rhai::Map>()["k"].as_int(), Ok(2));
    }

    #[test]
    fn escaped_keys_are_found() {
        let tree = Json::parse(r#"{"a\"b":true}"#).unwrap();
        assert_eq!(tree.get("a\"b"), Some(&Json::Bool(true)));
        assert_eq!(tree.get("missing"), None);
        assert_eq!(Json::Int(1).get("a"), None);
    }

    /// The tree serde_json reads, `None` where it refuses the text.
    fn by_serde_json(text: &str) -> Option<Json<'_>> {
        serde_json::from_str(text).ok()
    }

    /// A random JSON value as text: nested objects and arrays, strings with
    /// and without escapes, numbers of every shape serde_json reads.
    fn random_value(rng: &mut fastrand::Rng, depth: usize) -> String {
        let pick = if depth > 4 {
            rng.u8(2..6)
        } else {
            rng.u8(0..6)
        };
        match pick {
            0 => {
                let entries: Vec<String> = (0..rng.usize(0..5))
                    .map(|_| format!("{}:{}", random_string(rng), random_value(rng, depth + 1)))
                    .collect();
                format!("{{{}}}", entries.join(","))
            }
            1 => {
                let items: Vec<String> = (0..rng.usize(0..5))
                    .map(|_| random_value(rng, depth + 1))
                    .collect();
                format!("[{}]", items.join(", "))
            }
            2 | 3 => random_string(rng),
            4 => ["true", "false", "null"][rng.usize(0..3)].to_string(),
            _ => random_number(rng),
        }
    }

    fn random_string(rng: &mut fastrand::Rng) -> String {
        let pieces = [
            "",
            "topic",
            "Board Review",
            r#"a \"quoted\" word"#,
            r"\u00e9t\u00e9",
            "caf\u{e9}",
            r"back\\slash",
            r"\ud83d\ude00",
            "a long plain value past eight bytes",
        ];
        format!("\"{}\"", pieces[rng.usize(0..pieces.len())])
    }

    fn random_number(rng: &mut fastrand::Rng) -> String {
        match rng.u8(0..10) {
            0 => rng.i64(..).to_string(),
            1 => rng.u64(..).to_string(),
            2 => format!("{}.{}", rng.i32(..), rng.u32(..)),
            3 => format!("{}e{}", rng.i32(-99..99), rng.i32(-400..400)),
            4 => format!("{}E+{}", rng.u8(..), rng.u8(0..30)),
            5 => "9".repeat(rng.usize(1..30)),
            6 => ["0", "-0", "0.0", "-0.0", "1e400", "123456789012345678"][rng.usize(0..6)]
                .to_string(),
            _ => rng.u32(..).to_string(),
        }
    }

    /// `text` with one byte changed, taken out or put in: mostly text
    /// serde_json refuses, some that it still reads.
    fn mutated(rng: &mut fastrand::Rng, text: &str) -> String {
        let odd = [
            b'{', b'}', b'[', b']', b'"', b'\\', b',', b':', b' ', b'\n', b'0', b'-', b'.', b'e',
            b't', b'x', 0x01,
        ];
        let mut bytes = text.as_bytes().to_vec();
        let at = rng.usize(0..=bytes.len());
        match rng.u8(0..3) {
            0 if at < bytes.len() => bytes[at] = odd[rng.usize(0..odd.len())],
            1 if at < bytes.len() => {
                bytes.remove(at);
            }
            _ => bytes.insert(at, odd[rng.usize(0..odd.len())]),
        }
        String::from_utf8(bytes).unwrap_or_default()
    }

    #[test]
    fn the_hand_reading_is_serde_jsons() {
        let mut rng = fastrand::Rng::with_seed(46);
        let mut texts = crate::event::sample_bodies();
        texts.extend((0..20_000).map(|_| random_value(&mut rng, 0)));
        let (mut by_hand, mut valid, mut refused) = (0, 0, 0);
        for text in &texts {
            for text in [text.clone(), mutated(&mut rng, text), format!(" {text}\n")] {
                let expected = by_serde_json(&text);
                valid += usize::from(expected.is_some());
                match Reader::new(&text).document() {
                    Some(tree) => {
                        by_hand += 1;
                        assert_eq!(Some(tree), expected, "{text}");
                    }
                    None => refused += usize::from(expected.is_none()),
                }
                assert_eq!(Json::parse(&text).ok(), expected, "{text}");
            }
        }
        // Nearly all of what serde_json reads is read by hand, and the
        // mutations gave both kinds of text.
        assert!(by_hand * 100 > valid * 99, "{by_hand} by hand of {valid}");
        assert!(
            refused > 5_000 && valid > 40_000,
            "{refused} refused, {valid} read"
        );
    }

    #[test]
    fn deep_text_is_left_to_serde_json() {
        for depth in [
            1,
            MAX_DEPTH - 1,
            MAX_DEPTH,
            MAX_DEPTH + 1,
            126,
            127,
            128,
            129,
            400,
        ] {
            let text = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            assert_eq!(Json::parse(&text).ok(), by_serde_json(&text), "{depth}");
            assert_eq!(Reader::new(&text).document().is_some(), depth <= MAX_DEPTH);
        }
        assert!(Json::parse(&format!("{}1{}", "[".repeat(400), "]".repeat(400))).is_err());
    }

    #[test]
    fn invalid_text_is_an_error() {
        assert!(Json::parse("{").is_err());
        assert!(Json::parse("[1,]").is_err());
    }
}
