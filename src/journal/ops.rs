//! The changes the writer makes, one function each, all inside the writer's
//! current transaction.
//!
//! Effects are kept one row per position (`seq`) in their run: a newly
//! performed effect replaces whatever an earlier attempt left at that
//! position, and a replayed copy never replaces the original. What is stored
//! for a run is therefore exactly the list a resumed attempt replays.

use std::sync::Arc;

use rusqlite::{OptionalExtension, Transaction, params};

use super::RequeueOutcome;
use super::codec::{parse_status, to_json, to_nanos};
use super::prune::{PruneStep, apply_prune_step};
use super::query::UNFINISHED;
use crate::effects::gateway::EffectRecord;
use crate::engine::record::{RunRecord, RunStatus};
use crate::event::Event;

/// An event as the writer stores it.
pub(crate) struct EventRow {
    pub id: String,
    pub event_type: String,
    pub ts: i64,
    /// The `Source` as JSON, so that it comes back exactly.
    pub source: String,
    pub received_at: i64,
    pub raw: Arc<str>,
}

impl EventRow {
    pub fn new(event: &Event) -> EventRow {
        EventRow {
            id: event.id.clone(),
            event_type: event.event_type.clone(),
            ts: event.ts,
            source: to_json(&event.source),
            received_at: to_nanos(event.received_at),
            raw: event.raw.clone(),
        }
    }
}

/// One change for the writer.
pub(crate) enum Op {
    Accept(EventRow),
    RecordRun(Box<RunRecord>),
    Effect {
        run_id: String,
        record: Box<EffectRecord>,
    },
    StateSet {
        rule: String,
        key: String,
        value: String,
        expires_at: Option<i64>,
    },
    Requeue {
        id: String,
    },
    /// Ends a run that cannot be resumed (its event is gone), so it is not lost silently.
    MarkDead {
        id: String,
        error: String,
    },
    Prune(PruneStep),
}

/// What a change did.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The event was new (`true`) or a duplicate within the window (`false`).
    Accepted(bool),
    Done,
    Requeued(RequeueOutcome),
    /// Rows deleted by a pruning step.
    Pruned(u64),
}

/// Applies one change at time `now` (nanoseconds).
pub(crate) fn apply(
    tx: &Transaction<'_>,
    op: &Op,
    now: i64,
    dedupe_window: i64,
) -> rusqlite::Result<Outcome> {
    match op {
        Op::Accept(event) => accept(tx, event, dedupe_window).map(Outcome::Accepted),
        Op::RecordRun(run) => record_run(tx, run, now).map(|()| Outcome::Done),
        Op::Effect { run_id, record } => {
            insert_effect(tx, run_id, None, record, now).map(|()| Outcome::Done)
        }
        Op::StateSet {
            rule,
            key,
            value,
            expires_at,
        } => set_state(tx, rule, key, value, *expires_at, now).map(|()| Outcome::Done),
        Op::Requeue { id } => requeue(tx, id, now).map(Outcome::Requeued),
        Op::MarkDead { id, error } => mark_dead(tx, id, error, now).map(|()| Outcome::Done),
        Op::Prune(step) => apply_prune_step(tx, step, now).map(Outcome::Pruned),
    }
}

/// Stores the event unless one with the same id was received within the window.
fn accept(tx: &Transaction<'_>, event: &EventRow, window: i64) -> rusqlite::Result<bool> {
    let previous: Option<i64> = tx
        .prepare_cached("SELECT received_at FROM dedupe WHERE id = ?1")?
        .query_row([&event.id], |row| row.get(0))
        .optional()?;
    if let Some(previous) = previous
        && previous.saturating_add(window) > event.received_at
    {
        return Ok(false);
    }
    tx.prepare_cached(
        "INSERT INTO dedupe (id, received_at, expires_at) VALUES (?1, ?2, ?3)
         ON CONFLICT(id) DO UPDATE SET received_at = excluded.received_at,
                                       expires_at = excluded.expires_at",
    )?
    .execute(params![
        event.id,
        event.received_at,
        event.received_at.saturating_add(window)
    ])?;
    tx.prepare_cached(
        "INSERT INTO events (id, type, ts, source, received_at, raw)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(id) DO UPDATE SET type = excluded.type, ts = excluded.ts,
             source = excluded.source, received_at = excluded.received_at, raw = excluded.raw",
    )?
    .execute(params![
        event.id,
        event.event_type,
        event.ts,
        event.source,
        event.received_at,
        &*event.raw
    ])?;
    Ok(true)
}

