//! Reading the PostgreSQL journal: run history a page at a time (the same
//! pages, cursors and shapes as the SQLite store's `pages.rs`), whole runs,
//! events, rule state, and the runs this node may take.
//!
//! Every page is one walk down an index from a cursor, as in SQLite: the
//! indexes on `(created_at, id)`, optionally led by the rule and status,
//! answer `ORDER BY created_at DESC, id DESC` from a row comparison.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::Db;
use super::schema::UNFINISHED;
use super::writes::CLAIMABLE;
use crate::effects::gateway::{EffectRecord, EffectStart, LogLine};
use crate::engine::journal::{JournalError, RunRecord, RunStatus};
use crate::journal::codec::{from_json, from_nanos, parse_status, to_nanos};
use crate::journal::history::{
    RuleActivity, RunCursor, RunPage, RunQuery, RunTrace, TraceLog, TraceQuery, paged_trace,
};
use crate::journal::query::{RunDetail, RunSummary, StoreCounts, StoredEvent, open_result};
use crate::journal::seal::SealKey;

/// The columns [`run_row`] reads.
pub(crate) const RUN_COLUMNS: &str = "id, rule, event_id, event_type, key, status, attempt, \
                                      error, output, created_at, started_at, finished_at";

const SUMMARY_COLUMNS: &str = "id, rule, event_id, event_type, key, status, attempt, error, \
                               created_at, started_at, finished_at";

type Params = Vec<Box<dyn ToSql + Sync + Send>>;

