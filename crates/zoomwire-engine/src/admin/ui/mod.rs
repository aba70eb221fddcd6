//! The operator's page under `/ui/`: server-rendered askama templates
//! (`templates/admin/`), htmx for the interactive parts and Server-Sent
//! Events (`stream.rs`) for live updates, with its assets compiled into the
//! binary (`assets.rs`). Nothing inline (one small script file of our own,
//! `assets/zoomwire.js`), so the Content-Security-Policy forbids inline code.
//!
//! Pages: the overview (`/ui/`), the rules, the events tail, the runs list
//! with filters and pages, a run's trace, and the dead letters with Retry.
//! Each live part of a page is also served alone under `/ui/part/...`; a
//! page's `hx-trigger="sse:..."` fetches it again when the stream says that
//! kind of thing changed, so a fragment and the page's first load come from
//! the same code. The page reads what the API reads, through the same
//! [`RunHistory`](crate::admin::RunHistory) seam, a page at a time.

mod assets;
mod chart;
mod stream;
mod views;

use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde::Deserialize;

use super::AdminContext;
use super::api::{RunsParams, TraceParams, blocking};
use crate::engine::journal::RunStatus;
use crate::journal::RunSummary;
use crate::journal::history::{HistoryError, RunQuery, TraceQuery};
use chart::Chart;
use views::{
    Chrome, DeadPage, EventsPage, EventsPart, EventsTail, ListPlace, LoginPage, MessagePage,
    OverviewLive, OverviewPage, OverviewPart, RuleView, RulesPage, RunRow, RunRowPart, RunsFilter,
    RunsList, RunsPage, RunsPart, Timeline, TimelinePart, TracePage, TracePart, TraceView,
};

/// Runs per page.
pub const RUNS_PAGE: usize = 50;
/// Effects and log lines per page of a trace.
pub const TRACE_PAGE: usize = 100;
/// Events in the events tail.
pub const EVENTS_SHOWN: usize = 100;
/// Latest runs shown per rule.
const RECENT_PER_RULE: usize = 10;

/// The page's routes (the guard is applied around them by the caller).
pub fn routes() -> Router<AdminContext> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(overview))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/rules", get(rules))
        .route("/ui/events", get(events))
        .route("/ui/runs", get(runs))
        .route("/ui/runs/{id}", get(trace))
        .route("/ui/runs/{id}/retry", post(retry))
        .route("/ui/dead", get(dead))
        .route("/ui/part/overview", get(overview_part))
        .route("/ui/part/events", get(events_part))
        .route("/ui/part/runs", get(runs_part))
        .route("/ui/part/dead", get(dead_part))
        .route("/ui/part/runs/{id}", get(trace_part))
        .route("/ui/part/runs/{id}/timeline", get(timeline_part))
        .route("/ui/stream", get(stream::stream))
        .route("/ui/assets/{file}", get(assets::asset))
}

fn chrome(context: &AdminContext, title: impl Into<String>, active: &'static str) -> Chrome {
    Chrome {
        title: title.into(),
        active,
        guarded: context.guard.has_token(),
        stream: true,
    }
}

/// A template as an HTML answer. Pages show participants' data: never cached.
fn render(status: StatusCode, template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => {
            let mut response = (status, Html(html)).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(error) => {
            tracing::error!(error = %error, "cannot render an admin page");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot render this page").into_response()
        }
    }
}

fn page(template: &impl Template) -> Response {
    render(StatusCode::OK, template)
}

/// A page with one message, such as "no run with this id".
fn message(
    context: &AdminContext,
    status: StatusCode,
    heading: &str,
    message: impl Into<String>,
) -> Response {
    let template = MessagePage {
        chrome: chrome(context, heading, ""),
        heading: heading.to_string(),
        message: message.into(),
    };
    render(status, &template)
}

/// Why a page cannot be shown; [`Failure::page`] says so to the user.
enum Failure {
    /// The request asked for something malformed (a bad filter or cursor).
    Bad(String),
    /// No run with this id.
    NoRun(String),
    History(HistoryError),
}

