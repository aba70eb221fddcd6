//! The changes the PostgreSQL journal makes, one function each: an event
//! with its runs (deduplicated), run records, effect records, rule state,
//! requeue, dead letters, and taking over unfinished runs.
//!
//! Every run belongs to a node (`runs.node`) under a claim number
//! (`runs.claim`). A node writes a run only while it still holds it under
//! the claim it knows, so a node whose runs were taken over (it fell silent
//! and another node resumed them) can no longer record them: its write
//! changes nothing and answers a [`JournalError`], and it cannot mark a new
//! effect as started, so it does not perform it. Effects are kept one row
//! per position, exactly as in the SQLite store (see `journal/ops.rs`):
//! written as started before they are made (`effect_starts`), their record
//! replacing the mark, an unredacted result sealed beside the record.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::Db;
use super::reads::{RUN_COLUMNS, effect_starts, fill_runs, run_row, stored_events};
use super::schema::UNFINISHED;
use crate::effects::gateway::{EffectRecord, EffectStart};
use crate::engine::journal::{JournalError, RunRecord, RunStatus};
use crate::journal::RequeueOutcome;
use crate::journal::codec::{parse_status, to_json, to_nanos};
use crate::journal::ops::EventRow;
use crate::journal::query::StoredEvent;
use crate::journal::seal::{effect_context, event_context};
use secrecy::ExposeSecret;

/// A run taken over from another node (or put back by `zoomwire runs
/// retry`), with the claim it is now held under and its event.
pub(crate) struct ClaimedRun {
    pub run: RunRecord,
    pub claim: i64,
    pub event: Option<StoredEvent>,
    /// Its effects written as started and never as done.
    pub in_doubt: Vec<EffectStart>,
    /// The node that held it before, when another (`None`: its own, or nobody's).
    pub taken_from: Option<String>,
}

/// An event to accept with the records of its runs.
pub(crate) struct Acceptance {
    pub event: EventRow,
    pub runs: Vec<RunRecord>,
}

/// Stores a batch of events, each with its runs unless its id was accepted
/// within the dedupe window, in one transaction (one commit for the lot);
/// answers, in the batch's order, whether each was new. An id twice in the
/// batch is new the first time only. Dedupe and event rows are written in
/// the order of their ids, so that batches committing side by side cannot
/// deadlock; runs (new rows) in the order their events arrived.
pub(crate) async fn accept(
    db: &Db,
    batch: &[Acceptance],
    now: i64,
) -> Result<Vec<bool>, JournalError> {
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by(|&a, &b| batch[a].event.id.cmp(&batch[b].event.id));
    order.dedup_by(|&mut later, &mut first| batch[later].event.id == batch[first].event.id);
    let events: Vec<&EventRow> = order.iter().map(|&i| &batch[i].event).collect();
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(|e| db.error(e))?;
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let received: Vec<i64> = events.iter().map(|e| e.received_at).collect();
    let expires: Vec<i64> = received
        .iter()
        .map(|at| at.saturating_add(db.dedupe_window))
        .collect();
    let statement = tx
        .prepare_cached(
            "INSERT INTO zoomwire.dedupe AS d (id, received_at, expires_at)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[])
             ON CONFLICT (id) DO UPDATE SET received_at = excluded.received_at,
                                            expires_at = excluded.expires_at
             WHERE d.received_at <= excluded.received_at - $4
             RETURNING id",
        )
        .await
        .map_err(|e| db.error(e))?;
    let fresh: std::collections::HashSet<String> = tx
        .query(&statement, &[&ids, &received, &expires, &db.dedupe_window])
        .await
        .map_err(|e| db.error(e))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let fresh_events: Vec<&EventRow> = events
        .iter()
        .copied()
        .filter(|e| fresh.contains(&e.id))
        .collect();
    // The first of each new id, in the batch's order (the order events
    // arrived in, which their runs' `seq` keeps).
    let mut seen = std::collections::HashSet::new();
    let written: Vec<bool> = batch
        .iter()
        .map(|a| fresh.contains(&a.event.id) && seen.insert(a.event.id.as_str()))
        .collect();
    if !fresh_events.is_empty() {
        insert_events(db, &tx, &fresh_events).await?;
        let runs: Vec<&RunRecord> = batch
            .iter()
            .zip(&written)
            .filter(|(_, written)| **written)
            .flat_map(|(a, _)| &a.runs)
            .collect();
        insert_runs(db, &tx, &runs, now).await?;
        for run in runs
            .iter()
            .filter(|r| !r.effects.is_empty() || !r.logs.is_empty())
        {
            write_run(db, &tx, run, None, now).await?;
        }
    }
    tx.commit().await.map_err(|e| db.error(e))?;
    Ok(written)
}

