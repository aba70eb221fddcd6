//! Rule state behind `state::get` and `state::set`: a small key-value store
//! per rule. [`MemoryState`] keeps it in the process; the journal provides a
//! persistent implementation of the same trait.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Why state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("state store: {0}")]
pub struct StateError(pub String);

/// Per-rule key-value state.
pub trait StateStore: Send + Sync + 'static {
    fn get(&self, rule: &str, key: &str) -> Result<Option<Value>, StateError>;
    /// Sets `key`; with `ttl` the value disappears after that long.
    fn set(
        &self,
        rule: &str,
        key: &str,
        value: Value,
        ttl: Option<Duration>,
    ) -> Result<(), StateError>;
}

/// (rule, key) -> (value, expiry).
type Entries = HashMap<(String, String), (Value, Option<Instant>)>;

/// State in memory, lost on restart.
#[derive(Debug, Default)]
pub struct MemoryState {
    entries: Mutex<Entries>,
}

impl StateStore for MemoryState {
    fn get(&self, rule: &str, key: &str) -> Result<Option<Value>, StateError> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let id = (rule.to_string(), key.to_string());
        match entries.get(&id) {
            Some((_, Some(expires))) if *expires <= Instant::now() => {
                entries.remove(&id);
                Ok(None)
            }
            Some((value, _)) => Ok(Some(value.clone())),
            None => Ok(None),
        }
    }

    fn set(
        &self,
        rule: &str,
        key: &str,
        value: Value,
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let expires = ttl.map(|ttl| Instant::now() + ttl);
        entries.insert((rule.to_string(), key.to_string()), (value, expires));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_values_per_rule_until_they_expire() {
        let state = MemoryState::default();
        state.set("a", "k", json!(1), None).unwrap();
        state
            .set("b", "k", json!(2), Some(Duration::from_millis(0)))
            .unwrap();
        assert_eq!(state.get("a", "k").unwrap(), Some(json!(1)));
        assert_eq!(state.get("b", "k").unwrap(), None);
        assert_eq!(state.get("a", "other").unwrap(), None);
    }
}
