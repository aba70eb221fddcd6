//! Rule tests behind `zoomwire test`: each test under a rule's `tests:` fires
//! its event through that rule alone, with the recording effects answering
//! from the test's `given:` answers, and checks its `expect:` list.
//!
//! The run takes the same path as in the daemon (matching, executor,
//! sandbox, gateway); only the `Effects` implementation differs.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::effects::gateway::EffectRecord;
use crate::effects::recorder::{CannedAnswer, RecordingEffects, json_contains};
use crate::effects::{EffectError, EffectErrorKind, EffectName};
use crate::engine::attempt::RetryWaits;
use crate::engine::executor::Executor;
use crate::engine::journal::{RunRecord, RunStatus};
use crate::event::{Event, Source};
use crate::journal::memory::MemoryJournal;
use crate::rules::{Rule, RuleSet, RuleTest};
use crate::script::ScriptPool;
use crate::zoom::frame::decode_event_or_frame;

/// The result of one test.
#[derive(Debug, Clone)]
pub struct TestReport {
    pub rule: String,
    pub test: String,
    /// Empty when the test passed.
    pub failures: Vec<String>,
}

impl TestReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs every test of every rule in the set, in order, with `vars` as the
/// configured variables scripts and conditions read.
pub async fn run_tests(
    rule_set: &Arc<RuleSet>,
    pool: &Arc<ScriptPool>,
    vars: &rhai::Dynamic,
) -> Vec<TestReport> {
    let mut reports = Vec::new();
    for rule in rule_set.rules() {
        for test in &rule.tests {
            let failures = match run_test(rule_set, pool, vars, rule, test).await {
                Ok(failures) => failures,
                Err(error) => vec![error],
            };
            reports.push(TestReport {
                rule: rule.name.to_string(),
                test: test.spec.name.clone(),
                failures,
            });
        }
    }
    reports
}

async fn run_test(
    rule_set: &Arc<RuleSet>,
    pool: &Arc<ScriptPool>,
    vars: &rhai::Dynamic,
    rule: &Arc<Rule>,
    test: &RuleTest,
) -> Result<Vec<String>, String> {
    let event = load_event(&test.spec.event, &test.base_dir)?;
    let effects = Arc::new(RecordingEffects::new(canned_answers(&test.spec.given)?));
    for (key, value) in &test.spec.state {
        effects.set_state(&rule.name, key, value.clone());
    }
    let journal = Arc::new(MemoryJournal::default());
    let executor = Executor::new(journal.clone(), effects.clone(), pool.clone(), vars.clone())
        .with_retry_waits(RetryWaits::Skipped);
    let only_this_rule = Arc::new(rule_set.only(&rule.name));
    let outcome = executor
        .handle_event(&only_this_rule, event)
        .await
        .map_err(|e| e.to_string())?;
    let mut run = None;
    for ticket in outcome.runs {
        run = ticket.wait().await;
    }
    // A condition error is recorded as a skipped run with its error.
    let condition_error = journal
        .runs()
        .into_iter()
        .find(|r| {
            r.status == RunStatus::Skipped
                && r.error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("condition error"))
        })
        .and_then(|r| r.error);
    Ok(check_expectations(
        &test.spec.expect,
        run.as_ref(),
        condition_error,
        &effects,
        &rule.name,
    ))
}

/// Reads a test's event: a file next to the rule (event or frame) or inline.
pub fn load_event(event: &Value, base_dir: &Path) -> Result<Event, String> {
    match event {
        Value::String(file) => {
            let path = base_dir.join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read event {}: {e}", path.display()))?;
            decode_event_or_frame(&text, Source::Test)
                .map_err(|e| format!("event {}: {e}", path.display()))
        }
        inline => Event::from_value(inline, Source::Test).map_err(|e| format!("inline event: {e}")),
    }
}

fn canned_answers(given: &[Map<String, Value>]) -> Result<Vec<CannedAnswer>, String> {
    given
        .iter()
        .map(|item| {
            let (effect, args) = item
                .iter()
                .find(|(key, _)| key.contains('.'))
                .ok_or("a `given` item names no effect")?;
            let answer = match (item.get("returns"), item.get("fails")) {
                (Some(value), None) => Ok(value.clone()),
                (None, Some(failure)) => Err(canned_error(effect, failure)),
                _ => return Err(format!("`given` for {effect} needs `returns` or `fails`")),
            };
            Ok(CannedAnswer {
                effect: effect.clone(),
                args: args.clone(),
                answer,
            })
        })
        .collect()
}

/// `fails: "message"` or `fails: {kind: transient, message, code, status}`.
fn canned_error(effect: &str, failure: &Value) -> EffectError {
    let kind = match failure["kind"].as_str() {
        Some("transient") => EffectErrorKind::Transient,
        Some("timeout") => EffectErrorKind::Timeout,
        _ => EffectErrorKind::Permanent,
    };
    let message = failure
        .as_str()
        .or_else(|| failure["message"].as_str())
        .unwrap_or("canned failure");
    let mut error = EffectError::new(effect, kind, message);
    error.code = failure.get("code").cloned();
    error.status = failure["status"].as_u64().map(|s| s as u16);
    error
}

