//! The Zoom WebSocket event subscription: [`run_subscription`] holds one
//! connection open for as long as the engine runs and hands every event to
//! the journal's channel.
//!
//! Each connection gets the account's token in its URL
//! (`{ws_base}?subscriptionId=..&access_token=..`; a `subscriptionId` already
//! in a pasted endpoint URL is replaced, never repeated) and must open with
//! `build_connection` success. The token comes from the account's one token
//! cache, shared with REST: a new one is minted only when it nears expiry or
//! Zoom refused it (an invalid-token frame, matched by containment; an
//! upgrade refused with HTTP 401 or 403; `build_connection` success false),
//! since minting may invalidate the token in use.
//!
//! The client sends Zoom's heartbeat frame every interval and treats a
//! silence of `dead_after` (no inbound frame at all) as a dead, half-open
//! connection; a heartbeat answered with `success:false` is a failure, not a
//! sign of life. It reconnects on close, error, death, a refused handshake
//! or an invalid-token frame (whether the server then closes the socket or
//! keeps it open), with capped exponential backoff and full jitter. Before
//! the token's hour is up it opens the next connection first and only then
//! lets the old one go (make before break), which works whichever way Zoom
//! treats a second connection on one subscription: if the new one replaces
//! the old, or both receive events (duplicates are dropped by the journal),
//! nothing is lost; if the new one is refused while the old holds the
//! subscription, the client hands over instead (closes the old and connects
//! at once), and the short handover is recorded as a gap like any other.
//!
//! Zoom does not replay events sent while no connection was open, so every
//! period without a connection is logged and kept in [`ConnectionStatus`] as a
//! [`Gap`], for reconciliation through REST. A malformed frame or an unknown
//! module is logged, counted and skipped; the connection stays. The token is
//! part of the URL, so the URL is never logged and error texts are redacted.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::frame::{Frame, HEARTBEAT_FRAME, decode_frame};
use super::token::{AccessToken, AccessTokens, TokenError};
use crate::backoff::{Backoff, Jitter};
use crate::event::{Event, MAX_EVENT_BYTES, Source};

