//! What the templates show, already turned into text: each page and
//! fragment is an askama template over plain strings, numbers and lists
//! built here from the history, the health report and the activity feed.
//! Formatting (times, durations, JSON, links with their filters) happens
//! here so that the templates hold no logic beyond loops and conditions;
//! askama escapes every value they print.

use askama::Template;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::chart::Chart;
use crate::admin::activity::EventNote;
use crate::admin::health::{HealthReport, HealthStatus, SubscriptionReport};
use crate::effects::gateway::EffectRecord;
use crate::engine::journal::RunStatus;
use crate::journal::RunSummary;
use crate::journal::history::{LogCursor, RuleActivity, RunPage, RunTrace, TraceLog};
use crate::rules::{Rule, Trigger};

/// What every page shares: its title, the active tab, whether to offer logout.
pub struct Chrome {
    pub title: String,
    /// The nav entry to highlight (`overview`, `rules`, `events`, `runs`, `dead`).
    pub active: &'static str,
    /// A token guards the server: show "log out".
    pub guarded: bool,
    /// Show the navigation and follow the live stream (not on the login page).
    pub stream: bool,
}

#[derive(Template)]
#[template(path = "admin/login.html")]
pub struct LoginPage {
    pub chrome: Chrome,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "admin/message.html")]
pub struct MessagePage {
    pub chrome: Chrome,
    pub heading: String,
    pub message: String,
}

// ---- overview ----

#[derive(Template)]
#[template(path = "admin/overview.html")]
pub struct OverviewPage {
    pub chrome: Chrome,
    pub live: OverviewLive,
}

#[derive(Template)]
#[template(path = "admin/overview_live.html")]
pub struct OverviewPart {
    pub live: OverviewLive,
}

pub struct OverviewLive {
    pub health: &'static str,
    pub version: String,
    pub started_at: String,
    pub subscriptions: Vec<SubscriptionView>,
    pub rules_loaded: String,
    pub reload_at: String,
    pub reload_ok: bool,
    pub reload_errors: Vec<String>,
    pub chart: Chart,
    pub hour_events: u64,
    pub hour_runs: u64,
    pub hour_failed: u64,
    /// With several nodes: this node and the others.
    pub cluster: Option<ClusterView>,
}

/// The cluster as this node sees it.
pub struct ClusterView {
    pub node: String,
    /// The leases it holds, as `name (epoch N)`.
    pub leases: Vec<String>,
    pub peers: Vec<PeerView>,
}

pub struct PeerView {
    pub id: String,
    pub alive: bool,
    pub heartbeat: String,
    pub admin: String,
    pub this: bool,
}

pub struct SubscriptionView {
    pub name: String,
    pub state: String,
    pub connected: bool,
    /// Held by another node of the cluster.
    pub standby: bool,
    pub since: String,
    pub last_event: String,
    pub error: String,
    pub events_received: String,
    pub reconnects: String,
    pub gaps: Vec<GapView>,
}

pub struct GapView {
    pub start: String,
    pub end: String,
    pub length: String,
    pub reason: String,
}

impl OverviewLive {
    pub fn new(report: &HealthReport, chart: Chart, now: DateTime<Utc>) -> OverviewLive {
        let (hour_events, hour_runs, hour_failed) = chart.totals();
        let reload = report.rules.last_reload.as_ref();
        OverviewLive {
            health: match report.status {
                HealthStatus::Ok => "ok",
                HealthStatus::Degraded => "degraded",
                HealthStatus::Unhealthy => "unhealthy",
            },
            version: report.version.clone(),
            started_at: time(report.started_at),
            subscriptions: report
                .subscriptions
                .iter()
                .map(|(name, sub)| SubscriptionView::new(name, sub, now))
                .collect(),
            rules_loaded: report
                .rules
                .loaded_rules
                .map_or_else(|| "none".to_string(), |n| n.to_string()),
            reload_at: reload.map(|r| time(r.at)).unwrap_or_default(),
            reload_ok: reload.is_none_or(|r| r.ok),
            reload_errors: reload.map(|r| r.errors.clone()).unwrap_or_default(),
            chart,
            hour_events,
            hour_runs,
            hour_failed,
            cluster: report.cluster.as_ref().map(ClusterView::new),
        }
    }
}