fn as_params(values: &Params) -> Vec<&(dyn ToSql + Sync)> {
    values
        .iter()
        .map(|v| v.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// One page of runs, newest first.
pub(crate) async fn runs_page(db: &Db, query: &RunQuery) -> Result<RunPage, JournalError> {
    let client = db.client().await?;
    let limit = query.page_size();
    let mut statuses = query.statuses.clone();
    statuses.sort_by_key(|s| s.as_str());
    statuses.dedup();
    let runs = if statuses.is_empty() {
        runs_in(db, &client, query, None, limit + 1).await?
    } else {
        let mut merged = Vec::new();
        for status in statuses {
            merged.extend(runs_in(db, &client, query, Some(status), limit + 1).await?);
        }
        merged.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        merged.truncate(limit + 1);
        merged
    };
    Ok(RunPage::from_ordered(runs, limit))
}

/// Up to `fetch` runs passing the query's filters and `status`, newest first.
async fn runs_in(
    db: &Db,
    client: &impl GenericClient,
    query: &RunQuery,
    status: Option<RunStatus>,
    fetch: usize,
) -> Result<Vec<RunSummary>, JournalError> {
    let mut conditions = Vec::new();
    let mut values: Params = Vec::new();
    if let Some(rule) = &query.rule {
        values.push(Box::new(rule.clone()));
        conditions.push(format!("rule = ${}", values.len()));
    }
    if let Some(status) = status {
        values.push(Box::new(status.as_str()));
        conditions.push(format!("status = ${}", values.len()));
    }
    if let Some(RunCursor { created_at, id }) = &query.before {
        values.push(Box::new(*created_at));
        values.push(Box::new(id.clone()));
        let (at, id) = (values.len() - 1, values.len());
        conditions.push(format!("(created_at, id) < (${at}, ${id})"));
    }
    values.push(Box::new(i64::try_from(fetch).unwrap_or(i64::MAX)));
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM zoomwire.runs {filter}
         ORDER BY created_at DESC, id DESC LIMIT ${}",
        values.len()
    );
    let statement = client.prepare_cached(&sql).await.map_err(|e| db.error(e))?;
    let rows = client
        .query(&statement, &as_params(&values))
        .await
        .map_err(|e| db.error(e))?;
    rows.iter().map(summary_row).collect()
}

/// One run with a page of its effects and log lines, `None` when unknown.
pub(crate) async fn run_trace(
    db: &Db,
    id: &str,
    query: &TraceQuery,
) -> Result<Option<RunTrace>, JournalError> {
    let client = db.client().await?;
    let sql = format!("SELECT {SUMMARY_COLUMNS}, output FROM zoomwire.runs WHERE id = $1");
    let Some(row) = client
        .query_opt(&sql, &[&id])
        .await
        .map_err(|e| db.error(e))?
    else {
        return Ok(None);
    };
    let summary = summary_row(&row)?;
    let output: Option<String> = row.get("output");
    let output = output.map(|o| from_json(&o, "runs.output")).transpose()?;
    let limit = query.page_size();
    let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
    let after_seq = i32::try_from(query.effects_after.unwrap_or(0)).unwrap_or(i32::MAX);
    let effects = client
        .query(
            "SELECT seq, name, args, result, started_at, latency_ms, replayed, in_doubt
             FROM zoomwire.effects WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            &[&id, &after_seq, &fetch],
        )
        .await
        .map_err(|e| db.error(e))?
        .iter()
        .map(effect_row)
        .collect::<Result<Vec<_>, _>>()?;
    let (attempt, idx) = query
        .logs_after
        .map_or((0, -1), |c| (int(c.attempt), int(c.idx)));
    let logs = client
        .query(
            "SELECT attempt, idx, level, message, at FROM zoomwire.logs
             WHERE run_id = $1 AND (attempt, idx) > ($2, $3) ORDER BY attempt, idx LIMIT $4",
            &[&id, &attempt, &idx, &fetch],
        )
        .await
        .map_err(|e| db.error(e))?
        .iter()
        .map(|row| TraceLog {
            attempt: unsigned(row.get::<_, i32>(0)),
            idx: unsigned(row.get::<_, i32>(1)),
            line: LogLine {
                level: row.get(2),
                message: row.get(3),
                at: from_nanos(row.get(4)),
            },
        })
        .collect();
    let event = stored_event(db, &client, &summary.event_id)
        .await?
        .as_ref()
        .map(StoredEvent::summary)
        .transpose()?;
    let totals = client
        .query_one(
            "SELECT (SELECT count(*) FROM zoomwire.effects WHERE run_id = $1),
                    (SELECT count(*) FROM zoomwire.logs WHERE run_id = $1)",
            &[&id],
        )
        .await
        .map_err(|e| db.error(e))?;
    Ok(Some(
        paged_trace(summary, output, event, effects, logs, limit)
            .with_totals(count(totals.get(0)), count(totals.get(1))),
    ))
}

/// A rule's latest `recent` runs, and its runs created since `since` by status.
pub(crate) async fn rule_activity(
    db: &Db,
    rule: &str,
    since: chrono::DateTime<chrono::Utc>,
    recent: usize,
) -> Result<RuleActivity, JournalError> {
    let client = db.client().await?;
    let rows = client
        .query(
            "SELECT status, count(*) FROM zoomwire.runs
             WHERE rule = $1 AND created_at >= $2 GROUP BY status",
            &[&rule, &to_nanos(since)],
        )
        .await
        .map_err(|e| db.error(e))?;
    let mut activity = RuleActivity::default();
    for row in rows {
        let status: String = row.get(0);
        activity
            .counts
            .insert(parse_status(&status)?.as_str(), count(row.get(1)));
    }
    let query = RunQuery {
        rule: Some(rule.to_string()),
        limit: recent,
        ..RunQuery::default()
    };
    activity.recent = runs_in(db, &client, &query, None, recent).await?;
    Ok(activity)
}

/// One run with all its effects, logs and its (redacted) event.
pub(crate) async fn get_run(db: &Db, id: &str) -> Result<Option<RunDetail>, JournalError> {
    let client = db.client().await?;
    let sql = format!("SELECT {RUN_COLUMNS} FROM zoomwire.runs WHERE id = $1");
    let Some(row) = client
        .query_opt(&sql, &[&id])
        .await
        .map_err(|e| db.error(e))?
    else {
        return Ok(None);
    };
    let mut runs = vec![run_row(&row)?];
    fill_runs(db, &client, &mut runs, None).await?;
    let run = runs.remove(0);
    let event = stored_event(db, &client, &run.event_id)
        .await?
        .as_ref()
        .map(StoredEvent::summary)
        .transpose()?;
    Ok(Some(RunDetail { run, event }))
}

/// Adds each run's effects (one per position) and logs (all attempts, in
/// order); with `seal`, each effect's unredacted result too (for replay).
pub(crate) async fn fill_runs(
    db: &Db,
    client: &impl GenericClient,
    runs: &mut [RunRecord],
    seal: Option<&SealKey>,
) -> Result<(), JournalError> {
    if runs.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
    let mut effects: HashMap<String, Vec<EffectRecord>> = HashMap::new();
    for row in client
        .query(
            "SELECT seq, name, args, result, started_at, latency_ms, replayed, in_doubt,
                    sealed_result, run_id
             FROM zoomwire.effects WHERE run_id = ANY($1) ORDER BY run_id, seq",
            &[&ids],
        )
        .await
        .map_err(|e| db.error(e))?
    {
        let run_id: String = row.get("run_id");
        let mut effect = effect_row(&row)?;
        if let Some(seal) = seal {
            let sealed: Option<Vec<u8>> = row.get("sealed_result");
            effect.unredacted =
                sealed.and_then(|sealed| open_result(seal, &run_id, &effect, &sealed));
        }
        effects.entry(run_id).or_default().push(effect);
    }
    let mut logs: HashMap<String, Vec<LogLine>> = HashMap::new();
    for row in client
        .query(
            "SELECT run_id, level, message, at FROM zoomwire.logs
             WHERE run_id = ANY($1) ORDER BY run_id, attempt, idx",
            &[&ids],
        )
        .await
        .map_err(|e| db.error(e))?
    {
        logs.entry(row.get(0)).or_default().push(LogLine {
            level: row.get(1),
            message: row.get(2),
            at: from_nanos(row.get(3)),
        });
    }
    for run in runs {
        run.effects = effects.remove(&run.id).unwrap_or_default();
        run.logs = logs.remove(&run.id).unwrap_or_default();
    }
    Ok(())
}

const EVENT_COLUMNS: &str = "id, type, ts, source, received_at, raw, sealed_token";

/// Each run's effects written as started and never as done (in doubt when
/// the run resumes), by run.
pub(crate) async fn effect_starts(
    db: &Db,
    client: &impl GenericClient,
    ids: &[&str],
) -> Result<HashMap<String, Vec<EffectStart>>, JournalError> {
    let rows = client
        .query(
            "SELECT run_id, seq, name, args, started_at FROM zoomwire.effect_starts
             WHERE run_id = ANY($1) ORDER BY run_id, seq",
            &[&ids],
        )
        .await
        .map_err(|e| db.error(e))?;
    let mut starts: HashMap<String, Vec<EffectStart>> = HashMap::new();
    for row in rows {
        starts.entry(row.get(0)).or_default().push(EffectStart {
            seq: unsigned(row.get(1)),
            name: row.get(2),
            args: from_json(row.get(3), "effect_starts.args")?,
            started_at: from_nanos(row.get(4)),
        });
    }
    Ok(starts)
}

/// The stored event with this id, if it has not been pruned.
pub(crate) async fn stored_event(
    db: &Db,
    client: &impl GenericClient,
    id: &str,
) -> Result<Option<StoredEvent>, JournalError> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM zoomwire.events WHERE id = $1");
    let row = client
        .query_opt(&sql, &[&id])
        .await
        .map_err(|e| db.error(e))?;
    Ok(row.as_ref().map(event_row))
}

