//! Pruning: what the store forgets, in small steps.
//!
//! Finished runs and events older than the configured age, or beyond the row
//! budget (oldest first), are deleted, along with expired dedupe entries and
//! expired rule state. An event's row is its dedupe entry while it exists
//! (`ops.rs`); an event pruned within its dedupe window leaves its id in
//! `dedupe` until the window passes, so it is still known as a duplicate. A
//! run that is still pending or running, and the event it needs to resume,
//! are never pruned. Each step deletes at most [`CHUNK`] rows in one writer
//! transaction, so pruning never holds up intake for long: the pruner repeats
//! a step until it deletes nothing more.

use rusqlite::{Transaction, params};

use super::query::{UNFINISHED, select_unfinished};

/// Rows deleted per step and transaction.
pub(crate) const CHUNK: i64 = 500;

/// One pruning step (the writer runs it in its transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PruneStep {
    /// Dedupe entries whose window has passed.
    Dedupe,
    /// Rule state whose TTL has passed.
    State,
    /// Finished runs created before this time (nanoseconds).
    RunsOlderThan(i64),
    /// The oldest finished runs, this many (at most [`CHUNK`]).
    OldestRuns(u64),
    /// Events received before this time that no unfinished run needs.
    EventsOlderThan(i64),
    /// The oldest events (in receive order, which is rowid order) that no
    /// unfinished run needs, this many (at most [`CHUNK`]).
    OldestEvents(u64),
}

/// Deletes up to [`CHUNK`] rows for `step`; returns how many.
pub(crate) fn apply_prune_step(
    tx: &Transaction<'_>,
    step: &PruneStep,
    now: i64,
    dedupe_window: i64,
) -> rusqlite::Result<u64> {
    let deleted = match *step {
        PruneStep::Dedupe => tx.execute(
            "DELETE FROM dedupe WHERE rowid IN
                (SELECT rowid FROM dedupe WHERE expires_at <= ?1 LIMIT ?2)",
            params![now, CHUNK],
        )?,
        PruneStep::State => tx.execute(
            "DELETE FROM state WHERE (rule, key) IN
                (SELECT rule, key FROM state WHERE expires_at <= ?1 LIMIT ?2)",
            params![now, CHUNK],
        )?,
        PruneStep::RunsOlderThan(cutoff) => {
            let sql = format!(
                "SELECT id FROM runs WHERE created_at < ?1 AND NOT {UNFINISHED}
                 ORDER BY created_at LIMIT ?2"
            );
            let ids: Vec<String> = select_column(tx, &sql, params![cutoff, CHUNK])?;
            delete_runs(tx, &ids)?
        }
        PruneStep::OldestRuns(count) => {
            let sql =
                format!("SELECT id FROM runs WHERE NOT {UNFINISHED} ORDER BY created_at LIMIT ?1");
            let ids: Vec<String> = select_column(tx, &sql, params![chunk(count)])?;
            delete_runs(tx, &ids)?
        }
        PruneStep::EventsOlderThan(cutoff) => {
            let rowids = events_older_than(tx, cutoff)?;
            delete_events(tx, &rowids, now, dedupe_window)?
        }
        PruneStep::OldestEvents(count) => {
            let sql = format!(
                "SELECT rowid FROM events WHERE {} ORDER BY rowid LIMIT ?1",
                not_needed()
            );
            let rowids: Vec<i64> = select_column(tx, &sql, params![chunk(count)])?;
            delete_events(tx, &rowids, now, dedupe_window)?
        }
    };
    Ok(deleted as u64)
}

/// Up to [`CHUNK`] events received before `cutoff` that no unfinished run
/// needs, oldest first.
///
/// Events are in receive order by rowid (`ops.rs`): the ones received
/// before the cutoff are those before the first one received after it. The
/// walk goes from the oldest and stops there, or once it has [`CHUNK`], so
/// a pass reads what it deletes and the few old events a run still needs,
/// however many events are older than the cutoff (a shorter retention, a
/// store opened after a long pause). Events of one commit may be a few
/// milliseconds out of order: one held back behind a later neighbour goes
/// at the next pass.
fn events_older_than(tx: &Transaction<'_>, cutoff: i64) -> rusqlite::Result<Vec<i64>> {
    let sql = format!(
        "SELECT rowid, received_at, {} FROM events ORDER BY rowid",
        not_needed()
    );
    let mut statement = tx.prepare_cached(&sql)?;
    let mut rows = statement.query([])?;
    let mut rowids = Vec::new();
    while let Some(row) = rows.next()? {
        if row.get::<_, i64>(1)? >= cutoff || rowids.len() as i64 >= CHUNK {
            break;
        }
        if row.get::<_, bool>(2)? {
            rowids.push(row.get(0)?);
        }
    }
    Ok(rowids)
}

