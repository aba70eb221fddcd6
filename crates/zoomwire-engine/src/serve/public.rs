//! The server of the public endpoint (Zoom's webhooks): anyone on the
//! internet can reach it, so every resource a client can hold is bounded
//! (see [`EndpointLimits`]).
//!
//! axum's own `serve` has no read timeouts, so connections are accepted here
//! and served by hyper's HTTP/1 connection with a timer: a head not complete
//! within `header_timeout` (a slowloris, an idle kept-alive connection)
//! closes the connection. Before a connection is served it must fit under
//! `max_connections` and its address's `per_address_connections`; otherwise
//! it is closed at once. Each request then passes, outermost first:
//!
//! 1. the accounting layer: counts the answer and logs refusals at a rate
//!    ([`RefusalLog`]);
//! 2. the per-address rate limit (429 with `Retry-After`);
//! 3. the concurrency limit: beyond `max_requests` in flight, 503 with
//!    `Retry-After` at once (load shedding), so Zoom retries later;
//! 4. the request timeout (408);
//! 5. the body read: the whole body, at most `max_body` bytes (413), within
//!    `body_timeout` (408), so a handler never waits on a slow client.
//!
//! tower provides the concurrency limit, the shedding and the timeout,
//! governor the rate limit, hyper the head timeout; only the connection
//! counts and the accounting are written here.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::error_handling::HandleErrorLayer;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use governor::DefaultKeyedRateLimiter;
use governor::clock::{Clock, DefaultClock};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, ServiceBuilder, ServiceExt};

use super::ServeError;
use super::limits::{AddressConnections, AddressSlot, EndpointLimits};
use super::refusals::{Answered, LOG_PERIOD, RefusalLog};

/// Seconds a client is asked to wait after a 503.
const OVERLOADED_RETRY_AFTER: &str = "5";
/// How long shutdown waits for connections still answering.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after `accept` fails (out of descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What the accept loop and the layers share.
struct Guards {
    refusals: RefusalLog,
    connections: Arc<Semaphore>,
    addresses: AddressConnections,
    rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

/// Binds `addr` and serves `router` behind `limits` on a task until
/// `shutdown` is cancelled; requests in progress then get a few seconds to
/// finish. `open_files` is the process's soft RLIMIT_NOFILE, which lowers
/// `max_connections` when it must.
pub async fn serve_public(
    server: &'static str,
    addr: SocketAddr,
    router: Router,
    limits: &EndpointLimits,
    open_files: Option<u64>,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), ServeError> {
    let error = |source| ServeError {
        server,
        addr,
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(error)?;
    let local_addr = listener.local_addr().map_err(error)?;
    let max_connections = limits.connections_within(open_files);
    if max_connections < limits.max_connections {
        tracing::warn!(
            server,
            max_connections,
            configured = limits.max_connections,
            open_files,
            "fewer connections allowed than configured: the open files limit is too low"
        );
    }
    let guards = Arc::new(Guards {
        refusals: RefusalLog::new(server),
        connections: Arc::new(Semaphore::new(max_connections)),
        addresses: AddressConnections::new(limits.per_address_connections),
        rate: limits.address_rate_limiter(),
    });
    let router = guard_router(router, limits, guards.clone());
    tracing::info!(server, addr = %local_addr, max_connections, "listening");
    let header_timeout = limits.header_timeout;
    let task = tokio::spawn(async move {
        accept_loop(listener, router, guards, header_timeout, shutdown).await;
        tracing::debug!(server, "stopped");
    });
    Ok((local_addr, task))
}

/// The layers of the module notes, around `router`.
fn guard_router(router: Router, limits: &EndpointLimits, guards: Arc<Guards>) -> Router {
    let requests = Arc::new(Semaphore::new(limits.max_requests.max(1)));
    let (max_body, body_timeout) = (limits.max_body, limits.body_timeout);
    router
        .layer(middleware::from_fn(move |request, next| {
            read_body(request, next, max_body, body_timeout)
        }))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(shed_or_timeout))
                .load_shed()
                .layer(tower::limit::GlobalConcurrencyLimitLayer::with_semaphore(
                    requests,
                ))
                .timeout(limits.request_timeout),
        )
        .layer(middleware::from_fn_with_state(guards.clone(), rate_limit))
        .layer(middleware::from_fn_with_state(guards, account))
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    guards: Arc<Guards>,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let mut summary = tokio::time::interval(LOG_PERIOD);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = summary.tick() => {
                guards.refusals.summarize();
                if let Some(rate) = &guards.rate {
                    rate.retain_recent();
                }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, or a connection reset before it was taken.
                    tracing::debug!(error = %error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Some(admitted) = admit(&guards, peer.ip()) else {
            continue;
        };
        let service = router.clone().map_request(move |mut request: Request<_>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request.map(Body::new)
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        let guards = guards.clone();
        tokio::spawn(async move {
            let served = connection.await;
            drop(admitted);
            if let Err(error) = served
                && error.is_timeout()
            {
                let why = format!("no complete request head within {header_timeout:?}");
                guards
                    .refusals
                    .connection("header_timeout", peer.ip(), Some(&why));
            }
        });
    }
    drop(listener);
    guards.refusals.summarize();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
}

/// A connection's places under the global and per-address limits.
struct Admitted {
    _connection: OwnedSemaphorePermit,
    _address: AddressSlot,
}

/// Takes the connection's places, or refuses it (the stream is dropped: closed).
fn admit(guards: &Guards, peer: IpAddr) -> Option<Admitted> {
    let Ok(connection) = guards.connections.clone().try_acquire_owned() else {
        guards.refusals.connection(
            "max_connections",
            peer,
            Some("the server holds max_connections connections"),
        );
        return None;
    };
    let Some(address) = guards.addresses.open(peer) else {
        guards.refusals.connection(
            "per_address_connections",
            peer,
            Some("this address holds per_address_connections connections"),
        );
        return None;
    };
    guards.refusals.connection("accepted", peer, None);
    Some(Admitted {
        _connection: connection,
        _address: address,
    })
}

fn peer_of(request: &Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0)
}

/// Counts every answer and logs refusals at a rate.
async fn account(State(guards): State<Arc<Guards>>, request: Request, next: Next) -> Response {
    let peer = peer_of(&request).map(|p| p.ip());
    let mut response = next.run(request).await;
    let answered = response
        .extensions_mut()
        .remove::<Answered>()
        .unwrap_or_else(|| Answered::from_status(response.status()));
    guards.refusals.request(&answered, peer);
    response
}

/// 429 for an address past its request rate.
async fn rate_limit(State(guards): State<Arc<Guards>>, request: Request, next: Next) -> Response {
    if let (Some(rate), Some(peer)) = (&guards.rate, peer_of(&request)) {
        let address = peer.ip().to_canonical();
        if let Err(not_until) = rate.check_key(&address) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return refusal(
                StatusCode::TOO_MANY_REQUESTS,
                Answered::refused(
                    "rate_limited",
                    "this address sent more than per_address_rate requests a second",
                ),
                Some(seconds.max(1).to_string()),
            );
        }
    }
    next.run(request).await
}

