//! The JSON API: `/healthz`, `/metrics`, run history a page at a time
//! (`/api/runs`, `/api/runs/{id}`) and `POST /api/runs/{id}/retry`, the API
//! form of `zoomwire runs retry`.
//!
//! `GET /api/runs?rule=&status=failed,dead&limit=&before=` lists runs newest
//! first; the answer's `next` is the `before` of the following page.
//! `GET /api/runs/{id}?limit=&effects_after=&logs_after=` gives the run with
//! one page of its effects and one of its log lines; `effects_next` and
//! `logs_next` are the values that read on.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AdminContext;
use super::health::HealthStatus;
use crate::engine::journal::{JournalError, RunStatus};
use crate::journal::RequeueOutcome;
use crate::journal::history::{HistoryError, LogCursor, RunCursor, RunQuery, TraceQuery};

/// Runs listed when the request names no limit.
pub const DEFAULT_RUNS_LIMIT: usize = 100;
/// Effects and log lines of a run shown when the request names no limit.
pub const DEFAULT_TRACE_LIMIT: usize = 100;

/// The filters of a runs list, as query parameters (the API's and the page's).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RunsParams {
    /// A rule's name; empty means any.
    pub rule: Option<String>,
    /// Status names separated by commas (`failed,dead`); empty means any.
    pub status: Option<String>,
    /// `true`: failed and dead runs only (as `zoomwire runs --failed`).
    #[serde(default)]
    pub failed: bool,
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub before: Option<String>,
}

impl RunsParams {
    /// The query these parameters ask for, or what is wrong with them.
    pub fn to_query(&self, default_limit: usize) -> Result<RunQuery, String> {
        let mut statuses = parse_statuses(self.status.as_deref().unwrap_or_default())?;
        if self.failed {
            statuses.extend([RunStatus::Failed, RunStatus::Dead]);
        }
        let before = non_empty(&self.before)
            .map(|text| text.parse::<RunCursor>())
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(RunQuery {
            rule: non_empty(&self.rule).map(str::to_string),
            statuses,
            before,
            limit: self.limit.unwrap_or(default_limit),
        })
    }
}

/// Which page of a run's effects and logs, as query parameters.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TraceParams {
    pub limit: Option<usize>,
    pub effects_after: Option<u32>,
    pub logs_after: Option<String>,
}

impl TraceParams {
    pub fn to_query(&self, default_limit: usize) -> Result<TraceQuery, String> {
        let logs_after = non_empty(&self.logs_after)
            .map(|text| text.parse::<LogCursor>())
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(TraceQuery {
            effects_after: self.effects_after,
            logs_after,
            limit: self.limit.unwrap_or(default_limit),
        })
    }
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn parse_statuses(text: &str) -> Result<Vec<RunStatus>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| {
            RunStatus::from_name(name).ok_or_else(|| {
                let known: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "unknown status `{}`, expected one of: {}",
                    name.chars().take(40).collect::<String>(),
                    known.join(", ")
                )
            })
        })
        .collect()
}

/// Runs a history read off the async reactor.
pub async fn blocking<T, F>(read: F) -> Result<T, HistoryError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, HistoryError> + Send + 'static,
{
    tokio::task::spawn_blocking(read)
        .await
        .unwrap_or_else(|e| Err(JournalError(format!("history read failed: {e}")).into()))
}

pub async fn healthz(State(context): State<AdminContext>) -> Response {
    let report = context.state.report();
    let status = match report.status {
        HealthStatus::Ok | HealthStatus::Degraded => StatusCode::OK,
        HealthStatus::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, axum::Json(report)).into_response()
}

