//! The command line's verbs, one module each. `main.rs` parses arguments and
//! calls these; each returns the process exit status.

pub mod runs;

use std::process::ExitCode;

use crate::config::{LoadOptions, Settings};

/// Exit status for success.
pub const EXIT_OK: u8 = 0;
/// Exit status when a check or a test failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit status for a usage or configuration error.
pub const EXIT_USAGE: u8 = 2;

/// An error that ends a command, with the exit status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Bad arguments or configuration: exit 2.
    #[error("{0}")]
    Usage(String),
    /// Anything else that stops the command: exit 1.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl CommandError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CommandError::Usage(_) => ExitCode::from(EXIT_USAGE),
            CommandError::Other(_) => ExitCode::from(EXIT_FAILED),
        }
    }
}

pub type CommandResult = Result<ExitCode, CommandError>;

/// The settings as `zoomwire run` reads them (`zoomwire.yaml` < `.env` <
/// the environment, from `options`); problems are a usage error (exit 2)
/// that lists them all.
pub fn load_settings(options: &LoadOptions) -> Result<Settings, CommandError> {
    Settings::load(options).map_err(|errors| CommandError::Usage(errors.to_string()))
}

pub mod bench;
pub mod check;
pub mod completions;
pub mod demo;
pub mod fire;
pub mod init;
pub mod output;
pub mod reconcile;
pub mod replay;
pub mod rules_args;
pub mod run;
pub mod schema;
pub mod sim;
pub mod test;
