//! Conversions between the engine's types and the store's columns.
//!
//! Times are stored as INTEGER nanoseconds since the Unix epoch, so that they
//! compare and index cheaply and come back exactly as they went in; JSON
//! values are stored as text; a run's status as its `snake_case` name.

use chrono::{DateTime, Utc};

use crate::engine::journal::{JournalError, RunStatus};

/// A time as stored: nanoseconds since the epoch, clamped to what `i64` holds
/// (years 1677 to 2262).
pub(crate) fn to_nanos(time: DateTime<Utc>) -> i64 {
    time.timestamp_nanos_opt()
        .unwrap_or(if time.timestamp() < 0 {
            i64::MIN
        } else {
            i64::MAX
        })
}

/// The key an event is found by in the store (`events_id`, schema version
/// 7): the 64-bit FNV-1a hash of its id's bytes, a fixed algorithm (it is
/// stored: it must never change) that costs ~3 instructions a byte, where
/// SHA-256 cost the writer ~7,000 per event. Lookups compare the id too, so
/// a collision costs a row read, never a wrong answer.
pub(crate) fn event_id_hash(id: &str) -> i64 {
    use std::hash::Hasher;
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(id.as_bytes());
    i64::from_ne_bytes(hasher.finish().to_ne_bytes())
}

/// A stored time back as a `DateTime`.
pub(crate) fn from_nanos(nanos: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(nanos)
}

/// A duration as nanoseconds, saturating.
pub(crate) fn duration_nanos(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

/// The status named in the `status` column.
pub(crate) fn parse_status(name: &str) -> Result<RunStatus, JournalError> {
    RunStatus::from_name(name)
        .ok_or_else(|| JournalError(format!("unknown run status `{name}` in the store")))
}

/// JSON text of a serializable value.
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serializing our own types (JSON values, effect results, sources) to a
    // string cannot fail: they have string keys and no custom serializers.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_string())
}

/// A JSON column back as a value, naming the column when it is not JSON.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    text: &str,
    column: &str,
) -> Result<T, JournalError> {
    serde_json::from_str(text)
        .map_err(|e| JournalError(format!("column `{column}` holds invalid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_id_hash_is_fnv_1a_64_and_never_changes() {
        // Published FNV-1a 64 test vectors: stored hashes depend on them.
        assert_eq!(event_id_hash("") as u64, 0xcbf2_9ce4_8422_2325);
        assert_eq!(event_id_hash("a") as u64, 0xaf63_dc4c_8601_ec8c);
        assert_eq!(event_id_hash("foobar") as u64, 0x8594_4171_f739_67e8);
    }

    #[test]
    fn times_round_trip_exactly() {
        let now = Utc::now();
        assert_eq!(from_nanos(to_nanos(now)), now);
    }

    #[test]
    fn times_outside_the_range_are_clamped() {
        let far: DateTime<Utc> = "3000-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(to_nanos(far), i64::MAX);
        let early: DateTime<Utc> = "1500-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(to_nanos(early), i64::MIN);
    }

    #[test]
    fn statuses_round_trip_by_name() {
        for status in RunStatus::ALL {
            assert_eq!(parse_status(status.as_str()).unwrap(), status);
        }
        assert!(parse_status("lost").is_err());
    }
}
