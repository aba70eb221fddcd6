//! Reading the store: the runs to resume after a restart, whole runs,
//! events and rule state (run history a page at a time is in `pages.rs`).
//!
//! Reads use their own connections (WAL lets them run beside the writer), kept
//! in a small pool. Every query is indexed and bounded, so they are quick
//! enough to call from async code; a server handler may still wrap them in
//! `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::codec::{from_json, from_nanos, parse_status};
use super::event_index::{EventIndex, find_event};
use super::schema::open_reader;
use super::seal::{SealKey, effect_context, event_context};
use super::writer::journal_error;
use crate::effects::gateway::{EffectRecord, EffectStart, LogLine};
use crate::effects::redact;
use crate::engine::journal::{JournalError, RunRecord, RunStatus};
use crate::event::{Event, Source};

/// SQL condition on `runs` for a run that is not over: pending, running, or
/// failed and waiting for its next attempt (no `finished_at` yet). These are
/// resumed after a restart and never pruned.
pub(crate) const UNFINISHED: &str = "(status IN ('pending', 'running') \
     OR (status = 'failed' AND finished_at IS NULL))";

/// SQL selecting `columns` of every run [`UNFINISHED`] says: the pending
/// and running ones through `runs_status`, those waiting for a retry
/// through `runs_retrying` (schema V11), which SQLite's planner would not
/// pick by itself. A plain `WHERE {UNFINISHED}` reads every failed run's
/// row, finished or not.
pub(crate) fn select_unfinished(columns: &str) -> String {
    format!(
        "SELECT {columns} FROM runs WHERE status IN ('pending', 'running') \
         UNION ALL SELECT {columns} FROM runs INDEXED BY runs_retrying \
         WHERE status = 'failed' AND finished_at IS NULL"
    )
}

/// Idle read connections kept for reuse.
const IDLE_READERS: usize = 4;

/// Which runs to list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFilter {
    /// Only runs of this rule.
    pub rule: Option<String>,
    /// Only failed and dead runs.
    pub failed_only: bool,
    /// Only runs a mode dropped or a failing condition skipped.
    pub skipped_only: bool,
    /// At most this many, newest first.
    pub limit: usize,
}

impl Default for RunFilter {
    fn default() -> RunFilter {
        RunFilter {
            rule: None,
            failed_only: false,
            skipped_only: false,
            limit: 100,
        }
    }
}

/// One line of run history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: String,
    pub rule: String,
    pub status: RunStatus,
    pub attempt: u32,
    pub event_id: String,
    pub event_type: String,
    pub key: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The event that triggered a run, as history shows it (secrets redacted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventSummary {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub ts: i64,
    pub source: String,
    pub received_at: DateTime<Utc>,
    /// The body with `download_token` and other secret-named keys redacted.
    pub body: Value,
}

/// A run with its effects, logs and trigger, for `/api/runs/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunRecord,
    /// `None` once the event has been pruned.
    pub event: Option<EventSummary>,
}

/// Rows held per table, for the admin API and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreCounts {
    pub events: u64,
    /// Ids kept apart for deduplication: in the SQLite store, those of events
    /// pruned within their window (a stored event is its own entry).
    pub dedupe: u64,
    pub runs: u64,
    pub effects: u64,
    pub logs: u64,
    pub state: u64,
}

/// An event row, before it is rebuilt.
#[derive(Clone)]
pub(crate) struct StoredEvent {
    pub id: String,
    pub event_type: String,
    pub ts: i64,
    pub source: String,
    pub received_at: i64,
    pub raw: String,
    pub sealed_token: Option<Vec<u8>>,
}

impl StoredEvent {
    /// Rebuilds the event as intake built it, with its original id, receipt
    /// time and download token (when it still opens).
    pub fn into_event(self, seal: &SealKey) -> Result<Event, JournalError> {
        let source: Source = from_json(&self.source, "events.source")?;
        let mut event = Event::parse(&self.raw, source).map_err(|e| {
            JournalError(format!("stored event `{}` cannot be rebuilt: {e}", self.id))
        })?;
        let token = self.sealed_token.as_deref().and_then(|sealed| {
            let opened = seal.open(&event_context(&self.id), sealed);
            if opened.is_none() {
                tracing::warn!(event = %self.id, "the event's sealed download token does not open (was seal.key replaced?): downloads use the oauth token");
            }
            let token = String::from_utf8(opened?).ok()?;
            Some(std::sync::Arc::new(secrecy::SecretString::from(token)))
        });
        if token.is_some() {
            event = event.with_download_token(token);
        }
        event.id = self.id;
        event.received_at = from_nanos(self.received_at);
        Ok(event)
    }

