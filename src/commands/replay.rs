//! `zoomwire replay`: a recorded stream of events (one JSON event or frame
//! per line) through the rules, under the configured sandbox limits and
//! `vars`, with a progress bar on a terminal and a summary at the end.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;
use std::sync::Arc;

use super::rules_args::{RuleArgs, print_rule_errors};
use super::{CommandError, CommandResult, EXIT_FAILED};
use zoomwire_engine::effects::Effects;
use zoomwire_engine::engine::executor::Executor;
use zoomwire_engine::engine::journal::RunStatus;
use zoomwire_engine::event::Source;
use zoomwire_engine::journal::memory::MemoryJournal;
use zoomwire_engine::zoom::frame::decode_event_or_frame;

pub struct ReplayArgs {
    pub input: std::path::PathBuf,
    pub dry_run: bool,
    pub rules: RuleArgs,
}

/// Counts for the summary.
#[derive(Debug, Default)]
struct Summary {
    events: usize,
    duplicates: usize,
    bad_lines: Vec<String>,
    runs: BTreeMap<&'static str, usize>,
    failures: Vec<String>,
}

pub async fn run(args: ReplayArgs, effects: Arc<dyn Effects>) -> CommandResult {
    let file = std::fs::File::open(&args.input)
        .map_err(|e| CommandError::Usage(format!("cannot read {}: {e}", args.input.display())))?;
    let lines: Vec<String> = std::io::BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|e| CommandError::Usage(format!("cannot read {}: {e}", args.input.display())))?;
    let loaded = args.rules.load_settings()?;
    let rule_set = loaded.load_rules().map_err(|errors| {
        print_rule_errors(&errors);
        CommandError::Usage("the rules did not load".into())
    })?;
    let executor = Executor::new(
        Arc::new(MemoryJournal::default()),
        effects,
        loaded.script_pool(),
        loaded.vars(),
    );
    let progress = progress_bar(lines.len() as u64);
    let mut summary = Summary::default();
    let mut tickets = Vec::new();
    for (number, line) in lines.iter().enumerate() {
        progress.inc(1);
        if line.trim().is_empty() {
            continue;
        }
        let event = match decode_event_or_frame(line, Source::Replay) {
            Ok(event) => event,
            Err(error) => {
                summary
                    .bad_lines
                    .push(format!("{}:{}: {error}", args.input.display(), number + 1));
                continue;
            }
        };
        summary.events += 1;
        let outcome = executor
            .handle_event(&rule_set, event)
            .await
            .map_err(anyhow::Error::from)?;
        summary.duplicates += usize::from(outcome.duplicate);
        tickets.extend(outcome.runs);
    }
    for ticket in tickets {
        if let Some(run) = ticket.wait().await {
            *summary.runs.entry(run.status.as_str()).or_default() += 1;
            if matches!(run.status, RunStatus::Failed | RunStatus::Dead) {
                summary.failures.push(format!(
                    "{} ({}): {}",
                    run.rule,
                    run.event_id,
                    run.error.unwrap_or_default()
                ));
            }
        }
    }
    progress.finish_and_clear();
    print_summary(&summary, args.dry_run);
    Ok(
        if summary.failures.is_empty() && summary.bad_lines.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_FAILED)
        },
    )
}

fn progress_bar(length: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(length);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events {per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

fn print_summary(summary: &Summary, dry_run: bool) {
    for bad in &summary.bad_lines {
        eprintln!("skipped {bad}");
    }
    for failure in &summary.failures {
        println!("✗ {failure}");
    }
    let runs: Vec<String> = summary
        .runs
        .iter()
        .map(|(status, n)| format!("{n} {status}"))
        .collect();
    let total: usize = summary.runs.values().sum();
    println!(
        "{} events ({} duplicates, {} unreadable lines), {} runs{}{}",
        summary.events,
        summary.duplicates,
        summary.bad_lines.len(),
        total,
        if runs.is_empty() {
            String::new()
        } else {
            format!(": {}", runs.join(", "))
        },
        if dry_run { " (dry run)" } else { "" }
    );
}
