//! `zoomwire check`: load every rule and script under the configured sandbox
//! limits and list every problem, each as `path:line:col: message`: what
//! loading refuses, a host function a script calls without its capability
//! (errors, exit 1), and an `on:` type that is not one of Zoom's (a warning
//! with the nearest known type; warnings alone leave the exit status at 0).

use std::process::ExitCode;

use super::rules_args::{RuleArgs, print_rule_errors};
use super::{CommandResult, EXIT_FAILED};
use crate::rules::RuleSet;
use crate::rules::lint::{Finding, Severity, lint_rule_set};

pub fn run(args: &RuleArgs) -> CommandResult {
    let loaded = args.load_settings()?;
    let rule_set = match loaded.load_rules() {
        Ok(rule_set) => rule_set,
        Err(errors) => {
            print_rule_errors(&errors);
            return Ok(ExitCode::from(EXIT_FAILED));
        }
    };
    let findings = lint_rule_set(&rule_set, &loaded.sources.scripts_dir);
    for finding in &findings {
        eprintln!("{finding}");
    }
    let errors = count(&findings, Severity::Error);
    if errors > 0 {
        eprintln!("{}", plural(errors, "error") + " found");
        return Ok(ExitCode::from(EXIT_FAILED));
    }
    println!(
        "{}",
        summary(&rule_set, count(&findings, Severity::Warning))
    );
    Ok(ExitCode::SUCCESS)
}

fn count(findings: &[Finding], severity: Severity) -> usize {
    findings.iter().filter(|f| f.severity == severity).count()
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// `ok: 3 rules (1 scheduled, 8 tests) in 3 files[, 1 warning]`
fn summary(rule_set: &RuleSet, warnings: usize) -> String {
    let schedules = rule_set
        .rules()
        .iter()
        .filter(|r| r.schedule().is_some())
        .count();
    let tests: usize = rule_set.rules().iter().map(|r| r.tests.len()).sum();
    let mut line = format!(
        "ok: {} ({} scheduled, {}) in {}",
        plural(rule_set.rules().len(), "rule"),
        schedules,
        plural(tests, "test"),
        plural(rule_set.files().len(), "file")
    );
    if warnings > 0 {
        line.push_str(&format!(", {}", plural(warnings, "warning")));
    }
    line
}