/// Effects that change something: reads (`zoom.get`, `zoom.paginate`,
/// `state.get`) and the clock do not count for `no_effects`.
fn is_outward(record: &EffectRecord) -> bool {
    !matches!(
        EffectName::from_name(&record.name),
        Some(
            EffectName::ZoomGet | EffectName::ZoomPaginate | EffectName::StateGet | EffectName::Now
        )
    )
}

fn check_expectations(
    expect: &[Map<String, Value>],
    run: Option<&RunRecord>,
    condition_error: Option<String>,
    effects: &RecordingEffects,
    rule: &str,
) -> Vec<String> {
    let mut failures = Vec::new();
    let expects_failure = expect.iter().any(|e| e.contains_key("fails"));
    let expects_not_fired = expect
        .iter()
        .any(|e| e.get("fired") == Some(&Value::Bool(false)));
    let Some(run) = run else {
        if !expects_not_fired && !expect.iter().all(|e| e.contains_key("no_effects")) {
            let why =
                condition_error.unwrap_or_else(|| "its type or condition did not match".into());
            failures.push(format!("the rule did not fire: {why}"));
        }
        return failures;
    };
    if run.status != RunStatus::Succeeded && !expects_failure {
        failures.push(format!(
            "the run {}: {}",
            run.status.as_str(),
            run.error.as_deref().unwrap_or("no error recorded")
        ));
    }
    let outward: Vec<&EffectRecord> = run.effects.iter().filter(|r| is_outward(r)).collect();
    let mut cursor = 0;
    for expectation in expect {
        let Some((key, want)) = expectation.iter().next() else {
            continue;
        };
        match key.as_str() {
            "no_effects" => check_no_effects(want, &outward, &mut failures),
            "fired" => {
                if want.as_bool() == Some(false) {
                    failures.push("expected the rule not to fire, but it ran".into());
                }
            }
            "fails" => check_failure(run, want, &mut failures),
            "state" => check_state(want, effects, rule, &mut failures),
            effect => {
                let found = outward[cursor.min(outward.len())..]
                    .iter()
                    .position(|r| r.name == effect && json_contains(&r.args, want));
                match found {
                    Some(offset) => cursor += offset + 1,
                    None => failures.push(format!(
                        "expected {effect} {want}, effects were: {}",
                        list_effects(&outward)
                    )),
                }
            }
        }
    }
    failures
}

/// `no_effects: true` (nothing that changes anything) or a list of effect names that must not appear.
fn check_no_effects(want: &Value, outward: &[&EffectRecord], failures: &mut Vec<String>) {
    let offending: Vec<&EffectRecord> = match want {
        Value::Bool(false) => return,
        Value::Array(names) => outward
            .iter()
            .filter(|r| names.iter().any(|n| n.as_str() == Some(r.name.as_str())))
            .copied()
            .collect(),
        _ => outward.to_vec(),
    };
    if !offending.is_empty() {
        failures.push(format!(
            "expected no effects {want}, got: {}",
            list_effects(&offending)
        ));
    }
}

fn check_failure(run: &RunRecord, want: &Value, failures: &mut Vec<String>) {
    let failed = matches!(run.status, RunStatus::Failed | RunStatus::Dead);
    let wanted = want.as_bool() != Some(false);
    if failed != wanted {
        failures.push(if wanted {
            "expected the run to fail, it succeeded".into()
        } else {
            format!(
                "expected success, the run failed: {}",
                run.error.as_deref().unwrap_or_default()
            )
        });
    } else if let Some(text) = want.as_str() {
        let error = run.error.as_deref().unwrap_or_default();
        if !error.contains(text) {
            failures.push(format!(
                "expected an error containing {text:?}, got: {error}"
            ));
        }
    }
}

fn check_state(want: &Value, effects: &RecordingEffects, rule: &str, failures: &mut Vec<String>) {
    let Some(entries) = want.as_object() else {
        failures.push("`state` expects a mapping of keys to values".into());
        return;
    };
    for (key, value) in entries {
        let actual = effects.state(rule, key).unwrap_or(Value::Null);
        if !json_contains(&actual, value) || (value.is_null() != actual.is_null()) {
            failures.push(format!("expected state {key} = {value}, found {actual}"));
        }
    }
}

fn list_effects(effects: &[&EffectRecord]) -> String {
    if effects.is_empty() {
        return "none".into();
    }
    effects
        .iter()
        .map(|r| format!("{}. {} {}", r.seq, r.name, r.args))
        .collect::<Vec<_>>()
        .join("; ")
}
