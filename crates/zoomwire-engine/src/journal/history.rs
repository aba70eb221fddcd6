//! What the readers of run history (the admin API, the operator's page)
//! ask of a journal, in pages: the [`RunHistory`] seam, implemented by the
//! SQLite, PostgreSQL and memory journals with the same shapes.
//!
//! Everything is paged so that no request loads more than a page, however
//! many runs the store holds or however many lines one run logged: runs are
//! listed newest first from a [`RunCursor`] (the last row of the previous
//! page, so a page costs the same on a store of 100 or 1,000,000 runs), and
//! one run's effects and log lines are read a page at a time after a
//! position ([`TraceQuery`]). Cursors travel in URLs as short text.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::query::{EventSummary, RunSummary};
use super::{RequeueOutcome, SqliteJournal};
use crate::effects::gateway::{EffectRecord, LogLine};
use crate::engine::journal::{JournalError, RunRecord, RunStatus};

/// The most rows one page holds.
pub const MAX_PAGE: usize = 500;

/// Why history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// This journal cannot do that (e.g. retry a run in memory).
    #[error("{0}")]
    Unsupported(&'static str),
}

/// Which runs to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunQuery {
    /// Only runs of this rule.
    pub rule: Option<String>,
    /// Only runs in one of these statuses; empty: any status.
    pub statuses: Vec<RunStatus>,
    /// Only runs listed after this one (the previous page's `next`).
    pub before: Option<RunCursor>,
    /// At most this many (capped at [`MAX_PAGE`]).
    pub limit: usize,
}

impl RunQuery {
    /// Whether `run` passes the rule and status filters (for memory journals).
    pub fn admits(&self, run: &RunRecord) -> bool {
        self.rule.as_ref().is_none_or(|rule| run.rule == *rule)
            && (self.statuses.is_empty() || self.statuses.contains(&run.status))
            && self
                .before
                .as_ref()
                .is_none_or(|cursor| cursor.is_after(run.created_at, &run.id))
    }

    /// The limit, at least 1 and at most [`MAX_PAGE`].
    pub fn page_size(&self) -> usize {
        self.limit.clamp(1, MAX_PAGE)
    }
}

/// A position in the newest-first order of runs: runs are ordered by
/// creation time, then id, both descending. As text `NANOS~ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCursor {
    /// The run's creation time, nanoseconds since the epoch.
    pub created_at: i64,
    pub id: String,
}

impl RunCursor {
    /// The cursor just past `run`.
    pub fn after_run(created_at: DateTime<Utc>, id: &str) -> RunCursor {
        RunCursor {
            created_at: super::codec::to_nanos(created_at),
            id: id.to_string(),
        }
    }

    /// Whether a run created at `created_at` with `id` comes after this
    /// position in newest-first order.
    pub fn is_after(&self, created_at: DateTime<Utc>, id: &str) -> bool {
        let nanos = super::codec::to_nanos(created_at);
        (nanos, id) < (self.created_at, self.id.as_str())
    }
}

impl fmt::Display for RunCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}~{}", self.created_at, self.id)
    }
}

/// Why a cursor's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a cursor from an earlier page")]
pub struct BadCursor(pub String);

impl FromStr for RunCursor {
    type Err = BadCursor;

    fn from_str(text: &str) -> Result<RunCursor, BadCursor> {
        let bad = || BadCursor(text.chars().take(80).collect());
        let (nanos, id) = text.split_once('~').ok_or_else(bad)?;
        let created_at = nanos.parse().map_err(|_| bad())?;
        if id.is_empty() {
            return Err(bad());
        }
        Ok(RunCursor {
            created_at,
            id: id.to_string(),
        })
    }
}

/// One page of runs, newest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunPage {
    pub runs: Vec<RunSummary>,
    /// Where the next (older) page starts; `None` on the last page.
    #[serde(serialize_with = "display_opt")]
    pub next: Option<RunCursor>,
}

impl RunPage {
    /// The first `limit` of `runs` (already ordered, possibly one more than
    /// the page), with the cursor for the rest.
    pub fn from_ordered(mut runs: Vec<RunSummary>, limit: usize) -> RunPage {
        let next = (runs.len() > limit).then(|| {
            runs.truncate(limit);
            runs.last()
                .map(|last| RunCursor::after_run(last.created_at, &last.id))
        });
        RunPage {
            runs,
            next: next.flatten(),
        }
    }
}

