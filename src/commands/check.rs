//! `zoomwire check`: load every rule and script and list every error.

use std::process::ExitCode;

use super::rules_args::{RuleArgs, configured_limits, load_rules, print_rule_errors};
use super::{CommandResult, EXIT_FAILED};

pub fn run(args: &RuleArgs) -> CommandResult {
    match load_rules(args, &configured_limits()?) {
        Ok(rule_set) => {
            let schedules = rule_set
                .rules()
                .iter()
                .filter(|r| r.schedule().is_some())
                .count();
            let tests: usize = rule_set.rules().iter().map(|r| r.tests.len()).sum();
            println!(
                "ok: {} rules ({} scheduled, {} tests) in {} files",
                rule_set.rules().len(),
                schedules,
                tests,
                rule_set.files().len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            print_rule_errors(&errors);
            Ok(ExitCode::from(EXIT_FAILED))
        }
    }
}
