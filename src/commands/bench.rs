//! `zoomwire bench`: end-to-end throughput, latency and memory of the daemon
//! driven from the simulator's WebSocket (see [`zoomwire_sim::bench`]).

use std::path::PathBuf;
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
    /// The daemon's journal, repeatable [default: full and memory]; `node`
    /// runs the hand-written Node.js client instead, and the report gives
    /// zoomwire's events/s against it
    #[arg(long, value_enum)]
    pub journal: Vec<BenchJournal>,
    /// The Node client's folder (`npm ci` in it first), for --journal node
    #[arg(long, default_value = zoomwire_sim::bench::node::DEFAULT_DIR)]
    pub node_client: PathBuf,
    /// With --journal postgres: this many nodes share the database, and a
    /// last phase kills the WebSocket's holder (kill -9) mid-stream and times
    /// the failover
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// The nodes' lease, in seconds (ZOOMWIRE_LEASE_TTL, at least 2)
    /// [default: zoomwire's, 8]
    #[arg(long)]
    pub lease_ttl: Option<u64>,
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
    if args.nodes == 0 || args.nodes > 16 {
        return Err(CommandError::Usage("--nodes is from 1 to 16".into()));
    }
    if args.nodes > 1 && !args.journal.contains(&BenchJournal::Postgres) {
        return Err(CommandError::Usage(
            "--nodes measures several nodes sharing PostgreSQL: add --journal postgres".into(),
        ));
    }
    if args.lease_ttl.is_some_and(|ttl| ttl < 2) {
        return Err(CommandError::Usage(
            "--lease-ttl is at least 2 (seconds)".into(),
        ));
    }
    // Without it, the bench starts a scratch server of its own.
    let database_url = std::env::var(DATABASE_URL_VAR)
        .ok()
        .filter(|url| !url.trim().is_empty());
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; measure with `cargo run --profile dist -- bench` (or `--release`)"
        );
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
        node_client: args.node_client,
        nodes: args.nodes,
        lease_ttl: args.lease_ttl.map(Duration::from_secs),
        database_url,
        build: env!("ZOOMWIRE_BUILD_PROFILE"),
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> BenchArgs {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .unwrap()
            .bench
    }

    #[test]
    fn node_is_a_journal_to_run_beside_zoomwire_s() {
        let args = parse(&[
            "--journal",
            "full",
            "--journal",
            "memory",
            "--journal",
            "node",
        ]);
        assert_eq!(
            args.journal,
            [BenchJournal::Full, BenchJournal::Memory, BenchJournal::Node]
        );
        assert_eq!(args.node_client, PathBuf::from("bench/node"));
        let args = parse(&["--journal", "node", "--node-client", "/opt/client"]);
        assert_eq!(args.node_client, PathBuf::from("/opt/client"));
        assert!(Cli::try_parse_from(["bench", "--journal", "deno"]).is_err());
    }
}
