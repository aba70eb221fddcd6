//! The SQL behind [`RunHistory`](super::history::RunHistory): runs a page at
//! a time, newest first, from a cursor; one run's effects and log lines a
//! page at a time; a rule's recent runs and counts by outcome.
//!
//! Every query walks an index from its start or from the cursor and stops
//! after one page, so it costs the same however many rows the store holds.
//! The SQL is built for the filters given (rule, one status, a cursor), so
//! that SQLite picks the index that fits: `runs_created`, `runs_status` or
//! `runs_rule_status`. Several statuses (failed and dead) are one indexed
//! query each, merged; so is a rule's list without a status filter, one
//! query per status on `runs_rule_status` (schema 6 dropped `runs_rule`,
//! one index fewer written per run).

use rusqlite::types::ToSql;
use rusqlite::{Connection, Row, params};

use super::codec::{from_json, from_nanos, parse_status, to_nanos};
use super::event_index::EventIndex;
use super::history::{
    LogCursor, RuleActivity, RunCursor, RunPage, RunQuery, RunTrace, TraceLog, TraceQuery,
    paged_trace,
};
use super::query::{ReadResult, RunSummary, StoredEvent, stored_event};
use crate::effects::gateway::{EffectRecord, LogLine};
use crate::engine::journal::RunStatus;

const SUMMARY_COLUMNS: &str = "id, rule, event_id, event_type, key, status, attempt, error, created_at, started_at, finished_at";

/// One page of runs, newest first.
pub(crate) fn runs_page(conn: &Connection, query: &RunQuery) -> ReadResult<RunPage> {
    let limit = query.page_size();
    let mut statuses = query.statuses.clone();
    statuses.sort_by_key(|s| s.as_str());
    statuses.dedup();
    let runs = newest_runs(conn, query, statuses, limit + 1)?;
    Ok(RunPage::from_ordered(runs, limit))
}

/// Up to `fetch` runs passing the query's filters and in one of `statuses`
/// (empty: any), newest first. A rule's runs are read one status at a time
/// (`runs_rule_status`), as are several statuses, and merged.
fn newest_runs(
    conn: &Connection,
    query: &RunQuery,
    mut statuses: Vec<RunStatus>,
    fetch: usize,
) -> ReadResult<Vec<RunSummary>> {
    if statuses.is_empty() && query.rule.is_some() {
        statuses = RunStatus::ALL.to_vec();
    }
    if statuses.is_empty() {
        return runs_in(conn, query, None, fetch);
    }
    let mut merged = Vec::new();
    for status in statuses {
        merged.extend(runs_in(conn, query, Some(status), fetch)?);
    }
    merged.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    merged.truncate(fetch);
    Ok(merged)
}

/// Up to `fetch` runs passing the query's filters and `status`, newest first.
fn runs_in(
    conn: &Connection,
    query: &RunQuery,
    status: Option<RunStatus>,
    fetch: usize,
) -> ReadResult<Vec<RunSummary>> {
    let mut conditions = Vec::new();
    let mut values: Vec<Box<dyn ToSql>> = Vec::new();
    if let Some(rule) = &query.rule {
        values.push(Box::new(rule.clone()));
        conditions.push(format!("rule = ?{}", values.len()));
    }
    if let Some(status) = status {
        values.push(Box::new(status.as_str()));
        conditions.push(format!("status = ?{}", values.len()));
    }
    if let Some(RunCursor { created_at, id }) = &query.before {
        values.push(Box::new(*created_at));
        values.push(Box::new(id.clone()));
        let (at, id) = (values.len() - 1, values.len());
        conditions.push(format!("(created_at, id) < (?{at}, ?{id})"));
    }
    values.push(Box::new(i64::try_from(fetch).unwrap_or(i64::MAX)));
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM runs {filter} ORDER BY created_at DESC, id DESC LIMIT ?{}",
        values.len()
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let params: Vec<&dyn ToSql> = values.iter().map(|v| v.as_ref()).collect();
    let mut rows = statement.query(params.as_slice())?;
    let mut runs = Vec::new();
    while let Some(row) = rows.next()? {
        runs.push(summary_row(row)?);
    }
    Ok(runs)
}

