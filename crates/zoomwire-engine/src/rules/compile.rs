//! Turning checked rule sources into a [`RuleSet`]: required keys, patterns,
//! schedules, capabilities and limits validated; `when`, `key` and `do`
//! compiled by the sandbox, with Rhai's positions moved into the YAML file.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::load::{RuleSource, find_rule_files, read_rule_file};
use super::spec::{ActionSpec, Mode};
use super::{
    CompiledScript, EventPattern, RetryPolicy, Rule, RuleError, RuleSet, RuleSources, RuleTest,
    ScriptOrigin, Trigger,
};
use crate::effects::{Capability, CapabilitySet};
use crate::rules::yaml::Position;
use crate::schedule::CronSchedule;
use crate::script::event_paths::EventPaths;
use crate::script::last_effect::last_effects;
use crate::script::{Sandbox, SandboxLimits, ScriptModules};

/// Default `max_runs`.
pub const DEFAULT_MAX_RUNS: u32 = 10;
/// Default `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `timeout` a rule may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Loads and compiles every rule under `sources`, or returns every error found.
pub fn load_rule_set(
    sources: &RuleSources,
    limits: &SandboxLimits,
) -> Result<RuleSet, Vec<RuleError>> {
    let mut errors = Vec::new();
    let modules = if !sources.scripts_dir.exists() {
        Ok(ScriptModules::empty())
    } else {
        ScriptModules::load(&sources.scripts_dir, limits)
    };
    let modules = match modules {
        Ok(modules) => modules,
        Err(module_errors) => {
            errors.extend(module_errors.into_iter().map(|e| RuleError {
                path: e.path,
                position: Position {
                    line: e.line,
                    column: e.column,
                },
                rule: None,
                message: e.message,
            }));
            ScriptModules::empty()
        }
    };
    let sandbox = Arc::new(Sandbox::new(limits.clone(), modules));
    let files = match find_rule_files(&sources.paths) {
        Ok(files) => files,
        Err(error) => {
            errors.push(error);
            return Err(errors);
        }
    };
    let mut rules: Vec<Arc<Rule>> = Vec::new();
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for file in &files {
        let (rule_sources, mut file_errors) = read_rule_file(file);
        errors.append(&mut file_errors);
        for source in rule_sources {
            match compile_rule(&source, &sandbox, &sources.scripts_dir) {
                // Its invalid keys were reported by the loader.
                Ok(_) if !source.invalid_keys.is_empty() => {}
                Ok(rule) => {
                    if let Some(first) = names.get(&*rule.name) {
                        errors.push(source.error_at(
                            "name",
                            format!("duplicate rule name, first defined in {}", first.display()),
                        ));
                    } else {
                        names.insert(rule.name.to_string(), source.path.clone());
                        rules.push(Arc::new(rule));
                    }
                }
                Err(mut rule_errors) => errors.append(&mut rule_errors),
            }
        }
    }
    if errors.is_empty() {
        Ok(RuleSet::new(rules, sandbox, files))
    } else {
        errors.sort_by(|a, b| (&a.path, a.position).cmp(&(&b.path, b.position)));
        Err(errors)
    }
}

