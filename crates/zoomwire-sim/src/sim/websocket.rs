//! The simulated WebSocket event subscription at
//! `/ws?subscriptionId=..&access_token=..`.
//!
//! Each connection answers its first frame `build_connection` (success false
//! for an unknown subscription, a bad token or another account's token, then
//! closes; or, when so configured, a bad token is refused at the HTTP
//! upgrade with 401 or 403), replies to the client's
//! `{"module":"heartbeat"}` and forwards events as `message` frames whose
//! content is the event JSON as a string. When its token expires (by time
//! or on demand) it sends the invalid-token frame and then closes, or keeps
//! the socket open delivering nothing more. A second connection on a
//! subscription replaces the first, is refused, or both get every event, as
//! [`SecondConnection`] says. A client silent for longer than the
//! configured timeout is closed.
//!
//! A connection obeys [`ConnCommand`]s from the control side: send a frame,
//! drop TCP without a closing handshake, stall (stop replying and sending
//! but keep TCP open, the half-open connection a client must detect), or
//! answer heartbeats with `success:false`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::SinkExt;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::SecondConnection;
use super::oauth::TokenCheck;
use super::state::{ConnCommand, ConnectionRecord, OpenConnection, SimState, lock};

/// Commands queued per connection before `try_send` drops them.
const COMMAND_QUEUE: usize = 1024;
/// Far enough in the future to mean "never" for a timer.
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

pub(crate) fn routes() -> Router<Arc<SimState>> {
    Router::new().route("/ws", get(upgrade))
}

async fn upgrade(
    State(sim): State<Arc<SimState>>,
    Query(query): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let subscription = query.get("subscriptionId").cloned().unwrap_or_default();
    let token = query.get("access_token").cloned().unwrap_or_default();
    if sim.in_outage() {
        sim.refused_at_upgrade(
            &subscription,
            sim.token_serial(&token),
            "refused during an outage",
        );
        return (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response();
    }
    if let Some(status) = sim.config.upgrade_refusal_status
        && !matches!(sim.check_token(&token), TokenCheck::Valid(_))
    {
        sim.refused_at_upgrade(
            &subscription,
            sim.token_serial(&token),
            "refused at upgrade",
        );
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED);
        return (status, "Invalid access token").into_response();
    }
    ws.on_upgrade(move |socket| serve_connection(sim, socket, subscription, token))
}

/// How one connection ended.
enum End {
    /// Close with a close frame, for this reason.
    Close(&'static str),
    /// Drop TCP without a closing handshake.
    Drop,
    /// The client went away.
    ClientGone,
}

impl SimState {
    /// Registers a new connection. An open one for the same subscription is
    /// replaced, refuses it, or stays beside it ([`SecondConnection`]);
    /// `accepted` is then whether it was accepted.
    fn open_connection(
        &self,
        subscription: &str,
        token_serial: Option<u64>,
        wanted: bool,
    ) -> (u64, bool, mpsc::Receiver<ConnCommand>) {
        let (sender, receiver) = mpsc::channel(COMMAND_QUEUE);
        let mut connections = lock(&self.connections);
        connections.next_id += 1;
        let id = connections.next_id;
        let held = connections
            .open
            .values()
            .any(|open| open.subscription_id == subscription);
        let second = self.config.second_connection;
        let accepted = wanted && !(held && second == SecondConnection::RejectNew);
        if accepted {
            if second == SecondConnection::Replace {
                for open in connections.open.values() {
                    if open.subscription_id == subscription {
                        let _ = open.commands.try_send(ConnCommand::Replace);
                    }
                }
            }
            connections.open.insert(
                id,
                OpenConnection {
                    subscription_id: subscription.to_string(),
                    commands: sender,
                },
            );
        }
        let close_reason = match (wanted, accepted) {
            (false, _) => Some("refused".to_string()),
            (true, false) => Some("refused: the subscription has a connection".to_string()),
            _ => None,
        };
        connections.history.push(ConnectionRecord {
            id,
            subscription_id: subscription.to_string(),
            opened_at: chrono::Utc::now(),
            token_serial,
            accepted,
            open: accepted,
            heartbeats_received: 0,
            frames_sent: 0,
            close_reason,
        });
        drop(connections);
        self.connection_changes.send_modify(|n| *n += 1);
        (id, accepted, receiver)
    }

