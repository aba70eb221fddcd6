//! The control API under `/_sim/`: the same levers as [`SimHandle`]'s
//! methods, over HTTP, for the demo and for tests in other processes.
//!
//! | request | effect |
//! | --- | --- |
//! | `POST /_sim/events[?subscription=ID&delay_ms=N&times=N]` body = event JSON | emit a `message` frame (later, several times) |
//! | `POST /_sim/frames[?subscription=ID]` body = raw text | send the text frame as is |
//! | `POST /_sim/drop[?subscription=ID]` | drop connections without a close handshake |
//! | `POST /_sim/stall[?subscription=ID]` | stop replying and sending, keep TCP open |
//! | `POST /_sim/fail_heartbeats[?subscription=ID]` | answer heartbeats with `success:false` |
//! | `POST /_sim/meetings[?account=ID]` body = [`NewMeeting`] JSON | add an ended meeting, answers `{uuid}` |
//! | `POST /_sim/recordings/complete` body = `{"uuid"}` | a processing recording completes |
//! | `POST /_sim/users[?account=ID]` body = [`NewUser`] JSON | add a user created now |
//! | `POST /_sim/expire_tokens` | expire every issued token now |
//! | `POST /_sim/faults` body = [`Fault`] JSON | fail the next N requests to a path prefix |
//! | `POST /_sim/delays` body = `{"path_prefix", "delay_ms"}` | slow a path prefix down |
//! | `POST /_sim/downloads` body = `{"file_id", "size"}` | add a downloadable file |
//! | `GET /_sim/requests`, `/_sim/slack_posts`, `/_sim/connections` | what the simulator saw |
//! | `POST /_sim/reset` | forget requests, posts, faults, delays; reseed the data |
//!
//! Control requests are neither recorded nor subject to faults.
//!
//! [`SimHandle`]: super::SimHandle
//! [`NewMeeting`]: super::NewMeeting
//! [`NewUser`]: super::NewUser

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::data::{NewMeeting, NewUser};
use super::faults::Fault;
use super::state::SimState;

pub(crate) fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route("/events", post(emit_event))
        .route("/frames", post(emit_frame))
        .route("/drop", post(drop_connections))
        .route("/stall", post(stall))
        .route("/fail_heartbeats", post(fail_heartbeats))
        .route("/meetings", post(add_meeting))
        .route("/recordings/complete", post(complete_recording))
        .route("/users", post(add_user))
        .route("/expire_tokens", post(expire_tokens))
        .route("/faults", post(inject_fault))
        .route("/delays", post(set_delay))
        .route("/downloads", post(add_download))
        .route("/requests", get(requests))
        .route("/slack_posts", get(slack_posts))
        .route("/connections", get(connections))
        .route("/reset", post(reset))
}

#[derive(Debug, Deserialize)]
struct Target {
    subscription: Option<String>,
    /// Deliver this much later (events only).
    delay_ms: Option<u64>,
    /// Deliver this many times (events only; 2 for a double delivery).
    times: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct AccountQuery {
    account: Option<String>,
}

fn bad_request(message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": message.into() })),
    )
        .into_response()
}

async fn emit_event(
    State(sim): State<Arc<SimState>>,
    Query(target): Query<Target>,
    body: String,
) -> Response {
    let event: Value = match serde_json::from_str(&body) {
        Ok(event @ Value::Object(_)) => event,
        _ => return bad_request("body must be a Zoom event JSON object"),
    };
    let times = target.times.unwrap_or(1);
    match target.delay_ms {
        Some(delay_ms) => {
            for _ in 0..times {
                sim.clone().emit_event_later(
                    target.subscription.clone(),
                    event.clone(),
                    Duration::from_millis(delay_ms),
                );
            }
            axum::Json(json!({ "scheduled": times })).into_response()
        }
        None => {
            let delivered: usize = (0..times)
                .map(|_| sim.emit_event(target.subscription.as_deref(), &event))
                .sum();
            axum::Json(json!({ "delivered": delivered })).into_response()
        }
    }
}

async fn emit_frame(
    State(sim): State<Arc<SimState>>,
    Query(target): Query<Target>,
    body: String,
) -> Response {
    let delivered = sim.emit_raw(target.subscription.as_deref(), &body);
    axum::Json(json!({ "delivered": delivered })).into_response()
}