/// Compiles one rule, reporting every problem it has.
pub fn compile_rule(
    source: &RuleSource,
    sandbox: &Sandbox,
    scripts_dir: &Path,
) -> Result<Rule, Vec<RuleError>> {
    let mut errors = Vec::new();
    let spec = &source.spec;
    let name = match &source.name {
        Some(name) if !name.trim().is_empty() => name.clone(),
        _ => {
            errors.push(source.error_at("name", "a rule in a list of rules needs a `name`"));
            String::new()
        }
    };
    let trigger = compile_trigger(source, &mut errors);
    let condition = spec
        .when
        .as_ref()
        .and_then(|text| compile_expression(source, "when", text, sandbox, &mut errors));
    let fast_condition = condition
        .as_ref()
        .and(spec.when.as_ref())
        .and_then(|text| super::fast::FastCondition::compile_with_limits(text, sandbox.limits()));
    let key = spec
        .key
        .as_ref()
        .and_then(|text| compile_expression(source, "key", text, sandbox, &mut errors));
    let (action, script_file) = compile_action(source, sandbox, scripts_dir, &mut errors);
    let capabilities = compile_capabilities(source, &mut errors);
    let idempotent = compile_idempotent(source, &mut errors);
    let account = compile_account(source, &mut errors);
    let max_runs = spec.max_runs.unwrap_or(DEFAULT_MAX_RUNS);
    if max_runs == 0 {
        errors.push(source.error_at("max_runs", "`max_runs` must be at least 1"));
    }
    let timeout = spec.timeout.map(|t| t.0).unwrap_or(DEFAULT_TIMEOUT);
    if timeout.is_zero() || timeout > MAX_TIMEOUT {
        errors.push(source.error_at("timeout", "`timeout` must be more than 0 and at most 1h"));
    }
    let retry = compile_retry(source, &mut errors);
    let tests = compile_tests(source, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let (Some(trigger), Some(action)) = (trigger, action) else {
        // Only when `on`/`schedule`/`do` were invalid, which the loader reported.
        return Err(Vec::new());
    };
    let mode = spec.mode.unwrap_or(match trigger {
        Trigger::Schedule(_) => Mode::Single,
        Trigger::Events(_) => Mode::Parallel,
    });
    if spec.max_queued.is_some() && matches!(mode, Mode::Single | Mode::Restart) {
        let error = format!(
            "`max_queued` applies to modes parallel and queued; mode {mode} never lets a run wait behind another"
        );
        return Err(vec![source.error_at("max_queued", &error)]);
    }
    let trigger_key = match trigger {
        Trigger::Schedule(_) => "schedule",
        Trigger::Events(_) => "on",
    };
    Ok(Rule {
        name: name.into(),
        description: spec.description.clone(),
        path: source.path.clone(),
        position: source.position,
        trigger_position: value_origin(source, trigger_key).start,
        trigger,
        condition,
        fast_condition,
        key,
        action,
        script_file,
        capabilities,
        idempotent,
        account,
        mode,
        max_runs,
        max_queued: spec.max_queued,
        timeout,
        retry,
        enabled: spec.enabled.unwrap_or(true),
        tests,
    })
}

fn compile_trigger(source: &RuleSource, errors: &mut Vec<RuleError>) -> Option<Trigger> {
    let spec = &source.spec;
    match (&spec.on, &spec.schedule) {
        (Some(_), Some(_)) => {
            errors.push(
                source.error_at("schedule", "a rule has either `on` or `schedule`, not both"),
            );
            None
        }
        (None, None)
            if source
                .invalid_keys
                .iter()
                .any(|k| k == "on" || k == "schedule") =>
        {
            None
        }
        (None, None) => {
            errors.push(source.error_at(
                "on",
                "a rule needs `on` (event types) or `schedule` (a cron expression)",
            ));
            None
        }
        (Some(on), None) => {
            if spec.timezone.is_some() || spec.catch_up.is_some() {
                errors.push(source.error_at(
                    "on",
                    "`timezone` and `catch_up` apply to `schedule` rules only",
                ));
            }
            let patterns: Vec<_> = on
                .clone()
                .into_vec()
                .iter()
                .filter_map(|text| match EventPattern::parse(text) {
                    Ok(pattern) => Some(pattern),
                    Err(message) => {
                        errors.push(source.error_at("on", message));
                        None
                    }
                })
                .collect();
            if patterns.is_empty() && errors.is_empty() {
                errors.push(source.error_at("on", "`on` lists no event types"));
            }
            Some(Trigger::Events(patterns))
        }
        (None, Some(expression)) => {
            match CronSchedule::parse(
                expression,
                spec.timezone.as_deref(),
                spec.catch_up.unwrap_or(false),
            ) {
                Ok(schedule) => Some(Trigger::Schedule(Box::new(schedule))),
                Err(message) => {
                    let key = if message.contains("time zone") {
                        "timezone"
                    } else {
                        "schedule"
                    };
                    errors.push(source.error_at(key, message));
                    None
                }
            }
        }
    }
}

/// A compile error's position in the file its script came from. Rhai may
/// place an error past the script's last character (at its end, after the
/// line break a YAML `|` block adds, or on a line of a quoted value's `\n`),
/// which can be past the rule file's end: such a position becomes the end
/// of the file.
fn locate_in_file(
    source: &RuleSource,
    origin: &ScriptOrigin,
    line: usize,
    column: usize,
) -> Position {
    let position = origin.locate(line, column);
    if origin.path != source.path {
        return position; // a script file, read whole
    }
    // Lines as YAML counts them: `\r\n`, `\r` and `\n` each end one.
    let text = source.text.replace("\r\n", "\n").replace('\r', "\n");
    let last_line = text.matches('\n').count() + 1;
    if position.line <= last_line {
        return position;
    }
    let last_text = text.rsplit('\n').next().unwrap_or_default();
    Position {
        line: last_line,
        column: last_text.chars().count() + 1,
    }
}

/// A hint when a plain (unquoted) YAML value was cut short by ` #`, which
/// YAML reads as the start of a comment: Rhai's `#{...}` maps trip on it.
fn comment_hint(source: &RuleSource, origin: &ScriptOrigin) -> &'static str {
    let Some(line) = source.text.lines().nth(origin.start.line.saturating_sub(1)) else {
        return "";
    };
    let rest: String = line
        .chars()
        .skip(origin.start.column.saturating_sub(1))
        .collect();
    let plain = !rest.starts_with(['"', '\'', '|', '>']);
    if plain && rest.contains(" #") && origin.path == source.path {
        " (in an unquoted YAML value ` #` starts a comment, which cut the script short: quote it or use a `|` block)"
    } else {
        ""
    }
}

