//! The changes the writer makes, one function each, all inside the writer's
//! current transaction.
//!
//! Effects are kept one row per position (`seq`) in their run: a newly
//! performed effect replaces whatever an earlier attempt left at that
//! position, and a replayed copy never replaces the original. What is stored
//! for a run is therefore exactly the list a resumed attempt replays. An
//! effect's unredacted result (kept only when redaction changed it) and an
//! event's download token are sealed here, on the writer's thread (both are
//! rare), into columns nothing shows.

use std::cell::Cell;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use secrecy::{ExposeSecret, SecretString};

use super::RequeueOutcome;
use super::codec::{event_id_hash, parse_status, to_json, to_nanos};
use super::event_index::IndexWriter;
use super::prune::{PruneStep, apply_prune_step};
use super::query::UNFINISHED;
use super::seal::{SealKey, effect_context, event_context};
use super::statements::Statements;
use crate::effects::gateway::{EffectRecord, EffectStart};
use crate::engine::journal::{RunRecord, RunStatus};
use crate::event::{Event, Source};

/// An event as the writer stores it.
pub(crate) struct EventRow {
    pub id: String,
    pub event_type: String,
    pub ts: i64,
    /// The `Source` as JSON, so that it comes back exactly (shared by the
    /// rows of a batch from one source: [`EventRow::batch`]).
    pub source: Arc<str>,
    pub received_at: i64,
    /// The body, without its download token.
    pub raw: Arc<str>,
    /// Sealed into its own column.
    pub download_token: Option<Arc<SecretString>>,
}

impl EventRow {
    pub fn new(event: &Event) -> EventRow {
        EventRow::with_source(event, Arc::from(to_json(&event.source)))
    }

    /// The rows of a batch of events, in order. The source's JSON is made
    /// once for each run of events from the same source (an intake batch
    /// is from one subscription): serializing it was 1.3k instructions an
    /// event.
    pub fn batch<'e>(events: impl IntoIterator<Item = &'e Event>) -> Vec<EventRow> {
        let mut last: Option<(&Source, Arc<str>)> = None;
        events
            .into_iter()
            .map(|event| {
                let source = match &last {
                    Some((source, json)) if **source == event.source => json.clone(),
                    _ => {
                        let json: Arc<str> = Arc::from(to_json(&event.source));
                        last = Some((&event.source, json.clone()));
                        json
                    }
                };
                EventRow::with_source(event, source)
            })
            .collect()
    }

    fn with_source(event: &Event, source: Arc<str>) -> EventRow {
        EventRow {
            id: event.id.clone(),
            event_type: event.event_type.clone(),
            ts: event.ts,
            source,
            received_at: to_nanos(event.received_at),
            raw: event.raw.clone(),
            download_token: event.download_token().cloned(),
        }
    }
}

/// What the writer needs besides the transaction.
pub(crate) struct Apply<'a> {
    /// The transaction's statements; dropped before it commits.
    pub statements: Statements<'a>,
    /// Time of the change, nanoseconds.
    pub now: i64,
    pub dedupe_window: i64,
    pub seal: &'a SealKey,
    /// Rowids for new events, and finding stored ones by id.
    pub events: &'a IndexWriter,
    /// Whether `dedupe` holds any id, once asked in this transaction
    /// ([`holds_pruned_ids`]); `None` again after a step pruning events.
    pruned_ids: Cell<Option<bool>>,
}

impl<'a> Apply<'a> {
    pub fn new(
        tx: &'a Connection,
        now: i64,
        dedupe_window: i64,
        seal: &'a SealKey,
        events: &'a IndexWriter,
    ) -> Self {
        Apply {
            statements: Statements::new(tx),
            now,
            dedupe_window,
            seal,
            events,
            pruned_ids: Cell::new(None),
        }
    }
}