impl Failure {
    fn page(self, context: &AdminContext) -> Response {
        match self {
            Failure::Bad(error) => message(context, StatusCode::BAD_REQUEST, "Bad request", error),
            Failure::NoRun(id) => message(
                context,
                StatusCode::NOT_FOUND,
                "No such run",
                format!("There is no run with id `{id}` (it may have been pruned)."),
            ),
            Failure::History(error) => history_failed(context, &error),
        }
    }
}

fn history_failed(context: &AdminContext, error: &HistoryError) -> Response {
    tracing::error!(error = %error, "run history unavailable");
    message(
        context,
        StatusCode::INTERNAL_SERVER_ERROR,
        "Run history unavailable",
        error.to_string(),
    )
}

// ---- login ----

/// The login page (also the guard's answer to a page request without a session).
pub fn login_page(status: StatusCode, error: Option<String>) -> Response {
    let template = LoginPage {
        chrome: Chrome {
            title: "Log in".into(),
            active: "",
            guarded: true,
            stream: false,
        },
        error,
    };
    render(status, &template)
}

async fn login_form(State(context): State<AdminContext>) -> Response {
    if !context.guard.has_token() {
        return Redirect::to("/ui/").into_response();
    }
    login_page(StatusCode::OK, None)
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(context): State<AdminContext>, Form(form): Form<LoginForm>) -> Response {
    if !context.guard.has_token() {
        return Redirect::to("/ui/").into_response();
    }
    if !context.guard.token_matches(form.token.trim()) {
        tracing::warn!("admin page login refused: wrong token");
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("That is not the admin token.".into()),
        );
    }
    match context.guard.open_session() {
        Ok(session) => {
            let mut response = Redirect::to("/ui/").into_response();
            if let Ok(cookie) = HeaderValue::from_str(&super::guard::session_set_cookie(&session)) {
                response.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            response
        }
        Err(error) => {
            tracing::error!(error = %error, "cannot start an admin session");
            login_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                Some("Cannot start a session: the system's random source failed.".into()),
            )
        }
    }
}

async fn logout(State(context): State<AdminContext>, headers: HeaderMap) -> Response {
    context.guard.close_session(&headers);
    let mut response = Redirect::to("/ui/login").into_response();
    if let Ok(cookie) = HeaderValue::from_str(&super::guard::session_clear_cookie()) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

// ---- overview ----

fn overview_live(context: &AdminContext) -> OverviewLive {
    let now = Utc::now();
    let chart = Chart::new(&context.state.activity().last_hour(now));
    OverviewLive::new(&context.state.report(), chart, now)
}

async fn overview(State(context): State<AdminContext>) -> Response {
    page(&OverviewPage {
        chrome: chrome(&context, "Overview", "overview"),
        live: overview_live(&context),
    })
}

async fn overview_part(State(context): State<AdminContext>) -> Response {
    page(&OverviewPart {
        live: overview_live(&context),
    })
}

// ---- rules ----

async fn rules(State(context): State<AdminContext>) -> Response {
    let chrome = chrome(&context, "Rules", "rules");
    let Some(rule_set) = context.state.rule_set() else {
        return page(&RulesPage {
            chrome,
            rules: Vec::new(),
            empty: "No rule set is shown: this server is not attached to a running daemon.".into(),
        });
    };
    let history = context.history.clone();
    let since = Utc::now() - chrono::TimeDelta::hours(24);
    let views = blocking(move || {
        rule_set
            .rules()
            .iter()
            .map(|rule| {
                let activity = history.rule_activity(&rule.name, since, RECENT_PER_RULE)?;
                Ok(RuleView::new(rule, &activity))
            })
            .collect::<Result<Vec<_>, HistoryError>>()
    })
    .await;
    match views {
        Ok(rules) => page(&RulesPage {
            chrome,
            rules,
            empty: "The rule set is empty: add rule files to the rules folder.".into(),
        }),
        Err(error) => history_failed(&context, &error),
    }
}

// ---- events ----

fn events_tail(context: &AdminContext) -> EventsTail {
    EventsTail::new(&context.state.activity().recent_events(EVENTS_SHOWN))
}

async fn events(State(context): State<AdminContext>) -> Response {
    page(&EventsPage {
        chrome: chrome(&context, "Events", "events"),
        tail: events_tail(&context),
    })
}

async fn events_part(State(context): State<AdminContext>) -> Response {
    page(&EventsPart {
        tail: events_tail(&context),
    })
}

// ---- runs ----

/// One page of runs for a list, or the answer explaining what went wrong.
async fn runs_list(
    context: &AdminContext,
    query: RunQuery,
    place: &ListPlace<'_>,
    with_retry: bool,
    empty: &'static str,
) -> Result<RunsList, Failure> {
    let paged = query.before.is_some();
    let history = context.history.clone();
    let runs = blocking(move || history.list_runs(&query))
        .await
        .map_err(Failure::History)?;
    Ok(RunsList::new(&runs, place, paged, with_retry, empty))
}

fn runs_query(params: &RunsParams) -> Result<RunQuery, Failure> {
    let mut query = params.to_query(RUNS_PAGE).map_err(Failure::Bad)?;
    query.limit = query.limit.min(RUNS_PAGE);
    Ok(query)
}

fn runs_place(params: &RunsParams) -> (Option<String>, Option<String>) {
    let clean = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(String::from)
    };
    (clean(&params.rule), clean(&params.status))
}