async fn insert_events(
    db: &Db,
    tx: &impl GenericClient,
    events: &[&EventRow],
) -> Result<(), JournalError> {
    let column =
        |f: fn(&EventRow) -> String| -> Vec<String> { events.iter().map(|e| f(e)).collect() };
    let (ids, types, sources, raws) = (
        column(|e| e.id.clone()),
        column(|e| e.event_type.clone()),
        column(|e| e.source.to_string()),
        column(|e| e.raw.to_string()),
    );
    let ts: Vec<i64> = events.iter().map(|e| e.ts).collect();
    let received: Vec<i64> = events.iter().map(|e| e.received_at).collect();
    let tokens: Vec<Option<Vec<u8>>> = events
        .iter()
        .map(|e| {
            let token = e.download_token.as_ref()?;
            db.seal
                .seal(&event_context(&e.id), token.expose_secret().as_bytes())
        })
        .collect();
    let statement = tx
        .prepare_cached(
            "INSERT INTO zoomwire.events (id, type, ts, source, received_at, raw, sealed_token)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[],
                                  $5::bigint[], $6::text[], $7::bytea[])
             ON CONFLICT (id) DO UPDATE SET type = excluded.type, ts = excluded.ts,
                 source = excluded.source, received_at = excluded.received_at,
                 raw = excluded.raw, sealed_token = excluded.sealed_token",
        )
        .await
        .map_err(|e| db.error(e))?;
    tx.execute(
        &statement,
        &[&ids, &types, &ts, &sources, &received, &raws, &tokens],
    )
    .await
    .map_err(|e| db.error(e))?;
    Ok(())
}

/// Inserts new runs (the records an accepted event starts), held by this node.
async fn insert_runs(
    db: &Db,
    tx: &impl GenericClient,
    runs: &[&RunRecord],
    now: i64,
) -> Result<(), JournalError> {
    if runs.is_empty() {
        return Ok(());
    }
    let text = |f: fn(&RunRecord) -> String| -> Vec<String> { runs.iter().map(|r| f(r)).collect() };
    let maybe = |f: fn(&RunRecord) -> Option<String>| -> Vec<Option<String>> {
        runs.iter().map(|r| f(r)).collect()
    };
    let time = |f: fn(&RunRecord) -> Option<i64>| -> Vec<Option<i64>> {
        runs.iter().map(|r| f(r)).collect()
    };
    let (ids, rules, event_ids, event_types, statuses) = (
        text(|r| r.id.clone()),
        text(|r| r.rule.clone()),
        text(|r| r.event_id.clone()),
        text(|r| r.event_type.clone()),
        text(|r| r.status.as_str().to_string()),
    );
    let (keys, errors, outputs) = (
        maybe(|r| r.key.clone()),
        maybe(|r| r.error.clone()),
        maybe(|r| r.output.as_ref().map(to_json)),
    );
    let attempts: Vec<i32> = runs.iter().map(|r| int(r.attempt)).collect();
    let created: Vec<i64> = runs.iter().map(|r| to_nanos(r.created_at)).collect();
    let (started, finished) = (
        time(|r| r.started_at.map(to_nanos)),
        time(|r| r.finished_at.map(to_nanos)),
    );
    let statement = tx
        .prepare_cached(
            "INSERT INTO zoomwire.runs (id, rule, event_id, event_type, key, status, attempt,
                 error, output, created_at, started_at, finished_at, updated_at, node)
             SELECT id, rule, event_id, event_type, key, status, attempt, error, output,
                    created_at, started_at, finished_at, $13, $14
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::integer[], $8::text[], $9::text[], $10::bigint[],
                         $11::bigint[], $12::bigint[])
                  AS r(id, rule, event_id, event_type, key, status, attempt, error, output,
                       created_at, started_at, finished_at)
             ON CONFLICT (id) DO NOTHING",
        )
        .await
        .map_err(|e| db.error(e))?;
    tx.execute(
        &statement,
        &[
            &ids,
            &rules,
            &event_ids,
            &event_types,
            &keys,
            &statuses,
            &attempts,
            &errors,
            &outputs,
            &created,
            &started,
            &finished,
            &now,
            &&*db.node,
        ],
    )
    .await
    .map_err(|e| db.error(e))?;
    Ok(())
}