/// Gaps kept in the status; older ones are only in the log.
const MAX_GAPS: usize = 100;
/// The most one read of the connection takes (tungstenite's
/// `read_buffer_size`, 128 KiB by default). Before each read tungstenite
/// zeroes that much spare room, and at a steady rate each frame comes alone
/// and costs about two reads (its own, and one that finds nothing): with
/// 128 KiB, 159k of the daemon's 230k instructions per event at 100
/// events/s went to that zeroing (callgrind, memory journal), with 8 KiB
/// 12k. In a burst, where a read brings several frames, reads are about
/// 10,000 more per 100,000 events (a tenth of a system call per event) and
/// the instructions the same. A larger frame takes several reads.
const READ_BUFFER_BYTES: usize = 8 * 1024;
/// Far enough in the future to mean "never" for a timer.
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// How one subscription connects and when it gives up on a connection.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// `wss://ws.zoom.us/ws` (`ZOOM_WS_BASE`).
    pub ws_base: String,
    pub subscription_id: String,
    /// The account's name in the configuration: events get `Source::Websocket(name)`.
    pub name: String,
    /// How often Zoom's heartbeat frame is sent.
    pub heartbeat_interval: Duration,
    /// A connection with no inbound frame for this long is dead.
    pub dead_after: Duration,
    /// Longest wait for the TCP/TLS/WebSocket handshake plus `build_connection`.
    pub connect_timeout: Duration,
    /// Largest frame and message accepted; larger ones end the connection.
    /// The default leaves room for a maximal event ([`MAX_EVENT_BYTES`])
    /// escaped inside a frame, so that the frame decoder, not the transport,
    /// refuses an oversized event and the connection survives it.
    pub max_frame_bytes: usize,
    /// Open the next connection this long before the token expires.
    pub reconnect_before_expiry: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl WsConfig {
    /// Zoom's defaults: heartbeat every 30 s, dead after 75 s of silence.
    pub fn new(
        ws_base: impl Into<String>,
        subscription_id: impl Into<String>,
        name: impl Into<String>,
    ) -> WsConfig {
        WsConfig {
            ws_base: ws_base.into(),
            subscription_id: subscription_id.into(),
            name: name.into(),
            heartbeat_interval: Duration::from_secs(30),
            dead_after: Duration::from_secs(75),
            connect_timeout: Duration::from_secs(30),
            max_frame_bytes: MAX_EVENT_BYTES + MAX_EVENT_BYTES / 2,
            reconnect_before_expiry: Duration::from_secs(120),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// A period without a connection: events Zoom sent then were not delivered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gap {
    /// When the connection was lost (for a dead one: its last inbound frame).
    pub start: DateTime<Utc>,
    /// When the next connection was up; `None` while still down.
    pub end: Option<DateTime<Utc>>,
    /// Why the connection was lost.
    pub reason: String,
}

/// What the admin API shows about one subscription.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectionStatus {
    pub name: String,
    pub connected: bool,
    pub connected_since: Option<DateTime<Utc>>,
    pub last_frame_at: Option<DateTime<Utc>>,
    pub last_event_at: Option<DateTime<Utc>>,
    pub events_received: u64,
    pub frames_skipped: u64,
    pub heartbeat_replies: u64,
    /// Connections replaced or lost, renewals included.
    pub reconnects: u64,
    pub last_error: Option<String>,
    /// The most recent periods without a connection, oldest first.
    pub gaps: Vec<Gap>,
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An open connection whose `build_connection` succeeded.
struct Connection {
    socket: Socket,
    token: AccessToken,
    /// When to open the next connection, if the token's expiry is known.
    renew_at: Option<Instant>,
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("ws_base `{0}` is not a valid URL")]
    BadBase(String),
    #[error("cannot connect: {0}")]
    Transport(String),
    #[error("no build_connection within {0:?}")]
    Timeout(Duration),
    #[error("zoom refused the connection: {0}")]
    Refused(String),
    #[error("zoom says the access token is invalid")]
    InvalidToken,
    #[error("expected build_connection first, got {0}")]
    Protocol(String),
}

/// Why a connection ended.
enum End {
    Shutdown,
    /// The engine stopped reading events.
    EventsClosed,
    /// The next connection is up; the old one is closed.
    Renewed(Box<Connection>),
    Closed(String),
    Error(String),
    Dead,
    InvalidToken,
    /// Zoom answered a heartbeat with `success:false`.
    HeartbeatFailed,
    /// Zoom refused the renewal connection while this one held the
    /// subscription: close this one and connect again at once.
    Handover,
}

impl End {
    fn label(&self) -> &'static str {
        match self {
            End::Shutdown => "shutdown",
            End::EventsClosed => "events_closed",
            End::Renewed(_) => "renewal",
            End::Closed(_) => "closed",
            End::Error(_) => "error",
            End::Dead => "dead",
            End::InvalidToken => "invalid_token",
            End::HeartbeatFailed => "heartbeat_failed",
            End::Handover => "handover",
        }
    }

    fn describe(&self) -> String {
        match self {
            End::Closed(reason) => format!("closed by zoom: {reason}"),
            End::Error(error) => format!("connection error: {error}"),
            End::Dead => "no inbound frame within the dead-after limit".into(),
            End::InvalidToken => "zoom said the access token is invalid".into(),
            End::HeartbeatFailed => "zoom answered a heartbeat with success:false".into(),
            End::Handover => {
                "handover: zoom refused a second connection while the first held the subscription"
                    .into()
            }
            other => other.label().into(),
        }
    }
}

/// How a session ended, and what the outer loop needs to know about it.
struct SessionEnd {
    end: End,
    /// When the last inbound frame arrived.
    last_inbound_at: DateTime<Utc>,
    /// Whether anything arrived after `build_connection`: the connection worked.
    proved_alive: bool,
}

/// Replaces the token (raw and URL-encoded) in an error text.
fn redact(text: &str, token: &AccessToken) -> String {
    let raw = token.expose();
    if raw.is_empty() {
        return text.to_string();
    }
    let encoded: String = url::form_urlencoded::byte_serialize(raw.as_bytes()).collect();
    text.replace(raw, "[redacted]")
        .replace(&encoded, "[redacted]")
}

