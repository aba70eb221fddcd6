//! What an effect's record shows: its arguments, result and error with the
//! secrets taken out, in two ways.
//!
//! - By name: a value under a key that names a credential (`token`,
//!   `password`, `authorization`, ...), `user:pass@` in URLs, and the values
//!   of `access_token=`, `token=`, `password=` and `pwd=` URL parameters (a
//!   meeting's `join_url`). These may be the peer's data that the script
//!   needs (a join link to send): the script and a replay get them, records
//!   and the page do not.
//! - By value: every secret the process holds ([`Secrets::global`]), wherever
//!   it appears. Nobody gets these, scripts included.
//!
//! [`redact_tracked`] says whether anything changed, so the gateway keeps
//! the unredacted result (for replay) only when it differs.

use std::borrow::Cow;

use serde_json::Value;

use super::EffectError;
use crate::secrets::{REDACTED, Secrets};

/// A redacted copy of `value` (see the module's documentation).
pub fn redact(value: &Value) -> Value {
    redact_tracked(value).0
}

/// A redacted copy of `value`, and whether it differs from `value`.
pub fn redact_tracked(value: &Value) -> (Value, bool) {
    // Most values hold nothing to hide: look first without allocating, then
    // copy them as they are (cheaper than rebuilding every map).
    if is_clean(value) {
        return (value.clone(), false);
    }
    let mut changed = false;
    let redacted = walk(value, &mut changed);
    (redacted, changed)
}

/// Whether redaction would leave `value` as it is.
fn is_clean(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.iter().all(|(key, v)| {
            matches!(redact_text(key), Cow::Borrowed(_))
                && if is_secret_key(key) {
                    v.as_str() == Some(REDACTED)
                } else {
                    is_clean(v)
                }
        }),
        Value::Array(items) => items.iter().all(is_clean),
        Value::String(text) => matches!(redact_text(text), Cow::Borrowed(_)),
        Value::Null | Value::Bool(_) | Value::Number(_) => true,
    }
}

fn walk(value: &Value, changed: &mut bool) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, v)| {
                    let shown_key = redact_text(key);
                    if matches!(shown_key, Cow::Owned(_)) {
                        *changed = true;
                    }
                    let shown = if is_secret_key(key) {
                        *changed |= v.as_str() != Some(REDACTED);
                        Value::String(REDACTED.into())
                    } else {
                        walk(v, changed)
                    };
                    (shown_key.into_owned(), shown)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| walk(v, changed)).collect()),
        Value::String(text) => match redact_text(text) {
            Cow::Borrowed(_) => value.clone(),
            Cow::Owned(shown) => {
                *changed = true;
                Value::String(shown)
            }
        },
        other => other.clone(),
    }
}

/// Text as records show it: URL credentials and token parameters hidden,
/// and every secret the process holds.
pub fn redact_text(text: &str) -> Cow<'_, str> {
    match redact_url_secrets(text) {
        Cow::Borrowed(text) => Secrets::global().scrub(text),
        Cow::Owned(shown) => Cow::Owned(Secrets::global().scrub(&shown).into_owned()),
    }
}

/// An effect's error as records and the script show it.
pub fn redact_error(mut error: EffectError) -> EffectError {
    if let Cow::Owned(message) = redact_text(&error.message) {
        error.message = message;
    }
    if let Some(code) = &error.code {
        error.code = Some(redact(code));
    }
    error
}

/// Words that make a key's value a credential, in any ASCII case.
const SECRET_KEY_WORDS: [&str; 8] = [
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "api_key",
    "apikey",
    "cookie",
];

fn is_secret_key(key: &str) -> bool {
    SECRET_KEY_WORDS.iter().any(|word| {
        key.as_bytes()
            .windows(word.len())
            .any(|window| window.eq_ignore_ascii_case(word.as_bytes()))
    })
}

/// URL parameters whose values are credentials.
const SECRET_PARAMS: [&str; 4] = ["access_token=", "token=", "password=", "pwd="];

/// The words that end a [`SECRET_PARAMS`] name right before its `=`
/// (`access_token` ends with `token`).
const SECRET_PARAM_ENDS: [&str; 3] = ["token", "password", "pwd"];

/// Whether some `=` in `text` follows a [`SECRET_PARAMS`] name: one pass
/// over the `=` signs, where the search for each parameter scans the whole
/// text once per parameter (most texts with a `=` name no secret parameter).
fn may_hold_secret_params(text: &str) -> bool {
    text.match_indices('=').any(|(at, _)| {
        SECRET_PARAM_ENDS
            .iter()
            .any(|end| text[..at].ends_with(end))
    })
}