/// Inserts or updates a run with its effects and the logs of its current
/// attempt, if this node holds it under `claim` (any claim when `None`).
pub(crate) async fn record_run(
    db: &Db,
    run: &RunRecord,
    claim: Option<i64>,
    now: i64,
) -> Result<(), JournalError> {
    let mut client = db.client().await?;
    if run.effects.is_empty() && run.logs.is_empty() {
        // One statement is atomic on its own: no transaction's round trips.
        return upsert_run(db, &client, run, claim, now).await;
    }
    let tx = client.transaction().await.map_err(|e| db.error(e))?;
    write_run(db, &tx, run, claim, now).await?;
    tx.commit().await.map_err(|e| db.error(e))
}

async fn write_run(
    db: &Db,
    tx: &impl GenericClient,
    run: &RunRecord,
    claim: Option<i64>,
    now: i64,
) -> Result<(), JournalError> {
    upsert_run(db, tx, run, claim, now).await?;
    for record in &run.effects {
        write_effect(db, tx, &run.id, Some(run.attempt), record, claim, now).await?;
    }
    if !run.logs.is_empty() {
        replace_logs(db, tx, run).await?;
    }
    Ok(())
}

/// Inserts or updates the run's own row, if this node holds it under
/// `claim` (any claim when `None`).
async fn upsert_run(
    db: &Db,
    tx: &impl GenericClient,
    run: &RunRecord,
    claim: Option<i64>,
    now: i64,
) -> Result<(), JournalError> {
    let statement = tx
        .prepare_cached(
            "INSERT INTO zoomwire.runs AS r (id, rule, event_id, event_type, key, status, attempt,
                 error, output, created_at, started_at, finished_at, updated_at, node)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (id) DO UPDATE SET rule = excluded.rule, event_id = excluded.event_id,
                 event_type = excluded.event_type, key = excluded.key, status = excluded.status,
                 attempt = excluded.attempt, error = excluded.error, output = excluded.output,
                 started_at = excluded.started_at, finished_at = excluded.finished_at,
                 updated_at = excluded.updated_at
             WHERE r.node IS NOT DISTINCT FROM excluded.node
               AND ($15::bigint IS NULL OR r.claim = $15)",
        )
        .await
        .map_err(|e| db.error(e))?;
    let written = tx
        .execute(
            &statement,
            &[
                &run.id,
                &run.rule,
                &run.event_id,
                &run.event_type,
                &run.key,
                &run.status.as_str(),
                &int(run.attempt),
                &run.error,
                &run.output.as_ref().map(to_json),
                &to_nanos(run.created_at),
                &run.started_at.map(to_nanos),
                &run.finished_at.map(to_nanos),
                &now,
                &&*db.node,
                &claim,
            ],
        )
        .await
        .map_err(|e| db.error(e))?;
    if written == 0 {
        return Err(taken_over(&run.id));
    }
    Ok(())
}

