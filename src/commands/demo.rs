//! `zoomwire demo`: the engine against the built-in Zoom simulator, with
//! every run and its effects shown as they happen (see [`crate::demo`]),
//! with the rules of `--rules`, else of `./rules`, else the starter rules
//! built into the binary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{CommandError, CommandResult, EXIT_FAILED};
use crate::demo::{DemoError, DemoOptions, DemoRules, Pace, run_demo};

/// The demo's command-line arguments (`main.rs` flattens these into its
/// `Demo` variant).
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Rules folder [default: `rules` when it exists, else the starter rules built into zoomwire]
    #[arg(long, value_name = "DIR")]
    pub rules: Option<PathBuf>,
    /// Folder of Rhai modules that rules import [default: `scripts`]
    #[arg(long, value_name = "DIR")]
    pub scripts: Option<PathBuf>,
    /// No pauses between events (for tests and the impatient)
    #[arg(long)]
    pub fast: bool,
}

/// Runs the demo. Exit 0 when every run succeeded, 1 when one failed or
/// did not finish, 2 when the rules are missing or invalid.
pub async fn run(args: DemoArgs) -> CommandResult {
    install_quiet_logging();
    let options = DemoOptions {
        rules: demo_rules(args.rules, args.scripts),
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

/// `--rules` if given; else `./rules` if it is a folder; else the built-in
/// starter (whose scripts go with it).
fn demo_rules(rules: Option<PathBuf>, scripts: Option<PathBuf>) -> DemoRules {
    let rules_dir = match rules {
        Some(dir) => dir,
        None if Path::new("rules").is_dir() => PathBuf::from("rules"),
        None => return DemoRules::BuiltIn,
    };
    DemoRules::Folders {
        rules_dir,
        scripts_dir: scripts.unwrap_or_else(|| PathBuf::from("scripts")),
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
