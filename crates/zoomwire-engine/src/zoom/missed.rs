//! What Zoom may have sent while no connection was up, found again through
//! its REST API and turned back into events of Zoom's own shape, for
//! reconciliation (`src/reconcile.rs` decides when and feeds them).
//!
//! - `recording.completed`: the account's cloud recordings
//!   (`GET /accounts/me/recordings`, Medium), or, when the account listing
//!   is refused, each active user's (`GET /users?status=active`, then
//!   `GET /users/{userId}/recordings`, Medium). A recording counts only
//!   when every file's `status` is `completed`. Its `download_token` comes
//!   from `GET /meetings/{uuid}/recordings?include_fields=download_access_token`
//!   (Light), fetched only for the ones the engine has not seen.
//! - `meeting.ended`: the dashboard's past meetings (`GET /metrics/meetings`,
//!   Resource-intensive, Business and up) with `GET /past_meetings/{uuid}`
//!   (Light) for the details, or, when the plan refuses the dashboard, each
//!   active user's report (`GET /report/users/{userId}/meetings`, Heavy;
//!   Zoom lists only meetings of two or more there).
//! - `user.created`: users of every status (`GET /users`, Medium) by `created_at`.
//!
//! `from` and `to` are UTC dates at most one month apart, so a long window is
//! asked for in parts; every listing is followed to its last page. Every call
//! goes through the account's [`CategoryLimiter`]; a 429 pauses the account's
//! calls and the call is repeated (a few times), and a daily limit skips the
//! kind that needs it. What the plan refuses is remembered, so later passes
//! go straight to the listing that works.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Months, NaiveDate, Utc};
use reqwest::Method;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::ratelimit::{Category, CategoryLimiter, LimitError};
use super::rest::{MAX_PAGE_SIZE, RestError, ZoomRest};
use crate::http_retry::FailureKind;

/// How often one call is repeated after a 429 before the pass gives up on it.
const MAX_RATE_LIMITED: u32 = 5;
/// Longest one call may take, retries of 5xx included.
const CALL_DEADLINE: Duration = Duration::from_secs(120);
/// Pages followed at most in one listing.
const MAX_PAGES: u32 = 200;
/// How long a download token asked for stays valid (Zoom allows up to 7 days).
const DOWNLOAD_TOKEN_TTL_SECS: u32 = 24 * 3600;

/// The event types reconciliation can find again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum MissedKind {
    #[serde(rename = "recording.completed")]
    RecordingCompleted,
    #[serde(rename = "meeting.ended")]
    MeetingEnded,
    #[serde(rename = "user.created")]
    UserCreated,
}

impl MissedKind {
    pub const ALL: [MissedKind; 3] = [
        MissedKind::RecordingCompleted,
        MissedKind::MeetingEnded,
        MissedKind::UserCreated,
    ];

    pub fn event_type(self) -> &'static str {
        match self {
            MissedKind::RecordingCompleted => "recording.completed",
            MissedKind::MeetingEnded => "meeting.ended",
            MissedKind::UserCreated => "user.created",
        }
    }
}

/// A period of time, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Window {
    /// Whether `at` is in the window, to the second (Zoom's times have no fraction).
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        use chrono::SubsecRound;
        self.start.trunc_subsecs(0) <= at && at <= self.end
    }

    /// `from`..`to` pairs of UTC dates covering the window, each at most one month.
    pub fn month_ranges(&self) -> Vec<(NaiveDate, NaiveDate)> {
        let last = self.end.date_naive();
        let mut from = self.start.date_naive();
        let mut ranges = Vec::new();
        while from <= last {
            let to = from
                .checked_add_months(Months::new(1))
                .map_or(last, |cap| cap.min(last));
            ranges.push((from, to));
            match to.succ_opt() {
                Some(next) => from = next,
                None => break,
            }
        }
        ranges
    }
}

/// What a candidate still needs before it is a whole event.
#[derive(Debug, Clone, PartialEq)]
enum Completion {
    Done,
    /// A recording's `download_token`.
    DownloadToken {
        uuid: String,
    },
    /// A dashboard meeting's host and type, from `/past_meetings/{uuid}`.
    MeetingDetails {
        uuid: String,
    },
}