/// Capped exponential backoff with full jitter: uniform in `0..=min(max, initial * 2^attempt)`.
fn backoff_delay(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let backoff = Backoff {
        first: initial,
        max,
        jitter: Jitter::Full,
    };
    backoff.delay(attempt)
}

/// Everything one subscription's tasks share.
struct Subscription {
    config: WsConfig,
    tokens: Arc<dyn AccessTokens>,
    events: mpsc::Sender<Event>,
    status: watch::Sender<ConnectionStatus>,
    shutdown: CancellationToken,
    source: Source,
}

/// Holds the subscription's connection until `shutdown` fires or the
/// `events` receiver is dropped. Never gives up on errors: it logs them,
/// records them in `status` and retries with backoff.
pub async fn run_subscription(
    config: WsConfig,
    tokens: Arc<dyn AccessTokens>,
    events: mpsc::Sender<Event>,
    status: watch::Sender<ConnectionStatus>,
    shutdown: CancellationToken,
) {
    let source = Source::Websocket(config.name.clone());
    status.send_modify(|s| s.name = config.name.clone());
    let subscription = Arc::new(Subscription {
        config,
        tokens,
        events,
        status,
        shutdown,
        source,
    });
    subscription.run().await;
}

impl Subscription {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn set_up(&self, up: bool) {
        metrics::gauge!("zoomwire_connection_up", "subscription" => self.config.name.clone())
            .set(if up { 1.0 } else { 0.0 });
    }

