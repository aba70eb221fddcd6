//! The simulated REST API under `/v2`: Bearer auth against the issued-token
//! table, Zoom's `{"code","message"}` errors, `page_size`/`next_page_token`
//! pagination, and the endpoints automations use (meetings, recordings, past
//! meeting and report participants, users) over the [`SimData`] of the
//! token's account: another account's meeting is 404 `3001`, another
//! account's user 400 `1010`, as on Zoom. The listings reconciliation reads
//! live in `listing.rs`.
//!
//! Meeting UUIDs follow Zoom's encoding rule: the router decodes a path
//! segment once; a segment that then begins with `/` or contains `//` was
//! encoded only once, and Zoom answers 404 for it, so the simulator does too.
//! Otherwise the segment is decoded a second time and looked up.
//!
//! [`SimData`]: super::data::SimData

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use serde_json::{Value, json};

use super::data::SimData;
use super::oauth::TokenCheck;
use super::state::{SimState, lock};

/// Zoom's largest page.
const MAX_PAGE_SIZE: usize = 300;
const DEFAULT_PAGE_SIZE: usize = 30;
const PAGE_TOKEN_PREFIX: &str = "simpage";

pub(crate) fn routes(state: Arc<SimState>) -> Router<Arc<SimState>> {
    Router::new()
        .route(
            "/meetings/{meeting_id}",
            get(get_meeting).patch(patch_meeting).delete(delete_meeting),
        )
        .route(
            "/meetings/{meeting_id}/recordings",
            get(get_recordings).delete(delete_recordings),
        )
        .route(
            "/meetings/{meeting_id}/recordings/{recording_id}",
            delete(delete_recording_file),
        )
        .route(
            "/past_meetings/{meeting_uuid}/participants",
            get(past_participants),
        )
        .route(
            "/report/meetings/{meeting_id}/participants",
            get(report_participants),
        )
        .route("/users/{user_id}", get(get_user))
        .merge(super::listing::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state, bearer_auth))
}

/// Zoom's error body with its status.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: u32,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: u32, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn meeting_not_found(id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            3001,
            format!("Meeting does not exist: {id}."),
        )
    }

    pub(crate) fn recording_not_found() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            3301,
            "This recording does not exist.",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({ "code": self.code, "message": self.message })),
        )
            .into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, 404, "Not Found")
}

/// The account whose token called: handlers see only its data.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub account_id: String,
}

/// Middleware: a valid, unexpired Bearer token or 401 code 124.
async fn bearer_auth(
    State(sim): State<Arc<SimState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match token.map(|t| sim.check_token(t)) {
        Some(TokenCheck::Valid(issued)) => {
            request.extensions_mut().insert(Caller {
                account_id: issued.account_id,
            });
            next.run(request).await
        }
        Some(TokenCheck::Expired) => {
            ApiError::new(StatusCode::UNAUTHORIZED, 124, "Access token is expired.").into_response()
        }
        _ => ApiError::new(StatusCode::UNAUTHORIZED, 124, "Invalid access token.").into_response(),
    }
}

/// Runs `f` on the caller's account data.
pub(crate) fn with_data<R>(
    sim: &SimState,
    caller: &Caller,
    f: impl FnOnce(&mut SimData) -> Result<R, ApiError>,
) -> Result<R, ApiError> {
    let mut all = lock(&sim.data);
    let data = all
        .get_mut(&caller.account_id)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, 124, "Invalid access token."))?;
    f(data)
}

/// The meeting id or UUID from a path segment the router decoded once.
pub(crate) fn meeting_key(segment: &str) -> Result<String, ApiError> {
    if segment.starts_with('/') || segment.contains("//") {
        // Encoded once only: Zoom's router sees another path and answers 404.
        return Err(ApiError::meeting_not_found(segment));
    }
    Ok(percent_decode_str(segment).decode_utf8_lossy().into_owned())
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct PageQuery {
    pub page_size: Option<String>,
    pub next_page_token: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub action: Option<String>,
    pub include_fields: Option<String>,
    pub status: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// One page of `items` and the fields Zoom sends beside it.
pub(crate) struct Page {
    pub items: Vec<Value>,
    pub page_size: usize,
    pub page_count: usize,
    pub total_records: usize,
    pub next_page_token: String,
}

pub(crate) fn page(items: &[Value], query: &PageQuery) -> Result<Page, ApiError> {
    let page_size = query
        .page_size
        .as_deref()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_PAGE_SIZE)
        .min(MAX_PAGE_SIZE);
    let offset = match query.next_page_token.as_deref() {
        None | Some("") => 0,
        Some(token) => token
            .strip_prefix(PAGE_TOKEN_PREFIX)
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n <= items.len())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    300,
                    "The next page token is invalid or expired.",
                )
            })?,
    };
    let end = (offset + page_size).min(items.len());
    let next_page_token = if end < items.len() {
        format!("{PAGE_TOKEN_PREFIX}{end}")
    } else {
        String::new()
    };
    Ok(Page {
        items: items[offset..end].to_vec(),
        page_size,
        page_count: items.len().div_ceil(page_size),
        total_records: items.len(),
        next_page_token,
    })
}