/// Where the text of `key`'s value starts: past an opening quote.
fn value_origin(source: &RuleSource, key: &str) -> ScriptOrigin {
    let mut start = source
        .value_positions
        .get(key)
        .copied()
        .unwrap_or(source.position);
    let opening = source
        .text
        .lines()
        .nth(start.line.saturating_sub(1))
        .and_then(|line| line.chars().nth(start.column.saturating_sub(1)));
    if matches!(opening, Some('"' | '\'')) {
        start.column += 1;
    }
    ScriptOrigin {
        path: source.path.clone(),
        start,
    }
}

fn compile_expression(
    source: &RuleSource,
    key: &str,
    text: &str,
    sandbox: &Sandbox,
    errors: &mut Vec<RuleError>,
) -> Option<CompiledScript> {
    let origin = value_origin(source, key);
    match sandbox.compile_expression(text) {
        Ok(ast) => Some(CompiledScript {
            ast: Arc::new(ast),
            origin,
            event_paths: Arc::new(EventPaths::Whole),
            last_effects: Arc::new([]),
        }),
        Err(error) => {
            errors.push(RuleError {
                path: source.path.clone(),
                position: locate_in_file(source, &origin, error.line, error.column),
                rule: source.name.clone(),
                message: format!(
                    "`{key}`: {}{}",
                    error.message,
                    comment_hint(source, &origin)
                ),
            });
            None
        }
    }
}

fn compile_action(
    source: &RuleSource,
    sandbox: &Sandbox,
    scripts_dir: &Path,
    errors: &mut Vec<RuleError>,
) -> (Option<CompiledScript>, Option<PathBuf>) {
    let (text, origin, file) = match &source.spec.action {
        None if source.invalid_keys.iter().any(|k| k == "do") => return (None, None),
        None => {
            errors.push(source.error_at(
                "do",
                "a rule needs `do` (a Rhai script, or {script: file.rhai})",
            ));
            return (None, None);
        }
        Some(ActionSpec::Inline(text)) => (text.clone(), value_origin(source, "do"), None),
        Some(ActionSpec::Script(script)) => match read_script_file(scripts_dir, &script.script) {
            Ok((path, text)) => {
                let origin = ScriptOrigin {
                    path: path.clone(),
                    start: Position { line: 1, column: 1 },
                };
                (text, origin, Some(path))
            }
            Err(message) => {
                errors.push(source.error_at("do", message));
                return (None, None);
            }
        },
    };
    match sandbox.compile_script(&text) {
        Ok(ast) => (
            Some(CompiledScript {
                event_paths: Arc::new(EventPaths::of_script(&ast)),
                last_effects: last_effects(&ast),
                ast: Arc::new(ast),
                origin,
            }),
            file,
        ),
        Err(error) => {
            errors.push(RuleError {
                path: origin.path.clone(),
                position: locate_in_file(source, &origin, error.line, error.column),
                rule: source.name.clone(),
                message: format!("`do`: {}{}", error.message, comment_hint(source, &origin)),
            });
            (None, None)
        }
    }
}