/// A position in one run's log lines: after line `idx` of attempt
/// `attempt`. As text `ATTEMPT.IDX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogCursor {
    pub attempt: u32,
    pub idx: u32,
}

impl fmt::Display for LogCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.attempt, self.idx)
    }
}

impl FromStr for LogCursor {
    type Err = BadCursor;

    fn from_str(text: &str) -> Result<LogCursor, BadCursor> {
        let bad = || BadCursor(text.chars().take(80).collect());
        let (attempt, idx) = text.split_once('.').ok_or_else(bad)?;
        Ok(LogCursor {
            attempt: attempt.parse().map_err(|_| bad())?,
            idx: idx.parse().map_err(|_| bad())?,
        })
    }
}

/// Which part of a run's effects and logs to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceQuery {
    /// Effects after this position (`seq`); from the first when `None`.
    pub effects_after: Option<u32>,
    /// Log lines after this one; from the first when `None`.
    pub logs_after: Option<LogCursor>,
    /// At most this many effects and this many log lines (capped at [`MAX_PAGE`]).
    pub limit: usize,
}

impl TraceQuery {
    pub fn page_size(&self) -> usize {
        self.limit.clamp(1, MAX_PAGE)
    }
}

/// A log line of a run, with its position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceLog {
    /// The attempt that wrote it (1 for the first).
    pub attempt: u32,
    /// Its position within the attempt, from 0.
    pub idx: u32,
    #[serde(flatten)]
    pub line: LogLine,
}

/// One run for its trace: the run, its trigger, and one page each of its
/// effects and log lines with their totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunTrace {
    #[serde(flatten)]
    pub summary: RunSummary,
    /// The script's return value.
    pub output: Option<Value>,
    /// The triggering event (redacted); `None` once pruned, or when the
    /// journal does not keep events.
    pub event: Option<EventSummary>,
    /// Effects in order (`seq`), one page.
    pub effects: Vec<EffectRecord>,
    pub effects_total: u64,
    /// The `effects_after` of the next page; `None` on the last.
    pub effects_next: Option<u32>,
    /// Log lines of every attempt in order, one page.
    pub logs: Vec<TraceLog>,
    pub logs_total: u64,
    #[serde(serialize_with = "display_opt")]
    pub logs_next: Option<LogCursor>,
}

/// A rule's recent history: its latest runs and how its runs ended lately.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RuleActivity {
    /// Runs created since the given time, by status name.
    pub counts: BTreeMap<&'static str, u64>,
    /// The latest runs, newest first.
    pub recent: Vec<RunSummary>,
}

/// Run history in pages. Blocking calls: servers run them off the async
/// reactor (`spawn_blocking`); each reads at most a page.
pub trait RunHistory: Send + Sync {
    /// Runs newest first, filtered, one page.
    fn list_runs(&self, query: &RunQuery) -> Result<RunPage, HistoryError>;

    /// One run with a page of its effects and log lines; `None` when unknown.
    fn run_trace(&self, id: &str, query: &TraceQuery) -> Result<Option<RunTrace>, HistoryError>;

    /// A rule's latest `recent` runs and its runs since `since`, counted by status.
    fn rule_activity(
        &self,
        rule: &str,
        since: DateTime<Utc>,
        recent: usize,
    ) -> Result<RuleActivity, HistoryError>;

    /// Puts a failed or dead run back to pending, as `zoomwire runs retry` does.
    fn retry_run<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<RequeueOutcome, HistoryError>> {
        let _ = id;
        Box::pin(async {
            Err(HistoryError::Unsupported(
                "runs can be retried only from the SQLite store",
            ))
        })
    }
}

/// A run as lists show it.
pub fn run_summary(run: &RunRecord) -> RunSummary {
    RunSummary {
        id: run.id.clone(),
        rule: run.rule.clone(),
        status: run.status,
        attempt: run.attempt,
        event_id: run.event_id.clone(),
        event_type: run.event_type.clone(),
        key: run.key.clone(),
        error: run.error.clone(),
        created_at: run.created_at,
        started_at: run.started_at,
        finished_at: run.finished_at,
    }
}

