//! Binding an axum router to an address and serving it until a shutdown
//! token fires: [`serve_router`] for the admin server (loopback, or behind
//! its token), [`public::serve_public`] for the webhook endpoint, which
//! anyone can reach and which therefore bounds what each client may hold
//! (`limits.rs`) and counts and logs what it refuses (`refusals.rs`).
//!
//! Binding happens before the function returns, so a caller learns at once
//! that an address is taken, and gets the actual address when it asked for
//! port 0 (as tests do).

pub mod limits;
pub mod public;
pub mod refusals;

use std::net::SocketAddr;

use axum::Router;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for the {server}: {source}")]
pub struct ServeError {
    pub server: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr` and serves `router` on a task until `shutdown` is cancelled;
/// requests in progress then finish. `server` names it in logs and errors.
pub async fn serve_router(
    server: &'static str,
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), ServeError> {
    let error = |source| ServeError {
        server,
        addr,
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(error)?;
    let local_addr = listener.local_addr().map_err(error)?;
    tracing::info!(server, addr = %local_addr, "listening");
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        match served {
            Ok(()) => tracing::debug!(server, "stopped"),
            Err(error) => tracing::error!(server, error = %error, "server failed"),
        }
    });
    Ok((local_addr, task))
}