    pub(crate) fn summary(&self) -> Result<EventSummary, JournalError> {
        let source: Source = from_json(&self.source, "events.source")?;
        let body: Value = from_json(&self.raw, "events.raw")?;
        Ok(EventSummary {
            id: self.id.clone(),
            event_type: self.event_type.clone(),
            ts: self.ts,
            source: source.to_string(),
            received_at: from_nanos(self.received_at),
            body: redact(&body),
        })
    }
}

/// A failed read: SQLite's error, or a row the store should not hold.
pub(crate) enum ReadError {
    Sqlite(rusqlite::Error),
    Journal(JournalError),
}

impl From<rusqlite::Error> for ReadError {
    fn from(error: rusqlite::Error) -> ReadError {
        ReadError::Sqlite(error)
    }
}

impl From<JournalError> for ReadError {
    fn from(error: JournalError) -> ReadError {
        ReadError::Journal(error)
    }
}

pub(crate) type ReadResult<T> = Result<T, ReadError>;

/// A pool of read connections.
pub(crate) struct Readers {
    path: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub fn new(path: &Path, busy_timeout: Duration) -> Readers {
        Readers {
            path: path.to_path_buf(),
            busy_timeout,
            idle: Mutex::default(),
        }
    }

    /// Runs `read` on a pooled connection, naming the store in any SQLite error.
    pub fn with<T>(
        &self,
        read: impl FnOnce(&Connection) -> ReadResult<T>,
    ) -> Result<T, JournalError> {
        let pooled = self.idle.lock().pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => open_reader(&self.path, self.busy_timeout)
                .map_err(|e| journal_error(&self.path, &e))?,
        };
        let result = read(&conn).map_err(|error| match error {
            ReadError::Sqlite(e) => journal_error(&self.path, &e),
            ReadError::Journal(e) => e,
        });
        let mut idle = self.idle.lock();
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        result
    }
}

const RUN_COLUMNS: &str = "id, rule, event_id, event_type, key, status, attempt, error, output, \
                           created_at, started_at, finished_at";

/// One run with effects, logs and its (redacted) event.
pub(crate) fn get_run(
    conn: &Connection,
    events: &EventIndex,
    id: &str,
) -> ReadResult<Option<RunDetail>> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1");
    let mut statement = conn.prepare_cached(&sql)?;
    let mut rows = statement.query([id])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let mut run = run_row(row)?;
    fill_run(conn, &mut run, None)?;
    let event = stored_event(conn, events, &run.event_id)?
        .as_ref()
        .map(StoredEvent::summary)
        .transpose()?;
    Ok(Some(RunDetail { run, event }))
}

/// An unfinished run as stored: its record, its effects left in doubt, its event.
pub(crate) type StoredUnfinished = (RunRecord, Vec<EffectStart>, Option<StoredEvent>);

/// Unfinished runs (see [`UNFINISHED`]) with their effects (unredacted
/// results opened, for replay), logs, effects in doubt and events, in the
/// order their events arrived, then oldest first.
pub(crate) fn unfinished_runs(
    conn: &Connection,
    events: &EventIndex,
    seal: &SealKey,
) -> ReadResult<Vec<StoredUnfinished>> {
    let columns = format!("{RUN_COLUMNS}, rowid AS stored_order");
    let sql = select_unfinished(&columns) + " ORDER BY created_at, stored_order";
    let mut statement = conn.prepare_cached(&sql)?;
    let mut rows = statement.query([])?;
    let mut runs = Vec::new();
    while let Some(row) = rows.next()? {
        runs.push(run_row(row)?);
    }
    let mut unfinished = Vec::with_capacity(runs.len());
    for mut run in runs {
        fill_run(conn, &mut run, Some(seal))?;
        let in_doubt = effect_starts(conn, &run.id)?;
        let event = stored_event(conn, events, &run.event_id)?;
        unfinished.push((run, in_doubt, event));
    }
    // In the order their events arrived, which is the order the daemon admits
    // runs in (runs of events journaled together may have been created in
    // another order); runs of one event stay in their order.
    unfinished.sort_by_key(|(_, _, event)| event.as_ref().map(|e| e.received_at));
    Ok(unfinished)
}

