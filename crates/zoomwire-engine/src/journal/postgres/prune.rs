//! Pruning the PostgreSQL journal: the same rules as the SQLite store's
//! `prune.rs` (finished runs and events past their age or beyond the row
//! budget, expired dedupe entries and rule state; never an unfinished run
//! or the event it needs), a chunk per statement so that no delete holds
//! locks for long. Several nodes may prune at once: rows another node is
//! deleting are skipped.

use super::Db;
use super::schema::UNFINISHED;
use crate::engine::journal::JournalError;
use crate::journal::PruneReport;

/// Rows deleted per statement.
const CHUNK: i64 = 500;

/// Finished runs and events received before `cutoff` (nanoseconds) go,
/// then the oldest beyond the budgets.
pub(crate) async fn prune(
    db: &Db,
    now: i64,
    cutoff: i64,
    max_runs: u64,
    max_events: u64,
) -> Result<PruneReport, JournalError> {
    let not_needed = format!(
        "NOT EXISTS (SELECT 1 FROM zoomwire.runs WHERE runs.event_id = events.id AND {UNFINISHED})"
    );
    let dedupe = repeat(
        db,
        &format!(
            "DELETE FROM zoomwire.dedupe WHERE id IN (SELECT id FROM zoomwire.dedupe
             WHERE expires_at <= {now} LIMIT {CHUNK} FOR UPDATE SKIP LOCKED)"
        ),
    )
    .await?;
    let state = repeat(
        db,
        &format!(
            "DELETE FROM zoomwire.state WHERE (rule, key) IN (SELECT rule, key FROM zoomwire.state
             WHERE expires_at <= {now} LIMIT {CHUNK} FOR UPDATE SKIP LOCKED)"
        ),
    )
    .await?;
    let old_runs = repeat(
        db,
        &delete_runs(&format!(
            "SELECT id FROM zoomwire.runs WHERE created_at < {cutoff} AND NOT {UNFINISHED}
         ORDER BY created_at LIMIT {CHUNK} FOR UPDATE SKIP LOCKED"
        )),
    )
    .await?;
    let excess_runs = excess(db, "runs", max_runs).await?;
    let extra_runs = if excess_runs > 0 {
        repeat_up_to(db, excess_runs, |chunk| {
            delete_runs(&format!(
                "SELECT id FROM zoomwire.runs WHERE NOT {UNFINISHED}
             ORDER BY created_at LIMIT {chunk} FOR UPDATE SKIP LOCKED"
            ))
        })
        .await?
    } else {
        0
    };
    let old_events = repeat(
        db,
        &format!(
            "DELETE FROM zoomwire.events WHERE id IN (SELECT id FROM zoomwire.events
             WHERE received_at < {cutoff} AND {not_needed}
             ORDER BY received_at LIMIT {CHUNK} FOR UPDATE SKIP LOCKED)"
        ),
    )
    .await?;
    let excess_events = excess(db, "events", max_events).await?;
    let extra_events = if excess_events > 0 {
        repeat_up_to(db, excess_events, |chunk| {
            format!(
                "DELETE FROM zoomwire.events WHERE id IN (SELECT id FROM zoomwire.events
                 WHERE {not_needed} ORDER BY received_at LIMIT {chunk} FOR UPDATE SKIP LOCKED)"
            )
        })
        .await?
    } else {
        0
    };
    let report = PruneReport {
        runs: old_runs + extra_runs,
        events: old_events + extra_events,
        dedupe,
        state,
    };
    for (table, count) in [
        ("runs", report.runs),
        ("events", report.events),
        ("dedupe", report.dedupe),
        ("state", report.state),
    ] {
        metrics::counter!("zoomwire_journal_pruned_total", "table" => table).increment(count);
    }
    Ok(report)
}

/// Deletes the runs `select` picks, with their effects and logs; answers
/// how many runs.
fn delete_runs(select: &str) -> String {
    format!(
        "WITH gone AS (DELETE FROM zoomwire.runs WHERE id IN ({select}) RETURNING id),
              effects AS (DELETE FROM zoomwire.effects WHERE run_id IN (SELECT id FROM gone)),
              logs AS (DELETE FROM zoomwire.logs WHERE run_id IN (SELECT id FROM gone))
         SELECT count(*) FROM gone"
    )
}

/// Runs a chunked delete until it deletes less than a chunk.
async fn repeat(db: &Db, sql: &str) -> Result<u64, JournalError> {
    let mut total = 0;
    loop {
        let deleted = run_chunk(db, sql).await?;
        total += deleted;
        if deleted < CHUNK as u64 {
            return Ok(total);
        }
    }
}

/// Runs chunked deletes of at most `excess` rows in all.
async fn repeat_up_to(
    db: &Db,
    excess: u64,
    sql: impl Fn(u64) -> String,
) -> Result<u64, JournalError> {
    let mut total = 0;
    while total < excess {
        let chunk = (excess - total).min(CHUNK as u64);
        let deleted = run_chunk(db, &sql(chunk)).await?;
        total += deleted;
        if deleted < chunk {
            break;
        }
    }
    Ok(total)
}

/// One statement: a `DELETE` (its row count) or a `SELECT count(*)` of what it deleted.
async fn run_chunk(db: &Db, sql: &str) -> Result<u64, JournalError> {
    let client = db.client().await?;
    if sql.trim_start().starts_with("WITH") {
        let deleted: i64 = client
            .query_one(sql, &[])
            .await
            .map_err(|e| db.error(e))?
            .get(0);
        Ok(u64::try_from(deleted).unwrap_or(0))
    } else {
        client.execute(sql, &[]).await.map_err(|e| db.error(e))
    }
}

/// How many rows `table` holds beyond `budget`.
async fn excess(db: &Db, table: &str, budget: u64) -> Result<u64, JournalError> {
    let client = db.client().await?;
    let count: i64 = client
        .query_one(&format!("SELECT count(*) FROM zoomwire.{table}"), &[])
        .await
        .map_err(|e| db.error(e))?
        .get(0);
    Ok(u64::try_from(count).unwrap_or(0).saturating_sub(budget))
}