pub async fn metrics_text(State(context): State<AdminContext>) -> Response {
    let text = context.metrics.render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

pub async fn list_runs(
    State(context): State<AdminContext>,
    Query(params): Query<RunsParams>,
) -> Response {
    let query = match params.to_query(DEFAULT_RUNS_LIMIT) {
        Ok(query) => query,
        Err(message) => return bad_request(&message),
    };
    let history = context.history.clone();
    match blocking(move || history.list_runs(&query)).await {
        Ok(page) => axum::Json(page).into_response(),
        Err(error) => history_error(&error),
    }
}

pub async fn get_run(
    State(context): State<AdminContext>,
    Path(id): Path<String>,
    Query(params): Query<TraceParams>,
) -> Response {
    let query = match params.to_query(DEFAULT_TRACE_LIMIT) {
        Ok(query) => query,
        Err(message) => return bad_request(&message),
    };
    let history = context.history.clone();
    let lookup = id.clone();
    match blocking(move || history.run_trace(&lookup, &query)).await {
        Ok(Some(trace)) => axum::Json(trace).into_response(),
        Ok(None) => not_found(&id),
        Err(error) => history_error(&error),
    }
}

pub async fn retry_run(State(context): State<AdminContext>, Path(id): Path<String>) -> Response {
    let (status, message) = retry(&context, &id).await;
    let outcome = if status == StatusCode::ACCEPTED {
        "requeued"
    } else {
        "refused"
    };
    let body = json!({ "run": id, "outcome": outcome, "message": message });
    (status, axum::Json(body)).into_response()
}

/// Puts a run back to pending (as `zoomwire runs retry`); the status to
/// answer with and what to tell the user.
pub async fn retry(context: &AdminContext, id: &str) -> (StatusCode, String) {
    match context.history.retry_run(id).await {
        Ok(RequeueOutcome::Requeued) => {
            tracing::info!(run = %id, "run queued again from the admin server");
            context.state.activity().runs_changed();
            (
                StatusCode::ACCEPTED,
                format!(
                    "run {id} is pending again: it runs from its first attempt, replaying the effects that completed"
                ),
            )
        }
        Ok(RequeueOutcome::NotFound) => (StatusCode::NOT_FOUND, format!("no run with id `{id}`")),
        Ok(RequeueOutcome::NotFinished) => (
            StatusCode::CONFLICT,
            format!("run `{id}` is not over yet (pending, running or waiting to retry)"),
        ),
        Ok(RequeueOutcome::NotFailed(status)) => (
            StatusCode::CONFLICT,
            format!(
                "run `{id}` is {}: only failed or dead runs can be retried",
                status.as_str()
            ),
        ),
        Ok(RequeueOutcome::EventPruned) => (
            StatusCode::CONFLICT,
            format!("run `{id}` cannot be retried: its event has been pruned from the store"),
        ),
        Err(HistoryError::Unsupported(reason)) => (StatusCode::NOT_IMPLEMENTED, reason.into()),
        Err(error) => {
            tracing::error!(run = %id, error = %error, "cannot retry run");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("run history unavailable: {error}"),
            )
        }
    }
}

fn bad_request(message: &str) -> Response {
    let body = json!({ "error": message });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

fn not_found(id: &str) -> Response {
    let body = json!({ "error": format!("no run with id `{id}`") });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

pub fn history_error(error: &HistoryError) -> Response {
    tracing::error!(error = %error, "run history unavailable");
    let body = json!({ "error": format!("run history unavailable: {error}") });
    (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_params_become_queries_or_clear_errors() {
        let params = RunsParams {
            rule: Some(" ".into()),
            status: Some("failed, dead".into()),
            limit: Some(5),
            ..RunsParams::default()
        };
        let query = params.to_query(100).unwrap();
        assert_eq!(query.rule, None, "blank means any rule");
        assert_eq!(query.statuses, vec![RunStatus::Failed, RunStatus::Dead]);
        assert_eq!(query.limit, 5);

        let bad = RunsParams {
            status: Some("deadd".into()),
            ..RunsParams::default()
        };
        assert_eq!(
            bad.to_query(100).unwrap_err(),
            "unknown status `deadd`, expected one of: pending, running, succeeded, failed, dead, skipped"
        );
        let bad = RunsParams {
            before: Some("nope".into()),
            ..RunsParams::default()
        };
        assert_eq!(
            bad.to_query(100).unwrap_err(),
            "`nope` is not a cursor from an earlier page"
        );
    }
}