/// Reads `name` from the scripts folder, refusing paths that leave it.
fn read_script_file(scripts_dir: &Path, name: &str) -> Result<(PathBuf, String), String> {
    let relative = Path::new(name);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "script `{name}` must be a path inside the scripts folder, without `..` or a leading `/`"
        ));
    }
    let path = scripts_dir.join(relative);
    let inside = match (path.canonicalize(), scripts_dir.canonicalize()) {
        (Ok(file), Ok(dir)) => file.starts_with(dir),
        _ => {
            return Err(format!(
                "script file `{name}` not found in {}",
                scripts_dir.display()
            ));
        }
    };
    if !inside {
        return Err(format!(
            "script `{name}` resolves outside the scripts folder"
        ));
    }
    std::fs::read_to_string(&path)
        .map(|text| (path.clone(), text))
        .map_err(|e| format!("cannot read script `{}`: {e}", path.display()))
}

/// `account:` names a configured account; whether it exists is checked when
/// a call uses it (rules load without the settings).
fn compile_account(source: &RuleSource, errors: &mut Vec<RuleError>) -> Option<Arc<str>> {
    let name = source.spec.account.as_deref()?;
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        errors.push(source.error_at(
            "account",
            format!("`account` must be the name of a configured zoom account (letters, digits, `-`, `_`), not `{name}`"),
        ));
        return None;
    }
    Some(Arc::from(name))
}

fn compile_capabilities(source: &RuleSource, errors: &mut Vec<RuleError>) -> CapabilitySet {
    let entries = source.spec.allow.clone().unwrap_or_default();
    let capabilities = entries
        .iter()
        .filter_map(|entry| match Capability::parse(entry) {
            Ok(capability) => Some(capability),
            Err(error) => {
                errors.push(source.error_at("allow", error.to_string()));
                None
            }
        });
    CapabilitySet::new(capabilities.collect::<Vec<_>>())
}

/// `idempotent:`: names of effects, each one a script can call.
fn compile_idempotent(source: &RuleSource, errors: &mut Vec<RuleError>) -> Vec<String> {
    let entries = source.spec.idempotent.clone().unwrap_or_default();
    for entry in &entries {
        if !crate::effects::EFFECT_NAMES.contains(&entry.as_str()) {
            errors.push(source.error_at(
                "idempotent",
                format!(
                    "unknown effect `{entry}` in `idempotent`, expected one of: {}",
                    crate::effects::EFFECT_NAMES.join(", ")
                ),
            ));
        }
    }
    entries
}

fn compile_retry(source: &RuleSource, errors: &mut Vec<RuleError>) -> RetryPolicy {
    let Some(retry) = &source.spec.retry else {
        return RetryPolicy::NONE;
    };
    if retry.attempts == 0 || retry.attempts > 100 {
        errors.push(source.error_at(
            "retry",
            "`retry.attempts` counts every attempt: from 1 to 100",
        ));
    }
    let policy = RetryPolicy {
        attempts: retry.attempts.max(1),
        backoff: retry
            .backoff
            .map(|d| d.0)
            .unwrap_or(RetryPolicy::NONE.backoff),
        max_backoff: retry
            .max_backoff
            .map(|d| d.0)
            .unwrap_or(RetryPolicy::NONE.max_backoff),
    };
    if policy.max_backoff < policy.backoff {
        errors.push(source.error_at(
            "retry",
            "`retry.max_backoff` is shorter than `retry.backoff`",
        ));
    }
    policy
}