/// One change for the writer.
pub(crate) enum Op {
    /// An event and the records of the runs it starts: written together, or
    /// (a duplicate) neither.
    Accept {
        event: EventRow,
        runs: Vec<RunRecord>,
    },
    RecordRun(Box<RunRecord>),
    /// A run record whose effects each went through [`Op::Effect`] as they
    /// completed (the executor's own records of a run): its row and logs
    /// only, without writing those effects again.
    RecordObservedRun(Box<RunRecord>),
    Effect {
        run_id: String,
        record: Box<EffectRecord>,
    },
    /// An effect about to be performed (see `effect_starts` in the schema).
    EffectStart {
        run_id: String,
        start: Box<EffectStart>,
    },
    StateSet {
        rule: String,
        key: String,
        value: String,
        expires_at: Option<i64>,
        /// A new key is refused when the rule holds this many live ones.
        max_keys: usize,
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
    /// A new state key refused: the rule holds as many as it may.
    StateFull,
    /// Rows deleted by a pruning step.
    Pruned(u64),
}

/// Applies one change.
pub(crate) fn apply(tx: &Transaction<'_>, op: &Op, at: &Apply<'_>) -> rusqlite::Result<Outcome> {
    let now = at.now;
    match op {
        Op::Accept { event, runs } => {
            let fresh = accept(tx, event, at)?;
            if fresh {
                for run in runs {
                    record_run(run, at, true)?;
                    insert_effects(run, at)?;
                }
            }
            Ok(Outcome::Accepted(fresh))
        }
        Op::RecordRun(run) => {
            record_run(run, at, false)?;
            insert_effects(run, at).map(|()| Outcome::Done)
        }
        Op::RecordObservedRun(run) => {
            record_run(run, at, false)?;
            if run.status.is_finished() {
                replace_marks_left(run, at)?;
            }
            Ok(Outcome::Done)
        }
        Op::Effect { run_id, record } => {
            insert_effect(run_id, None, record, at).map(|()| Outcome::Done)
        }
        Op::EffectStart { run_id, start } => {
            insert_start(run_id, start, at).map(|()| Outcome::Done)
        }
        Op::StateSet {
            rule,
            key,
            value,
            expires_at,
            max_keys,
        } => {
            let entry = StateEntry {
                rule,
                key,
                value,
                expires_at: *expires_at,
            };
            set_state(tx, &entry, *max_keys, now)
        }
        Op::Requeue { id } => requeue(tx, id, at).map(Outcome::Requeued),
        Op::MarkDead { id, error } => mark_dead(tx, id, error, now).map(|()| Outcome::Done),
        Op::Prune(step) => {
            if matches!(
                step,
                PruneStep::EventsOlderThan(_) | PruneStep::OldestEvents(_)
            ) {
                at.events.flush(tx)?;
                // Pruning events may keep their ids in `dedupe`.
                at.pruned_ids.set(None);
            }
            apply_prune_step(tx, step, now, at.dedupe_window).map(Outcome::Pruned)
        }
    }
}

/// Stores the event unless one with the same id was received within the window.
///
/// The event's own row answers the check while it exists: it is found by
/// the hash of its id (`event_index.rs`), then
/// inserted, or replaced when its window has passed (inserted at the end and
/// the old row deleted: events are kept in receive order by rowid, which
/// pruning walks, `prune.rs`), or left as it was for a duplicate. Ids stay unique
/// because only this writer, inside its write transaction, inserts events.
/// Only an event pruned within its window leaves a `dedupe` row behind
/// (`prune.rs`), looked up first; that table is small, so the lookup reads
/// a page or two and writes none.
fn accept(tx: &Transaction<'_>, event: &EventRow, at: &Apply<'_>) -> rusqlite::Result<bool> {
    let window = at.dedupe_window;
    if !claim_pruned_id(tx, event, at)? {
        return Ok(false);
    }
    let stored: Option<(i64, i64)> = match at.events.find(&at.statements, &event.id)? {
        Some(rowid) => Some((
            rowid,
            at.statements
                .get("SELECT received_at FROM events WHERE rowid = ?1")?
                .query_row([rowid], |row| row.get(0))?,
        )),
        None => None,
    };
    let replaced = match stored {
        Some((_, seen)) if event.received_at.saturating_sub(seen) < window => return Ok(false),
        Some((rowid, _)) => Some(rowid),
        None => None,
    };
    let id_hash = event_id_hash(&event.id);
    let sealed_token = event.download_token.as_ref().and_then(|token| {
        at.seal
            .seal(&event_context(&event.id), token.expose_secret().as_bytes())
    });
    at.statements
        .get(
            "INSERT INTO events (id, id_hash, type, ts, source, received_at, raw, sealed_token)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            event.id,
            id_hash,
            event.event_type,
            event.ts,
            &*event.source,
            event.received_at,
            &*event.raw,
            sealed_token,
        ])?;
    at.events.inserted(id_hash, tx.last_insert_rowid());
    // Inserted again rather than updated in place, and before the old row
    // goes: the new row takes the next rowid, so that rowid order stays
    // receive order and no rowid is given twice (`event_index.rs`).
    if let Some(rowid) = replaced {
        tx.prepare_cached("DELETE FROM events WHERE rowid = ?1")?
            .execute([rowid])?;
        tx.prepare_cached("DELETE FROM event_index WHERE id_hash = ?1 AND event_rowid = ?2")?
            .execute([id_hash, rowid])?;
    }
    Ok(true)
}