    async fn run(self: &Arc<Self>) {
        let mut attempt: u32 = 0;
        let mut next: Option<Connection> = None;
        let mut first = true;
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            let connection = match next.take() {
                Some(connection) => Ok(connection),
                None => tokio::select! {
                    result = self.clone().connect(false) => result,
                    _ = self.shutdown.cancelled() => break,
                },
            };
            let connection = match connection {
                Ok(connection) => connection,
                Err(error) => {
                    let delay = self.connect_failed(&error, attempt);
                    attempt = attempt.saturating_add(1);
                    if !self.pause(delay).await {
                        break;
                    }
                    continue;
                }
            };
            self.connected(first);
            first = false;
            let session = self.session(connection).await;
            match session.end {
                End::Shutdown | End::EventsClosed => break,
                End::Renewed(connection) => {
                    self.count_reconnect("renewal");
                    next = Some(*connection);
                    attempt = 0;
                }
                end => {
                    attempt = if session.proved_alive {
                        0
                    } else {
                        attempt.saturating_add(1)
                    };
                    self.disconnected(&end, session.last_inbound_at);
                    // A working connection whose token ran out, or a handover:
                    // the next one can be opened at once.
                    let at_once =
                        session.proved_alive && matches!(end, End::InvalidToken | End::Handover);
                    let delay = if at_once {
                        Duration::ZERO
                    } else {
                        backoff_delay(
                            attempt,
                            self.config.backoff_initial,
                            self.config.backoff_max,
                        )
                    };
                    if !self.pause(delay).await {
                        break;
                    }
                }
            }
        }
        self.status.send_modify(|s| {
            s.connected = false;
            s.connected_since = None;
        });
        self.set_up(false);
        tracing::info!(subscription = %self.name(), "zoom event subscription stopped");
    }

    /// Sleeps unless shut down first; false when shut down.
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = sleep(delay) => true,
            _ = self.shutdown.cancelled() => false,
        }
    }

    fn count_reconnect(&self, reason: &'static str) {
        metrics::counter!(
            "zoomwire_reconnects_total",
            "subscription" => self.config.name.clone(),
            "reason" => reason
        )
        .increment(1);
        self.status.send_modify(|s| s.reconnects += 1);
    }

    /// Logs a failed attempt and says how long to wait before the next.
    fn connect_failed(&self, error: &ConnectError, attempt: u32) -> Duration {
        let message = error.to_string();
        let delay = match error {
            // A configuration error: retry slowly, never in a storm.
            ConnectError::Token(TokenError::Refused { .. }) | ConnectError::BadBase(_) => {
                tracing::error!(
                    subscription = %self.name(),
                    error = %message,
                    "cannot connect to the zoom event subscription"
                );
                self.config.backoff_max
            }
            _ => {
                tracing::warn!(
                    subscription = %self.name(),
                    error = %message,
                    attempt,
                    "cannot connect to the zoom event subscription"
                );
                backoff_delay(
                    attempt,
                    self.config.backoff_initial,
                    self.config.backoff_max,
                )
            }
        };
        self.status.send_modify(|s| s.last_error = Some(message));
        delay
    }

    /// Marks the connection up and closes the open gap, if any.
    fn connected(&self, first: bool) {
        let now = Utc::now();
        let mut closed_gap = None;
        self.status.send_modify(|s| {
            s.connected = true;
            s.connected_since = Some(now);
            s.last_error = None;
            if let Some(gap) = s.gaps.last_mut().filter(|g| g.end.is_none()) {
                gap.end = Some(now);
                closed_gap = Some(gap.clone());
            }
        });
        self.set_up(true);
        match closed_gap {
            Some(gap) => tracing::warn!(
                subscription = %self.name(),
                gap_start = %gap.start.to_rfc3339(),
                gap_end = %now.to_rfc3339(),
                gap_ms = (now - gap.start).num_milliseconds(),
                reason = %gap.reason,
                "zoom event subscription is back; events sent during the gap were not delivered"
            ),
            None if first => {
                tracing::info!(
                    subscription = %self.name(),
                    ws_base = %self.config.ws_base,
                    "connected to the zoom event subscription"
                )
            }
            None => {
                tracing::debug!(
                    subscription = %self.name(),
                    "zoom event subscription connection renewed"
                )
            }
        }
    }

    /// Marks the connection down and opens a gap.
    fn disconnected(&self, end: &End, last_inbound_at: DateTime<Utc>) {
        let reason = end.describe();
        let start = match end {
            End::Dead => last_inbound_at,
            _ => Utc::now(),
        };
        tracing::warn!(
            subscription = %self.name(),
            reason = %reason,
            gap_start = %start.to_rfc3339(),
            "lost the zoom event subscription connection; reconnecting"
        );
        self.status.send_modify(|s| {
            s.connected = false;
            s.connected_since = None;
            s.last_error = Some(reason.clone());
            s.gaps.push(Gap {
                start,
                end: None,
                reason,
            });
            if s.gaps.len() > MAX_GAPS {
                let excess = s.gaps.len() - MAX_GAPS;
                s.gaps.drain(..excess);
            }
        });
        self.set_up(false);
        self.count_reconnect(end.label());
    }

    /// A token for a new connection, fetched anew if the cached one expires too soon.
    async fn fresh_token(&self) -> Result<(AccessToken, Option<Instant>), TokenError> {
        let token = self.tokens.token().await?;
        let expiry = self.tokens.expires_at(&token).map(Instant::from_std);
        let too_soon = expiry.is_some_and(|at| {
            at.saturating_duration_since(Instant::now()) <= self.config.reconnect_before_expiry
        });
        if !too_soon {
            return Ok((token, expiry));
        }
        self.tokens.invalidate(&token);
        let token = self.tokens.token().await?;
        let expiry = self.tokens.expires_at(&token).map(Instant::from_std);
        Ok((token, expiry))
    }

    /// When to renew a connection whose token expires at `expiry`.
    fn renewal_time(&self, expiry: Option<Instant>) -> Option<Instant> {
        let expiry = expiry?;
        let now = Instant::now();
        let left = expiry.saturating_duration_since(now);
        // A token already close to expiry: renew halfway, never in a tight loop.
        let before = self.config.reconnect_before_expiry.min(left / 2);
        Some(expiry - before)
    }

    /// Opens a connection and waits for its successful `build_connection`.
    /// A refused `build_connection` drops the token, unless this is a
    /// `renewal` (the token is fresh; Zoom may be refusing a second
    /// connection instead).
    async fn connect(self: Arc<Self>, renewal: bool) -> Result<Connection, ConnectError> {
        let (token, expiry) = self.fresh_token().await?;
        let url = connection_url(&self.config.ws_base, &self.config.subscription_id, &token)?;
        let limits = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .max_message_size(Some(self.config.max_frame_bytes))
            .max_frame_size(Some(self.config.max_frame_bytes));
        let limit = self.config.connect_timeout;
        let handshake =
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(limits), true);
        let (mut socket, _) = match timeout(limit, handshake).await {
            Err(_) => return Err(ConnectError::Timeout(limit)),
            Ok(Ok(connected)) => connected,
            Ok(Err(error)) => return Err(self.handshake_error(error, &token)),
        };
        match timeout(limit, self.first_frame(&mut socket, &token)).await {
            Ok(Ok(())) => Ok(Connection {
                socket,
                renew_at: self.renewal_time(expiry),
                token,
            }),
            Ok(Err(error)) => {
                if !renewal && matches!(error, ConnectError::Refused(_)) {
                    // The token or the subscription was refused; a new token rules out the first.
                    self.tokens.invalidate(&token);
                }
                let _ = socket.close(None).await;
                Err(error)
            }
            Err(_) => Err(ConnectError::Timeout(limit)),
        }
    }

    /// A failed handshake; an upgrade refused with 401 or 403 drops the token.
    fn handshake_error(
        &self,
        error: tokio_tungstenite::tungstenite::Error,
        token: &AccessToken,
    ) -> ConnectError {
        use tokio_tungstenite::tungstenite::Error as WsError;
        if let WsError::Http(response) = &error {
            let status = response.status().as_u16();
            if matches!(status, 401 | 403) {
                self.tokens.invalidate(token);
                return ConnectError::Refused(format!(
                    "the websocket upgrade was refused with HTTP {status}"
                ));
            }
        }
        ConnectError::Transport(redact(&error.to_string(), token))
    }

    /// Reads up to the first text frame, which must be a successful `build_connection`.
    async fn first_frame(
        &self,
        socket: &mut Socket,
        token: &AccessToken,
    ) -> Result<(), ConnectError> {
        loop {
            let message = socket
                .next()
                .await
                .ok_or_else(|| ConnectError::Transport("closed before build_connection".into()))?
                .map_err(|e| ConnectError::Transport(redact(&e.to_string(), token)))?;
            let text = match message {
                Message::Text(text) => text,
                Message::Close(frame) => {
                    let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                    return Err(ConnectError::Transport(format!(
                        "closed before build_connection: {reason}"
                    )));
                }
                _ => continue,
            };
            return match decode_frame(&text, &self.source) {
                Ok(Frame::BuildConnection { success: true, .. }) => Ok(()),
                Ok(Frame::BuildConnection {
                    success: false,
                    content,
                }) => Err(ConnectError::Refused(redact(&content, token))),
                Ok(Frame::InvalidToken) => {
                    self.tokens.invalidate(token);
                    Err(ConnectError::InvalidToken)
                }
                Ok(other) => Err(ConnectError::Protocol(frame_kind(&other).into())),
                Err(error) => Err(ConnectError::Protocol(error.to_string())),
            };
        }
    }

    /// Serves one connection: heartbeats, frames, death, renewal.
    async fn session(self: &Arc<Self>, connection: Connection) -> SessionEnd {
        let Connection {
            socket,
            token,
            renew_at,
        } = connection;
        let (mut sink, mut stream) = socket.split();
        let interval = self.config.heartbeat_interval;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + interval, interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_inbound = Instant::now();
        let mut last_inbound_at = Utc::now();
        let mut proved_alive = false;
        let mut renew_at = renew_at;
        let mut renewal: Option<BoxFuture<'static, Result<Connection, ConnectError>>> = None;
        // One timer for the whole session, moved on only when it fires (at
        // most once per `dead_after`), not a new one for every frame.
        let dead = sleep_until(last_inbound + self.config.dead_after);
        tokio::pin!(dead);
        let never = Instant::now() + NEVER;
        let end = loop {
            let renew_deadline = renew_at.unwrap_or(never);
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    let _ = sink.send(Message::Close(None)).await;
                    return SessionEnd { end: End::Shutdown, last_inbound_at, proved_alive };
                }
                // Cannot panic: the branch is disabled while `renewal` is `None`.
                result = async { renewal.as_mut().expect("guarded by is_some").await },
                    if renewal.is_some() =>
                {
                    renewal = None;
                    match result {
                        Ok(next) => {
                            let _ = sink.send(Message::Close(None)).await;
                            let end = End::Renewed(Box::new(next));
                            return SessionEnd { end, last_inbound_at, proved_alive };
                        }
                        Err(ConnectError::Refused(reason)) => {
                            tracing::info!(
                                subscription = %self.name(),
                                reason = %reason,
                                "zoom refused the renewal connection while this one is open; handing over"
                            );
                            let _ = timeout(Duration::from_secs(2), sink.send(Message::Close(None))).await;
                            break End::Handover;
                        }
                        Err(error) => {
                            tracing::warn!(
                                subscription = %self.name(),
                                error = %error,
                                "cannot open the renewal connection; keeping the current one"
                            );
                            let retry = self.config.backoff_initial.max(Duration::from_millis(10));
                            renew_at = Some(Instant::now() + retry);
                        }
                    }
                }
                _ = sleep_until(renew_deadline), if renew_at.is_some() && renewal.is_none() => {
                    tracing::debug!(
                        subscription = %self.name(),
                        "token expires soon; opening the next connection"
                    );
                    renew_at = None;
                    renewal = Some(Box::pin(self.clone().connect(true)));
                }
                _ = heartbeat.tick() => {
                    if let Err(error) = sink.send(Message::text(HEARTBEAT_FRAME)).await {
                        break End::Error(redact(&error.to_string(), &token));
                    }
                }
                () = &mut dead => {
                    let dead_at = last_inbound + self.config.dead_after;
                    if dead_at <= Instant::now() {
                        break End::Dead;
                    }
                    dead.as_mut().reset(dead_at);
                }
                inbound = stream.next() => {
                    let message = match inbound {
                        Some(Ok(message)) => message,
                        Some(Err(error)) => break End::Error(redact(&error.to_string(), &token)),
                        None => break End::Closed("connection closed".into()),
                    };
                    last_inbound_at = Utc::now();
                    let is_text = matches!(message, Message::Text(_));
                    if let Some(end) = self.on_message(message, &token, last_inbound_at).await {
                        // A failed heartbeat proves nothing about the connection.
                        proved_alive |= is_text && !matches!(end, End::HeartbeatFailed);
                        break end;
                    }
                    proved_alive |= is_text;
                    // Measured after handling: time spent waiting for the engine
                    // to take an event is not server silence.
                    last_inbound = Instant::now();
                }
            }
        };
        if matches!(end, End::InvalidToken | End::HeartbeatFailed) {
            // The server may keep such a socket open: close it on our side.
            let _ = timeout(Duration::from_secs(2), sink.send(Message::Close(None))).await;
        }
        if matches!(end, End::Handover) {
            // Events already on their way on the old connection still count.
            self.drain(&mut stream, &token).await;
        }
        drop(sink);
        drop(stream);
        // The old connection ended while its successor was being opened: wait for it.
        if let Some(renewal) = renewal
            && !matches!(end, End::Shutdown | End::EventsClosed)
        {
            let next = tokio::select! {
                result = renewal => result.ok(),
                _ = self.shutdown.cancelled() => None,
            };
            if let Some(next) = next {
                return SessionEnd {
                    end: End::Renewed(Box::new(next)),
                    last_inbound_at,
                    proved_alive,
                };
            }
        }
        SessionEnd {
            end,
            last_inbound_at,
            proved_alive,
        }
    }

    /// After our close frame: handles what the server still sends until it
    /// closes too (the closing handshake), for a short while at most.
    async fn drain(
        &self,
        stream: &mut futures_util::stream::SplitStream<Socket>,
        token: &AccessToken,
    ) {
        let drained = timeout(Duration::from_secs(2), async {
            while let Some(Ok(message)) = stream.next().await {
                match message {
                    Message::Text(text) => {
                        if let Some(End::Shutdown | End::EventsClosed) =
                            self.handle_text(&text, token, Utc::now()).await
                        {
                            return;
                        }
                    }
                    Message::Close(_) => return,
                    _ => {}
                }
            }
        });
        let _ = drained.await;
    }

    /// Acts on one inbound message, received at `at`; `Some` ends the
    /// connection. A text frame's time goes into the status with what the
    /// frame changed there ([`Subscription::handle_text`]), so that an event
    /// costs one status update, not two.
    async fn on_message(
        &self,
        message: Message,
        token: &AccessToken,
        at: DateTime<Utc>,
    ) -> Option<End> {
        if let Message::Text(text) = &message {
            return self.handle_text(text, token, at).await;
        }
        note(&self.status, |s| s.last_frame_at = Some(at));
        match message {
            Message::Binary(bytes) => {
                self.count_skipped("binary");
                tracing::warn!(
                    subscription = %self.name(),
                    frame_bytes = bytes.len(),
                    "skipped a binary zoom frame"
                );
                None
            }
            Message::Close(frame) => {
                let reason = frame
                    .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                    .unwrap_or_else(|| "no reason".into());
                Some(End::Closed(reason))
            }
            // Text was handled above.
            Message::Text(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
        }
    }

    fn count_skipped(&self, reason: &'static str) {
        metrics::counter!(
            "zoomwire_frames_skipped_total",
            "subscription" => self.config.name.clone(),
            "reason" => reason
        )
        .increment(1);
        note(&self.status, |s| s.frames_skipped += 1);
    }

    /// Acts on one text frame received at `at` (which it records as the
    /// last frame's time); `Some` ends the connection.
    async fn handle_text(&self, text: &str, token: &AccessToken, at: DateTime<Utc>) -> Option<End> {
        let frame = decode_frame(text, &self.source);
        note(&self.status, |s| {
            s.last_frame_at = Some(at);
            if let Ok(Frame::Event(_)) = &frame {
                s.events_received += 1;
                s.last_event_at = Some(at);
            }
        });
        match frame {
            Ok(Frame::Event(event)) => {
                tracing::debug!(
                    subscription = %self.name(),
                    event_type = %event.event_type,
                    event_id = %event.id,
                    "received a zoom event"
                );
                tokio::select! {
                    sent = self.events.send(*event) => sent.is_err().then_some(End::EventsClosed),
                    _ = self.shutdown.cancelled() => Some(End::Shutdown),
                }
            }
            Ok(Frame::Heartbeat { success: true }) => {
                note(&self.status, |s| s.heartbeat_replies += 1);
                None
            }
            Ok(Frame::Heartbeat { success: false }) => {
                tracing::warn!(
                    subscription = %self.name(),
                    "zoom answered a heartbeat with success:false; reconnecting"
                );
                Some(End::HeartbeatFailed)
            }
            Ok(Frame::InvalidToken) => {
                self.tokens.invalidate(token);
                Some(End::InvalidToken)
            }
            Ok(Frame::BuildConnection { success, .. }) => {
                tracing::debug!(
                    subscription = %self.name(),
                    success,
                    "ignored a repeated build_connection frame"
                );
                None
            }
            Ok(Frame::Unknown { module }) => {
                self.count_skipped("unknown_module");
                tracing::info!(
                    subscription = %self.name(),
                    module = %module,
                    "skipped a zoom frame of an unknown module"
                );
                None
            }
            Err(error) => {
                self.count_skipped("malformed");
                tracing::warn!(
                    subscription = %self.name(),
                    error = %error,
                    frame_bytes = text.len(),
                    "skipped a malformed zoom frame"
                );
                None
            }
        }
    }
}

