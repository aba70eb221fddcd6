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
    /// Reads `text` as one JSON value.
    pub fn parse(text: &'a str) -> Result<Json<'a>, serde_json::Error> {
        serde_json::from_str(text)
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

    #[test]
    fn invalid_text_is_an_error() {
        assert!(Json::parse("{").is_err());
        assert!(Json::parse("[1,]").is_err());
    }
}
