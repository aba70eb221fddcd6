//! `zoomwire test`: runs every rule's `tests:` under the configured sandbox
//! limits and `vars`, one line per test, and ends with `N passed, N failed`.

use std::process::ExitCode;

use super::rules_args::{RuleArgs, print_rule_errors};
use super::{CommandResult, EXIT_FAILED};
use zoomwire_engine::rule_tests::run_tests;

pub async fn run(args: &RuleArgs) -> CommandResult {
    let loaded = args.load_settings()?;
    let rule_set = match loaded.load_rules() {
        Ok(rule_set) => rule_set,
        Err(errors) => {
            print_rule_errors(&errors);
            println!("0 passed, {} failed", errors.len());
            return Ok(ExitCode::from(EXIT_FAILED));
        }
    };
    let reports = run_tests(&rule_set, &loaded.script_pool(), &loaded.vars()).await;
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
