//! `zoomwire run`: the daemon, until Ctrl-C or SIGTERM.

use std::process::ExitCode;

use super::{CommandError, CommandResult, EXIT_FAILED};
use crate::config::{LoadOptions, Settings};
use crate::daemon::{Daemon, DaemonOptions};

/// Reads the settings (zoomwire.yaml, .env, the environment), starts the
/// daemon and runs it until a signal. Configuration problems exit 2, listed
/// together.
pub async fn run() -> CommandResult {
    let options = LoadOptions {
        require_daemon: true,
        ..LoadOptions::from_process_env()
    };
    let settings =
        Settings::load(&options).map_err(|errors| CommandError::Usage(errors.to_string()))?;
    let node = (settings.journal.store == crate::daemon::JournalMode::Postgres)
        .then(|| settings.node_id());
    if let Err(error) = crate::logging::init_node_logging(settings.log_format, node.as_deref()) {
        eprintln!("warning: {error}");
    }
    let options = DaemonOptions {
        journal: settings.journal.store,
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