/// Query parameters the client sets itself; a pasted endpoint URL may carry them.
const OWN_PARAMS: [&str; 2] = ["subscriptionId", "access_token"];

/// An endpoint URL as a user may paste it from the Marketplace, split into
/// the base (without `subscriptionId` or `access_token`) and the
/// subscription id it carried, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub base: String,
    pub subscription_id: Option<String>,
}

/// Updates the status's counters and times (frames, events, heartbeats)
/// without waking its watchers: nothing waits for those, and waking them on
/// every frame was ~1.3% of the daemon's CPU samples in a burst (tokio's
/// `notify_waiters`). Whoever reads the status sees them (the health page,
/// the reconciler's poll once a second); a change in the connection itself
/// (up, down, a gap, an error) goes through `send_modify` and wakes the
/// watchers.
fn note(status: &watch::Sender<ConnectionStatus>, update: impl FnOnce(&mut ConnectionStatus)) {
    status.send_if_modified(|s| {
        update(s);
        false
    });
}

/// Splits a WebSocket endpoint URL (`wss://ws.zoom.us/ws?subscriptionId=X`).
pub fn parse_endpoint(text: &str) -> Result<Endpoint, url::ParseError> {
    let mut url = url::Url::parse(text.trim())?;
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let subscription_id = pairs
        .iter()
        .find(|(k, v)| k == "subscriptionId" && !v.is_empty())
        .map(|(_, v)| v.clone());
    let kept: Vec<&(String, String)> = pairs
        .iter()
        .filter(|(k, _)| !OWN_PARAMS.contains(&k.as_str()))
        .collect();
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut()
            .clear()
            .extend_pairs(kept.iter().map(|(k, v)| (k, v)));
    }
    Ok(Endpoint {
        base: url.as_str().trim_end_matches('/').to_string(),
        subscription_id,
    })
}