/// Whether `dedupe` holds any id, asked once per transaction rather than
/// once per event: the table is nearly always empty (an event's own row is
/// its entry; only one pruned within its window leaves an id there), and
/// looking an id up in it took about 3,000 of the ~43,000 instructions the
/// writer spent per event in a burst when this was measured
/// (`writer_cost_harness`, 44 events a batch, under callgrind). Ids are
/// added only by pruning, in a transaction (this writer's, or another
/// process's before this one took the write lock), so the answer holds
/// until this transaction prunes.
fn holds_pruned_ids(tx: &Transaction<'_>, at: &Apply<'_>) -> rusqlite::Result<bool> {
    if let Some(known) = at.pruned_ids.get() {
        return Ok(known);
    }
    let any: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM dedupe)")?
        .query_row([], |row| row.get(0))?;
    at.pruned_ids.set(Some(any));
    Ok(any)
}

/// False when the id belongs to an event pruned within the window; an
/// entry whose window has passed is removed (the event row takes over).
fn claim_pruned_id(
    tx: &Transaction<'_>,
    event: &EventRow,
    at: &Apply<'_>,
) -> rusqlite::Result<bool> {
    if !holds_pruned_ids(tx, at)? {
        return Ok(true);
    }
    let window = at.dedupe_window;
    let seen: Option<i64> = tx
        .prepare_cached("SELECT received_at FROM dedupe WHERE id = ?1")?
        .query_row([&event.id], |row| row.get(0))
        .optional()?;
    let Some(seen) = seen else {
        return Ok(true);
    };
    if event.received_at.saturating_sub(seen) < window {
        return Ok(false);
    }
    tx.prepare_cached("DELETE FROM dedupe WHERE id = ?1")?
        .execute([&event.id])?;
    Ok(true)
}

/// Inserts or updates the run and the logs of its current attempt (its
/// effects: [`insert_effects`]).
///
/// A run's rule, event and key never change after its first record, so an
/// update leaves them alone: SQLite rewrites every index holding a column an
/// update sets, and setting them again would rewrite `runs_event` (and
/// `runs_rule_status` even when the status stays) on each of a run's
/// several records for nothing.
///
/// `new` says the run was never recorded (the records written with their
/// event): those are inserted straight away. A later record (running, an
/// outcome) is a plain `UPDATE` first, which costs one walk of the id index,
/// where the upsert first tries the insert, fails on the id, then updates.
fn record_run(run: &RunRecord, at: &Apply<'_>, new: bool) -> rusqlite::Result<()> {
    if new || !update_run(run, at)? {
        upsert_run(run, at)?;
    }
    if !run.logs.is_empty() {
        replace_logs(run, at)?;
    }
    Ok(())
}

/// Stores the effects a run record carries, each at its position.
fn insert_effects(run: &RunRecord, at: &Apply<'_>) -> rusqlite::Result<()> {
    for record in &run.effects {
        insert_effect(&run.id, Some(run.attempt), record, at)?;
    }
    Ok(())
}

