//! The `zoomwire` command line: parses arguments, calls the library, maps
//! errors to exit codes (0 success, 1 a check or test failed, 2 usage or
//! configuration error).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Validate rules and scripts: every error as file:line:col, exit 1 on any
    Check {
        /// Rule files or folders (default: the rules folder)
        paths: Vec<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(zoomwire::commands::EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result: zoomwire::commands::CommandResult = match cli.command {
        Command::Check { paths: _ } => Ok(ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            error.exit_code()
        }
    }
}
