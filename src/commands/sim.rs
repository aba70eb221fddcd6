//! `zoomwire sim`: the Zoom simulator alone, on loopback, until Ctrl-C. It
//! prints the settings that point zoomwire at it, as `NAME=value` lines.

use std::net::SocketAddr;
use std::process::ExitCode;

use super::{CommandError, CommandResult};
use zoomwire_sim::sim::{SimConfig, SimError};

/// Runs the simulator on `addr` (default `127.0.0.1:0`, a free port).
pub async fn run(addr: Option<SocketAddr>) -> CommandResult {
    let mut config = SimConfig::default();
    if let Some(addr) = addr {
        config.addr = addr;
    }
    match zoomwire_sim::sim::serve_forever(config).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error @ SimError::Bind { .. }) => Err(CommandError::Usage(error.to_string())),
        Err(error) => Err(CommandError::Other(error.into())),
    }
}