    /// Drops every connection and refuses new ones for `duration`: no
    /// connection is open, so events sent meanwhile are lost, as on Zoom.
    pub fn outage(&self, duration: Duration) -> usize {
        *lock(&self.outage_until) = Some(Instant::now() + duration);
        // Out of the routing table at once, so nothing emitted from now on is delivered.
        let dropped: Vec<OpenConnection> = lock(&self.connections)
            .open
            .drain()
            .map(|(_, c)| c)
            .collect();
        self.connection_changes.send_modify(|n| *n += 1);
        dropped
            .iter()
            .filter(|c| c.commands.try_send(ConnCommand::Drop).is_ok())
            .count()
    }

    fn in_outage(&self) -> bool {
        lock(&self.outage_until).is_some_and(|until| until > Instant::now())
    }

    /// Records a connection refused at the HTTP upgrade.
    fn refused_at_upgrade(&self, subscription: &str, token_serial: Option<u64>, reason: &str) {
        let mut connections = lock(&self.connections);
        connections.next_id += 1;
        let id = connections.next_id;
        connections.history.push(ConnectionRecord {
            id,
            subscription_id: subscription.to_string(),
            opened_at: chrono::Utc::now(),
            token_serial,
            accepted: false,
            open: false,
            heartbeats_received: 0,
            frames_sent: 0,
            close_reason: Some(reason.into()),
        });
        drop(connections);
        self.connection_changes.send_modify(|n| *n += 1);
    }

    /// Takes a connection out of the routing table but leaves it running (a
    /// socket kept open after its token became invalid).
    fn stop_routing(&self, id: u64) {
        lock(&self.connections).open.remove(&id);
        self.connection_changes.send_modify(|n| *n += 1);
    }

    fn close_connection(&self, id: u64, reason: &str) {
        let mut connections = lock(&self.connections);
        connections.open.remove(&id);
        if let Some(record) = connections.record_mut(id) {
            record.open = false;
            record
                .close_reason
                .get_or_insert_with(|| reason.to_string());
        }
        drop(connections);
        self.connection_changes.send_modify(|n| *n += 1);
    }

    fn count(&self, id: u64, update: impl FnOnce(&mut ConnectionRecord)) {
        if let Some(record) = lock(&self.connections).record_mut(id) {
            update(record);
        }
    }

    /// Sends `command` to the open connections of `subscription` (all if `None`).
    fn command(&self, subscription: Option<&str>, command: impl Fn() -> ConnCommand) -> usize {
        lock(&self.connections)
            .open
            .values()
            .filter(|c| subscription.is_none_or(|s| c.subscription_id == s))
            .filter(|c| c.commands.try_send(command()).is_ok())
            .count()
    }

    pub fn emit_raw(&self, subscription: Option<&str>, text: &str) -> usize {
        self.command(subscription, || ConnCommand::Send(text.to_string()))
    }

    pub async fn send_frame(&self, subscription: Option<&str>, text: String) -> usize {
        let senders: Vec<mpsc::Sender<ConnCommand>> = lock(&self.connections)
            .open
            .values()
            .filter(|c| subscription.is_none_or(|s| c.subscription_id == s))
            .map(|c| c.commands.clone())
            .collect();
        let Some((last, others)) = senders.split_last() else {
            return 0;
        };
        let mut delivered = 0;
        for sender in others {
            if sender.send(ConnCommand::Send(text.clone())).await.is_ok() {
                delivered += 1;
            }
        }
        if last.send(ConnCommand::Send(text)).await.is_ok() {
            delivered += 1;
        }
        delivered
    }

    pub fn emit_event(&self, subscription: Option<&str>, event: &serde_json::Value) -> usize {
        let frame = json!({ "module": "message", "content": event.to_string() }).to_string();
        self.emit_raw(subscription, &frame)
    }

    pub fn drop_connections(&self, subscription: Option<&str>) -> usize {
        self.command(subscription, || ConnCommand::Drop)
    }

    pub fn stall(&self, subscription: Option<&str>) -> usize {
        self.command(subscription, || ConnCommand::Stall)
    }

