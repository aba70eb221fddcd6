//! A small `.env` reader: `KEY=value` lines into a map, never into the
//! process environment.
//!
//! Written here rather than taken from `dotenvy` because the settings want a
//! map to layer under the real environment (edition 2024 makes
//! `std::env::set_var` unsafe, and the crate forbids unsafe code), and
//! because its errors must never echo a value: a `.env` holds secrets.
//!
//! Accepted: blank lines, `# comments`, an optional `export ` prefix,
//! unquoted values (trimmed, cut at ` #`), `'literal'` values and
//! `"escaped"` values (`\n`, `\t`, `\r`, `\\`, `\"`, `\$`). Not accepted:
//! multi-line values and `${VAR}` expansion. A key given twice keeps its
//! last value, as a shell would.

use std::collections::BTreeMap;

/// One value read from a `.env` file, with its 1-based line.
#[derive(Clone, PartialEq, Eq)]
pub struct DotenvValue {
    pub value: String,
    pub line: usize,
}

// By hand: the value may be a secret.
impl std::fmt::Debug for DotenvValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DotenvValue")
            .field("value", &"[redacted]")
            .field("line", &self.line)
            .finish()
    }
}

/// A line that could not be read. The message never contains the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DotenvError {
    pub line: usize,
    pub message: String,
}

/// A `.env` text read: the values of the good lines and an error for each bad one.
#[derive(Debug, Clone, Default)]
pub struct Dotenv {
    pub values: BTreeMap<String, DotenvValue>,
    pub errors: Vec<DotenvError>,
}

/// Reads a whole `.env` text; keeps the good lines and reports every bad one.
pub fn parse_dotenv(text: &str) -> Dotenv {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut values = BTreeMap::new();
    let mut errors = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        match parse_line(line) {
            Ok(None) => {}
            Ok(Some((key, value))) => {
                values.insert(
                    key.to_string(),
                    DotenvValue {
                        value,
                        line: number,
                    },
                );
            }
            Err(message) => errors.push(DotenvError {
                line: number,
                message,
            }),
        }
    }
    Dotenv { values, errors }
}

/// One line: `None` for blanks and comments.
fn parse_line(line: &str) -> Result<Option<(&str, String)>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let line = line
        .strip_prefix("export ")
        .map(str::trim_start)
        .unwrap_or(line);
    let Some((key, rest)) = line.split_once('=') else {
        return Err("expected KEY=value".into());
    };
    let key = key.trim_end();
    if !is_variable_name(key) {
        // Not quoted: a stray line may be a pasted secret.
        return Err(
            "expected KEY=value with a variable name (letters, digits and `_`, not starting with a digit)"
                .into(),
        );
    }
    let value = parse_value(rest.trim_start()).map_err(|message| format!("{key}: {message}"))?;
    Ok(Some((key, value)))
}

fn is_variable_name(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(text: &str) -> Result<String, String> {
    if let Some(rest) = text.strip_prefix('\'') {
        let end = rest.find('\'').ok_or("missing closing `'`")?;
        expect_only_comment(&rest[end + 1..])?;
        return Ok(rest[..end].to_string());
    }
    if let Some(rest) = text.strip_prefix('"') {
        let (value, after) = unescape_double_quoted(rest)?;
        expect_only_comment(after)?;
        return Ok(value);
    }
    Ok(cut_comment(text).trim_end().to_string())
}

/// Reads up to the closing quote; returns the value and what follows the quote.
fn unescape_double_quoted(text: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[at + 1..])),
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('n') => value.push('\n'),
                Some('t') => value.push('\t'),
                Some('r') => value.push('\r'),
                Some(c @ ('\\' | '"' | '$' | '\'')) => value.push(c),
                Some(other) => {
                    return Err(format!(
                        "unknown escape `\\{other}` in a double-quoted value"
                    ));
                }
                None => break,
            },
            c => value.push(c),
        }
    }
    Err("missing closing `\"` (multi-line values are not supported)".into())
}

fn expect_only_comment(after_quote: &str) -> Result<(), String> {
    let rest = after_quote.trim_start();
    if rest.is_empty() || rest.starts_with('#') {
        Ok(())
    } else {
        Err("unexpected text after the closing quote".into())
    }
}

/// An unquoted value ends where ` #` starts a comment.
fn cut_comment(text: &str) -> &str {
    if text.starts_with('#') {
        return "";
    }
    let bytes = text.as_bytes();
    for at in 1..bytes.len() {
        if bytes[at] == b'#' && bytes[at - 1].is_ascii_whitespace() {
            return &text[..at];
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(map: &BTreeMap<String, DotenvValue>, key: &str) -> String {
        map[key].value.clone()
    }

    #[test]
    fn reads_plain_quoted_and_exported_values() {
        let text = "\u{feff}# comment\n\nA=1\nexport B = two words  # note\nC='lit $X \\n'\nD=\"x\\ny \\\"q\\\" #no\" # c\nE=\nF=a#b\nA=last\n";
        let map = parse_dotenv(text).values;
        assert_eq!(value(&map, "A"), "last");
        assert_eq!(map["A"].line, 9);
        assert_eq!(value(&map, "B"), "two words");
        assert_eq!(value(&map, "C"), "lit $X \\n");
        assert_eq!(value(&map, "D"), "x\ny \"q\" #no");
        assert_eq!(value(&map, "E"), "");
        assert_eq!(value(&map, "F"), "a#b");
        assert_eq!(map.len(), 6);
    }

    #[test]
    fn reports_every_bad_line_without_values() {
        let text = "GOOD=1\nno equals sign here\nsk-hunter3=x\nSECRET=\"hunter2\nQ='x' y\n";
        let dotenv = parse_dotenv(text);
        assert_eq!(value(&dotenv.values, "GOOD"), "1");
        let errors = dotenv.errors;
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5]);
        assert_eq!(errors[0].message, "expected KEY=value");
        assert!(
            errors[1]
                .message
                .starts_with("expected KEY=value with a variable name")
        );
        assert_eq!(
            errors[2].message,
            "SECRET: missing closing `\"` (multi-line values are not supported)"
        );
        assert_eq!(
            errors[3].message,
            "Q: unexpected text after the closing quote"
        );
        assert!(
            errors.iter().all(|e| !e.message.contains("hunter")),
            "{errors:?}"
        );
    }

    #[test]
    fn debug_hides_values() {
        let map = parse_dotenv("TOKEN=hunter2\n").values;
        let shown = format!("{map:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }
}