async fn get_meeting(
    State(sim): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Path(meeting_id): Path<String>,
) -> Result<Response, ApiError> {
    let key = meeting_key(&meeting_id)?;
    with_data(&sim, &caller, |data| {
        let meeting = data
            .meeting_mut(&key)
            .ok_or_else(|| ApiError::meeting_not_found(&key))?;
        Ok(axum::Json(meeting.object.clone()).into_response())
    })
}

/// Fields `PATCH /meetings/{id}` may change.
const PATCHABLE: [&str; 7] = [
    "topic",
    "agenda",
    "start_time",
    "duration",
    "timezone",
    "password",
    "type",
];

async fn patch_meeting(
    State(sim): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Path(meeting_id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let key = meeting_key(&meeting_id)?;
    let patch: serde_json::Map<String, Value> = serde_json::from_slice(&body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            300,
            "Request Body should be a valid JSON object.",
        )
    })?;
    with_data(&sim, &caller, |data| {
        let meeting = data
            .meeting_mut(&key)
            .ok_or_else(|| ApiError::meeting_not_found(&key))?;
        for (field, value) in patch {
            if PATCHABLE.contains(&field.as_str()) {
                meeting.object[field.as_str()] = value;
            } else if field == "settings"
                && let (Some(settings), Value::Object(changes)) =
                    (meeting.object["settings"].as_object_mut(), value)
            {
                settings.extend(changes);
            }
        }
        Ok(StatusCode::NO_CONTENT)
    })
}