/// Writes the records a finished run carries for effects still marked as
/// started: the effect's own record was not written (a full disk) though
/// the run's end is, and a mark left behind reads as an effect in doubt.
/// Usually there is none to find.
fn replace_marks_left(run: &RunRecord, at: &Apply<'_>) -> rusqlite::Result<()> {
    let marked: Vec<u32> = at
        .statements
        .get("SELECT seq FROM effect_starts WHERE run_id = ?1")?
        .query_map([&run.id], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for seq in marked {
        let Some(record) = run.effects.iter().find(|record| record.seq == seq) else {
            continue;
        };
        // As made: the attempt that made it may not be the last one.
        let made = EffectRecord {
            replayed: false,
            ..record.clone()
        };
        insert_effect(&run.id, Some(run.attempt), &made, at)?;
    }
    Ok(())
}

/// Updates the run's row where it exists; false when there is none.
fn update_run(run: &RunRecord, at: &Apply<'_>) -> rusqlite::Result<bool> {
    let changed = at
        .statements
        .get(
            "UPDATE runs SET status = ?2, attempt = ?3, error = ?4, output = ?5,
                 started_at = ?6, finished_at = ?7, updated_at = ?8
             WHERE id = ?1",
        )?
        .execute(params![
            run.id,
            run.status.as_str(),
            run.attempt,
            run.error,
            run.output.as_ref().map(to_json),
            run.started_at.map(to_nanos),
            run.finished_at.map(to_nanos),
            at.now,
        ])?;
    Ok(changed > 0)
}

/// Inserts the run's row, or updates it as [`update_run`] does.
fn upsert_run(run: &RunRecord, at: &Apply<'_>) -> rusqlite::Result<()> {
    at.statements
        .get(
            "INSERT INTO runs (id, rule, event_id, event_type, key, status, attempt, error, output,
                               created_at, started_at, finished_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             ON CONFLICT(id) DO UPDATE SET status = excluded.status, attempt = excluded.attempt,
                 error = excluded.error, output = excluded.output,
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
            at.now,
        ])?;
    Ok(())
}

/// Stores an effect at its position; `attempt` defaults to the run's current one.
/// The same record sent again (the executor re-sends an attempt's effects
/// with the next attempt's run record) keeps the attempt that performed it.
fn insert_effect(
    run_id: &str,
    attempt: Option<u32>,
    record: &EffectRecord,
    at: &Apply<'_>,
) -> rusqlite::Result<()> {
    // The record replaces the mark written when the effect started.
    at.statements
        .get("DELETE FROM effect_starts WHERE run_id = ?1 AND seq = ?2")?
        .execute(params![run_id, record.seq])?;
    let sealed_result = record.unredacted.as_ref().and_then(|value| {
        at.seal.seal(
            &effect_context(run_id, record.seq),
            to_json(value).as_bytes(),
        )
    });
    at.statements
        .get(
            "INSERT INTO effects (run_id, seq, attempt, name, args, ok, result, started_at,
                                  latency_ms, replayed, recorded_at, in_doubt, sealed_result)
             VALUES (?1, ?2, COALESCE(?3, (SELECT attempt FROM runs WHERE id = ?1), 1),
                     ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             ON CONFLICT(run_id, seq) DO UPDATE SET attempt = excluded.attempt,
                 name = excluded.name, args = excluded.args, ok = excluded.ok,
                 result = excluded.result, started_at = excluded.started_at,
                 latency_ms = excluded.latency_ms, replayed = excluded.replayed,
                 recorded_at = excluded.recorded_at, in_doubt = excluded.in_doubt,
                 sealed_result = excluded.sealed_result
             WHERE excluded.replayed = 0
               AND (effects.started_at != excluded.started_at OR effects.name != excluded.name
                    OR effects.args != excluded.args OR effects.result != excluded.result
                    OR effects.in_doubt != excluded.in_doubt)",
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
            at.now,
            record.in_doubt,
            sealed_result,
        ])?;
    Ok(())
}

/// Marks an effect as started (a performed-again effect marks its position again).
fn insert_start(run_id: &str, start: &EffectStart, at: &Apply<'_>) -> rusqlite::Result<()> {
    at.statements
        .get(
            "INSERT OR REPLACE INTO effect_starts (run_id, seq, name, args, started_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            run_id,
            start.seq,
            start.name,
            to_json(&start.args),
            to_nanos(start.started_at),
        ])?;
    Ok(())
}