async fn runs(State(context): State<AdminContext>, Query(params): Query<RunsParams>) -> Response {
    let query = match runs_query(&params) {
        Ok(query) => query,
        Err(failure) => return failure.page(&context),
    };
    let (rule, status) = runs_place(&params);
    let place = ListPlace {
        page: "/ui/runs",
        part: "/ui/part/runs",
        rule: rule.as_deref(),
        status: status.as_deref(),
    };
    let list = match runs_list(&context, query, &place, false, "No runs match.").await {
        Ok(list) => list,
        Err(failure) => return failure.page(&context),
    };
    let mut rule_names: Vec<String> = context
        .state
        .rule_set()
        .map(|set| set.rules().iter().map(|r| r.name.to_string()).collect())
        .unwrap_or_default();
    if let Some(rule) = &rule
        && !rule_names.contains(rule)
    {
        rule_names.push(rule.clone());
    }
    rule_names.sort();
    let filter = RunsFilter {
        rules: rule_names
            .into_iter()
            .map(|name| {
                let selected = rule.as_deref() == Some(name.as_str());
                (name, selected)
            })
            .collect(),
        statuses: RunStatus::ALL
            .iter()
            .map(|s| (s.as_str(), status.as_deref() == Some(s.as_str())))
            .collect(),
    };
    page(&RunsPage {
        chrome: chrome(&context, "Runs", "runs"),
        filter,
        list,
    })
}

async fn runs_part(
    State(context): State<AdminContext>,
    Query(params): Query<RunsParams>,
) -> Response {
    let query = match runs_query(&params) {
        Ok(query) => query,
        Err(failure) => return failure.page(&context),
    };
    let (rule, status) = runs_place(&params);
    let place = ListPlace {
        page: "/ui/runs",
        part: "/ui/part/runs",
        rule: rule.as_deref(),
        status: status.as_deref(),
    };
    match runs_list(&context, query, &place, false, "No runs match.").await {
        Ok(list) => page(&RunsPart { list }),
        Err(failure) => failure.page(&context),
    }
}

// ---- dead letters ----

#[derive(Deserialize)]
struct DeadParams {
    before: Option<String>,
}

const DEAD_PLACE: ListPlace<'static> = ListPlace {
    page: "/ui/dead",
    part: "/ui/part/dead",
    rule: None,
    status: None,
};

const NO_DEAD: &str = "No failed or dead runs.";

async fn dead_list(context: &AdminContext, params: DeadParams) -> Result<RunsList, Failure> {
    let params = RunsParams {
        status: Some("failed,dead".into()),
        before: params.before,
        ..RunsParams::default()
    };
    let query = runs_query(&params)?;
    runs_list(context, query, &DEAD_PLACE, true, NO_DEAD).await
}

async fn dead(State(context): State<AdminContext>, Query(params): Query<DeadParams>) -> Response {
    match dead_list(&context, params).await {
        Ok(list) => page(&DeadPage {
            chrome: chrome(&context, "Dead letters", "dead"),
            list,
        }),
        Err(failure) => failure.page(&context),
    }
}

async fn dead_part(
    State(context): State<AdminContext>,
    Query(params): Query<DeadParams>,
) -> Response {
    match dead_list(&context, params).await {
        Ok(list) => page(&RunsPart { list }),
        Err(failure) => failure.page(&context),
    }
}

