//! `zoomwire init [DIR]`: writes a starting project (see [`crate::starter`]):
//! a commented `zoomwire.yaml`, a `.env.example`, the starter rules with
//! their tests and sample events, and `scripts/`. It never overwrites a
//! file: when one of them exists, nothing is written.

use std::path::Path;
use std::process::ExitCode;

use super::{CommandError, CommandResult};
use crate::starter::{StarterError, project_files, write_files};

pub fn run(dir: Option<&Path>) -> CommandResult {
    let dir = dir.unwrap_or(Path::new("."));
    let written = write_files(dir, project_files()).map_err(|error| match error {
        StarterError::Exists(_) => CommandError::Usage(error.to_string()),
        StarterError::Write { .. } => CommandError::Other(error.into()),
    })?;
    for path in &written {
        println!("wrote {}", path.display());
    }
    let cd = if dir == Path::new(".") {
        String::new()
    } else {
        format!("cd {} && ", dir.display())
    };
    println!();
    println!("next:");
    for (command, what) in [
        (
            format!("{cd}zoomwire check && zoomwire test"),
            "the starter rules load and pass their tests",
        ),
        (
            "cp .env.example .env".into(),
            "then fill in the Zoom app's credentials",
        ),
        (
            "zoomwire run".into(),
            "the daemon; its page is on http://127.0.0.1:9797/ui/",
        ),
    ] {
        println!("  {command:<44} # {what}");
    }
    Ok(ExitCode::SUCCESS)
}
