//! What `zoomwire check` finds beyond what loading refuses: an `on:` event
//! type that is not one of Zoom's (a warning, with the nearest known type,
//! since Zoom adds types and a rule listening to a new one still runs), and a
//! host function a script calls (in `do:` or in the module functions it
//! calls) whose capability the rule does not `allow` (an error: the call
//! would fail every run that reaches it).
//!
//! Loading stays as it is: the daemon and `zoomwire test` load the same
//! rules, and the gateway checks every call's capability when a rule runs.

use std::fmt;
use std::path::{Path, PathBuf};

use super::host_calls::{HostCall, host_calls};
use super::{EventPattern, Rule, RuleSet, Trigger};
use crate::rules::yaml::Position;
use crate::zoom::event_types::{EVENT_TYPES, is_event_type};

/// How much a finding matters: warnings leave `zoomwire check`'s exit status at 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Warning,
    Error,
}

/// One thing `zoomwire check` says about a rule, at a place in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub path: PathBuf,
    pub position: Position,
    pub rule: String,
    pub message: String,
}

impl fmt::Display for Finding {
    /// `path:line:col: rule "name": message`, with `warning: ` before `rule`
    /// for a warning (errors read as load errors do).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: ",
            self.path.display(),
            self.position.line,
            self.position.column
        )?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        write!(f, "rule \"{}\": {}", self.rule, self.message)
    }
}

/// Every finding about the rules of `rule_set`, sorted by file and position.
/// `scripts_dir` is where the modules the rules import come from.
pub fn lint_rule_set(rule_set: &RuleSet, scripts_dir: &Path) -> Vec<Finding> {
    let mut findings: Vec<Finding> = rule_set
        .rules()
        .iter()
        .flat_map(|rule| {
            let mut findings = event_type_findings(rule);
            findings.extend(capability_findings(rule, scripts_dir));
            findings
        })
        .collect();
    findings.sort_by(|a, b| (&a.path, a.position).cmp(&(&b.path, b.position)));
    findings
}

fn event_type_findings(rule: &Rule) -> Vec<Finding> {
    let Trigger::Events(patterns) = &rule.trigger else {
        return Vec::new();
    };
    patterns
        .iter()
        .filter_map(|pattern| {
            let message = match pattern {
                EventPattern::Exact(name) if !is_event_type(name) => match nearest_event_type(name)
                {
                    Some(known) => format!(
                        "`{name}` is not one of Zoom's event types: did you mean `{known}`?"
                    ),
                    None => format!("`{name}` is not one of Zoom's event types"),
                },
                EventPattern::Prefix(_) | EventPattern::Glob(_)
                    if !EVENT_TYPES.iter().any(|known| pattern.matches(known)) =>
                {
                    format!("`{pattern}` matches none of Zoom's event types")
                }
                _ => return None,
            };
            Some(Finding {
                severity: Severity::Warning,
                path: rule.path.clone(),
                position: rule.trigger_position,
                rule: rule.name.to_string(),
                message,
            })
        })
        .collect()
}

/// The known event type closest to `name`, when it is close enough to be
/// a typo of it: at most a third of its characters changed.
pub fn nearest_event_type(name: &str) -> Option<&'static str> {
    let (distance, known) = EVENT_TYPES
        .iter()
        .map(|known| (strsim::damerau_levenshtein(name, known), *known))
        .min()?;
    (distance <= (name.chars().count() / 3).max(2)).then_some(known)
}

fn capability_findings(rule: &Rule, scripts_dir: &Path) -> Vec<Finding> {
    host_calls(&rule.action, scripts_dir)
        .into_iter()
        .filter(|call| !rule.capabilities.allows(call.capability))
        .map(|call| Finding {
            severity: Severity::Error,
            path: call.path.clone(),
            position: call.position,
            rule: rule.name.to_string(),
            message: missing_capability_message(&call),
        })
        .collect()
}

fn missing_capability_message(call: &HostCall) -> String {
    let function = call.effect.replacen('.', "::", 1);
    let needed = if call.capability == "http" {
        "`http:<host>` for the host it calls".to_string()
    } else {
        format!("`{}`", call.capability)
    };
    let through = if call.through.is_empty() {
        String::new()
    } else {
        format!(" (reached through {})", call.through.join(" -> "))
    };
    format!("{function} needs {needed} in `allow:`{through}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_event_type_for_a_typo_only() {
        assert_eq!(nearest_event_type("meeting.endd"), Some("meeting.ended"));
        assert_eq!(nearest_event_type("meetings.ended"), Some("meeting.ended"));
        assert_eq!(
            nearest_event_type("recording.complete"),
            Some("recording.completed")
        );
        assert_eq!(nearest_event_type("user.create"), Some("user.created"));
        assert_eq!(nearest_event_type("something.else.entirely"), None);
    }

    #[test]
    fn findings_read_as_path_line_col_with_warnings_marked() {
        let finding = Finding {
            severity: Severity::Warning,
            path: PathBuf::from("rules/a.yaml"),
            position: Position { line: 2, column: 5 },
            rule: "a".into(),
            message: "`meeting.endd` is not one of Zoom's event types".into(),
        };
        assert_eq!(
            finding.to_string(),
            "rules/a.yaml:2:5: warning: rule \"a\": `meeting.endd` is not one of Zoom's event types"
        );
        let error = Finding {
            severity: Severity::Error,
            ..finding
        };
        assert!(
            error
                .to_string()
                .starts_with("rules/a.yaml:2:5: rule \"a\": ")
        );
    }

    #[test]
    fn says_which_capability_a_call_needs_and_how_it_was_reached() {
        let call = HostCall {
            effect: "email.send".into(),
            capability: "email",
            path: PathBuf::from("scripts/notify.rhai"),
            position: Position { line: 3, column: 5 },
            through: vec!["n::tell".into(), "helper".into()],
        };
        assert_eq!(
            missing_capability_message(&call),
            "email::send needs `email` in `allow:` (reached through n::tell -> helper)"
        );
        let http = HostCall {
            effect: "http.request".into(),
            capability: "http",
            through: Vec::new(),
            ..call
        };
        assert_eq!(
            missing_capability_message(&http),
            "http::request needs `http:<host>` for the host it calls in `allow:`"
        );
    }
}
