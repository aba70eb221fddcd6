//! Values crossing the sandbox boundary: script values to JSON for effects,
//! JSON answers back to script values, and the nesting-depth and size
//! checks both ways.
//!
//! Rhai's values are trees that are cloned, dropped, compared and printed by
//! recursion, so a value nested a hundred thousand levels deep overflows the
//! native stack wherever it is touched. Scripts can build such a value within
//! their own thread (which has a large stack); this module keeps such values
//! from leaving it, into an effect's arguments, a run's result, or an error.
//!
//! Sizes are measured as they would be printed or converted: a string put in
//! an array is shared, not copied, so `[s, s, s]` holds `s` once but counts
//! (and prints, and converts to JSON) three times. Map keys count as string
//! bytes, which Rhai's own check leaves out.

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

/// Limits for [`oversized`]: those of Rhai's own size check, plus depth and
/// the length of one map key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SizeLimits {
    pub array: usize,
    pub map: usize,
    pub string: usize,
    pub key: usize,
    pub depth: usize,
}

impl SizeLimits {
    /// The sizes a script's values may reach under `limits`.
    pub(crate) fn of_script(limits: &super::SandboxLimits) -> SizeLimits {
        SizeLimits {
            array: limits.max_array_size,
            map: limits.max_map_size,
            string: limits.max_string_size,
            key: limits.max_key_size,
            depth: limits.max_value_depth,
        }
    }
}

/// Counts so far, added up the way Rhai's size check adds them (items of all
/// nested arrays and BLOBs, entries of all nested maps, bytes of all strings),
/// except that map keys count as string bytes too: Rhai does not count them.
#[derive(Default)]
struct Counts {
    array: usize,
    map: usize,
    string: usize,
}

/// Which limit `value` breaks, as Rhai names it in `ErrorDataTooLarge`
/// ("Size of array/BLOB", "Size of object map", "Length of string", and
/// "Depth of value" for `max_value_depth`, "Length of map key" for
/// `max_key_size`), or `None`. Stops at the first broken limit, so it never
/// walks much more than the limits allow.
pub(crate) fn oversized(value: &Dynamic, limits: &SizeLimits) -> Option<&'static str> {
    measure(value, 0, limits, &mut Counts::default())
}

/// [`oversized`] for an array held by reference.
pub(crate) fn oversized_array(array: &rhai::Array, limits: &SizeLimits) -> Option<&'static str> {
    measure_array(array, 0, limits, &mut Counts::default())
}

/// [`oversized`] for a map held by reference.
pub(crate) fn oversized_map(map: &Map, limits: &SizeLimits) -> Option<&'static str> {
    measure_map(map, 0, limits, &mut Counts::default())
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
        return measure_array(&array, depth, limits, counts);
    }
    if let Some(map) = value.read_lock::<Map>() {
        return measure_map(&map, depth, limits, counts);
    }
    // A curried function pointer carries its arguments (`to_json` prints them).
    if let Some(function) = value.read_lock::<rhai::FnPtr>() {
        return function
            .iter_curry()
            .find_map(|item| measure(item, depth + 1, limits, counts));
    }
    None
}

fn measure_array(
    array: &rhai::Array,
    depth: usize,
    limits: &SizeLimits,
    counts: &mut Counts,
) -> Option<&'static str> {
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
    None
}

fn measure_map(
    map: &Map,
    depth: usize,
    limits: &SizeLimits,
    counts: &mut Counts,
) -> Option<&'static str> {
    if depth >= limits.depth && !map.is_empty() {
        return Some("Depth of value");
    }
    for (key, item) in map.iter() {
        counts.map += 1;
        if counts.map > limits.map {
            return Some("Size of object map");
        }
        if key.len() > limits.key {
            return Some("Length of map key");
        }
        counts.string += key.len();
        if counts.string > limits.string {
            return Some("Length of string");
        }
        if let Some(broken) = measure(item, depth + 1, limits, counts) {
            return Some(broken);
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
            key: 4,
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
        assert_eq!(check("#{abcd: 1}"), None);
        assert_eq!(check("#{abcde: 1}"), Some("Length of map key"));
        assert_eq!(
            check(r#"#{abcd: "1234", wxyz: "1"}"#),
            Some("Length of string"),
            "keys count as string bytes"
        );
        let map: Map = engine.eval("#{a: [1, 2, 3, 4, 5, 6]}").unwrap();
        assert_eq!(oversized_map(&map, &limits), Some("Size of array/BLOB"));
        let array: rhai::Array = engine.eval("[[[[1]]]]").unwrap();
        assert_eq!(oversized_array(&array, &limits), Some("Depth of value"));
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
