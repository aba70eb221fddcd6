//! The `zoomwire` command line: parses arguments, calls the library, maps
//! errors to exit codes (0 success, 1 a check or test failed, 2 usage or
//! configuration error).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};
use zoomwire::commands::rules_args::RuleLocation;
use zoomwire::commands::{self, CommandError, CommandResult};
use zoomwire_engine::effects::Effects;
use zoomwire_engine::effects::recorder::RecordingEffects;

#[derive(Parser)]
#[command(
    name = "zoomwire",
    version,
    about = "Rule-based automation engine for Zoom"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The daemon: Zoom WebSocket (and webhook, if configured), cron, hot reload, admin API
    Run {
        #[command(flatten)]
        location: RuleLocation,
    },
    /// Validate settings, rules and scripts: every problem as file:line:col, exit 1 on any error
    Check {
        /// Rule files or folders [default: the configured rules folder]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        location: RuleLocation,
    },
    /// Run the `tests:` of every rule; ends with `N passed, N failed`
    Test {
        /// Rule files or folders [default: the configured rules folder]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        location: RuleLocation,
    },
    /// Run one event (a Zoom event or a WebSocket frame; `-` for stdin) through the rules, effects recorded
    Fire {
        /// Event file, or `-` for standard input
        input: String,
        /// Record effects instead of performing them (required: fire does not perform effects)
        #[arg(long)]
        dry_run: bool,
        /// Say for every rule why it fired or did not
        #[arg(long)]
        explain: bool,
        #[command(flatten)]
        location: RuleLocation,
    },
    /// Run a recorded stream of events (JSON lines) through the rules, effects recorded
    Replay {
        /// File with one event or frame per line
        input: PathBuf,
        /// Record effects instead of performing them (required: replay does not perform effects)
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        location: RuleLocation,
    },
    /// Find through Zoom's REST API what Zoom sent in a window that the store has not seen, and feed it
    Reconcile {
        /// Start of the window: 2024-11-19T08:00:00Z, 2024-11-19 (UTC) or a duration ago (2h)
        #[arg(long)]
        since: String,
        /// End of the window, in the same forms [default: now]
        #[arg(long)]
        until: Option<String>,
        /// List what was missed without feeding it
        #[arg(long)]
        dry_run: bool,
        /// Only this configured account [default: every one]
        #[arg(long)]
        account: Option<String>,
        /// The daemon's rules: those whose runs are journaled
        #[command(flatten)]
        location: RuleLocation,
    },
    /// Print the JSON Schema of the rule file (or with --config of zoomwire.yaml), for editor completion
    Schema {
        /// The schema of zoomwire.yaml instead of the rule file's
        #[arg(long)]
        config: bool,
    },
    /// Write a starting project: zoomwire.yaml, .env.example, starter rules with their tests, scripts
    Init {
        /// Folder to write into (created if missing) [default: the working directory]
        dir: Option<PathBuf>,
    },
    /// Print a shell completion script: `source <(zoomwire completions bash)`
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// The Zoom simulator alone: OAuth, WebSocket, REST, Slack, downloads, on loopback
    Sim {
        /// Address to listen on [default: 127.0.0.1 on a free port]
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
    },
    /// The whole engine against the built-in Zoom simulator: no credentials, effects shown as they happen; without a rules folder, the starter rules built into zoomwire
    Demo(commands::demo::DemoArgs),
    /// End-to-end throughput, latency and memory of the daemon against the simulator (build with --release)
    Bench(commands::bench::BenchArgs),
    /// Run history from the store: `runs [--rule NAME] [--failed|--skipped] [--json]`, `runs show ID`, `runs retry ID`
    Runs {
        #[command(subcommand)]
        action: Option<RunsAction>,
        /// Only runs of this rule
        #[arg(long)]
        rule: Option<String>,
        /// Only failed and dead runs (dead letters)
        #[arg(long, conflicts_with = "skipped")]
        failed: bool,
        /// Only runs that were dropped (mode single or restart, `max_queued`) or whose condition failed
        #[arg(long)]
        skipped: bool,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
        /// Data folder holding the store [default: the configured one, as `run` reads it]
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RunsAction {
    /// One run with its effects (replayed or in doubt), log lines and error
    Show {
        /// The run's id
        id: String,
    },
    /// Queue a failed or dead run again
    Retry {
        /// The run's id
        id: String,
    },
}

fn main() -> ExitCode {
    // Before any thread starts: a thread's first allocation picks its arena.
    zoomwire_engine::script::limit_malloc_arenas();
    // One TLS provider for every client (reqwest, tungstenite, lettre): aws-lc-rs.
    // An error means one is already installed, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(commands::EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match runtime() {
        Ok(runtime) => runtime.block_on(dispatch(cli.command)),
        Err(error) => Err(CommandError::Other(error.into())),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            error.exit_code()
        }
    }
}

/// The runtime: its threads have a script thread's stack, so that scripts
/// may run on them (`zoomwire_engine::script::inline`).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    zoomwire_engine::script::inline::runtime_builder().build()
}

async fn dispatch(command: Command) -> CommandResult {
    match command {
        Command::Run { location } => commands::run::run(&location.into_args(Vec::new())).await,
        Command::Check { paths, location } => commands::check::run(&location.into_args(paths)),
        Command::Test { paths, location } => commands::test::run(&location.into_args(paths)).await,
        Command::Fire {
            input,
            dry_run,
            explain,
            location,
        } => {
            let effects = effects_for(dry_run)?;
            let args = commands::fire::FireArgs {
                input,
                dry_run,
                explain,
                rules: location.into_args(Vec::new()),
            };
            commands::fire::run(args, effects).await
        }
        Command::Replay {
            input,
            dry_run,
            location,
        } => {
            let effects = effects_for(dry_run)?;
            let args = commands::replay::ReplayArgs {
                input,
                dry_run,
                rules: location.into_args(Vec::new()),
            };
            commands::replay::run(args, effects).await
        }
        Command::Reconcile {
            since,
            until,
            dry_run,
            account,
            location,
        } => {
            let args = commands::reconcile::ReconcileArgs {
                since,
                until,
                dry_run,
                account,
                rules: location.into_args(Vec::new()),
            };
            commands::reconcile::run(args).await
        }
        Command::Schema { config } => commands::schema::run(config),
        Command::Init { dir } => commands::init::run(dir.as_deref()),
        Command::Completions { shell } => commands::completions::run(shell, Cli::command()),
        Command::Sim { addr } => commands::sim::run(addr).await,
        Command::Demo(args) => commands::demo::run(args).await,
        Command::Bench(args) => commands::bench::run(args).await,
        Command::Runs {
            action,
            rule,
            failed,
            skipped,
            json,
            data,
        } => {
            let data = commands::runs::data_dir(data)?;
            match action {
                Some(RunsAction::Retry { id }) => commands::runs::retry(&data, &id).await,
                Some(RunsAction::Show { id }) => commands::runs::show(&data, &id, json).await,
                None => commands::runs::list(&data, rule, failed, skipped, json).await,
            }
        }
    }
}

/// The recording fake: `fire` and `replay` record effects and never perform
/// them, and say so by asking for `--dry-run` (a bare `fire` is kept free to
/// mean performing them, should that come).
fn effects_for(dry_run: bool) -> Result<Arc<dyn Effects>, CommandError> {
    if dry_run {
        return Ok(Arc::new(RecordingEffects::default()));
    }
    Err(CommandError::Usage(
        "fire and replay record effects and never perform them: add --dry-run (the daemon, `zoomwire run`, is what performs effects)"
            .into(),
    ))
}
