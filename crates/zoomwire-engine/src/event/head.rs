//! The few fields of an event body the intake needs (type, timestamp and
//! the parts of the dedupe key: the object's uuid and id, the participant's
//! ids and join or leave time, the recording files' ids), read in one pass
//! that skips everything else without building it.
//!
//! This is only a faster road to what [`super::tree::Json`] gives: any body
//! it is not sure about (not an object, a repeated field, a field of an
//! unexpected shape) makes [`Head::read`] answer `None`, and the caller
//! reads the full tree instead, so both roads give the same event.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::tree::Json;

/// `{"event", "event_ts", "payload": {"object": {...}}}`.
#[derive(Deserialize)]
pub struct Head<'a> {
    #[serde(borrow)]
    pub event: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub event_ts: Scalar<'a>,
    #[serde(borrow)]
    pub payload: Option<Object<PayloadHead<'a>>>,
}

#[derive(Deserialize)]
pub struct PayloadHead<'a> {
    #[serde(borrow)]
    pub object: Option<Object<ObjectHead<'a>>>,
}

#[derive(Deserialize)]
pub struct ObjectHead<'a> {
    #[serde(borrow, default)]
    pub uuid: Scalar<'a>,
    #[serde(borrow, default)]
    pub id: Scalar<'a>,
    #[serde(borrow)]
    pub participant: Option<Object<ParticipantHead<'a>>>,
    /// A recording's files: only their ids are read.
    #[serde(borrow)]
    pub recording_files: Option<Vec<Object<FileHead<'a>>>>,
}

#[derive(Deserialize)]
pub struct ParticipantHead<'a> {
    #[serde(borrow, default)]
    pub participant_uuid: Scalar<'a>,
    #[serde(borrow, default)]
    pub user_id: Scalar<'a>,
    #[serde(borrow, default)]
    pub id: Scalar<'a>,
    #[serde(borrow, default)]
    pub join_time: Scalar<'a>,
    #[serde(borrow, default)]
    pub leave_time: Scalar<'a>,
}

#[derive(Deserialize)]
pub struct FileHead<'a> {
    #[serde(borrow, default)]
    pub id: Scalar<'a>,
}

/// A nested struct read only from a JSON object: serde would also fill a
/// struct from an array, by position, which the tree does not do.
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }
        deserializer.deserialize_map(ObjectVisitor(std::marker::PhantomData))
    }
}

/// A field's value when it is a scalar; arrays and objects are skipped.
/// Numbers are read as [`super::tree::Json`] reads them.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Scalar<'a> {
    /// The field is not there.
    #[default]
    Absent,
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Null, an array or an object.
    Other,
}

impl<'a> Scalar<'a> {
    pub fn is_present(&self) -> bool {
        *self != Scalar::Absent
    }

    /// A field of the full tree as this pass would have read it.
    pub fn of(value: Option<&Json<'a>>) -> Scalar<'a> {
        match value {
            None => Scalar::Absent,
            Some(Json::Str(s)) => Scalar::Str(s.clone()),
            Some(Json::Int(n)) => Scalar::Int(*n),
            Some(Json::Float(f)) => Scalar::Float(*f),
            Some(Json::Bool(b)) => Scalar::Bool(*b),
            Some(Json::Null | Json::Array(_) | Json::Object(_)) => Scalar::Other,
        }
    }
}

impl Head<'_> {
    /// The head of `text`, or `None` when the full tree must decide.
    pub fn read(text: &str) -> Option<Head<'_>> {
        // A struct would also take an array, positionally.
        if !text.trim_start().starts_with('{') {
            return None;
        }
        serde_json::from_str(text).ok()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(v).map_or(Scalar::Float(v as f64), Scalar::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Float(v))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fields_and_skips_the_rest() {
        let text = r#"{"payload":{"account_id":"a","object":{"id":85,"uuid":"u\/1","topic":"x",
            "participant":{"user_id":"16778240","email":"e"},"extra":[1,{"a":2}]}},
            "event_ts":1732000065000,"event":"meeting.participant_joined"}"#;
        let head = Head::read(text).unwrap();
        assert_eq!(head.event.as_deref(), Some("meeting.participant_joined"));
        assert_eq!(head.event_ts, Scalar::Int(1732000065000));
        let object = head.payload.unwrap().0.object.unwrap().0;
        assert_eq!(object.uuid, Scalar::Str("u/1".into()));
        assert_eq!(object.id, Scalar::Int(85));
        let participant = object.participant.unwrap().0;
        assert_eq!(participant.user_id, Scalar::Str("16778240".into()));
        assert_eq!(participant.id, Scalar::Absent);
        assert_eq!(participant.participant_uuid, Scalar::Absent);
    }

    #[test]
    fn unusual_bodies_are_left_to_the_full_tree() {
        for text in [
            r#"[{"event":"x"}]"#,
            r#"{"event":"x","event":"y"}"#,
            r#"{"event":1}"#,
            r#"{"event":"x","payload":"text"}"#,
            r#"{"event":"x","payload":{"object":{"participant":[1]}}}"#,
            r#"{"event":"x","payload":[{"object":{"id":1}}]}"#,
            r#"{"event":"x","payload":{"object":["u",1]}}"#,
            r#"{"event":"x""#,
        ] {
            assert!(Head::read(text).is_none(), "{text}");
        }
        let head = Head::read(r#"{"event":"x","event_ts":{"a":[1]},"payload":null}"#).unwrap();
        assert_eq!(head.event_ts, Scalar::Other);
        assert!(head.payload.is_none());
    }
}
