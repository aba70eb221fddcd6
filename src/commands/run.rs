//! `zoomwire run`: the daemon, until Ctrl-C or SIGTERM.

use std::process::ExitCode;

use super::rules_args::RuleArgs;
use super::{CommandError, CommandResult, EXIT_FAILED};
use zoomwire_engine::config::LoadOptions;
use zoomwire_engine::daemon::{Daemon, DaemonOptions};
use zoomwire_engine::journal::JournalMode;

/// Reads the settings (zoomwire.yaml, .env, the environment, then
/// `--rules`/`--scripts`), starts the daemon and runs it until a signal.
/// Configuration problems exit 2, listed together.
pub async fn run(rules: &RuleArgs) -> CommandResult {
    let options = LoadOptions {
        require_daemon: true,
        ..LoadOptions::from_process_env()
    };
    let loaded = rules.load_settings_with(&options)?;
    let settings = loaded.settings;
    let node = (settings.journal.store == JournalMode::Postgres).then(|| settings.node_id());
    if let Err(error) =
        zoomwire_engine::logging::init_node_logging(settings.log_format, node.as_deref())
    {
        eprintln!("warning: {error}");
    }
    let options = DaemonOptions {
        journal: settings.journal.store,
        rules: Some(loaded.sources),
        ..DaemonOptions::default()
    };
    let daemon = Daemon::start(settings, options)
        .await
        .map_err(|e| CommandError::Usage(e.to_string()))?;
    let finished = daemon.run_until_signal().await;
    Ok(if finished {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}