/// Inserts or updates the run, its effects and the logs of its current attempt.
fn record_run(tx: &Transaction<'_>, run: &RunRecord, now: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO runs (id, rule, event_id, event_type, key, status, attempt, error, output,
                           created_at, started_at, finished_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT(id) DO UPDATE SET rule = excluded.rule, event_id = excluded.event_id,
             event_type = excluded.event_type, key = excluded.key, status = excluded.status,
             attempt = excluded.attempt, error = excluded.error, output = excluded.output,
             started_at = excluded.started_at, finished_at = excluded.finished_at,
             updated_at = excluded.updated_at",
    )?
    .execute(params![
        run.id,
        run.rule,
        run.event_id,
        run.event_type,
        run.key,
        run.status.as_str(),
        run.attempt,
        run.error,
        run.output.as_ref().map(to_json),
        to_nanos(run.created_at),
        run.started_at.map(to_nanos),
        run.finished_at.map(to_nanos),
        now,
    ])?;
    for record in &run.effects {
        insert_effect(tx, &run.id, Some(run.attempt), record, now)?;
    }
    if !run.logs.is_empty() {
        replace_logs(tx, run)?;
    }
    Ok(())
}

/// Stores an effect at its position; `attempt` defaults to the run's current one.
fn insert_effect(
    tx: &Transaction<'_>,
    run_id: &str,
    attempt: Option<u32>,
    record: &EffectRecord,
    now: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO effects (run_id, seq, attempt, name, args, ok, result, started_at,
                              latency_ms, replayed, recorded_at)
         VALUES (?1, ?2, COALESCE(?3, (SELECT attempt FROM runs WHERE id = ?1), 1),
                 ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT(run_id, seq) DO UPDATE SET attempt = excluded.attempt,
             name = excluded.name, args = excluded.args, ok = excluded.ok,
             result = excluded.result, started_at = excluded.started_at,
             latency_ms = excluded.latency_ms, replayed = excluded.replayed,
             recorded_at = excluded.recorded_at
         WHERE excluded.replayed = 0",
    )?
    .execute(params![
        run_id,
        record.seq,
        attempt,
        record.name,
        to_json(&record.args),
        record.result.is_ok(),
        to_json(&record.result),
        to_nanos(record.started_at),
        record.latency_ms,
        record.replayed,
        now,
    ])?;
    Ok(())
}

fn replace_logs(tx: &Transaction<'_>, run: &RunRecord) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM logs WHERE run_id = ?1 AND attempt = ?2")?
        .execute(params![run.id, run.attempt])?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO logs (run_id, attempt, idx, level, message, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (idx, line) in run.logs.iter().enumerate() {
        insert.execute(params![
            run.id,
            run.attempt,
            idx as i64,
            line.level,
            line.message,
            to_nanos(line.at)
        ])?;
    }
    Ok(())
}

fn set_state(
    tx: &Transaction<'_>,
    rule: &str,
    key: &str,
    value: &str,
    expires_at: Option<i64>,
    now: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO state (rule, key, value, expires_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(rule, key) DO UPDATE SET value = excluded.value,
             expires_at = excluded.expires_at, updated_at = excluded.updated_at",
    )?
    .execute(params![rule, key, value, expires_at, now])?;
    Ok(())
}

/// Puts a failed or dead run back to pending as a fresh first attempt,
/// keeping its effects so that completed ones are replayed.
fn requeue(tx: &Transaction<'_>, id: &str, now: i64) -> rusqlite::Result<RequeueOutcome> {
    let found: Option<(String, bool, bool)> = tx
        .prepare_cached(
            "SELECT status, finished_at IS NOT NULL,
                    EXISTS (SELECT 1 FROM events e WHERE e.id = runs.event_id)
             FROM runs WHERE id = ?1",
        )?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .optional()?;
    let Some((status, finished, has_event)) = found else {
        return Ok(RequeueOutcome::NotFound);
    };
    if !finished {
        // Pending, running, or failed and waiting for its next attempt.
        return Ok(RequeueOutcome::NotFinished);
    }
    if !matches!(status.as_str(), "failed" | "dead") {
        // A status this build does not know is not one it may retry either.
        let status = parse_status(&status).unwrap_or(RunStatus::Skipped);
        return Ok(RequeueOutcome::NotFailed(status));
    }
    if !has_event {
        return Ok(RequeueOutcome::EventPruned);
    }
    tx.prepare_cached(
        "UPDATE runs SET status = 'pending', attempt = 1, error = NULL, started_at = NULL,
                         finished_at = NULL, updated_at = ?2
         WHERE id = ?1",
    )?
    .execute(params![id, now])?;
    Ok(RequeueOutcome::Requeued)
}

fn mark_dead(tx: &Transaction<'_>, id: &str, error: &str, now: i64) -> rusqlite::Result<()> {
    let sql = format!(
        "UPDATE runs SET status = 'dead', error = ?2, finished_at = ?3, updated_at = ?3
         WHERE id = ?1 AND {UNFINISHED}"
    );
    tx.prepare_cached(&sql)?.execute(params![id, error, now])?;
    Ok(())
}