/// Stores one effect record of a run this node holds under `claim`.
pub(crate) async fn record_effect(
    db: &Db,
    run_id: &str,
    record: &EffectRecord,
    claim: Option<i64>,
    now: i64,
) -> Result<(), JournalError> {
    let client = db.client().await?;
    write_effect(db, &client, run_id, None, record, claim, now).await
}

/// Stores an effect at its position, unless the run is no longer this
/// node's, replacing the mark written when it started. `attempt` defaults
/// to the run's current one. A newly performed effect replaces what an
/// earlier attempt left at its position; a replayed copy, or the same
/// record sent again, changes nothing.
async fn write_effect(
    db: &Db,
    client: &impl GenericClient,
    run_id: &str,
    attempt: Option<u32>,
    record: &EffectRecord,
    claim: Option<i64>,
    now: i64,
) -> Result<(), JournalError> {
    let sealed_result = record.unredacted.as_ref().and_then(|value| {
        db.seal.seal(
            &effect_context(run_id, record.seq),
            to_json(value).as_bytes(),
        )
    });
    let statement = client
        .prepare_cached(
            "WITH owner AS (
                 SELECT attempt FROM zoomwire.runs
                 WHERE id = $1 AND node = $12 AND ($13::bigint IS NULL OR claim = $13)
                 FOR SHARE
             ), unmarked AS (
                 DELETE FROM zoomwire.effect_starts
                 WHERE run_id = $1 AND seq = $2 AND EXISTS (SELECT 1 FROM owner)
             ), written AS (
                 INSERT INTO zoomwire.effects AS e (run_id, seq, attempt, name, args, ok, result,
                     started_at, latency_ms, replayed, recorded_at, in_doubt, sealed_result)
                 SELECT $1, $2, coalesce($3::integer, owner.attempt, 1), $4, $5, $6, $7, $8, $9,
                        $10, $11, $14, $15
                 FROM owner
                 ON CONFLICT (run_id, seq) DO UPDATE SET attempt = excluded.attempt,
                     name = excluded.name, args = excluded.args, ok = excluded.ok,
                     result = excluded.result, started_at = excluded.started_at,
                     latency_ms = excluded.latency_ms, replayed = excluded.replayed,
                     recorded_at = excluded.recorded_at, in_doubt = excluded.in_doubt,
                     sealed_result = excluded.sealed_result
                 WHERE NOT excluded.replayed
                   AND (e.started_at <> excluded.started_at OR e.name <> excluded.name
                        OR e.args <> excluded.args OR e.result <> excluded.result
                        OR e.in_doubt <> excluded.in_doubt)
                 RETURNING 1
             )
             SELECT count(*) FROM owner",
        )
        .await
        .map_err(|e| db.error(e))?;
    let owned: i64 = client
        .query_one(
            &statement,
            &[
                &run_id,
                &int(record.seq),
                &attempt.map(int),
                &record.name,
                &to_json(&record.args),
                &record.result.is_ok(),
                &to_json(&record.result),
                &to_nanos(record.started_at),
                &record.latency_ms,
                &record.replayed,
                &now,
                &&*db.node,
                &claim,
                &record.in_doubt,
                &sealed_result,
            ],
        )
        .await
        .map_err(|e| db.error(e))?
        .get(0);
    if owned == 0 {
        return Err(taken_over(run_id));
    }
    Ok(())
}

