//! Matching: which rules an event fires. Pure and without I/O.
//!
//! The index gives the rules for the event's type; each one's `when` runs on
//! its compiled AST in a scope built once per event (the event is converted
//! to a Rhai value once, when it is decoded). A condition that errors counts
//! as not matched and is reported with its error.

use std::sync::Arc;

use rhai::{Dynamic, Scope};

use crate::event::Event;
use crate::rules::{CompiledScript, Rule, RuleSet, Trigger};
use crate::script::Sandbox;

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
    let mut scope: Option<Scope<'static>> = None;
    for rule in candidates(rule_set, event) {
        if !rule.enabled {
            continue;
        }
        let scope = scope.get_or_insert_with(|| expression_scope(rule_set.sandbox(), event, vars));
        match evaluate(rule_set.sandbox(), scope, &rule) {
            Ok(Some(key)) => result.matched.push(Matched { rule, key }),
            Ok(None) => {}
            Err(error) => result.failures.push(ConditionFailure { rule, error }),
        }
    }
    result
}

/// Says for every rule why it fired or did not.
pub fn explain_event(
    rule_set: &RuleSet,
    event: &Event,
    vars: &Dynamic,
) -> Vec<(Arc<Rule>, Verdict)> {
    let listening = candidates(rule_set, event);
    let mut scope = expression_scope(rule_set.sandbox(), event, vars);
    rule_set
        .rules()
        .iter()
        .map(|rule| {
            let verdict = if !listening.iter().any(|r| Arc::ptr_eq(r, rule)) {
                Verdict::TypeMismatch
            } else if !rule.enabled {
                Verdict::Disabled
            } else {
                match evaluate(rule_set.sandbox(), &mut scope, rule) {
                    Ok(Some(_)) => Verdict::Fired,
                    Ok(None) => Verdict::ConditionFalse,
                    Err(error) => Verdict::ConditionError(error),
                }
            };
            (rule.clone(), verdict)
        })
        .collect()
}

/// The rules listening for this event. A schedule event fires only its own rule.
fn candidates(rule_set: &RuleSet, event: &Event) -> Vec<Arc<Rule>> {
    if event.event_type == "schedule" {
        let target = event.top_level_str("rule");
        return rule_set
            .rules()
            .iter()
            .filter(|r| matches!(r.trigger, Trigger::Schedule(_)))
            .filter(|r| target.as_deref() == Some(&*r.name))
            .cloned()
            .collect();
    }
    let rules = rule_set.rules();
    rule_set
        .index()
        .candidates(&event.event_type)
        .iter()
        .map(|&position| rules[position as usize].clone())
        .collect()
}

fn expression_scope(sandbox: &Sandbox, event: &Event, vars: &Dynamic) -> Scope<'static> {
    sandbox.expression_scope(event.body(), &event.meta(), vars)
}

/// `Ok(Some(key))` when the rule fires (key empty when it has none),
/// `Ok(None)` when its condition is false.
fn evaluate(
    sandbox: &Sandbox,
    scope: &mut Scope<'static>,
    rule: &Rule,
) -> Result<Option<Option<String>>, String> {
    if let Some(condition) = &rule.condition {
        let value = eval(sandbox, scope, condition, "when")?;
        match value.as_bool() {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(type_name) => {
                return Err(format!(
                    "`when` must give true or false, it gave a value of type {type_name}"
                ));
            }
        }
    }
    match &rule.key {
        None => Ok(Some(None)),
        Some(key) => {
            let value = eval(sandbox, scope, key, "key")?;
            Ok(Some(Some(value.to_string())))
        }
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
        .map_err(|error| format!("`{what}` ({}): {error}", script.origin.path.display()))
}