async fn delete_meeting(
    State(sim): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Path(meeting_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let key = meeting_key(&meeting_id)?;
    with_data(&sim, &caller, |data| {
        let meeting = data
            .meeting_mut(&key)
            .ok_or_else(|| ApiError::meeting_not_found(&key))?;
        meeting.deleted = true;
        Ok(StatusCode::NO_CONTENT)
    })
}

async fn get_recordings(
    State(sim): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Path(meeting_id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let key = meeting_key(&meeting_id)?;
    let mut recording = with_data(&sim, &caller, |data| {
        let meeting = data
            .meeting_mut(&key)
            .ok_or_else(|| ApiError::meeting_not_found(&key))?;
        meeting
            .recording
            .clone()
            .ok_or_else(ApiError::recording_not_found)
    })?;
    let wants_token = query
        .include_fields
        .as_deref()
        .is_some_and(|f| f.split(',').any(|f| f.trim() == "download_access_token"));
    if wants_token {
        recording["download_access_token"] = json!(sim.config.download_token);
    }
    Ok(axum::Json(recording).into_response())
}

async fn delete_recordings(
    State(sim): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Path(meeting_id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<StatusCode, ApiError> {
    let key = meeting_key(&meeting_id)?;
    match query.action.as_deref() {
        None | Some("trash") | Some("delete") => {}
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                300,
                format!("Invalid action: {other}."),
            ));
        }
    }
    with_data(&sim, &caller, |data| {
        let meeting = data
            .meeting_mut(&key)
            .ok_or_else(|| ApiError::meeting_not_found(&key))?;
        meeting
            .recording
            .take()
            .ok_or_else(ApiError::recording_not_found)?;
        Ok(StatusCode::NO_CONTENT)
    })
}

async fn delete_recording_file(
    State(sim): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Path((meeting_id, recording_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let key = meeting_key(&meeting_id)?;
    with_data(&sim, &caller, |data| {
        let meeting = data
            .meeting_mut(&key)
            .ok_or_else(|| ApiError::meeting_not_found(&key))?;
        let recording = meeting
            .recording
            .as_mut()
            .ok_or_else(ApiError::recording_not_found)?;
        let files = recording["recording_files"]
            .as_array_mut()
            .ok_or_else(ApiError::recording_not_found)?;
        let before = files.len();
        files.retain(|f| f["id"] != recording_id.as_str());
        if files.len() == before {
            return Err(ApiError::recording_not_found());
        }
        if files.is_empty() {
            meeting.recording = None;
        }
        Ok(StatusCode::NO_CONTENT)
    })
}

fn participants_page(
    sim: &SimState,
    caller: &Caller,
    meeting_id: &str,
    query: &PageQuery,
) -> Result<Response, ApiError> {
    let key = meeting_key(meeting_id)?;
    with_data(sim, caller, |data| {
        let meeting = data
            .meeting_mut(&key)
            .ok_or_else(|| ApiError::meeting_not_found(&key))?;
        let page = page(&meeting.participants, query)?;
        Ok(axum::Json(json!({
            "page_count": page.page_count,
            "page_size": page.page_size,
            "total_records": page.total_records,
            "next_page_token": page.next_page_token,
            "participants": page.items,
        }))
        .into_response())
    })
}

async fn past_participants(
    State(sim): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Path(meeting_uuid): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Response, ApiError> {
    participants_page(&sim, &caller, &meeting_uuid, &query)
}

async fn report_participants(
    State(sim): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Path(meeting_id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Response, ApiError> {
    participants_page(&sim, &caller, &meeting_id, &query)
}

pub(crate) fn user_not_found(user_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        1001,
        format!("User does not exist: {user_id}."),
    )
}

/// A user of the caller's account; another account's user is Zoom's 1010.
pub(crate) fn find_user(sim: &SimState, caller: &Caller, user_id: &str) -> Result<Value, ApiError> {
    let all = lock(&sim.data);
    if let Some(user) = all.get(&caller.account_id).and_then(|d| d.user(user_id)) {
        return Ok(user.clone());
    }
    let elsewhere = user_id != "me"
        && all
            .iter()
            .any(|(account, data)| *account != caller.account_id && data.user(user_id).is_some());
    if elsewhere {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            1010,
            "User does not belong to this account.",
        ));
    }
    Err(user_not_found(user_id))
}

async fn get_user(
    State(sim): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Path(user_id): Path<String>,
) -> Result<Response, ApiError> {
    let user = find_user(&sim, &caller, &user_id)?;
    Ok(axum::Json(user).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meeting_keys_follow_the_double_encoding_rule() {
        // What the router hands over after decoding once.
        assert!(meeting_key("/abc==").is_err());
        assert!(meeting_key("ab//cd==").is_err());
        assert_eq!(meeting_key("%2Fabc%3D%3D").unwrap(), "/abc==");
        assert_eq!(meeting_key("ab%2F%2Fcd%3D%3D").unwrap(), "ab//cd==");
        assert_eq!(meeting_key("85512345678").unwrap(), "85512345678");
        assert_eq!(
            meeting_key("pE3zGv9tRkyZ1mWqf0b2Kw==").unwrap(),
            "pE3zGv9tRkyZ1mWqf0b2Kw=="
        );
    }

    #[test]
    fn pages_end_with_an_empty_token() {
        let items: Vec<Value> = (0..650).map(|i| json!(i)).collect();
        let mut query = PageQuery {
            page_size: Some("300".into()),
            ..PageQuery::default()
        };
        let mut seen = 0;
        let mut pages = 0;
        loop {
            let page = page(&items, &query).unwrap();
            seen += page.items.len();
            pages += 1;
            assert_eq!(page.page_count, 3);
            if page.next_page_token.is_empty() {
                break;
            }
            query.next_page_token = Some(page.next_page_token);
        }
        assert_eq!((seen, pages), (650, 3));
    }

    #[test]
    fn page_size_is_capped_and_bad_tokens_refused() {
        let items: Vec<Value> = (0..10).map(|i| json!(i)).collect();
        let query = PageQuery {
            page_size: Some("5000".into()),
            ..PageQuery::default()
        };
        assert_eq!(page(&items, &query).unwrap().page_size, 300);
        let query = PageQuery {
            next_page_token: Some("bogus".into()),
            ..PageQuery::default()
        };
        assert!(page(&items, &query).is_err());
    }
}