/// Newest first, as [`RunCursor`] orders them.
pub fn newest_first(a: &RunRecord, b: &RunRecord) -> std::cmp::Ordering {
    (b.created_at, &b.id).cmp(&(a.created_at, &a.id))
}

/// [`RunHistory::list_runs`] over runs held in memory.
pub fn list_in_memory<'a>(
    runs: impl IntoIterator<Item = &'a RunRecord>,
    query: &RunQuery,
) -> RunPage {
    let limit = query.page_size();
    let mut selected: Vec<&RunRecord> = runs.into_iter().filter(|r| query.admits(r)).collect();
    selected.sort_by(|a, b| newest_first(a, b));
    let summaries = selected
        .into_iter()
        .take(limit + 1)
        .map(run_summary)
        .collect();
    RunPage::from_ordered(summaries, limit)
}

/// [`RunHistory::run_trace`] for a run held in memory, whose log lines
/// carry no attempt (they count as the run's current attempt).
pub fn trace_in_memory(run: &RunRecord, query: &TraceQuery) -> RunTrace {
    let limit = query.page_size();
    let after_seq = query.effects_after.unwrap_or(0);
    let effects: Vec<EffectRecord> = run
        .effects
        .iter()
        .filter(|e| e.seq > after_seq)
        .take(limit + 1)
        .cloned()
        .collect();
    let attempt = run.attempt.max(1);
    let logs: Vec<TraceLog> = run
        .logs
        .iter()
        .enumerate()
        .map(|(idx, line)| TraceLog {
            attempt,
            idx: u32::try_from(idx).unwrap_or(u32::MAX),
            line: line.clone(),
        })
        .filter(|log| {
            query.logs_after.is_none_or(|after| {
                LogCursor {
                    attempt: log.attempt,
                    idx: log.idx,
                } > after
            })
        })
        .take(limit + 1)
        .collect();
    paged_trace(
        run_summary(run),
        run.output.clone(),
        None,
        effects,
        logs,
        limit,
    )
    .with_totals(run.effects.len() as u64, run.logs.len() as u64)
}

/// A trace from up to `limit + 1` effects and log lines (the extra one
/// only says there is more); totals are filled by [`RunTrace::with_totals`].
pub fn paged_trace(
    summary: RunSummary,
    output: Option<Value>,
    event: Option<EventSummary>,
    mut effects: Vec<EffectRecord>,
    mut logs: Vec<TraceLog>,
    limit: usize,
) -> RunTrace {
    let effects_next = (effects.len() > limit).then(|| {
        effects.truncate(limit);
        effects.last().map(|e| e.seq)
    });
    let logs_next = (logs.len() > limit).then(|| {
        logs.truncate(limit);
        logs.last().map(|l| LogCursor {
            attempt: l.attempt,
            idx: l.idx,
        })
    });
    RunTrace {
        summary,
        output,
        event,
        effects,
        effects_total: 0,
        effects_next: effects_next.flatten(),
        logs,
        logs_total: 0,
        logs_next: logs_next.flatten(),
    }
}

impl RunTrace {
    pub fn with_totals(mut self, effects: u64, logs: u64) -> RunTrace {
        self.effects_total = effects;
        self.logs_total = logs;
        self
    }
}

/// [`RunHistory::rule_activity`] over runs held in memory.
pub fn rule_activity_in_memory<'a>(
    runs: impl IntoIterator<Item = &'a RunRecord>,
    rule: &str,
    since: DateTime<Utc>,
    recent: usize,
) -> RuleActivity {
    let mut of_rule: Vec<&RunRecord> = runs.into_iter().filter(|r| r.rule == rule).collect();
    of_rule.sort_by(|a, b| newest_first(a, b));
    let mut counts = BTreeMap::new();
    for run in of_rule.iter().filter(|r| r.created_at >= since) {
        *counts.entry(run.status.as_str()).or_insert(0) += 1;
    }
    RuleActivity {
        counts,
        recent: of_rule.into_iter().take(recent).map(run_summary).collect(),
    }
}