/// Hides `user:pass@` in URLs and the values of [`SECRET_PARAMS`].
fn redact_url_secrets(text: &str) -> Cow<'_, str> {
    // Found by its `:` (a byte search), cheaper than a substring search on short text.
    let has_scheme = text
        .match_indices(':')
        .any(|(at, _)| text[at + 1..].starts_with("//"));
    // Hiding `user:pass@` keeps what follows the `@`: it adds no parameter.
    let has_params = may_hold_secret_params(text);
    if !has_scheme && !has_params {
        return Cow::Borrowed(text);
    }
    let mut out = Cow::Borrowed(text);
    if has_scheme && let Some(scheme_end) = text.find("://") {
        let rest = &text[scheme_end + 3..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            out = Cow::Owned(format!(
                "{}{REDACTED}{}",
                &text[..scheme_end + 3],
                &rest[at..]
            ));
        }
    }
    if !has_params {
        return out;
    }
    for param in SECRET_PARAMS {
        let mut search_from = 0;
        while let Some(found) = out[search_from..].find(param) {
            let start = search_from + found + param.len();
            let end = out[start..]
                .find(['&', '#', ' ', '"', '\'', '`', '>', ')', ',', ';', '\n'])
                .map_or(out.len(), |e| start + e);
            if &out[start..end] != REDACTED {
                out.to_mut().replace_range(start..end, REDACTED);
            }
            search_from = start + REDACTED.len();
            if search_from >= out.len() {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redacts_secret_keys_and_url_credentials() {
        let args = json!({
            "url": "https://user:pw@example.com/x?access_token=abc&page=2",
            "headers": {"Authorization": "Bearer abc", "X-Ok": "1"},
            "join_url": "https://zoom.us/j/1?pwd=hunter2",
        });
        let (redacted, changed) = redact_tracked(&args);
        assert!(changed);
        let text = redacted.to_string();
        assert!(!text.contains("abc"), "{text}");
        assert!(!text.contains("pw@"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(redacted["headers"]["X-Ok"], "1");
        assert_eq!(
            redacted["url"],
            "https://[redacted]@example.com/x?access_token=[redacted]&page=2"
        );
    }

    #[test]
    fn texts_with_equals_signs_but_no_secret_parameter_are_borrowed() {
        for text in ["t=1 n=2 posted", "a==b", "=", "x=token", "tokens=1"] {
            assert!(matches!(redact_text(text), Cow::Borrowed(_)), "{text}");
        }
        for (text, shown) in [
            ("a token=x b", "a token=[redacted] b"),
            ("access_token=abc", "access_token=[redacted]"),
            (
                "https://u:p@h/?pwd=1&password=2",
                "https://[redacted]@h/?pwd=[redacted]&password=[redacted]",
            ),
            ("https://u:p@h/a=b", "https://[redacted]@h/a=b"),
        ] {
            assert_eq!(redact_text(text), shown, "{text}");
        }
    }

    #[test]
    fn says_when_nothing_changed_and_borrows_clean_text() {
        let clean = json!({"channel": "#a", "text": "a=b c://d", "n": [1, {"x": "y"}]});
        assert_eq!(redact_tracked(&clean), (clean.clone(), false));
        assert!(matches!(redact_text("plain text"), Cow::Borrowed(_)));
        // Redacting twice changes nothing more.
        let once = redact(&json!({"u": "https://h/?token=abc&pwd=x"}));
        assert_eq!(redact_tracked(&once), (once.clone(), false));
    }

    #[test]
    fn knows_secret_keys_in_any_case_and_leaves_a_redacted_value_unchanged() {
        for key in [
            "Authorization",
            "X-API_KEY",
            "refresh_TOKEN",
            "pAsSwOrD",
            "set-cookie",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in ["", "tok", "channel", "author", "pass", "tökenn", "api-key"] {
            assert!(!is_secret_key(key), "{key}");
        }
        let shown = json!({"token": "[redacted]", "n": [{"password": "[redacted]"}]});
        assert_eq!(redact_tracked(&shown), (shown.clone(), false));
        let hidden = json!({"n": [{"password": 5}]});
        assert_eq!(
            redact_tracked(&hidden),
            (json!({"n": [{"password": "[redacted]"}]}), true)
        );
    }

    #[test]
    fn redacts_every_secret_the_process_holds_by_value() {
        Secrets::global().add("redact-test-bearer-4242").unwrap();
        let result =
            json!({"echo": "got redact-test-bearer-4242 back", "redact-test-bearer-4242": 1});
        let (shown, changed) = redact_tracked(&result);
        assert!(changed);
        assert_eq!(
            shown,
            json!({"echo": "got [redacted] back", "[redacted]": 1})
        );
        let error = redact_error(EffectError::permanent(
            "http.request",
            "answered 302 with a malformed Location `https://x/?access_token=abc` and redact-test-bearer-4242",
        ));
        assert_eq!(
            error.message,
            "answered 302 with a malformed Location `https://x/?access_token=[redacted]` and [redacted]"
        );
    }
}