/// Keys an expectation may have besides effect names.
const EXPECT_KEYS: &[&str] = &["no_effects", "fails", "fired", "state"];

fn compile_tests(source: &RuleSource, errors: &mut Vec<RuleError>) -> Vec<RuleTest> {
    let base_dir = source
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let position = source
        .value_positions
        .get("tests")
        .copied()
        .unwrap_or(source.position);
    let mut tests = Vec::new();
    for test in source.spec.tests.clone().unwrap_or_default() {
        let mut error = |message: String| {
            errors.push(source.error_at("tests", format!("test \"{}\": {message}", test.name)));
        };
        match &test.event {
            serde_json::Value::String(file) => {
                if !base_dir.join(file).is_file() {
                    error(format!(
                        "event file `{file}` not found next to the rule file"
                    ));
                }
            }
            serde_json::Value::Object(_) => {}
            _ => error("`event` is a file path or an event mapping".into()),
        }
        for given in &test.given {
            let effects: Vec<_> = given.keys().filter(|k| k.contains('.')).collect();
            let answers = given
                .keys()
                .filter(|k| *k == "returns" || *k == "fails")
                .count();
            if effects.len() != 1 || answers != 1 || given.len() != 2 {
                error("each `given` item names one effect (such as `zoom.get: {path: ...}`) and `returns` or `fails`".into());
            }
        }
        for expectation in &test.expect {
            if expectation.len() != 1 {
                error("each `expect` item has exactly one key".into());
            } else if let Some(key) = expectation.keys().next()
                && !key.contains('.')
                && !EXPECT_KEYS.contains(&key.as_str())
            {
                error(format!(
                    "unknown expectation `{key}`, expected an effect name (such as slack.post), no_effects, fails, fired or state"
                ));
            }
        }
        tests.push(RuleTest {
            spec: test,
            base_dir: base_dir.clone(),
            position,
        });
    }
    tests
}

/// The rules of one YAML file's text, as the daemon loads them (with the
/// default limits); the folder holding the file lives as long as the guard.
#[cfg(test)]
pub(crate) fn rules_of_yaml(yaml: &str) -> (RuleSet, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), yaml).unwrap();
    let sources = RuleSources {
        paths: vec![dir.path().join("rules.yaml")],
        scripts_dir: dir.path().join("scripts"),
    };
    let rules = load_rule_set(&sources, &SandboxLimits::default()).unwrap();
    (rules, dir)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::rules::load::parse_rule_file;

    fn first_error(text: &str) -> RuleError {
        let sandbox = Sandbox::new(SandboxLimits::default(), ScriptModules::empty());
        let (sources, errors) = parse_rule_file(Path::new("rules/r.yaml"), text);
        assert!(errors.is_empty(), "{errors:?}");
        compile_rule(&sources[0], &sandbox, Path::new("scripts")).unwrap_err()[0].clone()
    }

    /// Found by fuzzing (`fuzz/regressions/rule_loader/`): a `|` block cut
    /// short at the end of a file without a final line break was reported
    /// on the line after the last.
    #[test]
    fn an_error_at_the_end_of_the_script_points_at_the_end_of_the_file() {
        let error = first_error("name: x\non: meeting.ended\ndo: |\n  let m = #{ user");
        assert_eq!(
            error.position,
            Position {
                line: 4,
                column: 18
            },
            "{error}"
        );
        assert!(error.message.contains("Expecting ':'"), "{error}");
        let error = first_error("name: x\non: meeting.ended\ndo: |\n  let m = #{ user\n");
        assert_eq!(error.position.line, 5, "{error}");
    }

    #[test]
    fn an_error_on_a_line_of_a_quoted_value_stays_in_the_file() {
        let error = first_error("name: x\non: meeting.ended\ndo: \"let a = 1;\\n\\n\\n\\n a +\"\n");
        assert_eq!(error.position, Position { line: 4, column: 1 }, "{error}");
    }
}
