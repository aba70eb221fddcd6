//! Matching: which rules an event fires. Pure and without I/O.
//!
//! The index gives the rules for the event's type. Each one's `when` is
//! answered natively on the event's borrowed JSON tree when it is simple
//! enough ([`crate::rules::fast`]); otherwise (or when the fast answer is
//! unsure) it runs on its compiled AST in a scope built once per event, the
//! first time one is needed. A condition that errors counts as not matched
//! and is reported with its error.

use std::borrow::Cow;
use std::sync::Arc;

use rhai::{Dynamic, Scope};

use crate::event::Event;
use crate::event::tree::Json;
use crate::rules::{CompiledScript, Rule, RuleSet, Trigger};
use crate::script::{Sandbox, ScriptError};

/// A rule the event fires, with its concurrency key.
#[derive(Debug, Clone)]
pub struct Matched {
    pub rule: Arc<Rule>,
    pub key: Option<String>,
}

/// A rule whose condition (or key) failed to evaluate.
#[derive(Debug, Clone)]
pub struct ConditionFailure {
    pub rule: Arc<Rule>,
    pub error: String,
}

/// What matching found.
#[derive(Debug, Default)]
pub struct MatchResult {
    pub matched: Vec<Matched>,
    pub failures: Vec<ConditionFailure>,
}

/// Why a rule did or did not fire, for `fire --explain`.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Fired,
    Disabled,
    TypeMismatch,
    ConditionFalse,
    ConditionError(String),
}

/// Matches one event against a rule set.
pub fn match_event(rule_set: &RuleSet, event: &Event, vars: &Dynamic) -> MatchResult {
    let mut result = MatchResult::default();
    let mut conditions = Conditions::new(rule_set.sandbox(), event, vars);
    for_each_candidate(rule_set, event, |rule| {
        if !rule.enabled {
            return;
        }
        match conditions.evaluate(rule) {
            Ok(Some(key)) => result.matched.push(Matched {
                rule: rule.clone(),
                key,
            }),
            Ok(None) => {}
            Err(error) => result.failures.push(ConditionFailure {
                rule: rule.clone(),
                error,
            }),
        }
    });
    result
}

/// Says for every rule why it fired or did not.
pub fn explain_event(
    rule_set: &RuleSet,
    event: &Event,
    vars: &Dynamic,
) -> Vec<(Arc<Rule>, Verdict)> {
    let mut listening = Vec::new();
    for_each_candidate(rule_set, event, |rule| listening.push(rule.clone()));
    let mut conditions = Conditions::new(rule_set.sandbox(), event, vars);
    rule_set
        .rules()
        .iter()
        .map(|rule| {
            let verdict = if !listening.iter().any(|r| Arc::ptr_eq(r, rule)) {
                Verdict::TypeMismatch
            } else if !rule.enabled {
                Verdict::Disabled
            } else {
                match conditions.evaluate(rule) {
                    Ok(Some(_)) => Verdict::Fired,
                    Ok(None) => Verdict::ConditionFalse,
                    Err(error) => Verdict::ConditionError(error),
                }
            };
            (rule.clone(), verdict)
        })
        .collect()
}

/// Calls `f` with each rule listening for this event, in rule-set order. A
/// schedule event fires only its own rule.
fn for_each_candidate(rule_set: &RuleSet, event: &Event, mut f: impl FnMut(&Arc<Rule>)) {
    let rules = rule_set.rules();
    if event.event_type == "schedule" {
        let target = event.top_level_str("rule");
        rules
            .iter()
            .filter(|r| matches!(r.trigger, Trigger::Schedule(_)))
            .filter(|r| target.as_deref() == Some(&*r.name))
            .for_each(f);
        return;
    }
    for &position in rule_set.index().candidates(&event.event_type).iter() {
        f(&rules[position as usize]);
    }
}

/// What the conditions of one event read, each made on first use: the
/// borrowed tree for fast conditions, the Rhai scope for the others.
struct Conditions<'a> {
    sandbox: &'a Sandbox,
    event: &'a Event,
    vars: &'a Dynamic,
    tree: Option<Cow<'a, Json<'a>>>,
    scope: Option<Scope<'static>>,
}

impl<'a> Conditions<'a> {
    fn new(sandbox: &'a Sandbox, event: &'a Event, vars: &'a Dynamic) -> Conditions<'a> {
        Conditions {
            sandbox,
            event,
            vars,
            tree: None,
            scope: None,
        }
    }

    /// `Ok(Some(key))` when the rule fires (key `None` when it has none),
    /// `Ok(None)` when its condition is false.
    fn evaluate(&mut self, rule: &Rule) -> Result<Option<Option<String>>, String> {
        if !self.condition_holds(rule)? {
            return Ok(None);
        }
        match &rule.key {
            None => Ok(Some(None)),
            Some(key) => {
                let value = eval(self.sandbox, self.scope(), key, "key")?;
                Ok(Some(Some(value.to_string())))
            }
        }
    }

    /// The fast condition's answer when it is sure, else Rhai's.
    fn condition_holds(&mut self, rule: &Rule) -> Result<bool, String> {
        let Some(condition) = &rule.condition else {
            return Ok(true);
        };
        if let Some(fast) = &rule.fast_condition {
            let event = self.event;
            let tree = self.tree.get_or_insert_with(|| event.tree());
            if let Some(answer) = fast.eval(tree) {
                return Ok(answer);
            }
        }
        let value = eval(self.sandbox, self.scope(), condition, "when")?;
        value.as_bool().map_err(|type_name| {
            format!("`when` must give true or false, it gave a value of type {type_name}")
        })
    }

    fn scope(&mut self) -> &mut Scope<'static> {
        self.scope.get_or_insert_with(|| {
            self.sandbox
                .expression_scope(self.event.body(), &self.event.meta(), self.vars)
        })
    }
}

