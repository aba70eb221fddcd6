//! Redaction by value: the secrets this process holds, and the one function
//! that scrubs them out of any text before it is logged, recorded or shown.
//!
//! Naming fields as secret (`Debug` by hand, `token` keys redacted) misses a
//! secret that travels in another field: a peer echoing a token in an error
//! message, a script logging a result, a library logging a URL at trace
//! level. So every secret is registered here the moment the process holds
//! it (the settings' credentials at start, each OAuth token when minted,
//! each download token when an event brings one), and [`Secrets::scrub`]
//! replaces every occurrence with `[redacted]`, whatever the field.
//!
//! The registry is process-wide ([`Secrets::global`]) because logging is:
//! the log writer, the effect gateway, the run records and the journal all
//! scrub through it. A secret is matched as written, percent-encoded and
//! JSON-escaped; secrets shorter than [`MIN_SECRET_CHARS`] are refused (they
//! would scrub ordinary words) and the caller warns about them. Tokens seen
//! at run time (OAuth and download tokens) are kept among the latest
//! [`MAX_SEEN_TOKENS`]; settings' secrets for the life of the process.
//!
//! Matching uses an Aho-Corasick automaton over every form of every secret,
//! so scrubbing costs a linear scan of the text however many secrets there
//! are. Settings' secrets arrive at start and rebuild it; tokens arrive one
//! by one (hourly per account, once per recording, a burst when
//! reconciliation finds many): they go to a small automaton of the latest
//! [`RECENT_BATCH`] first, and the big one is rebuilt once per batch, so a
//! burst of a thousand recordings costs tens of rebuilds, not a thousand.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, LazyLock};

use aho_corasick::{AhoCorasick, MatchKind};
use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";
/// Shorter secrets are not scrubbed by value (they would match ordinary text).
pub const MIN_SECRET_CHARS: usize = 6;
/// OAuth and download tokens seen at run time that stay scrubbed.
pub const MAX_SEEN_TOKENS: usize = 1024;
/// Tokens kept in the small automaton before the big one is rebuilt.
pub const RECENT_BATCH: usize = 32;

/// What a percent-encoded secret escapes: all but RFC 3986's unreserved
/// characters (so base64url tokens have one form only).
const URL_ESCAPED: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Why a secret was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "shorter than {MIN_SECRET_CHARS} characters, so it cannot be scrubbed from output by value"
)]
pub struct TooShort;

/// The secrets of this process.
#[derive(Default)]
pub struct Secrets {
    registry: Mutex<Registry>,
    matchers: ArcSwapOption<Matchers>,
}

/// The automata scrubbing applies, in turn.
struct Matchers {
    /// Every secret but the latest tokens.
    settled: Option<AhoCorasick>,
    /// The tokens seen since `settled` was built (at most [`RECENT_BATCH`]).
    recent: Option<AhoCorasick>,
}

#[derive(Default)]
struct Registry {
    /// Held for the life of the process (settings).
    fixed: HashSet<String>,
    /// Seen at run time, oldest first, at most [`MAX_SEEN_TOKENS`].
    seen: VecDeque<String>,
    seen_set: HashSet<String>,
    /// The tokens of `seen` that the settled automaton lacks.
    recent: Vec<String>,
    /// The settled automaton, kept while only recent tokens change.
    settled: Option<AhoCorasick>,
}

impl Registry {
    /// Rebuilds the settled automaton from every secret.
    fn settle(&mut self) {
        self.recent.clear();
        self.settled = automaton(self.fixed.iter().chain(self.seen.iter()));
    }

    fn matchers(&self) -> Option<Arc<Matchers>> {
        let recent = automaton(self.recent.iter());
        (self.settled.is_some() || recent.is_some()).then(|| {
            Arc::new(Matchers {
                settled: self.settled.clone(),
                recent,
            })
        })
    }
}

/// One automaton over every form of `secrets`; `None` when there is none.
fn automaton<'a>(secrets: impl Iterator<Item = &'a String>) -> Option<AhoCorasick> {
    let mut forms: HashSet<String> = HashSet::new();
    for secret in secrets {
        forms.extend(forms_of(secret));
    }
    if forms.is_empty() {
        return None;
    }
    let built = AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostLongest)
        .build(&forms);
    if let Err(error) = &built {
        // Only for patterns too large for any automaton, which the caps exclude.
        tracing::error!(error = %error, secrets = forms.len(), "cannot build the secret matcher");
    }
    built.ok()
}

