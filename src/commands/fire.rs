//! `zoomwire fire`: one event (a bare Zoom event or a WebSocket frame)
//! through the rules, printing each run with its outcome and effects. The
//! rules run under the configured sandbox limits and `vars`, as in the daemon.

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;

use super::rules_args::{RuleArgs, print_rule_errors};
use super::{CommandError, CommandResult, EXIT_FAILED};
use zoomwire_engine::effects::Effects;
use zoomwire_engine::engine::executor::Executor;
use zoomwire_engine::engine::journal::RunStatus;
use zoomwire_engine::engine::matcher::{Verdict, explain_event};
use zoomwire_engine::event::Source;
use zoomwire_engine::journal::memory::MemoryJournal;
use zoomwire_engine::rules::{RuleSet, Trigger};
use zoomwire_engine::terminal::format_run;
use zoomwire_engine::zoom::frame::decode_event_or_frame;

pub struct FireArgs {
    /// A file holding the event, or `-` for standard input.
    pub input: String,
    pub dry_run: bool,
    pub explain: bool,
    pub rules: RuleArgs,
}

pub async fn run(args: FireArgs, effects: Arc<dyn Effects>) -> CommandResult {
    let text = read_input(&args.input)?;
    let event = decode_event_or_frame(&text, Source::Fire)
        .map_err(|e| CommandError::Usage(format!("{}: {e}", args.input)))?;
    let loaded = args.rules.load_settings()?;
    let rule_set = loaded.load_rules().map_err(|errors| {
        print_rule_errors(&errors);
        CommandError::Usage("the rules did not load".into())
    })?;
    let vars = loaded.vars();
    if args.explain {
        print_explanation(&rule_set, &event, &vars);
    }
    let executor = Executor::new(
        Arc::new(MemoryJournal::default()),
        effects,
        loaded.script_pool(),
        vars,
    );
    println!(
        "event {} ({}){}",
        event.event_type,
        event.id,
        if args.dry_run {
            ", dry run: effects recorded, not performed"
        } else {
            ""
        }
    );
    let outcome = executor
        .handle_event(&rule_set, event)
        .await
        .map_err(anyhow::Error::from)?;
    if outcome.runs.is_empty() {
        println!("no rule fired");
    }
    let mut failed = false;
    for ticket in outcome.runs {
        if let Some(run) = ticket.wait().await {
            failed |= matches!(run.status, RunStatus::Failed | RunStatus::Dead);
            print!("{}", format_run(&run));
        }
    }
    Ok(if failed {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

fn read_input(input: &str) -> Result<String, CommandError> {
    if input == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CommandError::Usage(format!("cannot read standard input: {e}")))?;
        Ok(text)
    } else {
        std::fs::read_to_string(input)
            .map_err(|e| CommandError::Usage(format!("cannot read {input}: {e}")))
    }
}

fn print_explanation(
    rule_set: &RuleSet,
    event: &zoomwire_engine::event::Event,
    vars: &rhai::Dynamic,
) {
    for (rule, verdict) in explain_event(rule_set, event, vars) {
        let why = match verdict {
            Verdict::Fired => "fires".to_string(),
            Verdict::Disabled => "does not fire: disabled".to_string(),
            Verdict::ConditionFalse => "does not fire: condition is false".to_string(),
            Verdict::ConditionError(error) => format!("does not fire: condition error: {error}"),
            Verdict::TypeMismatch => match &rule.trigger {
                Trigger::Events(patterns) => format!(
                    "does not fire: type {} does not match {}",
                    event.event_type,
                    patterns
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Trigger::Schedule(schedule) => {
                    format!("does not fire: scheduled rule ({})", schedule.expression)
                }
            },
        };
        println!("explain {}: {why}", rule.name);
    }
}