/// The answer when tower's limit sheds a request or its timeout fires.
async fn shed_or_timeout(error: BoxError) -> Response {
    if error.is::<tower::load_shed::error::Overloaded>() {
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            Answered::refused("overloaded", "max_requests requests in flight"),
            Some(OVERLOADED_RETRY_AFTER.into()),
        );
    }
    if error.is::<tower::timeout::error::Elapsed>() {
        return refusal(
            StatusCode::REQUEST_TIMEOUT,
            Answered::refused("timeout", "the request took longer than request_timeout"),
            None,
        );
    }
    refusal(
        StatusCode::INTERNAL_SERVER_ERROR,
        Answered::refused("error", error.to_string()),
        None,
    )
}

/// Reads the whole body within `timeout` and at most `limit` bytes, then
/// hands the request on with the body in memory.
async fn read_body(request: Request, next: Next, limit: usize, timeout: Duration) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = match tokio::time::timeout(timeout, to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(error)) => {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            return if too_large {
                refusal(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Answered::refused("too_large", format!("body larger than {limit} bytes")),
                    None,
                )
            } else {
                refusal(
                    StatusCode::BAD_REQUEST,
                    Answered::refused("malformed", format!("cannot read the body: {error}")),
                    None,
                )
            };
        }
        Err(_elapsed) => {
            return refusal(
                StatusCode::REQUEST_TIMEOUT,
                Answered::refused(
                    "timeout",
                    format!("the body did not arrive within {timeout:?}"),
                ),
                None,
            );
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// A refusal: the status with a short text, marked for the accounting layer,
/// and the connection closed (a client that was refused for being slow or
/// too much should not keep it).
fn refusal(status: StatusCode, answered: Answered, retry_after: Option<String>) -> Response {
    let text = answered.refusal.clone().unwrap_or_default();
    let mut response = (status, text).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if let Some(seconds) = retry_after.and_then(|s| HeaderValue::from_str(&s).ok()) {
        headers.insert(header::RETRY_AFTER, seconds);
    }
    response.extensions_mut().insert(answered);
    response
}
