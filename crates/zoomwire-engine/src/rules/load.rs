//! Reading rule files: finding them, parsing their YAML and checking each key
//! of each rule on its own, so that one pass reports every unknown key and
//! every wrong type, each with its file, line and column.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::spec::{RULE_KEYS, RuleSpec};
use super::yaml::{self, Position, YamlRule};
use super::{RuleError, file_stem};

/// One rule as read from a file, its keys checked.
#[derive(Debug, Clone)]
pub struct RuleSource {
    pub path: PathBuf,
    pub text: std::sync::Arc<str>,
    pub position: Position,
    /// The name written in the file, or the file stem for a file with one rule.
    pub name: Option<String>,
    pub spec: RuleSpec,
    /// Where each key's value starts.
    pub value_positions: HashMap<String, Position>,
    /// Keys present but invalid (already reported): the rule is compiled only
    /// to find its other errors, and is never added to a rule set.
    pub invalid_keys: Vec<String>,
}

impl RuleSource {
    /// An error at the value of `key` (or at the rule when the key is absent).
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> RuleError {
        RuleError {
            path: self.path.clone(),
            position: self
                .value_positions
                .get(key)
                .copied()
                .unwrap_or(self.position),
            rule: self.name.clone(),
            message: message.into(),
        }
    }
}

/// Every `*.yaml` and `*.yml` under `paths` (files are taken as given), sorted.
pub fn find_rule_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, RuleError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            collect_yaml(path, &mut files).map_err(|e| io_error(path, e))?;
        } else if path.exists() {
            files.push(path.clone());
        } else {
            return Err(io_error(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            ));
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

fn collect_yaml(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect_yaml(&path, files)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            files.push(path);
        }
    }
    Ok(())
}

fn io_error(path: &Path, error: std::io::Error) -> RuleError {
    RuleError {
        path: path.to_path_buf(),
        position: Position { line: 1, column: 1 },
        rule: None,
        message: format!("cannot read: {error}"),
    }
}

/// Reads one rule file into its rules, or every error found in it.
pub fn read_rule_file(path: &Path) -> (Vec<RuleSource>, Vec<RuleError>) {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_rule_file(path, &text),
        Err(error) => (Vec::new(), vec![io_error(path, error)]),
    }
}

/// Parses the text of a rule file (the path names it in errors).
pub fn parse_rule_file(path: &Path, text: &str) -> (Vec<RuleSource>, Vec<RuleError>) {
    let yaml_rules = match yaml::parse_rules(text) {
        Ok(rules) => rules,
        Err(error) => {
            return (
                Vec::new(),
                vec![RuleError {
                    path: path.to_path_buf(),
                    position: error.position,
                    rule: None,
                    message: format!("invalid YAML: {}", error.message),
                }],
            );
        }
    };
    let single = yaml_rules.len() == 1;
    let text: std::sync::Arc<str> = text.into();
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for yaml_rule in yaml_rules {
        let (source, mut rule_errors) = check_rule(path, &text, yaml_rule, single);
        errors.append(&mut rule_errors);
        sources.extend(source);
    }
    (sources, errors)
}

/// Checks every key of one rule and builds its spec from the valid keys, so
/// that the compiler can still report the rule's other errors.
fn check_rule(
    path: &Path,
    text: &std::sync::Arc<str>,
    rule: YamlRule,
    single: bool,
) -> (Option<RuleSource>, Vec<RuleError>) {
    let name = rule
        .entries
        .iter()
        .find(|e| e.key == "name")
        .and_then(|e| e.value.value.as_str().map(str::to_string))
        .or_else(|| single.then(|| file_stem(path)));
    let mut errors = Vec::new();
    let mut valid = Map::new();
    let mut value_positions = HashMap::new();
    let mut invalid_keys = Vec::new();
    for entry in rule.entries {
        let error = |position, message| RuleError {
            path: path.to_path_buf(),
            position,
            rule: name.clone(),
            message,
        };
        if !RULE_KEYS.contains(&entry.key.as_str()) {
            errors.push(error(entry.key_position, unknown_key_message(&entry.key)));
            continue;
        }
        let single_key = Value::Object(Map::from_iter([(
            entry.key.clone(),
            entry.value.value.clone(),
        )]));
        if let Err(e) = serde_json::from_value::<RuleSpec>(single_key) {
            errors.push(error(
                entry.value.position,
                type_message(&entry.key, &e.to_string()),
            ));
            continue;
        }
        value_positions.insert(entry.key.clone(), entry.value.position);
        valid.insert(entry.key, entry.value.value);
    }
    let spec = match serde_json::from_value::<RuleSpec>(Value::Object(valid)) {
        Ok(spec) => spec,
        Err(e) => {
            errors.push(RuleError {
                path: path.to_path_buf(),
                position: rule.position,
                rule: name.clone(),
                message: e.to_string(),
            });
            return (None, errors);
        }
    };
    if !errors.is_empty() {
        // Marks the rule as not to be used, whatever the compiler finds.
        invalid_keys.push(String::new());
    }
    let source = RuleSource {
        path: path.to_path_buf(),
        text: text.clone(),
        position: rule.position,
        name,
        spec,
        value_positions,
        invalid_keys,
    };
    (Some(source), errors)
}