/// Marks an effect as started before it is made (a performed-again effect
/// marks its position again), if this node still holds the run under
/// `claim`: a node whose run was taken over cannot start its effects.
pub(crate) async fn start_effect(
    db: &Db,
    run_id: &str,
    start: &EffectStart,
    claim: Option<i64>,
) -> Result<(), JournalError> {
    let client = db.client().await?;
    let statement = client
        .prepare_cached(
            "WITH owner AS (
                 SELECT 1 FROM zoomwire.runs
                 WHERE id = $1 AND node = $6 AND ($7::bigint IS NULL OR claim = $7)
                 FOR SHARE
             ), marked AS (
                 INSERT INTO zoomwire.effect_starts (run_id, seq, name, args, started_at)
                 SELECT $1, $2, $3, $4, $5 FROM owner
                 ON CONFLICT (run_id, seq) DO UPDATE SET name = excluded.name,
                     args = excluded.args, started_at = excluded.started_at
                 RETURNING 1
             )
             SELECT count(*) FROM owner",
        )
        .await
        .map_err(|e| db.error(e))?;
    let owned: i64 = client
        .query_one(
            &statement,
            &[
                &run_id,
                &int(start.seq),
                &start.name,
                &to_json(&start.args),
                &to_nanos(start.started_at),
                &&*db.node,
                &claim,
            ],
        )
        .await
        .map_err(|e| db.error(e))?
        .get(0);
    if owned == 0 {
        return Err(taken_over(run_id));
    }
    Ok(())
}

/// The log lines of the run's current attempt, replacing earlier ones.
async fn replace_logs(
    db: &Db,
    tx: &impl GenericClient,
    run: &RunRecord,
) -> Result<(), JournalError> {
    tx.execute(
        "DELETE FROM zoomwire.logs WHERE run_id = $1 AND attempt = $2",
        &[&run.id, &int(run.attempt)],
    )
    .await
    .map_err(|e| db.error(e))?;
    let indexes: Vec<i32> = (0..run.logs.len()).map(int).collect();
    let levels: Vec<&str> = run.logs.iter().map(|l| l.level.as_str()).collect();
    let messages: Vec<&str> = run.logs.iter().map(|l| l.message.as_str()).collect();
    let times: Vec<i64> = run.logs.iter().map(|l| to_nanos(l.at)).collect();
    tx.execute(
        "INSERT INTO zoomwire.logs (run_id, attempt, idx, level, message, at)
         SELECT $1, $2, line.idx, line.level, line.message, line.at
         FROM unnest($3::integer[], $4::text[], $5::text[], $6::bigint[])
              AS line(idx, level, message, at)",
        &[
            &run.id,
            &int(run.attempt),
            &indexes,
            &levels,
            &messages,
            &times,
        ],
    )
    .await
    .map_err(|e| db.error(e))?;
    Ok(())
}

/// Sets a state value; a new key is refused (`Ok(false)`) once the rule
/// holds `max_state_keys` live ones (expired keys not yet pruned do not
/// count). Serialized per rule by an advisory lock, so that nodes setting
/// new keys together cannot pass the cap.
pub(crate) async fn set_state(
    db: &Db,
    rule: &str,
    key: &str,
    value: &str,
    expires_at: Option<i64>,
    now: i64,
) -> Result<bool, JournalError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(|e| db.error(e))?;
    let exists = tx
        .query_opt(
            "SELECT 1 FROM zoomwire.state WHERE rule = $1 AND key = $2",
            &[&rule, &key],
        )
        .await
        .map_err(|e| db.error(e))?
        .is_some();
    if !exists {
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('state' || chr(31) || $1, 0))",
            &[&rule],
        )
        .await
        .map_err(|e| db.error(e))?;
        let held: i64 = tx
            .query_one(
                "SELECT count(*) FROM zoomwire.state WHERE rule = $1
                     AND (expires_at IS NULL OR expires_at > $2)",
                &[&rule, &now],
            )
            .await
            .map_err(|e| db.error(e))?
            .get(0);
        if usize::try_from(held).unwrap_or(usize::MAX) >= db.max_state_keys {
            return Ok(false);
        }
    }
    tx.execute(
        "INSERT INTO zoomwire.state (rule, key, value, expires_at, updated_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (rule, key) DO UPDATE SET value = excluded.value,
             expires_at = excluded.expires_at, updated_at = excluded.updated_at",
        &[&rule, &key, &value, &expires_at, &now],
    )
    .await
    .map_err(|e| db.error(e))?;
    tx.commit().await.map_err(|e| db.error(e))?;
    Ok(true)
}