/// An event found through REST. Its body already has the fields of its
/// dedupe key; [`MissedFinder::complete`] adds what costs another call.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub kind: MissedKind,
    pub body: Value,
    completion: Completion,
}

impl Candidate {
    /// A candidate whose body is already whole.
    pub fn new(kind: MissedKind, body: Value) -> Candidate {
        Candidate {
            kind,
            body,
            completion: Completion::Done,
        }
    }
}

/// Why a listing gave up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FindError {
    #[error("{0}")]
    Rest(RestError),
    #[error("skipped: {0}")]
    Limit(#[from] LimitError),
}

impl FindError {
    /// Whether Zoom refused the call as such (plan, scope, permission), so
    /// that another listing may work.
    fn is_refusal(&self) -> bool {
        matches!(self, FindError::Rest(error)
            if error.kind == FailureKind::Permanent && error.status.is_some_and(|s| s != 429))
    }
}

/// Finds one account's missed events.
pub struct MissedFinder {
    rest: ZoomRest,
    limiter: Arc<CategoryLimiter>,
    /// Zoom's id of the account, for `payload.account_id`.
    zoom_account_id: String,
    account_listing_refused: AtomicBool,
    dashboard_refused: AtomicBool,
}

/// Reconciliation's share of the account's Zoom limits (Pro's, the lowest
/// plan's); rules keep the rest.
pub const RECONCILE_SHARE: f64 = 0.25;

