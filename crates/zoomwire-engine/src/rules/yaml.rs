//! The one place that parses YAML (with serde-saphyr, which keeps positions
//! and has budgets against anchor bombs).
//!
//! A rule file holds one rule (a mapping) or a list of them. Each rule comes
//! back as its keys and values with their positions, still untyped: the
//! loader checks every key on its own so that one pass reports every error.

use indexmap::IndexMap;
use serde_saphyr::Spanned;

/// A 1-based line and column in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    fn of(location: &serde_saphyr::Location) -> Position {
        Position {
            line: location.line() as usize,
            column: location.column() as usize,
        }
    }
}

/// One value of a rule with where it starts.
#[derive(Debug, Clone)]
pub struct YamlValue {
    pub value: serde_json::Value,
    /// Where the value starts; for a block scalar (`|`), its first content line.
    pub position: Position,
}

/// One key of a rule.
#[derive(Debug, Clone)]
pub struct YamlEntry {
    pub key: String,
    pub key_position: Position,
    pub value: YamlValue,
}

/// One rule as written: its keys in order.
#[derive(Debug, Clone)]
pub struct YamlRule {
    pub position: Position,
    pub entries: Vec<YamlEntry>,
}

/// A YAML error with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub position: Position,
    pub message: String,
}

type SpannedMap = IndexMap<Spanned<String>, Spanned<serde_json::Value>>;

/// YAML 1.2 booleans only: `y`, `n`, `yes`, `no`, `on` and `off` stay strings
/// (a rule named `n` or a channel called `no` must not turn into `false`).
/// The default budgets against anchor bombs stay on.
fn options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options
}

fn from_str<'de, T: serde::Deserialize<'de>>(text: &'de str) -> Result<T, serde_saphyr::Error> {
    serde_saphyr::from_str_with_options(text, options())
}

/// Parses a rule file: a mapping (one rule) or a sequence of mappings.
pub fn parse_rules(text: &str) -> Result<Vec<YamlRule>, YamlError> {
    // First the shape, which also reports syntax errors once, in one place.
    let shape: serde_json::Value = from_str(text).map_err(yaml_error)?;
    match shape {
        serde_json::Value::Null => Ok(Vec::new()),
        serde_json::Value::Array(_) => {
            let rules: Vec<Spanned<Option<SpannedMap>>> = from_str(text).map_err(yaml_error)?;
            rules
                .into_iter()
                .map(|rule| match rule.value {
                    Some(map) => Ok(into_rule(Position::of(&rule.referenced), map)),
                    None => Err(YamlError {
                        position: Position::of(&rule.referenced),
                        message: "expected a rule (a mapping), found an empty item".into(),
                    }),
                })
                .collect()
        }
        serde_json::Value::Object(_) => {
            let rule: Spanned<SpannedMap> = from_str(text).map_err(yaml_error)?;
            Ok(vec![into_rule(Position::of(&rule.referenced), rule.value)])
        }
        _ => Err(YamlError {
            position: Position { line: 1, column: 1 },
            message: "expected a rule (a mapping) or a list of rules".into(),
        }),
    }
}

/// Parses any YAML document into JSON, for test fixtures and configuration.
pub fn parse_value(text: &str) -> Result<serde_json::Value, YamlError> {
    from_str(text).map_err(yaml_error)
}

/// Parses a YAML document straight into a typed value (configuration files).
pub fn parse_typed<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    from_str(text).map_err(yaml_error)
}

fn into_rule(position: Position, map: SpannedMap) -> YamlRule {
    let entries = map
        .into_iter()
        .map(|(key, value)| YamlEntry {
            key_position: Position::of(&key.referenced),
            key: key.value,
            value: YamlValue {
                position: Position::of(&value.referenced),
                value: value.value,
            },
        })
        .collect();
    YamlRule { position, entries }
}

fn yaml_error(error: serde_saphyr::Error) -> YamlError {
    let position = error
        .location()
        .map(|l| Position::of(&l))
        .unwrap_or(Position { line: 1, column: 1 });
    YamlError {
        position,
        message: short_message(&error.without_snippet().to_string()),
    }
}

/// serde-saphyr's message without its `error: line N column M: ` prefix.
fn short_message(text: &str) -> String {
    let first = text.lines().next().unwrap_or_default();
    let first = match first.rfind(" at line ") {
        Some(at) if first[at..].contains(", column ") => &first[..at],
        _ => first,
    };
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first.find(" column ") {
        Some(at) if first.starts_with("line ") => match first[at..].find(": ") {
            Some(colon) => first[at + colon + 2..].to_string(),
            None => first.to_string(),
        },
        _ => first.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_rule_with_positions() {
        let rules = parse_rules("name: a\non: meeting.ended\ndo: |\n  let a = 1;\n  a\n").unwrap();
        assert_eq!(rules.len(), 1);
        let entries = &rules[0].entries;
        assert_eq!(entries[0].key, "name");
        assert_eq!(entries[1].value.value, "meeting.ended");
        assert_eq!(entries[1].value.position, Position { line: 2, column: 5 });
        // A block scalar's position is its first content line.
        assert_eq!(entries[2].value.position, Position { line: 4, column: 3 });
    }

    #[test]
    fn reads_a_list_of_rules() {
        let rules = parse_rules("- name: a\n  do: x\n- name: b\n  do: y\n").unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1].position.line, 3);
    }

    #[test]
    fn reports_syntax_errors_with_position() {
        let error = parse_rules("name: a\nallow: [slack,\n").unwrap_err();
        assert_eq!(error.position, Position { line: 2, column: 8 });
        assert_eq!(error.message, "unclosed bracket '['");
    }

    #[test]
    fn reports_duplicate_keys() {
        let error = parse_rules("name: a\nname: b\n").unwrap_err();
        assert_eq!(error.position.line, 2);
        assert!(
            error.message.contains("duplicate mapping key"),
            "{}",
            error.message
        );
    }

    #[test]
    fn only_yaml_1_2_booleans_are_booleans() {
        let value = parse_value("a: n\nb: yes\nc: off\nd: true\n").unwrap();
        assert_eq!(
            value,
            serde_json::json!({"a": "n", "b": "yes", "c": "off", "d": true})
        );
    }

    #[test]
    fn refuses_scalars_and_accepts_empty_files() {
        assert!(parse_rules("just text").is_err());
        assert!(parse_rules("").unwrap().is_empty());
        assert!(parse_rules("# only a comment\n").unwrap().is_empty());
    }
}
