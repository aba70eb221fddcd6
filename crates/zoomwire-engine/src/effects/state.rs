//! Rule state behind `state::get` and `state::set`: a small key-value store
//! per rule. [`MemoryState`] keeps it in the process; the journal provides a
//! persistent implementation of the same trait.
//!
//! State without a TTL is never pruned, so each store caps the keys one rule
//! holds ([`DEFAULT_MAX_KEYS`]): a new key past the cap is refused with
//! [`StateError::Full`] (a permanent effect error), while existing keys may
//! still be set. The size of one value is capped by the caller (`live.rs`).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Keys one rule may hold, unless configured otherwise.
pub const DEFAULT_MAX_KEYS: usize = 10_000;

/// Why state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store failed (worth retrying).
    #[error("state store: {0}")]
    Store(String),
    /// The rule holds as many keys as it may: a new one is refused.
    #[error(
        "rule `{rule}` already holds {max_keys} state keys (state.max_keys): reuse keys, or give them a ttl so they expire"
    )]
    Full { rule: String, max_keys: usize },
}

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
#[derive(Debug)]
pub struct MemoryState {
    entries: Mutex<Entries>,
    max_keys: usize,
}

impl Default for MemoryState {
    fn default() -> MemoryState {
        MemoryState::with_max_keys(DEFAULT_MAX_KEYS)
    }
}

impl MemoryState {
    /// State capped at `max_keys` per rule.
    pub fn with_max_keys(max_keys: usize) -> MemoryState {
        MemoryState {
            entries: Mutex::default(),
            max_keys,
        }
    }
}

impl StateStore for MemoryState {
    fn get(&self, rule: &str, key: &str) -> Result<Option<Value>, StateError> {
        let mut entries = self.entries.lock();
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
        let mut entries = self.entries.lock();
        let id = (rule.to_string(), key.to_string());
        if !entries.contains_key(&id) {
            let now = Instant::now();
            entries.retain(|_, (_, expires)| expires.is_none_or(|at| at > now));
            let held = entries.keys().filter(|(r, _)| r == rule).count();
            if held >= self.max_keys {
                return Err(StateError::Full {
                    rule: rule.to_string(),
                    max_keys: self.max_keys,
                });
            }
        }
        let expires = ttl.map(|ttl| Instant::now() + ttl);
        entries.insert(id, (value, expires));
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

    #[test]
    fn refuses_a_new_key_past_the_rules_cap() {
        let state = MemoryState::with_max_keys(2);
        state.set("a", "k1", json!(1), None).unwrap();
        state.set("a", "k2", json!(2), None).unwrap();
        let error = state.set("a", "k3", json!(3), None).unwrap_err();
        assert!(
            matches!(error, StateError::Full { max_keys: 2, .. }),
            "{error}"
        );
        state.set("a", "k1", json!(10), None).unwrap();
        state.set("b", "k3", json!(3), None).unwrap();
        state
            .set("a", "k2", json!(2), Some(Duration::ZERO))
            .unwrap();
        state.set("a", "k3", json!(3), None).unwrap();
    }
}