/// Retry from the dead letters: htmx gets the run's row again with what
/// happened; a plain form post gets a page saying it.
async fn retry(
    State(context): State<AdminContext>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (status, said) = super::api::retry(&context, &id).await;
    if !headers.contains_key("hx-request") {
        let heading = if status == StatusCode::ACCEPTED {
            "Queued again"
        } else {
            "Not retried"
        };
        let status = if status == StatusCode::ACCEPTED {
            StatusCode::OK
        } else {
            status
        };
        return message(&context, status, heading, said);
    }
    let history = context.history.clone();
    let lookup = id.clone();
    let query = TraceQuery {
        limit: 1,
        ..TraceQuery::default()
    };
    match blocking(move || history.run_trace(&lookup, &query)).await {
        Ok(Some(trace)) => {
            let mut row = RunRow::new(&trace.summary);
            row.notice = said;
            // htmx swaps 2xx answers only: the row carries the outcome.
            page(&RunRowPart {
                row,
                with_retry: true,
            })
        }
        Ok(None) => message(&context, StatusCode::NOT_FOUND, "No such run", said),
        Err(error) => history_failed(&context, &error),
    }
}

// ---- a run's trace ----

/// The condition's answer, from the run and the rule running now.
fn condition_answer(context: &AdminContext, run: &RunSummary) -> String {
    if run.status == RunStatus::Skipped
        && let Some(error) = run
            .error
            .as_deref()
            .filter(|e| e.starts_with("condition error"))
    {
        return format!("The condition could not be answered, so the run was skipped: {error}");
    }
    let rule_set = context.state.rule_set();
    let Some(rule) = rule_set.as_ref().and_then(|set| set.rule(&run.rule)) else {
        return "Its `when` answered true (the rule is no longer in the running rule set).".into();
    };
    if rule.schedule().is_some() {
        return "A scheduled run: no condition.".into();
    }
    match &rule.condition {
        Some(_) => "Its `when` answered true.".into(),
        None => "No `when`: the rule runs for every event of its type.".into(),
    }
}

async fn load_trace(context: &AdminContext, id: &str) -> Result<TraceView, Failure> {
    let history = context.history.clone();
    let lookup = id.to_string();
    let query = TraceQuery {
        limit: TRACE_PAGE,
        ..TraceQuery::default()
    };
    match blocking(move || history.run_trace(&lookup, &query)).await {
        Ok(Some(trace)) => {
            let condition = condition_answer(context, &trace.summary);
            Ok(TraceView::new(&trace, condition, TRACE_PAGE))
        }
        Ok(None) => Err(Failure::NoRun(id.to_string())),
        Err(error) => Err(Failure::History(error)),
    }
}

async fn trace(State(context): State<AdminContext>, Path(id): Path<String>) -> Response {
    match load_trace(&context, &id).await {
        Ok(trace) => page(&TracePage {
            chrome: chrome(&context, format!("Run {id}"), "runs"),
            trace,
        }),
        Err(failure) => failure.page(&context),
    }
}

async fn trace_part(State(context): State<AdminContext>, Path(id): Path<String>) -> Response {
    match load_trace(&context, &id).await {
        Ok(trace) => page(&TracePart { trace }),
        Err(failure) => failure.page(&context),
    }
}

/// The next part of a trace's timeline, after the effects and log lines shown.
async fn timeline_part(
    State(context): State<AdminContext>,
    Path(id): Path<String>,
    Query(params): Query<TraceParams>,
) -> Response {
    let mut query = match params.to_query(TRACE_PAGE) {
        Ok(query) => query,
        Err(error) => return Failure::Bad(error).page(&context),
    };
    query.limit = TRACE_PAGE;
    let history = context.history.clone();
    let lookup = id.clone();
    match blocking(move || history.run_trace(&lookup, &query)).await {
        Ok(Some(trace)) => {
            let timeline = Timeline::merge(
                &id,
                &trace,
                TRACE_PAGE,
                query.effects_after,
                query.logs_after,
            );
            page(&TimelinePart { timeline })
        }
        Ok(None) => Failure::NoRun(id).page(&context),
        Err(error) => Failure::History(error).page(&context),
    }
}
