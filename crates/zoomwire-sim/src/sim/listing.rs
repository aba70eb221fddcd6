//! The simulated listings reconciliation reads, over the caller's account:
//! cloud recordings of the whole account (`/accounts/me/recordings`) and of
//! one user (`/users/{userId}/recordings`), users by status (`/users`), past
//! meetings from the reports (`/report/users/{userId}/meetings`, every plan
//! from Pro) and from the dashboard (`/metrics/meetings`, Business and up;
//! Pro is refused as Zoom refuses it), and one past meeting's details
//! (`/past_meetings/{uuid}`).
//!
//! Date ranges follow Zoom: `from` and `to` are UTC dates (`yyyy-mm-dd`), at
//! most one month apart, today to tomorrow when absent; a meeting is in the
//! range when its start date is. Recordings still processing are listed
//! like completed ones, their files saying `status: processing`; the
//! per-user listing leaves out `host_email`, the account listing has it.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Months, NaiveDate, Utc};
use serde_json::{Value, json};

use super::SimPlan;
use super::data::{Meeting, SimData};
use super::rest::{ApiError, Caller, PageQuery, find_user, meeting_key, page, with_data};
use super::state::SimState;

/// Zoom's report lists only meetings with at least this many participants.
const REPORT_MIN_PARTICIPANTS: usize = 2;

pub(crate) fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route("/accounts/{account_id}/recordings", get(account_recordings))
        .route("/users/{user_id}/recordings", get(user_recordings))
        .route("/users", get(list_users))
        .route("/report/users/{user_id}/meetings", get(report_meetings))
        .route("/metrics/meetings", get(dashboard_meetings))
        .route("/past_meetings/{meeting_uuid}", get(past_meeting))
}

/// A `from`..`to` range of UTC dates, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DateRange {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl DateRange {
    /// Zoom's rules: UTC dates, today to tomorrow by default, at most one month.
    pub fn parse(query: &PageQuery, today: NaiveDate) -> Result<DateRange, ApiError> {
        let date = |name: &str, text: &Option<String>| -> Result<Option<NaiveDate>, ApiError> {
            text.as_deref()
                .filter(|t| !t.is_empty())
                .map(|t| {
                    NaiveDate::parse_from_str(t, "%Y-%m-%d").map_err(|_| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            300,
                            format!("Invalid field: {name}. Expected yyyy-mm-dd."),
                        )
                    })
                })
                .transpose()
        };
        let from = date("from", &query.from)?.unwrap_or(today);
        let to = date("to", &query.to)?.unwrap_or_else(|| today.succ_opt().unwrap_or(today));
        if to < from {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                300,
                "The `to` date must not be before the `from` date.",
            ));
        }
        if from
            .checked_add_months(Months::new(1))
            .is_some_and(|cap| to > cap)
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                300,
                "The date range must not exceed one month.",
            ));
        }
        Ok(DateRange { from, to })
    }

    fn contains(&self, at: DateTime<Utc>) -> bool {
        let day = at.date_naive();
        self.from <= day && day <= self.to
    }
}

fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

/// A page of `items` with the range and the paging fields, under `key`.
fn listing(
    items: &[Value],
    range: &DateRange,
    query: &PageQuery,
    key: &str,
) -> Result<Response, ApiError> {
    let page = page(items, query)?;
    Ok(axum::Json(json!({
        "from": range.from.to_string(),
        "to": range.to.to_string(),
        "page_count": page.page_count,
        "page_size": page.page_size,
        "total_records": page.total_records,
        "next_page_token": page.next_page_token,
        key: page.items,
    }))
    .into_response())
}

/// Recordings of meetings in `range` hosted by `host` (every host when `None`).
fn recordings(
    data: &SimData,
    range: &DateRange,
    host: Option<&str>,
    with_email: bool,
) -> Vec<Value> {
    data.meetings
        .iter()
        .filter(|m| !m.deleted && range.contains(m.start))
        .filter(|m| host.is_none_or(|h| m.host_id == h))
        .filter_map(|m| {
            let mut recording = m.recording.clone()?;
            if with_email {
                recording["host_email"] = m.object["host_email"].clone();
            }
            Some(recording)
        })
        .collect()
}

async fn account_recordings(
    State(sim): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Path(account_id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Response, ApiError> {
    if account_id != "me" && account_id != caller.account_id {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            200,
            "No permission.",
        ));
    }
    let range = DateRange::parse(&query, today())?;
    let items = with_data(&sim, &caller, |data| {
        Ok(recordings(data, &range, None, true))
    })?;
    listing(&items, &range, &query, "meetings")
}