/// The URL of one connection: the base's own parameters kept, ours set once.
fn connection_url(
    ws_base: &str,
    subscription_id: &str,
    token: &AccessToken,
) -> Result<url::Url, ConnectError> {
    let base = parse_endpoint(ws_base).map_err(|_| ConnectError::BadBase(ws_base.into()))?;
    let mut url = url::Url::parse(&base.base).map_err(|_| ConnectError::BadBase(ws_base.into()))?;
    url.query_pairs_mut()
        .append_pair("subscriptionId", subscription_id)
        .append_pair("access_token", token.expose());
    Ok(url)
}

fn frame_kind(frame: &Frame) -> &'static str {
    match frame {
        Frame::BuildConnection { .. } => "build_connection",
        Frame::Heartbeat { .. } => "heartbeat",
        Frame::Event(_) => "an event",
        Frame::InvalidToken => "invalid token",
        Frame::Unknown { .. } => "an unknown module",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_seen_without_waking_watchers_and_connection_changes_wake_them() {
        let (status, mut watcher) = watch::channel(ConnectionStatus::default());
        watcher.mark_unchanged();
        note(&status, |s| s.events_received += 1);
        note(&status, |s| s.heartbeat_replies += 1);
        assert!(!watcher.has_changed().unwrap());
        assert_eq!(watcher.borrow().events_received, 1);
        assert_eq!(watcher.borrow().heartbeat_replies, 1);
        status.send_modify(|s| s.connected = true);
        assert!(watcher.has_changed().unwrap());
        assert!(watcher.borrow_and_update().connected);
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for attempt in 0..40 {
            let delay = backoff_delay(attempt, initial, max);
            let cap = initial
                .saturating_mul(2u32.saturating_pow(attempt.min(30)))
                .min(max);
            assert!(delay <= cap, "attempt {attempt}: {delay:?} > {cap:?}");
        }
        let spread: std::collections::HashSet<_> =
            (0..20).map(|_| backoff_delay(10, initial, max)).collect();
        assert!(spread.len() > 1, "full jitter varies the delay");
    }

    #[test]
    fn a_pasted_endpoint_url_gives_its_subscription_once() {
        let pasted = parse_endpoint("wss://ws.zoom.us/ws?subscriptionId=abc-123").unwrap();
        assert_eq!(pasted.base, "wss://ws.zoom.us/ws");
        assert_eq!(pasted.subscription_id.as_deref(), Some("abc-123"));
        let plain = parse_endpoint("ws://127.0.0.1:9/ws").unwrap();
        assert_eq!(plain.base, "ws://127.0.0.1:9/ws");
        assert_eq!(plain.subscription_id, None);
        let url = connection_url(
            "wss://ws.zoom.us/ws?subscriptionId=abc&region=eu&access_token=old",
            "abc",
            &AccessToken::new("t"),
        )
        .unwrap();
        assert_eq!(
            url.as_str(),
            "wss://ws.zoom.us/ws?region=eu&subscriptionId=abc&access_token=t"
        );
    }

    #[test]
    fn redaction_hides_raw_and_encoded_tokens() {
        let token = AccessToken::new("ab+c/d=");
        let text = "failed ws://h/ws?access_token=ab%2Bc%2Fd%3D and ab+c/d=";
        let redacted = redact(text, &token);
        assert!(!redacted.contains("ab+c/d="));
        assert!(!redacted.contains("ab%2Bc%2Fd%3D"));
    }
}
