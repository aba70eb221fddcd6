//! `zoomwire test`: runs every rule's `tests:`, one line per test, and ends
//! with `N passed, N failed`.

use std::process::ExitCode;

use super::rules_args::{RuleArgs, configured_limits, load_rules, print_rule_errors, script_pool};
use super::{CommandResult, EXIT_FAILED};
use zoomwire_engine::testing::run_tests;

pub async fn run(args: &RuleArgs) -> CommandResult {
    let limits = configured_limits()?;
    let rule_set = match load_rules(args, &limits) {
        Ok(rule_set) => rule_set,
        Err(errors) => {
            print_rule_errors(&errors);
            println!("0 passed, {} failed", errors.len());
            return Ok(ExitCode::from(EXIT_FAILED));
        }
    };
    let reports = run_tests(&rule_set, &script_pool(&limits)).await;
    let mut failed = 0;
    for report in &reports {
        if report.passed() {
            println!("ok   {} › {}", report.rule, report.test);
        } else {
            failed += 1;
            println!("FAIL {} › {}", report.rule, report.test);
            for failure in &report.failures {
                println!("       {failure}");
            }
        }
    }
    println!("{} passed, {} failed", reports.len() - failed, failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}
