//! Values crossing the sandbox boundary: script values to JSON for effects,
//! JSON answers back to script values, and the nesting-depth check both ways.
//!
//! Rhai's values are trees that are cloned, dropped, compared and printed by
//! recursion, so a value nested a hundred thousand levels deep overflows the
//! native stack wherever it is touched. Scripts can build such a value within
//! their own thread (which has a large stack); this module keeps such values
//! from leaving it, into an effect's arguments, a run's result, or an error.

use rhai::{Dynamic, Map};
use serde_json::Value;

/// Whether `value` is nested deeper than `max` levels (a scalar is depth 0,
/// `[1]` depth 1). Stops descending once the answer is known, so it never
/// recurses more than `max + 1` levels itself.
pub(crate) fn exceeds_depth(value: &Dynamic, max: usize) -> bool {
    if let Some(array) = value.read_lock::<rhai::Array>() {
        if max == 0 {
            return !array.is_empty();
        }
        return array.iter().any(|item| exceeds_depth(item, max - 1));
    }
    if let Some(map) = value.read_lock::<Map>() {
        if max == 0 {
            return !map.is_empty();
        }
        return map.values().any(|item| exceeds_depth(item, max - 1));
    }
    false
}

/// Limits for [`oversized`]: those of Rhai's own size check, plus depth.
pub(crate) struct SizeLimits {
    pub array: usize,
    pub map: usize,
    pub string: usize,
    pub depth: usize,
}

/// Counts so far, added up the way Rhai's size check adds them: items of all
/// nested arrays and BLOBs, entries of all nested maps, bytes of all strings.
#[derive(Default)]
struct Counts {
    array: usize,
    map: usize,
    string: usize,
}

/// Which limit `value` breaks, as Rhai names it in `ErrorDataTooLarge`
/// ("Size of array/BLOB", "Size of object map", "Length of string", and
/// "Depth of value" for `max_value_depth`), or `None`. Stops at the first
/// broken limit, so it never walks much more than the limits allow.
pub(crate) fn oversized(value: &Dynamic, limits: &SizeLimits) -> Option<&'static str> {
    measure(value, 0, limits, &mut Counts::default())
}

fn measure(
    value: &Dynamic,
    depth: usize,
    limits: &SizeLimits,
    counts: &mut Counts,
) -> Option<&'static str> {
    if let Some(text) = value.read_lock::<rhai::ImmutableString>() {
        counts.string += text.len();
        return (counts.string > limits.string).then_some("Length of string");
    }
    if let Some(blob) = value.read_lock::<rhai::Blob>() {
        counts.array += blob.len();
        return (counts.array > limits.array).then_some("Size of array/BLOB");
    }
    if let Some(array) = value.read_lock::<rhai::Array>() {
        if depth >= limits.depth && !array.is_empty() {
            return Some("Depth of value");
        }
        for item in array.iter() {
            counts.array += 1;
            if counts.array > limits.array {
                return Some("Size of array/BLOB");
            }
            if let Some(broken) = measure(item, depth + 1, limits, counts) {
                return Some(broken);
            }
        }
        return None;
    }
    if let Some(map) = value.read_lock::<Map>() {
        if depth >= limits.depth && !map.is_empty() {
            return Some("Depth of value");
        }
        for item in map.values() {
            counts.map += 1;
            if counts.map > limits.map {
                return Some("Size of object map");
            }
            if let Some(broken) = measure(item, depth + 1, limits, counts) {
                return Some(broken);
            }
        }
    }
    None
}

/// Converts a script value to JSON for an effect, refusing deep values.
pub(crate) fn to_json(value: &Dynamic, max_depth: usize, what: &str) -> Result<Value, String> {
    if exceeds_depth(value, max_depth) {
        return Err(format!(
            "{what} is nested too deeply (max_value_depth = {max_depth})"
        ));
    }
    rhai::serde::from_dynamic::<Value>(value)
        .map_err(|error| format!("{what} cannot be converted to JSON: {error}"))
}

/// Converts an effect's JSON answer to a script value.
pub(crate) fn from_json(value: &Value) -> Result<Dynamic, String> {
    rhai::serde::to_dynamic(value).map_err(|error| format!("answer cannot be converted: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_depth_without_walking_past_the_limit() {
        let engine = rhai::Engine::new();
        let shallow: Dynamic = engine.eval("#{a: [1, #{b: 2}]}").unwrap();
        assert!(!exceeds_depth(&shallow, 3));
        assert!(exceeds_depth(&shallow, 2));
        assert!(!exceeds_depth(&Dynamic::from(5_i64), 0));
        assert!(!exceeds_depth(&Dynamic::from_array(vec![]), 0));

        let mut deep = Dynamic::from_map(Map::new());
        for _ in 0..200 {
            let mut map = Map::new();
            map.insert("x".into(), deep);
            deep = Dynamic::from_map(map);
        }
        assert!(exceeds_depth(&deep, 64));
        assert!(!exceeds_depth(&deep, 200));
        let shared = deep.into_shared();
        assert!(exceeds_depth(&shared, 64));
    }

    #[test]
    fn finds_the_limit_a_value_breaks() {
        let limits = SizeLimits {
            array: 5,
            map: 3,
            string: 10,
            depth: 3,
        };
        let engine = rhai::Engine::new();
        let check = |source: &str| oversized(&engine.eval::<Dynamic>(source).unwrap(), &limits);
        assert_eq!(check("[1, [2, 3], 4]"), None);
        assert_eq!(check("[1, [2, 3], 4, 5]"), Some("Size of array/BLOB"));
        assert_eq!(check("#{a: #{b: 1, c: 2}}"), None);
        assert_eq!(
            check("#{a: #{b: 1, c: 2}, d: 3}"),
            Some("Size of object map")
        );
        assert_eq!(check(r#"["12345", "123456"]"#), Some("Length of string"));
        assert_eq!(check("[[[1]]]"), None);
        assert_eq!(check("[[[[1]]]]"), Some("Depth of value"));
        assert_eq!(check("blob(6)"), Some("Size of array/BLOB"));
        assert_eq!(check("42"), None);
    }

    #[test]
    fn converts_both_ways_and_refuses_deep_values() {
        let value: Dynamic = rhai::Engine::new()
            .eval(r##"#{channel: "#a", n: 1, list: [true, ()]}"##)
            .unwrap();
        let json = to_json(&value, 8, "argument").unwrap();
        assert_eq!(
            json,
            serde_json::json!({"channel": "#a", "n": 1, "list": [true, null]})
        );
        let back = from_json(&json).unwrap();
        assert_eq!(back.to_string(), value.to_string());
        let error = to_json(&value, 1, "argument").unwrap_err();
        assert_eq!(error, "argument is nested too deeply (max_value_depth = 1)");
    }
}