/// The ways a secret can appear in text: as written, percent-encoded (in a
/// URL), JSON-escaped (in a JSON log line or a stored body).
fn forms_of(secret: &str) -> Vec<String> {
    let mut forms = vec![secret.to_string()];
    let encoded = utf8_percent_encode(secret, URL_ESCAPED).to_string();
    if encoded != secret {
        forms.push(encoded);
    }
    let escaped = serde_json::to_string(secret).unwrap_or_default();
    let escaped = escaped.trim_matches('"');
    if escaped != secret {
        forms.push(escaped.to_string());
    }
    forms
}

impl Secrets {
    pub fn new() -> Secrets {
        Secrets::default()
    }

    /// The process's registry: the one the log writer scrubs with.
    pub fn global() -> &'static Secrets {
        static GLOBAL: LazyLock<Secrets> = LazyLock::new(Secrets::new);
        &GLOBAL
    }

    /// Registers a secret held for the life of the process (a setting).
    pub fn add(&self, secret: &str) -> Result<(), TooShort> {
        check_length(secret)?;
        let mut registry = self.registry.lock();
        if registry.fixed.insert(secret.to_string()) {
            registry.settle();
            self.matchers.store(registry.matchers());
        }
        Ok(())
    }

    /// Registers a token seen at run time (an OAuth or download token); the
    /// oldest is forgotten past [`MAX_SEEN_TOKENS`].
    pub fn add_seen(&self, token: &str) -> Result<(), TooShort> {
        check_length(token)?;
        let mut registry = self.registry.lock();
        if registry.fixed.contains(token) || registry.seen_set.contains(token) {
            return Ok(());
        }
        registry.seen.push_back(token.to_string());
        registry.seen_set.insert(token.to_string());
        while registry.seen.len() > MAX_SEEN_TOKENS {
            if let Some(oldest) = registry.seen.pop_front() {
                registry.seen_set.remove(&oldest);
            }
        }
        registry.recent.push(token.to_string());
        if registry.recent.len() > RECENT_BATCH {
            registry.settle();
        }
        self.matchers.store(registry.matchers());
        Ok(())
    }

    /// `text` with every secret replaced by `[redacted]` (borrowed when it holds none).
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let guard = self.matchers.load();
        let Some(matchers) = guard.as_deref() else {
            return Cow::Borrowed(text);
        };
        let settled = replace_str(matchers.settled.as_ref(), text);
        match replace_str(matchers.recent.as_ref(), &settled) {
            Cow::Borrowed(_) => settled,
            Cow::Owned(clean) => Cow::Owned(clean),
        }
    }

    /// The same for bytes (log output, which is not always UTF-8).
    pub fn scrub_bytes<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        let guard = self.matchers.load();
        let Some(matchers) = guard.as_deref() else {
            return Cow::Borrowed(bytes);
        };
        let settled = replace_bytes(matchers.settled.as_ref(), bytes);
        match replace_bytes(matchers.recent.as_ref(), &settled) {
            Cow::Borrowed(_) => settled,
            Cow::Owned(clean) => Cow::Owned(clean),
        }
    }

    /// Scrubs every string (and object key) of a JSON value in place;
    /// whether anything changed.
    pub fn scrub_json(&self, value: &mut Value) -> bool {
        if self.matchers.load().is_none() {
            return false;
        }
        self.scrub_json_walk(value)
    }

    fn scrub_json_walk(&self, value: &mut Value) -> bool {
        match value {
            Value::String(text) => match self.scrub(text) {
                Cow::Borrowed(_) => false,
                Cow::Owned(clean) => {
                    *text = clean;
                    true
                }
            },
            Value::Array(items) => {
                let mut changed = false;
                for item in items {
                    changed |= self.scrub_json_walk(item);
                }
                changed
            }
            Value::Object(map) => {
                let mut changed = false;
                if map
                    .keys()
                    .any(|key| matches!(self.scrub(key), Cow::Owned(_)))
                {
                    let entries = std::mem::take(map);
                    *map = entries
                        .into_iter()
                        .map(|(key, v)| (self.scrub(&key).into_owned(), v))
                        .collect();
                    changed = true;
                }
                for item in map.values_mut() {
                    changed |= self.scrub_json_walk(item);
                }
                changed
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }

    /// Whether any secret is registered.
    pub fn is_empty(&self) -> bool {
        self.matchers.load().is_none()
    }
}

fn replace_str<'a>(matcher: Option<&AhoCorasick>, text: &'a str) -> Cow<'a, str> {
    // Text shorter than every secret holds none (checked before the automaton's start-up).
    let Some(matcher) = matcher.filter(|m| text.len() >= m.min_pattern_len() && m.is_match(text))
    else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len());
    matcher.replace_all_with(text, &mut out, |_, _, out| {
        out.push_str(REDACTED);
        true
    });
    Cow::Owned(out)
}