    pub fn fail_heartbeats(&self, subscription: Option<&str>) -> usize {
        self.command(subscription, || ConnCommand::FailHeartbeats)
    }

    pub fn emit_event_later(
        self: Arc<Self>,
        subscription: Option<String>,
        event: serde_json::Value,
        delay: Duration,
    ) {
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {
                    self.emit_event(subscription.as_deref(), &event);
                }
                _ = self.shutdown.cancelled() => {}
            }
        });
    }

    pub fn connections(&self) -> Vec<ConnectionRecord> {
        lock(&self.connections).history.clone()
    }

    fn accepted_and_open(&self, subscription: &str) -> (usize, bool) {
        let connections = lock(&self.connections);
        let accepted = connections
            .history
            .iter()
            .filter(|r| r.subscription_id == subscription && r.accepted)
            .count();
        let open = connections
            .open
            .values()
            .any(|c| c.subscription_id == subscription);
        (accepted, open)
    }

    pub async fn wait_for_connections(
        &self,
        subscription: &str,
        accepted: usize,
        timeout: Duration,
    ) -> bool {
        let mut changes = self.connection_changes.subscribe();
        let wait = async {
            loop {
                let (seen, open) = self.accepted_and_open(subscription);
                if seen >= accepted && open {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

async fn send_text(socket: &mut WebSocket, text: String) -> bool {
    socket.send(Message::Text(text.into())).await.is_ok()
}

async fn serve_connection(
    sim: Arc<SimState>,
    mut socket: WebSocket,
    subscription: String,
    token: String,
) {
    let check = sim.check_token(&token);
    let owner = sim
        .account_of_subscription(&subscription)
        .map(|a| a.account_id.clone());
    let (wanted, mut content) = match (&owner, &check) {
        (None, _) => (false, "Invalid subscriptionId"),
        (Some(owner), TokenCheck::Valid(issued)) if *owner == issued.account_id => {
            (true, "connected")
        }
        (Some(_), TokenCheck::Valid(_)) => (false, "The subscription belongs to another account"),
        (Some(_), _) => (false, "Invalid access_token"),
    };
    let (id, accepted, commands) =
        sim.open_connection(&subscription, sim.token_serial(&token), wanted);
    if wanted && !accepted {
        content = "The subscription already has a connection";
    }
    let first = json!({ "module": "build_connection", "success": accepted, "content": content });
    if !send_text(&mut socket, first.to_string()).await || !accepted {
        let _ = socket.send(Message::Close(None)).await;
        sim.close_connection(id, "refused");
        return;
    }
    let expires_at = match check {
        TokenCheck::Valid(issued) => issued.expires_at,
        _ => Instant::now(),
    };
    let end = run_connection(&sim, &mut socket, id, &token, expires_at, commands).await;
    let reason = match end {
        End::Close(reason) => {
            let frame = CloseFrame {
                code: 1000,
                reason: reason.into(),
            };
            let _ = socket.send(Message::Close(Some(frame))).await;
            reason
        }
        End::Drop => "dropped",
        End::ClientGone => "client closed",
    };
    sim.close_connection(id, reason);
}

/// What one connection is doing besides serving.
#[derive(Default)]
struct Mode {
    /// Stopped replying and sending.
    stalled: bool,
    /// Answers heartbeats with `success:false`.
    failing_heartbeats: bool,
    /// Its token became invalid and the socket was kept open: nothing more is sent.
    token_invalid: bool,
}

/// Serves one accepted connection until it ends.
async fn run_connection(
    sim: &SimState,
    socket: &mut WebSocket,
    id: u64,
    token: &str,
    mut expires_at: Instant,
    mut commands: mpsc::Receiver<ConnCommand>,
) -> End {
    let mut token_epoch = sim.token_epoch.subscribe();
    let silent_limit = sim.config.silent_client_timeout;
    let mut last_inbound = Instant::now();
    let mut mode = Mode::default();
    loop {
        let silent_deadline = last_inbound + silent_limit.unwrap_or(NEVER);
        tokio::select! {
            _ = sim.shutdown.cancelled() => return End::Close("simulator shutting down"),
            command = commands.recv(), if !mode.token_invalid => {
                let Some(command) = command else {
                    return End::Close("simulator shutting down");
                };
                if let Err(end) = obey(sim, socket, id, command, &mut commands, &mut mode).await {
                    return end;
                }
            },
            _ = sleep_until(expires_at), if !mode.stalled && !mode.token_invalid => {
                let frame = json!({
                    "module": sim.config.invalid_token_module,
                    "success": false,
                    "content": sim.config.invalid_token_text,
                });
                let _ = send_text(socket, frame.to_string()).await;
                if sim.config.invalid_token_closes {
                    return End::Close("token expired");
                }
                mode.token_invalid = true;
                sim.stop_routing(id);
            }
            changed = token_epoch.changed() => {
                if changed.is_ok() && !matches!(sim.check_token(token), TokenCheck::Valid(_)) {
                    expires_at = expires_at.min(Instant::now());
                }
            }
            _ = sleep_until(silent_deadline), if !mode.stalled && silent_limit.is_some() => {
                return End::Close("client silent too long");
            }
            inbound = socket.recv() => match inbound {
                Some(Ok(Message::Text(text))) => {
                    last_inbound = Instant::now();
                    if is_heartbeat(&text) {
                        sim.count(id, |r| r.heartbeats_received += 1);
                        let reply = heartbeat_reply(!mode.failing_heartbeats);
                        if !mode.stalled && !send_text(socket, reply).await {
                            return End::ClientGone;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return End::ClientGone,
                Some(Ok(_)) => last_inbound = Instant::now(),
            },
        }
    }
}

/// Carries out one command. Text frames already queued behind a `Send` go
/// out with it under one flush, so a fast sender is not held to one write
/// per frame.
async fn obey(
    sim: &SimState,
    socket: &mut WebSocket,
    id: u64,
    command: ConnCommand,
    commands: &mut mpsc::Receiver<ConnCommand>,
    mode: &mut Mode,
) -> Result<(), End> {
    let command = match command {
        ConnCommand::Send(_) if mode.stalled => return Ok(()),
        ConnCommand::Send(text) => {
            let (sent, next) = send_queued(socket, text, commands).await?;
            sim.count(id, |r| r.frames_sent += sent);
            match next {
                Some(next) => next,
                None => return Ok(()),
            }
        }
        other => other,
    };
    match command {
        // Cannot be a send: `send_queued` hands back only other commands.
        ConnCommand::Send(_) => Ok(()),
        ConnCommand::Stall => {
            mode.stalled = true;
            Ok(())
        }
        ConnCommand::FailHeartbeats => {
            mode.failing_heartbeats = true;
            Ok(())
        }
        ConnCommand::Drop => Err(End::Drop),
        ConnCommand::Replace => Err(End::Close("replaced by a newer connection")),
    }
}

/// Most frames written under one flush.
const MAX_FRAMES_PER_FLUSH: u64 = 256;

/// Writes `first` and the text frames queued behind it, then flushes.
/// Returns how many were sent and the first other command found.
async fn send_queued(
    socket: &mut WebSocket,
    first: String,
    commands: &mut mpsc::Receiver<ConnCommand>,
) -> Result<(u64, Option<ConnCommand>), End> {
    socket
        .feed(Message::Text(first.into()))
        .await
        .map_err(|_| End::ClientGone)?;
    let mut sent = 1;
    let mut other = None;
    while sent < MAX_FRAMES_PER_FLUSH {
        match commands.try_recv() {
            Ok(ConnCommand::Send(text)) => {
                socket
                    .feed(Message::Text(text.into()))
                    .await
                    .map_err(|_| End::ClientGone)?;
                sent += 1;
            }
            Ok(command) => {
                other = Some(command);
                break;
            }
            Err(_) => break,
        }
    }
    socket.flush().await.map_err(|_| End::ClientGone)?;
    Ok((sent, other))
}

fn is_heartbeat(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .is_ok_and(|frame| frame["module"] == "heartbeat")
}

fn heartbeat_reply(success: bool) -> String {
    let content = if success { "live" } else { "heartbeat failed" };
    json!({ "module": "heartbeat", "success": success, "content": content, "header": {} })
        .to_string()
}