/// The stored events with these ids, by id.
pub(crate) async fn stored_events(
    db: &Db,
    client: &impl GenericClient,
    ids: &[&str],
) -> Result<HashMap<String, StoredEvent>, JournalError> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM zoomwire.events WHERE id = ANY($1)");
    let rows = client.query(&sql, &[&ids]).await.map_err(|e| db.error(e))?;
    Ok(rows
        .iter()
        .map(event_row)
        .map(|event| (event.id.clone(), event))
        .collect())
}

/// Whether an event with this id would be dropped as a duplicate at `now`.
pub(crate) async fn is_duplicate(db: &Db, id: &str, now: i64) -> Result<bool, JournalError> {
    let client = db.client().await?;
    let row = client
        .query_opt(
            "SELECT 1 FROM zoomwire.dedupe WHERE id = $1 AND expires_at > $2",
            &[&id, &now],
        )
        .await
        .map_err(|e| db.error(e))?;
    Ok(row.is_some())
}

/// A rule's state value, unless it has expired.
pub(crate) async fn state_value(
    db: &Db,
    rule: &str,
    key: &str,
    now: i64,
) -> Result<Option<Value>, JournalError> {
    let client = db.client().await?;
    let row = client
        .query_opt(
            "SELECT value FROM zoomwire.state WHERE rule = $1 AND key = $2
                 AND (expires_at IS NULL OR expires_at > $3)",
            &[&rule, &key, &now],
        )
        .await
        .map_err(|e| db.error(e))?;
    row.map(|row| from_json(row.get::<_, &str>(0), "state.value"))
        .transpose()
}