fn replace_bytes<'a>(matcher: Option<&AhoCorasick>, bytes: &'a [u8]) -> Cow<'a, [u8]> {
    let Some(matcher) = matcher.filter(|m| bytes.len() >= m.min_pattern_len() && m.is_match(bytes))
    else {
        return Cow::Borrowed(bytes);
    };
    let mut out = Vec::with_capacity(bytes.len());
    matcher.replace_all_with_bytes(bytes, &mut out, |_, _, out| {
        out.extend_from_slice(REDACTED.as_bytes());
        true
    });
    Cow::Owned(out)
}

fn check_length(secret: &str) -> Result<(), TooShort> {
    if secret.chars().count() < MIN_SECRET_CHARS {
        return Err(TooShort);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scrubs_every_form_of_a_secret_and_leaves_other_text_borrowed() {
        let secrets = Secrets::new();
        assert!(matches!(secrets.scrub("nothing yet"), Cow::Borrowed(_)));
        secrets.add("s3cr+t/pw\"x").unwrap();
        let text = r#"a s3cr+t/pw"x b s3cr%2Bt%2Fpw%22x c s3cr+t/pw\"x d"#;
        assert_eq!(
            secrets.scrub(text),
            "a [redacted] b [redacted] c [redacted] d"
        );
        assert!(matches!(secrets.scrub("clean text"), Cow::Borrowed(_)));
        assert_eq!(
            &*secrets.scrub_bytes(b"x s3cr+t/pw\"x \xff"),
            b"x [redacted] \xff"
        );
    }

    #[test]
    fn the_longest_secret_wins_where_one_contains_another() {
        let secrets = Secrets::new();
        secrets.add("abcdef").unwrap();
        secrets.add("abcdefghij").unwrap();
        assert_eq!(secrets.scrub("<abcdefghij>"), "<[redacted]>");
    }

    #[test]
    fn refuses_short_secrets() {
        let secrets = Secrets::new();
        assert_eq!(secrets.add("pass"), Err(TooShort));
        assert!(secrets.is_empty());
        assert_eq!(secrets.scrub("password"), "password");
    }

    #[test]
    fn tokens_are_scrubbed_at_once_and_settled_in_batches() {
        let secrets = Secrets::new();
        secrets.add("fixed-secret").unwrap();
        for n in 0..(RECENT_BATCH * 3 + 5) {
            let token = format!("batch-token-{n:04}");
            secrets.add_seen(&token).unwrap();
            assert_eq!(secrets.scrub(&format!("<{token}>")), "<[redacted]>", "{n}");
            assert_eq!(
                secrets.scrub("batch-token-0000 fixed-secret"),
                "[redacted] [redacted]"
            );
            assert!(secrets.registry.lock().recent.len() <= RECENT_BATCH);
        }
        assert_eq!(
            &*secrets.scrub_bytes(b"batch-token-0100"),
            REDACTED.as_bytes()
        );
    }

    #[test]
    fn keeps_the_latest_seen_tokens_and_every_fixed_secret() {
        let secrets = Secrets::new();
        secrets.add("fixed-secret").unwrap();
        let total = MAX_SEEN_TOKENS + RECENT_BATCH + 1;
        for n in 0..total {
            secrets.add_seen(&format!("token-{n:06}")).unwrap();
        }
        assert_eq!(
            secrets.scrub("token-000000"),
            "token-000000",
            "forgotten once a batch settles without it"
        );
        assert_eq!(secrets.scrub(&format!("token-{:06}", total - 1)), REDACTED);
        assert_eq!(
            secrets.scrub(&format!("token-{:06}", total - MAX_SEEN_TOKENS)),
            REDACTED
        );
        assert_eq!(secrets.scrub("fixed-secret"), REDACTED);
    }

    #[test]
    fn scrubs_json_strings_and_keys_in_place() {
        let secrets = Secrets::new();
        secrets.add("tok-123456").unwrap();
        let mut value = json!({
            "a": ["x tok-123456 y", 5],
            "tok-123456": {"b": "tok-123456"},
            "c": "clean"
        });
        assert!(secrets.scrub_json(&mut value));
        assert_eq!(
            value,
            json!({"a": ["x [redacted] y", 5], "[redacted]": {"b": "[redacted]"}, "c": "clean"})
        );
        assert!(!secrets.scrub_json(&mut value));
    }
}
