//! `zoomwire bench`: end-to-end throughput, latency and memory of the daemon
//! driven from the simulator's WebSocket (see [`zoomwire_sim::bench`]).

use std::process::ExitCode;
use std::time::Duration;

use super::{CommandError, CommandResult, EXIT_FAILED};
use zoomwire_sim::bench::{
    BenchJournal, BenchOptions, DATABASE_URL_VAR, complete, format_report, run_bench,
};

/// The bench's command-line arguments (`main.rs` flattens these into its
/// `Bench` variant).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Events of the throughput phase, sent as fast as the WebSocket takes them
    #[arg(long, default_value_t = 50_000)]
    pub events: usize,
    /// Events per second of the latency phase
    #[arg(long, default_value_t = 2_000)]
    pub rate: u32,
    /// Seconds of the latency phase
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// The daemon's journal, repeatable [default: full and memory]
    #[arg(long, value_enum)]
    pub journal: Vec<BenchJournal>,
}

/// Runs the bench and prints the report; exit 1 when events or posts went
/// missing or a post arrived twice. Build in release first (`cargo run --release -- bench`): the
/// daemon is this same executable.
pub async fn run(args: BenchArgs) -> CommandResult {
    if args.events == 0 || args.rate == 0 || args.seconds == 0 {
        return Err(CommandError::Usage(
            "--events, --rate and --seconds must be at least 1".into(),
        ));
    }
    if args.journal.contains(&BenchJournal::Postgres) && std::env::var(DATABASE_URL_VAR).is_err() {
        return Err(CommandError::Usage(format!(
            "--journal postgres measures against {DATABASE_URL_VAR}: point it at a scratch database"
        )));
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; measure with `cargo run --release -- bench`");
    }
    let daemon_exe = std::env::current_exe()
        .map_err(|e| CommandError::Other(anyhow::anyhow!("cannot find this executable: {e}")))?;
    let options = BenchOptions {
        events: args.events,
        rate: args.rate,
        duration: Duration::from_secs(args.seconds),
        journals: if args.journal.is_empty() {
            vec![BenchJournal::Full, BenchJournal::Memory]
        } else {
            args.journal
        },
        daemon_exe,
    };
    let report = run_bench(&options)
        .await
        .map_err(|e| CommandError::Other(e.into()))?;
    print!("{}", format_report(&report, &options));
    if complete(&report) {
        return Ok(ExitCode::SUCCESS);
    }
    for journal in report.journals.iter().filter(|j| !j.complete()) {
        eprintln!(
            "events or Slack posts went missing or were doubled; the daemon's log ends with:\n{}",
            journal.log_tail
        );
    }
    Ok(ExitCode::from(EXIT_FAILED))
}