impl MissedFinder {
    /// A finder for one account on its token cache, with its own HTTP
    /// client and a limiter at [`RECONCILE_SHARE`] of Pro's limits.
    pub fn connect(
        api_base: url::Url,
        tokens: Arc<dyn super::token::AccessTokens>,
        zoom_account_id: &str,
    ) -> Result<MissedFinder, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("zoomwire/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build an http client: {e}"))?;
        let mut config = super::rest::RestConfig::new(api_base);
        // The limiter spaces the calls; the finder handles 429s for the account.
        config.requests_per_second =
            std::num::NonZeroU32::new(1000).unwrap_or(std::num::NonZeroU32::MIN);
        config.retry.rate_limit_retries = 0;
        let rest = ZoomRest::new(client, config, tokens);
        let rates = super::ratelimit::CategoryRates::PRO.share(RECONCILE_SHARE);
        Ok(MissedFinder::new(
            rest,
            Arc::new(CategoryLimiter::new(rates)),
            zoom_account_id,
        ))
    }

    /// `rest` should not wait out 429s itself (`rate_limit_retries: 0`): the
    /// finder pauses the whole account's calls instead.
    pub fn new(
        rest: ZoomRest,
        limiter: Arc<CategoryLimiter>,
        zoom_account_id: &str,
    ) -> MissedFinder {
        MissedFinder {
            rest,
            limiter,
            zoom_account_id: zoom_account_id.to_string(),
            account_listing_refused: AtomicBool::new(false),
            dashboard_refused: AtomicBool::new(false),
        }
    }

    pub fn limiter(&self) -> &Arc<CategoryLimiter> {
        &self.limiter
    }

    /// Events of `kind` that happened within `window`.
    pub async fn find(
        &self,
        kind: MissedKind,
        window: Window,
    ) -> Result<Vec<Candidate>, FindError> {
        match kind {
            MissedKind::RecordingCompleted => self.recordings(window).await,
            MissedKind::MeetingEnded => self.ended_meetings(window).await,
            MissedKind::UserCreated => self.created_users(window).await,
        }
    }

    /// The whole event body: a recording's download token, a dashboard
    /// meeting's details.
    pub async fn complete(&self, candidate: Candidate) -> Result<Value, FindError> {
        let mut body = candidate.body;
        match candidate.completion {
            Completion::Done => {}
            Completion::DownloadToken { uuid } => {
                let params = params(&[
                    ("uuid", json!(uuid)),
                    ("include_fields", json!("download_access_token")),
                    ("ttl", json!(DOWNLOAD_TOKEN_TTL_SECS)),
                ]);
                let answer = self
                    .get(Category::Light, "/meetings/{uuid}/recordings", &params)
                    .await?;
                if let Some(token) = answer.get("download_access_token").and_then(Value::as_str) {
                    body["download_token"] = json!(token);
                }
            }
            Completion::MeetingDetails { uuid } => {
                let params = params(&[("uuid", json!(uuid))]);
                let details = self
                    .get(Category::Light, "/past_meetings/{uuid}", &params)
                    .await?;
                let object = &mut body["payload"]["object"];
                for field in [
                    "host_id",
                    "type",
                    "topic",
                    "duration",
                    "start_time",
                    "end_time",
                ] {
                    if let Some(value) = details.get(field).filter(|v| !v.is_null()) {
                        object[field] = value.clone();
                    }
                }
            }
        }
        Ok(body)
    }

    async fn recordings(&self, window: Window) -> Result<Vec<Candidate>, FindError> {
        let mut found = Vec::new();
        for (from, to) in window.month_ranges() {
            for item in self.list_recordings(from, to).await? {
                let started = item.get("start_time").and_then(parse_time);
                if started.is_none_or(|at| !window.contains(at)) || !is_completed(&item) {
                    continue;
                }
                let uuid = item
                    .get("uuid")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if uuid.is_empty()
                    || found
                        .iter()
                        .any(|c: &Candidate| c.body["payload"]["object"]["uuid"] == uuid.as_str())
                {
                    continue;
                }
                found.push(Candidate {
                    kind: MissedKind::RecordingCompleted,
                    body: self.recording_event(item),
                    completion: Completion::DownloadToken { uuid },
                });
            }
        }
        Ok(found)
    }

    /// One month of recordings: the account's, else every active user's.
    async fn list_recordings(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<Value>, FindError> {
        let dates = params(&[
            ("from", json!(from.to_string())),
            ("to", json!(to.to_string())),
        ]);
        if !self.account_listing_refused.load(Ordering::Relaxed) {
            match self
                .pages(
                    Category::Medium,
                    "/accounts/me/recordings",
                    &dates,
                    "meetings",
                )
                .await
            {
                Ok(items) => return Ok(items),
                Err(error) if error.is_refusal() => {
                    tracing::info!(
                        error = %error,
                        "zoom refused the account's recording listing; listing each user's instead"
                    );
                    self.account_listing_refused.store(true, Ordering::Relaxed);
                }
                Err(error) => return Err(error),
            }
        }
        let mut items = Vec::new();
        for user in self.users("active").await? {
            let Some(user_id) = user.get("id").and_then(Value::as_str) else {
                continue;
            };
            let mut query = dates.clone();
            query.insert("userId".into(), json!(user_id));
            for mut item in self
                .pages(
                    Category::Medium,
                    "/users/{userId}/recordings",
                    &query,
                    "meetings",
                )
                .await?
            {
                if item.get("host_email").is_none_or(Value::is_null) {
                    item["host_email"] = user.get("email").cloned().unwrap_or(Value::Null);
                }
                items.push(item);
            }
        }
        Ok(items)
    }

    fn recording_event(&self, mut item: Value) -> Value {
        if let Some(object) = item.as_object_mut() {
            object.remove("download_access_token");
        }
        let account_id = item
            .get("account_id")
            .and_then(Value::as_str)
            .unwrap_or(&self.zoom_account_id)
            .to_string();
        json!({
            "event": "recording.completed",
            "event_ts": Utc::now().timestamp_millis(),
            "payload": { "account_id": account_id, "object": item },
        })
    }

    async fn ended_meetings(&self, window: Window) -> Result<Vec<Candidate>, FindError> {
        // A meeting that ended in the window may have started the day before.
        let listed = Window {
            start: window.start - chrono::Duration::days(1),
            end: window.end,
        };
        let mut found: Vec<Candidate> = Vec::new();
        for (from, to) in listed.month_ranges() {
            for candidate in self.list_ended(from, to).await? {
                let object = &candidate.body["payload"]["object"];
                let ended = object.get("end_time").and_then(parse_time);
                let seen = found
                    .iter()
                    .any(|c| c.body["payload"]["object"]["uuid"] == object["uuid"]);
                if ended.is_some_and(|at| window.contains(at)) && !seen {
                    found.push(candidate);
                }
            }
        }
        Ok(found)
    }

    /// One month of past meetings: the dashboard's, else each user's report.
    async fn list_ended(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<Candidate>, FindError> {
        let dates = params(&[
            ("type", json!("past")),
            ("from", json!(from.to_string())),
            ("to", json!(to.to_string())),
        ]);
        if !self.dashboard_refused.load(Ordering::Relaxed) {
            match self
                .pages(
                    Category::ResourceIntensive,
                    "/metrics/meetings",
                    &dates,
                    "meetings",
                )
                .await
            {
                Ok(items) => {
                    return Ok(items
                        .iter()
                        .filter_map(|item| self.meeting_event(item, true))
                        .collect());
                }
                Err(error) if error.is_refusal() => {
                    tracing::info!(
                        error = %error,
                        "zoom refused the dashboard's meeting listing; reading each user's report instead"
                    );
                    self.dashboard_refused.store(true, Ordering::Relaxed);
                }
                Err(error) => return Err(error),
            }
        }
        let mut found = Vec::new();
        for user in self.users("active").await? {
            let Some(user_id) = user.get("id").and_then(Value::as_str) else {
                continue;
            };
            let mut query = dates.clone();
            query.insert("userId".into(), json!(user_id));
            let items = self
                .pages(
                    Category::Heavy,
                    "/report/users/{userId}/meetings",
                    &query,
                    "meetings",
                )
                .await?;
            found.extend(
                items
                    .iter()
                    .filter_map(|item| self.meeting_event(item, false)),
            );
        }
        Ok(found)
    }

    /// A `meeting.ended` from a listed past meeting; a dashboard item lacks
    /// the host id, which [`Self::complete`] fetches.
    fn meeting_event(&self, item: &Value, from_dashboard: bool) -> Option<Candidate> {
        let uuid = item.get("uuid").and_then(Value::as_str)?.to_string();
        let end_time = item.get("end_time").and_then(parse_time)?;
        let mut object = Map::new();
        for field in [
            "id",
            "uuid",
            "host_id",
            "topic",
            "type",
            "start_time",
            "end_time",
        ] {
            if let Some(value) = item.get(field).filter(|v| !v.is_null()) {
                object.insert(field.into(), value.clone());
            }
        }
        if let Some(minutes) = item.get("duration").and_then(Value::as_i64) {
            object.insert("duration".into(), json!(minutes));
        }
        let body = json!({
            "event": "meeting.ended",
            "event_ts": end_time.timestamp_millis(),
            "payload": { "account_id": self.zoom_account_id, "object": object },
        });
        Some(Candidate {
            kind: MissedKind::MeetingEnded,
            body,
            completion: if from_dashboard {
                Completion::MeetingDetails { uuid }
            } else {
                Completion::Done
            },
        })
    }

    async fn created_users(&self, window: Window) -> Result<Vec<Candidate>, FindError> {
        let mut found = Vec::new();
        for status in ["active", "pending", "inactive"] {
            for user in self.users(status).await? {
                let Some(created) = user.get("created_at").and_then(parse_time) else {
                    continue;
                };
                if !window.contains(created) || user.get("id").and_then(Value::as_str).is_none() {
                    continue;
                }
                let mut object = Map::new();
                for field in [
                    "id",
                    "first_name",
                    "last_name",
                    "display_name",
                    "email",
                    "type",
                ] {
                    if let Some(value) = user.get(field).filter(|v| !v.is_null()) {
                        object.insert(field.into(), value.clone());
                    }
                }
                let body = json!({
                    "event": "user.created",
                    "event_ts": created.timestamp_millis(),
                    "payload": { "account_id": self.zoom_account_id, "object": object },
                });
                found.push(Candidate::new(MissedKind::UserCreated, body));
            }
        }
        Ok(found)
    }

    async fn users(&self, status: &str) -> Result<Vec<Value>, FindError> {
        let query = params(&[("status", json!(status))]);
        self.pages(Category::Medium, "/users", &query, "users")
            .await
    }

    /// Every item of a listing, page after page.
    async fn pages(
        &self,
        category: Category,
        path: &str,
        query: &Map<String, Value>,
        items_key: &str,
    ) -> Result<Vec<Value>, FindError> {
        let mut query = query.clone();
        query.insert("page_size".into(), json!(MAX_PAGE_SIZE));
        let mut items = Vec::new();
        for _ in 0..MAX_PAGES {
            let answer = self.get(category, path, &query).await?;
            if let Some(page) = answer.get(items_key).and_then(Value::as_array) {
                items.extend(page.iter().cloned());
            }
            let next = answer
                .get("next_page_token")
                .and_then(Value::as_str)
                .filter(|token| !token.is_empty());
            match next {
                Some(token)
                    if query.get("next_page_token").and_then(Value::as_str) != Some(token) =>
                {
                    query.insert("next_page_token".into(), json!(token));
                }
                _ => return Ok(items),
            }
        }
        Ok(items)
    }

    /// One GET within the account's limits; a 429 pauses the account and the
    /// call is repeated, a few times at most.
    async fn get(
        &self,
        category: Category,
        path: &str,
        query: &Map<String, Value>,
    ) -> Result<Value, FindError> {
        let mut rate_limited = 0;
        loop {
            self.limiter.acquire(category).await?;
            let deadline = Instant::now() + CALL_DEADLINE;
            match self
                .rest
                .request(Method::GET, path, query, None, deadline)
                .await
            {
                Ok(answer) => {
                    self.limiter.succeeded();
                    return Ok(answer);
                }
                Err(error) if error.status == Some(429) && rate_limited < MAX_RATE_LIMITED => {
                    rate_limited += 1;
                    let pause = self.limiter.back_off(error.rate_limit.as_deref());
                    metrics::counter!("zoomwire_reconcile_rate_limited_total", "category" => category.as_str())
                        .increment(1);
                    tracing::info!(
                        path,
                        category = category.as_str(),
                        pause_ms = pause.as_millis() as u64,
                        "zoom rate-limited reconciliation; pausing this account's reconciliation calls"
                    );
                    if error.rate_limit.as_ref().is_some_and(|hit| hit.is_daily()) {
                        return Err(FindError::Limit(LimitError::DailyBudgetSpent));
                    }
                }
                Err(error) => return Err(FindError::Rest(error)),
            }
        }
    }
}

/// A recording counts only when every one of its files has completed.
fn is_completed(recording: &Value) -> bool {
    recording
        .get("recording_files")
        .and_then(Value::as_array)
        .is_some_and(|files| {
            !files.is_empty() && files.iter().all(|file| file["status"] == "completed")
        })
}

fn parse_time(value: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value.as_str()?)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

fn params(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn long_windows_are_asked_for_a_month_at_a_time() {
        let window = Window {
            start: at("2024-10-05T22:00:00Z"),
            end: at("2024-12-20T01:00:00Z"),
        };
        let ranges: Vec<String> = window
            .month_ranges()
            .iter()
            .map(|(from, to)| format!("{from}..{to}"))
            .collect();
        assert_eq!(
            ranges,
            [
                "2024-10-05..2024-11-05",
                "2024-11-06..2024-12-06",
                "2024-12-07..2024-12-20"
            ]
        );
        let day = Window {
            start: at("2024-11-19T01:00:00Z"),
            end: at("2024-11-19T02:00:00Z"),
        };
        assert_eq!(day.month_ranges().len(), 1);
    }

    #[test]
    fn a_recording_counts_only_when_every_file_completed() {
        let files = |statuses: &[&str]| json!({"recording_files": statuses.iter().map(|s| json!({"status": s})).collect::<Vec<_>>()});
        assert!(is_completed(&files(&["completed", "completed"])));
        assert!(!is_completed(&files(&["completed", "processing"])));
        assert!(!is_completed(&files(&[])));
        assert!(!is_completed(&json!({})));
    }
}