fn replace_logs(run: &RunRecord, at: &Apply<'_>) -> rusqlite::Result<()> {
    at.statements
        .get("DELETE FROM logs WHERE run_id = ?1 AND attempt = ?2")?
        .execute(params![run.id, run.attempt])?;
    let mut insert = at.statements.get(
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

/// One rule state value to set.
struct StateEntry<'a> {
    rule: &'a str,
    key: &'a str,
    value: &'a str,
    expires_at: Option<i64>,
}

/// Sets a state value; a new key is refused once the rule holds `max_keys`
/// live ones (expired keys not yet pruned do not count).
fn set_state(
    tx: &Transaction<'_>,
    entry: &StateEntry<'_>,
    max_keys: usize,
    now: i64,
) -> rusqlite::Result<Outcome> {
    let exists = tx
        .prepare_cached("SELECT 1 FROM state WHERE rule = ?1 AND key = ?2")?
        .exists(params![entry.rule, entry.key])?;
    if !exists {
        let held: i64 = tx
            .prepare_cached(
                "SELECT count(*) FROM state WHERE rule = ?1
                     AND (expires_at IS NULL OR expires_at > ?2)",
            )?
            .query_row(params![entry.rule, now], |row| row.get(0))?;
        if usize::try_from(held).unwrap_or(usize::MAX) >= max_keys {
            return Ok(Outcome::StateFull);
        }
    }
    tx.prepare_cached(
        "INSERT INTO state (rule, key, value, expires_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(rule, key) DO UPDATE SET value = excluded.value,
             expires_at = excluded.expires_at, updated_at = excluded.updated_at",
    )?
    .execute(params![
        entry.rule,
        entry.key,
        entry.value,
        entry.expires_at,
        now
    ])?;
    Ok(Outcome::Done)
}

/// Puts a failed or dead run back to pending as a fresh first attempt,
/// keeping its effects so that completed ones are replayed.
fn requeue(tx: &Transaction<'_>, id: &str, at: &Apply<'_>) -> rusqlite::Result<RequeueOutcome> {
    let now = at.now;
    let found: Option<(String, bool, String)> = tx
        .prepare_cached("SELECT status, finished_at IS NOT NULL, event_id FROM runs WHERE id = ?1")?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .optional()?;
    let Some((status, finished, event_id)) = found else {
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
    if at.events.find(&at.statements, &event_id)?.is_none() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::EffectError;
    use crate::event::Source;
    use chrono::Utc;
    use rusqlite::Connection;
    use serde_json::json;

    const HOUR: i64 = 3_600_000_000_000;

    fn store() -> (tempfile::TempDir, Connection) {
        super::super::schema::scratch_store()
    }

    /// The test's writer side of the event index (each test runs on its own thread).
    fn events() -> &'static IndexWriter {
        thread_local! {
            static EVENTS: &'static IndexWriter =
                Box::leak(Box::new(IndexWriter::new(Arc::default())));
        }
        EVENTS.with(|events| *events)
    }

    fn at<'a>(tx: &'a Connection, now: i64, seal: &'a SealKey) -> Apply<'a> {
        Apply::new(tx, now, HOUR, seal, events())
    }

    #[test]
    fn a_batch_of_rows_has_each_events_own_source() {
        let body =
            |n: i64| format!(r#"{{"event":"meeting.started","event_ts":{n},"payload":{{}}}}"#);
        let sources = [
            Source::Websocket("a".into()),
            Source::Websocket("a".into()),
            Source::Websocket("b \"quoted\"".into()),
            Source::Webhook,
            Source::Websocket("a".into()),
        ];
        let events: Vec<Event> = sources
            .into_iter()
            .zip(1..)
            .map(|(source, n)| Event::parse(&body(n), source).unwrap())
            .collect();
        let rows = EventRow::batch(&events);
        assert_eq!(rows.len(), events.len());
        for (row, event) in rows.iter().zip(&events) {
            assert_eq!(row.source, EventRow::new(event).source);
            assert_eq!(
                serde_json::from_str::<Source>(&row.source).unwrap(),
                event.source
            );
            assert_eq!(row.id, event.id);
        }
        assert!(Arc::ptr_eq(&rows[0].source, &rows[1].source));
        assert!(!Arc::ptr_eq(&rows[1].source, &rows[4].source));
    }

    fn apply_one(conn: &mut Connection, op: &Op) -> Outcome {
        apply_all(conn, to_nanos(Utc::now()), std::slice::from_ref(op)).remove(0)
    }

    /// Applies `ops` in one transaction at `now`, as the writer does a batch.
    fn apply_all(conn: &mut Connection, now: i64, ops: &[Op]) -> Vec<Outcome> {
        let seal = SealKey::ephemeral().unwrap();
        let tx = conn.transaction().unwrap();
        events().begin(&tx).unwrap();
        let at = at(&tx, now, &seal);
        let outcomes = ops.iter().map(|op| apply(&tx, op, &at).unwrap()).collect();
        drop(at);
        events().before_commit(&tx).unwrap();
        tx.commit().unwrap();
        events().after_commit(true);
        outcomes
    }

    fn event_row(received_at: i64) -> EventRow {
        let event = Event::parse(r#"{"event":"x.y","event_ts":1}"#, Source::Fire).unwrap();
        EventRow {
            received_at,
            ..EventRow::new(&event)
        }
    }

    fn effect(seq: u32, text: &str, replayed: bool) -> EffectRecord {
        EffectRecord {
            seq,
            name: "slack.post".into(),
            args: json!({"channel": "#a", "text": text}),
            result: Ok(json!({"ok": true})),
            started_at: Utc::now(),
            latency_ms: 1.5,
            replayed,
            in_doubt: false,
            unredacted: None,
        }
    }

    fn run(id: &str, status: RunStatus) -> RunRecord {
        RunRecord::for_test(id, "rule-a", &event_row(0).id, "x.y", status)
    }

    fn accept_op(event: EventRow, runs: Vec<RunRecord>) -> Op {
        Op::Accept { event, runs }
    }

    fn run_ids(conn: &Connection) -> Vec<(String, String)> {
        conn.prepare("SELECT id, status FROM runs ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn accepted(outcome: Outcome) -> bool {
        match outcome {
            Outcome::Accepted(fresh) => fresh,
            other => panic!("{other:?}"),
        }
    }

    fn stored_effects(conn: &Connection) -> Vec<(u32, String, bool, u32)> {
        conn.prepare("SELECT seq, args, replayed, attempt FROM effects ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn an_id_seen_within_the_window_is_a_duplicate_and_after_it_is_new() {
        let (_dir, mut conn) = store();
        assert!(accepted(apply_one(
            &mut conn,
            &accept_op(event_row(0), vec![])
        )));
        assert!(!accepted(apply_one(
            &mut conn,
            &accept_op(event_row(HOUR - 1), vec![])
        )));
        assert!(accepted(apply_one(
            &mut conn,
            &accept_op(event_row(HOUR), vec![])
        )));
        // The window restarts from the last accepted occurrence.
        assert!(!accepted(apply_one(
            &mut conn,
            &accept_op(event_row(HOUR + 5), vec![])
        )));
        let events: i64 = conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(events, 1, "a re-delivery after the window replaces the row");
    }

    fn received_in_rowid_order(conn: &Connection) -> Vec<i64> {
        conn.prepare("SELECT received_at FROM events ORDER BY rowid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn a_re_delivery_after_the_window_moves_to_the_end_of_receive_order() {
        let (_dir, mut conn) = store();
        apply_one(&mut conn, &accept_op(event_row(0), vec![]));
        let other = Event::parse(r#"{"event":"x.y","event_ts":2}"#, Source::Fire).unwrap();
        let other = EventRow {
            received_at: 10,
            ..EventRow::new(&other)
        };
        apply_one(&mut conn, &accept_op(other, vec![]));
        assert!(accepted(apply_one(
            &mut conn,
            &accept_op(event_row(HOUR), vec![])
        )));
        assert_eq!(
            received_in_rowid_order(&conn),
            vec![10, HOUR],
            "rowid order is receive order"
        );
    }

    fn prune_all_events(conn: &mut Connection, now: i64) -> u64 {
        let tx = conn.transaction().unwrap();
        events().flush(&tx).unwrap(); // as `apply` does before pruning events
        let pruned = apply_prune_step(&tx, &PruneStep::OldestEvents(u64::MAX), now, HOUR).unwrap();
        tx.commit().unwrap();
        events().after_commit(true);
        pruned
    }

    fn dedupe_rows(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM dedupe", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn an_event_pruned_within_its_window_stays_a_duplicate_until_the_window_passes() {
        let (_dir, mut conn) = store();
        assert!(accepted(apply_one(
            &mut conn,
            &accept_op(event_row(0), vec![])
        )));
        assert_eq!(dedupe_rows(&conn), 0, "the event's row is its entry");
        assert_eq!(prune_all_events(&mut conn, 10), 1);
        assert_eq!(dedupe_rows(&conn), 1, "kept apart once pruned");
        assert!(!accepted(apply_one(
            &mut conn,
            &accept_op(event_row(HOUR - 1), vec![])
        )));
        assert!(accepted(apply_one(
            &mut conn,
            &accept_op(event_row(HOUR), vec![])
        )));
        assert_eq!(dedupe_rows(&conn), 0, "the new event's row took over");
        // Pruned after its window: nothing is kept.
        assert_eq!(prune_all_events(&mut conn, 2 * HOUR + 1), 1);
        assert_eq!(dedupe_rows(&conn), 0);
    }

    #[test]
    fn an_id_pruned_within_a_transaction_is_a_duplicate_later_in_it() {
        // `dedupe` is asked once per transaction whether it holds any id
        // (here by the first event, when it holds none); a pruning step in
        // the same transaction may add one, and the events after it must
        // see it.
        let (_dir, mut conn) = store();
        assert!(accepted(apply_one(
            &mut conn,
            &accept_op(event_row(0), vec![])
        )));
        // Pruned at 10 ns: within the first event's window.
        let other = Event::parse(r#"{"event":"x.y","event_ts":2}"#, Source::Fire).unwrap();
        let outcomes = apply_all(
            &mut conn,
            10,
            &[
                accept_op(EventRow::new(&other), vec![]),
                Op::Prune(PruneStep::OldestEvents(u64::MAX)),
                // Again within its window: a duplicate; after it: new.
                accept_op(event_row(HOUR - 1), vec![]),
                accept_op(event_row(HOUR), vec![]),
            ],
        );
        assert!(
            matches!(
                outcomes[..],
                [
                    Outcome::Accepted(true),
                    Outcome::Pruned(1),
                    Outcome::Accepted(false),
                    Outcome::Accepted(true),
                ]
            ),
            "{outcomes:?}"
        );
    }

    #[test]
    fn an_event_is_written_with_its_runs_and_a_duplicate_writes_neither() {
        let (_dir, mut conn) = store();
        let runs = vec![run("r1", RunStatus::Pending), run("r2", RunStatus::Skipped)];
        assert!(accepted(apply_one(
            &mut conn,
            &accept_op(event_row(0), runs)
        )));
        let pending = |id: &str| (id.to_string(), "pending".to_string());
        let skipped = |id: &str| (id.to_string(), "skipped".to_string());
        assert_eq!(run_ids(&conn), vec![pending("r1"), skipped("r2")]);
        let again = vec![run("r3", RunStatus::Pending)];
        assert!(!accepted(apply_one(
            &mut conn,
            &accept_op(event_row(5), again)
        )));
        assert_eq!(run_ids(&conn).len(), 2, "a duplicate starts no run");
    }

    #[test]
    fn an_event_whose_run_cannot_be_written_is_not_accepted_either() {
        let (_dir, mut conn) = store();
        conn.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON runs
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        )
        .unwrap();
        let tx = conn.transaction().unwrap();
        let op = accept_op(event_row(0), vec![run("r1", RunStatus::Pending)]);
        let seal = SealKey::ephemeral().unwrap();
        assert!(apply(&tx, &op, &at(&tx, to_nanos(Utc::now()), &seal)).is_err());
        drop(tx);
        events().after_commit(false);
        let events: i64 = conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(events, 0, "the writer rolls the whole op back");
    }

    #[test]
    fn a_performed_effect_replaces_its_position_and_a_replayed_copy_does_not() {
        let (_dir, mut conn) = store();
        let mut first = run("r1", RunStatus::Running);
        apply_one(&mut conn, &Op::RecordRun(Box::new(first.clone())));
        for record in [effect(1, "one", false), effect(2, "two", false)] {
            let op = Op::Effect {
                run_id: "r1".into(),
                record: Box::new(record),
            };
            apply_one(&mut conn, &op);
        }
        // Attempt 2 replays seq 1, performs seq 2 again with a failure.
        first.attempt = 2;
        let mut failed = effect(2, "two", false);
        failed.result = Err(EffectError::transient("slack.post", "503"));
        first.effects = vec![effect(1, "one-copy", true), failed];
        apply_one(&mut conn, &Op::RecordRun(Box::new(first)));
        let stored = stored_effects(&conn);
        assert_eq!(stored.len(), 2);
        assert!(stored[0].1.contains("\"one\""), "original kept: {stored:?}");
        assert!(!stored[0].2);
        assert_eq!(stored[0].3, 1);
        assert_eq!(stored[1].3, 2, "replaced by attempt 2");
        let ok: bool = conn
            .query_row("SELECT ok FROM effects WHERE seq = 2", [], |r| r.get(0))
            .unwrap();
        assert!(!ok);
    }

    #[test]
    fn an_observed_run_record_writes_the_run_and_not_its_effects() {
        let (_dir, mut conn) = store();
        apply_one(
            &mut conn,
            &accept_op(event_row(0), vec![run("r1", RunStatus::Pending)]),
        );
        let op = Op::Effect {
            run_id: "r1".into(),
            record: Box::new(effect(1, "as made", false)),
        };
        apply_one(&mut conn, &op);
        let mut done = run("r1", RunStatus::Succeeded);
        done.effects = vec![
            effect(1, "not written", false),
            effect(2, "nor this", false),
        ];
        apply_one(&mut conn, &Op::RecordObservedRun(Box::new(done)));
        assert_eq!(
            run_ids(&conn),
            [("r1".to_string(), "succeeded".to_string())]
        );
        let stored = stored_effects(&conn);
        assert_eq!(stored.len(), 1, "{stored:?}");
        assert!(stored[0].1.contains("as made"), "{stored:?}");
    }

    #[test]
    fn an_effect_sent_again_with_a_later_attempt_keeps_the_attempt_that_performed_it() {
        let (_dir, mut conn) = store();
        let mut record = run("r1", RunStatus::Running);
        record.effects = vec![effect(1, "one", false)];
        apply_one(&mut conn, &Op::RecordRun(Box::new(record.clone())));
        record.attempt = 2;
        apply_one(&mut conn, &Op::RecordRun(Box::new(record)));
        assert_eq!(stored_effects(&conn)[0].3, 1);
    }

    #[test]
    fn an_effect_takes_the_attempt_of_its_run() {
        let (_dir, mut conn) = store();
        let mut record = run("r1", RunStatus::Running);
        record.attempt = 3;
        apply_one(&mut conn, &Op::RecordRun(Box::new(record)));
        let op = Op::Effect {
            run_id: "r1".into(),
            record: Box::new(effect(1, "x", false)),
        };
        apply_one(&mut conn, &op);
        let op = Op::Effect {
            run_id: "unrecorded".into(),
            record: Box::new(effect(1, "x", false)),
        };
        apply_one(&mut conn, &op);
        let attempts: Vec<u32> = conn
            .prepare("SELECT attempt FROM effects ORDER BY run_id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(attempts, vec![3, 1]);
    }

    #[test]
    fn logs_of_an_attempt_are_replaced_not_appended() {
        let (_dir, mut conn) = store();
        let mut record = run("r1", RunStatus::Running);
        let line = |m: &str| crate::effects::gateway::LogLine {
            level: "info".into(),
            message: m.into(),
            at: Utc::now(),
        };
        record.logs = vec![line("a")];
        apply_one(&mut conn, &Op::RecordRun(Box::new(record.clone())));
        record.logs = vec![line("a"), line("b")];
        apply_one(&mut conn, &Op::RecordRun(Box::new(record.clone())));
        record.logs = vec![];
        apply_one(&mut conn, &Op::RecordRun(Box::new(record)));
        let count: i64 = conn
            .query_row("SELECT count(*) FROM logs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 2);
    }

    #[test]
    fn only_finished_failed_or_dead_runs_with_their_event_are_requeued() {
        let (_dir, mut conn) = store();
        let requeue =
            |conn: &mut Connection, id: &str| match apply_one(conn, &Op::Requeue { id: id.into() })
            {
                Outcome::Requeued(outcome) => outcome,
                other => panic!("{other:?}"),
            };
        assert_eq!(requeue(&mut conn, "nope"), RequeueOutcome::NotFound);
        let mut dead = run("dead", RunStatus::Dead);
        dead.attempt = 5;
        dead.error = Some("boom".into());
        dead.finished_at = Some(Utc::now());
        apply_one(&mut conn, &Op::RecordRun(Box::new(dead.clone())));
        assert_eq!(requeue(&mut conn, "dead"), RequeueOutcome::EventPruned);
        apply_one(&mut conn, &accept_op(event_row(0), vec![]));
        assert_eq!(requeue(&mut conn, "dead"), RequeueOutcome::Requeued);
        let (status, attempt, error): (String, u32, Option<String>) = conn
            .query_row(
                "SELECT status, attempt, error FROM runs WHERE id = 'dead'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((status.as_str(), attempt, error), ("pending", 1, None));
        assert_eq!(requeue(&mut conn, "dead"), RequeueOutcome::NotFinished);
        let mut done = run("done", RunStatus::Succeeded);
        done.finished_at = Some(Utc::now());
        apply_one(&mut conn, &Op::RecordRun(Box::new(done)));
        assert_eq!(
            requeue(&mut conn, "done"),
            RequeueOutcome::NotFailed(RunStatus::Succeeded)
        );
        let retrying = run("retrying", RunStatus::Failed);
        apply_one(&mut conn, &Op::RecordRun(Box::new(retrying)));
        assert_eq!(requeue(&mut conn, "retrying"), RequeueOutcome::NotFinished);
    }
}