async fn drop_connections(
    State(sim): State<Arc<SimState>>,
    Query(target): Query<Target>,
) -> Response {
    let dropped = sim.drop_connections(target.subscription.as_deref());
    axum::Json(json!({ "dropped": dropped })).into_response()
}

async fn stall(State(sim): State<Arc<SimState>>, Query(target): Query<Target>) -> Response {
    let stalled = sim.stall(target.subscription.as_deref());
    axum::Json(json!({ "stalled": stalled })).into_response()
}

async fn fail_heartbeats(
    State(sim): State<Arc<SimState>>,
    Query(target): Query<Target>,
) -> Response {
    let failing = sim.fail_heartbeats(target.subscription.as_deref());
    axum::Json(json!({ "failing": failing })).into_response()
}

async fn add_meeting(
    State(sim): State<Arc<SimState>>,
    Query(query): Query<AccountQuery>,
    body: String,
) -> Response {
    let meeting: NewMeeting = match serde_json::from_str(&body) {
        Ok(meeting) => meeting,
        Err(error) => return bad_request(format!("not a meeting: {error}")),
    };
    match sim.add_meeting(query.account.as_deref(), &meeting) {
        Some(uuid) => axum::Json(json!({ "uuid": uuid })).into_response(),
        None => bad_request("unknown account or host"),
    }
}

#[derive(Debug, Deserialize)]
struct UuidBody {
    uuid: String,
}

async fn complete_recording(State(sim): State<Arc<SimState>>, body: String) -> Response {
    match serde_json::from_str::<UuidBody>(&body) {
        Ok(target) if sim.complete_recording(&target.uuid) => {
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(_) => bad_request("no recording has that uuid"),
        Err(error) => bad_request(format!("expected {{uuid}}: {error}")),
    }
}

async fn add_user(
    State(sim): State<Arc<SimState>>,
    Query(query): Query<AccountQuery>,
    body: String,
) -> Response {
    let user: NewUser = match serde_json::from_str(&body) {
        Ok(user) => user,
        Err(error) => return bad_request(format!("not a user: {error}")),
    };
    match sim.add_user(query.account.as_deref(), &user) {
        Some(user) => axum::Json(user).into_response(),
        None => bad_request("unknown account"),
    }
}

async fn expire_tokens(State(sim): State<Arc<SimState>>) -> StatusCode {
    sim.expire_tokens();
    StatusCode::NO_CONTENT
}

async fn inject_fault(State(sim): State<Arc<SimState>>, body: String) -> Response {
    match serde_json::from_str::<Fault>(&body) {
        Ok(fault) => {
            sim.inject_fault(fault);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error) => bad_request(format!("not a fault: {error}")),
    }
}

#[derive(Debug, Deserialize)]
struct DelayBody {
    path_prefix: String,
    delay_ms: u64,
}

async fn set_delay(State(sim): State<Arc<SimState>>, body: String) -> Response {
    match serde_json::from_str::<DelayBody>(&body) {
        Ok(delay) => {
            sim.set_delay(&delay.path_prefix, Duration::from_millis(delay.delay_ms));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error) => bad_request(format!("expected {{path_prefix, delay_ms}}: {error}")),
    }
}

#[derive(Debug, Deserialize)]
struct DownloadBody {
    file_id: String,
    size: u64,
}

async fn add_download(State(sim): State<Arc<SimState>>, body: String) -> Response {
    match serde_json::from_str::<DownloadBody>(&body) {
        Ok(download) => {
            sim.add_download(&download.file_id, download.size);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error) => bad_request(format!("expected {{file_id, size}}: {error}")),
    }
}

async fn requests(State(sim): State<Arc<SimState>>) -> Response {
    axum::Json(sim.requests()).into_response()
}

async fn slack_posts(State(sim): State<Arc<SimState>>) -> Response {
    axum::Json(sim.slack_posts()).into_response()
}

async fn connections(State(sim): State<Arc<SimState>>) -> Response {
    axum::Json(sim.connections()).into_response()
}

async fn reset(State(sim): State<Arc<SimState>>) -> StatusCode {
    sim.reset();
    StatusCode::NO_CONTENT
}