/// SQL condition on `events`: no unfinished run needs this event. The
/// subquery does not depend on the event, so SQLite reads the unfinished
/// runs once per statement (through `runs_status` and `runs_retrying`) into
/// a temporary index, instead of keeping an index of every run by its event
/// (see `schema.rs`, V10 and V11).
fn not_needed() -> String {
    format!("events.id NOT IN ({})", select_unfinished("event_id"))
}

/// `count` rows, at most a [`CHUNK`].
fn chunk(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX).min(CHUNK)
}

/// The first column of the rows `sql` selects (run ids, event rowids).
fn select_column<T: rusqlite::types::FromSql>(
    tx: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<Vec<T>> {
    tx.prepare_cached(sql)?
        .query_map(params, |row| row.get(0))?
        .collect()
}

/// Deletes events, keeping the id of each one still within its dedupe
/// window in `dedupe`, so that a late re-delivery stays a duplicate, and
/// their keys in `event_index`. Only events already in that table go
/// (`event_index.rs`): a newer one waits for the next pass.
fn delete_events(
    tx: &Transaction<'_>,
    rowids: &[i64],
    now: i64,
    window: i64,
) -> rusqlite::Result<usize> {
    let mut remember = tx.prepare_cached(
        "INSERT INTO dedupe (id, received_at, expires_at)
         SELECT id, received_at, received_at + ?2 FROM events
         WHERE rowid = ?1 AND received_at + ?2 > ?3
         ON CONFLICT(id) DO UPDATE SET received_at = excluded.received_at,
                                       expires_at = excluded.expires_at",
    )?;
    let mut unindex = tx.prepare_cached(
        "DELETE FROM event_index
         WHERE id_hash = (SELECT id_hash FROM events WHERE rowid = ?1) AND event_rowid = ?1",
    )?;
    let mut delete = tx.prepare_cached("DELETE FROM events WHERE rowid = ?1")?;
    let upto: i64 = tx.query_row("SELECT upto FROM event_index_upto", [], |row| row.get(0))?;
    let mut deleted = 0;
    for &rowid in rowids.iter().filter(|&&rowid| rowid <= upto) {
        remember.execute(params![rowid, window, now])?;
        unindex.execute([rowid])?;
        deleted += delete.execute([rowid])?;
    }
    // Had the newest event gone, SQLite would give its rowid again, to an
    // event not in the table: `upto` never stands above the largest rowid.
    tx.prepare_cached(
        "UPDATE event_index_upto SET upto = min(upto, ifnull((SELECT max(rowid) FROM events), 0))",
    )?
    .execute([])?;
    Ok(deleted)
}

/// Deletes runs with their effects and logs.
fn delete_runs(tx: &Transaction<'_>, ids: &[String]) -> rusqlite::Result<usize> {
    let mut delete_run = tx.prepare_cached("DELETE FROM runs WHERE id = ?1")?;
    let mut delete_effects = tx.prepare_cached("DELETE FROM effects WHERE run_id = ?1")?;
    let mut delete_logs = tx.prepare_cached("DELETE FROM logs WHERE run_id = ?1")?;
    let mut delete_starts = tx.prepare_cached("DELETE FROM effect_starts WHERE run_id = ?1")?;
    for id in ids {
        delete_run.execute([id])?;
        delete_effects.execute([id])?;
        delete_logs.execute([id])?;
        delete_starts.execute([id])?;
    }
    Ok(ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn store() -> (tempfile::TempDir, Connection) {
        super::super::schema::scratch_store()
    }

    /// Stores events `e<n>` received at the times given, in that order.
    fn store_events(conn: &Connection, received: &[i64]) {
        for (n, at) in received.iter().enumerate() {
            conn.execute(
                "INSERT INTO events (id, id_hash, type, ts, source, received_at, raw)
                 VALUES (?1, ?2, 'x.y', 1, '\"fire\"', ?3, '{}')",
                params![format!("e{n}"), n as i64, at],
            )
            .unwrap();
        }
        // As if the writer's index had caught up (`event_index.rs`).
        conn.execute(
            "UPDATE event_index_upto SET upto = (SELECT max(rowid) FROM events)",
            [],
        )
        .unwrap();
    }

    fn stored_ids(conn: &Connection) -> Vec<String> {
        conn.prepare("SELECT id FROM events ORDER BY rowid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn prune(conn: &mut Connection, step: PruneStep) -> u64 {
        let tx = conn.transaction().unwrap();
        let deleted = apply_prune_step(&tx, &step, 1_000, 0).unwrap();
        tx.commit().unwrap();
        deleted
    }

    #[test]
    fn events_received_before_the_cutoff_go_and_the_needed_ones_stay() {
        let (_dir, mut conn) = store();
        // e2 is a few ms out of order behind e3; e1 has an unfinished run.
        store_events(&conn, &[10, 20, 31, 30, 40, 50]);
        conn.execute(
            "INSERT INTO runs (id, rule, event_id, event_type, status, attempt, created_at, updated_at)
             VALUES ('r1', 'rule-a', 'e1', 'x.y', 'running', 1, 1, 1)",
            [],
        )
        .unwrap();
        assert_eq!(prune(&mut conn, PruneStep::EventsOlderThan(31)), 1);
        assert_eq!(stored_ids(&conn), ["e1", "e2", "e3", "e4", "e5"]);
        // The cutoff moves on: e2 and e3 go, e3 though it was stored after e2.
        assert_eq!(prune(&mut conn, PruneStep::EventsOlderThan(40)), 2);
        assert_eq!(stored_ids(&conn), ["e1", "e4", "e5"]);
        assert_eq!(prune(&mut conn, PruneStep::OldestEvents(1)), 1);
        assert_eq!(stored_ids(&conn), ["e1", "e5"], "the oldest not needed");
    }

    #[test]
    fn only_unfinished_runs_keep_their_events() {
        let (_dir, mut conn) = store();
        store_events(&conn, &[10, 11, 12, 13, 14, 15]);
        // e0 pending, e1 failed and waiting for a retry, e2 running: kept.
        // e3 failed for good, e4 succeeded, e5 dead: their events may go.
        let runs = [
            ("r0", "e0", "pending", None),
            ("r1", "e1", "failed", None),
            ("r2", "e2", "running", None),
            ("r3", "e3", "failed", Some(5)),
            ("r4", "e4", "succeeded", Some(5)),
            ("r5", "e5", "dead", Some(5)),
        ];
        for (id, event, status, finished_at) in runs {
            conn.execute(
                "INSERT INTO runs (id, rule, event_id, event_type, status, attempt, created_at, finished_at, updated_at)
                 VALUES (?1, 'rule-a', ?2, 'x.y', ?3, 1, 1, ?4, 1)",
                params![id, event, status, finished_at],
            )
            .unwrap();
        }
        assert_eq!(prune(&mut conn, PruneStep::OldestEvents(6)), 3);
        assert_eq!(stored_ids(&conn), ["e0", "e1", "e2"]);
        assert_eq!(prune(&mut conn, PruneStep::EventsOlderThan(100)), 0);
        assert_eq!(stored_ids(&conn), ["e0", "e1", "e2"]);
    }

    #[test]
    fn many_old_events_go_a_chunk_a_pass_oldest_first_and_the_newer_stay() {
        let (_dir, mut conn) = store();
        let old = 2 * CHUNK as usize + 7;
        let received: Vec<i64> = (0..old as i64).chain([5_000, 5_001]).collect();
        store_events(&conn, &received);
        assert_eq!(
            prune(&mut conn, PruneStep::EventsOlderThan(4_000)),
            CHUNK as u64
        );
        assert_eq!(
            stored_ids(&conn)[0],
            format!("e{CHUNK}"),
            "the oldest went first"
        );
        assert_eq!(
            prune(&mut conn, PruneStep::EventsOlderThan(4_000)),
            CHUNK as u64
        );
        assert_eq!(prune(&mut conn, PruneStep::EventsOlderThan(4_000)), 7);
        assert_eq!(prune(&mut conn, PruneStep::EventsOlderThan(4_000)), 0);
        assert_eq!(
            stored_ids(&conn),
            [format!("e{old}"), format!("e{}", old + 1)]
        );
    }
}
