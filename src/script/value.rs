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
