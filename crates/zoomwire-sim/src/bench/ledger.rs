//! The bench's delivery check: which Slack posts were expected (each rule
//! that must post for each event sent) and which arrived. A post that is
//! missing, doubled or unexpected makes the run a failure, not a figure.

use std::collections::BTreeMap;
use std::fmt;

/// One expected post: the rule and the `event_ts` of its event.
pub type PostKey = (String, i64);

/// Expected posts, and the check of what arrived against them.
#[derive(Debug, Default)]
pub struct Ledger {
    expected: BTreeMap<PostKey, u32>,
}

/// What arrived compared to what was expected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    pub expected: usize,
    pub arrived: usize,
    pub missing: Vec<PostKey>,
    /// Posts that arrived more than once, with how often.
    pub doubled: Vec<(PostKey, u32)>,
    /// Posts nobody expected (or whose text could not be read).
    pub unexpected: Vec<String>,
}

impl Delivery {
    /// Every expected post exactly once, and nothing else.
    pub fn exact(&self) -> bool {
        self.missing.is_empty() && self.doubled.is_empty() && self.unexpected.is_empty()
    }
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.exact() {
            return write!(
                f,
                "every expected post arrived exactly once ({} posts)",
                self.expected
            );
        }
        write!(
            f,
            "FAILED: {} of {} expected posts missing, {} doubled, {} unexpected",
            self.missing.len(),
            self.expected,
            self.doubled.len(),
            self.unexpected.len()
        )?;
        if let Some((rule, ts)) = self.missing.first() {
            write!(f, "; first missing: {rule} for event_ts {ts}")?;
        }
        if let Some(((rule, ts), times)) = self.doubled.first() {
            write!(
                f,
                "; first doubled: {rule} for event_ts {ts} ({times} times)"
            )?;
        }
        if let Some(text) = self.unexpected.first() {
            write!(f, "; first unexpected: {text}")?;
        }
        Ok(())
    }
}

impl Ledger {
    /// Expects `rules` to post once each for the event of `event_ts`.
    pub fn expect<'a>(&mut self, event_ts: i64, rules: impl IntoIterator<Item = &'a str>) {
        for rule in rules {
            *self
                .expected
                .entry((rule.to_string(), event_ts))
                .or_default() += 1;
        }
    }

    pub fn expected(&self) -> usize {
        self.expected.values().map(|&n| n as usize).sum()
    }

    /// Checks the texts of the posts that arrived (`t=<us> n=<event_ts> <rule>`).
    pub fn check<'a>(&self, texts: impl IntoIterator<Item = &'a str>) -> Delivery {
        let mut arrived: BTreeMap<PostKey, u32> = BTreeMap::new();
        let mut delivery = Delivery {
            expected: self.expected(),
            ..Delivery::default()
        };
        for text in texts {
            delivery.arrived += 1;
            match post_key(text) {
                Some(key) if self.expected.contains_key(&key) => {
                    *arrived.entry(key).or_default() += 1
                }
                _ => delivery.unexpected.push(text.to_string()),
            }
        }
        for (key, &wanted) in &self.expected {
            match arrived.get(key).copied().unwrap_or(0) {
                0 => delivery.missing.push(key.clone()),
                got if got > wanted => delivery.doubled.push((key.clone(), got)),
                _ => {}
            }
        }
        delivery
    }
}

/// The rule and event of a post's text: `t=<us> n=<event_ts> <rule>`.
pub fn post_key(text: &str) -> Option<PostKey> {
    let mut words = text.split(' ');
    words.next()?.strip_prefix("t=")?;
    let event_ts = words.next()?.strip_prefix("n=")?.parse().ok()?;
    let rule = words.next()?;
    words.next().is_none().then(|| (rule.to_string(), event_ts))
}

/// The `t=<micros>` send time a post carries.
pub fn sent_time(text: &str) -> Option<i64> {
    text.split(' ').next()?.strip_prefix("t=")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> Ledger {
        let mut ledger = Ledger::default();
        ledger.expect(1, ["a", "b"]);
        ledger.expect(2, ["a"]);
        ledger
    }

    #[test]
    fn every_post_once_is_exact() {
        let delivery = ledger().check(["t=5 n=1 a", "t=6 n=2 a", "t=7 n=1 b"]);
        assert!(delivery.exact(), "{delivery}");
        assert_eq!(
            delivery.to_string(),
            "every expected post arrived exactly once (3 posts)"
        );
    }

    #[test]
    fn a_missing_a_doubled_and_a_stray_post_each_fail() {
        let missing = ledger().check(["t=5 n=1 a", "t=7 n=1 b"]);
        assert_eq!(missing.missing, [("a".to_string(), 2)]);
        assert!(!missing.exact());
        let doubled = ledger().check(["t=5 n=1 a", "t=6 n=2 a", "t=7 n=1 b", "t=8 n=2 a"]);
        assert_eq!(doubled.doubled, [(("a".to_string(), 2), 2)]);
        assert!(
            doubled
                .to_string()
                .starts_with("FAILED: 0 of 3 expected posts missing, 1 doubled")
        );
        let stray = ledger().check(["t=5 n=1 a", "t=6 n=2 a", "t=7 n=1 b", "t=8 n=3 a", "hello"]);
        assert_eq!(stray.unexpected.len(), 2);
        assert!(!stray.exact());
    }

    #[test]
    fn post_texts_are_read() {
        assert_eq!(
            post_key("t=1732000000123456 n=42 host-left"),
            Some(("host-left".into(), 42))
        );
        assert_eq!(post_key("t=1 n=x host-left"), None);
        assert_eq!(post_key("hello"), None);
        assert_eq!(
            sent_time("t=1732000000123456 n=42 host-left"),
            Some(1_732_000_000_123_456)
        );
    }
}