async fn user_recordings(
    State(sim): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Path(user_id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let user = find_user(&sim, &caller, &user_id)?;
    let range = DateRange::parse(&query, today())?;
    let host = user["id"].as_str().unwrap_or_default();
    let items = with_data(&sim, &caller, |data| {
        Ok(recordings(data, &range, Some(host), false))
    })?;
    listing(&items, &range, &query, "meetings")
}

async fn list_users(
    State(sim): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let status = query.status.clone().unwrap_or_else(|| "active".into());
    if !matches!(status.as_str(), "active" | "pending" | "inactive") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            300,
            format!("Invalid field: status `{status}`."),
        ));
    }
    let users = with_data(&sim, &caller, |data| {
        Ok(data
            .users
            .iter()
            .filter(|u| u["status"] == status.as_str())
            .cloned()
            .collect::<Vec<_>>())
    })?;
    let page = page(&users, &query)?;
    Ok(axum::Json(json!({
        "page_count": page.page_count,
        "page_number": 1,
        "page_size": page.page_size,
        "total_records": page.total_records,
        "next_page_token": page.next_page_token,
        "users": page.items,
    }))
    .into_response())
}

/// A past meeting as the reports show it.
fn report_item(meeting: &Meeting) -> Value {
    json!({
        "uuid": meeting.uuid,
        "id": meeting.id,
        "host_id": meeting.host_id,
        "type": 2,
        "topic": meeting.object["topic"],
        "user_email": meeting.object["host_email"],
        "start_time": iso(meeting.start),
        "end_time": iso(meeting.end),
        "duration": (meeting.end - meeting.start).num_minutes(),
        "total_minutes": (meeting.end - meeting.start).num_minutes() * meeting.participants.len() as i64,
        "participants_count": meeting.participants.len(),
        "source": "Zoom",
    })
}

fn past_type(query: &PageQuery) -> Result<(), ApiError> {
    match query.kind.as_deref() {
        None | Some("past") | Some("pastOne") => Ok(()),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            300,
            format!("Invalid field: type `{other}`; the simulator lists past meetings only."),
        )),
    }
}

async fn report_meetings(
    State(sim): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Path(user_id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Response, ApiError> {
    past_type(&query)?;
    let user = find_user(&sim, &caller, &user_id)?;
    let range = DateRange::parse(&query, today())?;
    let host = user["id"].as_str().unwrap_or_default().to_string();
    let items = with_data(&sim, &caller, |data| {
        Ok(data
            .meetings
            .iter()
            .filter(|m| m.host_id == host && range.contains(m.start))
            .filter(|m| m.participants.len() >= REPORT_MIN_PARTICIPANTS)
            .map(report_item)
            .collect::<Vec<_>>())
    })?;
    listing(&items, &range, &query, "meetings")
}

async fn dashboard_meetings(
    State(sim): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let plan = sim
        .accounts
        .iter()
        .find(|a| a.account_id == caller.account_id)
        .map(|a| a.plan);
    if plan != Some(SimPlan::Business) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            200,
            "No permission: the dashboard needs a Business plan or higher.",
        ));
    }
    past_type(&query)?;
    let range = DateRange::parse(&query, today())?;
    let items = with_data(&sim, &caller, |data| {
        Ok(data
            .meetings
            .iter()
            .filter(|m| range.contains(m.start))
            .map(|m| {
                json!({
                    "uuid": m.uuid,
                    "id": m.id,
                    "topic": m.object["topic"],
                    "host": m.object["host_email"],
                    "email": m.object["host_email"],
                    "user_type": "Licensed",
                    "start_time": iso(m.start),
                    "end_time": iso(m.end),
                    "duration": format_duration(m.end - m.start),
                    "participants": m.participants.len(),
                    "has_pstn": false,
                    "has_recording": m.recording.is_some(),
                })
            })
            .collect::<Vec<_>>())
    })?;
    listing(&items, &range, &query, "meetings")
}

/// The dashboard's `HH:MM:SS`.
fn format_duration(duration: chrono::Duration) -> String {
    let secs = duration.num_seconds().max(0);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

async fn past_meeting(
    State(sim): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Path(meeting_uuid): Path<String>,
) -> Result<Response, ApiError> {
    let key = meeting_key(&meeting_uuid)?;
    with_data(&sim, &caller, |data| {
        let meeting = data
            .meeting_mut(&key)
            .ok_or_else(|| ApiError::meeting_not_found(&key))?;
        let mut details = report_item(meeting);
        details["user_name"] = meeting.object["host_email"].clone();
        details["dept"] = json!("");
        Ok(axum::Json(details).into_response())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(from: Option<&str>, to: Option<&str>) -> PageQuery {
        PageQuery {
            from: from.map(str::to_string),
            to: to.map(str::to_string),
            ..PageQuery::default()
        }
    }

    #[test]
    fn ranges_follow_zooms_date_rules() {
        let today = NaiveDate::from_ymd_opt(2024, 11, 19).unwrap();
        let range = DateRange::parse(&query(None, None), today).unwrap();
        assert_eq!(range.from.to_string(), "2024-11-19");
        assert_eq!(range.to.to_string(), "2024-11-20");
        let range =
            DateRange::parse(&query(Some("2024-10-19"), Some("2024-11-19")), today).unwrap();
        assert_eq!(range.from.to_string(), "2024-10-19");
        for (from, to) in [
            (Some("2024-10-18"), Some("2024-11-19")),
            (Some("2024-11-20"), Some("2024-11-19")),
            (Some("19/11/2024"), None),
            (Some("2024-11-19T00:00:00Z"), None),
        ] {
            assert!(
                DateRange::parse(&query(from, to), today).is_err(),
                "{from:?} {to:?}"
            );
        }
    }
}