/// Puts a failed or dead run back to pending as a fresh first attempt,
/// keeping its effects for replay, for any node to take.
pub(crate) async fn requeue(db: &Db, id: &str, now: i64) -> Result<RequeueOutcome, JournalError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(|e| db.error(e))?;
    let found = tx
        .query_opt(
            "SELECT status, finished_at IS NOT NULL,
                    EXISTS (SELECT 1 FROM zoomwire.events e WHERE e.id = runs.event_id)
             FROM zoomwire.runs WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await
        .map_err(|e| db.error(e))?;
    let Some(row) = found else {
        return Ok(RequeueOutcome::NotFound);
    };
    let (status, finished, has_event): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
    if !finished {
        return Ok(RequeueOutcome::NotFinished);
    }
    if !matches!(status.as_str(), "failed" | "dead") {
        let status = parse_status(&status).unwrap_or(RunStatus::Skipped);
        return Ok(RequeueOutcome::NotFailed(status));
    }
    if !has_event {
        return Ok(RequeueOutcome::EventPruned);
    }
    tx.execute(
        "UPDATE zoomwire.runs SET status = 'pending', attempt = 1, error = NULL,
             started_at = NULL, finished_at = NULL, updated_at = $2, node = NULL,
             claim = claim + 1, place = NULL
         WHERE id = $1",
        &[&id, &now],
    )
    .await
    .map_err(|e| db.error(e))?;
    tx.commit().await.map_err(|e| db.error(e))?;
    Ok(RequeueOutcome::Requeued)
}

/// Ends a run that cannot be resumed (its event is gone), so it is not lost silently.
pub(crate) async fn mark_dead(
    db: &Db,
    id: &str,
    error: &str,
    now: i64,
) -> Result<(), JournalError> {
    let client = db.client().await?;
    let sql = format!(
        "UPDATE zoomwire.runs SET status = 'dead', error = $2, finished_at = $3, updated_at = $3
         WHERE id = $1 AND {UNFINISHED}"
    );
    client
        .execute(&sql, &[&id, &error, &now])
        .await
        .map_err(|e| db.error(e))?;
    Ok(())
}

/// Marks the run running in a free place of its rule and key (`places` of
/// them: 1 for `single`, `queued` and `restart`, `max_runs` for
/// `parallel`), unless every place is held by a run started and not over
/// on any node, or a run of the key written before it waits at the head of
/// another live node's line; then marks it waiting and answers `false`.
/// Only the first runs of a key in each node's line ask (the executor's own
/// admission orders the rest), so a run waits only for running runs or for
/// an earlier head: the earliest head always goes next, and no two nodes
/// wait for each other. Asked per rule and key under an advisory lock, and
/// kept by the database besides: the unique index `runs_places` refuses a
/// second run in one place (a refusal answers `false` too).
///
/// One round trip: the transaction's four statements (begin, the lock, the
/// place taken and written by one statement, commit) are pipelined on the
/// connection ([`pipelined`]); the server runs them in order, so the place
/// is read (a statement's snapshot, under read committed) after the lock is
/// held, as when each waited for the one before.
pub(crate) async fn claim_start(
    db: &Db,
    run: &RunRecord,
    places: u32,
    claim: Option<i64>,
    now: i64,
) -> Result<bool, JournalError> {
    let client = db.client().await?;
    let lock_statement = client
        .prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .await
        .map_err(|e| db.error(e))?;
    let take_statement = client
        .prepare_cached(TAKE_PLACE)
        .await
        .map_err(|e| db.error(e))?;
    let lock = format!(
        "{}\u{1f}{}",
        run.rule,
        run.key.as_deref().unwrap_or_default()
    );
    let places = int(places.max(1));
    let node_timeout = db.node_timeout_secs();
    let (begun, locked, taken, committed) = pipelined(
        client.batch_execute("BEGIN"),
        client.execute(&lock_statement, &[&lock]),
        client.query_one(
            &take_statement,
            &[
                &run.rule,
                &run.key,
                &run.id,
                &node_timeout,
                &&*db.node,
                &places,
                &now,
                &claim,
            ],
        ),
        client.batch_execute("COMMIT"),
    )
    .await;
    begun.map_err(|e| db.error(e))?;
    locked.map_err(|e| db.error(e))?;
    let row = match taken {
        Ok(row) => row,
        // The database's own guard: another run holds the place (the
        // transaction was aborted, and its commit rolled back).
        Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
            tracing::warn!(run = %run.id, rule = %run.rule, "the database refused a second run in one place of the key: the run waits");
            return Ok(false);
        }
        Err(error) => return Err(db.error(error)),
    };
    committed.map_err(|e| db.error(e))?;
    let (place, written): (Option<i32>, i64) = (row.get(0), row.get(1));
    if written == 0 {
        return Err(taken_over(&run.id));
    }
    Ok(place.is_some())
}

