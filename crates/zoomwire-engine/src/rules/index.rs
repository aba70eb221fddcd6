//! The index from event type to the rules that listen for it, so that the
//! cost of matching an event depends on the rules for its type, not on how
//! many rules there are.
//!
//! Exact types are one hash lookup; `prefix.*` globs are one lookup per dot
//! in the event type; any other glob is checked against the type. The
//! result for each event type seen is cached (bounded), so a steady stream
//! costs one read-locked lookup per event.

use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;

use super::{Rule, Trigger};

/// Event types are few; this bounds the cache against a stream of odd ones.
const CACHE_LIMIT: usize = 4096;

/// One entry of a rule's `on:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPattern {
    /// `meeting.ended`
    Exact(String),
    /// `meeting.*`: everything starting with `meeting.`
    Prefix(String),
    /// Any other glob (`*.ended`, `meeting.participant_*`, `*`).
    Glob(String),
}

impl std::fmt::Display for EventPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventPattern::Exact(text) | EventPattern::Glob(text) => f.write_str(text),
            EventPattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

impl EventPattern {
    /// Parses an `on:` entry; `Err` says what is wrong with it.
    pub fn parse(text: &str) -> Result<EventPattern, String> {
        if text.is_empty() {
            return Err("empty event type in `on`".into());
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*' | '?')))
        {
            return Err(format!(
                "invalid character `{bad}` in event type `{text}`: expected a type such as meeting.ended or a glob such as meeting.*"
            ));
        }
        if !text.contains(['*', '?']) {
            return Ok(EventPattern::Exact(text.to_string()));
        }
        if let Some(prefix) = text.strip_suffix('*')
            && prefix.ends_with('.')
            && !prefix.contains(['*', '?'])
        {
            return Ok(EventPattern::Prefix(prefix.to_string()));
        }
        Ok(EventPattern::Glob(text.to_string()))
    }

    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            EventPattern::Exact(exact) => exact == event_type,
            EventPattern::Prefix(prefix) => event_type.starts_with(prefix.as_str()),
            EventPattern::Glob(glob) => glob_match::glob_match(glob, event_type),
        }
    }
}

/// Rule positions (in the rule set) by event type.
#[derive(Debug, Default)]
pub struct TypeIndex {
    exact: HashMap<String, Vec<u32>>,
    prefix: HashMap<String, Vec<u32>>,
    globs: Vec<(EventPattern, u32)>,
    cache: RwLock<HashMap<String, Arc<[u32]>>>,
}

impl TypeIndex {
    pub fn build(rules: &[Arc<Rule>]) -> TypeIndex {
        let mut index = TypeIndex::default();
        for (position, rule) in rules.iter().enumerate() {
            let Trigger::Events(patterns) = &rule.trigger else {
                continue;
            };
            let position = position as u32;
            for pattern in patterns {
                match pattern {
                    EventPattern::Exact(t) => {
                        index.exact.entry(t.clone()).or_default().push(position)
                    }
                    EventPattern::Prefix(p) => {
                        index.prefix.entry(p.clone()).or_default().push(position)
                    }
                    EventPattern::Glob(_) => index.globs.push((pattern.clone(), position)),
                }
            }
        }
        index
    }

    /// Positions of the rules listening for `event_type`, in rule-set order.
    pub fn candidates(&self, event_type: &str) -> Arc<[u32]> {
        if let Some(hit) = self.read_cache().get(event_type) {
            return hit.clone();
        }
        let found: Arc<[u32]> = self.lookup(event_type).into();
        let mut cache = self.cache.write();
        if cache.len() < CACHE_LIMIT {
            cache.insert(event_type.to_string(), found.clone());
        }
        found
    }

    fn read_cache(&self) -> parking_lot::RwLockReadGuard<'_, HashMap<String, Arc<[u32]>>> {
        self.cache.read()
    }

    fn lookup(&self, event_type: &str) -> Vec<u32> {
        let mut found: Vec<u32> = self.exact.get(event_type).cloned().unwrap_or_default();
        for (dot, _) in event_type.match_indices('.') {
            if let Some(rules) = self.prefix.get(&event_type[..=dot]) {
                found.extend(rules);
            }
        }
        found.extend(
            self.globs
                .iter()
                .filter(|(pattern, _)| pattern.matches(event_type))
                .map(|(_, position)| *position),
        );
        found.sort_unstable();
        found.dedup();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_patterns() {
        assert_eq!(
            EventPattern::parse("meeting.ended"),
            Ok(EventPattern::Exact("meeting.ended".into()))
        );
        assert_eq!(
            EventPattern::parse("meeting.*"),
            Ok(EventPattern::Prefix("meeting.".into()))
        );
        assert_eq!(
            EventPattern::parse("*.ended"),
            Ok(EventPattern::Glob("*.ended".into()))
        );
        assert!(EventPattern::parse("meeting ended").is_err());
        assert!(EventPattern::parse("").is_err());
    }

    #[test]
    fn patterns_match_types() {
        let prefix = EventPattern::parse("meeting.*").unwrap();
        assert!(prefix.matches("meeting.participant_joined"));
        assert!(!prefix.matches("meetings.x"));
        assert!(!prefix.matches("recording.completed"));
        let glob = EventPattern::parse("meeting.participant_*").unwrap();
        assert!(glob.matches("meeting.participant_left"));
        assert!(!glob.matches("meeting.ended"));
        let any = EventPattern::parse("*").unwrap();
        assert!(any.matches("user.created"));
    }

    #[test]
    fn lookup_merges_exact_prefix_and_globs_in_order() {
        let mut index = TypeIndex::default();
        index.exact.insert("meeting.ended".into(), vec![3]);
        index.prefix.insert("meeting.".into(), vec![1, 3]);
        index
            .globs
            .push((EventPattern::parse("*.ended").unwrap(), 0));
        index
            .globs
            .push((EventPattern::parse("user.*x").unwrap(), 2));
        assert_eq!(&*index.candidates("meeting.ended"), &[0, 1, 3]);
        assert_eq!(&*index.candidates("meeting.started"), &[1, 3]);
        assert_eq!(&*index.candidates("user.created"), &[] as &[u32]);
        // Cached answers are the same.
        assert_eq!(&*index.candidates("meeting.ended"), &[0, 1, 3]);
    }
}
