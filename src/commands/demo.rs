//! `zoomwire demo`: the engine against the built-in Zoom simulator, with
//! every run and its effects shown as they happen (see [`crate::demo`]).
//! It reads the project's settings as `zoomwire run` does: the rules of
//! `--rules`, else of the configured rules folder when it exists, else the
//! starter rules built into the binary; the configured `vars` and sandbox
//! limits. Zoom, Slack and mail settings are the simulator's and the sink's.

use std::process::ExitCode;

use super::rules_args::RuleLocation;
use super::{CommandError, CommandResult, EXIT_FAILED};
use crate::demo::{DemoError, DemoOptions, DemoRules, Pace, run_demo};
use crate::rules::RuleSources;

/// The demo's command-line arguments (`main.rs` flattens these into its
/// `Demo` variant).
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    // Without a rules folder, the starter rules built into zoomwire.
    #[command(flatten)]
    pub location: RuleLocation,
    /// No pauses between events (for tests and the impatient)
    #[arg(long)]
    pub fast: bool,
}

/// Runs the demo. Exit 0 when every run succeeded, 1 when one failed or
/// did not finish, 2 when the settings or the rules are missing or invalid.
pub async fn run(args: DemoArgs) -> CommandResult {
    install_quiet_logging();
    let given = !args.location.rules.is_empty();
    let loaded = args.location.into_args(Vec::new()).load_settings()?;
    let options = DemoOptions {
        rules: demo_rules(loaded.sources, given),
        vars: loaded.settings.vars,
        sandbox: loaded.settings.sandbox,
        pace: if args.fast {
            Pace::fast()
        } else {
            Pace::human()
        },
    };
    match run_demo(options).await {
        Ok(outcome) if outcome.succeeded() => Ok(ExitCode::SUCCESS),
        Ok(_) => Ok(ExitCode::from(EXIT_FAILED)),
        Err(DemoError::Usage(message)) => Err(CommandError::Usage(message)),
        Err(other) => Err(CommandError::Other(other.into())),
    }
}

/// The rules given with `--rules` (which must exist); else the configured
/// folder if it exists; else the built-in starter (whose scripts go with it).
fn demo_rules(sources: RuleSources, given: bool) -> DemoRules {
    if given || sources.paths.iter().all(|path| path.is_dir()) {
        DemoRules::Given(sources)
    } else {
        DemoRules::BuiltIn
    }
}

/// Logs at `warn` unless `RUST_LOG` asks for more: the runs are the output.
fn install_quiet_logging() {
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let filter = match crate::logging::filter_from(Some(rust_log.as_deref().unwrap_or("warn"))) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("warning: {error}; logging at warn");
            tracing_subscriber::EnvFilter::new("warn")
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