/// [`claim_start`]'s place, found and written in one statement: `$1` rule,
/// `$2` key, `$3` run, `$4` node timeout (s), `$5` this node, `$6` places,
/// `$7` now, `$8` claim. Answers the place (`NULL`: wait) and whether the
/// run was this node's to write.
const TAKE_PLACE: &str = "WITH held AS (
         SELECT place FROM zoomwire.runs
         WHERE rule = $1 AND key IS NOT DISTINCT FROM $2 AND id <> $3
           AND place IS NOT NULL
           AND (status = 'running' OR (status = 'failed' AND finished_at IS NULL))
     ), own AS (
         SELECT place FROM zoomwire.runs
         WHERE id = $3 AND place IS NOT NULL
           AND (status = 'running' OR (status = 'failed' AND finished_at IS NULL))
     ), chosen AS (
         SELECT CASE WHEN EXISTS (
             SELECT 1 FROM zoomwire.runs r
             WHERE r.rule = $1 AND r.key IS NOT DISTINCT FROM $2 AND r.status = 'pending'
               AND r.waiting AND r.node <> $5
               AND r.seq < (SELECT seq FROM zoomwire.runs WHERE id = $3)
               AND EXISTS (
                   SELECT 1 FROM zoomwire.nodes n
                   WHERE n.id = r.node AND n.stopped_at IS NULL
                     AND n.heartbeat_at > now() - make_interval(secs => $4)))
             THEN NULL
             ELSE coalesce(
                 (SELECT place FROM own),
                 (SELECT min(p) FROM generate_series(0, $6 - 1) p
                  WHERE p NOT IN (SELECT place FROM held)))
         END AS place
     ), written AS (
         UPDATE zoomwire.runs
         SET status = CASE WHEN (SELECT place FROM chosen) IS NULL THEN 'pending'
                           ELSE 'running' END,
             waiting = (SELECT place FROM chosen) IS NULL,
             updated_at = $7,
             place = coalesce((SELECT place FROM chosen), place)
         WHERE id = $3 AND node = $5 AND ($8::bigint IS NULL OR claim = $8)
         RETURNING 1
     )
     SELECT (SELECT place FROM chosen), (SELECT count(*) FROM written)";

/// Awaits four statements sent together: each is sent to the connection
/// when first polled, and `join4` polls them in order on its first poll, so
/// they go out in this order without waiting for one another's answers
/// (tokio-postgres pipelines the requests of one connection), and the
/// server runs them in this order. Every one is awaited, so a transaction
/// begun is always ended by its last.
async fn pipelined<A, B, C, D>(
    a: A,
    b: B,
    c: C,
    d: D,
) -> (A::Output, B::Output, C::Output, D::Output)
where
    A: std::future::Future,
    B: std::future::Future,
    C: std::future::Future,
    D: std::future::Future,
{
    futures_util::future::join4(a, b, c, d).await
}