/// The run's effects written as started and never as done.
fn effect_starts(conn: &Connection, run_id: &str) -> ReadResult<Vec<EffectStart>> {
    let mut statement = conn.prepare_cached(
        "SELECT seq, name, args, started_at FROM effect_starts WHERE run_id = ?1 ORDER BY seq",
    )?;
    let mut rows = statement.query([run_id])?;
    let mut starts = Vec::new();
    while let Some(row) = rows.next()? {
        let args: String = row.get(2)?;
        starts.push(EffectStart {
            seq: row.get(0)?,
            name: row.get(1)?,
            args: from_json(&args, "effect_starts.args")?,
            started_at: from_nanos(row.get(3)?),
        });
    }
    Ok(starts)
}

/// The ids of the unfinished runs, without their details.
pub(crate) fn unfinished_run_ids(conn: &Connection) -> ReadResult<Vec<String>> {
    let sql = select_unfinished("id");
    let mut statement = conn.prepare_cached(&sql)?;
    let ids = statement
        .query_map([], |row| row.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(ids)
}

/// Adds the run's effects (one per position) and logs (all attempts, in
/// order); with `seal`, each effect's unredacted result too.
fn fill_run(conn: &Connection, run: &mut RunRecord, seal: Option<&SealKey>) -> ReadResult<()> {
    let mut statement = conn.prepare_cached(
        "SELECT seq, name, args, result, started_at, latency_ms, replayed, in_doubt, sealed_result
         FROM effects WHERE run_id = ?1 ORDER BY seq",
    )?;
    let mut rows = statement.query([&run.id])?;
    run.effects.clear();
    while let Some(row) = rows.next()? {
        let mut effect = effect_row(row)?;
        if let Some(seal) = seal {
            let sealed: Option<Vec<u8>> = row.get(8)?;
            effect.unredacted =
                sealed.and_then(|sealed| open_result(seal, &run.id, &effect, &sealed));
        }
        run.effects.push(effect);
    }
    let mut statement = conn.prepare_cached(
        "SELECT level, message, at FROM logs WHERE run_id = ?1 ORDER BY attempt, idx",
    )?;
    run.logs = statement
        .query_map([&run.id], |row| {
            Ok(LogLine {
                level: row.get(0)?,
                message: row.get(1)?,
                at: from_nanos(row.get(2)?),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(())
}

/// An effect's sealed result, opened; `None` (the redacted result is
/// replayed instead) when it does not open.
pub(crate) fn open_result(
    seal: &SealKey,
    run_id: &str,
    effect: &EffectRecord,
    sealed: &[u8],
) -> Option<Value> {
    let opened = seal
        .open(&effect_context(run_id, effect.seq), sealed)
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    if opened.is_none() {
        tracing::warn!(run = %run_id, seq = effect.seq, "an effect's sealed result does not open (was seal.key replaced?): a replay returns its redacted copy");
    }
    opened
}

/// The stored event with this id, if it has not been pruned.
pub(crate) fn stored_event(
    conn: &Connection,
    events: &EventIndex,
    id: &str,
) -> rusqlite::Result<Option<StoredEvent>> {
    let Some(rowid) = find_event(conn, events, id)? else {
        return Ok(None);
    };
    conn.prepare_cached(
        "SELECT id, type, ts, source, received_at, raw, sealed_token FROM events
         WHERE rowid = ?1",
    )?
    .query_row([rowid], |row| {
        Ok(StoredEvent {
            id: row.get(0)?,
            event_type: row.get(1)?,
            ts: row.get(2)?,
            source: row.get(3)?,
            received_at: row.get(4)?,
            raw: row.get(5)?,
            sealed_token: row.get(6)?,
        })
    })
    .optional()
}

/// A rule's state value, unless it has expired.
pub(crate) fn state_value(
    conn: &Connection,
    rule: &str,
    key: &str,
    now: i64,
) -> ReadResult<Option<Value>> {
    let text: Option<String> = conn
        .prepare_cached(
            "SELECT value FROM state WHERE rule = ?1 AND key = ?2
                 AND (expires_at IS NULL OR expires_at > ?3)",
        )?
        .query_row(params![rule, key, now], |row| row.get(0))
        .optional()?;
    Ok(text.map(|t| from_json(&t, "state.value")).transpose()?)
}

/// Rows held in `table` (reads all of it).
pub(crate) fn count_rows(conn: &Connection, table: &str) -> ReadResult<u64> {
    let count: i64 = conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
        row.get(0)
    })?;
    Ok(count.max(0) as u64)
}

/// Rows held per table.
pub(crate) fn counts(conn: &Connection) -> ReadResult<StoreCounts> {
    let count = |table: &str| count_rows(conn, table);
    Ok(StoreCounts {
        events: count("events")?,
        dedupe: count("dedupe")?,
        runs: count("runs")?,
        effects: count("effects")?,
        logs: count("logs")?,
        state: count("state")?,
    })
}

fn run_row(row: &Row<'_>) -> ReadResult<RunRecord> {
    let status: String = row.get(5)?;
    let output: Option<String> = row.get(8)?;
    Ok(RunRecord {
        id: row.get(0)?,
        rule: row.get(1)?,
        event_id: row.get(2)?,
        event_type: row.get(3)?,
        key: row.get(4)?,
        status: parse_status(&status)?,
        attempt: row.get(6)?,
        error: row.get(7)?,
        effects: Vec::new(),
        logs: Vec::new(),
        output: output.map(|o| from_json(&o, "runs.output")).transpose()?,
        created_at: from_nanos(row.get(9)?),
        started_at: row.get::<_, Option<i64>>(10)?.map(from_nanos),
        finished_at: row.get::<_, Option<i64>>(11)?.map(from_nanos),
    })
}

pub(crate) fn effect_row(row: &Row<'_>) -> ReadResult<EffectRecord> {
    let args: String = row.get(2)?;
    let result: String = row.get(3)?;
    Ok(EffectRecord {
        seq: row.get(0)?,
        name: row.get(1)?,
        args: from_json(&args, "effects.args")?,
        result: from_json(&result, "effects.result")?,
        started_at: from_nanos(row.get(4)?),
        latency_ms: row.get(5)?,
        replayed: row.get(6)?,
        in_doubt: row.get(7)?,
        unredacted: None,
    })
}

impl From<RunRecord> for RunSummary {
    fn from(run: RunRecord) -> RunSummary {
        RunSummary {
            id: run.id,
            rule: run.rule,
            status: run.status,
            attempt: run.attempt,
            event_id: run.event_id,
            event_type: run.event_type,
            key: run.key,
            error: run.error,
            created_at: run.created_at,
            started_at: run.started_at,
            finished_at: run.finished_at,
        }
    }
}

/// [`unfinished_runs`] among the runs `ids` names: those still unfinished,
/// read one by one (the daemon's poll for requeued runs asks for a few
/// candidates while thousands may be pending in a burst).
pub(crate) fn unfinished_runs_among(
    conn: &Connection,
    events: &EventIndex,
    seal: &SealKey,
    ids: &[String],
) -> ReadResult<Vec<StoredUnfinished>> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1 AND {UNFINISHED}");
    let mut statement = conn.prepare_cached(&sql)?;
    let mut unfinished = Vec::new();
    for id in ids {
        let mut rows = statement.query([id])?;
        let Some(row) = rows.next()? else {
            continue;
        };
        let mut run = run_row(row)?;
        fill_run(conn, &mut run, Some(seal))?;
        let in_doubt = effect_starts(conn, &run.id)?;
        let event = stored_event(conn, events, &run.event_id)?;
        unfinished.push((run, in_doubt, event));
    }
    // The order of `unfinished_runs`: events' arrival, then oldest first.
    unfinished
        .sort_by_key(|(run, _, event)| (event.as_ref().map(|e| e.received_at), run.created_at));
    Ok(unfinished)
}