fn unknown_key_message(key: &str) -> String {
    let expected = RULE_KEYS.join(", ");
    match closest_key(key) {
        Some(close) => {
            format!("unknown key `{key}` (did you mean `{close}`?), expected one of: {expected}")
        }
        None => format!("unknown key `{key}`, expected one of: {expected}"),
    }
}

/// A known key within two edits of `key`, for "did you mean".
fn closest_key(key: &str) -> Option<&'static str> {
    RULE_KEYS
        .iter()
        .map(|known| (edit_distance(key, known), *known))
        .filter(|(distance, known)| *distance <= if known.len() > 3 { 2 } else { 1 })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, known)| known)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// serde's message, made specific where it says nothing useful.
fn type_message(key: &str, serde_message: &str) -> String {
    let message = serde_message
        .split(" at line ")
        .next()
        .unwrap_or(serde_message)
        .to_string();
    match key {
        "on" => format!("`on` expects an event type or a list of event types ({message})"),
        "do" => format!("`do` expects a Rhai script (text) or `{{script: file.rhai}}` ({message})"),
        "allow" => format!("`allow` expects a list of capabilities ({message})"),
        "tests" => format!(
            "`tests` expects a list of tests with name, event, given, state and expect ({message})"
        ),
        _ => format!("`{key}`: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(text: &str) -> Vec<String> {
        let (_, errors) = parse_rule_file(Path::new("r.yaml"), text);
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn reads_a_valid_rule_and_defaults_its_name_to_the_file_stem() {
        let (sources, errors) = parse_rule_file(
            Path::new("rules/archive.yaml"),
            "on: recording.completed\ndo: log::info(\"x\")\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(sources[0].name.as_deref(), Some("archive"));
        assert_eq!(
            sources[0].value_positions["do"],
            Position { line: 2, column: 5 }
        );
    }

    #[test]
    fn reports_every_bad_key_in_one_pass() {
        let errors = errors_of(
            "name: a\non: meeting.ended\nwhne: true\nmax_runs: many\nmode: sometimes\ntimeout: 5 minutes\ndo: x\n",
        );
        assert_eq!(errors.len(), 4, "{errors:#?}");
        assert!(
            errors[0]
                .starts_with("r.yaml:3:1: rule \"a\": unknown key `whne` (did you mean `when`?)"),
            "{}",
            errors[0]
        );
        assert!(
            errors[1].starts_with("r.yaml:4:11: rule \"a\": `max_runs`: invalid type"),
            "{}",
            errors[1]
        );
        assert!(
            errors[2].contains("unknown variant `sometimes`"),
            "{}",
            errors[2]
        );
        assert!(
            errors[3]
                .starts_with("r.yaml:6:10: rule \"a\": `timeout`: invalid duration `5 minutes`"),
            "{}",
            errors[3]
        );
    }

    #[test]
    fn explains_untagged_keys() {
        let errors = errors_of("name: a\non: {type: x}\ndo: [1]\n");
        assert!(
            errors[0].contains("`on` expects an event type"),
            "{}",
            errors[0]
        );
        assert!(
            errors[1].contains("`do` expects a Rhai script"),
            "{}",
            errors[1]
        );
    }

    #[test]
    fn names_rules_in_lists_only_when_written() {
        let (sources, errors) = parse_rule_file(
            Path::new("r.yaml"),
            "- on: a.b\n  do: x\n- name: n\n  on: a.b\n  do: y\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(sources[0].name, None);
        assert_eq!(sources[1].name.as_deref(), Some("n"));
    }

    #[test]
    fn invalid_yaml_names_line_and_column() {
        let errors = errors_of("name: a\nallow: [slack\n");
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("r.yaml:2:8: invalid YAML: "),
            "{}",
            errors[0]
        );
    }
}