impl ClusterView {
    fn new(report: &crate::cluster::node::ClusterReport) -> ClusterView {
        ClusterView {
            node: report.node.clone(),
            leases: report
                .leases
                .iter()
                .map(|(name, epoch)| format!("{name} (epoch {epoch})"))
                .collect(),
            peers: report
                .peers
                .iter()
                .map(|peer| PeerView {
                    id: peer.id.clone(),
                    alive: peer.alive,
                    heartbeat: format!("{:.1} s ago", peer.heartbeat_age_ms as f64 / 1000.0),
                    admin: peer.admin_addr.clone().unwrap_or_default(),
                    this: peer.id == report.node,
                })
                .collect(),
        }
    }
}

impl SubscriptionView {
    fn new(name: &str, sub: &SubscriptionReport, now: DateTime<Utc>) -> SubscriptionView {
        let connection = sub.connection.as_ref();
        SubscriptionView {
            name: name.to_string(),
            state: format!("{:?}", sub.state).to_lowercase(),
            connected: matches!(sub.state, crate::admin::ConnectionState::Connected),
            standby: matches!(sub.state, crate::admin::ConnectionState::Standby),
            since: sub.since.map(time).unwrap_or_default(),
            last_event: sub
                .last_event_at
                .map(time)
                .unwrap_or_else(|| "none yet".into()),
            error: sub.error.clone().unwrap_or_default(),
            events_received: connection
                .map(|c| c.events_received.to_string())
                .unwrap_or_default(),
            reconnects: connection
                .map(|c| c.reconnects.to_string())
                .unwrap_or_default(),
            gaps: connection
                .map(|c| {
                    c.gaps
                        .iter()
                        .rev()
                        .map(|gap| GapView {
                            start: time(gap.start),
                            end: gap.end.map(time).unwrap_or_else(|| "still down".into()),
                            length: duration(gap.end.unwrap_or(now) - gap.start),
                            reason: gap.reason.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

// ---- rules ----

#[derive(Template)]
#[template(path = "admin/rules.html")]
pub struct RulesPage {
    pub chrome: Chrome,
    pub rules: Vec<RuleView>,
    /// Why no rules are listed, when none are.
    pub empty: String,
}

pub struct RuleView {
    pub name: String,
    pub description: String,
    pub location: String,
    pub trigger: String,
    pub mode: String,
    pub capabilities: Vec<String>,
    pub enabled: bool,
    pub counts: Vec<(&'static str, u64)>,
    pub recent: Vec<RunDot>,
    pub runs_href: String,
}

/// One recent run, as a small status mark linking to its trace.
pub struct RunDot {
    pub href: String,
    pub status: &'static str,
    pub title: String,
}

impl RuleView {
    pub fn new(rule: &Rule, activity: &RuleActivity) -> RuleView {
        let trigger = match &rule.trigger {
            Trigger::Events(patterns) => patterns
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            Trigger::Schedule(schedule) => {
                format!("schedule `{}` ({})", schedule.expression, schedule.timezone)
            }
        };
        RuleView {
            name: rule.name.to_string(),
            description: rule.description.clone().unwrap_or_default(),
            location: format!(
                "{}:{}:{}",
                rule.path.display(),
                rule.position.line,
                rule.position.column
            ),
            trigger,
            mode: format!("{} (max_runs {})", rule.mode, rule.max_runs),
            capabilities: rule.capabilities.names(),
            enabled: rule.enabled,
            counts: RunStatus::ALL
                .iter()
                .filter_map(|status| {
                    let count = activity.counts.get(status.as_str())?;
                    Some((status.as_str(), *count))
                })
                .collect(),
            recent: activity
                .recent
                .iter()
                .map(|run| RunDot {
                    href: run_href(&run.id),
                    status: run.status.as_str(),
                    title: format!("{} at {}", run.status.as_str(), time(run.created_at)),
                })
                .collect(),
            runs_href: runs_href("/ui/runs", Some(&rule.name), None, None),
        }
    }
}

// ---- events ----

#[derive(Template)]
#[template(path = "admin/events.html")]
pub struct EventsPage {
    pub chrome: Chrome,
    pub tail: EventsTail,
}

#[derive(Template)]
#[template(path = "admin/events_tail.html")]
pub struct EventsPart {
    pub tail: EventsTail,
}

pub struct EventsTail {
    pub rows: Vec<EventRow>,
}

pub struct EventRow {
    pub received: String,
    pub event_type: String,
    pub source: String,
    pub id: String,
    pub rules: Vec<MatchedView>,
}

pub struct MatchedView {
    pub rule: String,
    pub href: String,
    pub condition_failed: bool,
}

impl EventsTail {
    pub fn new(notes: &[EventNote]) -> EventsTail {
        EventsTail {
            rows: notes
                .iter()
                .map(|note| EventRow {
                    received: time(note.received_at),
                    event_type: note.event_type.clone(),
                    source: note.source.clone(),
                    id: note.id.clone(),
                    rules: note
                        .rules
                        .iter()
                        .map(|m| MatchedView {
                            rule: m.rule.clone(),
                            href: run_href(&m.run_id),
                            condition_failed: m.condition_failed,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

// ---- runs and dead letters ----

#[derive(Template)]
#[template(path = "admin/runs.html")]
pub struct RunsPage {
    pub chrome: Chrome,
    pub filter: RunsFilter,
    pub list: RunsList,
}

#[derive(Template)]
#[template(path = "admin/dead.html")]
pub struct DeadPage {
    pub chrome: Chrome,
    pub list: RunsList,
}

#[derive(Template)]
#[template(path = "admin/runs_list.html")]
pub struct RunsPart {
    pub list: RunsList,
}

#[derive(Template)]
#[template(path = "admin/run_row.html")]
pub struct RunRowPart {
    pub row: RunRow,
    pub with_retry: bool,
}

/// The filter form of the runs list.
pub struct RunsFilter {
    /// Every rule name offered, with whether it is selected.
    pub rules: Vec<(String, bool)>,
    /// Every status offered, with whether it is selected.
    pub statuses: Vec<(&'static str, bool)>,
}

pub struct RunsList {
    pub rows: Vec<RunRow>,
    /// Rows get a Retry button (the dead letters page).
    pub with_retry: bool,
    /// The first page, when this is a later one.
    pub newest_href: Option<String>,
    pub older_href: Option<String>,
    /// The fragment that reloads this list on new runs; only on a first page.
    pub live_href: Option<String>,
    pub empty: &'static str,
}

pub struct RunRow {
    pub id: String,
    pub href: String,
    pub rule: String,
    pub status: &'static str,
    pub event_type: String,
    pub key: String,
    pub attempt: u32,
    pub created: String,
    pub started: String,
    pub duration: String,
    pub error: String,
    /// The run is over and failed: Retry applies.
    pub retryable: bool,
    pub retry_href: String,
    /// What a retry just said.
    pub notice: String,
}

impl RunRow {
    pub fn new(run: &RunSummary) -> RunRow {
        RunRow {
            id: run.id.clone(),
            href: run_href(&run.id),
            rule: run.rule.clone(),
            status: run.status.as_str(),
            event_type: run.event_type.clone(),
            key: run.key.clone().unwrap_or_default(),
            attempt: run.attempt,
            created: time(run.created_at),
            started: run.started_at.map(time).unwrap_or_default(),
            duration: match (run.started_at, run.finished_at) {
                (Some(start), Some(end)) => duration(end - start),
                _ => String::new(),
            },
            error: run.error.as_deref().map(first_line).unwrap_or_default(),
            retryable: matches!(run.status, RunStatus::Failed | RunStatus::Dead)
                && run.finished_at.is_some(),
            retry_href: format!("{}/retry", run_href(&run.id)),
            notice: String::new(),
        }
    }
}

/// Where a list of runs lives: its page and its live fragment, with filters.
pub struct ListPlace<'a> {
    pub page: &'a str,
    pub part: &'a str,
    pub rule: Option<&'a str>,
    pub status: Option<&'a str>,
}

impl RunsList {
    pub fn new(
        page: &RunPage,
        place: &ListPlace<'_>,
        paged: bool,
        with_retry: bool,
        empty: &'static str,
    ) -> RunsList {
        let cursor = page.next.as_ref().map(ToString::to_string);
        RunsList {
            rows: page.runs.iter().map(RunRow::new).collect(),
            with_retry,
            newest_href: paged.then(|| runs_href(place.page, place.rule, place.status, None)),
            older_href: cursor
                .as_deref()
                .map(|c| runs_href(place.page, place.rule, place.status, Some(c))),
            live_href: (!paged).then(|| runs_href(place.part, place.rule, place.status, None)),
            empty,
        }
    }
}

// ---- a run's trace ----

#[derive(Template)]
#[template(path = "admin/trace.html")]
pub struct TracePage {
    pub chrome: Chrome,
    pub trace: TraceView,
}

#[derive(Template)]
#[template(path = "admin/trace_body.html")]
pub struct TracePart {
    pub trace: TraceView,
}

#[derive(Template)]
#[template(path = "admin/timeline.html")]
pub struct TimelinePart {
    pub timeline: Timeline,
}

pub struct TraceView {
    pub run: RunRow,
    pub finished: String,
    pub error: String,
    pub output: String,
    pub event: Option<EventView>,
    pub condition: String,
    pub timeline: Timeline,
    /// Reloads the trace while the run is not over.
    pub live_href: Option<String>,
}

pub struct EventView {
    pub id: String,
    pub event_type: String,
    pub source: String,
    pub received: String,
    pub body: String,
}

pub struct Timeline {
    pub items: Vec<TimelineItem>,
    pub effects_total: u64,
    pub logs_total: u64,
    pub more_href: Option<String>,
}

/// An effect or a log line, in time order; `attempt` starts a new attempt's part.
pub struct TimelineItem {
    pub at: String,
    pub attempt: Option<u32>,
    pub effect: Option<EffectView>,
    pub log: Option<LogView>,
}

pub struct EffectView {
    pub seq: u32,
    pub name: String,
    pub args: String,
    pub ok: bool,
    pub result: String,
    pub latency: String,
    pub replayed: bool,
    /// A crash came while it was performed: it may not have happened, or twice.
    pub in_doubt: bool,
}

pub struct LogView {
    pub attempt: u32,
    pub level: String,
    pub message: String,
}

impl TraceView {
    pub fn new(trace: &RunTrace, condition: String, limit: usize) -> TraceView {
        let summary = &trace.summary;
        let unfinished = !summary.status.is_finished()
            || (summary.status == RunStatus::Failed && summary.finished_at.is_none());
        TraceView {
            run: RunRow::new(summary),
            finished: summary.finished_at.map(time).unwrap_or_default(),
            error: summary.error.clone().unwrap_or_default(),
            output: trace.output.as_ref().map(pretty).unwrap_or_default(),
            event: trace.event.as_ref().map(|event| EventView {
                id: event.id.clone(),
                event_type: event.event_type.clone(),
                source: event.source.clone(),
                received: time(event.received_at),
                body: pretty(&event.body),
            }),
            condition,
            timeline: Timeline::merge(&summary.id, trace, limit, None, None),
            live_href: unfinished.then(|| format!("/ui/part/runs/{}", encode(&summary.id))),
        }
    }
}

impl Timeline {
    /// The next `limit` effects and log lines in time order, from a trace
    /// read after `effects_after` and `logs_after` with at least `limit` of
    /// each; `more_href` reads on from the last one taken of each.
    pub fn merge(
        id: &str,
        trace: &RunTrace,
        limit: usize,
        mut effects_after: Option<u32>,
        mut logs_after: Option<LogCursor>,
    ) -> Timeline {
        let mut items = Vec::new();
        let (mut e, mut l) = (0, 0);
        let mut attempt = logs_after.map(|c| c.attempt);
        while items.len() < limit && (e < trace.effects.len() || l < trace.logs.len()) {
            let next_effect = trace.effects.get(e);
            let next_log = trace.logs.get(l);
            let take_log = match (next_effect, next_log) {
                (Some(effect), Some(log)) => log.line.at <= effect.started_at,
                (None, Some(_)) => true,
                _ => false,
            };
            if take_log {
                let log = &trace.logs[l];
                l += 1;
                logs_after = Some(LogCursor {
                    attempt: log.attempt,
                    idx: log.idx,
                });
                let new_attempt = attempt != Some(log.attempt) && log.attempt > 1;
                attempt = Some(log.attempt);
                items.push(log_item(log, new_attempt));
            } else {
                let effect = &trace.effects[e];
                e += 1;
                effects_after = Some(effect.seq);
                items.push(effect_item(effect));
            }
        }
        let more = e < trace.effects.len()
            || l < trace.logs.len()
            || trace.effects_next.is_some()
            || trace.logs_next.is_some();
        let more_href = more.then(|| {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            if let Some(seq) = effects_after {
                query.append_pair("effects_after", &seq.to_string());
            }
            if let Some(cursor) = logs_after {
                query.append_pair("logs_after", &cursor.to_string());
            }
            format!("/ui/part/runs/{}/timeline?{}", encode(id), query.finish())
        });
        Timeline {
            items,
            effects_total: trace.effects_total,
            logs_total: trace.logs_total,
            more_href,
        }
    }
}

fn effect_item(effect: &EffectRecord) -> TimelineItem {
    let (ok, result) = match &effect.result {
        Ok(value) => (true, pretty(value)),
        Err(error) => {
            let mut text = format!("{:?}: {}", error.kind, error.message).to_lowercase();
            if let Some(status) = error.status {
                text.push_str(&format!(" (HTTP {status})"));
            }
            (false, text)
        }
    };
    TimelineItem {
        at: time(effect.started_at),
        attempt: None,
        effect: Some(EffectView {
            seq: effect.seq,
            name: effect.name.clone(),
            args: pretty(&effect.args),
            ok,
            result,
            latency: format!("{:.1} ms", effect.latency_ms),
            replayed: effect.replayed,
            in_doubt: effect.in_doubt,
        }),
        log: None,
    }
}

fn log_item(log: &TraceLog, new_attempt: bool) -> TimelineItem {
    TimelineItem {
        at: time(log.line.at),
        attempt: new_attempt.then_some(log.attempt),
        effect: None,
        log: Some(LogView {
            attempt: log.attempt,
            level: log.line.level.clone(),
            message: log.line.message.clone(),
        }),
    }
}

// ---- formatting ----

/// A time as the page shows it: UTC, to the second.
pub fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// A length of time: `850 ms`, `4.2 s`, `3 min 5 s`, `2 h 10 min`.
pub fn duration(length: chrono::TimeDelta) -> String {
    let millis = length.num_milliseconds().max(0);
    match millis {
        0..1_000 => format!("{millis} ms"),
        1_000..60_000 => format!("{:.1} s", millis as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min {} s", millis / 60_000, millis % 60_000 / 1000),
        _ => format!(
            "{} h {} min",
            millis / 3_600_000,
            millis % 3_600_000 / 60_000
        ),
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > 160 {
        let cut: String = line.chars().take(159).collect();
        return format!("{cut}…");
    }
    line.to_string()
}

/// What a path segment keeps as is: letters, digits, `-`, `_` and `~`
/// (`.` too is encoded, so that no id reads as `..`).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'~');

/// A path segment, percent-encoded.
pub fn encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, SEGMENT).to_string()
}

/// A run's trace page.
pub fn run_href(id: &str) -> String {
    format!("/ui/runs/{}", encode(id))
}

/// A runs list at `path` with its filters and, for a later page, its cursor.
pub fn runs_href(
    path: &str,
    rule: Option<&str>,
    status: Option<&str>,
    before: Option<&str>,
) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in [("rule", rule), ("status", status), ("before", before)] {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            query.append_pair(name, value);
        }
    }
    let query = query.finish();
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::gateway::LogLine;
    use chrono::TimeZone;

    fn at(second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 9, 0, second).unwrap()
    }

    fn trace(effects: &[(u32, u32)], logs: &[(u32, u32, u32)]) -> RunTrace {
        let summary = RunSummary {
            id: "r 1".into(),
            rule: "x".into(),
            status: RunStatus::Succeeded,
            attempt: 2,
            event_id: "e".into(),
            event_type: "meeting.ended".into(),
            key: None,
            error: None,
            created_at: at(0),
            started_at: Some(at(0)),
            finished_at: Some(at(9)),
        };
        RunTrace {
            summary,
            output: None,
            event: None,
            effects: effects
                .iter()
                .map(|&(seq, second)| EffectRecord {
                    seq,
                    name: "slack.post".into(),
                    args: serde_json::json!({"channel": "#ops"}),
                    result: Ok(Value::Null),
                    unredacted: None,
                    started_at: at(second),
                    latency_ms: 1.0,
                    replayed: false,
                    in_doubt: false,
                })
                .collect(),
            effects_total: effects.len() as u64,
            effects_next: None,
            logs: logs
                .iter()
                .map(|&(attempt, idx, second)| TraceLog {
                    attempt,
                    idx,
                    line: LogLine {
                        level: "info".into(),
                        message: format!("{attempt}.{idx}"),
                        at: at(second),
                    },
                })
                .collect(),
            logs_total: logs.len() as u64,
            logs_next: None,
        }
    }

    #[test]
    fn the_timeline_interleaves_by_time_and_reads_on_from_what_it_took() {
        let trace = trace(
            &[(1, 2), (2, 5)],
            &[(1, 0, 1), (1, 1, 3), (2, 0, 4), (2, 1, 6)],
        );
        let timeline = Timeline::merge("r 1", &trace, 4, None, None);
        let order: Vec<String> = timeline
            .items
            .iter()
            .map(|item| match (&item.effect, &item.log) {
                (Some(effect), _) => format!("e{}", effect.seq),
                (_, Some(log)) => log.message.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(order, ["1.0", "e1", "1.1", "2.0"]);
        assert_eq!(timeline.items[3].attempt, Some(2), "attempt 2 starts here");
        assert_eq!(
            timeline.more_href.as_deref(),
            Some("/ui/part/runs/r%201/timeline?effects_after=1&logs_after=2.0")
        );
        let all = Timeline::merge("r 1", &trace, 10, None, None);
        assert_eq!(all.items.len(), 6);
        assert_eq!(all.more_href, None);
    }

    #[test]
    fn durations_and_links_read_well() {
        assert_eq!(duration(chrono::TimeDelta::milliseconds(850)), "850 ms");
        assert_eq!(duration(chrono::TimeDelta::milliseconds(4_240)), "4.2 s");
        assert_eq!(duration(chrono::TimeDelta::seconds(185)), "3 min 5 s");
        assert_eq!(duration(chrono::TimeDelta::minutes(130)), "2 h 10 min");
        assert_eq!(
            runs_href("/ui/runs", Some("a&b"), Some(""), Some("12~r1")),
            "/ui/runs?rule=a%26b&before=12%7Er1"
        );
        assert_eq!(run_href("../x"), "/ui/runs/%2E%2E%2Fx");
        assert_eq!(run_href("r019-a_b~c"), "/ui/runs/r019-a_b~c");
    }
}