fn eval(
    sandbox: &Sandbox,
    scope: &mut Scope<'static>,
    script: &CompiledScript,
    what: &str,
) -> Result<Dynamic, String> {
    sandbox
        .eval_expression(scope, &script.ast)
        .map_err(|error| describe_failure(script, what, &error))
}

/// `path:line:col: `when`: message`, the position in the rule file: where the
/// error happened when Rhai says, else where the expression starts.
fn describe_failure(script: &CompiledScript, what: &str, error: &ScriptError) -> String {
    let (at, message) = match error {
        ScriptError::Runtime {
            message,
            line: Some(line),
            column,
        } => (
            script.origin.locate(*line, column.unwrap_or(1)),
            message.clone(),
        ),
        other => (script.origin.start, other.to_string()),
    };
    format!(
        "{}:{}:{}: `{what}`: {message}",
        script.origin.path.display(),
        at.line,
        at.column
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Source;
    use crate::rules::compile::rules_of_yaml;

    const RULES: &str = r#"
- name: long
  on: meeting.ended
  when: event.payload.object.duration > 60
  do: 'log::info("long")'
- name: named
  on: meeting.*
  when: event.payload.object.topic.starts_with("Incident")
  do: 'log::info("named")'
- name: by-var
  on: meeting.ended
  when: event.payload.object.topic == vars.topic
  do: 'log::info("var")'
- name: keyed
  on: meeting.ended
  when: event.payload.object.duration > 60
  key: event.payload.object.uuid
  do: 'log::info("keyed")'
- name: always
  on: meeting.ended
  do: 'log::info("always")'
- name: broken
  on: meeting.ended
  when: event.payload.object.missing.len() > 0
  do: 'log::info("broken")'
"#;

    fn rule_set() -> (RuleSet, tempfile::TempDir) {
        rules_of_yaml(RULES)
    }

    fn ended(duration: i64, topic: &str) -> Event {
        let body = serde_json::json!({
            "event": "meeting.ended",
            "event_ts": 1,
            "payload": {"object": {"uuid": "u1", "duration": duration, "topic": topic}}
        });
        Event::from_value(&body, Source::Test).unwrap()
    }

    fn names(result: &MatchResult) -> Vec<&str> {
        result.matched.iter().map(|m| &*m.rule.name).collect()
    }

    fn vars(topic: &str) -> Dynamic {
        let mut vars = rhai::Map::new();
        vars.insert("topic".into(), topic.into());
        Dynamic::from_map(vars)
    }

    #[test]
    fn simple_conditions_are_answered_without_making_the_rhai_value() {
        let (rules, _dir) = rule_set();
        let by_name = |name: &str| {
            rules
                .rules()
                .iter()
                .find(|r| &*r.name == name)
                .unwrap()
                .clone()
        };
        assert!(by_name("long").fast_condition.is_some());
        assert!(by_name("named").fast_condition.is_some());
        assert!(by_name("by-var").fast_condition.is_none(), "reads vars");

        let fast_rules = rules
            .rules()
            .iter()
            .filter(|r| ["long", "named"].contains(&&*r.name))
            .cloned()
            .collect();
        let only_fast = RuleSet::new(fast_rules, rules.sandbox().clone(), Vec::new());
        let event = ended(90, "Incident review");
        let result = match_event(&only_fast, &event, &vars("x"));
        assert_eq!(names(&result), ["long", "named"]);
        assert!(!event.body_is_built(), "the fast path made the Rhai value");
    }

    #[test]
    fn fast_and_rhai_conditions_agree_in_one_rule_set() {
        let (rules, _dir) = rule_set();
        let event = ended(90, "Incident review");
        let result = match_event(&rules, &event, &vars("Incident review"));
        assert_eq!(
            names(&result),
            ["long", "named", "by-var", "keyed", "always"]
        );
        assert_eq!(result.matched[3].key.as_deref(), Some("u1"));
        assert_eq!(result.failures.len(), 1, "{:?}", result.failures);
        // Where in the rule file: the condition starts at 24:9 and fails at its column 30.
        let error = &result.failures[0].error;
        let file = rules.rules()[0].path.display().to_string();
        assert_eq!(
            error,
            &format!("{file}:24:38: `when`: Function not found: len (())"),
        );

        let event = ended(30, "Weekly");
        let result = match_event(&rules, &event, &vars("Other"));
        assert_eq!(names(&result), ["always"]);
    }

    #[test]
    fn an_unsure_fast_answer_falls_back_to_rhai() {
        let (rules, _dir) = rule_set();
        // A float duration: the fast path does not compare it with an integer.
        let body = serde_json::json!({
            "event": "meeting.ended",
            "event_ts": 1,
            "payload": {"object": {"uuid": "u1", "duration": 90.5, "topic": "x"}}
        });
        let event = Event::from_value(&body, Source::Test).unwrap();
        let result = match_event(&rules, &event, &vars("y"));
        assert_eq!(names(&result), ["long", "keyed", "always"]);
        assert!(event.body_is_built());
    }
}