/// Rows held per table.
pub(crate) async fn counts(db: &Db) -> Result<StoreCounts, JournalError> {
    let client = db.client().await?;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM zoomwire.events), (SELECT count(*) FROM zoomwire.dedupe),
                    (SELECT count(*) FROM zoomwire.runs), (SELECT count(*) FROM zoomwire.effects),
                    (SELECT count(*) FROM zoomwire.logs), (SELECT count(*) FROM zoomwire.state)",
            &[],
        )
        .await
        .map_err(|e| db.error(e))?;
    Ok(StoreCounts {
        events: count(row.get(0)),
        dedupe: count(row.get(1)),
        runs: count(row.get(2)),
        effects: count(row.get(3)),
        logs: count(row.get(4)),
        state: count(row.get(5)),
    })
}

/// The bytes of the journal's tables in the schema `zoomwire`, with their
/// indexes and TOAST.
pub(crate) async fn store_size(db: &Db) -> Result<u64, JournalError> {
    let client = db.client().await?;
    let row = client
        .query_one(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'zoomwire' AND c.relkind = 'r'",
            &[],
        )
        .await
        .map_err(|e| db.error(e))?;
    Ok(count(row.get(0)))
}

/// The ids of the unfinished runs this node may take (see `writes::CLAIMABLE`).
pub(crate) async fn claimable_ids(db: &Db) -> Result<Vec<String>, JournalError> {
    let client = db.client().await?;
    let sql = format!("SELECT r.id FROM zoomwire.runs r WHERE {UNFINISHED} AND {CLAIMABLE}");
    let rows = client
        .query(&sql, &[&&*db.node, &db.node_timeout_secs()])
        .await
        .map_err(|e| db.error(e))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// A row of [`RUN_COLUMNS`], read by name.
pub(crate) fn run_row(row: &Row) -> Result<RunRecord, JournalError> {
    let status: String = row.get("status");
    let output: Option<String> = row.get("output");
    Ok(RunRecord {
        id: row.get("id"),
        rule: row.get("rule"),
        event_id: row.get("event_id"),
        event_type: row.get("event_type"),
        key: row.get("key"),
        status: parse_status(&status)?,
        attempt: unsigned(row.get("attempt")),
        error: row.get("error"),
        effects: Vec::new(),
        logs: Vec::new(),
        output: output.map(|o| from_json(&o, "runs.output")).transpose()?,
        created_at: from_nanos(row.get("created_at")),
        started_at: row.get::<_, Option<i64>>("started_at").map(from_nanos),
        finished_at: row.get::<_, Option<i64>>("finished_at").map(from_nanos),
    })
}

fn summary_row(row: &Row) -> Result<RunSummary, JournalError> {
    let status: String = row.get("status");
    Ok(RunSummary {
        id: row.get("id"),
        rule: row.get("rule"),
        event_id: row.get("event_id"),
        event_type: row.get("event_type"),
        key: row.get("key"),
        status: parse_status(&status)?,
        attempt: unsigned(row.get("attempt")),
        error: row.get("error"),
        created_at: from_nanos(row.get("created_at")),
        started_at: row.get::<_, Option<i64>>("started_at").map(from_nanos),
        finished_at: row.get::<_, Option<i64>>("finished_at").map(from_nanos),
    })
}

fn effect_row(row: &Row) -> Result<EffectRecord, JournalError> {
    Ok(EffectRecord {
        seq: unsigned(row.get("seq")),
        name: row.get("name"),
        args: from_json(row.get("args"), "effects.args")?,
        result: from_json(row.get("result"), "effects.result")?,
        started_at: from_nanos(row.get("started_at")),
        latency_ms: row.get("latency_ms"),
        replayed: row.get("replayed"),
        in_doubt: row.get("in_doubt"),
        unredacted: None,
    })
}

fn event_row(row: &Row) -> StoredEvent {
    StoredEvent {
        id: row.get("id"),
        event_type: row.get("type"),
        ts: row.get("ts"),
        source: row.get("source"),
        received_at: row.get("received_at"),
        raw: row.get("raw"),
        sealed_token: row.get("sealed_token"),
    }
}

fn unsigned(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

fn int(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