/// SQL condition on `runs r`: this node may take the run: it is its own,
/// nobody's (requeued), or its node is gone (stopped, or silent for
/// `$2` seconds by the server's clock). `$1` is this node.
pub(crate) const CLAIMABLE: &str = "(r.node IS NULL OR r.node = $1 OR NOT EXISTS (
        SELECT 1 FROM zoomwire.nodes n
        WHERE n.id = r.node AND n.stopped_at IS NULL
          AND n.heartbeat_at > now() - make_interval(secs => $2)))";

/// Takes every unfinished run this node may resume, oldest first: its own,
/// and those of nodes gone silent, whose claim grows so that their old
/// node can no longer record them. Rows another node is writing right now
/// are skipped (they are taken on a later call). With `among`, only the
/// runs it names are taken (the daemon's poll for requeued runs).
pub(crate) async fn claim_unfinished(
    db: &Db,
    now: i64,
    among: Option<&[String]>,
) -> Result<Vec<ClaimedRun>, JournalError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(|e| db.error(e))?;
    let columns = RUN_COLUMNS
        .split(", ")
        .map(|c| format!("r.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "WITH claimable AS (
             SELECT r.id, r.node AS previous FROM zoomwire.runs r
             WHERE {UNFINISHED} AND {CLAIMABLE}
               AND ($4::text[] IS NULL OR r.id = ANY($4::text[]))
             ORDER BY r.seq
             FOR UPDATE SKIP LOCKED
         )
         UPDATE zoomwire.runs r
         SET claim = CASE WHEN r.node = $1 THEN r.claim ELSE r.claim + 1 END,
             node = $1, updated_at = $3
         FROM claimable WHERE r.id = claimable.id
         RETURNING {columns}, r.claim, r.seq, claimable.previous"
    );
    let rows = tx
        .query(&sql, &[&&*db.node, &db.node_timeout_secs(), &now, &among])
        .await
        .map_err(|e| db.error(e))?;
    let mut claimed = Vec::with_capacity(rows.len());
    for row in &rows {
        let previous: Option<String> = row.get("previous");
        let taken_from = previous.filter(|node| **node != *db.node);
        claimed.push((
            row_seq(row),
            run_row(row)?,
            row.get::<_, i64>("claim"),
            taken_from,
        ));
    }
    claimed.sort_by_key(|(seq, ..)| *seq);
    let mut runs: Vec<RunRecord> = claimed.iter().map(|(_, run, ..)| run.clone()).collect();
    fill_runs(db, &tx, &mut runs, Some(&db.seal)).await?;
    let event_ids: Vec<&str> = runs.iter().map(|r| r.event_id.as_str()).collect();
    let events = stored_events(db, &tx, &event_ids).await?;
    let run_ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
    let mut starts = effect_starts(db, &tx, &run_ids).await?;
    tx.commit().await.map_err(|e| db.error(e))?;
    let mut taken: Vec<ClaimedRun> = runs
        .into_iter()
        .zip(claimed)
        .map(|(run, (_, _, claim, taken_from))| ClaimedRun {
            event: events.get(&run.event_id).cloned(),
            in_doubt: starts.remove(&run.id).unwrap_or_default(),
            run,
            claim,
            taken_from,
        })
        .collect();
    // In the order their events arrived, as the daemon admits runs; runs of
    // one event stay in their order.
    taken.sort_by_key(|c| c.event.as_ref().map(|e| e.received_at));
    Ok(taken)
}

fn row_seq(row: &Row) -> i64 {
    row.get("seq")
}

fn taken_over(run_id: &str) -> JournalError {
    JournalError(format!(
        "run {run_id} is no longer held by this node (another node took it over): not recorded"
    ))
}

/// A count or position as PostgreSQL's `integer`.
fn int(value: impl TryInto<i32>) -> i32 {
    value.try_into().unwrap_or(i32::MAX)
}