fn display_opt<T: fmt::Display, S: serde::Serializer>(
    value: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.collect_str(value),
        None => serializer.serialize_none(),
    }
}

impl RunHistory for SqliteJournal {
    fn list_runs(&self, query: &RunQuery) -> Result<RunPage, HistoryError> {
        Ok(self.runs_page(query)?)
    }

    fn run_trace(&self, id: &str, query: &TraceQuery) -> Result<Option<RunTrace>, HistoryError> {
        Ok(SqliteJournal::run_trace(self, id, query)?)
    }

    fn rule_activity(
        &self,
        rule: &str,
        since: DateTime<Utc>,
        recent: usize,
    ) -> Result<RuleActivity, HistoryError> {
        Ok(SqliteJournal::rule_activity(self, rule, since, recent)?)
    }

    fn retry_run<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<RequeueOutcome, HistoryError>> {
        Box::pin(async move { Ok(self.requeue_run(id).await?) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn run(id: &str, rule: &str, status: RunStatus, second: u32) -> RunRecord {
        RunRecord {
            logs: (0..5)
                .map(|n| LogLine {
                    level: "info".into(),
                    message: format!("line {n}"),
                    at: Utc.with_ymd_and_hms(2026, 1, 2, 9, 0, n).unwrap(),
                })
                .collect(),
            created_at: Utc.with_ymd_and_hms(2026, 1, 2, 9, 0, second).unwrap(),
            ..RunRecord::for_test(id, rule, "e", "meeting.ended", status)
        }
    }

    #[test]
    fn cursors_round_trip_as_text_and_refuse_garbage() {
        let cursor = RunCursor {
            created_at: 1_767_000_000_123_456_789,
            id: "r0193abc".into(),
        };
        assert_eq!(cursor.to_string(), "1767000000123456789~r0193abc");
        assert_eq!(cursor.to_string().parse::<RunCursor>(), Ok(cursor));
        for bad in ["", "12", "x~r1", "12~"] {
            assert!(bad.parse::<RunCursor>().is_err(), "{bad}");
        }
        let log = LogCursor {
            attempt: 2,
            idx: 41,
        };
        assert_eq!(log.to_string().parse::<LogCursor>(), Ok(log));
        assert!("2".parse::<LogCursor>().is_err());
    }

    #[test]
    fn memory_pages_follow_their_cursors_through_ties() {
        // Two runs share a creation time: the id breaks the tie.
        let runs = [
            run("a", "x", RunStatus::Succeeded, 1),
            run("b", "x", RunStatus::Dead, 2),
            run("c", "y", RunStatus::Failed, 2),
            run("d", "x", RunStatus::Succeeded, 3),
        ];
        let mut query = RunQuery {
            limit: 2,
            ..RunQuery::default()
        };
        let first = list_in_memory(&runs, &query);
        let ids: Vec<&str> = first.runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["d", "c"]);
        query.before = first.next;
        let second = list_in_memory(&runs, &query);
        let ids: Vec<&str> = second.runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["b", "a"]);
        assert_eq!(second.next, None, "the last page says so");

        let failed = RunQuery {
            statuses: vec![RunStatus::Failed, RunStatus::Dead],
            rule: Some("x".into()),
            limit: 10,
            before: None,
        };
        let ids: Vec<String> = list_in_memory(&runs, &failed)
            .runs
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["b"]);
    }

    #[test]
    fn memory_traces_page_their_logs() {
        let record = run("a", "x", RunStatus::Succeeded, 1);
        let mut query = TraceQuery {
            limit: 2,
            ..TraceQuery::default()
        };
        let mut messages = Vec::new();
        loop {
            let trace = trace_in_memory(&record, &query);
            assert_eq!(trace.logs_total, 5);
            assert!(trace.logs.len() <= 2);
            messages.extend(trace.logs.iter().map(|l| l.line.message.clone()));
            match trace.logs_next {
                Some(next) => query.logs_after = Some(next),
                None => break,
            }
        }
        assert_eq!(messages, ["line 0", "line 1", "line 2", "line 3", "line 4"]);
    }
}