/// One run with a page of its effects and log lines, `None` when unknown.
pub(crate) fn run_trace(
    conn: &Connection,
    events: &EventIndex,
    id: &str,
    query: &TraceQuery,
) -> ReadResult<Option<RunTrace>> {
    let sql = format!("SELECT {SUMMARY_COLUMNS}, output FROM runs WHERE id = ?1");
    let mut statement = conn.prepare_cached(&sql)?;
    let mut rows = statement.query([id])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let summary = summary_row(row)?;
    let output: Option<String> = row.get(11)?;
    let output = output.map(|o| from_json(&o, "runs.output")).transpose()?;
    let limit = query.page_size();
    let effects = effects_after(conn, id, query.effects_after.unwrap_or(0), limit + 1)?;
    let logs = logs_after(conn, id, query.logs_after, limit + 1)?;
    let event = stored_event(conn, events, &summary.event_id)?
        .as_ref()
        .map(StoredEvent::summary)
        .transpose()?;
    let effects_total = count(conn, "effects", id)?;
    let logs_total = count(conn, "logs", id)?;
    Ok(Some(
        paged_trace(summary, output, event, effects, logs, limit)
            .with_totals(effects_total, logs_total),
    ))
}

fn effects_after(
    conn: &Connection,
    run_id: &str,
    after_seq: u32,
    fetch: usize,
) -> ReadResult<Vec<EffectRecord>> {
    let mut statement = conn.prepare_cached(
        "SELECT seq, name, args, result, started_at, latency_ms, replayed, in_doubt
         FROM effects WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let fetch = i64::try_from(fetch).unwrap_or(i64::MAX);
    let mut rows = statement.query(params![run_id, after_seq, fetch])?;
    let mut effects = Vec::new();
    while let Some(row) = rows.next()? {
        effects.push(super::query::effect_row(row)?);
    }
    Ok(effects)
}

fn logs_after(
    conn: &Connection,
    run_id: &str,
    after: Option<LogCursor>,
    fetch: usize,
) -> ReadResult<Vec<TraceLog>> {
    // Before the first line of the first attempt when no cursor is given.
    let (attempt, idx) = after.map_or((0, -1), |c| (i64::from(c.attempt), i64::from(c.idx)));
    let mut statement = conn.prepare_cached(
        "SELECT attempt, idx, level, message, at FROM logs
         WHERE run_id = ?1 AND (attempt, idx) > (?2, ?3) ORDER BY attempt, idx LIMIT ?4",
    )?;
    let fetch = i64::try_from(fetch).unwrap_or(i64::MAX);
    let logs = statement
        .query_map(params![run_id, attempt, idx, fetch], |row| {
            Ok(TraceLog {
                attempt: row.get(0)?,
                idx: row.get(1)?,
                line: LogLine {
                    level: row.get(2)?,
                    message: row.get(3)?,
                    at: from_nanos(row.get(4)?),
                },
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(logs)
}

/// Rows of `table` (effects or logs) for one run: a range of its primary key.
fn count(conn: &Connection, table: &str, run_id: &str) -> ReadResult<u64> {
    let sql = format!("SELECT count(*) FROM {table} WHERE run_id = ?1");
    let total: i64 = conn
        .prepare_cached(&sql)?
        .query_row([run_id], |row| row.get(0))?;
    Ok(total.max(0) as u64)
}

/// A rule's latest `recent` runs, and its runs created since `since` by status.
pub(crate) fn rule_activity(
    conn: &Connection,
    rule: &str,
    since: chrono::DateTime<chrono::Utc>,
    recent: usize,
) -> ReadResult<RuleActivity> {
    // One range of `runs_rule_status` per status.
    let mut statement = conn.prepare_cached(
        "SELECT count(*) FROM runs WHERE rule = ?1 AND status = ?2 AND created_at >= ?3",
    )?;
    let mut activity = RuleActivity::default();
    for status in RunStatus::ALL {
        let count: i64 = statement
            .query_row(params![rule, status.as_str(), to_nanos(since)], |row| {
                row.get(0)
            })?;
        if count > 0 {
            activity.counts.insert(status.as_str(), count as u64);
        }
    }
    let query = RunQuery {
        rule: Some(rule.to_string()),
        limit: recent,
        ..RunQuery::default()
    };
    activity.recent = newest_runs(conn, &query, Vec::new(), recent)?;
    Ok(activity)
}

fn summary_row(row: &Row<'_>) -> ReadResult<RunSummary> {
    let status: String = row.get(5)?;
    Ok(RunSummary {
        id: row.get(0)?,
        rule: row.get(1)?,
        event_id: row.get(2)?,
        event_type: row.get(3)?,
        key: row.get(4)?,
        status: parse_status(&status)?,
        attempt: row.get(6)?,
        error: row.get(7)?,
        created_at: from_nanos(row.get(8)?),
        started_at: row.get::<_, Option<i64>>(9)?.map(from_nanos),
        finished_at: row.get::<_, Option<i64>>(10)?.map(from_nanos),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read<T>(result: ReadResult<T>) -> T {
        match result {
            Ok(value) => value,
            Err(super::super::query::ReadError::Sqlite(error)) => panic!("{error}"),
            Err(super::super::query::ReadError::Journal(error)) => panic!("{error}"),
        }
    }

    /// The plan of `sql` as SQLite would run it on a store of this schema.
    fn plan(conn: &Connection, sql: &str) -> String {
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let mut statement = conn.prepare(&explain).unwrap();
        let count = statement.parameter_count();
        let values: Vec<i64> = vec![1; count];
        let details: Vec<String> = statement
            .query_map(rusqlite::params_from_iter(values), |row| row.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        details.join("; ")
    }

    #[test]
    fn a_rules_runs_and_counts_read_runs_rule_status_not_the_whole_table() {
        let (_dir, conn) = super::super::schema::scratch_store();
        let listing = format!(
            "SELECT {SUMMARY_COLUMNS} FROM runs WHERE rule = ?1 AND status = ?2
             AND (created_at, id) < (?3, ?4) ORDER BY created_at DESC, id DESC LIMIT ?5"
        );
        let counts =
            "SELECT count(*) FROM runs WHERE rule = ?1 AND status = ?2 AND created_at >= ?3";
        for sql in [listing.as_str(), counts] {
            let plan = plan(&conn, sql);
            assert!(plan.contains("runs_rule_status"), "{plan}");
            assert!(!plan.contains("SCAN runs"), "{plan}");
        }
    }

    #[test]
    fn a_rules_page_without_a_status_merges_every_status_newest_first() {
        let (_dir, conn) = super::super::schema::scratch_store();
        for (id, rule, status, at) in [
            ("a", "r", "succeeded", 1),
            ("b", "r", "failed", 2),
            ("c", "other", "succeeded", 3),
            ("d", "r", "pending", 4),
            ("e", "r", "succeeded", 4),
            ("f", "r", "skipped", 5),
        ] {
            conn.execute(
                "INSERT INTO runs (id, rule, event_id, event_type, status, attempt,
                                   created_at, updated_at)
                 VALUES (?1, ?2, 'e', 'x.y', ?3, 1, ?4, ?4)",
                params![id, rule, status, at],
            )
            .unwrap();
        }
        let query = RunQuery {
            rule: Some("r".into()),
            limit: 3,
            ..RunQuery::default()
        };
        let page = read(runs_page(&conn, &query));
        let ids: Vec<&str> = page.runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["f", "e", "d"]);
        let next = RunQuery {
            before: page.next.clone(),
            ..query
        };
        let page = read(runs_page(&conn, &next));
        let ids: Vec<&str> = page.runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["b", "a"]);
        let activity = read(rule_activity(&conn, "r", from_nanos(2), 2));
        let ids: Vec<&str> = activity.recent.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["f", "e"]);
        assert_eq!(activity.counts.get("succeeded"), Some(&1));
        assert_eq!(activity.counts.get("failed"), Some(&1));
        assert_eq!(activity.counts.get("pending"), Some(&1));
        assert_eq!(activity.counts.get("skipped"), Some(&1));
        assert_eq!(activity.counts.len(), 4);
    }
}
